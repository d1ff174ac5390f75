"""A round with one update, scored by validators (the scores basis): its provider is paid for it.

Validators score a round's updates against each other (Shapley values on their held-out data), and
they used to score only rounds of two updates or more. A round of one (a sampled job drawing one
provider, or a round the others missed) was attested with a zero score, so its lone honest
provider trained, was aggregated into the model, and was paid nothing for it. A lone update is now
valued by what it adds to the round's starting model (the Shapley value of a one-provider round);
only the absolute flags can still zero it (all zeros, or a model made worse)."""

from __future__ import annotations

from sec_support import ESCROW

from fedmarket.market import JobState
from fedmarket.protocol import rules as R
from fedmarket.roles import Provider
from fedmarket.testing.adversary import SilentProvider


def test_a_lone_provider_in_a_round_is_paid_for_it(make):
    """Three providers, two of them silent after joining, three validators: every round has one
    update. The provider that trained alone takes the providers' whole pool; the silent ones get
    nothing; nobody is slashed."""
    s = make(providers=3, rounds=2, validators=3, provider_cls=[Provider, SilentProvider, SilentProvider])
    s.run()
    assert s.state() == JobState.SETTLED and s.slashed() == {}
    doc = s.honest_document()
    assert doc["basis"] == R.Basis.SCORES
    lone, *silent = s.providers
    truth = s.truth()
    assert all([u.provider for u in truth.evidence(r).updates] == [lone.address] for r in range(2))
    d = s.delta()
    pool = R.pool(ESCROW, int(s.dep.market.call("FEE_BPS")), R.BPS, bool(doc["gate_met"]))
    assert pool - 1 <= d[lone.address] <= pool, f"the lone provider was paid {d[lone.address]} of {pool}"
    assert all(d[p.address] == 0 for p in silent)
