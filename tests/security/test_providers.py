"""Providers as attackers: poison, free-ride or copy for pay without useful work, and get honest
providers slashed by judgements they did not deserve."""

from __future__ import annotations

import numpy as np
import pytest
from sec_support import PROV_STAKE, revert

from fedmarket.market import JobState
from fedmarket.protocol.encoding import address_key
from fedmarket.protocol.receipts import Misbehaviour
from fedmarket.roles import Provider
from fedmarket.roles.common import committed_rounds, fetch_metrics
from fedmarket.testing.adversary import AdversarialProvider, Coalition, InflatedWeightProvider


def _free_rider(*args, **kw):
    return AdversarialProvider(*args, coalition=Coalition("free_rider"), **kw)


def test_flagged_provider_slashed_by_supermajority(make):
    """A free-rider (it sends the global model back) joins a job with three validators. They score
    and flag it round after round and two thirds of their stake sign its misbehaviour: it is slashed
    (half to whoever submits the judgement), earns nothing and ends poorer than it started, while
    the honest providers are paid. A judgement signed by less than two thirds slashes nobody."""
    s = make(providers=5, validators=3, rounds=3, provider_cls=[_free_rider] + [Provider] * 4)
    s.open()
    s.rounds()
    cheat, honest = s.providers[0], s.providers[1:]
    # one validator alone (a third of the stake) accuses an honest provider: refused
    v = s.validators[0]
    sig = Misbehaviour(s.job, honest[0].address).sign(v.account.key, s.dep.chain_id, s.dep.disputes.address)
    revert(s.dep.disputes.transact, "slash_provider", s.job, honest[0].address, [v.address], [sig],
           sender=s.c.stranger, match="no validator supermajority")
    s.driver.finish()
    assert s.state() == JobState.SETTLED
    assert s.slashed() == {cheat.address: PROV_STAKE}
    d = s.delta()
    assert d[cheat.address] == -PROV_STAKE
    assert all(d[p.address] > 0 for p in honest)
    assert all(d[v.address] == 0 for v in s.validators) and d[s.agg.address] == 0


def test_honest_provider_never_slashed(make):
    s = make(providers=4, validators=3, rounds=3)
    s.run()
    assert s.state() == JobState.SETTLED
    assert not s.slashed(), {a: v for a, v in s.slashed().items()}
    d = s.delta()
    assert all(d[p.address] > 0 for p in s.providers)


def test_misbehaviour_reports_need_the_job_and_provider_they_name(make):
    """A judgement is bound to its job and provider: signatures collected against a provider in one
    job cannot slash the same provider in another, nor another provider."""
    s = make(providers=3, validators=3, rounds=1)
    s.open()
    vs = sorted(s.validators, key=lambda v: address_key(v.address))
    target, other = s.providers[0].address, s.providers[1].address
    sigs = [Misbehaviour(s.job + 1, target).sign(v.account.key, s.dep.chain_id, s.dep.disputes.address) for v in vs]
    addrs = [v.address for v in vs]
    revert(s.dep.disputes.transact, "slash_provider", s.job, target, addrs, sigs, sender=s.c.stranger,
           match="bad signature")
    sigs = [Misbehaviour(s.job, target).sign(v.account.key, s.dep.chain_id, s.dep.disputes.address) for v in vs]
    revert(s.dep.disputes.transact, "slash_provider", s.job, other, addrs, sigs, sender=s.c.stranger,
           match="bad signature")
    assert not s.slashed()


class _Scaled(Provider):
    """Trains honestly, then sends its update scaled by `factor`: still its own work, in its own
    direction, and of a norm that sets the round's median when enough providers do the same."""

    factor = 1.0

    def _local_delta(self, spec, job_id, round_, q_global):
        return super()._local_delta(spec, job_id, round_, q_global) * self.factor


class _Inflating(_Scaled):
    factor = 25.0


class _Shrinking(_Scaled):
    factor = 1 / 15


def test_a_colluding_majority_cannot_get_an_honest_provider_slashed(make):
    """Flags relative to the round's median norm are set by the round's other providers: two of
    three inflating their updates made the honest one's look like the model sent back, two
    shrinking theirs made it look boosted, and every honest validator reported it, so it lost its
    whole stake to them. Only the model sent back (every value zero) is slashable now: the honest
    provider keeps its stake either way (a relative flag may still cost it a round's pay)."""
    for colluders in (_Inflating, _Shrinking):
        s = make(providers=3, validators=3, rounds=2, provider_cls=[Provider, colluders, colluders])
        s.run()
        assert s.state() == JobState.SETTLED
        assert s.providers[0].address not in s.slashed(), colluders.__name__
        assert s.delta()[s.providers[0].address] >= 0


def test_a_job_whose_training_moves_nothing_slashes_no_honest_provider(make):
    """Attack (the requester): post a job whose local training cannot move the fixed-point model,
    here a learning rate far below the quantization step (a torch network whose parameters get no
    gradient does the same). Every honest update is then all zeros, which is what the validators
    slash as the model sent back: the requester, submitting their reports, would take half of every
    provider's stake. A validator now reports an all-zero update only if one round of the job's
    own training, from the same model on its held-out data, moves something: here it does not, so
    nobody is reported or slashed."""
    s = make(providers=3, validators=3, rounds=2, learning_rate=1e-9)
    s.run()
    assert s.state() == JobState.SETTLED
    assert s.slashed() == {}
    assert all(s.delta()[p.address] >= 0 for p in s.providers)


def test_an_honest_provider_whose_training_moves_nothing_is_not_slashed(make):
    """With a learning rate of 3e-6, one mini-batch step (a provider holding at most a batch of
    samples) quantizes to all zeros while a validator's larger held-out set moves the model: the
    validators' check that the job's training moves would pass, and an honest small provider
    sending its all-zero update every round would be reported as sending the model back, then
    slashed (half to whoever submits the reports: the requester who chose the learning rate). A
    provider whose update is all zeros sends nothing: it sits the round out, never slashed."""
    from sec_support import digits

    _, train, _ = digits()
    s = make(providers=4, validators=3, rounds=3, learning_rate=3e-6)
    small = s.providers[0]
    small.X, small.y = np.asarray(train.X[:16]), np.asarray(train.y[:16])
    s.run()
    assert s.state() == JobState.SETTLED and s.slashed() == {}
    assert all(small.address not in {u["provider"] for u in fetch_metrics(s.store, c)["updates"]}
               for c in committed_rounds(s.dep, s.job))
    assert small.sat_out and all(s.delta()[p.address] >= 0 for p in s.providers)


class BoostedProvider(Provider):
    """Trains honestly and sends its update four times over: below the tenfold norm that flags a
    boost, so it is neither flagged nor excluded."""

    def _released(self, spec, delta, cfg=None):
        return super()._released(spec, delta * 4.0, cfg)


@pytest.mark.parametrize("cheat", [InflatedWeightProvider, BoostedProvider], ids=["weight_x100", "norm_x4"])
def test_a_claimed_weight_or_a_boosted_norm_does_not_buy_a_larger_share(make, cheat):
    """Validators scored each update at its claimed weight and its norm: a provider claiming 100x
    its sample count, or sending 4x its update, owned most of every coalition's model and took more
    than twice its honest pay from the others. They value updates bounded (`scoring.round.bounded`:
    weights capped at the round's median, norms scaled to it): the cheat is paid no more than the
    best paid of the honest providers in the same job."""
    s = make(providers=4, validators=3, rounds=2, provider_cls=[cheat, Provider, Provider, Provider])
    s.run()
    assert s.state() == JobState.SETTLED and s.slashed() == {}
    d = s.delta()
    assert d[s.providers[0].address] <= max(d[p.address] for p in s.providers[1:])
