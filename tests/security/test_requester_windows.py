"""A requester's terms that the roles' checks before staking let through, found by an attacker's
review: each cost the honest members their pay or their stake's freedom."""

from __future__ import annotations

import dataclasses

import pytest
from pydantic import ValidationError
from sec_support import make_spec, revert

from fedmarket.market import JobState
from fedmarket.protocol import rules as R
from fedmarket.roles.common import TermsMismatch, terms_of
from fedmarket.spec import DeadlineSpec, JobSpec, ParticipationSpec

HOUR = 3_600


def test_a_join_deadline_past_the_specs_window_is_refused_before_anyone_stakes(make):
    """The spec promises a one-hour join window; the terms on chain say 90 days, and one provider
    slot more than will be filled. Before the fix every role staked, and every stake stayed locked
    for 89 days (only the requester or the aggregator could start the job before the deadline, and
    at a moment of their choosing). Now the aggregator and every provider refuse to stake, naming
    the term; nothing is locked. Honest terms still pass, at any moment of their window."""
    s = make(providers=3)
    spec = JobSpec.parse({**s.spec.model_dump(mode="json"),
                          "participation": ParticipationSpec(min_providers=3, max_providers=4).model_dump(mode="json"),
                          "deadlines": DeadlineSpec(join_window=HOUR).model_dump(mode="json")})
    now = s.chain.timestamp()
    terms = dataclasses.replace(terms_of(spec, s.agg.address, now), join_deadline=now + R.MAX_JOIN_WINDOW - 10)
    s.approve(s.c.requester, s.dep.market.address)
    job = s.dep.market.transact("post_job", terms.abi(), s.store.put(spec.canonical()),
                                sender=s.c.requester).event("JobPosted")["job_id"]
    for role in (s.agg, *s.providers):
        with pytest.raises(TermsMismatch, match="join_deadline .* more than the spec's join_window of 3600 s"):
            (role.accept if role is s.agg else role.join)(job)
    assert s.dep.job(job)["state"] == JobState.OPEN and int(s.dep.job(job)["n_providers"]) == 0
    assert s.delta() == {a: 0 for a in s.before} | {s.c.requester.address: -int(terms.escrow)}

    honest = s.cast.requester.post(spec, s.agg.address)  # the deadline the spec implies
    s.chain.advance_time(HOUR - 60)  # late in its window: still within it from now
    s.agg.accept(honest)
    s.providers[0].join(honest)
    assert int(s.dep.job(honest)["n_providers"]) == 1


def test_a_secure_job_cannot_carry_a_quality_gate_it_could_never_meet(make):
    """A secure-sum job has no scores basis, so on chain its gate is never met: a requester that
    posted `secagg` with a 5% target and a miss payout of 0 had five providers train a model of
    87-96% accuracy and paid them nothing, keeping it for the 1% protocol fee. The spec now refuses
    the gate for every secure mode, and the chain refuses a miss payout under the secure-sum rule
    (so terms posted by hand, without the spec's check, are refused too)."""
    with pytest.raises(ValidationError, match="masks every update"):
        make_spec(providers=5, privacy="secagg", validators=3, target_accuracy=0.05, miss_payout_bps=0)
    s = make(providers=5, privacy="secagg", validators=3)
    now = s.chain.timestamp()
    terms = dataclasses.replace(terms_of(s.spec, s.agg.address, now), miss_payout_bps=0)
    assert terms.rule == R.Rule.SECURE_SUM
    s.approve(s.c.requester, s.dep.market.address)
    assert s.dep.terms_check.call("problem", terms.abi(), s.c.requester.address, now + 1) == "market: no quality gate on secure sum"
    revert(s.dep.market.transact, "post_job", terms.abi(), s.store.put(s.spec.canonical()), sender=s.c.requester,
           match="no quality gate on secure sum")


def test_a_dispute_bond_no_provider_can_lock_is_refused_before_it_stakes(make):
    """The spec sets a dispute bond of 20,000 tokens for providers holding 10,000 (found by the
    rewards review). Every provider staked; its process, the reward root's watcher of its own
    accord, could not lock the bond and opened no game, and a root moving the whole pool to the
    aggregator settled (each provider paid 0 instead of 33 tokens). A provider now refuses before it
    stakes a job whose stake and bond together it cannot lock, naming the bond."""
    from sec_support import FUNDS

    from fedmarket.roles.common import InsufficientFunds

    s = make(providers=3, bond=2 * FUNDS)
    with pytest.raises(InsufficientFunds, match="dispute bond"):
        s.open()
    assert all(tuple(s.dep.market.call("membership", s.job, p.address)) == (0, 0) for p in s.providers)
