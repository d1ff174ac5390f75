"""A dishonest aggregator on the embedded chain: the auditor sees it, a challenger proves it in a
dispute game, the aggregator is slashed, the job fails with a full refund, and every balance is
accounted for."""

from __future__ import annotations

import pytest

from fedmarket.fl.data import load_dataset, subset
from fedmarket.fl.partition import iid_partition
from fedmarket.market import JobState
from fedmarket.roles import Aggregator, Provider, Requester
from fedmarket.driver import Cast, JobDriver
from fedmarket.roles.auditor import Auditor
from fedmarket.roles.challenger import Challenger
from fedmarket.roles.sealed import seal_and_reveal
from fedmarket.spec import DataSchema, JobSpec, ParticipationSpec, RewardSpec, TrainingSpec
from fedmarket.storage import LocalBlobStore, Mailbox
from fedmarket.testing.adversary import ShiftyAggregator

TOKEN = 10**18


def setup_job(world, tmp_path, aggregator_cls, strategy="fedavg", trim=0, n=4):
    dep = world["dep"]
    store, box = LocalBlobStore(tmp_path / "blobs"), Mailbox(tmp_path / "box")
    ds = load_dataset("digits")
    spec = JobSpec(
        name="cheat", strategy=strategy, trim=trim,
        data=DataSchema(n_features=64, n_classes=10, feature_low=[0.0] * 64, feature_high=[16.0] * 64),
        training=TrainingSpec(rounds=3, local_epochs=1),
        reward=RewardSpec(escrow=100 * TOKEN, provider_stake=TOKEN, aggregator_stake=50 * TOKEN),
        participation=ParticipationSpec(min_providers=n, max_providers=n),
    )
    requester = Requester(dep, world["requester"], store)
    agg = aggregator_cls(dep, world["aggregator"], store, box)
    parts = iid_partition(ds.y, n, 0)
    providers = [Provider(dep, world["providers"][i], store, box, subset(ds, parts[i]).X, subset(ds, parts[i]).y)
                 for i in range(n)]
    job = requester.post(spec, world["aggregator"].address)
    agg.accept(job)
    for p in providers:
        p.join(job)
    agg.start(job)
    driver = JobDriver(dep, store, box, Cast(requester, agg, providers, [], Challenger(dep, world["outsider"], store)), spec)
    driver.job_id = job
    return dep, store, job, agg, providers, driver


def run_rounds(job, agg, providers, rounds):
    for r in range(rounds):
        for p in providers:
            p.train(job, r)
        seal_and_reveal(agg, providers, job, r)
        assert agg.run_round(job, r).event("RoundCommitted")["count"] == len(providers)


@pytest.mark.parametrize("strategy, trim", [("fedavg", 0), ("median", 0), ("trimmed_mean", 1)])
def test_honest_job_audits_clean_and_cannot_be_challenged(world, tmp_path, strategy, trim):
    dep, store, job, agg, providers, _ = setup_job(world, tmp_path, Aggregator, strategy, trim)
    run_rounds(job, agg, providers, 3)
    agg.post_rewards(job)
    report = Auditor(dep, store).audit(job)
    assert report.ok and [r.ok for r in report.rounds] == [True] * 3 and report.rewards_ok
    challenger = Challenger(dep, world["outsider"], store)
    assert challenger.check(job) is None and challenger.check_rewards(job) is None


def test_wrong_aggregate_is_caught_proven_and_slashed(world, tmp_path):
    dep, store, job, agg, providers, driver = setup_job(world, tmp_path, ShiftyAggregator)
    run_rounds(job, agg, providers, 2)
    report = Auditor(dep, store).audit(job)
    assert [r.ok for r in report.rounds] == [True, False]
    assert report.rounds[1].bad_chunk == 200 // 64 and not report.ok

    treasury = dep.market.call("TREASURY")
    watched = [world["requester"].address, world["outsider"].address, world["aggregator"].address, treasury,
               *(p.address for p in providers)]
    before = {a: dep.holdings(a) for a in watched}
    opened = Challenger(dep, world["outsider"], store).check(job)
    game = opened.event("GameOpened")
    assert (game["round"], game["target"], game["kind"]) == (1, 3, 1)  # an aggregate game on chunk 3 of round 1
    driver.play_games()  # the aggregator cannot stand by any claim consistent with its model: it falls silent
    resolved = dep.round_arbiter.events("GameResolved", game_id=game["game_id"])[-1]
    assert resolved["challenger_won"] and not resolved["moot"]
    info = dep.job(job)
    assert info["state"] == JobState.FAILED and info["current_round"] == 1
    for p in providers:
        dep.market.transact("release_stake", job, p.address, sender=world["outsider"])
    after = {a: dep.holdings(a) for a in watched}
    stake = 50 * TOKEN
    assert after[world["outsider"].address] - before[world["outsider"].address] == stake // 2  # bond back, plus half
    assert after[treasury] - before[treasury] == stake // 2
    assert after[world["requester"].address] - before[world["requester"].address] == 100 * TOKEN
    assert after[world["aggregator"].address] == before[world["aggregator"].address]  # its stake was locked, now gone
    assert all(after[p.address] - before[p.address] == TOKEN for p in providers)  # stakes back
    # nothing of the job is left in the market, nor in the arbiter
    assert dep.balance(dep.market.address) == sum(dep.staked(a) for a in watched)
    assert dep.balance(dep.round_arbiter.address) == 0
