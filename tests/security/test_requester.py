"""The requester as the attacker: it pays for the model and would like not to, or to trap the
parties that work for it. Each test performs the attack for real and passes when it fails."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from sec_support import VAL_STAKE, ZERO32, revert

from fedmarket.errors import ConfigError
from fedmarket.market import JobState, JobTerms
from fedmarket.processes import AggregatorProcess, ProviderProcess, ValidatorProcess
from fedmarket.processes.base import Fatal
from fedmarket.protocol import rules as R
from fedmarket.roles import Provider
from fedmarket.roles.common import TermsMismatch, committed_rounds, posted_rewards, terms_of
from fedmarket.spec import DeadlineSpec, JobSpec

DAY = 86_400
MAX = R.MAX_AMOUNT


def _post(s, terms: JobTerms, cid: str | None = None):
    s.approve(s.c.requester, s.dep.market.address)
    cid = cid or s.store.put(s.spec.canonical())
    return s.dep.market.transact("post_job", terms.abi(), cid, sender=s.c.requester).event("JobPosted")["job_id"]


def _role_processes(s, job, tmp_path):
    v = s.validators[0]
    return (
        AggregatorProcess(s.dep, s.agg.account, s.store, s.box, job, tmp_path / "agg", log=lambda m: None),
        ProviderProcess(s.dep, s.providers[0].account, s.store, s.box, s.providers[0].X, s.providers[0].y, job,
                        tmp_path / "p", log=lambda m: None),
        ValidatorProcess(s.dep, v.account, s.store, s.box, v.X, v.y, job, tmp_path / "v", log=lambda m: None),
    )


def _refused_before_staking(s, job, tmp_path, match: str) -> None:
    """Every role's process exits with one line naming the problem; nobody staked; the requester
    takes its escrow back and nobody has lost anything."""
    for proc in _role_processes(s, job, tmp_path):
        with pytest.raises(Fatal, match=match):
            proc.step()
    for member in (s.agg, s.providers[0], s.validators[0]):
        assert s.dep.market.call("membership", job, member.address) == (0, 0)
    s.dep.market.transact("cancel", job, sender=s.c.requester)
    assert s.delta() == {a: 0 for a in s.before}


def test_terms_mismatch_refused_before_stake(make, tmp_path):
    """The requester posts terms that differ from the spec they hash to (spec FedAvg, terms median;
    and one by one every other term a role could be tricked by), hoping an honest aggregator
    follows the spec and can then be "proven" wrong. Every role compares the terms with the spec
    before it stakes and refuses (TermsMismatch; its process exits with one line): nobody honest
    joins, nothing is locked, and the requester can only cancel."""
    s = make(providers=3, validators=1)
    now = s.chain.timestamp()
    honest = terms_of(s.spec, s.agg.address, now)
    lies = {
        "rule": R.Rule.MEDIAN, "chunk_size": 32, "n_params": honest.n_params + 1, "escrow": honest.escrow // 2,
        "provider_stake": honest.provider_stake * 3, "aggregator_stake": honest.aggregator_stake + 1,
        "validator_stake": honest.validator_stake * 2, "dispute_bond": honest.dispute_bond * 10,
        "rounds": honest.rounds + 1, "round_duration": 5, "response_period": 2, "challenge_period": 7,
        "claim_period": 9, "max_providers": honest.max_providers + 1, "max_validators": 2,
        "per_round": 2, "miss_payout_bps": 0,
    }
    v = s.validators[0]
    for i, (field, value) in enumerate(lies.items()):
        terms = dataclasses.replace(honest, **{field: value})
        assert s.dep.terms_check.call("problem", terms.abi(), s.c.requester.address, now + 1) == "", field
        job = _post(s, terms)
        with pytest.raises(TermsMismatch, match=field):
            s.agg.accept(job)
        for role in (s.providers[0], v):
            with pytest.raises(TermsMismatch, match=field):
                role.join(job)
        if i == 0:  # the role processes exit with that one line instead of staking
            for proc in _role_processes(s, job, tmp_path):
                with pytest.raises(Fatal, match="TermsMismatch|on-chain rule"):
                    proc.step()
        for member in (s.agg, s.providers[0], v):
            assert s.dep.market.call("membership", job, member.address) == (0, 0)
        s.dep.market.transact("cancel", job, sender=s.c.requester)  # nobody joined: its escrow back
    assert s.delta() == {a: 0 for a in s.before}


def _bad_terms(honest: JobTerms, requester: str, now: int) -> list[tuple[dict, str]]:
    return [
        ({"spec_hash": ZERO32}, "empty spec hash"),
        ({"aggregator": "0x" + "00" * 20}, "aggregator is zero"),
        ({"aggregator": requester}, "requester cannot aggregate"),
        ({"escrow": 0}, "bad escrow"),
        ({"escrow": MAX + 1}, "bad escrow"),
        ({"provider_stake": MAX + 1}, "stake too large"),
        ({"aggregator_stake": MAX + 1}, "stake too large"),
        ({"validator_stake": MAX + 1}, "stake too large"),
        ({"dispute_bond": MAX + 1}, "stake too large"),
        ({"licence_price": MAX + 1}, "price too large"),
        ({"dispute_bond": 0}, "dispute bond is zero"),
        ({"rounds": 0}, "bad round count"),
        ({"rounds": R.MAX_ROUNDS + 1}, "bad round count"),
        ({"min_providers": 0}, "bad provider range"),
        ({"min_providers": 4, "max_providers": 3}, "bad provider range"),
        ({"max_providers": R.MAX_PROVIDERS + 1}, "too many providers"),
        ({"per_round": honest.max_providers + 1}, "per_round above max providers"),
        ({"min_validators": 1, "max_validators": 0}, "bad validator range"),
        ({"min_validators": 1, "max_validators": R.MAX_VALIDATORS + 1}, "too many validators"),
        ({"min_validators": 0, "max_validators": 2, "validator_stake": VAL_STAKE}, "validated job needs min validators"),
        ({"min_validators": 1, "max_validators": 2, "validator_stake": 0}, "validated job needs validator stake"),
        ({"join_deadline": now + 1}, "join deadline passed"),
        ({"join_deadline": now + 1 + R.MAX_JOIN_WINDOW + 1}, "join window too long"),
        ({"round_duration": 0}, "bad round duration"),
        ({"round_duration": R.MAX_ROUND_DURATION + 1}, "bad round duration"),
        ({"rounds": R.MAX_ROUNDS, "round_duration": R.MAX_ROUND_DURATION}, "training too long"),
        ({"challenge_period": 0}, "bad challenge period"),
        ({"challenge_period": R.MAX_CHALLENGE_PERIOD + 1}, "bad challenge period"),
        ({"claim_period": 0}, "bad claim period"),
        ({"claim_period": R.MAX_CLAIM_PERIOD + 1}, "bad claim period"),
        ({"response_period": 0}, "bad response period"),
        ({"response_period": R.MAX_RESPONSE_PERIOD + 1}, "bad response period"),
        ({"rule": 4}, "unknown rule"),
        ({"rule": R.Rule.TRIMMED_MEAN, "trim": 0}, "trim is zero"),
        ({"rule": R.Rule.WEIGHTED_MEAN, "trim": 1}, "trim without trimmed mean"),
        ({"rule": R.Rule.SECURE_SUM}, "secure sum needs validators"),
        ({"rule": R.Rule.TRIMMED_MEAN, "trim": R.MAX_PROVIDERS + 1}, "trim too large"),
        ({"chunk_size": 0}, "bad chunk size"),
        ({"chunk_size": R.MAX_CHUNK + 1}, "bad chunk size"),
        ({"n_params": 0}, "bad model size"),
        ({"n_params": R.MAX_PARAMS + 1}, "bad model size"),
        ({"privacy_budget": R.MAX_EPSILON + 1}, "privacy budget too large"),
        ({"miss_payout_bps": R.BPS + 1}, "bad miss payout"),
        ({"miss_payout_bps": 5_000}, "quality gate needs validators"),
    ]


def test_every_unbounded_term_refused(make):
    """Terms that would lock escrow or stakes for ever or overflow the arithmetic (huge periods,
    amounts, counts, sizes) are refused by `post_job` with the term's name (the same line
    `TermsCheck.problem` gives clients); no token moves. At the bounds themselves a job posts,
    joins and cancels with every amount at its maximum, and every sum stays exact."""
    s = make(providers=3)
    req = s.c.requester
    s.approve(req, s.dep.market.address)
    now = s.chain.timestamp()  # a reverted transaction mines no block: every post below runs at now + 1
    honest = terms_of(s.spec, s.agg.address, now)
    cid = s.store.put(s.spec.canonical())
    for change, reason in _bad_terms(honest, req.address, now):
        terms = dataclasses.replace(honest, **change)
        assert s.dep.terms_check.call("problem", terms.abi(), req.address, now + 1) == "market: " + reason, change
        revert(s.dep.market.transact, "post_job", terms.abi(), cid, sender=req, match=reason)
    revert(s.dep.market.transact, "post_job", honest.abi(), "", sender=req, match="empty spec cid")
    with pytest.raises(ConfigError):  # the requester role refuses such a spec before anything is sent
        s.cast.requester.post(s.spec.model_copy(update={"deadlines": DeadlineSpec.model_construct(
            join_window=DAY, round_duration=R.MAX_ROUND_DURATION + 1, challenge_period=1, claim_period=1,
            response_period=1)}), s.agg.address)
    assert s.delta() == {a: 0 for a in s.before}

    # every amount and period at its bound: posts, locks and refunds exactly
    p = s.c.providers[0]
    s.c.mint(req, MAX)
    s.c.mint(p, MAX)
    s.c.mint(s.c.aggregator, MAX)
    top = dataclasses.replace(
        honest, escrow=MAX, provider_stake=MAX, aggregator_stake=MAX, dispute_bond=MAX, licence_price=MAX,
        max_providers=R.MAX_PROVIDERS, per_round=R.MAX_PROVIDERS, rounds=R.MAX_ROUNDS, round_duration=R.MAX_TRAINING_TIME // R.MAX_ROUNDS,
        join_deadline=s.chain.timestamp() + 1 + R.MAX_JOIN_WINDOW, challenge_period=R.MAX_CHALLENGE_PERIOD,
        claim_period=R.MAX_CLAIM_PERIOD, response_period=R.MAX_RESPONSE_PERIOD, n_params=R.MAX_PARAMS,
        chunk_size=R.MAX_CHUNK)
    job = s.dep.market.transact("post_job", top.abi(), cid, sender=req).event("JobPosted")["job_id"]
    for who in (p, s.c.aggregator):
        s.approve(who, s.dep.market.address)
    s.dep.market.transact("accept", job, sender=s.c.aggregator)
    s.dep.market.transact("join", job, sender=p)
    assert s.dep.balance(s.dep.market.address) == 3 * MAX
    s.past(top.join_deadline)
    s.dep.market.transact("cancel", job, sender=s.c.stranger)  # too few providers: anyone cancels
    for who in (p.address, s.c.aggregator.address):
        s.dep.market.transact("release_stake", job, who, sender=s.c.stranger)
    # what the market still holds is the aggregator's stake, now free (it unbonds it at will)
    assert s.dep.balance(s.dep.market.address) == s.dep.market.call("free_stake", s.c.aggregator.address, R.Role.AGGREGATOR)
    for who in (req, p, s.c.aggregator):
        assert s.dep.holdings(who.address) == s.before[who.address] + MAX


def test_no_cancel_after_start(make):
    """The requester tries to take its escrow back once the work started: while providers are
    joining, after the join window of a job that can start, during training and after the reward
    root. Every cancel is refused; the job runs and pays. The one cancel it may make (right after
    the aggregator accepted, before anyone else joined) costs the aggregator nothing."""
    s = make(providers=3)
    req, m = s.c.requester, s.dep.market
    early = s.cast.requester.post(s.spec, s.agg.address)
    s.agg.accept(early)
    m.transact("cancel", early, sender=req)  # nobody but the aggregator had joined: allowed
    s.agg.release_stake(early)
    assert s.delta() == {a: 0 for a in s.before}

    job = s.driver.job_id = s.cast.requester.post(s.spec, s.agg.address)
    s.agg.accept(job)
    s.providers[0].join(job)
    revert(m.transact, "cancel", job, sender=req, match="join window still open")
    for p in s.providers[1:]:
        p.join(job)
    s.past(s.dep.job(job)["join_deadline"])
    revert(m.transact, "cancel", job, sender=req, match="job can start")
    m.transact("start", job, sender=s.c.stranger)  # anyone starts it after the join deadline
    revert(m.transact, "cancel", job, sender=req, match="job not open")
    s.rounds()
    s.driver._judge_and_post()
    assert s.state() == JobState.FINALIZING
    revert(m.transact, "cancel", job, sender=req, match="job not open")
    s.settle_and_claim()
    revert(m.transact, "cancel", job, sender=req, match="job not open")
    d = s.delta()
    assert all(d[p.address] > 0 for p in s.providers) and d[s.agg.address] == 0


def test_requester_cannot_join_own_job(make):
    """The requester joins its own job as provider (directly or by permit) or as validator, or
    names itself aggregator, to take back what it pays. The market refuses each."""
    s = make(providers=3, validators=1)
    req, m = s.c.requester, s.dep.market
    job = s.cast.requester.post(s.spec, s.agg.address)
    s.agg.accept(job)
    s.approve(req, m.address)
    revert(m.transact, "join", job, sender=req, match="requester cannot join")
    revert(m.transact, "join_with_permit", job, s.chain.timestamp() + 100, 27, ZERO32, ZERO32, sender=req,
           match="requester cannot join")
    revert(m.transact, "join_validator", job, VAL_STAKE, sender=req, match="requester cannot join")
    revert(m.transact, "join_validator", job, 100 * VAL_STAKE, sender=req, match="requester cannot join")
    self_agg = dataclasses.replace(terms_of(s.spec, req.address, s.chain.timestamp()))
    revert(m.transact, "post_job", self_agg.abi(), "bafkspec", sender=req, match="requester cannot aggregate")
    assert s.dep.market.call("membership", job, req.address) == (0, 0)


def test_cannot_fail_before_deadline(make):
    """The requester tries to fail its (validated) job, for a refund, at every step before a
    deadline was missed: right after the start, while a round waits for votes, at the very second
    of the deadline, once the round has quorum, after the reward root. Every attempt is refused
    and the honest job settles and pays."""
    s = make(providers=3, validators=3, rounds=2)
    req, m, d = s.c.requester, s.dep.market, s.dep.disputes
    s.open()
    revert(m.transact, "fail", s.job, sender=req, match="deadline not missed")
    revert(d.transact, "fail_round", s.job, [], sender=req, match="round not in doubt")  # nothing committed yet
    s.driver._train_and_commit(0, __import__("fedmarket.driver", fromlist=["RoundPlan"]).RoundPlan())
    revert(m.transact, "fail", s.job, sender=req, match="deadline not missed")
    revert(d.transact, "fail_round", s.job, [], sender=req, match="deadline not passed")
    s.driver._review(0)  # votes: quorum, a fresh deadline for the next commit
    assert s.dep.job(s.job)["quorum"]
    revert(d.transact, "fail_round", s.job, [], sender=req, match="round not in doubt")
    deadline = s.dep.job(s.job)["round_deadline"]
    s.chain.advance_time(deadline - s.chain.timestamp() - 1)  # the next transaction runs at the deadline
    revert(m.transact, "fail", s.job, sender=req, match="deadline not missed")
    s.driver.round(1)  # committed at the last allowed second
    s.driver._judge_and_post()
    assert s.state() == JobState.FINALIZING
    revert(m.transact, "fail", s.job, sender=req, match="job not training")
    s.settle_and_claim()
    dlt = s.delta()
    assert all(dlt[p.address] > 0 for p in s.providers)
    assert dlt[s.agg.address] == 0 and all(dlt[v.address] == 0 for v in s.validators)


def test_terms_too_short_to_act_on_are_refused(make):
    """A requester posts a validated job with a round duration and response period of 1 second on a
    chain whose blocks come every 12 seconds: no vote or game move could land in time, and its
    `fail_round` in the next block would slash every validator as absent. The market of that chain
    (deployed with its `MIN_PERIOD`) refuses the terms outright, naming them."""
    from fedmarket.chain.boa_backend import BoaChain
    from fedmarket.market import Deployment

    s = make(providers=3, validators=3)
    base = terms_of(s.spec, s.agg.address, s.chain.timestamp())
    chain = BoaChain()
    deployer = chain.new_account("slow-chain", 0)
    slow = Deployment.deploy(chain, deployer, deployer.address, min_period=12)  # a chain of 12-second blocks
    assert slow.terms_check.call("MIN_PERIOD") == 12
    for short in ({"round_duration": 1}, {"response_period": 1}, {"challenge_period": 11}, {"claim_period": 11}):
        terms = dataclasses.replace(base, join_deadline=chain.timestamp() + DAY, **short)
        reason = slow.terms_check.call("problem", terms.abi(), s.c.requester.address, chain.timestamp())
        assert reason == "market: a period is shorter than this chain allows", short
        revert(slow.market.transact, "post_job", terms.abi(), "bafkreispec", sender=deployer,
               match="shorter than this chain allows")
    ok = dataclasses.replace(base, join_deadline=chain.timestamp() + DAY, round_duration=12, response_period=12,
                             challenge_period=12)
    assert slow.terms_check.call("problem", ok.abi(), s.c.requester.address, chain.timestamp()) == ""
    # without a chain minimum of its own, a deployment on a public chain takes MIN_PERIOD
    from fedmarket.market import MIN_PERIOD

    assert MIN_PERIOD >= 60 and s.dep.terms_check.call("MIN_PERIOD") == 1  # the test chain is a development one


def test_a_spec_blob_past_the_limit_is_refused_unread_before_staking(make, tmp_path, monkeypatch, largest_read):
    """The requester posts a job whose spec content id names a blob past MAX_SPEC_BYTES, so that
    every role that looks at the job downloads it whole (and again at every restart). Each role's
    process asks the store for at most MAX_SPEC_BYTES, exits with one line before staking, and
    nothing is locked; the requester's own `post` refuses such a spec before it stores it."""
    from fedmarket.spec import MAX_SPEC_BYTES

    s = make(providers=3, validators=1)
    huge = s.store.put(s.spec.canonical() + b" " * MAX_SPEC_BYTES)
    job = _post(s, terms_of(s.spec, s.agg.address, s.chain.timestamp()), huge)
    _refused_before_staking(s, job, tmp_path, "limit of its reader")
    assert largest_read[0] <= MAX_SPEC_BYTES
    monkeypatch.setattr("fedmarket.roles.requester.MAX_SPEC_BYTES", len(s.spec.canonical()) - 1)
    with pytest.raises(ConfigError, match="job spec is .* bytes, over the"):
        s.cast.requester.post(s.spec, s.agg.address)


def test_providers_that_never_post_cannot_get_the_aggregator_process_slashed(make, tmp_path):
    """The requester's Sybils fill the provider slots and never post (or a round's sampling selects
    nobody): a process that waited for a first update would never commit, and the requester would
    fail the job past the deadline, taking half the aggregator's stake and its escrow back. The
    process commits the round empty a quarter of a round before its deadline."""
    s = make(providers=2, rounds=2)
    s.open()
    logs = []
    proc = AggregatorProcess(s.dep, s.agg.account, s.store, s.box, s.job, tmp_path / "agg", collect_timeout=0,
                             log=logs.append)
    deadline = int(s.dep.job(s.job)["round_deadline"])
    while s.chain.timestamp() < deadline and s.dep.job(s.job)["current_round"] == 0:
        assert proc.safe_step()
        s.chain.advance_time(max(1, (deadline - s.chain.timestamp()) // 8))
    assert s.dep.job(s.job)["current_round"] == 1 and s.chain.timestamp() <= deadline, logs
    assert committed_rounds(s.dep, s.job)[0].count == 0
    revert(s.dep.market.transact, "fail", s.job, sender=s.c.requester, match="market: deadline not missed")
    assert s.slashed() == {}


class PoisonsTheLastRound(Provider):
    """The requester's Sybil among the providers: trains honestly, but in the job's last round
    sends a random update at a claimed weight of 2**20 (sample counts are claims), so that the final
    model is noise and the quality gate, judged on it, would be missed."""

    def train(self, job_id, round_):
        self._round = round_
        return super().train(job_id, round_)

    def _released(self, spec, delta, cfg=None):
        q, weight = super()._released(spec, delta, cfg)
        if self._round == spec.training.rounds - 1:
            return np.random.default_rng(0).integers(-(60 << 20), 60 << 20, size=q.shape, dtype=np.int64), 1 << 20
        return q, weight


def test_a_poisoned_last_round_cannot_take_the_pool_back_through_the_quality_gate(make):
    """With `miss_payout_bps = 0` a missed gate returns the providers' whole pool to the requester,
    who keeps every round's model anyway. The gate is judged on the best round's model: an earlier
    round met the target, so the gate is met and the honest providers are paid."""
    s = make(providers=4, validators=3, rounds=3, target_accuracy=0.8, miss_payout_bps=0,
             provider_cls=[Provider, Provider, Provider, PoisonsTheLastRound])
    s.run()
    assert s.state() == JobState.SETTLED
    doc = posted_rewards(s.dep, s.store, s.job)
    assert doc["gate_met"] is True and doc["quality"]["round"] < 2, doc["quality"]
    d = s.delta()
    assert all(d[p.address] > 0 for p in s.providers[:3])


def test_a_spec_with_a_number_that_is_not_finite_is_refused_before_staking(make, tmp_path):
    """A feature bound of -Infinity passes every check of the data (nothing is below it) and the
    model builds, but normalising features fails later, inside every validator's review: none
    votes, and the requester fails the round on their silence. Every number of a spec must be
    finite: the roles refuse such a spec before staking."""
    from eth_utils import keccak

    s = make(providers=3, validators=1)
    doc = json.loads(s.spec.canonical())
    doc["data"]["feature_low"][0] = float("-inf")
    raw = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    assert b"-Infinity" in raw
    terms = dataclasses.replace(terms_of(s.spec, s.agg.address, s.chain.timestamp()), spec_hash=keccak(raw))
    job = _post(s, terms, s.store.put(raw))
    _refused_before_staking(s, job, tmp_path, "finite number")


def test_a_claim_period_too_short_to_claim_in_is_refused_before_staking(make, tmp_path):
    """ATTACK (found by a funds-liveness review): the requester posts a job whose spec and terms agree
    on a claim period of 1 second, so every check of terms against spec passed and every role staked.
    Everyone trained honestly and the right root stood; the requester settled the job the moment the
    challenge window ended and swept every unclaimed reward back in its next transaction: no
    provider's claim could land, and it kept the model. A spec's claim period is at least
    `rules.MIN_CLAIM_PERIOD` (a day) now, so every role refuses such a job before it stakes; and a
    chain's `MIN_PERIOD` bounds the claim period too."""
    from eth_utils import keccak

    s = make(providers=3, validators=1)
    doc = json.loads(s.spec.canonical())
    doc["deadlines"]["claim_period"] = 1
    raw = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    terms = dataclasses.replace(terms_of(s.spec, s.agg.address, s.chain.timestamp()), spec_hash=keccak(raw),
                                claim_period=1)
    job = _post(s, terms, s.store.put(raw))
    _refused_before_staking(s, job, tmp_path, "claim_period")
    with pytest.raises(ValueError, match="claim_period"):
        DeadlineSpec(claim_period=R.MIN_CLAIM_PERIOD - 1)


def test_a_model_its_validators_cannot_evaluate_is_refused(make, tmp_path):
    """A CNN of 4,096 channels on 256 x 256 inputs has few parameters (providers train it with a
    small batch) but a forward pass of 1,024 samples, the batch validators evaluate with, would take
    terabytes: their review would fail and they would be slashed as absent. The spec is refused
    (the requester cannot post it through `fedmarket`, and every role refuses it posted raw)."""
    from eth_utils import keccak

    s = make(providers=3, validators=1)
    doc = json.loads(s.spec.canonical())
    doc["data"].update(n_features=65536, feature_low=[0.0] * 65536, feature_high=[1.0] * 65536,
                       input_shape=[1, 256, 256])
    doc["model"] = {"kind": "cnn", "channels": [4096, 1], "kernel": 1, "dense": 1, "l2": 0.0, "init_seed": 0}
    with pytest.raises(ConfigError, match="validators could not evaluate it"):
        JobSpec.parse(doc)
    raw = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    terms = dataclasses.replace(terms_of(s.spec, s.agg.address, s.chain.timestamp()), spec_hash=keccak(raw))
    job = _post(s, terms, s.store.put(raw))
    _refused_before_staking(s, job, tmp_path, "validators could not evaluate it")


def test_a_model_too_large_for_the_roles_machines_is_refused_before_staking(make, tmp_path):
    """An MLP of two hidden layers of 60,000 units: 3.6 billion parameters, under the market's
    2**32, in a 1 kB spec. Every round would need a vector of 29 GB per update: the aggregator would
    run out of memory mid-job and be slashed for the round it cannot commit. Each role compares
    what the job needs with the memory its machine has before it stakes."""
    s = make(providers=3, validators=1)
    doc = json.loads(s.spec.canonical())
    doc["model"] = {"kind": "mlp", "hidden": [60000, 60000], "activation": "relu", "l2": 0.0, "init_seed": 0}
    big = JobSpec.parse(doc)
    assert 2**31 < big.n_params <= R.MAX_PARAMS
    s.store.put(big.canonical())
    job = _post(s, terms_of(big, s.agg.address, s.chain.timestamp()), s.store.put(big.canonical()))
    _refused_before_staking(s, job, tmp_path, "GiB of memory")


def _deflate_bomb(path, unpacked: int):
    """An .npz whose X member, deflated, unpacks to `unpacked` bytes of zeros (a kilobyte per MiB)."""
    import zipfile

    def header(shape, dtype):
        d = "{'descr': '%s', 'fortran_order': False, 'shape': %r, }" % (dtype, tuple(shape))
        d += " " * (64 - (10 + len(d) + 1) % 64) + "\n"
        return b"\x93NUMPY\x01\x00" + len(d).to_bytes(2, "little") + d.encode()

    rows = unpacked // 64
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        with z.open("X.npy", "w", force_zip64=True) as f:
            f.write(header((rows, 8), "<f8"))
            for _ in range(unpacked // 2**24):
                f.write(bytes(2**24))
        with z.open("y.npy", "w") as f:
            f.write(header((rows,), "<i8") + bytes(8 * rows))
    return path


def test_a_small_data_file_that_unpacks_past_the_machines_memory_is_one_line(tmp_path, monkeypatch, capsys):
    """A data or model `.npz` handed to a user can be a deflate bomb: a kilobyte per MiB unpacked.
    Every reader compares what the archive's arrays take unpacked with the memory this machine has
    before unpacking anything, and says so in one line (here the machine is made to have 64 MiB)."""
    from fedmarket.cli.app import run

    bomb = _deflate_bomb(tmp_path / "data.npz", 256 * 2**20)
    assert bomb.stat().st_size < 2**20
    monkeypatch.setattr("fedmarket.memory.available_memory", lambda: 64 * 2**20)
    for argv in (["spec", "init", "--data", str(bomb), "--out", str(tmp_path / "spec.json")],
                 ["model", "predict", "--model", str(bomb), "--data", str(bomb)]):
        code = run(argv)
        err = capsys.readouterr().err
        assert code != 0 and err.count("\n") == 1 and "GiB unpacked" in err, err
