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


def _own_file(box, topic, address):
    """The file of `address`'s signed message on `topic`, or None."""
    d = box.root / topic
    for f in (sorted(d.iterdir()) if d.is_dir() else ()):
        if f.name.startswith("."):
            continue
        try:
            body = json.loads(json.loads(f.read_bytes())["signed"])
        except Exception:
            continue
        if body.get("provider") == address:
            return f
    return None


def _delete_own(box, topic, address) -> bool:
    f = _own_file(box, topic, address)
    if f is not None:
        f.unlink()
    return f is not None


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


@pytest.mark.parametrize("attack,dies", [(False, True), (True, True), (True, False)])
def test_a_keys_message_deleted_after_the_aggregators_restart_cannot_void_the_round(chain, tmp_path, monkeypatch,
                                                                                    attack, dies):
    """ATTACK (found by a review of the fix above): p2 masks (and, with `dies`, then dies for good: a
    tolerated dropout, so nobody posts its messages again); once the unmask answers are in, the
    aggregator's process restarts (its memory of the phase messages was in RAM only) and a stranger
    deletes p2's key advertisement once. The round committed empty; the aggregator keeps what it read
    in its state directory now, and the round takes all five masked inputs."""
    n = 5
    monkeypatch.setattr(sr, "phase_timeout", lambda d: 2.0)
    P = Procs(chain, tmp_path, collect_timeout=10.0, providers=n, rounds=1, validators=1, privacy="secagg")
    victim = chain.providers[2].address
    names = list(P.procs)
    dead, struck = [], []
    t0 = time.monotonic()
    while time.monotonic() - t0 < 150 and not committed_rounds(P.dep, P.job):
        for name in names:
            if name == "p2" and dead:
                continue
            p = P.procs[name]
            if not p.done:
                p.safe_step()
            if dies and name == "p2" and victim in signed_on(P.dep, P.box, P.job, 0, "update"):
                dead.append(1)  # p2 crashes for good right after its masked update is out
        if attack and not struck and len(signed_on(P.dep, P.box, P.job, 0, "unmask")) == n - (1 if dies else 0):
            P.procs["aggregator"] = P.new_aggregator()  # the aggregator's process restarts
            assert _delete_own(P.box, sr.topic(P.job, 0, "keys"), victim)  # one deletion
            struck.append(1)
        time.sleep(0.2)
    assert committed_rounds(P.dep, P.job), "\n".join(P.logs[-30:])
    assert (dead or not dies) and (struck or not attack)
    assert committed_rounds(P.dep, P.job)[0].count == n, "\n".join(P.logs[-40:])


@pytest.mark.parametrize("swap", [False, True])
def test_one_provider_swapping_its_keys_message_cannot_void_the_round(chain, tmp_path, monkeypatch, swap):
    """ATTACK (found by a review of the fix above): a single dishonest provider p2 signs a second key
    advertisement; with `swap` it first deletes its first one, so the honest providers see one while
    the aggregator, which kept every message it read, held both and dropped p2 as a double signer
    although the survivor set held it: the round committed empty. The aggregator keeps each signer's
    last message now; the four honest providers' round commits (p2 at worst dropped)."""
    from fedmarket.privacy.secagg import SecAggClient

    n = 5
    monkeypatch.setattr(sr, "phase_timeout", lambda d: 2.0)
    P = Procs(chain, tmp_path, collect_timeout=10.0, providers=n, rounds=1, validators=1, privacy="secagg")
    cheat = chain.providers[2]
    names = list(P.procs)
    struck = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < 150 and not committed_rounds(P.dep, P.job):
        for name in names:
            p = P.procs[name]
            if not p.done:
                p.safe_step()
            if name == "aggregator" and not struck and cheat.address in signed_on(P.dep, P.box, P.job, 0, "keys"):
                prov = P.procs["p2"].provider
                client, cfg = prov._client(P.job, 0)
                other = SecAggClient(client.uid, cfg, client.neighbours)
                prov._clients[(P.job, 0)] = (other, cfg)  # its process goes on with the second keys
                if swap:
                    assert _delete_own(P.box, sr.topic(P.job, 0, "keys"), cheat.address)
                    keys = sr.topic(P.job, 0, "keys")  # and its process's record of it: never posted again
                    P.procs["p2"].mailbox.forget(lambda topic: topic == keys)
                P.box.post(sr.topic(P.job, 0, "keys"), sr.keys_message(cheat.key, cfg.round_id, cheat.address, other.advertise()))
                struck.append(1)
        time.sleep(0.2)
    assert struck
    assert committed_rounds(P.dep, P.job), "\n".join(P.logs[-30:])
    assert committed_rounds(P.dep, P.job)[0].count >= n - 1, "\n".join(P.logs[-40:])


def test_a_copy_of_another_phases_message_cannot_replace_the_aggregators_remembered_keys(chain, tmp_path, monkeypatch):
    """ATTACK (anyone on the mailbox; found by a review of the kept mailbox): once every unmask answer
    is in, copy p2's signed shares message onto the keys topic and delete p2's key advertisement.
    The aggregator had read that shares message on its own topic, and cached who signed a message by
    its bytes alone: on the keys topic the copy read as p2's one message there and replaced p2's
    remembered keys, so the transcript had no keys of p2 and the round committed empty. Who signed a
    message is cached per topic now (a message of one phase is nobody's on another)."""
    n = 5
    P = _setup(chain, tmp_path, monkeypatch, n=n)
    victim, done = chain.providers[2].address, []

    def after(name):
        if not done and name.startswith("p") and len(signed_on(P.dep, P.box, P.job, 0, "unmask")) == n:
            shares = _own_file(P.box, sr.topic(P.job, 0, "shares"), victim)
            keys = _own_file(P.box, sr.topic(P.job, 0, "keys"), victim)
            P.box.post(sr.topic(P.job, 0, "keys"), shares.read_bytes())  # a copy, of another phase
            keys.unlink()  # and one deletion
            done.append(1)

    P.after_step = after
    assert _drive(P, 150), "\n".join(P.logs[-30:])
    assert done
    assert committed_rounds(P.dep, P.job)[0].count == n, "\n".join(P.logs[-40:])


def test_strangers_signed_phase_messages_are_not_remembered_by_the_aggregator(chain, tmp_path, monkeypatch):
    """ATTACK (anyone on the mailbox; found by a review of the kept mailbox): sign key advertisements
    of the round with fresh keys of one's own, as many as one likes. The aggregator's process kept
    one file per signer it read on a secure phase's topic, members or not: each fresh key was one
    more file in its state directory. Only the round's selected providers' messages are remembered
    now, and the round goes on."""
    from eth_account import Account as EthAccount

    from fedmarket.privacy.secagg import SecAggClient

    n = 5
    P = _setup(chain, tmp_path, monkeypatch, n=n)
    posted = []

    def after(name):
        if not posted and name == "aggregator" and signed_on(P.dep, P.box, P.job, 0, "keys"):
            client, cfg = P.procs["p0"].provider._client(P.job, 0)
            for _ in range(6):
                stranger = EthAccount.create()
                adv = SecAggClient(client.uid, cfg, client.neighbours).advertise()
                P.box.post(sr.topic(P.job, 0, "keys"), sr.keys_message(stranger.key, cfg.round_id, stranger.address, adv))
                posted.append(stranger.address)

    P.after_step = after
    assert _drive(P, 150), "\n".join(P.logs[-30:])
    assert posted
    kept = P.procs["aggregator"].state.root / "mailbox" / "read" / sr.topic(P.job, 0, "keys")
    remembered = {f.name for f in kept.iterdir()} if kept.is_dir() else set()
    assert not remembered & set(posted), "a stranger's signed message was remembered"
    assert committed_rounds(P.dep, P.job)[0].count == n
