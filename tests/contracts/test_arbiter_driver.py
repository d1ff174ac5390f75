"""The arbiters over a real little job run by `fedmarket.driver.JobDriver` (digits, softmax
regression, 4 providers, 3 rounds): the roles' own game players (`roles.games.Defender` for the
aggregator, `roles.challenger.Challenger` and `roles.games.choose` for the challenger) win every
kind of game for an honest aggregator, and prove the cheats of `testing.adversary`."""

from __future__ import annotations

import json

import pytest

from fedmarket.driver import JobDriver, RoundPlan
from fedmarket.market import JobState
from fedmarket.protocol import rules as R
from fedmarket.roles.common import metrics_cid, round_topic
from fedmarket.roles.games import Truth, job_games
from fedmarket.runner import JobConfig, demo_spec, demo_world
from fedmarket.testing import adversary as A

PROVIDERS, ROUNDS = 4, 3


def driver(chain, workdir, aggregator_cls=None, **cfg) -> JobDriver:
    cfg = JobConfig(providers=PROVIDERS, rounds=ROUNDS, local_epochs=1, **cfg)
    ds, train, test, parts = cfg.split()
    spec = demo_spec(cfg, ds)
    w = demo_world(chain, workdir, cfg, spec, ds, train, test, parts)
    c = w.cast
    if aggregator_cls is not None:
        agg = c.aggregator
        c.aggregator = aggregator_cls(w.dep, agg.account, agg.store, agg.mailbox)
    return JobDriver(w.dep, c.aggregator.store, c.aggregator.mailbox, c, spec)


@pytest.fixture(scope="module")
def trained(boa_world, tmp_path_factory):
    """An honest job with every round committed (its reward root not posted yet)."""
    chain = boa_world["chain"]
    with chain.snapshot():
        drv = driver(chain, tmp_path_factory.mktemp("trained"))
        drv.open()
        for r in range(ROUNDS):
            drv.round(r)
        assert drv.state == JobState.TRAINING and not drv.games
        yield drv


@pytest.fixture
def drv(trained):
    with trained.chain.snapshot():
        yield trained


def challenge(drv: JobDriver, arbiter, fn: str, *args) -> int:
    ch = drv.cast.challenger
    ch._bond(drv.job_id, arbiter)
    return arbiter.transact(fn, drv.job_id, *args, sender=ch.account).event("GameOpened")["game_id"]


def play(drv: JobDriver, arbiter, gid: int) -> dict:
    """Both sides play until the game is over; returns its GameResolved event."""
    drv.play_games()
    assert not job_games(drv.dep, drv.job_id)
    return arbiter.events("GameResolved", game_id=gid)[0].args


def holdings(drv: JobDriver) -> tuple[int, int]:
    return drv.dep.holdings(drv.cast.aggregator.address), drv.dep.holdings(drv.cast.challenger.account.address)


@pytest.mark.parametrize("r, chunk", [(0, 0), (1, 3), (2, 10)])  # 650 parameters: 11 chunks, the last short
def test_an_honest_aggregate_of_a_real_round_is_defended(drv, r, chunk):
    truth = Truth(drv.dep, drv.store, drv.job_id)
    agg, ch = holdings(drv)
    gid = challenge(drv, drv.dep.round_arbiter, "challenge_aggregate", r, chunk, *truth.round_args(r))
    res = play(drv, drv.dep.round_arbiter, gid)
    assert (res["challenger_won"], res["reason"]) == (False, "update shown")
    bond = drv.dep.job(drv.job_id)["dispute_bond"]
    assert holdings(drv) == (agg + bond, ch - bond)


@pytest.mark.parametrize("index", range(PROVIDERS))
def test_every_real_leaf_is_shown_valid(drv, index):
    truth = Truth(drv.dep, drv.store, drv.job_id)
    gid = challenge(drv, drv.dep.round_arbiter, "challenge_leaf", 2, index, *truth.round_args(2))
    assert play(drv, drv.dep.round_arbiter, gid)["reason"] == "update shown"


def test_an_acknowledged_update_is_shown_included(drv):
    r = 1
    ack = json.loads(drv.mailbox.read(round_topic(drv.job_id, r) + "-acks")[0])
    truth = Truth(drv.dep, drv.store, drv.job_id)
    c = truth.rounds[r]
    listed = json.loads(drv.store.get(metrics_cid(c.metrics_hash)))["updates"]
    receipt = next(u for u in listed if u["provider"] == ack["provider"])
    data, proof, _, _ = truth.round_args(r)
    hx = lambda s: bytes.fromhex(s.removeprefix("0x"))
    gid = challenge(drv, drv.dep.round_arbiter, "challenge_inclusion", r, data, proof, ack["provider"],
                    hx(ack["update_root"]), ack["weight"], hx(receipt["signature"]), hx(ack["signature"]))
    assert play(drv, drv.dep.round_arbiter, gid)["reason"] == "update included"


def test_an_honest_reward_root_is_defended_then_settles(drv):
    drv._judge_and_post()
    assert drv.state == JobState.FINALIZING
    wa = drv.dep.reward_arbiter
    leaves = Truth(drv.dep, drv.store, drv.job_id).rewards()[0]
    assert len(leaves) == PROVIDERS + 1
    for gid in (challenge(drv, wa, "challenge_rewards"), challenge(drv, wa, "challenge_value", 0),
                challenge(drv, wa, "challenge_value", len(leaves) - 1)):
        res = play(drv, wa, gid)
        assert not res["challenger_won"] and res["reason"] in ("reward leaf shown", "round shown")
    drv.finish()
    assert drv.state == JobState.SETTLED
    assert drv.dep.job(drv.job_id)["claimed_total"] == drv.dep.job(drv.job_id)["reward_total"]


@pytest.mark.parametrize("cheat, reason", [(A.ShiftyAggregator, "round fault proven"),
                                           (A.DroppingAggregator, "censored update")])
def test_a_cheating_aggregator_is_proven_wrong_by_the_roles(boa_world, tmp_path, cheat, reason):
    chain = boa_world["chain"]
    with chain.snapshot():
        drv = driver(chain, tmp_path, aggregator_cls=cheat)
        accounts = [drv.cast.aggregator.address, drv.cast.challenger.account.address]
        before = {a: drv.dep.holdings(a) for a in accounts}
        drv.run()
        assert drv.state == JobState.FAILED and len(drv.games) == 1
        failed = drv.dep.market.events("JobFailed", job_id=drv.job_id)[0]
        assert (failed["round"], failed["reason"]) == (1, reason)
        stake = drv.spec.reward.aggregator_stake
        assert drv.dep.holdings(accounts[0]) == before[accounts[0]] - stake
        assert drv.dep.holdings(accounts[1]) == before[accounts[1]] + stake * R.CHALLENGER_BPS // R.BPS
        for p in drv.cast.providers:  # every provider got its stake back
            word, locked = drv.dep.market.call("membership", drv.job_id, p.address)
            assert locked == 0 and not R.is_slashed(word)


def test_an_empty_real_round_is_defended(boa_world, tmp_path):
    chain = boa_world["chain"]
    with chain.snapshot():
        drv = driver(chain, tmp_path)
        drv.open()
        drv.round(0)
        drv.round(1, RoundPlan({i: "mask" for i in range(PROVIDERS)}))  # every provider vanishes: nothing to aggregate
        truth = Truth(drv.dep, drv.store, drv.job_id)
        assert truth.rounds[1].count == 0
        gid = challenge(drv, drv.dep.round_arbiter, "challenge_aggregate", 1, 0, *truth.round_args(1))
        drv.cast.aggregator.defend(drv.job_id)
        res = drv.dep.round_arbiter.events("GameResolved", game_id=gid)[0].args
        assert (res["challenger_won"], res["reason"]) == (False, "empty round keeps the model")
