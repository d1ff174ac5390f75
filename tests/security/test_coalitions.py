"""Coalitions up to the stated bounds: the requester with the aggregator, the aggregator with
validators holding less than a third of the stake. Each plays its attack for real; the test
passes when the coalition ends poorer than honest play and every honest party keeps its due."""

from __future__ import annotations

from sec_support import AGG_STAKE, revert

from fedmarket.market import JobState
from fedmarket.protocol.encoding import canonical_json
from fedmarket.protocol.receipts import RewardsApproval
from fedmarket.roles import Validator
from fedmarket.roles.challenger import Challenger
from fedmarket.roles.settlement import rewards_topic, statement_of
from fedmarket.testing.adversary import SelfPayingAggregator


def _collusion(make, attack: bool, volunteer: bool = True) -> tuple:
    """The requester's accomplice (the aggregator) posts a wrong root (it pays itself the pool); the
    requester proves it wrong itself, which slashes the accomplice and hands the requester half;
    then, if `volunteer`, an honest provider posts the right root with a bond."""
    s = make(providers=3, rounds=2, aggregator_cls=SelfPayingAggregator if attack else None, challenger=False)
    s.open()
    s.rounds()
    s.driver._judge_and_post()
    if attack:
        s.cast.challenger = Challenger(s.dep, s.c.requester, s.store)
        s.driver.challenge()  # the requester opens the game and plays it to the end
        assert s.state() == JobState.TRAINING and s.slashed() == {s.agg.address: AGG_STAKE}
        if not volunteer:
            return s
        s.post_replacement(s.providers[0].account)  # anyone: the right root, with a bond
    s.settle_and_claim()
    return s


def test_requester_aggregator_collusion_loses(chain, make):
    """Requester + aggregator: post a wrong reward root, prove it wrong, take the escrow back. The
    wrong root is replaced, not a reason to fail the job: the aggregator is slashed (half to the
    treasury), the right root pays the providers exactly what honest play pays them, the
    volunteer poster gets its bond back, and the coalition ends poorer than if it had been honest."""
    with chain.chain.snapshot():
        honest = _collusion(make, attack=False).delta()
    s = _collusion(make, attack=True)
    attack = s.delta()
    assert s.state() == JobState.SETTLED
    coalition = [s.c.requester.address, s.agg.address]
    assert sum(attack[a] for a in coalition) == sum(honest[a] for a in coalition) - AGG_STAKE // 2
    assert attack[s.c.treasury.address] == honest[s.c.treasury.address] + AGG_STAKE // 2
    for p in s.providers:  # paid as in honest play (the volunteer's bond came back)
        assert attack[p.address] == honest[p.address] > 0


def test_collusion_pays_the_providers_with_the_roles_alone(chain, make):
    """Nobody volunteers from outside: once the aggregator is slashed for its root, the job's own
    providers post the right root (their job stake behind it, no bond), so the coalition's escrow
    pays them as in honest play and the requester gets nothing back."""
    with chain.chain.snapshot():
        honest = _collusion(make, attack=False).delta()
    s = _collusion(make, attack=True, volunteer=False)
    s.driver.finish()
    assert s.state() == JobState.SETTLED
    d = s.delta()
    for p in s.providers:
        assert d[p.address] == honest[p.address] > 0
    coalition = [s.c.requester.address, s.agg.address]
    assert sum(d[a] for a in coalition) == sum(honest[a] for a in coalition) - AGG_STAKE // 2


def test_an_aggregator_that_posts_no_root_still_pays_the_providers(chain, make):
    """The aggregator commits every round, then posts no reward root (the requester keeps the model):
    at the deadline anyone's `fail` slashes it but does not fail the job; a provider posts the root
    and the escrow pays the providers."""
    s = make(providers=3, rounds=2)
    s.open()
    s.rounds()
    s.past_round_deadline()
    s.dep.market.transact("fail", s.job, sender=s.c.requester)
    assert s.state() == JobState.TRAINING and s.slashed() == {s.agg.address: AGG_STAKE}
    s.driver.finish()
    assert s.state() == JobState.SETTLED
    d = s.delta()
    assert all(d[p.address] > 0 for p in s.providers)
    assert d[s.c.requester.address] < 0  # the escrow paid the providers


class _MinorityValidator(Validator):
    """The aggregator's accomplice among the validators: rejects the honest round 0 and approves the
    aggregator's self-paying reward statement."""

    def review(self, job_id, round_):
        if round_ == 0:
            from fedmarket.roles.common import committed_rounds

            return self._reject(job_id, round_, committed_rounds(self.dep, job_id)[round_])
        return super().review(job_id, round_)


def test_aggregator_with_minority_validators(make):
    """The aggregator with one of four equal-stake validators (a quarter of the stake): the
    accomplice rejects an honest round to fail the job on the others, and approves a reward root
    paying the aggregator the pool. A quarter rejecting fails nothing (more than a third must), the
    other three bring the round to quorum; a quarter approving posts nothing (two thirds must), nor
    does the weight basis open early. The job settles and pays; the coalition gains nothing."""
    s = make(providers=3, validators=4, rounds=2, aggregator_cls=SelfPayingAggregator,
             validator_cls=[_MinorityValidator] + [Validator] * 3)
    d = s.dep.disputes
    accomplice = s.validators[0]
    s.open()
    s.driver.round(0)
    assert d.call("rejected_stake", s.job, 0) == accomplice_stake(s) and s.dep.job(s.job)["quorum"]
    revert(d.transact, "fail_round", s.job, [], sender=s.agg.account, match="round not in doubt")
    s.driver.round(1)
    s.driver.reveal()  # every validator voted on both rounds: the votes are closed, the scores revealed
    # the reward statement: the honest three approve the right one, the accomplice the self-paying one
    for v in s.validators[1:]:
        v.approve_rewards(s.job)
    doc = s.agg.rewards_document(s.job, s.spec)
    root, total, value_total, gate = statement_of(doc)
    sig = RewardsApproval(s.job, root, total, value_total, gate).sign(accomplice.account.key, s.dep.chain_id, d.address)
    s.box.post(rewards_topic(s.job), canonical_json({
        "validator": accomplice.address, "reward_root": "0x" + root.hex(), "reward_total": str(total),
        "value_total": str(value_total), "gate_met": gate, "signature": "0x" + sig.hex()}))
    revert(s.agg.post_rewards, s.job, match="rewards not approved")  # the accomplice's approval is submitted first
    from fedmarket.roles.settlement import statement_key

    assert d.call("rewards_signed", s.job, statement_key((root, total, value_total, gate)), accomplice.address)
    revert(s.agg.post_rewards, s.job, 0, match="approval window open")  # the weight basis, at once
    # the coalition gives up: the right root, which the other three approved
    s.agg.tamper = lambda doc: doc
    s.agg.post_rewards(s.job)
    s.settle_and_claim()
    dl = s.delta()
    assert dl[s.agg.address] == 0 and dl[accomplice.address] <= 0
    assert all(dl[p.address] > 0 for p in s.providers)
    assert all(dl[v.address] == 0 for v in s.validators[1:])
    assert not s.slashed()


def accomplice_stake(s) -> int:
    return int(s.dep.market.call("membership", s.job, s.validators[0].address)[1])
