"""Validators as attackers (and the aggregator attacking through the validator set): quorums that
move, absentees that escape, minorities that approve or reject, double votes, free slots,
equivocation. Each attack is performed with real signatures against the real contracts."""

from __future__ import annotations

import dataclasses

import pytest
from eth_utils import keccak
from sec_support import VAL_STAKE, revert

from fedmarket.driver import RoundPlan
from fedmarket.errors import ContractRevert, StorageUnreachable
from fedmarket.market import JobState
from fedmarket.protocol import rules as R
from fedmarket.protocol.encoding import address_key, canonical_json, untrusted_json
from fedmarket.protocol.receipts import Attestation, Rejection, RewardsApproval, ScoresReveal
from fedmarket.roles import Validator
from fedmarket.roles.common import committed_rounds, fail_job, read_document, round_accumulator, round_topic, terms_of
from fedmarket.roles.settlement import statement_of, submit_reward_approvals
from fedmarket.roles.sealed import seal_and_reveal
from fedmarket.roles.validator import submit_attestations
from fedmarket.testing.adversary import EquivocatingValidator, MuteAggregator, SelfPayingAggregator, SilentValidator


def _sign_att(s, v, round_, scores=b"\x07" * 32, model_root=None):
    root = model_root or committed_rounds(s.dep, s.job)[round_].model_root
    return Attestation(s.job, round_, root, scores).sign(v.account.key, s.dep.chain_id, s.dep.disputes.address)


def _attest(s, round_, vs, scores=b"\x07" * 32, sender=None, sigs=None):
    vs = sorted(vs, key=lambda v: address_key(v.address))
    rounds = committed_rounds(s.dep, s.job)
    proof = round_accumulator(s.dep, s.job, rounds).proof(round_)
    sigs = sigs or [_sign_att(s, v, round_, scores) for v in vs]
    return s.dep.disputes.transact("attest", s.job, round_, rounds[round_].data, proof, scores, [v.address for v in vs],
                                   sigs, sender=sender or s.c.stranger)


def _reject(s, round_, vs, sender=None):
    vs = sorted(vs, key=lambda v: address_key(v.address))
    rounds = committed_rounds(s.dep, s.job)
    proof = round_accumulator(s.dep, s.job, rounds).proof(round_)
    sigs = [Rejection(s.job, round_, rounds[round_].model_root).sign(v.account.key, s.dep.chain_id, s.dep.disputes.address)
            for v in vs]
    return s.dep.disputes.transact("reject", s.job, round_, rounds[round_].data, proof, [v.address for v in vs], sigs,
                                   sender=sender or s.c.stranger)


def test_validated_job_needs_its_validators(make):
    """The aggregator starts a validated job without its validators (every quorum of nothing would
    pass), or posts one that names none or lets them stake nothing, or a secure or gated job with
    no validator to judge. Refused at posting; a job whose validators did not all join cannot
    start, and is cancelled with everyone's money back."""
    s = make(providers=3, validators=2, min_validators=2)
    req, m = s.c.requester, s.dep.market
    s.approve(req, m.address)
    base = terms_of(s.spec, s.agg.address, s.chain.timestamp())
    cid = s.store.put(s.spec.canonical())
    for change, reason in (
        ({"min_validators": 0}, "validated job needs min validators"),
        ({"validator_stake": 0}, "validated job needs validator stake"),
        ({"max_validators": 0, "min_validators": 0, "rule": R.Rule.SECURE_SUM}, "secure sum needs validators"),
        ({"max_validators": 0, "min_validators": 0, "miss_payout_bps": 5_000}, "quality gate needs validators"),
    ):
        revert(m.transact, "post_job", dataclasses.replace(base, **change).abi(), cid, sender=req, match=reason)
    job = s.driver.job_id = s.cast.requester.post(s.spec, s.agg.address)
    s.agg.accept(job)
    for p in s.providers:
        p.join(job)
    s.validators[0].join(job)  # one of the two it needs
    revert(s.agg.start, job, match="too few validators")
    s.past(s.dep.job(job)["join_deadline"])
    revert(m.transact, "start", job, sender=s.c.stranger, match="too few validators")
    m.transact("cancel", job, sender=s.c.stranger)
    s.release_all()
    assert s.delta() == {a: 0 for a in s.before}


def test_fail_round_needs_every_absentee(make):
    """Two of four validators vote, two stay away, so the round cannot reach quorum. After its
    deadline an absentee fails the round naming only the other (to escape), or names them out of
    order, twice, names a voter, or an outsider: each list is refused. The complete list slashes
    both absentees (half to the caller); the voters and the aggregator keep their stakes."""
    s = make(providers=3, validators=4, validator_cls=[Validator, Validator, SilentValidator, SilentValidator])
    d = s.dep.disputes
    s.open()
    s.driver.round(0)
    assert not s.dep.job(s.job)["quorum"]
    absent = sorted(s.validators[2:], key=lambda v: address_key(v.address))
    voters = s.validators[:2]
    attacker = absent[1].account
    s.past_round_deadline()
    for names, reason in (
        ([absent[0]], "absent list incomplete"),
        ([absent[1]], "absent list incomplete"),
        ([], "absent list incomplete"),
        ([absent[1], absent[0]], "not ascending"),
        ([absent[0], absent[0]], "not ascending"),
        (sorted([absent[0], voters[0]], key=lambda v: address_key(v.address)), "validator voted"),
    ):
        revert(d.transact, "fail_round", s.job, [v.address for v in names], sender=attacker, match=reason)
    outsider = sorted([absent[0].address, s.c.stranger.address], key=address_key)
    revert(d.transact, "fail_round", s.job, outsider, sender=attacker, match="not a validator of the job")
    d.transact("fail_round", s.job, [v.address for v in absent], sender=s.c.watcher)
    s.release_all()
    assert s.state() == JobState.FAILED
    assert s.slashed() == {v.address: VAL_STAKE for v in absent}
    dl = s.delta()
    assert all(dl[v.address] == 0 for v in voters) and dl[s.agg.address] == 0
    assert dl[s.c.watcher.address] == VAL_STAKE  # half of each absentee's stake


def test_slashed_validator_cannot_shift_quorum(make):
    """Four validators of equal stake. One equivocates and is slashed before the round's votes are
    in. Two then attest and, at the end, two approve a reward root: a half of the start stake, which
    would be two thirds of a total that shrank with the slash. Neither reaches quorum: the total is
    the stake fixed at the start, and the slashed validator casts no more votes. A third honest vote
    completes each."""
    s = make(providers=3, validators=4, rounds=1)
    d = s.dep.disputes
    s.open()
    s.driver._train_and_commit(0, RoundPlan())
    cheat, v1, v2, v3 = s.validators
    sigs = [_sign_att(s, cheat, 0, bytes([k]) * 32) for k in (1, 2)]
    root = committed_rounds(s.dep, s.job)[0].model_root
    d.transact("prove_equivocation", s.job, 0, cheat.address, root, b"\x01" * 32, sigs[0], root, b"\x02" * 32, sigs[1],
               sender=s.c.watcher)
    revert(_attest, s, 0, [cheat], scores=b"\x01" * 32, sigs=[sigs[0]], match="not a validator of the job")
    for v in (v1, v2):
        v.review(s.job, 0)
    submit_attestations(s.dep, s.box, s.c.stranger, s.job, 0)  # v1 and v2: half of the start stake
    assert d.call("attested_stake", s.job, 0) == 2 * VAL_STAKE and not d.call("has_quorum", s.job, 0)
    assert not s.dep.job(s.job)["quorum"]
    v3.review(s.job, 0)
    submit_attestations(s.dep, s.box, s.c.stranger, s.job, 0)
    assert s.dep.job(s.job)["quorum"]
    assert not d.call("votes_closed", s.job)  # the slashed validator cannot vote: the votes close on time
    s.past(int(s.dep.market.call("votes_close", s.job)) - 1)
    for v in (v1, v2, v3):
        v.reveal(s.job, 0)
    # the reward root: two approvals are half the start stake
    for v in (v1, v2):
        v.approve_rewards(s.job)
    doc = s.agg.rewards_document(s.job, s.spec)
    assert doc["basis"] == R.Basis.SCORES
    revert(s.agg.post_rewards, s.job, match="rewards not approved")
    v3.approve_rewards(s.job)
    s.agg.post_rewards(s.job)
    s.settle_and_claim()
    dl = s.delta()
    assert dl[cheat.address] == -VAL_STAKE
    assert all(dl[v.address] == 0 for v in (v1, v2, v3)) and dl[s.agg.address] == 0
    assert all(dl[p.address] >= 0 for p in s.providers)


def test_minority_cannot_approve_root(make):
    """A validator holding 60% of the validator stake (just under two thirds) approves a root that
    pays the aggregator the pool. Refused: two thirds of the start stake must approve exactly that
    statement, and each validator approves once. The others cannot reach two thirds either, so the
    provable weight basis opens after half the window and pays the providers."""
    s = make(providers=3, validators=3, rounds=1, aggregator_cls=SelfPayingAggregator)
    whale = s.validators[0]
    job = s.driver.job_id = s.cast.requester.post(s.spec, s.agg.address)
    s.agg.accept(job)
    for p in s.providers:
        p.join(job)
    whale.join(job, 3 * VAL_STAKE)
    for v in s.validators[1:]:
        v.join(job)
    s.agg.start(job)
    s.driver.round(0)
    assert s.dep.job(job)["quorum"] and s.dep.disputes.call("votes_closed", job)  # every validator voted
    for v in s.validators:
        v.reveal(job, 0)
    bad = statement_of(s.agg.rewards_document(job, s.spec))
    root, total, value_total, gate = bad
    sig = RewardsApproval(job, root, total, value_total, gate).sign(whale.account.key, s.dep.chain_id,
                                                                     s.dep.disputes.address)
    s.dep.disputes.transact("approve_rewards", job, root, total, value_total, gate, [whale.address], [sig],
                            sender=s.c.stranger)
    revert(s.agg.post_rewards, job, match="rewards not approved")
    revert(s.dep.disputes.transact, "approve_rewards", job, root, total, value_total, gate, [whale.address], [sig],
           sender=s.c.stranger, match="already approved")
    s.agg.tamper = lambda doc: doc  # the others approve the right root: 40% of the stake
    for v in s.validators[1:]:
        v.approve_rewards(job)
    good = statement_of(s.agg.rewards_document(job, s.spec))
    submit_reward_approvals(s.dep, s.box, s.c.stranger, job, good)
    revert(s.agg.post_rewards, job, match="rewards not approved")
    s.chain.advance_time(s.spec.deadlines.round_duration // 2)
    s.agg.post_rewards(job, R.Basis.WEIGHT)
    s.settle_and_claim()
    dl = s.delta()
    assert dl[s.agg.address] == 0 and all(dl[p.address] > 0 for p in s.providers)


class _Rejector(Validator):
    """Rejects round 0 (which is right); honest otherwise."""

    def review(self, job_id, round_):
        if round_ == 0:
            return self._reject(job_id, round_, committed_rounds(self.dep, job_id)[round_])
        return super().review(job_id, round_)


def test_minority_rejection_cannot_fail_honest_aggregator(make):
    """A third of the validator stake (not more) rejects an honest round to fail the job on the
    aggregator. It cannot fail it at once; the other two thirds attest and the job goes on and
    settles. Where a third rejects and a third stays away, the round never reaches quorum: after the
    deadline the absent validator pays, not the aggregator, nor the rejector."""
    s = make(providers=3, validators=3, rounds=2, validator_cls=[_Rejector, Validator, Validator])
    d = s.dep.disputes
    s.open()
    s.driver.round(0)
    assert d.call("rejected_stake", s.job, 0) == VAL_STAKE  # exactly a third
    assert s.dep.job(s.job)["quorum"]
    revert(d.transact, "fail_round", s.job, [], sender=s.validators[0].account, match="round not in doubt")
    s.driver.round(1)
    s.driver.finish()
    assert s.state() == JobState.SETTLED
    dl = s.delta()
    assert dl[s.agg.address] == 0 and all(dl[v.address] == 0 for v in s.validators)

    s2 = make(providers=3, validators=3, rounds=2, validator_cls=[_Rejector, Validator, SilentValidator])
    s2.open()
    s2.driver.round(0)
    revert(s2.dep.disputes.transact, "fail_round", s2.job, [s2.validators[2].address], sender=s2.validators[0].account,
           match="deadline not passed")
    s2.driver.quorum_or_fail()  # waits out the deadline, then fails the round naming the absent
    s2.release_all()
    assert s2.state() == JobState.FAILED
    assert s2.slashed() == {s2.validators[2].address: VAL_STAKE}
    dl = s2.delta()
    assert dl[s2.agg.address] == 0 and dl[s2.validators[0].address] == 0 and dl[s2.validators[1].address] == 0


def test_validator_votes_once(make):
    """A validator attests a round and then also rejects it, attests it again with other scores, or
    signs a list naming itself twice, to count its stake twice; and approves a reward statement
    twice (alone, or listed twice). Each second vote is refused and nothing counts twice. (Approving
    another statement is a vote for that one: a statement a later slash made stale is replaced by a
    new one, approved anew.)"""
    s = make(providers=3, validators=3, rounds=1)
    d = s.dep.disputes
    s.open()
    s.driver._train_and_commit(0, RoundPlan())
    v = s.validators[0]
    _attest(s, 0, [v])
    revert(_reject, s, 0, [v], match="already voted")
    revert(_attest, s, 0, [v], scores=b"\x08" * 32, match="already voted")
    sig = _sign_att(s, s.validators[1], 0)
    revert(_attest, s, 0, [s.validators[1], s.validators[1]], sigs=[sig, sig], match="not ascending")
    assert d.call("attested_stake", s.job, 0) == VAL_STAKE and d.call("voters", s.job, 0) == 1
    _attest(s, 0, s.validators[1:])
    root = b"\x01" * 32
    a = RewardsApproval(s.job, root, 1, 1, True).sign(v.account.key, s.dep.chain_id, d.address)
    d.transact("approve_rewards", s.job, root, 1, 1, True, [v.address], [a], sender=s.c.stranger)
    revert(d.transact, "approve_rewards", s.job, root, 1, 1, True, [v.address], [a], sender=s.c.stranger,
           match="already approved")
    revert(d.transact, "approve_rewards", s.job, root, 1, 1, True, [v.address, v.address], [a, a],
           sender=s.c.stranger, match="not ascending")
    key = _statement_key(root, 1, 1, True)
    assert d.call("rewards_stake", s.job, key) == VAL_STAKE


def _statement_key(root: bytes, total: int, value_total: int, gate: bool) -> bytes:
    import eth_abi
    from eth_utils import keccak

    return keccak(eth_abi.encode(["bytes32", "uint256", "uint256", "bool"], [root, total, value_total, gate]))


def test_validator_slots_cost_stake(make):
    """A squatter tries to take a job's validator slots for free (stake 0, or below the job's
    validator stake), then takes them all at the minimum stake so nobody else can join, and never
    votes. The free joins are refused; the squatter blocks the job only at the price of every stake
    it locked: at the first deadline the absent squatters are slashed, the aggregator keeps its
    stake and everyone else gets theirs back."""
    s = make(providers=3, validators=2, validator_cls=SilentValidator)
    m = s.dep.market
    job = s.driver.job_id = s.cast.requester.post(s.spec, s.agg.address)
    s.agg.accept(job)
    squat = s.validators[0]
    s.approve(squat.account, m.address)
    for stake, reason in ((0, "stake below minimum"), (VAL_STAKE - 1, "stake below minimum")):
        revert(m.transact, "join_validator", job, stake, sender=squat.account, match=reason)
    for v in s.validators:
        v.join(job)
    honest = s.c.validators[2]
    s.approve(honest, m.address)
    revert(m.transact, "join_validator", job, VAL_STAKE, sender=honest, match="validator set full")
    for p in s.providers:
        p.join(job)
    s.agg.start(job)
    s.rounds()
    s.driver.finish()
    assert s.state() == JobState.FAILED
    assert s.slashed() == {v.address: VAL_STAKE for v in s.validators}
    dl = s.delta()
    assert dl[s.agg.address] == 0 and all(dl[p.address] == 0 for p in s.providers)
    assert dl[s.c.requester.address] == 0


def test_equivocation_slashed(make):
    """A validator signs two attestations of one round (two consensuses to choose from). The watcher
    proves it from the two messages: slashed in full, half to the watcher; the job goes on with the
    others and settles."""
    s = make(providers=3, validators=3, rounds=1, validator_cls=[EquivocatingValidator, Validator, Validator])
    s.run()
    assert s.state() == JobState.SETTLED
    cheat = s.validators[0]
    assert s.slashed().get(cheat.address) == VAL_STAKE
    assert [e["validator"] for e in s.dep.disputes.events("EquivocationProven")] == [cheat.address]
    (ev,) = [e for e in s.dep.market.events("StakeSlashed", job_id=s.job) if e["account"] == cheat.address]
    assert (ev["challenger"], ev["challenger_share"]) == (s.c.watcher.address, VAL_STAKE // 2)
    dl = s.delta()
    assert dl[cheat.address] == -VAL_STAKE
    assert all(dl[v.address] == 0 for v in s.validators[1:]) and dl[s.agg.address] == 0
    root = committed_rounds(s.dep, s.job)[0].model_root
    sigs = [_sign_att(s, cheat, 0, bytes([k]) * 32) for k in (1, 2)]
    revert(s.dep.disputes.transact, "prove_equivocation", s.job, 0, cheat.address, root, b"\x01" * 32, sigs[0], root,
           b"\x02" * 32, sigs[1], sender=s.c.stranger)  # once only, and never after the job


def test_refusing_a_wrong_round_costs_validators_nothing(make):
    s = make(providers=3, validators=3, rounds=2, aggregator_cls=MuteAggregator)
    s.open()
    s.driver.round(0)
    s.driver._train_and_commit(1, RoundPlan())  # a wrong aggregate
    s.driver._review(1)  # the honest validators see it and do not attest
    s.cast.challenger.check(s.job)  # the watcher disputes it at once
    assert len(s.games()) == 1
    s.past_round_deadline()
    try:
        fail_job(s.dep, s.agg.account, s.job)  # the cheat fails the round on the "absent" validators
    except ContractRevert:
        pass  # refused: the defence holds
    s.driver.play_games()
    s.driver.finish()
    for g in s.games():
        g.arbiter.transact("close_moot", g.gid, sender=s.c.watcher)
    s.release_all()
    d = s.delta()
    assert all(d[v.address] >= 0 for v in s.validators), {v.address: d[v.address] for v in s.validators}
    assert d[s.agg.address] < 0


class _Unanswering:
    """A shared content store (a broker) that is down while a role reads `cids` (every blob if None)."""

    def __init__(self, inner, cids: set[str] | None = None):
        self.inner = inner
        self.cids = cids

    def _down(self, cid: str) -> None:
        if self.cids is None or cid in self.cids:
            raise StorageUnreachable("cannot reach NATS server at nats://127.0.0.1:4222 (test: the broker is down)")

    def get(self, cid: str) -> bytes:
        self._down(cid)
        return self.inner.get(cid)

    def get_capped(self, cid: str, limit: int) -> bytes:
        self._down(cid)
        return self.inner.get_capped(cid, limit)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_a_store_outage_is_no_reason_to_reject_an_honest_round(make):
    """The store every role shares is down when a validator reviews an honest round. Calling its data
    unavailable would vote against the aggregator (more than a third rejecting slashes it) for the
    broker's fault: the review fails instead and is retried, posts no rejection, and attests once the
    store answers."""
    s = make(providers=3, validators=1, rounds=1)
    s.open()
    s.driver._train_and_commit(0, RoundPlan())
    v = s.validators[0]
    store = v.auditor.store
    v.auditor.store = _Unanswering(store)
    with pytest.raises(StorageUnreachable):
        v.review(s.job, 0)
    assert s.box.read(round_topic(s.job, 0) + "-rejections") == []
    v.auditor.store = store
    v.review(s.job, 0)
    submit_attestations(s.dep, s.box, s.c.stranger, s.job, 0)
    assert s.dep.job(s.job)["quorum"]


def test_a_store_outage_leaves_no_honest_update_out_of_a_round(make):
    """The same outage while the aggregator collects: it must not commit the round without the
    updates it could not fetch (their providers would lose the round's pay for the broker's fault).
    Collecting fails and is retried; once the store answers, every update is in."""
    s = make(providers=3, validators=1, rounds=1)
    s.open()
    updates = {p.train(s.job, 0)["update_cid"] for p in s.providers}
    seal_and_reveal(s.agg, s.providers, s.job, 0)
    store = s.agg.store
    s.agg.store = _Unanswering(store, updates)
    with pytest.raises(StorageUnreachable):
        s.agg.run_round(s.job, 0)
    assert committed_rounds(s.dep, s.job) == []
    s.agg.store = store
    s.agg.run_round(s.job, 0)
    assert committed_rounds(s.dep, s.job)[0].count == 3


class CopyingValidator(Validator):
    """Reviews nothing: attests the scores root another validator posted on the mailbox (before it
    is on chain), and once the round has quorum signs that validator's revealed scores as its own."""

    def review(self, job_id, round_):
        model_root = committed_rounds(self.dep, job_id)[round_].model_root
        for raw in self.mailbox.read(round_topic(job_id, round_) + "-attestations"):
            msg = untrusted_json(raw)
            if msg["validator"] == self.address or msg["model_root"] != "0x" + model_root.hex():
                continue
            sig = Attestation(job_id, round_, model_root, bytes.fromhex(msg["scores_root"][2:])).sign(
                self.account.key, self.dep.chain_id, self.dep.disputes.address)
            self.mailbox.post(round_topic(job_id, round_) + "-attestations", canonical_json(
                {**msg, "validator": self.address, "signature": "0x" + sig.hex()}))
            self._docs[(job_id, round_)] = {"copy_of": msg["validator"]}
            return msg
        return None

    def reveal(self, job_id, round_):
        copied = self._docs.get((job_id, round_), {}).get("copy_of")
        for raw in self.mailbox.read(round_topic(job_id, round_) + "-reveals"):
            msg = untrusted_json(raw)
            if msg["validator"] == copied:
                doc = {**read_document(self.store, msg["scores_cid"]), "validator": self.address}
                doc.pop("signature")
                sig = ScoresReveal(job_id, round_, keccak(canonical_json(doc))).sign(
                    self.account.key, self.dep.chain_id, self.dep.disputes.address)
                cid = self.store.put(canonical_json({**doc, "signature": "0x" + sig.hex()}))
                self.mailbox.post(round_topic(job_id, round_) + "-reveals",
                                  canonical_json({"validator": self.address, "scores_cid": cid}))
                return cid
        return None


def test_a_validator_copying_anothers_attestation_cannot_pass_its_scores_off_as_its_own(make):
    """The scores root a validator attests names it (`settlement.scores_tree`): a copy of another
    validator's root opens with no document of the copier's, so its copied reveal is not counted
    (the copied view does not count twice in the consensus) and, in the scores basis, it loses
    reputation for every round it attested without a reveal of its own."""
    s = make(providers=3, rounds=2, validators=3, validator_cls=[Validator, Validator, CopyingValidator])
    s.open()
    s.rounds()
    copier = s.validators[2]
    assert all(s.dep.disputes.call("attestation_of", s.job, r, copier.address) != b"\x00" * 32 for r in range(2))
    doc = s.honest_document()
    assert doc["basis"] == R.Basis.SCORES
    counted = {read_document(s.store, cid)["validator"] for cids in doc["reveals"].values() for cid in cids}
    assert copier.address not in counted and len(counted) == 2
    (leaf,) = [leaf for leaf in doc["leaves"] if leaf["account"] == copier.address]
    assert leaf["reputation_delta"] == -2


def test_a_validator_revealing_two_documents_of_a_round_has_neither_counted(make):
    """ATTACK (found by a review of the reveal timing): the root a validator attests binds only its
    scores; the accuracy and flags beside them are bound by its signature of the document. A
    minority validator could sign a second reveal of a round with another accuracy, grind its
    content id to come first in the mailbox's reading order, and so change the counted reveal (and
    the statement every honest validator must approve again) each time they approved, until the
    weight basis opened. Two different signed reveals of one round now count as none, whatever
    their order."""
    s = make(providers=3, rounds=1, validators=3)
    s.open()
    s.rounds()
    dep, job = s.dep, s.job
    assert dep.disputes.call("votes_closed", job)
    churner = s.validators[0]
    [raw] = [r for r in s.box.read(round_topic(job, 0) + "-reveals") if untrusted_json(r)["validator"] == churner.address]
    doc = {k: v for k, v in read_document(s.store, untrusted_json(raw)["scores_cid"]).items() if k != "signature"}
    before = s.honest_document()
    other = {**doc, "accuracy": int(doc["accuracy"]) // 2}  # the same scores (the same attested root)
    sig = ScoresReveal(job, 0, keccak(canonical_json(other))).sign(churner.account.key, dep.chain_id, dep.disputes.address)
    cid = s.store.put(canonical_json({**other, "signature": "0x" + sig.hex()}))
    s.box.post(round_topic(job, 0) + "-reveals", canonical_json({"validator": churner.address, "scores_cid": cid}))
    after = s.honest_document()
    counted = {read_document(s.store, c)["validator"] for cids in after["reveals"].values() for c in cids}
    assert churner.address not in counted and len(counted) == 2
    assert churner.address in {read_document(s.store, c)["validator"] for cids in before["reveals"].values() for c in cids}


def test_a_stranger_re_encoding_an_honest_reveal_cannot_cancel_it(make):
    """ATTACK (found by a review of the fix above): anyone on the mailbox and the store re-stores each
    honest signed reveal under other bytes (its signature written without the 0x, which the reader
    takes) and names the new content id: two content ids validly signed by one validator counted as
    two reveals, so every honest reveal counted as none, the job lost its scores basis, and a met
    quality gate paid its miss payout (or, after the approvals were on chain, no root could be
    posted at all). Two reveals are two only if their signed bodies differ."""
    s = make(providers=3, rounds=1, validators=3)
    s.open()
    s.rounds()
    before = s.honest_document()
    assert before["basis"] == R.Basis.SCORES
    for raw in list(s.box.read(round_topic(s.job, 0) + "-reveals")):
        doc = read_document(s.store, untrusted_json(raw)["scores_cid"])
        cid = s.store.put(canonical_json({**doc, "signature": doc["signature"][2:]}))
        s.box.post(round_topic(s.job, 0) + "-reveals", canonical_json({"validator": doc["validator"], "scores_cid": cid}))
    after = s.honest_document()
    counted = {read_document(s.store, c)["validator"] for cids in after["reveals"].values() for c in cids}
    assert after["basis"] == R.Basis.SCORES and len(counted) == 3
    assert statement_of(after) == statement_of(before)
