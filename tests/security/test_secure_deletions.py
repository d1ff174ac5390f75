"""One deletion of a provider's own message in a secure round, by anyone on the shared mailbox (found
by a review of secure rounds under deletion). A provider's process keeps what it posted in a secure
round and posts the same bytes again (it never makes a phase's message anew), and the aggregator's
process keeps every phase message it has read: one deleted key advertisement voided the round for
everyone, and a provider whose shares were deleted tried to share again, was refused, and dropped
out, taking the round down with it."""

from __future__ import annotations

import json
import time

import pytest
from proc_support import Procs

from fedmarket.roles import secure_round as sr
from fedmarket.roles.common import committed_rounds
from fedmarket.roles.senders import signed_on


def _delete_own(box, topic, address) -> bool:
    d = box.root / topic
    if not d.is_dir():
        return False
    for f in sorted(d.iterdir()):
        if f.name.startswith("."):
            continue
        try:
            body = json.loads(json.loads(f.read_bytes())["signed"])
        except Exception:
            continue
        if body.get("provider") == address:
            f.unlink()
            return True
    return False


def _drive(P, limit=120.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        P.step()
        if committed_rounds(P.dep, P.job):
            return True
        time.sleep(0.2)
    return False


def _setup(chain, tmp_path, monkeypatch, mode="secagg", n=5):
    monkeypatch.setattr(sr, "phase_timeout", lambda d: 2.0)
    return Procs(chain, tmp_path, collect_timeout=10.0, providers=n, rounds=1, validators=1, privacy=mode)


def _delete_once_when_signed(P, i: int, signed: str, phase: str) -> None:
    """Once provider `i`'s signed `signed` message is on the mailbox, after its own step, delete its
    `phase` message; the round must still take every provider."""
    victim, done = P.c.providers[i].address, []

    def after(name):
        if not done and name == f"p{i}" and victim in signed_on(P.dep, P.box, P.job, 0, signed):
            assert _delete_own(P.box, sr.topic(P.job, 0, phase), victim)
            done.append(1)

    P.after_step = after
    assert _drive(P), "\n".join(P.logs[-30:])
    assert done
    n = P.spec.participation.max_providers
    assert committed_rounds(P.dep, P.job)[0].count == n, "\n".join(P.logs[-40:])


@pytest.mark.parametrize("phase", ["keys", "shares"])
def test_one_deleted_phase_message_after_the_upload_cannot_abort_the_round(chain, tmp_path, monkeypatch, phase):
    """ATTACK: a stranger deletes, once, the victim's signed `phase` message right after the victim's
    masked update appeared. The round takes all five."""
    P = _setup(chain, tmp_path, monkeypatch, n=5)
    _delete_once_when_signed(P, 2, "update", phase)


def test_one_deleted_unmask_answer_after_the_victim_finished_cannot_abort_the_round(chain, tmp_path, monkeypatch):
    """ATTACK: a stranger deletes one unmask answer once its provider is done with the round. With 3
    providers (k=2, t=2) every other provider's secrets lose a holder; the round takes all three."""
    P = _setup(chain, tmp_path, monkeypatch, n=3)
    _delete_once_when_signed(P, 1, "unmask", "unmask")


def test_one_deleted_keys_message_after_every_unmask_answer_cannot_void_the_round(chain, tmp_path, monkeypatch):
    """ATTACK: every provider answered the unmasking (each process is done with the round); a stranger
    then deletes one provider's key advertisement before the aggregator's next step. The aggregator
    read the transcript from the mailbox only at commit time: ShareTampered, the round committed
    empty and nobody was paid for it. All five are counted now."""
    n = 5
    P = _setup(chain, tmp_path, monkeypatch, n=n)
    victim = chain.providers[2].address
    done = []

    def after(name):
        if not done and name.startswith("p") and len(signed_on(P.dep, P.box, P.job, 0, "unmask")) == n:
            assert _delete_own(P.box, sr.topic(P.job, 0, "keys"), victim)
            done.append(1)

    P.after_step = after
    assert _drive(P), "\n".join(P.logs[-30:])
    assert done
    assert P.run(200), "\n".join(P.logs[-30:])
    assert committed_rounds(P.dep, P.job)[0].count == n, "\n".join(P.logs[-40:])
