"""JobMarket on the embedded EVM: every external function, its events and every revert, and the
stake ledger (`modules/stakes.vy`). The judges' entry points (slash, fail_judged, fail_proven,
reward_fault, mark_quorum) are also called here directly, as their judge contract would."""

from __future__ import annotations

import itertools

import pytest
from contract_kit import (
    AGG_STAKE,
    ESCROW,
    FEE_BPS,
    MAX,
    STAKE,
    TOKEN,
    UNBONDING_DELAY,
    VAL_STAKE,
    ZERO32,
    ZERO_ADDR,
    Kit,
    events,
    pool_of,
    reverts,
)
from eth_utils import keccak

from fedmarket.chain import artifacts
from fedmarket.market import Deployment, JobState, JobTerms, Role
from fedmarket.protocol import rules as R
from fedmarket.protocol.receipts import permit_signature

ROOT = keccak(b"a reward root")

# ---------------------------------------------------------------- deployment


def test_deployment_wires_every_immutable(kit):
    m, dep = kit.m, kit.dep
    assert m.call("TOKEN") == dep.token.address
    assert m.call("DISPUTES") == dep.disputes.address
    assert m.call("ROUND_ARBITER") == dep.round_arbiter.address
    assert m.call("REWARD_ARBITER") == dep.reward_arbiter.address
    assert m.call("TERMS_CHECK") == dep.terms_check.address
    assert m.call("TREASURY") == kit.treasury
    assert (m.call("FEE_BPS"), m.call("UNBONDING_DELAY")) == (FEE_BPS, UNBONDING_DELAY)
    assert dep.disputes.call("MARKET") == m.address
    for arbiter in (dep.round_arbiter, dep.reward_arbiter):
        assert arbiter.call("MARKET") == m.address
        assert arbiter.call("DISPUTES") == dep.disputes.address
        assert arbiter.call("TOKEN") == dep.token.address
        assert arbiter.call("SEPARATOR") == dep.disputes.call("separator")
        assert (arbiter.call("game_count"), arbiter.call("open_games", 1)) == (0, 0)
    assert dep.round_arbiter.call("RULES") == dep.rules.address
    assert m.call("job_count") == 0


def _deploy(kit, name, *args):
    art = artifacts.load(name)
    return kit.chain.deploy(kit.deployer, name, art.abi, art.bytecode, *args)


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"token": ZERO_ADDR}, "market: zero address"),
        ({"disputes": ZERO_ADDR}, "market: zero address"),
        ({"round_arbiter": ZERO_ADDR}, "market: zero address"),
        ({"reward_arbiter": ZERO_ADDR}, "market: zero address"),
        ({"terms_check": ZERO_ADDR}, "market: zero address"),
        ({"treasury": ZERO_ADDR}, "market: zero address"),
        ({"fee_bps": R.MAX_FEE_BPS + 1}, "market: fee too high"),
        ({"unbonding_delay": R.MAX_CLAIM_PERIOD + 1}, "market: unbonding too long"),
    ],
)
def test_market_constructor_rejects(kit, change, reason):
    dep = kit.dep
    args = {"token": dep.token.address, "disputes": dep.disputes.address, "round_arbiter": dep.round_arbiter.address,
                "reward_arbiter": dep.reward_arbiter.address, "terms_check": dep.terms_check.address, "treasury": kit.treasury,
                "fee_bps": FEE_BPS, "unbonding_delay": UNBONDING_DELAY}
    args.update(change)
    with reverts(reason):
        _deploy(kit, "JobMarket", *args.values())


def test_market_constructor_accepts_its_bounds(kit):
    dep = kit.dep
    m = _deploy(kit, "JobMarket", dep.token.address, dep.disputes.address, dep.round_arbiter.address,
                dep.reward_arbiter.address, dep.terms_check.address, kit.treasury, R.MAX_FEE_BPS, R.MAX_CLAIM_PERIOD)
    assert (m.call("FEE_BPS"), m.call("UNBONDING_DELAY")) == (R.MAX_FEE_BPS, R.MAX_CLAIM_PERIOD)


def test_judges_constructors_reject_zero_addresses(kit):
    dep = kit.dep
    with reverts("disputes: market is zero"):
        _deploy(kit, "Disputes", ZERO_ADDR)
    for market, disputes in ((ZERO_ADDR, dep.disputes.address), (dep.market.address, ZERO_ADDR)):
        with reverts("arbiter: zero address"):
            _deploy(kit, "RoundArbiter", market, disputes, dep.token.address, dep.rules.address)
        with reverts("arbiter: zero address"):
            _deploy(kit, "RewardArbiter", market, disputes, dep.token.address)


# ---------------------------------------------------------------- post_job


def test_post_job_locks_escrow_stores_terms_and_emits(kit):
    req = kit.requester
    before = kit.balance(req)
    market_before = kit.balance(kit.m.address)
    terms = kit.terms(rule=R.Rule.MEDIAN, licence_price=7, privacy_budget=3 * R.EPSILON_SCALE)
    receipt = kit.m.transact("post_job", terms.abi(), "bafkreispec", sender=req)
    ev = receipt.event("JobPosted")
    job = ev["job_id"]
    assert job == 1 == kit.m.call("job_count")
    assert (ev["requester"], ev["aggregator"], ev["spec_hash"], ev["spec_cid"], ev["escrow"]) == (
        req.address, kit.aggregator.address, keccak(b"spec"), "bafkreispec", ESCROW)
    assert kit.balance(req) == before - ESCROW
    assert kit.balance(kit.m.address) == market_before + ESCROW
    assert JobTerms.from_chain(kit.m.call("terms", job)) == terms
    progress = kit.m.call("progress", job)
    assert progress["requester"] == req.address and not progress["accepted"]
    assert (progress["n_providers"], progress["reward_root"], progress["poster"]) == (0, ZERO32, ZERO_ADDR)
    assert kit.m.call("job_status", job) == (JobState.OPEN, 0, 0, False, kit.aggregator.address)
    assert kit.dep.job(job)["state"] == JobState.OPEN
    second = kit.post()
    assert second == 2 == kit.m.call("job_count")


def test_unknown_job_reads_as_empty(kit):
    assert kit.m.call("job_status", 77) == (0, 0, 0, False, ZERO_ADDR)
    assert kit.m.call("terms", 77)["escrow"] == 0
    assert not kit.m.call("verify_round", 77, 0, (ZERO32,) * 2 + (0, ZERO32, 0, ZERO32, ZERO32), [ZERO32] * 14)


def test_post_job_needs_a_spec_cid(kit):
    with reverts("market: empty spec cid"):
        kit.post(cid="")


@pytest.mark.parametrize(
    "over, reason",
    [
        ({"escrow": 0}, "market: bad escrow"),
        ({"aggregator": ZERO_ADDR}, "market: aggregator is zero"),
        ({"rounds": 0}, "market: bad round count"),
        ({"max_validators": 2, "min_validators": 0}, "market: validated job needs min validators"),
        ({"rule": R.Rule.SECURE_SUM}, "market: secure sum needs validators"),
    ],
)
def test_post_job_reverts_with_the_terms_check_reason(kit, over, reason):
    terms = kit.terms(**over)
    assert kit.dep.terms_check.call("problem", terms.abi(), kit.requester.address, kit.now() + 1) == reason
    with reverts(reason):
        kit.post(**over)
    assert kit.m.call("job_count") == 0


def test_requester_cannot_be_its_own_aggregator(kit):
    with reverts("market: requester cannot aggregate"):
        kit.post(aggregator=kit.requester.address)


def test_post_job_without_allowance_moves_nothing(kit):
    req = kit.requester
    kit.token.transact("approve", kit.m.address, 0, sender=req)
    before = kit.balance(req)
    with reverts("erc20: insufficient allowance"):
        kit.post()
    assert kit.balance(req) == before and kit.m.call("job_count") == 0


# ---------------------------------------------------------------- stakes


def test_deposit_unbond_withdraw_cycle(kit):
    v, m = kit.validators[0], kit.m
    before = kit.balance(v)
    ev = m.transact("deposit", Role.VALIDATOR, 30 * TOKEN, sender=v).event("StakeDeposited")
    assert (ev["account"], ev["role"], ev["amount"]) == (v.address, Role.VALIDATOR, 30 * TOKEN)
    assert m.call("free_stake", v.address, Role.VALIDATOR) == 30 * TOKEN
    assert m.call("free_stake", v.address, Role.PROVIDER) == 0
    ev = m.transact("request_unbond", Role.VALIDATOR, 20 * TOKEN, sender=v).event("UnbondRequested")
    release = kit.now() + UNBONDING_DELAY
    assert (ev["account"], ev["role"], ev["amount"], ev["release_time"]) == (v.address, Role.VALIDATOR, 20 * TOKEN, release)
    assert m.call("unbonding", v.address, Role.VALIDATOR) == {"amount": 20 * TOKEN, "release_time": release}
    assert m.call("free_stake", v.address, Role.VALIDATOR) == 10 * TOKEN
    kit.advance(UNBONDING_DELAY - 2)  # the next transaction runs one second before the release
    with reverts("market: still unbonding"):
        m.transact("withdraw", Role.VALIDATOR, sender=v)
    kit.advance(1)  # ... and now exactly at it
    ev = m.transact("withdraw", Role.VALIDATOR, sender=v).event("StakeWithdrawn")
    assert (ev["account"], ev["role"], ev["amount"]) == (v.address, Role.VALIDATOR, 20 * TOKEN)
    assert kit.balance(v) == before - 10 * TOKEN
    assert m.call("unbonding", v.address, Role.VALIDATOR) == {"amount": 0, "release_time": 0}
    with reverts("market: nothing unbonding"):
        m.transact("withdraw", Role.VALIDATOR, sender=v)


def test_a_second_unbonding_adds_and_restarts_the_delay(kit):
    p, m = kit.providers[0], kit.m
    m.transact("deposit", Role.PROVIDER, 10 * TOKEN, sender=p)
    m.transact("request_unbond", Role.PROVIDER, 4 * TOKEN, sender=p)
    kit.advance(UNBONDING_DELAY // 2)
    m.transact("request_unbond", Role.PROVIDER, 6 * TOKEN, sender=p)
    release = kit.now() + UNBONDING_DELAY
    assert m.call("unbonding", p.address, Role.PROVIDER) == {"amount": 10 * TOKEN, "release_time": release}
    kit.advance(UNBONDING_DELAY // 2)
    with reverts("market: still unbonding"):
        m.transact("withdraw", Role.PROVIDER, sender=p)
    kit.advance(UNBONDING_DELAY)
    assert m.transact("withdraw", Role.PROVIDER, sender=p).event("StakeWithdrawn")["amount"] == 10 * TOKEN


@pytest.mark.parametrize(
    "fn, args, reason",
    [
        ("deposit", (0, TOKEN), "market: bad role"),
        ("deposit", (4, TOKEN), "market: bad role"),
        ("deposit", (1, 0), "market: bad amount"),
        ("deposit", (1, R.MAX_AMOUNT + 1), "market: bad amount"),
        ("request_unbond", (0, TOKEN), "market: bad role"),
        ("request_unbond", (4, TOKEN), "market: bad role"),
        ("request_unbond", (1, 0), "market: amount is zero"),
        ("request_unbond", (1, 1), "market: not enough free stake"),
        ("withdraw", (0,), "market: nothing unbonding"),
    ],
)
def test_stake_ledger_rejects_bad_input(kit, fn, args, reason):
    with reverts(reason):
        kit.m.transact(fn, *args, sender=kit.providers[0])


def test_deposit_takes_the_largest_amount(kit):
    p = kit.providers[0]
    kit.token.transact("mint", p.address, R.MAX_AMOUNT, sender=kit.deployer)
    kit.m.transact("deposit", Role.PROVIDER, R.MAX_AMOUNT, sender=p)
    assert kit.m.call("free_stake", p.address, Role.PROVIDER) == R.MAX_AMOUNT


def test_deposit_without_allowance_reverts(kit):
    p = kit.providers[0]
    kit.token.transact("approve", kit.m.address, 0, sender=p)
    with reverts("erc20: insufficient allowance"):
        kit.m.transact("deposit", Role.PROVIDER, TOKEN, sender=p)


def test_unbonding_more_than_free_stake_reverts(kit):
    v = kit.validators[0]
    kit.m.transact("deposit", Role.VALIDATOR, 5 * TOKEN, sender=v)
    with reverts("market: not enough free stake"):
        kit.m.transact("request_unbond", Role.VALIDATOR, 5 * TOKEN + 1, sender=v)
    with reverts("market: not enough free stake"):  # free stake is per role
        kit.m.transact("request_unbond", Role.PROVIDER, 1, sender=v)


# ---------------------------------------------------------------- accept / join


def test_accept_locks_the_aggregator_stake_free_stake_first(kit):
    agg, m = kit.aggregator, kit.m
    m.transact("deposit", Role.AGGREGATOR, 30 * TOKEN, sender=agg)
    job = kit.post()
    before = kit.balance(agg)
    ev = m.transact("accept", job, sender=agg).event("JobAccepted")
    assert (ev["job_id"], ev["aggregator"], ev["stake"]) == (job, agg.address, AGG_STAKE)
    assert kit.balance(agg) == before - (AGG_STAKE - 30 * TOKEN)
    assert m.call("free_stake", agg.address, Role.AGGREGATOR) == 0
    assert m.call("membership", job, agg.address) == (Role.AGGREGATOR, AGG_STAKE)
    assert m.call("progress", job)["accepted"]


def test_accept_from_free_stake_alone_moves_no_tokens(kit):
    agg, m = kit.aggregator, kit.m
    m.transact("deposit", Role.AGGREGATOR, AGG_STAKE + 1, sender=agg)
    job = kit.post()
    before = kit.balance(agg)
    receipt = m.transact("accept", job, sender=agg)
    assert kit.balance(agg) == before and not events(receipt, "Transfer")
    assert m.call("free_stake", agg.address, Role.AGGREGATOR) == 1


def test_accept_rules(kit):
    job = kit.post()
    with reverts("market: not the aggregator"):
        kit.m.transact("accept", job, sender=kit.outsider)
    with reverts("market: job not open"):
        kit.m.transact("accept", 99, sender=kit.aggregator)
    kit.m.transact("accept", job, sender=kit.aggregator)
    with reverts("market: already a participant"):
        kit.m.transact("accept", job, sender=kit.aggregator)
    started = kit.job()
    with reverts("market: job not open"):
        kit.m.transact("accept", started.id, sender=kit.aggregator)


def test_join_locks_the_provider_stake_free_stake_first(kit):
    p, m = kit.providers[0], kit.m
    m.transact("deposit", Role.PROVIDER, 4 * TOKEN, sender=p)
    job = kit.post()
    before = kit.balance(p)
    ev = m.transact("join", job, sender=p).event("ProviderJoined")
    assert (ev["job_id"], ev["provider"], ev["stake"], ev["n_providers"]) == (job, p.address, STAKE, 1)
    assert kit.balance(p) == before - (STAKE - 4 * TOKEN)
    assert m.call("free_stake", p.address, Role.PROVIDER) == 0
    assert m.call("membership", job, p.address) == (Role.PROVIDER, STAKE)
    assert m.transact("join", job, sender=kit.providers[1]).event("ProviderJoined")["n_providers"] == 2
    assert m.call("progress", job)["n_providers"] == 2


def test_join_rules(kit):
    m = kit.m
    job = kit.post(max_providers=2, min_providers=1)
    with reverts("market: job not open"):
        m.transact("join", 99, sender=kit.providers[0])
    with reverts("market: requester cannot join"):
        m.transact("join", job, sender=kit.requester)
    m.transact("accept", job, sender=kit.aggregator)
    with reverts("market: already a participant"):
        m.transact("join", job, sender=kit.aggregator)
    m.transact("join", job, sender=kit.providers[0])
    with reverts("market: already a participant"):
        m.transact("join", job, sender=kit.providers[0])
    m.transact("join", job, sender=kit.providers[1])
    with reverts("market: job is full"):
        m.transact("join", job, sender=kit.providers[2])
    late = kit.post()
    kit.advance(kit.terms().join_deadline - kit.now() - 1)  # the next transaction runs at the join deadline
    with reverts("market: join deadline passed"):
        m.transact("join", late, sender=kit.providers[0])
    with reverts("market: join deadline passed"):
        m.transact("join_validator", late, VAL_STAKE, sender=kit.validators[0])
    started = kit.job()
    with reverts("market: job not open"):
        m.transact("join", started.id, sender=kit.providers[4])


def test_join_at_the_last_second_before_the_deadline(kit):
    job = kit.post()
    deadline = kit.m.call("terms", job)["join_deadline"]
    kit.advance(deadline - kit.now() - 2)
    kit.m.transact("join", job, sender=kit.providers[0])
    assert kit.now() == deadline - 1


def test_join_with_permit_needs_no_prior_approve(kit):
    p = kit.providers[0]
    kit.token.transact("approve", kit.m.address, 0, sender=p)
    job = kit.post()
    v, r, s = permit_signature(kit.token, p, kit.m.address, STAKE, kit.now() + 100)
    ev = kit.m.transact("join_with_permit", job, kit.now() + 100, v, r, s, sender=p).event("ProviderJoined")
    assert ev["provider"] == p.address
    assert kit.m.call("membership", job, p.address) == (Role.PROVIDER, STAKE)
    assert kit.token.call("allowance", p.address, kit.m.address) == 0


def test_join_with_a_bad_permit_falls_back_to_the_allowance(kit):
    p, q = kit.providers[0], kit.providers[1]
    job = kit.post()
    v, r, s = permit_signature(kit.token, p, kit.m.address, STAKE - 1, kit.now() + 100)  # not the stake
    kit.m.transact("join_with_permit", job, kit.now() + 100, v, r, s, sender=p)  # p approved the market before
    assert kit.m.call("membership", job, p.address) == (Role.PROVIDER, STAKE)
    kit.token.transact("approve", kit.m.address, 0, sender=q)
    v, r, s = permit_signature(kit.token, q, kit.m.address, STAKE, kit.now() - 1)  # expired
    with reverts("erc20: insufficient allowance"):
        kit.m.transact("join_with_permit", job, kit.now() - 1, v, r, s, sender=q)


def test_join_validator_locks_its_stake_and_sums_the_total(kit):
    m = kit.m
    job = kit.post(max_validators=3, min_validators=1)
    ev = m.transact("join_validator", job, VAL_STAKE, sender=kit.validators[0]).event("ValidatorJoined")
    assert (ev["job_id"], ev["validator"], ev["stake"], ev["n_validators"]) == (job, kit.validators[0].address, VAL_STAKE, 1)
    ev = m.transact("join_validator", job, 3 * VAL_STAKE, sender=kit.validators[1]).event("ValidatorJoined")
    assert (ev["stake"], ev["n_validators"]) == (3 * VAL_STAKE, 2)
    progress = m.call("progress", job)
    assert (progress["n_validators"], progress["validator_total_stake"]) == (2, 4 * VAL_STAKE)
    assert m.call("membership", job, kit.validators[1].address) == (Role.VALIDATOR, 3 * VAL_STAKE)


def test_join_validator_rules(kit):
    m = kit.m
    job = kit.post(max_validators=1, min_validators=1)
    v0, v1 = kit.validators[0], kit.validators[1]
    with reverts("market: job not open"):
        m.transact("join_validator", 99, VAL_STAKE, sender=v0)
    with reverts("market: requester cannot join"):
        m.transact("join_validator", job, VAL_STAKE, sender=kit.requester)
    with reverts("market: stake below minimum"):
        m.transact("join_validator", job, VAL_STAKE - 1, sender=v0)
    with reverts("market: stake too large"):
        m.transact("join_validator", job, R.MAX_AMOUNT + 1, sender=v0)
    m.transact("join_validator", job, VAL_STAKE, sender=v0)
    with reverts("market: validator set full"):
        m.transact("join_validator", job, VAL_STAKE, sender=v1)
    unvalidated = kit.post(validator_stake=0)
    with reverts("market: stake below minimum"):
        m.transact("join_validator", unvalidated, 0, sender=v1)
    with reverts("market: validator set full"):
        m.transact("join_validator", unvalidated, VAL_STAKE, sender=v1)
    both = kit.post(max_validators=2, min_validators=1)
    m.transact("join", both, sender=kit.providers[0])
    with reverts("market: already a participant"):  # one role per account and job
        m.transact("join_validator", both, VAL_STAKE, sender=kit.providers[0])


# ---------------------------------------------------------------- start


def test_start_opens_round_zero_and_fixes_the_validator_stake(kit):
    job = kit.job(validators=2, start=False, stakes={1: 2 * VAL_STAKE})
    receipt = kit.m.transact("start", job.id, sender=kit.requester)  # the requester may start early too
    ev = receipt.event("TrainingStarted")
    deadline = kit.now() + job.terms.round_duration
    assert (ev["n_providers"], ev["n_validators"], ev["validator_total_stake"], ev["round_deadline"]) == (
        3, 2, 3 * VAL_STAKE, deadline)
    assert ev["seed"] != ZERO32 and ev["seed"] == kit.m.call("progress", job.id)["start_seed"]
    assert kit.m.call("job_status", job.id) == (JobState.TRAINING, 0, deadline, False, kit.aggregator.address)
    other = kit.job()
    assert kit.m.call("progress", other.id)["start_seed"] not in (ZERO32, ev["seed"])


def test_start_rules(kit):
    m = kit.m
    job = kit.post(min_providers=2, max_providers=3, min_validators=1, max_validators=1)
    with reverts("market: not accepted yet"):
        m.transact("start", job, sender=kit.aggregator)
    m.transact("accept", job, sender=kit.aggregator)
    m.transact("join", job, sender=kit.providers[0])
    with reverts("market: too few providers"):
        m.transact("start", job, sender=kit.aggregator)
    m.transact("join", job, sender=kit.providers[1])
    with reverts("market: too few validators"):
        m.transact("start", job, sender=kit.aggregator)
    m.transact("join_validator", job, VAL_STAKE, sender=kit.validators[0])
    with reverts("market: join window still open"):
        m.transact("start", job, sender=kit.outsider)
    kit.advance(1_000)  # after the join deadline anyone may start
    m.transact("start", job, sender=kit.outsider)
    with reverts("market: job not open"):
        m.transact("start", job, sender=kit.aggregator)
    with reverts("market: job not open"):
        m.transact("start", 99, sender=kit.aggregator)


# ---------------------------------------------------------------- submit_round


def test_submit_round_commits_the_round_and_moves_the_deadline(kit):
    job = kit.job()
    receipt = job.commit()
    ev = receipt.event("RoundCommitted")
    rd = job.rounds[0]
    assert (ev["job_id"], ev["round"], ev["model_root"], ev["updates_root"], ev["count"], ev["metrics_hash"],
            ev["epsilon_spent"], ev["aux_root"], ev["next_seed"]) == (job.id, 0, *rd.data)
    assert ev["next_seed"] != ZERO32 and rd.count == 3
    assert kit.m.call("job_status", job.id) == (JobState.TRAINING, 1, kit.now() + 500, False, kit.aggregator.address)
    assert kit.m.call("verify_round", job.id, 0, rd.data, job.acc.proof(0))
    job.commit(updates=[])  # an empty round keeps the model
    assert job.rounds[1].count == 0 and kit.m.call("job_status", job.id)[1] == 2


def test_submit_round_rules(kit):
    job = kit.job()
    args = lambda r=0, **o: {"round": r, "model": keccak(b"m"), "updates": keccak(b"u"), "count": 3,
                             "metrics": ZERO32, "eps": 0, "aux": ZERO32, **o}.values()
    m, agg = kit.m, kit.aggregator
    with reverts("market: not the aggregator"):
        m.transact("submit_round", job.id, *args(), sender=kit.outsider)
    with reverts("market: not the aggregator"):
        m.transact("submit_round", 99, *args(), sender=agg)
    with reverts("market: wrong round"):
        m.transact("submit_round", job.id, *args(1), sender=agg)
    with reverts("market: empty model root"):
        m.transact("submit_round", job.id, *args(model=ZERO32), sender=agg)
    with reverts("market: bad update count"):
        m.transact("submit_round", job.id, *args(count=4), sender=agg)
    with reverts("market: epsilon without privacy"):
        m.transact("submit_round", job.id, *args(eps=1), sender=agg)
    m.transact("submit_round", job.id, *args(), sender=agg)
    with reverts("market: wrong round"):
        m.transact("submit_round", job.id, *args(0), sender=agg)
    kit.advance(500)  # the next transaction runs one second after the deadline
    with reverts("market: round deadline passed"):
        m.transact("submit_round", job.id, *args(1), sender=agg)
    done = kit.job()
    done.commit_all()
    with reverts("market: all rounds committed"):
        m.transact("submit_round", done.id, *args(2), sender=agg)
    opened = kit.post()
    with reverts("market: job not training"):
        m.transact("submit_round", opened, *args(), sender=agg)


def test_submit_round_at_its_deadline(kit):
    job = kit.job()
    kit.advance(job.status()[2] - kit.now() - 1)  # the next transaction runs exactly at the deadline
    job.commit()
    assert job.status()[1] == 1


def test_private_job_commits_exactly_the_epsilon_its_terms_give(kit):
    """Epsilon is derived, not declared: each round of a private job commits exactly the epsilon its
    noise multiplier, delta and round count give (`terms._epsilon`), never 0, never more or less."""
    budget = 2 * R.EPSILON_SCALE
    job = kit.job(privacy_budget=budget)
    t = job.terms
    due = R.epsilon_micro(t.noise_multiplier, t.delta_log, 1)
    assert 0 < due < R.epsilon_micro(t.noise_multiplier, t.delta_log, t.rounds) <= budget
    for wrong in (0, due - 1, due + 1, budget):
        with reverts("market: bad epsilon"):
            job.commit(epsilon=wrong)
    job.commit()
    assert job.rounds[0].data[4] == due == job.rounds[0].receipt.event("RoundCommitted")["epsilon_spent"]
    job.commit()
    assert job.rounds[1].data[4] == R.epsilon_micro(t.noise_multiplier, t.delta_log, 2) <= budget


def test_a_plain_job_commits_no_epsilon(kit):
    job = kit.job()
    with reverts("market: epsilon without privacy"):
        job.commit(epsilon=1)


def test_validated_round_waits_for_the_previous_rounds_quorum(kit):
    job = kit.job(validators=3)
    job.commit(attest=False)
    with reverts("market: no quorum yet"):
        job.commit()
    receipt = job.attest(0, job.validators[:2])
    ev = receipt.event("QuorumMarked")
    assert (ev["job_id"], ev["round"], ev["round_deadline"]) == (job.id, 0, kit.now() + 500)
    assert job.status()[2:4] == (kit.now() + 500, True)
    job.commit(attest=False)
    assert job.status()[1:4] == (2, kit.now() + 500, False)  # a new round clears the flag


def _fresh_kit(validators: int) -> Kit:
    """The protocol on a chain of its own, used outside any snapshot: gas is what a receipt says
    (inside `snapshot()` storage stays warm between transactions, see `BoaChain._begin_transaction`)."""
    from fedmarket.chain.boa_backend import BoaChain

    chain = BoaChain()
    deployer, treasury, requester, aggregator, outsider = (chain.new_account("gas", i) for i in range(5))
    providers = [chain.new_account("gas", 100 + i) for i in range(3)]
    vals = [chain.new_account("gas", 200 + i) for i in range(validators)]
    dep = Deployment.deploy(chain, deployer, treasury.address, fee_bps=FEE_BPS, unbonding_delay=UNBONDING_DELAY)
    for a in (requester, aggregator, outsider, *providers, *vals):
        dep.token.transact("mint", a.address, 10_000 * TOKEN, sender=deployer)
        dep.token.transact("approve", dep.market.address, MAX, sender=a)
    return Kit({"chain": chain, "dep": dep, "deployer": deployer, "treasury": treasury, "requester": requester,
                "aggregator": aggregator, "outsider": outsider, "providers": providers, "validators": vals})


def _round_gas(kit: Kit, rounds: int, validators: int) -> list[int]:
    """Gas of each round of a job (validated ones attested to quorum after every round)."""
    job = kit.job(validators=validators, rounds=rounds, round_duration=60)
    return [job.commit().gas_used for _ in range(rounds)]


@pytest.mark.parametrize("validators", [0, 3])
def test_round_gas_stays_under_60k(validators):
    """Receipt-exact gas of every round of a 128-round job, with or without validators: one
    accumulator slot and one packed word are written (slots were allocated at the start, so no
    round pays for a fresh slot); a round hashes one more accumulator level each time the round
    count doubles, and round 127 (seven levels) is the costliest."""
    gas = _round_gas(_fresh_kit(validators), 128, validators)
    assert all(38_000 < g < 60_000 for g in gas), max(gas)
    for r in (0, 2, 4, 100, 126):  # rounds with an even count hash no level
        assert gas[r] < 41_000, (r, gas[r])
    levels = [gas[2**k - 1] for k in range(8)]
    assert levels == sorted(levels) and all(2_000 < b - a < 3_000 for a, b in itertools.pairwise(levels)), levels


@pytest.mark.parametrize("validators, rounds", [(3, 256), (0, 512)])
def test_round_gas_grows_by_one_accumulator_level_per_doubling(validators, rounds):
    """A round closes as many accumulator levels as its count has trailing zeros: most rounds close
    none (about 42k gas), round 2**k - 1 closes k (about 2.5k more each). The bound documented in
    docs/protocol.md: under 60,000 up to round 127, and 40,500 + 2,600 per closed level beyond."""
    gas = _round_gas(_fresh_kit(validators), rounds, validators)
    assert sorted(gas)[len(gas) // 2] < 45_000  # the median round
    for r, g in enumerate(gas):
        closed = ((r + 1) & -(r + 1)).bit_length() - 1  # trailing zeros of the leaf count
        assert g < 42_000 + 2_600 * closed, (r, g)
    assert max(gas[:128]) < 60_000


# ---------------------------------------------------------------- mark_quorum (as Disputes)


def test_mark_quorum_is_for_disputes_only_and_ignores_stale_calls(kit):
    job = kit.job(validators=3)
    disputes = kit.as_contract(kit.disputes.address)
    with reverts("market: caller is not disputes"):
        kit.m.transact("mark_quorum", job.id, 0, sender=kit.aggregator)
    assert not events(kit.m.transact("mark_quorum", job.id, 0, sender=disputes), "QuorumMarked")  # round 0 not committed
    job.commit(attest=False)
    assert not events(kit.m.transact("mark_quorum", job.id, 1, sender=disputes), "QuorumMarked")  # not the latest
    deadline = job.status()[2]
    assert kit.m.transact("mark_quorum", job.id, 0, sender=disputes).event("QuorumMarked")["round"] == 0
    assert job.status()[2:4] == (kit.now() + 500, True) and deadline < kit.now() + 500
    assert not events(kit.m.transact("mark_quorum", job.id, 0, sender=disputes), "QuorumMarked")  # already marked
    opened = kit.post()
    assert not events(kit.m.transact("mark_quorum", opened, 0, sender=disputes), "QuorumMarked")


# ---------------------------------------------------------------- post_rewards / settle


def test_post_rewards_opens_the_challenge_window(kit):
    job = kit.job()
    job.commit_all()
    leaves = job.weight_leaves()
    tree, receipt = job.post_rewards(leaves)
    total = sum(leaf["amount"] for leaf in leaves)
    value_total = sum(leaf["value"] for leaf in leaves)
    ev = receipt.event("RewardRootPosted")
    assert (ev["job_id"], ev["reward_root"], ev["reward_total"], ev["value_total"], ev["basis"], ev["gate_met"],
            ev["poster"], ev["challenge_deadline"], ev["rewards_cid"]) == (
        job.id, tree.root, total, value_total, R.Basis.WEIGHT, True, kit.aggregator.address, kit.now() + 100,
        "bafkreirewards")
    p = kit.m.call("progress", job.id)
    assert (p["reward_root"], p["reward_total"], p["value_total"], p["basis"], p["pool"], p["challenge_deadline"],
            p["poster"], p["poster_bond"]) == (tree.root, total, value_total, 0, pool_of(), kit.now() + 100,
                                               kit.aggregator.address, 0)
    assert job.status()[0] == JobState.FINALIZING
    assert total <= pool_of() and pool_of() - total < len(leaves)  # only rounding is left over


def test_post_rewards_rules(kit):
    job = kit.job()
    m, agg = kit.m, kit.aggregator
    post = lambda j=job.id, root=ROOT, total=0, value=0, basis=0, gate=True, sender=agg, slashes=0: m.transact(
        "post_rewards", j, root, total, value, basis, gate, "cid", slashes, sender=sender)
    with reverts("market: job not training"):
        post(j=kit.post())
    with reverts("market: rounds not finished"):
        post()
    job.commit_all()
    with reverts("market: empty root"):
        post(root=ZERO32)
    with reverts("market: not the aggregator"):
        post(sender=kit.outsider)
    with reverts("market: rewards exceed pool"):
        post(total=pool_of() + 1)
    with reverts("disputes: value too large"):
        post(value=R.MAX_AMOUNT + 1)
    with reverts("disputes: unknown basis"):
        post(basis=2)
    with reverts("disputes: gate must follow the terms"):
        post(gate=False)
    with reverts("disputes: no scores to approve"):
        post(basis=R.Basis.SCORES)
    kit.advance(500)
    with reverts("market: round deadline passed"):
        post()


def test_post_rewards_may_pay_exactly_the_pool(kit):
    job = kit.job()
    job.commit_all()
    kit.m.transact("post_rewards", job.id, keccak(b"r"), pool_of(), R.MAX_AMOUNT, 0, True, "cid", 0, sender=kit.aggregator)
    assert job.info()["reward_total"] == pool_of()


def test_settle_pays_the_fee_and_refunds_what_no_leaf_takes(kit):
    job = kit.job()
    job.finalize()
    total = job.info()["reward_total"]
    req_before, treasury_before = kit.balance(kit.requester), kit.balance(kit.treasury)
    kit.advance(98)  # the next transaction runs one second before the challenge deadline
    with reverts("market: challenge window open"):
        kit.m.transact("settle", job.id, sender=kit.outsider)
    kit.advance(1)  # a reverted transaction mines no block: now the next one runs at the deadline
    receipt = kit.m.transact("settle", job.id, sender=kit.outsider)
    fee = ESCROW * FEE_BPS // R.BPS
    ev = receipt.event("JobSettled")
    assert (ev["job_id"], ev["fee"], ev["refund"], ev["claim_deadline"]) == (job.id, fee, ESCROW - fee - total,
                                                                             kit.now() + 1_000)
    assert kit.balance(kit.treasury) == treasury_before + fee
    assert kit.balance(kit.requester) == req_before + ESCROW - fee - total
    assert job.status()[0] == JobState.SETTLED and job.info()["claim_deadline"] == kit.now() + 1_000
    with reverts("market: job not finalizing"):
        kit.m.transact("settle", job.id, sender=kit.outsider)


def test_settle_needs_a_finalizing_job(kit):
    job = kit.job()
    with reverts("market: job not finalizing"):
        kit.m.transact("settle", job.id, sender=kit.outsider)
    with reverts("market: job not finalizing"):
        kit.m.transact("settle", 99, sender=kit.outsider)


# ---------------------------------------------------------------- claims


def test_claims_pay_rewards_release_stakes_and_move_reputation(kit):
    job = kit.job(validators=1)
    job.finalize()
    job.settle()
    for i, leaf in enumerate(job.leaves):
        acct = leaf["account"]
        wallet, free = kit.balance(acct), kit.m.call("free_stake", acct, leaf["role"])
        receipt = job.claim(i)
        ev = receipt.event("RewardClaimed")
        stake = {Role.PROVIDER: STAKE, Role.VALIDATOR: VAL_STAKE, Role.AGGREGATOR: AGG_STAKE}[leaf["role"]]
        assert (ev["job_id"], ev["account"], ev["index"], ev["amount"], ev["stake_released"]) == (
            job.id, acct, i, leaf["amount"], stake)
        rep = receipt.event("ReputationChanged")
        assert (rep["account"], rep["delta"], rep["reputation"]) == (acct, leaf["reputation_delta"],
                                                                      leaf["reputation_delta"])
        assert kit.m.call("reputation", acct) == leaf["reputation_delta"]
        assert kit.m.call("is_claimed", job.id, i)
        assert job.membership(acct) == (leaf["role"], 0)
        if leaf["role"] == Role.PROVIDER:
            assert kit.balance(acct) == wallet + leaf["amount"] + STAKE
            assert not events(receipt, "StakeReleased")
        else:
            assert kit.balance(acct) == wallet  # nothing paid: its stake goes back to free stake
            assert kit.m.call("free_stake", acct, leaf["role"]) == free + stake
            assert receipt.event("StakeReleased")["amount"] == stake
    assert job.info()["claimed_total"] == job.info()["reward_total"]


def test_claim_rules(kit):
    job = kit.job()
    job.finalize()
    with reverts("market: job not settled"):
        job.claim(0)
    job.settle()
    leaf, proof = job.leaves[0], job.tree.proof(0)
    struct = lambda leaf: (leaf["account"], leaf["role"], leaf["amount"], leaf["reputation_delta"], leaf["value"],
                           leaf["activity"])
    claim = lambda i, lf, pr: kit.m.transact("claim", job.id, i, struct(lf), pr, sender=kit.outsider)
    with reverts("market: invalid proof"):
        claim(1, leaf, proof)  # another position
    with reverts("market: invalid proof"):
        claim(0, dict(leaf, amount=leaf["amount"] + 1), proof)
    with reverts("market: invalid proof"):
        claim(0, dict(leaf, account=kit.outsider.address), proof)
    with reverts("market: invalid proof"):
        claim(0, leaf, proof[:-1])
    with reverts("market: invalid proof"):
        claim(0, leaf, proof + [ZERO32])
    with reverts("market: invalid proof"):
        claim(4, leaf, proof)  # past the last leaf (n_providers + n_validators + 1)
    claim(0, leaf, proof)
    with reverts("market: already claimed"):
        claim(0, leaf, proof)
    kit.advance(1_000)
    with reverts("market: claim period over"):
        job.claim(1)


def test_claims_never_exceed_the_reward_total(kit):
    job = kit.job()
    job.commit_all()
    leaves = job.weight_leaves()
    total = sum(leaf["amount"] for leaf in leaves)
    job.post_rewards(leaves, total=total - 1)  # the root pays one unit more than it reserves
    job.settle()
    paid = [i for i, leaf in enumerate(leaves) if leaf["amount"] > 0]
    for i in paid[:-1]:
        job.claim(i)
    with reverts("market: claims exceed rewards"):
        job.claim(paid[-1])


def test_anyone_may_claim_for_an_account_funds_go_to_it(kit):
    job = kit.job()
    job.finalize()
    job.settle()
    i = next(i for i, leaf in enumerate(job.leaves) if leaf["role"] == Role.PROVIDER)
    acct = job.leaves[i]["account"]
    before, outsider = kit.balance(acct), kit.balance(kit.outsider)
    job.claim(i, sender=kit.requester)
    assert kit.balance(acct) == before + job.leaves[i]["amount"] + STAKE and kit.balance(kit.outsider) == outsider


def test_reputation_saturates(kit):
    huge, p0, p1 = 2**200, kit.providers[0].address, kit.providers[1].address

    def settled(deltas):
        job = kit.job()
        job.commit_all()
        leaves = [dict(leaf, reputation_delta=deltas.get(leaf["account"], leaf["reputation_delta"]))
                  for leaf in job.weight_leaves()]
        job.post_rewards(leaves)
        job.settle()
        return job, {leaf["account"]: i for i, leaf in enumerate(leaves)}

    job, at = settled({p0: huge, p1: -(2**255)})
    ev = job.claim(at[p0]).event("ReputationChanged")
    assert (ev["delta"], ev["reputation"]) == (huge, R.MAX_AMOUNT)
    assert job.claim(at[p1]).event("ReputationChanged")["reputation"] == -R.MAX_AMOUNT
    job, at = settled({p0: 5, p1: -5})
    assert job.claim(at[p0]).event("ReputationChanged")["reputation"] == R.MAX_AMOUNT
    assert job.claim(at[p1]).event("ReputationChanged")["reputation"] == -R.MAX_AMOUNT
    job, at = settled({p0: -(2**255) + 1, p1: 2**255 - 1})
    assert job.claim(at[p0]).event("ReputationChanged")["reputation"] == 0
    assert job.claim(at[p1]).event("ReputationChanged")["reputation"] == 0


def test_a_zero_reputation_delta_logs_no_change(kit):
    job = kit.job()
    job.commit_all()
    leaves = [dict(leaf, reputation_delta=0) for leaf in job.weight_leaves()]
    job.post_rewards(leaves)
    job.settle()
    receipt = job.claim(0)
    assert not events(receipt, "ReputationChanged") and kit.m.call("reputation", leaves[0]["account"]) == 0


# ---------------------------------------------------------------- release_stake / sweep


def test_release_stake_after_settlement_then_claim(kit):
    job = kit.job()
    job.finalize()
    job.settle()
    i = next(i for i, leaf in enumerate(job.leaves) if leaf["role"] == Role.PROVIDER)
    acct = job.leaves[i]["account"]
    before = kit.balance(acct)
    ev = kit.m.transact("release_stake", job.id, acct, sender=kit.outsider).event("StakeReleased")
    assert (ev["job_id"], ev["account"], ev["role"], ev["amount"]) == (job.id, acct, Role.PROVIDER, STAKE)
    assert kit.balance(acct) == before + STAKE
    with reverts("market: no stake locked"):
        kit.m.transact("release_stake", job.id, acct, sender=kit.outsider)
    receipt = job.claim(i)
    assert receipt.event("RewardClaimed")["stake_released"] == 0
    assert kit.balance(acct) == before + STAKE + job.leaves[i]["amount"]


def test_release_stake_rules(kit):
    job = kit.job(start=False)
    with reverts("market: job still running"):
        kit.m.transact("release_stake", job.id, kit.providers[0].address, sender=kit.outsider)
    job.start()
    with reverts("market: job still running"):
        kit.m.transact("release_stake", job.id, kit.providers[0].address, sender=kit.outsider)
    job.finalize()
    with reverts("market: job still running"):
        kit.m.transact("release_stake", job.id, kit.providers[0].address, sender=kit.outsider)
    job.settle()
    with reverts("market: no stake locked"):
        kit.m.transact("release_stake", job.id, kit.outsider.address, sender=kit.outsider)
    free = kit.m.call("free_stake", kit.aggregator.address, Role.AGGREGATOR)
    ev = kit.m.transact("release_stake", job.id, kit.aggregator.address, sender=kit.outsider).event("StakeReleased")
    assert (ev["role"], ev["amount"]) == (Role.AGGREGATOR, AGG_STAKE)
    assert kit.m.call("free_stake", kit.aggregator.address, Role.AGGREGATOR) == free + AGG_STAKE


def test_sweep_returns_what_was_not_claimed(kit):
    job = kit.job()
    job.finalize()
    with reverts("market: job not settled"):
        kit.m.transact("sweep", job.id, sender=kit.outsider)
    job.settle()
    job.claim(0)
    with reverts("market: claim period open"):
        kit.m.transact("sweep", job.id, sender=kit.outsider)
    kit.advance(1_000)
    left = job.info()["reward_total"] - job.leaves[0]["amount"]
    before = kit.balance(kit.requester)
    ev = kit.m.transact("sweep", job.id, sender=kit.outsider).event("UnclaimedSwept")
    assert (ev["job_id"], ev["amount"]) == (job.id, left)
    assert kit.balance(kit.requester) == before + left
    assert job.info()["claimed_total"] == job.info()["reward_total"]
    with reverts("market: nothing to sweep"):
        kit.m.transact("sweep", job.id, sender=kit.outsider)


# ---------------------------------------------------------------- cancel / fail


def test_requester_cancels_before_anyone_joins_even_once_accepted(kit):
    job = kit.post()
    kit.m.transact("accept", job, sender=kit.aggregator)
    before = kit.balance(kit.requester)
    ev = kit.m.transact("cancel", job, sender=kit.requester).event("JobCancelled")
    assert (ev["job_id"], ev["refund"]) == (job, ESCROW)
    assert kit.balance(kit.requester) == before + ESCROW
    assert kit.m.call("job_status", job)[0] == JobState.CANCELLED
    kit.m.transact("release_stake", job, kit.aggregator.address, sender=kit.outsider)
    assert kit.m.call("free_stake", kit.aggregator.address, Role.AGGREGATOR) == AGG_STAKE
    with reverts("market: job not open"):
        kit.m.transact("cancel", job, sender=kit.requester)


@pytest.mark.parametrize("missing", ["aggregator", "providers", "validators"])
def test_anyone_cancels_after_the_deadline_a_job_that_cannot_start(kit, missing):
    job = kit.post(min_providers=2, max_providers=2, min_validators=1, max_validators=1)
    if missing != "aggregator":
        kit.m.transact("accept", job, sender=kit.aggregator)
    for p in kit.providers[: 1 if missing == "providers" else 2]:
        kit.m.transact("join", job, sender=p)
    if missing != "validators":
        kit.m.transact("join_validator", job, VAL_STAKE, sender=kit.validators[0])
    with reverts("market: join window still open"):
        kit.m.transact("cancel", job, sender=kit.outsider)
    with reverts("market: join window still open"):  # the requester too, once someone joined
        kit.m.transact("cancel", job, sender=kit.requester)
    kit.advance(1_000)
    kit.m.transact("cancel", job, sender=kit.outsider)
    p0 = kit.providers[0]
    before = kit.balance(p0)
    kit.m.transact("release_stake", job, p0.address, sender=kit.outsider)
    assert kit.balance(p0) == before + STAKE


def test_a_job_that_can_start_cannot_be_cancelled(kit):
    job = kit.job(start=False)
    kit.advance(1_000)
    with reverts("market: job can start"):
        kit.m.transact("cancel", job.id, sender=kit.outsider)
    with reverts("market: job can start"):
        kit.m.transact("cancel", job.id, sender=kit.requester)
    started = kit.job()
    with reverts("market: job not open"):
        kit.m.transact("cancel", started.id, sender=kit.requester)


def test_fail_after_a_missed_round_refunds_and_slashes_the_aggregator(kit):
    job = kit.job()
    job.commit()
    with reverts("market: deadline not missed"):
        kit.m.transact("fail", job.id, sender=kit.outsider)
    kit.advance(job.status()[2] - kit.now())  # the next transaction runs one second after the deadline
    req, out, treasury = kit.balance(kit.requester), kit.balance(kit.outsider), kit.balance(kit.treasury)
    receipt = kit.m.transact("fail", job.id, sender=kit.outsider)
    ev = receipt.event("JobFailed")
    assert (ev["job_id"], ev["round"], ev["refund"], ev["reason"]) == (job.id, 1, ESCROW, "deadline missed")
    ev = receipt.event("StakeSlashed")
    assert (ev["job_id"], ev["account"], ev["role"], ev["amount"], ev["challenger"], ev["challenger_share"],
            ev["beneficiary"]) == (job.id, kit.aggregator.address, Role.AGGREGATOR, AGG_STAKE, kit.outsider.address,
                                   AGG_STAKE // 2, kit.treasury)
    assert kit.balance(kit.requester) == req + ESCROW
    assert kit.balance(kit.outsider) == out + AGG_STAKE // 2
    assert kit.balance(kit.treasury) == treasury + AGG_STAKE // 2
    assert job.status()[0] == JobState.FAILED
    assert job.membership(kit.aggregator) == (Role.AGGREGATOR | R.SLASHED, 1)  # slashed at round 1
    with reverts("market: no stake locked"):
        kit.m.transact("release_stake", job.id, kit.aggregator.address, sender=kit.outsider)
    for p in job.providers:
        kit.m.transact("release_stake", job.id, p.address, sender=kit.outsider)
    with reverts("market: job not training"):
        kit.m.transact("fail", job.id, sender=kit.outsider)


def test_a_missing_reward_root_slashes_the_aggregator_and_lets_a_provider_post_it(kit):
    """Every round is in and the aggregator posts no root: `fail` slashes it but keeps the job
    training one more round duration, and a provider of the job posts the root with no bond (its
    job stake stands behind it); the job settles and pays."""
    job = kit.job()
    job.commit_all()
    kit.advance(500)
    receipt = kit.m.transact("fail", job.id, sender=kit.outsider)
    assert not [e for e in receipt.events if e.name == "JobFailed"]
    ev = receipt.event("RewardRootRejected")
    assert (ev["reward_root"], ev["poster"], ev["challenger"]) == (ZERO32, kit.aggregator.address, kit.outsider.address)
    assert receipt.event("StakeSlashed")["account"] == kit.aggregator.address
    state, current, deadline, _, _ = job.status()
    assert (state, current, deadline) == (JobState.TRAINING, job.terms.rounds, kit.now() + job.terms.round_duration)
    leaves = job.weight_leaves()
    with reverts("market: aggregator was slashed"):
        job.post_rewards(leaves)
    p0 = job.providers[0]
    bal = kit.balance(p0)
    _, receipt = job.post_rewards(leaves, sender=p0)
    assert (job.info()["poster"], job.info()["poster_bond"], kit.balance(p0)) == (p0.address, 0, bal)
    job.settle()
    for i in range(len(leaves)):
        job.claim(i)
    assert job.info()["claimed_total"] == job.info()["reward_total"] > 0


def test_a_member_with_less_stake_than_the_bond_posts_with_the_bond(kit):
    """A provider whose job stake is below the dispute bond (here: none) would risk nothing behind a
    replacement root: it posts like an outsider, with the bond."""
    job = kit.job(provider_stake=0)
    job.commit_all()
    kit.advance(500)
    kit.m.transact("fail", job.id, sender=kit.outsider)
    broke = job.providers[0]
    assert job.membership(broke)[1] == 0
    kit.token.transact("mint", broke.address, AGG_STAKE, sender=kit.deployer)
    bal = kit.balance(broke)
    job.post_rewards(job.weight_leaves(), sender=broke)
    assert (job.info()["poster_bond"], kit.balance(broke)) == (AGG_STAKE, bal - AGG_STAKE)


def test_fail_when_the_reward_root_never_comes(kit):
    """Nobody posts the root in the extra round duration either: the job fails, escrow refunded."""
    job = kit.job()
    job.commit_all()
    kit.advance(500)
    kit.m.transact("fail", job.id, sender=kit.outsider)  # the aggregator is out
    with reverts("market: deadline not missed"):
        kit.m.transact("fail", job.id, sender=kit.outsider)
    kit.advance(job.terms.round_duration)
    receipt = kit.m.transact("fail", job.id, sender=kit.outsider)
    assert receipt.event("JobFailed")["round"] == job.terms.rounds
    assert not [e for e in receipt.events if e.name == "StakeSlashed"]  # slashed once only


def test_fail_of_a_validated_round_needs_its_quorum(kit):
    job = kit.job(validators=3)
    job.commit(attest=False)
    kit.advance(1_000)
    with reverts("market: round lacks quorum"):
        kit.m.transact("fail", job.id, sender=kit.outsider)
    job.attest(0)  # quorum restarts the deadline: the aggregator's next round is due
    kit.advance(500)
    assert kit.m.transact("fail", job.id, sender=kit.outsider).event("JobFailed")["reason"] == "deadline missed"


def test_fail_rules(kit):
    opened = kit.post()
    with reverts("market: job not training"):
        kit.m.transact("fail", opened, sender=kit.outsider)
    job = kit.job()
    kit.advance(job.status()[2] - kit.now() - 1)  # the next transaction runs at the deadline itself
    with reverts("market: deadline not missed"):
        kit.m.transact("fail", job.id, sender=kit.outsider)
    kit.advance(1)
    kit.m.transact("fail", job.id, sender=kit.outsider)


# ---------------------------------------------------------------- judges only


def test_slash_is_for_disputes_only_and_records_the_stage(kit):
    job = kit.job()
    disputes = kit.as_contract(kit.disputes.address)
    p0, p1 = kit.providers[0], kit.providers[1]
    with reverts("market: caller is not disputes"):
        kit.m.transact("slash", job.id, p0.address, kit.outsider.address, sender=kit.outsider)
    with reverts("market: aggregator not slashable"):
        kit.m.transact("slash", job.id, kit.aggregator.address, kit.outsider.address, sender=disputes)
    with reverts("market: not slashable"):
        kit.m.transact("slash", job.id, kit.outsider.address, kit.outsider.address, sender=disputes)
    job.commit()
    receipt = kit.m.transact("slash", job.id, p0.address, kit.outsider.address, sender=disputes)
    assert receipt.event("StakeSlashed")["amount"] == STAKE
    assert job.membership(p0) == (Role.PROVIDER | R.SLASHED, 1)  # the round it was slashed in
    with reverts("market: not slashable"):
        kit.m.transact("slash", job.id, p0.address, kit.outsider.address, sender=disputes)
    job.finalize()
    kit.m.transact("slash", job.id, p1.address, kit.outsider.address, sender=disputes)
    assert job.membership(p1) == (Role.PROVIDER | R.SLASHED, R.final_stage(job.info()["challenge_deadline"]))  # under the root
    job.settle()
    with reverts("market: job not disputable"):
        kit.m.transact("slash", job.id, kit.providers[2].address, kit.outsider.address, sender=disputes)
    opened = kit.job(start=False)
    with reverts("market: job not disputable"):
        kit.m.transact("slash", opened.id, p0.address, kit.outsider.address, sender=disputes)


def test_a_zero_stake_is_slashed_without_transfers(kit):
    job = kit.job(provider_stake=0)
    receipt = kit.m.transact("slash", job.id, kit.providers[0].address, kit.outsider.address,
                             sender=kit.as_contract(kit.disputes.address))
    assert receipt.event("StakeSlashed")["amount"] == 0 and not events(receipt, "Transfer")
    assert job.membership(kit.providers[0]) == (Role.PROVIDER | R.SLASHED, 0)


def test_fail_judged_is_for_disputes_only(kit):
    job = kit.job(validators=3)
    disputes = kit.as_contract(kit.disputes.address)
    with reverts("market: caller is not disputes"):
        kit.m.transact("fail_judged", job.id, True, kit.outsider.address, sender=kit.outsider)
    job.commit()  # attested: quorum
    with reverts("market: round not in doubt"):
        kit.m.transact("fail_judged", job.id, True, kit.outsider.address, sender=disputes)
    job.commit(attest=False)
    receipt = kit.m.transact("fail_judged", job.id, False, kit.outsider.address, sender=disputes)
    assert receipt.event("JobFailed")["reason"] == "validators absent" and not events(receipt, "StakeSlashed")
    with reverts("market: round not in doubt"):
        kit.m.transact("fail_judged", job.id, True, kit.outsider.address, sender=disputes)


def test_fail_proven_is_for_the_judges_only(kit):
    job = kit.job()
    arbiter = kit.as_contract(kit.ra.address)
    for stranger in (kit.outsider, kit.as_contract(kit.wa.address)):
        with reverts("market: caller is not a judge"):
            kit.m.transact("fail_proven", job.id, 0, kit.outsider.address, "x", sender=stranger)
    with reverts("market: round not reached"):
        kit.m.transact("fail_proven", job.id, 1, kit.outsider.address, "x", sender=arbiter)
    job.commit_all()
    receipt = kit.m.transact("fail_proven", job.id, 1, kit.outsider.address, "round fault proven", sender=arbiter)
    ev = receipt.event("JobFailed")
    assert (ev["round"], ev["reason"]) == (1, "round fault proven")
    assert job.status()[:2] == (JobState.FAILED, 1)  # reverted to before the round
    assert job.membership(kit.aggregator) == (Role.AGGREGATOR | R.SLASHED, 1)
    with reverts("market: job not disputable"):
        kit.m.transact("fail_proven", job.id, 0, kit.outsider.address, "x", sender=arbiter)


def test_reward_fault_is_for_the_reward_arbiter_only(kit):
    job = kit.job()
    arbiter = kit.as_contract(kit.wa.address)
    with reverts("market: caller is not the arbiter"):
        kit.m.transact("reward_fault", job.id, kit.outsider.address, sender=kit.outsider)
    with reverts("market: caller is not the arbiter"):
        kit.m.transact("reward_fault", job.id, kit.outsider.address, sender=kit.as_contract(kit.ra.address))
    with reverts("market: no reward root"):
        kit.m.transact("reward_fault", job.id, kit.outsider.address, sender=arbiter)
    job.finalize()
    kit.m.transact("reward_fault", job.id, kit.outsider.address, sender=arbiter)
    assert job.status()[0] == JobState.TRAINING
    assert job.info()["reward_root"] == ZERO32


def test_views_of_a_running_job(kit):
    job = kit.job(validators=1)
    job.commit()
    info = job.info()
    assert info["state"] == JobState.TRAINING and info["current_round"] == 1 and info["quorum"]
    assert (info["aggregator"], info["n_providers"], info["n_validators"]) == (kit.aggregator.address, 3, 1)
    assert not kit.m.call("is_claimed", job.id, 0) and not kit.m.call("is_claimed", job.id, 300)
    assert kit.m.call("reputation", kit.outsider.address) == 0


def test_escrow_and_stakes_are_all_accounted_for(kit):
    """After a whole job every token the market held for it has left: to claims, fee, refund."""
    market_before = kit.balance(kit.m.address)
    job = kit.job(validators=2)
    job.finalize()
    job.settle()
    for i in range(len(job.leaves)):
        job.claim(i)
    free = sum(kit.m.call("free_stake", a.address, role) for a, role in (
        *((v, Role.VALIDATOR) for v in job.validators), (kit.aggregator, Role.AGGREGATOR)))
    left = job.info()["reward_total"] - job.info()["claimed_total"]
    assert kit.balance(kit.m.address) == market_before + free + left
    assert left == 0  # nothing was left behind
