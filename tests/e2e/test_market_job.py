"""A whole market job on the embedded EVM: conservation and every claim checked on chain."""

from __future__ import annotations

import pytest

from fedmarket.chain.boa_backend import BoaChain
from fedmarket.market import Deployment, JobState
from fedmarket.runner import JobConfig, run_job


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    chain = BoaChain()
    report = run_job(chain, tmp_path_factory.mktemp("job"), JobConfig(providers=5, rounds=3, seed=3))
    return chain, report


def test_job_settles_and_conserves_funds(job):
    chain, report = job
    dep = Deployment.attach(chain, report["contracts"])
    assert report["state"] == "SETTLED" and dep.job(report["job_id"])["state"] == JobState.SETTLED
    assert report["escrow"] == report["paid"] + report["aggregator_earned"] + report["fee"] + report["refunded"]
    assert report["aggregator_earned"] == report["rounds"] * 10**18  # its fee: one token per committed round
    assert report["conserved"] is True
    # all the market still holds is the aggregator's stake, released to its free stake by its claim
    aggregator = dep.job(report["job_id"])["aggregator"]
    assert dep.balance(dep.market.address) == dep.market.call("free_stake", aggregator, 2) > 0
    assert report["job_funds_left_in_market"] == 0 and report["others_delta"] == 0
    assert report["fee"] == report["escrow"] // 100  # 1% protocol fee, read from the treasury balance


def test_every_provider_claimed_on_chain(job):
    chain, report = job
    dep = Deployment.attach(chain, report["contracts"])
    job_id = report["job_id"]
    providers = [r for r in report["settlement"] if r["role"] == "provider"]
    all_claims = dep.market.events("RewardClaimed", job_id=job_id)
    claims = [c for c in all_claims if c["account"] in {r["account"] for r in providers}]
    assert sorted(c["account"] for c in claims) == sorted(r["account"] for r in providers)
    assert [c["amount"] for c in all_claims if c["account"] == report["settlement"][-1]["account"]] == \
        [report["aggregator_earned"]]  # the aggregator claimed its fee
    for row in providers:
        assert dep.market.call("membership", job_id, row["account"]) == (1, 0)  # provider, nothing locked
        assert row["reward"] > 0
        assert row["reputation"] == report["rounds"]  # one point per aggregated round
    assert sum(c["amount"] for c in claims) == report["paid"]
    assert all(c["stake_released"] == report["config"]["stake_tokens"] * 10**18 for c in claims)


def test_model_token_belongs_to_the_requester(job):
    chain, report = job
    dep = Deployment.attach(chain, report["contracts"])
    requester = dep.job(report["job_id"])["requester"]
    assert report["model_token_owner"] == requester == dep.licence.call("ownerOf", report["job_id"])


def test_rewards_follow_contributed_samples(job):
    _, report = job
    rows = [r for r in report["settlement"] if r["role"] == "provider"]
    total_samples = sum(r["samples"] for r in rows)
    pool = report["escrow"] - report["fee"] - report["aggregator_earned"]  # the providers' part
    for r in rows:  # each leaf provable on its own: floor(pool * value / value total)
        assert r["reward"] == pool * r["samples"] // total_samples
    assert sum(r["reward"] for r in rows) + report["refunded"] == pool and report["refunded"] < len(rows)


def test_one_round_transaction_per_round_and_model_learns(job):
    chain, report = job
    dep = Deployment.attach(chain, report["contracts"])
    rounds = dep.market.events("RoundCommitted", job_id=report["job_id"])
    assert [r["round"] for r in rounds] == list(range(report["rounds"]))
    assert all(r["count"] == report["providers"] for r in rounds)
    assert len(report["gas_per_round"]) == report["rounds"]
    assert len(report["accuracy"]) == report["rounds"] and report["final_accuracy"] >= 0.9


def test_a_second_demo_in_the_same_directory_settles(tmp_path):
    """The embedded chain starts afresh each run, at the same addresses: an earlier run's messages
    left in the directory would pass every signature check, so each run starts with a mailbox of
    its own."""
    # the same accounts in both runs (the seed), other shards (the provider count): the first run's
    # acknowledgements of its updates, read as this run's, would "prove" this aggregator censored them
    first = run_job(BoaChain(), tmp_path, JobConfig(providers=5, rounds=2, seed=1))
    second = run_job(BoaChain(), tmp_path, JobConfig(providers=3, rounds=2, seed=1))
    assert first["state"] == second["state"] == "SETTLED" and second["updates_per_round"] == [3, 3]
