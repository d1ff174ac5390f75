"""Roles refuse what they must: mismatched local data or terms, forged or tampered updates."""

from __future__ import annotations

import numpy as np
import pytest

from fedmarket.errors import SchemaMismatch
from fedmarket.protocol.encoding import canonical_json
from fedmarket.roles import Aggregator, Provider, Requester
from fedmarket.roles.common import load_spec, round_topic
from fedmarket.roles.sealed import seal_and_reveal
from fedmarket.spec import DataSchema, JobSpec, ParticipationSpec, RewardSpec, TrainingSpec
from fedmarket.storage import LocalBlobStore, Mailbox

TOKEN = 10**18


def spec(n_providers=2):
    return JobSpec(
        name="roles",
        data=DataSchema(n_features=4, n_classes=3, feature_low=[0] * 4, feature_high=[1] * 4),
        training=TrainingSpec(rounds=1, local_epochs=1),
        reward=RewardSpec(escrow=100 * TOKEN, provider_stake=TOKEN),
        participation=ParticipationSpec(min_providers=1, max_providers=n_providers),
    )


@pytest.fixture
def market(world, tmp_path):
    store, box = LocalBlobStore(tmp_path / "blobs"), Mailbox(tmp_path / "box")
    requester = Requester(world["dep"], world["requester"], store)
    job = requester.post(spec(), world["aggregator"].address)
    rng = np.random.default_rng(0)
    X, y = rng.random((30, 4)), rng.integers(0, 3, 30)
    providers = [Provider(world["dep"], p, store, box, X, y) for p in world["providers"][:2]]
    agg = Aggregator(world["dep"], world["aggregator"], store, box)
    return world, store, box, job, providers, agg


def test_spec_is_verified_against_the_chain(market):
    world, store, _, job, _, _ = market
    assert load_spec(world["dep"], store, job).hash() == spec().hash()


def test_provider_with_wrong_features_cannot_join_and_spends_nothing(market):
    world, store, box, job, _, _ = market
    dep = world["dep"]
    p = world["providers"][3]
    before, block = dep.balance(p.address), world["chain"].block_number()
    bad = Provider(dep, p, store, box, np.zeros((10, 5)), np.zeros(10, int))
    with pytest.raises(SchemaMismatch, match="has 5 features; the job's schema requires 4"):
        bad.join(job)
    assert dep.balance(p.address) == before and world["chain"].block_number() == block
    assert dep.market.call("membership", job, p.address)[0] == 0


def test_aggregator_rejects_forged_tampered_and_outsider_updates(market):
    world, store, box, job, providers, agg = market
    dep = world["dep"]
    agg.accept(job)
    providers[0].join(job)
    agg.start(job)
    honest = providers[0].train(job, 0)
    seal_and_reveal(agg, providers[:1], job, 0)  # its commitment sealed, its update revealed
    topic = round_topic(job, 0)
    # 1. the same update re-signed by someone else's claim of authorship
    forged = dict(honest, provider=world["outsider"].address)
    box.post(topic, canonical_json(forged))
    # 2. a valid signature, but the blob swapped for other bytes with their own CID
    other_cid = store.put(b"FMV1" + (15).to_bytes(8, "big") + b"\x00" * 8 * 15)
    box.post(topic, canonical_json(dict(honest, update_cid=other_cid)))
    # 3. a provider that never joined, properly signed
    outsider = Provider(dep, world["providers"][1], store, box, providers[1].X, providers[1].y)
    assert outsider.train(job, 0) is None  # not picked for the round: an honest client sends nothing
    spec = load_spec(dep, store, job)
    box.post(topic, canonical_json(  # sends anyway
        outsider._post_update(spec, job, 0, np.ones(spec.n_params, dtype=np.int64), outsider.n_samples)))
    updates, rejected = agg.collect(job, 0, load_spec(dep, store, job))
    assert [u.provider for u in updates] == [providers[0].address]
    reasons = " | ".join(r["reason"] for r in rejected)
    assert "not by" in reasons and "never joined" in reasons
    assert "entries, expected" in reasons or "does not match its signed root" in reasons
    receipt = agg.run_round(job, 0)
    assert receipt.event("RoundCommitted")["count"] == 1


def test_roles_refuse_terms_that_differ_from_the_spec(world, tmp_path):
    """A requester posting one rule in the spec and another on chain finds nobody to stake."""
    from fedmarket.roles.common import TermsMismatch, terms_of

    dep = world["dep"]
    store, box = LocalBlobStore(tmp_path / "blobs"), Mailbox(tmp_path / "box")
    s = spec()
    terms = terms_of(s, world["aggregator"].address, world["chain"].timestamp())
    lying = terms.__class__(**{**terms.__dict__, "rule": 1})  # the spec says fedavg, the chain says median
    cid = store.put(s.canonical())
    job = dep.market.transact("post_job", lying.abi(), cid, sender=world["requester"]).event("JobPosted")["job_id"]
    rng = np.random.default_rng(0)
    provider = Provider(dep, world["providers"][0], store, box, rng.random((30, 4)), rng.integers(0, 3, 30))
    before = dep.balance(provider.address)
    with pytest.raises(TermsMismatch, match="on-chain rule is 1 but its spec implies 0"):
        provider.join(job)
    with pytest.raises(TermsMismatch, match="rule"):
        Aggregator(dep, world["aggregator"], store, box).accept(job)
    assert dep.balance(provider.address) == before
