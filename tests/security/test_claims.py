"""Claims as the attacker's target: take another's reward, take one's own twice, forge a leaf, or
plant a reputation change that makes every later claim of a victim revert."""

from __future__ import annotations

from sec_support import PROV_STAKE, revert

from fedmarket.market import JobState
from fedmarket.protocol.proofs import reward_struct, reward_tree
from fedmarket.roles.common import posted_rewards
from fedmarket.testing.adversary import TamperingPoster

MAX_REP = 2**128


def test_claims_pay_the_leaf_account_once(make):
    """In a settled job provider A claims provider B's leaf (paying itself?), rewrites B's leaf
    with its own account or a bigger amount, shifts its index, claims twice, and claims after the
    claim period. A claim only ever pays the leaf's account, once; every forgery is refused; what
    nobody claimed in time goes back to the requester."""
    s = make(providers=3, rounds=1)
    s.open()
    s.rounds()
    s.driver._judge_and_post()
    s.past(int(s.dep.job(s.job)["challenge_deadline"]) - 1)
    s.dep.market.transact("settle", s.job, sender=s.c.stranger)
    leaves = sorted(posted_rewards(s.dep, s.store, s.job)["leaves"], key=lambda x: int(x["index"]))
    tree = reward_tree(leaves)
    by = {leaf["account"]: leaf for leaf in leaves}
    a, b = s.providers[0], s.providers[1]
    la, lb = by[a.address], by[b.address]
    m = s.dep.market

    def claim(leaf, index=None, proof=None, sender=a.account):
        i = int(leaf["index"]) if index is None else index
        return m.transact("claim", s.job, i, reward_struct(leaf), tree.proof(int(leaf["index"])) if proof is None else proof,
                          sender=sender)

    forged = [dict(lb, account=a.address), dict(lb, amount=str(int(lb["amount"]) + 1)),
              dict(lb, reputation_delta=int(lb["reputation_delta"]) + 5), dict(lb, value=int(lb["value"]) + 1)]
    for leaf in forged:
        revert(claim, leaf, int(lb["index"]), tree.proof(int(lb["index"])), match="invalid proof")
    revert(claim, lb, int(la["index"]), tree.proof(int(lb["index"])), match="invalid proof")  # another position
    revert(claim, lb, int(lb["index"]) + 256, match="invalid proof")  # the same bit of the next bitmap word
    wallet_a, wallet_b = s.dep.balance(a.address), s.dep.balance(b.address)
    claim(lb)  # A sends B's claim: B is paid (its reward and its stake), A nothing
    assert s.dep.balance(b.address) == wallet_b + int(lb["amount"]) + PROV_STAKE
    assert s.dep.balance(a.address) == wallet_a
    revert(claim, lb, match="already claimed")
    claim(la)
    revert(claim, la, match="already claimed")
    s.past(int(s.dep.job(s.job)["claim_deadline"]) - 1)
    c = s.providers[2]
    revert(claim, by[c.address], sender=c.account, match="claim period over")
    swept = s.dep.market.transact("sweep", s.job, sender=s.c.stranger).event("UnclaimedSwept")["amount"]
    assert swept == int(by[c.address]["amount"])
    revert(s.dep.market.transact, "sweep", s.job, sender=s.c.stranger, match="nothing to sweep")
    s.dep.market.transact("release_stake", s.job, c.address, sender=s.c.stranger)  # its stake is still its own
    d = s.delta()
    assert d[a.address] == int(la["amount"]) and d[b.address] == int(lb["amount"]) and d[c.address] == 0


class _ReputationBomb(TamperingPoster):
    """Posts the honest root but with the victim's reputation change at an extreme."""

    victim: str = ""
    bomb: int = 2**255 - 1

    def tamper(self, doc):
        for leaf in doc["leaves"]:
            if leaf["account"] == self.victim:
                leaf["reputation_delta"] = self.bomb
        return doc


def test_reputation_cannot_block_claims(chain, make):
    """An aggregator plants a reputation change of 2**255 - 1 (then -2**255, twice) in a victim's leaf
    so that the victim's claims overflow and revert for ever after. Such a leaf breaks the reward rule
    and is proven wrong when watched; unwatched, every claim still goes through: each change and the
    reputation saturate at +-2**128, and the victim's later claims in other jobs still pay."""
    with chain.chain.snapshot():  # watched: the leaf breaks the rule (a provider's change is its activity)
        s = make(providers=3, rounds=1, aggregator_cls=_ReputationBomb)
        s.agg.victim = s.providers[0].address
        s.run()  # proven wrong, slashed, a provider posts the right root and the job settles
        assert s.state() == JobState.SETTLED and s.slashed() == {s.agg.address: s.spec.reward.aggregator_stake}
    victim = None
    for bomb, expect in ((2**255 - 1, MAX_REP), (-(2**255), 0), (-(2**255), -MAX_REP)):
        s = make(providers=3, rounds=1, aggregator_cls=_ReputationBomb, challenger=False)
        victim = victim or s.providers[0].address
        s.agg.victim, s.agg.bomb = victim, bomb
        s.run()
        assert s.state() == JobState.SETTLED
        assert [e["account"] for e in s.dep.market.events("RewardClaimed", job_id=s.job)].count(victim) == 1
        assert int(s.dep.market.call("reputation", victim)) == expect
    # an honest job after the bombs: the victim claims as usual
    s = make(providers=3, rounds=1)
    s.run()
    assert s.state() == JobState.SETTLED and s.delta()[victim] > 0
    assert int(s.dep.market.call("reputation", victim)) == -MAX_REP + 1  # off the floor by its one round
