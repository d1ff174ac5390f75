"""A slash that lands just before an honest reward root (found by an attacker's review).

A member slashed before the reward root is posted is a cut: its leaf must pay nothing
(`RewardArbiter._leaf_ok`). A validator that saw the aggregator's `post_rewards` in flight had its
own equivocation proven first: the root, derived an instant before with that validator unslashed,
became provably wrong on landing. The validator then won the reward game against it, and the
honest aggregator, which had posted the very statement every validator approved, lost its whole
stake (50 tokens; the griefer came out 20 ahead). A reward root now names the job's slash count it
was derived with (`JobMarket.slashes`), and a post whose count is stale reverts: the poster derives
the root again, with the new cut, and nobody is slashed for a slash it could not have seen."""

from __future__ import annotations

from sec_support import VAL_STAKE, revert

from fedmarket.market import JobState
from fedmarket.protocol.receipts import Attestation
from fedmarket.roles.common import committed_rounds
from fedmarket.roles.settlement import post_reward_root, statement_of, submit_reward_approvals


def _equivocate(s, v) -> None:
    """Validator `v` signs two attestations of round 0 and proves it itself (half its stake back)."""
    root = committed_rounds(s.dep, s.job)[0].model_root
    sigs = [Attestation(s.job, 0, root, bytes([k]) * 32).sign(v.account.key, s.dep.chain_id, s.dep.disputes.address)
            for k in (1, 2)]
    s.dep.disputes.transact("prove_equivocation", s.job, 0, v.address, root, b"\x01" * 32, sigs[0], root, b"\x02" * 32,
                            sigs[1], sender=v.account)


def test_a_slash_landing_before_the_root_reverts_the_post_instead_of_slashing_the_poster(make):
    """Three validators approve the statement; one of them gets its own equivocation proven while
    the aggregator's post is in flight. The post reverts, the aggregator derives the root again (the
    griefer now a cut) and posts it; the job settles with only the griefer slashed."""
    s = make(providers=3, validators=3, rounds=1)
    s.open()
    s.driver.round(0)
    s.driver._approve()  # votes closed, scores revealed, every validator approved the statement
    griefer = s.validators[0]
    doc = s.agg.rewards_document(s.job, s.spec)
    submit_reward_approvals(s.dep, s.box, s.agg.account, s.job, statement_of(doc))
    assert doc["slashes"] == 0
    _equivocate(s, griefer)  # front-runs the post
    assert s.dep.market.call("slashes", s.job) == 1
    revert(post_reward_root, s.dep, s.store, s.box, s.agg.account, s.job, doc, match="slashed since")
    assert s.state() == JobState.TRAINING
    s.driver.finish()  # the aggregator's next step: derive the root again, post, settle, claims
    assert s.state() == JobState.SETTLED
    assert s.slashed() == {griefer.address: VAL_STAKE}
    s.release_all()
    d = s.delta()
    assert d[s.agg.address] >= 0
    assert d[griefer.address] == -VAL_STAKE + VAL_STAKE // 2  # its own proof's half back, nothing more
    assert sum(d[p.address] for p in s.providers) == int(s.dep.job(s.job)["reward_total"]) > 0  # no fees: all theirs
