"""TermsCheck (`modules/terms.vy`): every bound on a job's terms, at its edge on both sides, and
`JobMarket.post_job` reverting with exactly the reason `TermsCheck.problem` names. A Python
statement of the same bounds, in the same order, is checked against the contract on random
terms near every edge."""

from __future__ import annotations

import pytest
from contract_kit import ZERO32, ZERO_ADDR, reverts
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedmarket.protocol import rules as R

DAY = 86_400
MAX = R.MAX_AMOUNT


def expected_problem(t: dict, requester: str, now: int) -> str:
    """The bounds of `modules/terms.vy::_problem`, in its order (the specification under test)."""
    checks = [
        (t["spec_hash"] != ZERO32, "market: empty spec hash"),
        (int(t["aggregator"], 16) != 0, "market: aggregator is zero"),
        (t["aggregator"].lower() != requester.lower(), "market: requester cannot aggregate"),
        (0 < t["escrow"] <= MAX, "market: bad escrow"),
        (t["provider_stake"] <= MAX and t["aggregator_stake"] <= MAX, "market: stake too large"),
        (t["validator_stake"] <= MAX and t["dispute_bond"] <= MAX, "market: stake too large"),
        (t["licence_price"] <= MAX, "market: price too large"),
        (t["dispute_bond"] > 0, "market: dispute bond is zero"),
        (1 <= t["rounds"] <= R.MAX_ROUNDS, "market: bad round count"),
        (1 <= t["min_providers"] <= t["max_providers"], "market: bad provider range"),
        (t["max_providers"] <= R.MAX_PROVIDERS, "market: too many providers"),
        (t["per_round"] <= t["max_providers"], "market: per_round above max providers"),
        (t["min_validators"] <= t["max_validators"], "market: bad validator range"),
        (t["max_validators"] <= R.MAX_VALIDATORS, "market: too many validators"),
        (t["max_validators"] == 0 or t["min_validators"] >= 1, "market: validated job needs min validators"),
        (t["max_validators"] == 0 or t["validator_stake"] > 0, "market: validated job needs validator stake"),
        (t["join_deadline"] > now, "market: join deadline passed"),
        (t["join_deadline"] <= now + R.MAX_JOIN_WINDOW, "market: join window too long"),
        (1 <= t["round_duration"] <= R.MAX_ROUND_DURATION, "market: bad round duration"),
        (t["rounds"] * t["round_duration"] <= R.MAX_TRAINING_TIME, "market: training too long"),
        (1 <= t["challenge_period"] <= R.MAX_CHALLENGE_PERIOD, "market: bad challenge period"),
        (1 <= t["claim_period"] <= R.MAX_CLAIM_PERIOD, "market: bad claim period"),
        (1 <= t["response_period"] <= R.MAX_RESPONSE_PERIOD, "market: bad response period"),
        (t["rule"] <= R.Rule.SECURE_SUM, "market: unknown rule"),
        (t["rule"] != R.Rule.TRIMMED_MEAN or t["trim"] > 0, "market: trim is zero"),
        (t["rule"] == R.Rule.TRIMMED_MEAN or t["trim"] == 0, "market: trim without trimmed mean"),
        (t["rule"] != R.Rule.SECURE_SUM or t["max_validators"] > 0, "market: secure sum needs validators"),
        (t["trim"] <= R.MAX_PROVIDERS, "market: trim too large"),
        (1 <= t["chunk_size"] <= R.MAX_CHUNK, "market: bad chunk size"),
        (1 <= t["n_params"] <= R.MAX_PARAMS, "market: bad model size"),
        (t["privacy_budget"] <= R.MAX_EPSILON, "market: privacy budget too large"),
        ((t["privacy_budget"] > 0) == (t["noise_multiplier"] > 0) == (t["delta_log"] > 0), "market: privacy terms incomplete"),
        (t["noise_multiplier"] <= R.MAX_NOISE and t["delta_log"] <= R.MAX_DELTA_LOG, "market: privacy parameter too large"),
        (t["privacy_budget"] == 0 or t["noise_multiplier"] == 0 or R.epsilon_micro(t["noise_multiplier"], t["delta_log"], t["rounds"]) <= t["privacy_budget"],
         "market: noise too low for the privacy budget"),
        (t["miss_payout_bps"] <= R.BPS, "market: bad miss payout"),
        (t["miss_payout_bps"] == R.BPS or t["max_validators"] > 0, "market: quality gate needs validators"),
        (t["miss_payout_bps"] == R.BPS or t["rule"] != R.Rule.SECURE_SUM, "market: no quality gate on secure sum"),
        (t["aggregator_fee"] <= MAX and t["validator_fee"] <= MAX, "market: fee too large"),
        (t["validator_fee"] == 0 or t["max_validators"] > 0, "market: validator fee without validators"),
        (t["rounds"] * (t["aggregator_fee"] + t["max_validators"] * t["validator_fee"])
         <= t["escrow"] - t["escrow"] * R.MAX_FEE_BPS // R.BPS, "market: role fees exceed the escrow"),
        (t["licence_requester_bps"] <= R.BPS - R.MAX_FEE_BPS, "market: requester share too large"),
    ]
    return next((reason for ok, reason in checks if not ok), "")


VALIDATED = {"min_validators": 1, "max_validators": 1}
EPS = 8 * R.EPSILON_SCALE  # a private job's budget
LOG = R.delta_log_micro(1e-5)

# (terms changed from the kit's valid defaults, the reason) -- "" is an edge still inside the bounds
BOUNDS = [
    ({"spec_hash": ZERO32}, "market: empty spec hash"),
    ({"aggregator": ZERO_ADDR}, "market: aggregator is zero"),
    ({"escrow": 0}, "market: bad escrow"),
    ({"escrow": MAX + 1}, "market: bad escrow"),
    ({"escrow": MAX}, ""),
    ({"provider_stake": MAX + 1}, "market: stake too large"),
    ({"aggregator_stake": MAX + 1}, "market: stake too large"),
    ({"validator_stake": MAX + 1}, "market: stake too large"),
    ({"dispute_bond": MAX + 1}, "market: stake too large"),
    ({"provider_stake": MAX, "aggregator_stake": MAX, "validator_stake": MAX, "dispute_bond": MAX, "licence_price": MAX}, ""),
    ({"licence_price": MAX + 1}, "market: price too large"),
    ({"dispute_bond": 0}, "market: dispute bond is zero"),
    ({"rounds": 0}, "market: bad round count"),
    ({"rounds": R.MAX_ROUNDS + 1, "round_duration": 1}, "market: bad round count"),
    ({"rounds": R.MAX_ROUNDS, "round_duration": 1}, ""),
    ({"min_providers": 0}, "market: bad provider range"),
    ({"min_providers": 4, "max_providers": 3}, "market: bad provider range"),
    ({"min_providers": 1, "max_providers": R.MAX_PROVIDERS + 1}, "market: too many providers"),
    ({"min_providers": 1, "max_providers": R.MAX_PROVIDERS, "per_round": R.MAX_PROVIDERS}, ""),
    ({"per_round": 4}, "market: per_round above max providers"),
    ({"per_round": 3}, ""),
    ({"min_validators": 2, "max_validators": 1}, "market: bad validator range"),
    ({"min_validators": 1, "max_validators": R.MAX_VALIDATORS + 1}, "market: too many validators"),
    ({"min_validators": R.MAX_VALIDATORS, "max_validators": R.MAX_VALIDATORS}, ""),
    ({"min_validators": 0, "max_validators": 1}, "market: validated job needs min validators"),
    (dict(VALIDATED, validator_stake=0), "market: validated job needs validator stake"),
    ({"validator_stake": 0}, ""),  # an unvalidated job needs no validator stake
    ({"join_deadline": 0}, "market: join deadline passed"),  # relative to the posting time (see `_at`)
    ({"join_deadline": R.MAX_JOIN_WINDOW + 1}, "market: join window too long"),
    ({"join_deadline": R.MAX_JOIN_WINDOW}, ""),
    ({"join_deadline": 1}, ""),
    ({"round_duration": 0}, "market: bad round duration"),
    ({"round_duration": R.MAX_ROUND_DURATION + 1}, "market: bad round duration"),
    ({"round_duration": R.MAX_ROUND_DURATION, "rounds": 24}, ""),
    ({"round_duration": R.MAX_ROUND_DURATION, "rounds": 25}, "market: training too long"),
    ({"rounds": R.MAX_ROUNDS, "round_duration": R.MAX_TRAINING_TIME // R.MAX_ROUNDS}, ""),
    ({"rounds": R.MAX_ROUNDS, "round_duration": R.MAX_TRAINING_TIME // R.MAX_ROUNDS + 1}, "market: training too long"),
    ({"challenge_period": 0}, "market: bad challenge period"),
    ({"challenge_period": R.MAX_CHALLENGE_PERIOD + 1}, "market: bad challenge period"),
    ({"challenge_period": R.MAX_CHALLENGE_PERIOD}, ""),
    ({"claim_period": 0}, "market: bad claim period"),
    ({"claim_period": R.MAX_CLAIM_PERIOD + 1}, "market: bad claim period"),
    ({"claim_period": R.MAX_CLAIM_PERIOD}, ""),
    ({"response_period": 0}, "market: bad response period"),
    ({"response_period": R.MAX_RESPONSE_PERIOD + 1}, "market: bad response period"),
    ({"response_period": R.MAX_RESPONSE_PERIOD}, ""),
    ({"rule": 4}, "market: unknown rule"),
    ({"rule": R.Rule.TRIMMED_MEAN, "trim": 0}, "market: trim is zero"),
    ({"rule": R.Rule.WEIGHTED_MEAN, "trim": 1}, "market: trim without trimmed mean"),
    ({"rule": R.Rule.MEDIAN, "trim": 1}, "market: trim without trimmed mean"),
    ({"rule": R.Rule.SECURE_SUM}, "market: secure sum needs validators"),
    (dict(VALIDATED, rule=R.Rule.SECURE_SUM), ""),
    ({"rule": R.Rule.TRIMMED_MEAN, "trim": R.MAX_PROVIDERS + 1}, "market: trim too large"),
    ({"rule": R.Rule.TRIMMED_MEAN, "trim": R.MAX_PROVIDERS}, ""),
    ({"chunk_size": 0}, "market: bad chunk size"),
    ({"chunk_size": R.MAX_CHUNK + 1}, "market: bad chunk size"),
    ({"chunk_size": R.MAX_CHUNK}, ""),
    ({"chunk_size": 1}, ""),
    ({"n_params": 0}, "market: bad model size"),
    ({"n_params": R.MAX_PARAMS + 1}, "market: bad model size"),
    ({"n_params": R.MAX_PARAMS}, ""),
    ({"privacy_budget": R.MAX_EPSILON + 1}, "market: privacy budget too large"),
    ({"privacy_budget": R.MAX_EPSILON}, ""),
    ({"privacy_budget": EPS, "noise_multiplier": 0}, "market: privacy terms incomplete"),
    ({"privacy_budget": EPS, "delta_log": 0}, "market: privacy terms incomplete"),
    ({"noise_multiplier": 2 * EPS, "delta_log": LOG}, "market: privacy terms incomplete"),
    ({"privacy_budget": EPS, "noise_multiplier": R.MAX_NOISE + 1, "delta_log": LOG}, "market: privacy parameter too large"),
    ({"privacy_budget": EPS, "noise_multiplier": R.MAX_NOISE, "delta_log": R.MAX_DELTA_LOG + 1},
     "market: privacy parameter too large"),
    ({"privacy_budget": EPS, "noise_multiplier": R.MAX_NOISE, "delta_log": R.MAX_DELTA_LOG}, ""),
    ({"privacy_budget": EPS, "noise_multiplier": EPS // 10, "delta_log": LOG}, "market: noise too low for the privacy budget"),
    ({"privacy_budget": EPS, "noise_multiplier": R.noise_micro_for(EPS, LOG, 2), "delta_log": LOG}, ""),
    ({"privacy_budget": EPS, "noise_multiplier": R.noise_micro_for(EPS, LOG, 2) - 1, "delta_log": LOG},
     "market: noise too low for the privacy budget"),
    ({"miss_payout_bps": R.BPS + 1}, "market: bad miss payout"),
    ({"miss_payout_bps": 5_000}, "market: quality gate needs validators"),
    (dict(VALIDATED, miss_payout_bps=0), ""),
    (dict(VALIDATED, rule=R.Rule.SECURE_SUM, miss_payout_bps=0), "market: no quality gate on secure sum"),
    (dict(VALIDATED, rule=R.Rule.SECURE_SUM, miss_payout_bps=R.BPS), ""),
    ({"aggregator_fee": MAX + 1}, "market: fee too large"),
    (dict(VALIDATED, validator_fee=MAX + 1), "market: fee too large"),
    ({"validator_fee": 1}, "market: validator fee without validators"),
    (dict(VALIDATED, validator_fee=1), ""),
    # two rounds: the aggregator's fee for both and one validator's for both fit 90% of the escrow exactly
    (dict(VALIDATED, escrow=10_000, aggregator_fee=2_000, validator_fee=2_500), ""),
    (dict(VALIDATED, escrow=10_000, aggregator_fee=2_000, validator_fee=2_501), "market: role fees exceed the escrow"),
    ({"escrow": 10_000, "aggregator_fee": 4_501}, "market: role fees exceed the escrow"),
    ({"licence_requester_bps": R.BPS - R.MAX_FEE_BPS}, ""),
    ({"licence_requester_bps": R.BPS - R.MAX_FEE_BPS + 1}, "market: requester share too large"),
]


def _at(kit, over: dict) -> dict:
    """`over` with its join deadline (given relative to the posting time) made absolute."""
    out = dict(over)
    if "join_deadline" in out:
        out["join_deadline"] += kit.now() + 1  # post_job runs in the next block
    return out


def test_the_defaults_are_in_bounds(kit):
    assert kit.dep.terms_check.call("problem", kit.terms().abi(), kit.requester.address, kit.now()) == ""


@pytest.mark.parametrize("over, reason", BOUNDS, ids=[f"{'|'.join(o)}={r or 'ok'}" for o, r in BOUNDS])
def test_each_bound_is_checked_and_post_job_reverts_with_it(kit, over, reason):
    kit.token.transact("mint", kit.requester.address, over.get("escrow", 0), sender=kit.deployer)
    over = _at(kit, over)
    terms = kit.terms(**over)
    now = kit.now() + 1
    assert kit.dep.terms_check.call("problem", terms.abi(), kit.requester.address, now) == reason
    assert expected_problem(terms.__dict__, kit.requester.address, now) == reason
    if reason:
        with reverts(reason):
            kit.post(**over)
        assert kit.m.call("job_count") == 0
    else:
        job = kit.post(**over)
        assert kit.m.call("terms", job)["escrow"] == terms.escrow


def test_requester_cannot_aggregate(kit):
    terms = kit.terms(aggregator=kit.requester.address)
    assert kit.dep.terms_check.call("problem", terms.abi(), kit.requester.address, kit.now()) == \
        "market: requester cannot aggregate"
    assert kit.dep.terms_check.call("problem", terms.abi(), kit.outsider.address, kit.now()) == ""


def test_the_first_problem_is_named(kit):
    terms = kit.terms(chunk_size=0, rounds=0, escrow=0)
    assert kit.dep.terms_check.call("problem", terms.abi(), kit.requester.address, kit.now()) == "market: bad escrow"
    with reverts("market: bad escrow"):
        kit.post(chunk_size=0, rounds=0, escrow=0)


def test_the_posting_time_is_the_terms_now(kit):
    deadline = kit.now() + 10
    terms = kit.terms(join_deadline=deadline)
    assert kit.dep.terms_check.call("problem", terms.abi(), kit.requester.address, deadline - 1) == ""
    assert kit.dep.terms_check.call("problem", terms.abi(), kit.requester.address, deadline) == \
        "market: join deadline passed"
    assert kit.dep.terms_check.call("problem", terms.abi(), kit.requester.address, deadline - R.MAX_JOIN_WINDOW - 1) \
        == "market: join window too long"


def _edge(limit: int):
    return st.sampled_from([0, 1, 2, limit - 1, limit, limit + 1]) | st.integers(0, limit + 2)


terms_strategy = st.fixed_dictionaries({
    "escrow": _edge(MAX),
    "provider_stake": _edge(MAX),
    "aggregator_stake": _edge(MAX),
    "validator_stake": _edge(MAX),
    "dispute_bond": _edge(MAX),
    "licence_price": _edge(MAX),
    "rounds": _edge(R.MAX_ROUNDS),
    "min_providers": st.integers(0, 5),
    "max_providers": st.sampled_from([0, 1, 3, 5, R.MAX_PROVIDERS, R.MAX_PROVIDERS + 1]),
    "per_round": st.integers(0, 6),
    "min_validators": st.integers(0, 3),
    "max_validators": st.sampled_from([0, 1, 2, 3, R.MAX_VALIDATORS, R.MAX_VALIDATORS + 1]),
    "join_offset": st.sampled_from([-1, 0, 1, 100, R.MAX_JOIN_WINDOW, R.MAX_JOIN_WINDOW + 1]),
    "round_duration": _edge(R.MAX_ROUND_DURATION),
    "challenge_period": _edge(R.MAX_CHALLENGE_PERIOD),
    "claim_period": _edge(R.MAX_CLAIM_PERIOD),
    "response_period": _edge(R.MAX_RESPONSE_PERIOD),
    "rule": st.integers(0, 4),
    "trim": st.sampled_from([0, 1, 2, R.MAX_PROVIDERS, R.MAX_PROVIDERS + 1]),
    "chunk_size": _edge(R.MAX_CHUNK),
    "n_params": _edge(R.MAX_PARAMS),
    "privacy_budget": _edge(R.MAX_EPSILON),
    "noise_multiplier": _edge(R.MAX_NOISE),
    "delta_log": _edge(R.MAX_DELTA_LOG),
    "miss_payout_bps": st.sampled_from([0, 5_000, R.BPS, R.BPS + 1]),
    "spec_zero": st.booleans(),
})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(drawn=terms_strategy)
def test_terms_check_follows_its_specification(kit, drawn):
    now = kit.now() + 1
    d = dict(drawn)
    offset = d.pop("join_offset")
    d["spec_hash"] = ZERO32 if d.pop("spec_zero") else b"\x01" * 32
    d["join_deadline"] = max(0, now + offset)
    terms = kit.terms(**d)
    got = kit.dep.terms_check.call("problem", terms.abi(), kit.requester.address, now)
    assert got == expected_problem(terms.__dict__, kit.requester.address, now)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(drawn=terms_strategy)
def test_post_job_accepts_exactly_the_terms_the_check_accepts(kit, drawn):
    d = dict(drawn)
    offset = d.pop("join_offset")
    d["spec_hash"] = ZERO32 if d.pop("spec_zero") else b"\x02" * 32
    kit.token.transact("mint", kit.requester.address, min(d["escrow"], MAX), sender=kit.deployer)
    d["join_deadline"] = max(0, kit.now() + 1 + offset)
    terms = kit.terms(**d)
    problem = kit.dep.terms_check.call("problem", terms.abi(), kit.requester.address, kit.now() + 1)
    count = kit.m.call("job_count")
    if problem:
        with reverts(problem):
            kit.post(**d)
        assert kit.m.call("job_count") == count
    else:
        job = kit.post(**d)
        assert job == count + 1 and kit.m.call("job_status", job)[0] == 1


def _terms_check(kit, min_period: int):
    from fedmarket.chain import artifacts

    art = artifacts.load("TermsCheck")
    return kit.chain.deploy(kit.deployer, "TermsCheck", art.abi, art.bytecode, min_period)


@pytest.mark.parametrize("period", ["round_duration", "response_period", "challenge_period"])
def test_periods_shorter_than_the_chain_allows_are_refused(kit, period):
    """A terms check deployed for a chain of 12-second blocks (`MIN_PERIOD` 12) refuses every
    period under 12 s, once every other bound holds: no vote or game move could land in time."""
    slow = _terms_check(kit, 12)
    assert slow.call("MIN_PERIOD") == 12
    ok = kit.terms(round_duration=12, response_period=12, challenge_period=12)
    assert slow.call("problem", ok.abi(), kit.requester.address, kit.now()) == ""
    short = kit.terms(**{**dict(round_duration=12, response_period=12, challenge_period=12), period: 11})
    assert slow.call("problem", short.abi(), kit.requester.address, kit.now()) == \
        "market: a period is shorter than this chain allows"
    worse = kit.terms(escrow=0, **{period: 11})  # another bound broken too: that one is named first
    assert slow.call("problem", worse.abi(), kit.requester.address, kit.now()) == "market: bad escrow"


@pytest.mark.parametrize("min_period", [0, 86_401])
def test_the_minimum_period_has_bounds(kit, min_period):
    with reverts("terms: minimum period out of range"):
        _terms_check(kit, min_period)


def test_development_chains_allow_one_second_and_public_ones_more():
    from fedmarket.chain.boa_backend import BoaChain
    from fedmarket.market import MIN_PERIOD, Deployment

    chain = BoaChain()
    deployer = chain.new_account("terms", 0)
    assert Deployment.deploy(chain, deployer, deployer.address).terms_check.call("MIN_PERIOD") == 1
    chain.development = False  # as a chain with another id would be
    assert Deployment.deploy(chain, deployer, deployer.address).terms_check.call("MIN_PERIOD") == MIN_PERIOD >= 60
