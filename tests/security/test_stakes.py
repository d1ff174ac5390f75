"""Escaping a pending slash: a cheat that sees its fault coming tries to move its stake out of the
job first (release it, unbond it, withdraw it). Stakes stay locked and slashable until the job is
over, and are never slashable after."""

from __future__ import annotations

from sec_support import AGG_STAKE, TOKEN, VAL_STAKE, revert

from fedmarket.driver import RoundPlan
from fedmarket.market import JobState, Role
from fedmarket.protocol.receipts import Attestation
from fedmarket.roles import Validator
from fedmarket.roles.common import committed_rounds
from fedmarket.testing.adversary import EquivocatingValidator, ShiftyAggregator


class Equivocator(EquivocatingValidator):
    """Equivocates about round 0 (EquivocatingValidator), reviews honestly after."""

    def review(self, job_id, round_):
        return super().review(job_id, round_) if round_ == 0 else Validator.review(self, job_id, round_)


def _escape(s, account, role: int, locked: int) -> None:
    """Every way out for a stake locked in a running job, tried by its owner and by a stranger."""
    m = s.dep.market
    for sender in (account, s.c.stranger):
        revert(m.transact, "release_stake", s.job, account.address, sender=sender, match="job still running")
    revert(m.transact, "request_unbond", role, locked, sender=account, match="not enough free stake")
    revert(m.transact, "withdraw", role, sender=account, match="nothing unbonding")
    assert m.call("membership", s.job, account.address)[1] == locked


def test_stake_locked_while_job_runs(make):
    """A validator about to be proven to equivocate and an aggregator about to be proven wrong try
    every way to take their stakes out first; so does a provider. Free stake moves freely (deposit,
    unbond, withdraw after the delay) but never the locked one: each cheat is slashed in full. Once
    the job is over a stake is released and never slashable again: a validator that equivocates
    about a finished job keeps its stake."""
    s = make(providers=3, validators=3, rounds=2, aggregator_cls=ShiftyAggregator,
             validator_cls=[Equivocator, Validator, Validator])
    m = s.dep.market
    s.open()
    cheat_v, agg, p = s.validators[0], s.agg, s.providers[0]
    # free stake comes and goes as its owner likes; the locked stake stays where it is
    s.approve(p.account, m.address)
    m.transact("deposit", Role.PROVIDER, 5 * TOKEN, sender=p.account)
    m.transact("request_unbond", Role.PROVIDER, 5 * TOKEN, sender=p.account)
    revert(m.transact, "withdraw", Role.PROVIDER, sender=p.account, match="still unbonding")
    s.chain.advance_time(int(m.call("UNBONDING_DELAY")))
    m.transact("withdraw", Role.PROVIDER, sender=p.account)
    _escape(s, p.account, Role.PROVIDER, s.spec.reward.provider_stake)

    s.driver._train_and_commit(0, RoundPlan())
    s.driver._review(0)  # the cheat posts two attestations of round 0
    _escape(s, cheat_v.account, Role.VALIDATOR, VAL_STAKE)
    s.driver.challenge()  # the watcher proves the equivocation
    assert s.slashed() == {cheat_v.address: VAL_STAKE}

    s.driver._train_and_commit(1, RoundPlan())  # a wrong aggregate
    _escape(s, agg.account, Role.AGGREGATOR, AGG_STAKE)
    s.driver._review(1)
    s.driver.challenge()
    assert s.state() == JobState.FAILED
    assert s.slashed() == {cheat_v.address: VAL_STAKE, agg.address: AGG_STAKE}
    s.release_all()

    # the job is over: an honest validator's stake is free again and no proof can reach it any more
    v = s.validators[1]
    root = committed_rounds(s.dep, s.job)[0].model_root
    sig = [Attestation(s.job, 0, root, bytes([k]) * 32).sign(v.account.key, s.dep.chain_id, s.dep.disputes.address)
           for k in (1, 2)]
    revert(s.dep.disputes.transact, "prove_equivocation", s.job, 0, v.address, root, b"\x01" * 32, sig[0], root,
           b"\x02" * 32, sig[1], sender=s.c.stranger, match="job not disputable")
    d = s.delta()
    assert d[v.address] == 0 and d[cheat_v.address] == -VAL_STAKE and d[agg.address] == -AGG_STAKE
    assert all(d[x.address] == 0 for x in s.providers)
    assert int(m.call("free_stake", v.address, Role.VALIDATOR)) == VAL_STAKE  # released, its own to unbond


def test_stake_of_a_running_job_is_not_slashable_after_settlement(make):
    """The last moment a slash can land is before the job is over: after settlement a validator's
    equivocation about a round of it is proven to nobody's loss (the market refuses to slash)."""
    s = make(providers=3, validators=3, rounds=1)
    s.run()
    assert s.state() == JobState.SETTLED
    v = s.validators[0]
    root = committed_rounds(s.dep, s.job)[0].model_root
    sig = [Attestation(s.job, 0, root, bytes([k]) * 32).sign(v.account.key, s.dep.chain_id, s.dep.disputes.address)
           for k in (1, 2)]
    revert(s.dep.disputes.transact, "prove_equivocation", s.job, 0, v.address, root, b"\x01" * 32, sig[0], root,
           b"\x02" * 32, sig[1], sender=s.c.stranger, match="job not disputable")
    assert v.address not in s.slashed() and s.delta()[v.address] == 0
