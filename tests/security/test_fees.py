"""The roles' fees (`JobTerms.aggregator_fee`, `validator_fee`), played by real roles: every role
is paid for its work and nothing more. The aggregator earns its fee per committed round, a
validator per round it attested; a validator that did not work earns nothing, its unearned fee
returns to the requester, and an aggregator that pays itself or an idle validator more than the
terms say loses a dispute game and its stake, while the honest roles are paid in full."""

from __future__ import annotations

import pytest
from sec_support import AGG_STAKE, ESCROW, revert

from fedmarket.market import JobState
from fedmarket.protocol import rules as R
from fedmarket.roles import Validator
from fedmarket.roles.auditor import Auditor
from fedmarket.testing.adversary import SilentValidator, TamperingPoster

TOKEN = 10**18
AGG_FEE = 7 * TOKEN  # per committed round
VAL_FEE = 3 * TOKEN  # per attested round


def _fees(**kw) -> dict:
    return {"aggregator_fee": AGG_FEE, "validator_fee": VAL_FEE if kw.get("validators") else 0, **kw}


def _honest(chain, make, **kw) -> dict:
    with chain.chain.snapshot():
        s = make(**_fees(**kw))
        s.run()
        assert s.state() == JobState.SETTLED
        return s.delta()


def _posted(s) -> dict:
    return s.dep.job(s.job)


def test_every_role_earns_its_fee_and_an_idle_validator_nothing(make):
    """Three validators, one silent: the job still reaches quorum. The aggregator earns its fee for
    both rounds, each working validator its fee for both attestations, the silent one nothing (its
    stake comes back; it did no harm), and its unearned fee returns to the requester. The providers
    share the rest of the pool; the auditor re-derives every leaf, fees included."""
    s = make(**_fees(providers=3, rounds=2, validators=3),
             validator_cls=[Validator, Validator, SilentValidator])
    s.run()
    assert s.state() == JobState.SETTLED and s.slashed() == {}
    d, job = s.delta(), _posted(s)
    assert d[s.agg.address] == 2 * AGG_FEE
    working, idle = s.validators[:2], s.validators[2]
    assert all(d[v.address] == 2 * VAL_FEE for v in working) and d[idle.address] == 0
    fee_bps = int(s.dep.market.call("FEE_BPS"))
    pool = R.pool(ESCROW, fee_bps, R.BPS, True)
    reserved = 2 * (AGG_FEE + 3 * VAL_FEE)
    paid_providers = sum(d[p.address] for p in s.providers)
    assert pool - reserved - len(s.providers) < paid_providers <= pool - reserved
    assert int(job["reward_total"]) == paid_providers + 2 * AGG_FEE + 4 * VAL_FEE
    # the requester paid the protocol fee and what was earned; the idle validator's fee came back
    assert d[s.c.requester.address] == -(ESCROW * fee_bps // R.BPS) - int(job["reward_total"])
    report = Auditor(s.dep, s.store).audit(s.job)
    assert report.ok and report.rewards_ok and report.claims_ok


class FeeInflatingAggregator(TamperingPoster):
    """Moves one token from the best-paid provider's leaf to its own fee (the pool is paid out in
    full, so the total cannot grow): the totals add up, every value is right."""

    def tamper(self, doc):
        providers = [leaf for leaf in doc["leaves"] if int(leaf["role"]) == R.Role.PROVIDER]
        richest = max(providers, key=lambda leaf: int(leaf["amount"]))
        richest["amount"] = str(int(richest["amount"]) - TOKEN)
        for leaf in doc["leaves"]:
            if leaf["account"] == self.address:
                leaf["amount"] = str(int(leaf["amount"]) + TOKEN)
        return doc


class IdlePayingAggregator(TamperingPoster):
    """Pays a validator that attested nothing its fee for every round, as if it had attested them
    all (activity and reputation made consistent with that claim, totals adjusted)."""

    idle: str = ""

    def tamper(self, doc):
        r = len(doc["reveals"])  # one entry per committed round
        for leaf in doc["leaves"]:
            if leaf["account"] == self.idle:
                extra = VAL_FEE * r - int(leaf["amount"])
                leaf["amount"], leaf["activity"], leaf["reputation_delta"] = str(VAL_FEE * r), r, r
                doc["total"] = str(int(doc["total"]) + extra)
        return doc


def _caught(s, honest: dict, kind: R.Game) -> None:
    opened = s.dep.reward_arbiter.events("GameOpened", job_id=s.job)
    resolved = s.dep.reward_arbiter.events("GameResolved", job_id=s.job)
    assert [e["kind"] for e in opened] == [kind] and resolved[0]["challenger_won"]
    assert s.state() == JobState.SETTLED and s.slashed() == {s.agg.address: AGG_STAKE}
    d = s.delta()
    for p in s.providers:
        assert d[p.address] == honest[p.address] > 0
    assert d[s.agg.address] == -AGG_STAKE  # a faulting role forfeits its fee with its stake


def test_an_aggregator_overpaying_its_own_fee_is_slashed(chain, make):
    """The aggregator's leaf pays one token above fee x rounds, taken from a provider, the totals
    add up: the watcher's sum game comes down to a leaf that breaks the rule. Slashed, fee
    forfeited, providers whole."""
    honest = _honest(chain, make, providers=3, rounds=2)
    s = make(**_fees(providers=3, rounds=2), aggregator_cls=FeeInflatingAggregator)
    s.run()
    _caught(s, honest, R.Game.REWARD_SUM)


def test_a_root_paying_an_idle_validator_is_slashed(chain, make):
    """A weight-basis job (an attested rule) with a silent validator: the aggregator pays it a fee
    for rounds it never attested. Its leaf follows the reward rule for the activity it claims, so
    the watcher's value game bisects that activity over the rounds down to one, where no attestation
    exists: slashed, and the honest validators and providers are paid exactly their due."""
    kw = dict(providers=3, rounds=2, validators=3, strategy="centered_clip")
    vcls = [Validator, Validator, SilentValidator]
    with chain.chain.snapshot():
        h = make(**_fees(**kw), validator_cls=vcls)
        h.run()
        assert h.state() == JobState.SETTLED and _posted(h)["basis"] == R.Basis.WEIGHT
        honest = h.delta()
    s = make(**_fees(**kw), validator_cls=vcls, aggregator_cls=IdlePayingAggregator)
    s.agg.idle = s.validators[2].address
    s.run()
    _caught(s, honest, R.Game.REWARD_VALUE)
    d = s.delta()
    assert d[s.validators[2].address] == 0
    assert all(d[v.address] == 2 * VAL_FEE for v in s.validators[:2])


def test_a_validator_attesting_the_last_round_after_quorum_is_paid(make, tmp_path):
    """Quorum needs two of three attestations. The aggregator's process used to stop submitting
    there, and post the reward root as soon as it could: a third validator that attested in time,
    but whose own submission waits out its grace, found the job finalizing (`attest` reverts) and
    its fee for the round unpaid. The process puts every posted attestation of the last round on
    chain before the root."""
    from fedmarket.driver import RoundPlan
    from fedmarket.processes.aggregator import AggregatorProcess
    from fedmarket.roles.validator import submit_attestations

    s = make(providers=3, validators=3, rounds=1, validator_fee=TOKEN)
    s.open()
    s.driver._train_and_commit(0, RoundPlan())
    for v in s.validators:
        assert "scores_root" in v.review(s.job, 0)  # all three attest in time, on the mailbox
    v0, v1, late = s.validators
    for v in (v0, v1):
        submit_attestations(s.dep, s.box, s.agg.account, s.job, 0, only=v.address)
    assert s.dep.disputes.call("has_quorum", s.job, 0)
    for v in (v0, v1):
        v.reveal(s.job, 0)
    proc = AggregatorProcess(s.dep, s.agg.account, s.store, s.box, s.job, tmp_path / "agg", reveal_timeout=0)
    proc.safe_step()
    assert s.dep.disputes.call("attestation_of", s.job, 0, late.address) != b"\x00" * 32
    late.reveal(s.job, 0)
    for _ in range(3):
        for v in s.validators:
            v.approve_rewards(s.job)
        proc.safe_step()
    assert s.state() == JobState.FINALIZING
    s.settle_and_claim()
    assert all(s.delta()[v.address] == TOKEN for v in s.validators)


def _two_of_three_attest(s, rounds: int):
    """Train and commit `rounds` rounds; all three validators review each (their attestations are
    on the mailbox), but only the first two reach the chain: quorum without the third."""
    from fedmarket.driver import RoundPlan
    from fedmarket.roles.validator import submit_attestations

    s.open()
    for r in range(rounds):
        s.driver._train_and_commit(r, RoundPlan())
        for v in s.validators:
            assert "scores_root" in v.review(s.job, r)
        for v in s.validators[:2]:
            submit_attestations(s.dep, s.box, s.agg.account, s.job, r, only=v.address)
        assert s.dep.disputes.call("has_quorum", s.job, r)
        for v in s.validators[:2]:
            v.reveal(s.job, r)


def _signed_approvals(s, validators) -> tuple:
    """The honest scores-basis statement now, with each of `validators`' signature of it (as
    `Validator.approve_rewards` signs, which itself waits for the votes to close)."""
    from fedmarket.protocol.receipts import RewardsApproval
    from fedmarket.roles.settlement import statement_of

    statement = statement_of(s.honest_document())
    ordered = sorted(validators, key=lambda v: int(v.address, 16))
    sigs = [RewardsApproval(s.job, *statement).sign(v.account.key, s.dep.chain_id, s.dep.disputes.address) for v in ordered]
    return statement, [v.address for v in ordered], sigs


def test_the_reward_root_waits_for_a_slower_validators_last_vote(make):
    """Attack: the aggregator posts the reward root the moment the last round reaches quorum,
    before a slower validator's attestation (sent in time) is on chain; once the job is finalizing
    that vote can never land, and the validator's fee for the round is lost. The chain now refuses
    every reward root, and every approval of one, until the votes close: every validator voted on
    the last round, or half of the step's time passed. Here the third vote lands, and all three
    validators are paid."""
    from fedmarket.errors import FedMarketError
    from fedmarket.roles.validator import submit_attestations

    s = make(providers=3, validators=3, rounds=1, validator_fee=TOKEN)
    _two_of_three_attest(s, 1)
    v0, v1, late = s.validators
    assert not s.dep.disputes.call("votes_closed", s.job)
    for basis in (R.Basis.SCORES, R.Basis.WEIGHT):
        revert(s.agg.post_rewards, s.job, basis, match="disputes: votes open")
    statement, signers, sigs = _signed_approvals(s, [v0, v1])
    revert(s.dep.disputes.transact, "approve_rewards", s.job, *statement, signers, sigs, sender=s.agg.account,
           match="disputes: votes open")
    with pytest.raises(FedMarketError, match="votes still open"):
        v0.approve_rewards(s.job)  # an honest validator signs no statement that could still change
    submit_attestations(s.dep, s.box, late.account, s.job, 0, only=late.address)
    assert s.dep.disputes.call("votes_closed", s.job)  # every validator voted: no wait
    late.reveal(s.job, 0)
    for v in s.validators:
        v.approve_rewards(s.job)
    s.agg.post_rewards(s.job)
    assert s.state() == JobState.FINALIZING
    s.settle_and_claim()
    assert all(s.delta()[v.address] == TOKEN for v in s.validators)


def test_no_vote_lands_after_the_votes_close(make):
    """The other side of the wait: once half of the last step's time has passed, the votes are
    closed for good. A validator that held back its attestations cannot put one on chain then, of
    the last round or of any earlier one: landing just before the root (front-running it), it
    would have made the honest root's activity provably wrong and the aggregator slashed. The
    two validators that voted in time are paid, the silent one nothing, and nobody is slashed."""
    from fedmarket.roles.validator import submit_attestations

    s = make(providers=3, validators=3, rounds=2, validator_fee=TOKEN)
    _two_of_three_attest(s, 2)
    late = s.validators[2]
    s.past(int(s.dep.market.call("votes_close", s.job)) - 1)
    assert s.dep.disputes.call("votes_closed", s.job)
    for r in (1, 0):
        revert(submit_attestations, s.dep, s.box, late.account, s.job, r, only=late.address, match="disputes: votes closed")
    for v in s.validators[:2]:
        v.approve_rewards(s.job)
    s.agg.post_rewards(s.job)
    s.settle_and_claim()
    d = s.delta()
    assert [d[v.address] for v in s.validators] == [2 * TOKEN, 2 * TOKEN, 0] and s.slashed() == {}
