"""What the ServerApp files for the aggregator (no processes): an update blob that is not the
content id its signed message names, or a message for another round, is refused; the round goes
on with the honest updates."""

from __future__ import annotations

import pytest

pytest.importorskip("flwr", reason="the Flower transport is the optional `flower` extra")

from fedmarket.chain.boa_backend import BoaChain
from fedmarket.errors import FedMarketError, StorageError
from fedmarket.fl.data import load_dataset, subset
from fedmarket.fl.partition import iid_partition
from fedmarket.market import Deployment
from fedmarket.protocol.encoding import canonical_json
from fedmarket.roles import Aggregator, Provider, Requester
from fedmarket.roles.common import committed_rounds, round_topic
from fedmarket.spec import DataSchema, JobSpec, ParticipationSpec, RewardSpec, TrainingSpec, TransportSpec
from fedmarket.storage import LocalBlobStore, Mailbox
from fedmarket.transport.flower import file_update

N = 3


def test_forged_or_misdirected_updates_are_not_filed(tmp_path):
    chain = BoaChain()
    accts = [chain.new_account("filing", i) for i in range(4 + N)]
    dep = Deployment.deploy(chain, accts[0], accts[1].address, 100)
    for a in accts[2:]:
        dep.token.transact("mint", a.address, 10**21, sender=accts[0])
    ds = load_dataset("digits")
    parts = iid_partition(ds.y, N, 0)
    spec = JobSpec(name="filing", data=DataSchema(n_features=64, n_classes=10, feature_low=[0.0] * 64, feature_high=[16.0] * 64),
                   training=TrainingSpec(rounds=1, local_epochs=1), reward=RewardSpec(escrow=10**20, provider_stake=10**18),
                   participation=ParticipationSpec(min_providers=N, max_providers=N),
                   transport=TransportSpec(flower_app_hash="0" * 64))  # a Flower job: updates go to the aggregator alone
    agg_store, agg_box = LocalBlobStore(tmp_path / "agg-blobs"), Mailbox(tmp_path / "agg-box")
    agg = Aggregator(dep, accts[3], agg_store, agg_box)
    providers = []
    for i in range(N):  # each provider with its own store and mailbox, as on its own SuperNode
        store = LocalBlobStore(tmp_path / f"p{i}-blobs")
        store.put(spec.canonical())
        providers.append(Provider(dep, accts[4 + i], store, Mailbox(tmp_path / f"p{i}-box"),
                                  subset(ds, parts[i]).X, subset(ds, parts[i]).y))
    job = Requester(dep, accts[2], agg_store).post(spec, accts[3].address)
    agg.accept(job)
    for p in providers:
        p.join(job)
    agg.start(job)
    messages = [p.train(job, 0) for p in providers]
    records = [{"message": canonical_json(m).decode(), "blob": p.store.get(m["update_cid"])} for p, m in zip(providers, messages)]

    forged = dict(records[0], blob=b"FMV1 not the update")
    with pytest.raises(StorageError, match="does not match the content id"):
        file_update(agg_store, agg_box, job, 0, forged)
    with pytest.raises(FedMarketError, match="another job or round"):
        file_update(agg_store, agg_box, job, 1, records[0])
    assert not agg_box.read(round_topic(job, 0))  # nothing filed
    assert [file_update(agg_store, agg_box, job, 0, rec) for rec in records[1:]] == [p.address for p in providers[1:]]
    agg.run_round(job, 0)
    assert committed_rounds(dep, job)[0].count == N - 1  # the round went on without the refused update
