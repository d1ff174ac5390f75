"""What the ServerApp files for the aggregator (no processes): a Flower round is sealed, so it
files commitments first and updates only once the aggregator sealed them; an update blob that is
not the content id its signed message names, or a message for another round, is refused; the
round goes on with the honest updates."""

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
from fedmarket.roles.sealed import commit_topic, seal_topic
from fedmarket.transport.flower import file_commitment, file_update

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
    for p in providers:
        assert p.train(job, 0) is not None  # committed: the receipt and the blob stay with the provider
        assert not p.mailbox.read(round_topic(job, 0))
    commitments = [{"commitment": p.mailbox.read(commit_topic(job, 0))[0].decode()} for p in providers]
    with pytest.raises(FedMarketError, match="another job or round"):
        file_commitment(agg_box, job, 1, commitments[0])
    assert [file_commitment(agg_box, job, 0, rec) for rec in commitments] == [p.address for p in providers]
    seal = agg.seal(job, 0, spec)
    assert set(seal["commitments"]) == {p.address for p in providers}
    messages = []
    for p in providers:  # what reveal_on_node does with the seal the ServerApp brings
        p.mailbox.post(seal_topic(job, 0), canonical_json(seal))
        messages.append(p.reveal(job, 0))
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


def test_a_secure_privacy_mode_is_refused_for_a_flower_job():
    """A Flower job carries plain and dp_local rounds; the SecAgg+ stages run on the mailbox."""
    from pydantic import ValidationError

    from fedmarket.spec import PrivacySpec

    with pytest.raises(ValidationError, match="runs its SecAgg\\+ stages on the mailbox"):
        JobSpec(name="x", data=DataSchema(n_features=2, n_classes=2, feature_low=[0.0] * 2, feature_high=[1.0] * 2),
                training=TrainingSpec(rounds=1), reward=RewardSpec(escrow=10**20, provider_stake=10**18),
                participation=ParticipationSpec(min_providers=3, max_providers=3, max_validators=1, min_validators=1),
                privacy=PrivacySpec(mode="secagg"), transport=TransportSpec(flower_app_hash="0" * 64))
