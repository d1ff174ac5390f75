"""When the aggregator's wait for a Flower round's updates starts (found by a review of the
transport). The ServerApp noted each round it sent on an unsigned topic of the shared mailbox, and
the aggregator's process read every message there: a stranger's junk stopped the honest aggregator
every step (or, nested deep, killed it) until it was slashed at the round deadline, and a forged
note started `--collect-timeout` before the ServerApp had sent the round, so the round was sealed
with nobody's commitment. The note is now a file in the aggregator's own state directory
(`flower.sent_marker`). Each test is written as the attacker and passes only when the attack fails."""

from __future__ import annotations

import pytest

pytest.importorskip("flwr", reason="the Flower transport is the optional `flower` extra")

import sec_support  # noqa: E402

from fedmarket.protocol.encoding import canonical_json  # noqa: E402
from fedmarket.roles import sealed as sl  # noqa: E402
from fedmarket.roles.common import committed_rounds  # noqa: E402
from fedmarket.transport.flower import sent_marker  # noqa: E402
from fedmarket.transport.flower_processes import FlowerAggregatorProcess  # noqa: E402


class _Serving:
    def keep_up(self, training):
        return []


def _setup(make, monkeypatch, tmp_path, rounds=1):
    sec_support.flower_jobs(monkeypatch)
    s = make(providers=3, rounds=rounds)
    s.open()
    logs: list[str] = []
    proc = FlowerAggregatorProcess(s.dep, s.agg.account, s.store, s.box, s.job, tmp_path / "agg", collect_timeout=60.0,
                                   log=logs.append, serving=_Serving(), sent_dir=tmp_path / "agg" / "sent")
    return s, proc, logs


def _strangers_notes(s) -> None:
    """What a stranger on the shared broker posts where the ServerApp's note used to go: junk, JSON
    nested 100,000 deep, and a forged note for every round."""
    topic = f"job-{s.job}-flower-sent"
    s.box.post(topic, b"junk")
    s.box.post(topic, b"[" * 100_000 + b"]" * 100_000)
    s.box.post(topic, canonical_json({"job_id": s.job, "round": 0}))


def test_a_strangers_notes_neither_start_nor_stop_a_flower_round(make, monkeypatch, tmp_path):
    """The ServerApp is 61 s late sending round 0 (its wait for a SuperNode that vanished): the
    aggregator's wait has not started, whatever the mailbox holds. Once it sent the round, the
    commitments are sealed and the round committed with every provider."""
    from fedmarket.processes import aggregator as agg_mod

    s, proc, logs = _setup(make, monkeypatch, tmp_path)
    clock = [1_000.0]
    monkeypatch.setattr(agg_mod.time, "monotonic", lambda: clock[0])
    _strangers_notes(s)
    proc.safe_step()
    clock[0] += 61.0
    proc.safe_step()
    assert not sl.seals(s.dep, s.box.read(sl.seal_topic(s.job, 0)), s.job, 0, s.agg.address)
    assert any("waiting for the ServerApp" in m for m in logs)
    marker = sent_marker(proc.sent_dir, s.job, 0)  # what the ServerApp does once it sent round 0
    marker.parent.mkdir(parents=True)
    marker.touch()
    for p in s.providers:  # the commitments it files for the SuperNodes
        p.train(s.job, 0)
    for _ in range(2):
        proc.safe_step()
    clock[0] += 61.0
    for _ in range(2):
        proc.safe_step()
    found = sl.seals(s.dep, s.box.read(sl.seal_topic(s.job, 0)), s.job, 0, s.agg.address)
    assert found and len(found[0]) == 3, f"sealed {found}: " + "\n".join(logs)
    for p in s.providers:
        p.reveal(s.job, 0)
    for _ in range(3):
        proc.safe_step()
    assert [c.count for c in committed_rounds(s.dep, s.job)] == [3], "\n".join(logs)


def test_a_deleted_round_document_cannot_stop_the_next_train_message(make, monkeypatch, tmp_path):
    """A stranger on the shared store deletes round 0's metrics document once it is committed (in a
    job without validators, nothing else keeps it there). The ServerApp reads the blobs of each
    train message from the shared store, so it could send round 1 to nobody, again and again, and
    the honest aggregator was failed at the round deadline (found by a review of the transport).
    While it waits for the ServerApp, the aggregator's process puts those blobs back."""
    from fedmarket.errors import FedMarketError
    from fedmarket.roles.common import metrics_cid
    from fedmarket.transport import flower as fl

    s, proc, logs = _setup(make, monkeypatch, tmp_path, rounds=2)
    proc.collect_timeout = 0

    def serverapp_relays(r) -> bool:
        """What the ServerApp's `relay_round` does before anything reaches a SuperNode."""
        try:
            fl.round_blobs(s.dep, s.store, s.job)  # from the shared store, as `serve_job` opens it
        except FedMarketError as exc:  # the app run dies; the aggregator's process submits it again
            logs.append(f"ServerApp died: {exc}")
            return False
        marker = sent_marker(proc.sent_dir, s.job, r)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        return True

    assert serverapp_relays(0)
    for p in s.providers:
        p.train(s.job, 0)
    for _ in range(3):
        proc.safe_step()
    for p in s.providers:
        p.reveal(s.job, 0)
    for _ in range(3):
        proc.safe_step()
    assert len(committed_rounds(s.dep, s.job)) == 1
    (s.store.root / metrics_cid(committed_rounds(s.dep, s.job)[0].metrics_hash)).unlink()  # the stranger
    import time as clock

    now = [clock.monotonic()]
    monkeypatch.setattr(clock, "monotonic", lambda: now[0])
    sent = False
    for _ in range(3):
        sent = sent or serverapp_relays(1)
        proc.safe_step()
        now[0] += 6.0  # the aggregator's process looks every 5 s
    assert sent, "\n".join(logs[-6:])
