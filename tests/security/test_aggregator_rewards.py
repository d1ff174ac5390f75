"""The aggregator attacks the reward root: pay itself, favour a Sybil, post totals or leaves that
break the reward rule, skip the validators' approval or their scores. Each attack is played for
real by a cheating aggregator among honest roles; it passes when the cheat is slashed, its root
replaced, and the providers paid exactly what honest play pays them."""

from __future__ import annotations

import contextlib

from sec_support import AGG_STAKE, revert

from fedmarket.errors import ContractRevert
from fedmarket.market import JobState
from fedmarket.protocol import rules as R
from fedmarket.protocol.encoding import canonical_json
from fedmarket.protocol.receipts import RewardsApproval
from fedmarket.roles import Provider
from fedmarket.protocol.encoding import address_key
from fedmarket.roles.games import Defender, Truth, job_games
from fedmarket.roles.settlement import rewards_topic, statement_of
from fedmarket.testing.adversary import (
    InflatedWeightProvider,
    InflatingAggregator,
    SelfPayingAggregator,
    TamperingPoster,
)


def _honest_deltas(chain, make, **kw) -> dict:
    with chain.chain.snapshot():
        s = make(**kw)
        s.run()
        assert s.state() == JobState.SETTLED
        return s.delta()


def _caught_and_replaced(s, honest: dict, kind: R.Game) -> dict:
    """The cheat was proven by a game of `kind`, the aggregator slashed; one of the job's providers
    posted the right root itself (the driver plays the roles), the job settled and paid the
    providers exactly their honest due."""
    resolved = s.dep.reward_arbiter.events("GameResolved", job_id=s.job)
    opened = s.dep.reward_arbiter.events("GameOpened", job_id=s.job)
    assert [e["kind"] for e in opened] == [kind] and resolved[0]["challenger_won"]
    assert s.state() == JobState.SETTLED and s.slashed() == {s.agg.address: AGG_STAKE}
    posted = s.dep.market.events("RewardRootPosted", job_id=s.job)
    assert len(posted) == 2 and posted[1]["poster"] in {p.address for p in s.providers}
    d = s.delta()
    assert d[s.agg.address] == -AGG_STAKE
    assert d[s.c.watcher.address] == AGG_STAKE // 2  # its bond back, and half the stake
    for p in s.providers:
        assert d[p.address] == honest[p.address] > 0
    return d


def test_self_paying_root_slashed(chain, make):
    """In a job without validators the aggregator posts a root whose own leaf takes the whole pool
    (totals add up, values are right). The watcher's sum game bisects down to that leaf, which
    breaks the rule (an aggregator's leaf pays 0): slashed, root replaced, providers paid in full."""
    honest = _honest_deltas(chain, make, providers=3, rounds=2)
    s = make(providers=3, rounds=2, aggregator_cls=SelfPayingAggregator)
    s.run()
    _caught_and_replaced(s, honest, R.Game.REWARD_SUM)


def test_inflated_value_slashed(chain, make):
    """The aggregator doubles one provider's value (its Sybil's) and pays every provider
    `pool * value // value_total` of the inflated values, so every leaf follows the reward rule.
    The watcher's value game bisects that leaf's value over the rounds down to one round, where the
    aggregator must show the weight it aggregated: it cannot. Slashed; the Sybil gets its due only."""
    honest = _honest_deltas(chain, make, providers=3, rounds=3)
    s = make(providers=3, rounds=3, aggregator_cls=InflatingAggregator)
    s.agg.favoured = s.providers[1].address
    s.run()
    _caught_and_replaced(s, honest, R.Game.REWARD_VALUE)


def _inconsistent(kind: str):
    def tamper(self, doc):
        providers = [leaf for leaf in doc["leaves"] if int(leaf["role"]) == R.Role.PROVIDER]
        a, b = providers[0], providers[1]
        if kind == "totals":  # value total understated: every amount bigger, the posted total says the pool
            vt = int(doc["value_total"]) // 2
            for leaf in providers:
                leaf["amount"] = str(int(doc["pool"]) * int(leaf["value"]) // vt)
            doc["value_total"], doc["total"] = str(vt), doc["pool"]
        elif kind == "amounts":  # one token moved from one provider to another; totals unchanged
            a["amount"], b["amount"] = str(int(a["amount"]) - 10**18), str(int(b["amount"]) + 10**18)
        elif kind == "non_member":  # a provider's leaf paid to an account outside the job
            a["account"] = self.stranger
        elif kind == "two_leaves":  # one member twice (the second in place of another provider's leaf)
            b.update({k: a[k] for k in ("account", "role", "amount", "reputation_delta", "value", "activity")})
            vt = sum(int(leaf["value"]) for leaf in providers)
            for leaf in providers:
                leaf["amount"] = str(int(doc["pool"]) * int(leaf["value"]) // vt)
            doc["value_total"] = str(vt)
            doc["total"] = str(sum(int(leaf["amount"]) for leaf in providers))
        return doc

    return type(f"Inconsistent_{kind}", (TamperingPoster,), {"tamper": tamper})


def test_inconsistent_root_slashed(chain, make):
    """Roots whose totals do not add up, with a wrong amount, a non-member's leaf, or two leaves for
    one member: in each, the watcher's sum game lands on a leaf that is out of order, not a
    member's, not following `pool * value // value_total`, or not giving the totals claimed. The
    aggregator is slashed every time and the replaced root pays the providers in full."""
    honest = _honest_deltas(chain, make, providers=4, rounds=2)
    for kind in ("totals", "amounts", "non_member", "two_leaves"):
        with chain.chain.snapshot():
            s = make(providers=4, rounds=2, aggregator_cls=_inconsistent(kind))
            s.agg.stranger = s.c.stranger.address
            s.run()  # the watcher proves the root wrong; one of the providers posts the right one
            opened = s.dep.reward_arbiter.events("GameOpened", job_id=s.job)
            assert opened, kind
            assert s.state() == JobState.SETTLED and s.slashed() == {s.agg.address: AGG_STAKE}, kind
            d = s.delta()
            assert d[s.agg.address] == -AGG_STAKE, kind
            assert all(d[p.address] == honest[p.address] for p in s.providers), kind


def _sign_approval(s, v, statement) -> None:
    root, total, value_total, gate = statement
    sig = RewardsApproval(s.job, root, total, value_total, gate).sign(v.account.key, s.dep.chain_id, s.dep.disputes.address)
    s.box.post(rewards_topic(s.job), canonical_json({
        "validator": v.address, "reward_root": "0x" + root.hex(), "reward_total": str(total),
        "value_total": str(value_total), "gate_met": gate, "signature": "0x" + sig.hex()}))


def test_scores_root_needs_approval(make):
    """In a validated job the aggregator posts a scores-basis root paying itself the pool: without
    approvals, with one validator's (a third), and then the approved root with another total or
    quality flag. Each is refused: two thirds of the start stake must have approved exactly that
    statement. The approved root posts and pays."""
    s = make(providers=3, validators=3, rounds=2, aggregator_cls=SelfPayingAggregator)
    d = s.dep.disputes
    s.open()
    s.rounds()
    bad = statement_of(s.agg.rewards_document(s.job, s.spec))
    root, total, value_total, gate = bad
    cid = s.store.put(b"{}")
    revert(s.dep.market.transact, "post_rewards", s.job, root, total, value_total, 1, gate, cid, 0, sender=s.agg.account,
           match="rewards not approved")
    _sign_approval(s, s.validators[0], bad)  # one accomplice (a third of the stake)
    revert(s.agg.post_rewards, s.job, match="rewards not approved")
    for v in s.validators[1:]:
        v.approve_rewards(s.job)  # the other two approve the right statement
    s.agg.tamper = lambda doc: doc
    good = statement_of(s.agg.rewards_document(s.job, s.spec))
    from fedmarket.roles.settlement import submit_reward_approvals

    submit_reward_approvals(s.dep, s.box, s.c.stranger, s.job, good)
    groot, gtotal, gvalue, ggate = good
    for lie in ((groot, gtotal - 1, gvalue, ggate), (groot, gtotal, gvalue + 1, ggate), (groot, gtotal, gvalue, not ggate)):
        revert(s.dep.market.transact, "post_rewards", s.job, *lie[:3], 1, lie[3], cid, 0, sender=s.agg.account,
               match="rewards not approved")
    assert d.call("rewards_stake", s.job, _key(good)) * 3 >= 2 * int(s.dep.job(s.job)["validator_total_stake"])
    s.agg.post_rewards(s.job)
    s.settle_and_claim()
    dl = s.delta()
    assert dl[s.agg.address] == 0 and all(dl[p.address] > 0 for p in s.providers)


def _key(statement) -> bytes:
    import eth_abi
    from eth_utils import keccak

    root, total, value_total, gate = statement
    return keccak(eth_abi.encode(["bytes32", "uint256", "uint256", "bool"], [root, total, value_total, gate]))


def test_weight_basis_waits_for_validators(make):
    """The aggregator skips the validators' scores (which would pay its Sybils little) by posting
    the weight basis as soon as the last round has quorum. Refused until half of the last step's
    time has passed, to the second; then the provable weight basis posts."""
    s = make(providers=3, validators=3, rounds=2)
    s.open()
    s.rounds()
    job = s.dep.job(s.job)
    deadline, half = int(job["round_deadline"]), s.spec.deadlines.round_duration // 2
    revert(s.agg.post_rewards, s.job, R.Basis.WEIGHT, match="approval window open")
    # the aggregator's post computes its document first (no transaction): the next transaction's time
    s.chain.advance_time(deadline - half - 1 - s.chain.timestamp() - 1)
    revert(s.agg.post_rewards, s.job, R.Basis.WEIGHT, match="approval window open")  # one second early
    s.chain.advance_time(1)
    s.agg.post_rewards(s.job, R.Basis.WEIGHT)
    assert s.state() == JobState.FINALIZING and int(s.dep.job(s.job)["basis"]) == R.Basis.WEIGHT


def test_weight_basis_refused_once_scores_approved(make):
    s = make(providers=3, validators=3, rounds=2, provider_cls=[InflatedWeightProvider, Provider, Provider])
    s.open()
    s.rounds()
    for v in s.validators:
        v.approve_rewards(s.job)
    scores_doc = s.agg.rewards_document(s.job, s.spec)
    assert scores_doc["basis"] == R.Basis.SCORES
    from fedmarket.roles.settlement import submit_reward_approvals

    submit_reward_approvals(s.dep, s.box, s.c.stranger, s.job, statement_of(scores_doc))
    sybil = s.providers[0].address
    due = next(int(leaf["amount"]) for leaf in scores_doc["leaves"] if leaf["account"] == sybil)
    s.chain.advance_time(s.spec.deadlines.round_duration // 2)
    try:
        s.agg.post_rewards(s.job, R.Basis.WEIGHT)
    except ContractRevert:
        return  # refused: the defence holds
    s.settle_and_claim()
    got = s.delta()[sybil]
    assert got <= due, f"the Sybil took {got / 1e18:.2f} tokens instead of the approved {due / 1e18:.2f}"


def test_slashed_aggregator_cannot_lock_the_job(make):
    """The aggregator, slashed for a wrong root, posts the same lie again as the "replacement"
    poster, with the bond: if the market took it, proving it wrong would try to slash the
    aggregator's stake a second time and revert, so no game against it could end and the job,
    with the escrow and every stake in it, would be locked for ever. The aggregator proven wrong
    may not post again; anyone else may, and the job settles."""
    s = make(providers=3, rounds=2, aggregator_cls=SelfPayingAggregator)
    s.run_until_rejected()  # its first wrong root is proven and the aggregator slashed
    assert s.state() == JobState.TRAINING and s.agg.address in s.slashed()
    s.approve(s.agg.account, s.dep.market.address)
    try:
        s.agg.post_rewards(s.job)  # the same lie again, with the bond
    except ContractRevert as exc:
        assert "aggregator was slashed" in str(exc)
        s.post_replacement(s.providers[0].account)
        s.settle_and_claim()
        assert s.state() == JobState.SETTLED
        return
    try:
        s.driver.challenge()  # the watcher proves it wrong again ...
    except ContractRevert as exc:  # ... and cannot win: the game's end reverts
        assert "not slashable" in str(exc)
    for _ in range(5):  # the watcher and anyone keep trying to end the game and the job
        s.chain.advance_time(s.spec.deadlines.response_period + 1)
        for g in job_games(s.dep, s.job):
            for fn in ("timeout", "close_moot"):
                try:
                    g.arbiter.transact(fn, g.gid, sender=s.c.watcher)
                except ContractRevert:
                    pass
        for fn in ("settle", "fail"):
            try:
                s.dep.market.transact(fn, s.job, sender=s.c.watcher)
            except ContractRevert:
                pass
    assert s.state() in (JobState.SETTLED, JobState.FAILED), f"job stuck in {s.state().name} with its funds locked"


def test_aggregator_slashed_for_a_wrong_root_gains_no_reputation(make):
    s = make(providers=3, rounds=2, aggregator_cls=SelfPayingAggregator)
    before = int(s.dep.market.call("reputation", s.agg.address))
    s.run()  # proven wrong; a provider posts the replacement, the job settles, everyone claims
    assert s.state() == JobState.SETTLED
    assert int(s.dep.market.call("reputation", s.agg.address)) < before


def test_rejected_root_is_on_record(make):
    """A rejected root leaves a record of what was rejected and whose it was (`RewardRootRejected`),
    for anyone reconstructing who cheated."""
    s = make(providers=3, rounds=2, aggregator_cls=SelfPayingAggregator)
    s.run()
    posted = s.dep.market.events("RewardRootPosted", job_id=s.job)[0]
    rejected = s.dep.market.events("RewardRootRejected", job_id=s.job)[0]
    assert (rejected["reward_root"], rejected["poster"]) == (posted["reward_root"], posted["poster"])


def _equivocate(s, v, job: int) -> None:
    """Validator `v` signs two attestations of round 0 and proves it itself (it keeps half its stake)."""
    from fedmarket.protocol.receipts import Attestation
    from fedmarket.roles.common import committed_rounds

    root = committed_rounds(s.dep, job)[0].model_root
    sigs = [Attestation(job, 0, root, bytes([k]) * 32).sign(v.account.key, s.dep.chain_id, s.dep.disputes.address)
            for k in (1, 2)]
    s.dep.disputes.transact("prove_equivocation", job, 0, v.address, root, b"\x01" * 32, sigs[0], root, b"\x02" * 32,
                            sigs[1], sender=v.account)


def test_a_slash_after_approval_cannot_strand_an_honest_aggregator(make):
    s = make(providers=3, validators=3, rounds=1)
    s.open()
    s.driver.round(0)
    for v in s.validators:
        v.approve_rewards(s.job)
    from fedmarket.roles.settlement import submit_reward_approvals

    griefer = s.validators[0]
    approved = statement_of(s.agg.rewards_document(s.job, s.spec))
    submit_reward_approvals(s.dep, s.box, griefer.account, s.job, approved)  # all three approvals on chain
    _equivocate(s, griefer, s.job)  # now a cut: the approved root is wrong for its leaf
    # the honest roles post a root, or let the providers post one: none they compute is approved, the
    # weight basis is closed
    with contextlib.suppress(Exception):
        s.driver.finish()
    for _ in range(2):  # the griefer fails what cannot go on (each time the deadline passes)
        if s.state() != JobState.TRAINING:
            break
        s.past_round_deadline()
        try:
            s.dep.market.transact("fail", s.job, sender=griefer.account)
        except ContractRevert:
            break
        with contextlib.suppress(Exception):
            s.driver.finish()
    s.release_all()
    d = s.delta()
    assert s.agg.address not in s.slashed(), (
        f"job {s.state().name}: the honest aggregator was slashed; the griefer made {d[griefer.address] / 1e18:+.1f}")
    # the honest validators approved the statement that replaced the stale one: the job settled and the
    # providers were paid the whole reward total (by their scores)
    assert s.state() == JobState.SETTLED, s.state().name
    posted = s.dep.market.events("RewardRootPosted", job_id=s.job)[-1]
    assert sum(d[p.address] for p in s.providers) == int(posted["reward_total"]) > 0


class RenumberingInflater(InflatingAggregator):
    """Inflates the first provider's value and numbers it and the leaves after it one higher (the
    same order, so the same root): a watcher that opened its value game at a leaf's own `index`
    would dispute the next, correct leaf and lose its bond, and the inflated root would settle."""

    def tamper(self, doc):
        first = min((leaf for leaf in doc["leaves"] if int(leaf["role"]) == R.Role.PROVIDER), key=lambda l: int(l["index"]))
        self.favoured = first["account"]
        doc = super().tamper(doc)
        for leaf in doc["leaves"]:
            if int(leaf["index"]) >= int(first["index"]):
                leaf["index"] = int(leaf["index"]) + 1
        return doc


class _CaseBlindTruth(Truth):
    """The cheat's own view of a member's value: addresses compared as the chain compares them."""

    def round_value(self, account, round_):
        if R.role_of(self.dep.market.call("membership", self.job_id, account)[0]) != R.Role.PROVIDER:
            return super().round_value(account, round_)
        weights = dict((address_key(p), w) for p, w in self.auditor.members(self.job_id, round_, self.rounds))
        return [weights[address_key(account)], 1] if address_key(account) in weights else [0, 0]


class _CaseBlindDefender(Defender):
    def respond(self, job_id):
        truth = _CaseBlindTruth(self.dep, self.store, job_id, self.auditor)
        return [self.move(truth, g) for g in job_games(self.dep, job_id)
                if g.turn == R.Turn.DEFENDER and g.defender == self.account.address]


class CaseChangingInflater(InflatingAggregator):
    """Inflates the last provider's value and writes the other providers' accounts in lower case (the
    chain reads the same address, so the same root): a watcher comparing strings would find those
    correct leaves' values wrong, dispute one of them and lose its bond (its own defender reads
    addresses as the chain does)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.defender = _CaseBlindDefender(self.dep, self.account, self.store)

    def tamper(self, doc):
        self.favoured = [leaf for leaf in doc["leaves"] if int(leaf["role"]) == R.Role.PROVIDER][-1]["account"]
        doc = super().tamper(doc)
        for leaf in doc["leaves"]:
            if int(leaf["role"]) == R.Role.PROVIDER and leaf["account"] != self.favoured:
                leaf["account"] = leaf["account"].lower()
        return doc


def test_leaf_numbers_in_the_document_cannot_misdirect_the_value_game(chain, make):
    """Every reader takes a leaf's position in the tree, not the number the document gives it
    (`proofs.positional_leaves`): the watcher's value game lands on the inflated leaf and wins."""
    honest = _honest_deltas(chain, make, providers=3, rounds=3)
    s = make(providers=3, rounds=3, aggregator_cls=RenumberingInflater)
    s.run()
    _caught_and_replaced(s, honest, R.Game.REWARD_VALUE)


def test_accounts_in_another_case_cannot_misdirect_the_value_game(chain, make):
    """Every reader takes an account in checksum form: the watcher's value game lands on the
    inflated leaf and wins."""
    honest = _honest_deltas(chain, make, providers=3, rounds=3)
    s = make(providers=3, rounds=3, aggregator_cls=CaseChangingInflater)
    s.run()
    _caught_and_replaced(s, honest, R.Game.REWARD_VALUE)


class Renumbering(TamperingPoster):
    """Posts the right root with every leaf numbered one higher: the providers' claims, had they
    proven the number the document gives rather than the position, would all revert, and after the
    claim period the requester would sweep their pay."""

    def tamper(self, doc):
        for leaf in doc["leaves"]:
            leaf["index"] = int(leaf["index"]) + 1
        return doc


def test_a_renumbered_right_root_still_pays_every_provider(chain, make):
    honest = _honest_deltas(chain, make, providers=3, rounds=2)
    s = make(providers=3, rounds=2, aggregator_cls=Renumbering)
    s.run()
    assert s.state() == JobState.SETTLED and not s.dep.reward_arbiter.events("GameOpened", job_id=s.job)
    d = s.delta()
    assert all(d[p.address] == honest[p.address] > 0 for p in s.providers)


def test_a_game_against_a_discarded_root_does_not_come_back_against_its_next_poster(chain, make):
    """ATTACK (found by a review of the dispute game): the aggregator posts no root and is failed;
    its accomplice posts the right root with a bond, and two Sybils challenge it. The accomplice
    answers neither: the first game times out, its bond goes and the root is discarded. An honest
    provider then posts the root the rule gives, the very same root, so the second game (opened
    against the accomplice's posting, the accomplice still its defender, whom only it may answer
    for) was live again, and its timeout slashed the honest poster's whole stake. A reward game is
    now against one posting: the root and its poster; the second game is moot, its bond refunded."""
    from sec_support import FUNDS

    from fedmarket.roles.common import load_spec
    from fedmarket.roles.settlement import post_orphaned_root

    s = make(providers=3, rounds=2, challenger=False)
    dep, ra = s.dep, s.dep.reward_arbiter
    sybils = [chain.chain.new_account("root-reviver", i) for i in range(2)]
    for a in sybils:
        chain.mint(a, FUNDS)
        s.approve(a, ra.address)
    s.open()
    s.rounds()
    s.past_round_deadline()
    dep.market.transact("fail", s.job, sender=sybils[0])  # the aggregator posted no root
    s.post_replacement(chain.stranger)  # the accomplice: the right root, with its bond
    root = bytes(dep.job(s.job)["reward_root"])
    g1 = ra.transact("challenge_rewards", s.job, sender=sybils[0]).event("GameOpened")["game_id"]
    g2 = ra.transact("challenge_rewards", s.job, sender=sybils[1]).event("GameOpened")["game_id"]
    s.past(int(ra.call("games", g1)["deadline"]))
    ra.transact("timeout", g1, sender=sybils[0])  # the accomplice's bond goes, the root is discarded
    assert s.state() == JobState.TRAINING
    honest = s.providers[0]
    post_orphaned_root(dep, s.store, s.box, honest.account, s.job, load_spec(dep, s.store, s.job))
    assert bytes(dep.job(s.job)["reward_root"]) == root and dep.job(s.job)["poster"] == honest.address
    ra.transact("timeout", g2, sender=sybils[1])  # the accomplice silent in its old game
    assert honest.address not in s.slashed()
    assert s.state() == JobState.FINALIZING and bytes(dep.job(s.job)["reward_root"]) == root
    assert [e["moot"] for e in ra.events("GameResolved") if e["game_id"] == g2] == [True]


def test_a_wrong_root_posted_again_by_an_accomplice_is_checked_again(chain, make, tmp_path):
    """ATTACK (found by a review of the fix above): the aggregator posts a root that pays itself
    every provider's pay but a wei; each provider's process opens a game on it. The aggregator loses
    one by silence (slashed, the root discarded), and at once an accomplice posts the very same root
    with its bond. The providers' games on the first posting are moot now, and each process had
    marked that root as checked, so nobody disputed it again and it settled. A process remembers
    the posting it checked (root, poster, challenge deadline): the new posting is checked, a game
    opened, and the accomplice's bond goes."""
    from sec_support import FUNDS

    from fedmarket.processes.provider import ProviderProcess
    from fedmarket.testing.adversary import TamperingPoster

    class FeeInflatingAggregator(TamperingPoster):
        def tamper(self, doc):
            moved = 0
            for leaf in doc["leaves"]:
                if int(leaf["role"]) == R.Role.PROVIDER:
                    moved += int(leaf["amount"]) - 1
                    leaf["amount"] = "1"
            for leaf in doc["leaves"]:
                if leaf["account"] == self.address:
                    leaf["amount"] = str(int(leaf["amount"]) + moved)
            return doc

    s = make(providers=3, rounds=2, aggregator_fee=7 * 10**18, aggregator_cls=FeeInflatingAggregator)
    dep, ra = s.dep, s.dep.reward_arbiter
    accomplice = chain.chain.new_account("reposter", 0)
    chain.mint(accomplice, FUNDS)
    s.open()
    s.rounds()
    s.driver._judge_and_post()  # the self-paying root
    posted = dep.market.events("RewardRootPosted", job_id=s.job)[-1]
    wrong = bytes(posted["reward_root"])
    logs: list[str] = []
    procs = [ProviderProcess(dep, p.account, s.store, s.box, p.X, p.y, s.job, tmp_path / f"p{i}", log=logs.append)
             for i, p in enumerate(s.providers)]
    for proc in procs:  # each provider checks the root and opens its own game
        proc.safe_step()
    games = s.games()
    assert len(games) == len(procs), "\n".join(logs)
    s.past(min(g.deadline for g in games))
    ra.transact("timeout", games[0].gid, sender=accomplice)  # the aggregator silent: slashed, root discarded
    assert s.state() == JobState.TRAINING
    s.approve(accomplice, dep.market.address)
    dep.market.transact("post_rewards", s.job, wrong, int(posted["reward_total"]), int(posted["value_total"]),
                        int(posted["basis"]), bool(posted["gate_met"]), posted["rewards_cid"],
                        dep.market.call("slashes", s.job), sender=accomplice)
    deadline = int(dep.job(s.job)["challenge_deadline"])
    for _ in range(60):
        for proc in procs:
            proc.safe_step()
        if s.state() != JobState.FINALIZING or bytes(dep.job(s.job)["reward_root"]) != wrong:
            break
        if s.games():
            s.past(min(g.deadline for g in s.games()))
        elif s.chain.timestamp() < deadline - 2:
            s.past(min(deadline - 2, s.chain.timestamp() + 60))
        else:
            break
    assert accomplice.address in s.slashed(), "\n".join(logs[-15:])
    assert bytes(dep.job(s.job)["reward_root"]) != wrong


def test_a_weight_basis_root_documented_as_scores_is_caught_by_the_watchers(make):
    """ATTACK (found by a review of the watchers): in a validated job whose approvals never reached
    the chain, the weight basis opens at half the last step; the aggregator posts, on chain as the
    weight basis, the root of leaves computed on the scores basis, and writes the scores basis in
    its rewards document. The value game proves it wrong, but `fedmarket audit`, the challenger
    role and every provider's reward watch re-derived the leaves on the document's basis and saw a
    matching root: nobody opened the game. They take the chain's basis now, and the watcher's game
    wins."""
    from fedmarket.roles.auditor import Auditor
    from fedmarket.roles.challenger import Challenger

    s = make(providers=3, validators=3, rounds=2)
    s.open()
    s.rounds()
    scores_doc = s.honest_document(R.Basis.SCORES)
    assert statement_of(scores_doc)[0] != statement_of(s.honest_document(R.Basis.WEIGHT))[0]
    s.chain.advance_time(s.spec.deadlines.round_duration // 2)  # the weight basis opens (no approvals on chain)
    root, total, value_total, gate = statement_of(scores_doc)
    s.dep.market.transact("post_rewards", s.job, root, total, value_total, R.Basis.WEIGHT, gate,
                          s.store.put(canonical_json(scores_doc)), scores_doc["slashes"], sender=s.agg.account)
    assert s.state() == JobState.FINALIZING and int(s.dep.job(s.job)["basis"]) == R.Basis.WEIGHT
    report = Auditor(s.dep, s.store).audit(s.job)
    assert not report.ok and "basis" in str(report.rewards_problem)
    watcher = Challenger(s.dep, s.c.watcher, s.store)
    assert watcher.check_rewards(s.job) is not None, "the watcher opens no game on a provably wrong root"
    defender = Defender(s.dep, s.agg.account, s.store)
    for _ in range(60):
        if not job_games(s.dep, s.job):
            break
        with contextlib.suppress(ContractRevert, Exception):
            defender.respond(s.job)
        s.chain.advance_time(s.spec.deadlines.response_period + 1)
        watcher.play(s.job)
    assert [e["challenger_won"] for e in s.dep.reward_arbiter.events("GameResolved", job_id=s.job)] == [True]
