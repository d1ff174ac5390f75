"""The Flower transport carries the same signed updates as the mailbox: both give identical aggregates."""

from __future__ import annotations

import socket
import threading

import pytest

pytest.importorskip("flwr", reason="the Flower transport is the optional `flower` extra")

from fedmarket.chain.boa_backend import BoaChain  # noqa: E402
from fedmarket.fl.data import load_dataset, subset  # noqa: E402
from fedmarket.fl.partition import iid_partition  # noqa: E402
from fedmarket.market import Deployment  # noqa: E402
from fedmarket.roles import Aggregator, Provider, Requester  # noqa: E402
from fedmarket.roles.auditor import Auditor  # noqa: E402
from fedmarket.roles.common import committed_rounds  # noqa: E402
from fedmarket.spec import DataSchema, JobSpec, ParticipationSpec, RewardSpec, TrainingSpec  # noqa: E402
from fedmarket.storage import LocalBlobStore, Mailbox  # noqa: E402

N, ROUNDS = 4, 2


def _job(tmp, side: str):
    """A fresh chain and job; the provider side keeps its own store and mailbox (nothing shared)."""
    chain = BoaChain()
    accts = [chain.new_account("transport", i) for i in range(4 + N)]
    dep = Deployment.deploy(chain, accts[0], accts[1].address, 100)
    for a in accts[2:]:
        dep.token.transact("mint", a.address, 10**21, sender=accts[0])
    agg_store, agg_box = LocalBlobStore(tmp / side / "agg-blobs"), Mailbox(tmp / side / "agg-box")
    ds = load_dataset("digits")
    parts = iid_partition(ds.y, N, 0)
    spec = JobSpec(
        name="transport", data=DataSchema(n_features=64, n_classes=10, feature_low=[0.0] * 64, feature_high=[16.0] * 64),
        training=TrainingSpec(rounds=ROUNDS, local_epochs=1), reward=RewardSpec(escrow=10**20, provider_stake=10**18),
        participation=ParticipationSpec(min_providers=N, max_providers=N),
    )
    requester = Requester(dep, accts[2], agg_store)
    agg = Aggregator(dep, accts[3], agg_store, agg_box)
    providers = []
    for i in range(N):
        store = agg_store if side == "mailbox" else LocalBlobStore(tmp / side / f"p{i}-blobs")
        box = agg_box if side == "mailbox" else Mailbox(tmp / side / f"p{i}-box")
        providers.append(Provider(dep, accts[4 + i], store, box, subset(ds, parts[i]).X, subset(ds, parts[i]).y))
    job = requester.post(spec, accts[3].address)
    if side != "mailbox":  # providers read the spec from their own store
        for p in providers:
            p.store.put(spec.canonical())
    agg.accept(job)
    for p in providers:
        p.join(job)
    agg.start(job)
    return dep, agg, providers, job


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_flower_and_mailbox_transports_give_identical_aggregates(tmp_path):
    from fedmarket.transport.flower import FlowerGateway, FlowerProvider

    dep_a, agg_a, providers_a, job_a = _job(tmp_path, "mailbox")
    for r in range(ROUNDS):
        for p in providers_a:
            p.train(job_a, r)
        agg_a.run_round(job_a, r)

    dep_b, agg_b, providers_b, job_b = _job(tmp_path, "flower")
    lock = threading.Lock()  # one in-process chain serves every party: one caller at a time
    gateway = FlowerGateway(agg_b, job_b, ROUNDS, N, lock=lock, connect_timeout=60)
    address = f"127.0.0.1:{_free_port()}"
    clients = [threading.Thread(target=FlowerProvider(p, lock).connect, args=(address,), daemon=True) for p in providers_b]
    for t in clients:
        t.start()
    gateway.serve(address, round_timeout=120)
    for t in clients:
        t.join(timeout=60)

    assert gateway.committed == list(range(ROUNDS)) and not gateway.rejected
    a, b = committed_rounds(dep_a, job_a), committed_rounds(dep_b, job_b)
    assert [c.model_root for c in a] == [c.model_root for c in b]
    assert [c.updates_root for c in a] == [c.updates_root for c in b] and [c.count for c in b] == [N] * ROUNDS
    assert Auditor(dep_b, agg_b.store).audit(job_b).ok


def test_a_blob_that_does_not_match_its_signed_content_id_is_refused(tmp_path):
    from flwr.common import Code, FitRes, Parameters, Status

    from fedmarket.transport.flower import FlowerGateway

    dep, agg, providers, job = _job(tmp_path, "flower-bad")
    gateway = FlowerGateway(agg, job, ROUNDS, N)
    message = providers[0].train(job, 0)
    forged = FitRes(status=Status(code=Code.OK, message=""),
                    parameters=Parameters(tensors=[b"FMV1 not the update"], tensor_type="fedmarket/blob"),
                    num_examples=1, metrics={"message": __import__("json").dumps(message)})
    honest = [FitRes(status=Status(code=Code.OK, message=""),
                     parameters=Parameters(tensors=[p.store.get(m["update_cid"])], tensor_type="fedmarket/blob"),
                     num_examples=1, metrics={"message": __import__("json").dumps(m)})
              for p, m in ((p, p.train(job, 0)) for p in providers[1:])]
    gateway.aggregate_fit(1, [(None, forged), *((None, h) for h in honest)], [])
    assert len(gateway.rejected) == 1 and "does not match the content id" in gateway.rejected[0]
    assert committed_rounds(dep, job)[0].count == N - 1  # the round went on without the forged update
