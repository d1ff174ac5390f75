"""A Flower job's seal, through the ClientApp's own functions (`transport.flower`): the ServerApp is
the aggregator's, so it can bring one provider a seal nobody else sees. Each SuperNode keeps the
seal it revealed under and checks it against the seal the round committed with."""

from __future__ import annotations

import secrets
from types import SimpleNamespace

import pytest

pytest.importorskip("flwr", reason="the Flower transport is the optional `flower` extra")

import sec_support
from flwr.app import ConfigRecord
from sec_support import AGG_STAKE

from fedmarket.market import JobState
from fedmarket.protocol.encoding import canonical_json, untrusted_json
from fedmarket.protocol.receipts import UpdateReceipt
from fedmarket.roles import Provider
from fedmarket.roles import sealed as sl
from fedmarket.roles.common import committed_rounds, fetch_metrics, metrics_cid, round_topic
from fedmarket.storage import LocalBlobStore, Mailbox
from fedmarket.transport import flower as fl


def _msg(record: dict):
    """What the ClientApp reads of a Flower message (one outside a run cannot be built)."""
    return SimpleNamespace(content={fl.RECORD: dict(ConfigRecord(record))})


def _private_seal_theft(make, monkeypatch, tmp_path):
    """The aggregator's theft through a seal shown to the victim alone, up to the round's commit:
    returns (setup, the victim's SuperNode context, victim, Sybil)."""
    sec_support.flower_jobs(monkeypatch)
    s = make(providers=4, rounds=1, validators=3)
    s.open()
    job, dep = s.job, s.dep
    victim, p1, p2, sybil = s.providers
    node = tmp_path / "victim-node"
    context = SimpleNamespace(node_config={"job": job, "store": str(node / "blobs"), "mailbox": str(node / "mailbox"),
                                           "state": str(node / "committed")})
    monkeypatch.setattr(fl, "node_deployment", lambda cfg: s.dep)
    monkeypatch.setattr(fl, "node_provider", lambda cfg, dep_=None: (Provider(dep, victim.account, LocalBlobStore(cfg["store"]),
                                                                   Mailbox(cfg["mailbox"]), victim.X, victim.y), job))
    monkeypatch.setattr(fl, "_reply", lambda msg, record: SimpleNamespace(content={fl.RECORD: dict(ConfigRecord(record))}))

    reply = fl.train_on_node(_msg({"job-id": job, "round": 0, "blobs": fl.round_blobs(dep, s.store, job)}), context)
    c_victim = bytes.fromhex(untrusted_json(reply.content[fl.RECORD]["commitment"])["commitment"][2:])
    private = sl.seal_message(dep, s.agg.account, job, 0, {victim.address: c_victim})  # filed nowhere
    reply = fl.reveal_on_node(_msg({"job-id": job, "round": 0, "seal": canonical_json(private).decode()}), context)
    stolen, blob = untrusted_json(reply.content[fl.RECORD]["message"]), reply.content[fl.RECORD]["blob"]

    for p in (p1, p2):
        p.train(job, 0)
    root, weight, salt = bytes.fromhex(stolen["update_root"][2:]), stolen["weight"], secrets.token_bytes(32)
    sig = UpdateReceipt(job, 0, root, weight).sign(sybil.account.key, dep.chain_id, dep.disputes.address)
    s.box.post(sl.commit_topic(job, 0), sl.commitment_message(dep, sybil.account, job, 0,
                                                               sl.commitment(sybil.address, root, weight, salt)))
    s.agg.seal(job, 0, s.spec)  # in public: p1, p2 and the Sybil
    for p in (p1, p2):
        p.reveal(job, 0)
    s.store.put(blob)
    s.box.post(round_topic(job, 0), canonical_json({**stolen, "provider": sybil.address, "signature": "0x" + sig.hex(),
                                                    "salt": "0x" + salt.hex()}))
    s.agg.run_round(job, 0)
    listed = {u["provider"] for u in fetch_metrics(s.store, committed_rounds(dep, job)[0])["updates"]}
    assert sybil.address in listed and victim.address not in listed  # committed with the copy

    return s, context, victim, sybil


def test_a_seal_shown_to_one_provider_alone_costs_the_aggregator_its_stake(make, monkeypatch, tmp_path):
    """ATTACK (found by a review of the fixes): the aggregator's ServerApp takes a provider's
    commitment without filing it, brings that provider alone a seal holding it, and so gets the
    update revealed; its Sybil then commits to that update under its own name, and the round is
    sealed in public (without the victim) and committed with the copy. Validators see one seal and
    attest: the Sybil would be paid for the victim's work. The victim's SuperNode keeps the seal it
    revealed under; given the round's metrics document (the next train message, or the rewards
    message after the last round) it holds two seals of one round signed by the aggregator and
    proves it on chain: the job fails back to that round and the aggregator is slashed."""
    s, context, victim, sybil = _private_seal_theft(make, monkeypatch, tmp_path)
    dep, job = s.dep, s.job
    # the ServerApp's message after the last round brings the round's metrics document
    last = committed_rounds(dep, job)[-1]
    fl.file_on_node(_msg({"job-id": job, "blobs": [s.store.get(metrics_cid(last.metrics_hash))]}), context)
    [proven] = dep.disputes.events("SealEquivocationProven", job_id=job)
    assert proven["aggregator"] == s.agg.address
    s.release_all()
    assert s.state() == JobState.FAILED
    assert s.slashed() == {s.agg.address: AGG_STAKE}
    assert s.delta()[sybil.address] <= 0  # the copy earned nothing


def test_withholding_the_round_document_from_the_supernode_does_not_hide_the_private_seal(make, monkeypatch,
                                                                                          tmp_path):
    """ATTACK (found by a second review of the fixes): the same theft, after which the ServerApp
    brings the victim's SuperNode nothing more (no train message, no metrics document), so the
    ClientApp has no second seal to compare. The provider's own process (`SuperNodeProviderProcess`)
    compares the seal its SuperNode revealed under with each committed round's, read from its own
    store (the shared one the roles use across machines), and proves the two on chain."""
    from fedmarket.transport.flower_processes import SuperNodeProviderProcess

    s, context, victim, sybil = _private_seal_theft(make, monkeypatch, tmp_path)
    proc = SuperNodeProviderProcess(s.dep, victim.account, s.store, Mailbox(context.node_config["mailbox"]),
                                    victim.X, victim.y, s.job, tmp_path / "victim-state", log=lambda m: None)
    proc.safe_step()  # proves it, then (the job failed) takes its stake back and stops
    [proven] = s.dep.disputes.events("SealEquivocationProven", job_id=s.job)
    assert proven["aggregator"] == s.agg.address
    s.release_all()
    assert s.state() == JobState.FAILED and s.slashed() == {s.agg.address: AGG_STAKE}


def test_a_deleted_round_document_does_not_stop_the_rewards_message(make, monkeypatch):
    """ATTACK (found by a review of the fixes): the rewards message after the last round also brings
    the last round's metrics document (for the SuperNodes' seal check). Anyone on a shared store
    who deleted that document made the ServerApp's read fail, so no SuperNode got the rewards
    document its provider's claim needs. The rewards document goes without it."""
    from flwr.supercore.task_identity import TaskIdentity

    sec_support.flower_jobs(monkeypatch)
    s = make(providers=3, rounds=1)
    s.run()
    last = committed_rounds(s.dep, s.job)[-1]
    s.store._path(metrics_cid(last.metrics_hash)).unlink()

    class Grid:  # the ServerApp's side of Flower, recording what it pushes (the real one: tests/transport)
        pushed: list = []

        def get_node_ids(self):
            return [11, 12]

        def push_messages(self, messages):
            self.pushed += messages
            return [f"m{i}" for i in range(len(messages))]

        def pull_messages(self, ids):
            return []

    for name in ("_task_id", "_run_id", "_node_id"):  # a message outside a Flower run
        monkeypatch.setattr(TaskIdentity, name, 1, raising=False)
    grid = Grid()
    fl.Relay(s.dep, s.store, s.box, s.job, round_timeout=0.2, poll=0.05).send_rewards(grid)
    rewards_cid = s.dep.market.events("RewardRootPosted", job_id=s.job)[-1]["rewards_cid"]
    assert len(grid.pushed) == 2
    for message in grid.pushed:
        assert s.store.get(rewards_cid) in list(message.content[fl.RECORD]["blobs"])
