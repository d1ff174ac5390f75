"""Per-round provider selection from the chain's public seed, the quality gate on the final accuracy, and what a
watcher keeps of the rounds it checked."""

from __future__ import annotations

import numpy as np
import pytest

from fedmarket.chain.boa_backend import BoaChain
from fedmarket.market import Deployment
from fedmarket.protocol.selection import select
from fedmarket.roles import aggregator as aggregator_module
from fedmarket.roles.auditor import Auditor
from fedmarket.roles.common import committed_rounds, fetch_metrics, joined_providers, load_spec, round_seed
from fedmarket.roles.sealed import seal_and_reveal
from fedmarket.runner import JobConfig, run_job
from fedmarket.storage import LocalBlobStore


def test_each_round_takes_the_providers_its_public_seed_picks(tmp_path):
    chain = BoaChain()
    report = run_job(chain, tmp_path, JobConfig(providers=8, rounds=3, per_round=4, seed=3))
    # each provider is picked with probability 4/8, independently: about 4 a round (a round of all 8
    # or none has odds 1/128, which the block hashes the seeds come from can give: not in all three)
    assert report["conserved"] is True and 0 < sum(report["updates_per_round"]) < 8 * 3
    dep = Deployment.attach(chain, report["contracts"])
    store = LocalBlobStore(tmp_path / "blobs")
    job = report["job_id"]
    members = joined_providers(dep, job)
    picked = []
    for c in committed_rounds(dep, job):
        # anyone re-derives the pick from the chain alone: the seed the market fixed before the round
        expected = select(round_seed(dep, job, c.round), job, c.round, members, 4)
        assert [u["provider"] for u in fetch_metrics(store, c)["updates"]] == expected
        picked.append(tuple(expected))
    assert len(set(picked)) > 1  # the seed moves with every round
    assert Auditor(dep, store).audit(job).ok
    # rewards follow participation: a provider picked in no round earns nothing, and every one picked earns
    rows = {r["account"]: r for r in report["settlement"]}
    ever = {p for round_ in picked for p in round_}
    assert all(rows[p]["reward"] > 0 for p in ever) and all(rows[p]["reward"] == 0 for p in set(members) - ever)


def test_a_watcher_keeps_only_recent_round_data_and_fetches_older_rounds_again(tmp_path, monkeypatch):
    """A watcher of a long job of a large model must not keep every round's updates (it grew by a
    round's updates each round until memory ran out): the auditor keeps round vectors up to
    `Auditor.EVIDENCE_BYTES`, fetches (and re-checks) an older round again when a game needs it,
    and reads members' values from each round's small leaf list, checked against its root."""
    chain = BoaChain()
    report = run_job(chain, tmp_path, JobConfig(providers=4, rounds=3, seed=5))
    dep = Deployment.attach(chain, report["contracts"])
    store = LocalBlobStore(tmp_path / "blobs")
    job = report["job_id"]
    spec, rounds = load_spec(dep, store, job), committed_rounds(dep, job)
    auditor = Auditor(dep, store)
    first = auditor.evidence(spec, job, 0, rounds)
    monkeypatch.setattr(Auditor, "EVIDENCE_BYTES", first.nbytes)  # room for one round's vectors
    for r in range(len(rounds)):
        ev = auditor.evidence(spec, job, r, rounds)
        assert auditor.held() == [(job, r)]
        assert auditor.members(job, r, rounds) == tuple((u.provider, u.weight) for u in ev.updates)
    again = auditor.evidence(spec, job, 0, rounds)  # dropped, fetched and checked again
    assert again is not first and np.array_equal(again.model, first.model) and again.tree.root == first.tree.root
    assert auditor.audit(job).ok


def test_an_update_from_a_provider_the_seed_did_not_pick_is_flagged(tmp_path, monkeypatch):
    from fedmarket.fl.data import load_dataset, subset
    from fedmarket.fl.partition import iid_partition
    from fedmarket.protocol.encoding import canonical_json
    from fedmarket.roles import Aggregator, Provider, Requester
    from fedmarket.roles.common import round_topic
    from fedmarket.spec import DataSchema, JobSpec, ParticipationSpec, RewardSpec, TrainingSpec
    from fedmarket.storage import Mailbox

    chain = BoaChain()
    accts = [chain.new_account("sel", i) for i in range(10)]
    dep = Deployment.deploy(chain, accts[0], accts[1].address, 100)
    for a in accts[2:]:
        dep.token.transact("mint", a.address, 10**21, sender=accts[0])
    store, box = LocalBlobStore(tmp_path / "b"), Mailbox(tmp_path / "m")
    ds = load_dataset("digits")
    parts = iid_partition(ds.y, 6, 0)
    spec = JobSpec(
        name="selection", data=DataSchema(n_features=64, n_classes=10, feature_low=[0.0] * 64, feature_high=[16.0] * 64),
        training=TrainingSpec(rounds=1, local_epochs=1), reward=RewardSpec(escrow=10**20),
        participation=ParticipationSpec(min_providers=6, max_providers=6, per_round=1),  # each picked w.p. 1/6: someone is passed over
    )
    agg = Aggregator(dep, accts[3], store, box)
    providers = [Provider(dep, accts[4 + i], store, box, subset(ds, parts[i]).X, subset(ds, parts[i]).y) for i in range(6)]
    job = Requester(dep, accts[2], store).post(spec, accts[3].address)
    agg.accept(job)
    for p in providers:
        p.join(job)
    agg.start(job)
    posted = [p.train(job, 0) for p in providers]
    outsider = next(p for p, m in zip(providers, posted) if m is None)  # the seed passed it over
    sent = outsider._post_update(spec, job, 0, np.ones(spec.n_params, dtype=np.int64), outsider.n_samples)
    box.post(round_topic(job, 0), canonical_json(sent))  # its receipt, sent anyway
    _, rejected = agg.collect(job, 0, spec)
    assert any("was not selected for round 0" in r["reason"] for r in rejected)  # an honest aggregator refuses it
    # a dishonest one takes it anyway (seals its commitment too): the audit names the stranger
    monkeypatch.setattr(aggregator_module, "round_providers", lambda dep, spec, job_id, r: joined_providers(dep, job_id))
    seal_and_reveal(agg, providers, job, 0)
    agg.run_round(job, 0)
    check = Auditor(dep, store).audit(job).rounds[0]
    assert not check.ok and outsider.address in check.problem and "not selected" in check.problem
    assert check.bad_leaf is not None  # and a leaf game proves it on chain: the aggregator cannot open it validly
    from fedmarket.roles.challenger import Challenger

    game = Challenger(dep, accts[9], store).check(job).event("GameOpened")
    assert (game["kind"], game["target"]) == (2, check.bad_leaf)
    agg_before = dep.holdings(accts[3].address)
    assert agg.defend(job) == []  # its opening reverts (the game's other moves would still be made)
    assert "provider not selected" in agg.defender.failed_moves[0][1]
    chain.advance_time(spec.deadlines.response_period + 1)
    dep.round_arbiter.transact("timeout", game["game_id"], sender=accts[9])
    assert dep.job(job)["state"].name == "FAILED" and dep.holdings(accts[3].address) == agg_before


@pytest.mark.parametrize("target, met", [(0.5, True), (0.999, False)])
def test_the_quality_gate_pays_the_pool_only_when_the_validators_median_accuracy_meets_the_target(tmp_path, target, met):
    report = run_job(BoaChain(), tmp_path, JobConfig(providers=4, rounds=2, validators=3, seed=2, target_accuracy=target))
    assert report["conserved"] is True
    q = report["quality"]
    assert q["met"] is met and q["target"] == target and 0.5 < q["accuracy"] < 0.999
    fees = report["aggregator_earned"] + report["validators_earned"]
    assert fees == 2 * 10**18 + 3 * 2 * 10**18 // 2  # 1 token a round to the aggregator, 0.5 a round to each validator
    pool = report["escrow"] - report["fee"] - fees  # what the providers share
    assert report["paid"] + report["refunded"] == pool
    if met:  # the pool is paid, floored leaf by leaf: the dust goes back
        assert report["refunded"] < 4
    else:  # half the providers' part (the default miss_payout_bps) is paid, the rest goes back to the requester
        assert pool // 2 - 4 < report["paid"] <= pool // 2
