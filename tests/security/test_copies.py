"""Copies (`roles.sealed`): a provider that posts another's update as its own earns nothing, and
the original keeps its pay. Updates are committed before any is revealed, so a copier sees the
victim's update only after the seal, too late to commit to it; an aggregator that seals again to
let the copy in leaves two of its seals in the mailbox, and the validators reject the round."""

from __future__ import annotations

from sec_support import AGG_STAKE

from fedmarket.market import JobState
from fedmarket.roles import Provider
from fedmarket.roles.common import committed_rounds, fetch_metrics
from fedmarket.roles.sealed import seal_topic, seals
from fedmarket.testing.adversary import CopyingProvider, ResealingAggregator


def _rounds(s) -> list[dict]:
    return [fetch_metrics(s.store, c) for c in committed_rounds(s.dep, s.job)]


def test_a_copier_earns_nothing_and_the_original_keeps_its_pay(chain, make):
    """Four providers, the last copies the first's update every round as soon as it is revealed.
    Its copy opens no commitment it made before the seal: left out of every round, with the
    reason in the metrics document; it earns nothing, and the victim is paid at least what it earns
    when the fourth provider trains honestly (it shares the pool with one provider fewer)."""
    with chain.chain.snapshot():
        h = make(providers=4, rounds=2)
        h.run()
        assert h.state() == JobState.SETTLED
        honest = h.delta()
        victim_honest = honest[h.providers[0].address]
    s = make(providers=4, rounds=2, provider_cls=[Provider, Provider, Provider, CopyingProvider])
    copier, victim = s.providers[3], s.providers[0]
    copier.victim = victim.address
    s.run()
    assert s.state() == JobState.SETTLED
    for doc in _rounds(s):
        assert copier.address not in {u["provider"] for u in doc["updates"]}
        assert victim.address in {u["provider"] for u in doc["updates"]}
        assert any("does not open a commitment sealed before the reveals" in r["reason"] for r in doc["rejected"])
    d = s.delta()
    assert d[copier.address] == 0  # nothing earned (its stake came back: a copy is unpaid, not slashed)
    assert d[victim.address] >= victim_honest > 0
    assert d[victim.address] / victim_honest >= 0.8  # copy_victim_share


def test_an_aggregator_resealing_for_a_copier_fails_its_round(make):
    """The aggregator colludes: the copier commits to the victim's update only after seeing it,
    and the aggregator seals again over the late commitment and takes the copy. Both seals, signed
    by it, are in the mailbox: the validators reject the round, the job fails at the aggregator's
    cost, and the copy earns nothing."""
    s = make(providers=4, rounds=2, validators=3, provider_cls=[Provider, Provider, Provider, CopyingProvider],
             aggregator_cls=ResealingAggregator)
    copier, victim = s.providers[3], s.providers[0]
    copier.victim, copier.late_commit = victim.address, True
    s.run()
    first = committed_rounds(s.dep, s.job)[0]
    doc = fetch_metrics(s.store, first)
    assert copier.address in {u["provider"] for u in doc["updates"]}  # the collusion got the copy in
    assert len(seals(s.dep, s.box.read(seal_topic(s.job, 0)), s.job, 0, s.agg.address)) == 2
    assert s.dep.disputes.events("RoundRejected", job_id=s.job)
    s.release_all()
    assert s.state() == JobState.FAILED
    assert s.slashed() == {s.agg.address: AGG_STAKE}
    d = s.delta()
    assert d[copier.address] == 0 and d[victim.address] == 0
