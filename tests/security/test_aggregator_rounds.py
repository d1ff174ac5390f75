"""The aggregator attacks its rounds: a wrong aggregate under every rule, a malformed or invalid
updates tree, censorship, withheld data, a fake mask correction, a private round that spends no
privacy, silence in a game. Each cheat is a real aggregator subclass among honest roles (and, where
it needs one, a colluding provider); each test passes when the cheat is proven, the aggregator
slashed and the honest parties keep what they staked."""

from __future__ import annotations

import dataclasses
import itertools
import json

import numpy as np
import pytest
from sec_support import AGG_STAKE, ZERO32, revert

from fedmarket.errors import ContractRevert
from fedmarket.market import JobState
from fedmarket.protocol import rules as R
from fedmarket.protocol.encoding import address_key, decode_vector, encode_vector, vector_root
from fedmarket.protocol.receipts import Misbehaviour, UpdateReceipt
from fedmarket.roles import Aggregator, Provider
from fedmarket.roles.aggregator import Update
from fedmarket.roles.auditor import Auditor
from fedmarket.protocol.proofs import EMPTY_CHUNK, chunk_opening
from fedmarket.roles.common import committed_rounds, epsilon_after_round, round_providers, round_topic
from fedmarket.roles.games import Defender, last_claims
from fedmarket.testing.adversary import (
    CorrectionFakingAggregator,
    DoubleUpdateProvider,
    DroppingAggregator,
    ForgingAggregator,
    MuteAggregator,
    ShiftyAggregator,
    UnorderedAggregator,
    WithholdingAggregator,
    WithholdingShiftyAggregator,
)


def _proven(s, kind: R.Game | None, reason: str | None = None) -> dict:
    """The job failed on a proven (or judged) round fault: the aggregator alone was slashed, every
    honest party holds what it held before the job."""
    assert s.state() == JobState.FAILED
    s.release_all()  # anyone returns every stake still locked in the failed job
    if kind is not None:
        opened = [e["kind"] for e in s.dep.round_arbiter.events("GameOpened", job_id=s.job)]
        won = [e for e in s.dep.round_arbiter.events("GameResolved", job_id=s.job) if e["challenger_won"]]
        assert kind in opened and won, (opened, won)
    if reason is not None:
        assert s.dep.market.events("JobFailed", job_id=s.job)[0]["reason"] == reason
    assert s.slashed() == {s.agg.address: AGG_STAKE}
    d = s.delta()
    assert d[s.agg.address] == -AGG_STAKE
    honest = [s.c.requester.address, *(p.address for p in s.providers), *(v.address for v in s.validators)]
    s.assert_no_honest_loss(honest, d)
    return d


RULES = {
    "weighted_mean": {},
    "median": {"strategy": "median"},
    "trimmed_mean": {"strategy": "trimmed_mean", "trim": 1},
    "secure_sum": {"privacy": "secagg", "validators": 3},
}


@pytest.mark.parametrize("rule", list(RULES))
def test_wrong_aggregate_slashed(make, rule):
    """The aggregator commits round 1's model three quantisation steps off in one value (a model of
    its choosing, under each rule the market proves). The watcher's aggregate game makes it stand by
    a claim over all the round's updates consistent with that model, then split it down to one
    update it cannot open: slashed, half to the watcher, job failed, escrow refunded."""
    s = make(providers=4, rounds=2, aggregator_cls=ShiftyAggregator, **RULES[rule])
    s.run()
    d = _proven(s, R.Game.AGGREGATE)
    assert d[s.c.watcher.address] == AGG_STAKE // 2


def _sign(account, s, round_, root, weight) -> bytes:
    return UpdateReceipt(s.job, round_, root, weight).sign(account.key, s.dep.chain_id, s.dep.disputes.address)


def _posted(s, round_: int, provider: str, which: int = 0) -> Update:
    """A provider's update as it posted it on the round's topic (its `which`-th message)."""
    msgs = [json.loads(raw) for raw in s.box.read(round_topic(s.job, round_))]
    msg = [m for m in msgs if m["provider"] == provider][which]
    q = decode_vector(s.store.get(msg["update_cid"]), s.spec.n_params)
    return Update(provider, msg["update_cid"], bytes.fromhex(msg["update_root"][2:]), int(msg["weight"]),
                  bytes.fromhex(msg["signature"][2:]), q)


def _resigned(s, u: Update, account, round_: int, weight: int) -> Update:
    """Update `u` with weight `weight`, its receipt signed again by `account` (a colluding provider)."""
    return dataclasses.replace(u, weight=weight, signature=_sign(account, s, round_, u.update_root, weight))


def _ordered(updates):
    return sorted(updates, key=lambda u: address_key(u.provider))


@pytest.mark.parametrize("malformation", ["order", "weight"])
def test_malformed_tree_is_its_loss(make, malformation):
    """An updates tree out of provider order, or holding a weight beyond MAX_WEIGHT (its colluding
    provider signed it) that would overflow the proof's arithmetic: the aggregator hoped a malformed
    commitment would shield it from proof. The watcher's leaf game makes it open the leaf and the
    one before it; it cannot show them in order and in bounds, and loses."""
    if malformation == "order":
        s = make(providers=3, rounds=2, aggregator_cls=UnorderedAggregator)
    else:
        s = make(providers=3, rounds=2, aggregator_cls=ForgingAggregator)
        accomplice = s.providers[0]

        def forge(job_id, round_, spec, updates):
            return [_resigned(s, u, accomplice.account, round_, R.MAX_WEIGHT + 1) if u.provider == accomplice.address
                    else u for u in updates]

        s.agg.forge = forge
    s.run()
    _proven(s, R.Game.LEAF)


INVALID = ["no_receipt", "non_member", "unselected", "slashed", "private_weight"]


@pytest.mark.parametrize("invalid", INVALID)
def test_invalid_leaf_slashed(make, invalid):
    """The aggregator puts in a leaf no valid round may hold, to steer the model or the pay: an
    update its provider never signed (the aggregator's own vector under a provider's name), one of
    an account that never joined, of a provider the round's seed did not select, of a provider
    slashed before the round, or a private job's update with weight 2. The leaf game makes it open
    the leaf with everything the rules require: it cannot, and is slashed."""
    kw = {"providers": 4, "rounds": 2, "aggregator_cls": ForgingAggregator}
    if invalid == "unselected":
        kw.update(providers=6, per_round=2)
    if invalid == "slashed":
        kw.update(validators=3)
    if invalid == "private_weight":
        kw.update(privacy="dp_local")
    s = make(**kw)
    stranger = s.c.stranger

    def forge(job_id, round_, spec, updates):
        if invalid == "unselected":  # the first round whose seed left a provider out (almost surely round 0)
            chosen = set(round_providers(s.dep, spec, job_id, round_))
            if forged or all(p.address in chosen for p in s.providers):
                return updates
            forged.append(round_)
        elif round_ != 1:
            return updates
        if invalid == "no_receipt":  # provider 1's name on the aggregator's own vector
            victim = next(u for u in updates if u.provider == s.providers[1].address)
            q = victim.q * 2
            cid, root = s.store.put(encode_vector(q)), vector_root(q, spec.quantization.chunk_size)
            fake = dataclasses.replace(victim, q=q, update_cid=cid, update_root=root)
            return [fake if u is victim else u for u in updates]
        if invalid == "non_member":  # the stranger's update (it never joined) in place of provider 0's
            u0 = updates[0]
            return _ordered([*updates[1:], dataclasses.replace(
                u0, provider=stranger.address, signature=_sign(stranger, s, round_, u0.update_root, u0.weight))])
        if invalid == "unselected":  # a joined provider the seed left out, colluding
            out = next(p for p in s.providers if p.address not in chosen)
            q = np.ones(spec.n_params, dtype=np.int64)  # any vector: the round may have no other update
            root = vector_root(q, spec.quantization.chunk_size)
            return _ordered([*updates, Update(out.address, s.store.put(encode_vector(q)), root, 1,
                                              _sign(out.account, s, round_, root, 1), q)])
        if invalid == "slashed":  # provider 0 was slashed at round 0; its round-1 update is put back in
            return _ordered([*updates, _posted(s, round_, s.providers[0].address)])
        accomplice = s.providers[0]  # private_weight
        return [_resigned(s, u, accomplice.account, round_, 2) if u.provider == accomplice.address else u
                for u in updates]

    s.agg.forge = forge
    forged: list[int] = []
    s.open()
    if invalid == "slashed":  # the validators' supermajority judged provider 0 at round 0
        vs = sorted(s.validators, key=lambda v: address_key(v.address))
        sigs = [Misbehaviour(s.job, s.providers[0].address).sign(v.account.key, s.dep.chain_id, s.dep.disputes.address)
                for v in vs]
        s.dep.disputes.transact("slash_provider", s.job, s.providers[0].address, [v.address for v in vs], sigs,
                                sender=s.c.stranger)
    s.rounds()
    s.driver.finish()  # a failed job: every stake still locked is released
    assert s.state() == JobState.FAILED
    opened = [e["kind"] for e in s.dep.round_arbiter.events("GameOpened", job_id=s.job)]
    assert opened == [R.Game.LEAF]
    assert s.slashed().get(s.agg.address) == AGG_STAKE
    d = s.delta()
    assert d[s.agg.address] == -AGG_STAKE
    s.assert_no_honest_loss([s.c.requester.address, *(p.address for p in s.providers[1:]),
                             *(v.address for v in s.validators)], d)


def test_censorship_slashed(make):
    """The aggregator countersigns every update of round 1, then leaves one out (a provider's pay,
    its influence). The watcher holds the provider's receipt and the aggregator's acknowledgement:
    the inclusion game makes the aggregator show that update in the round; it cannot. Slashed; the
    censored provider has its stake back."""
    s = make(providers=3, rounds=2, aggregator_cls=DroppingAggregator)
    s.run()
    assert committed_rounds(s.dep, s.job)[0].count == 3
    _proven(s, R.Game.INCLUSION, "censored update")


def test_withheld_data_is_its_loss(make):
    """The aggregator commits a round and keeps its data (the metrics document, its model) to itself,
    so nobody could prove a fault in it. Validators cannot fetch it and reject it: more than a third
    of the stake rejecting fails the job at the aggregator's cost, at once. In a job without
    validators, the leaf game forces the data it names into the open: an aggregator that will not
    open the leaf loses at its deadline."""
    s = make(providers=3, validators=3, rounds=2, aggregator_cls=WithholdingAggregator)
    s.run()
    assert s.dep.disputes.call("rejected_stake", s.job, 0) == s.dep.job(s.job)["validator_total_stake"]
    _proven(s, None, "round rejected")

    class Hiding(WithholdingAggregator):
        def defend(self, job_id):
            return []  # opens nothing

    s2 = make(providers=3, rounds=2, aggregator_cls=Hiding)
    s2.open()
    s2.driver._train_and_commit(0, __import__("fedmarket.driver", fromlist=["RoundPlan"]).RoundPlan())
    c = committed_rounds(s2.dep, s2.job)[0]
    s2.approve(s2.c.watcher, s2.dep.round_arbiter.address)
    acc = __import__("fedmarket.roles.common", fromlist=["round_accumulator"]).round_accumulator(s2.dep, s2.job)
    from sec_support import EMPTY_ROUND

    s2.dep.round_arbiter.transact("challenge_leaf", s2.job, 0, 0, c.data, acc.proof(0), EMPTY_ROUND, [],
                                  sender=s2.c.watcher)
    s2.driver.play_games()
    _proven(s2, R.Game.LEAF)


def test_withheld_wrong_round_is_proven_without_validators(make):
    """A job without validators: the aggregator commits a wrong round and keeps its data (metrics
    document, model) to itself, so nobody can name the chunk it got wrong. The watcher re-derives
    the round from what the providers posted (signed receipts, blobs in the store: they form the
    committed updates root) and walks the committed model tree (`challenge_model`): the aggregator
    must open every node the watcher disputes, down to the chunk it shifted, where no claim over
    the updates gives its model. Slashed, half to the watcher, the job failed, the honest whole."""
    s = make(providers=3, rounds=1, aggregator_cls=WithholdingShiftyAggregator)
    s.agg.shift_round = 0  # its only round: nobody needs its model to go on
    s.run()
    d = _proven(s, R.Game.MODEL, "round fault proven")
    assert d[s.c.watcher.address] == AGG_STAKE // 2
    ra = s.dep.round_arbiter
    (walk,) = [e["game_id"] for e in ra.events("GameOpened", job_id=s.job)]
    n_chunks = -(-s.spec.n_params // s.spec.quantization.chunk_size)
    assert len(ra.events("NodeOpened", game_id=walk)) == (n_chunks - 1).bit_length()  # one node per level
    g = ra.call("games", walk)  # down at the shifted chunk, where the aggregator could not even make its claim
    assert (g["kind"], g["lo"], g["hi"]) == (R.Game.MODEL, 200 // s.spec.quantization.chunk_size, g["lo"] + 1)


def test_withheld_wrong_round_is_proven_past_a_decoy_receipt(make):
    """A provider (the aggregator's accomplice) posts a signed receipt of an update it never
    published just before its real one, so that the first receipt of each provider no longer forms
    the committed root. The aggregator's acknowledgements name the receipts it took: the watcher
    re-derives the round from those, and the walk proves it wrong."""
    from fedmarket.protocol.encoding import canonical_json
    from fedmarket.protocol.receipts import UpdateReceipt
    from fedmarket.storage.cid import cid_of

    class Decoy(Provider):
        def reveal(self, job_id, round_):
            real = cid_of(canonical_json(self._sealed[(job_id, round_)]))
            root = bytes(range(32))
            sig = UpdateReceipt(job_id, round_, root, 1).sign(self.account.key, self.dep.chain_id,
                                                                self.dep.disputes.address)
            for nonce in itertools.count():  # one that the mailbox lists before the real receipt
                decoy = canonical_json({"provider": self.address, "job_id": job_id, "round": round_, "nonce": nonce,
                                        "update_cid": "bafkreinowhere", "update_root": "0x" + root.hex(),
                                        "weight": 1, "signature": "0x" + sig.hex()})
                if cid_of(decoy) < real:
                    break
            self.mailbox.post(round_topic(job_id, round_), decoy)
            return super().reveal(job_id, round_)

    s = make(providers=3, rounds=1, aggregator_cls=WithholdingShiftyAggregator, provider_cls=[Decoy, Provider, Provider])
    s.agg.shift_round = 0
    s.run()
    _proven(s, R.Game.MODEL, "round fault proven")


def test_withheld_wrong_later_round_is_proven_without_validators(make):
    """The wrong round is round 1, on round 0's withheld (but right) model: the watcher re-derives
    both, and round 0's re-derived model is round 1's starting point."""
    s = make(providers=3, rounds=3, aggregator_cls=WithholdingShiftyAggregator)
    s.run()
    _proven(s, R.Game.MODEL, "round fault proven")
    assert s.dep.market.events("JobFailed", job_id=s.job)[0]["round"] == 1


def test_withheld_censored_round_is_proven_without_validators(make):
    """The aggregator leaves out an update it acknowledged and withholds the round's data: the
    watcher re-derives the round (the acknowledged updates but that one form its updates root) and
    proves the censorship with the provider's receipt and the aggregator's acknowledgement."""

    class WithholdingDroppingAggregator(WithholdingAggregator, DroppingAggregator):
        pass

    s = make(providers=3, rounds=2, aggregator_cls=WithholdingDroppingAggregator)
    s.run()
    _proven(s, R.Game.INCLUSION, "censored update")


def test_withheld_right_rounds_are_not_disputed_nor_stall_the_job(make):
    """The same aggregator, honest but for keeping every round's data to itself: providers train
    each round from the model they re-derive, the watcher's re-derived updates give each committed
    model root, so it opens no game, and the job settles with every round full (the audit from
    the mailbox finds every round right; without it, the data is unavailable)."""

    s = make(providers=3, rounds=3, aggregator_cls=WithholdingAggregator)
    s.run()
    assert not s.dep.round_arbiter.events("GameOpened", job_id=s.job)
    assert s.state() == JobState.SETTLED
    assert [c.count for c in committed_rounds(s.dep, s.job)] == [3, 3, 3]
    assert not Auditor(s.dep, s.store).audit(s.job).ok  # without the mailbox: unavailable
    report = Auditor(s.dep, s.store, s.box).audit(s.job)
    assert report.ok, (report.rewards_problem, report.rounds)


def test_unrederivable_withheld_round_costs_the_watcher_nothing(make):
    """The aggregator withholds its round and a colluding provider's update lives only in the
    aggregator's private store, so no watcher can re-derive the round (a known limit: such an
    update is out of reach, as a poisoned one is). The attack on the watcher: lure it into games it
    cannot win, or make its checks fail every step. It opens no game it could not play (its bond
    stays its own), `check_rewards` answers instead of raising, and the job settles."""
    s = make(providers=3, rounds=1, aggregator_cls=WithholdingAggregator)
    s.providers[0].store = s.agg.store  # the colluder's blobs: the aggregator's private store only
    watcher = s.c.watcher.address
    before = s.dep.token.call("balanceOf", watcher)
    s.run()
    assert not s.dep.round_arbiter.events("GameOpened", job_id=s.job)
    assert not s.dep.reward_arbiter.events("GameOpened", job_id=s.job)
    assert s.state() == JobState.SETTLED
    assert s.dep.token.call("balanceOf", watcher) == before
    report = Auditor(s.dep, s.store, s.box).audit(s.job)
    assert not report.ok and "unavailable" in report.rounds[0].problem  # the audit says what it could not check


def test_fake_correction_rejected(make):
    """A secure job: the aggregator commits a mask correction its transcript does not re-derive, and
    the model that correction gives, so every aggregate game is consistent with what it committed
    (any model it likes). Validators re-derive the correction and reject: more than a third of the
    stake rejecting fails the job at the aggregator's cost."""
    s = make(providers=4, validators=3, rounds=2, privacy="secagg", aggregator_cls=CorrectionFakingAggregator)
    s.run()
    assert not s.dep.round_arbiter.events("GameOpened", job_id=s.job)  # no game can prove it
    _proven(s, None, "round rejected")


class _Rewriting:
    """A contract handle that rewrites the arguments of one function before sending it."""

    def __init__(self, contract, fn, rewrite):
        self._contract, self._fn, self._rewrite = contract, fn, rewrite

    def transact(self, fn, *args, sender):
        if fn == self._fn:
            args = self._rewrite(args)
        return self._contract.transact(fn, *args, sender=sender)

    def __getattr__(self, name):
        return getattr(self._contract, name)


class EpsilonShavingAggregator(Aggregator):
    """Commits half of the privacy loss its rounds really spent (at least 1 millionth)."""

    def __init__(self, *args):
        super().__init__(*args)
        shave = lambda a: (*a[:6], max(1, a[6] // 2), a[7])
        self.dep = dataclasses.replace(self.dep, market=_Rewriting(self.dep.market, "submit_round", shave))


def test_private_round_must_spend_epsilon(make):
    """A private job: the aggregator commits a round with epsilon 0 (no privacy spent) or above the
    job's budget; a plain job's round claiming privacy; an in-bounds but understated epsilon. The
    chain derives each round's epsilon from the terms (noise multiplier, delta, round) and
    `submit_round` refuses anything else: nothing is committed."""
    s = make(providers=3, rounds=2, privacy="dp_local")
    s.open()
    budget = s.spec.privacy.budget_micro
    for eps in (0, budget + 1):
        revert(s.dep.market.transact, "submit_round", s.job, 0, b"\x01" * 32, ZERO32, 0, ZERO32, eps, ZERO32,
               sender=s.agg.account, match="bad epsilon")
    s.rounds()
    s.driver.finish()
    assert s.state() == JobState.SETTLED
    assert [c.epsilon_spent for c in committed_rounds(s.dep, s.job)] == [epsilon_after_round(s.spec, r) for r in range(2)]
    plain = make(providers=3, rounds=1)
    plain.open()
    revert(plain.dep.market.transact, "submit_round", plain.job, 0, b"\x01" * 32, ZERO32, 0, ZERO32, 1, ZERO32,
           sender=plain.agg.account, match="epsilon without privacy")

    shaved = make(providers=3, validators=3, rounds=2, privacy="dp_local", aggregator_cls=EpsilonShavingAggregator)
    with pytest.raises(ContractRevert, match="bad epsilon"):
        shaved.run()
    assert committed_rounds(shaved.dep, shaved.job) == []


def test_silent_defender_loses(make):
    """The aggregator commits a wrong aggregate and never answers the game that disputes it, hoping
    to stall. Nobody can end the game before its deadline; after it, anyone can, and the silent
    defender loses: slashed, job failed."""
    s = make(providers=3, rounds=2, aggregator_cls=MuteAggregator)
    s.open()
    for r in range(2):
        s.driver._train_and_commit(r, __import__("fedmarket.driver", fromlist=["RoundPlan"]).RoundPlan())
    s.cast.challenger.check(s.job)
    (g,) = s.games()
    assert g.turn == R.Turn.DEFENDER
    s.chain.advance_time(g.deadline - s.chain.timestamp() - 1)
    revert(g.arbiter.transact, "timeout", g.gid, sender=s.c.stranger, match="deadline not passed")
    s.chain.advance_time(1)
    r = g.arbiter.transact("timeout", g.gid, sender=s.c.stranger)
    assert r.event("GameResolved")["reason"] == "defender silent"
    s.release_all()
    _proven(s, R.Game.AGGREGATE)


def test_second_update_refused(make):
    """A provider sends two different updates in one round, to choose which counts. The honest
    aggregator keeps the first and refuses the second (listed with its reason); the provider earns
    what one update earns. An aggregator that takes both puts one provider twice in its tree, out
    of order: the leaf game proves it."""
    s = make(providers=3, rounds=2, provider_cls=[DoubleUpdateProvider, Provider, Provider])
    s.run()
    assert s.state() == JobState.SETTLED
    double = s.providers[0].address
    for c in committed_rounds(s.dep, s.job):
        doc = json.loads(s.store.get(__import__("fedmarket.roles.common", fromlist=["metrics_cid"]).metrics_cid(c.metrics_hash)))
        assert [u["provider"] for u in doc["updates"]].count(double) == 1
        # the other is refused: a second update, or (sealed rounds) one whose commitment the seal did not take
        assert any(r.get("provider") == double and r["reason"] == "second update in one round"
                   or f"update of {double} does not open" in r["reason"] for r in doc["rejected"])
    leaves = {leaf["account"]: leaf for leaf in __import__("fedmarket.roles.common", fromlist=["posted_rewards"])
              .posted_rewards(s.dep, s.store, s.job)["leaves"]}
    assert int(leaves[double]["value"]) == 2 * s.providers[0].n_samples  # one update per round, as anyone

    s2 = make(providers=3, rounds=2, provider_cls=[DoubleUpdateProvider, Provider, Provider],
              aggregator_cls=ForgingAggregator)
    double = s2.providers[0].address

    def both(job_id, round_, spec, updates):  # both of its updates, in place of provider 1's (count is bounded)
        if round_ != 1:
            return updates
        kept = {u.update_root for u in updates}
        second = next(u for u in (_posted(s2, round_, double, i) for i in (0, 1)) if u.update_root not in kept)
        return _ordered([u for u in updates if u.provider != s2.providers[1].address] + [second])

    s2.agg.forge = both
    s2.run()
    _proven(s2, R.Game.LEAF)


class LowercaseLister(Aggregator):
    """Aggregates honestly but lists its providers in lower case in the metrics document: the chain
    encodes the same addresses, so every root and opening holds; a watcher comparing strings would
    find "no receipt signed by" each listed provider and open a leaf game it loses, every time it
    looks."""

    def collect(self, job_id, round_, spec):
        updates, rejected = super().collect(job_id, round_, spec)
        return [dataclasses.replace(u, provider=u.provider.lower()) for u in updates], rejected


def test_providers_listed_in_another_case_are_the_same_providers(make):
    """Readers take a listed provider's address in checksum form (`common.fetch_metrics`): the
    watcher finds every round right and opens no game; the job settles."""
    s = make(providers=3, rounds=2, aggregator_cls=LowercaseLister)
    s.run()
    assert not s.dep.round_arbiter.events("GameOpened", job_id=s.job)
    assert s.state() == JobState.SETTLED and s.slashed() == {}
    assert s.delta()[s.c.watcher.address] == 0
    assert Auditor(s.dep, s.store).audit(s.job).ok


class RingSplitting(Aggregator):
    """Commits a secure round's model one unit off and, in the aggregate game, splits with a left
    claim one ring's length above the truth on one lane: the same modulo 2**64, another integer, so a
    challenger comparing integers would dispute that (right) half and abandon the wrong one."""

    refused: list[str] = []

    def aggregate(self, spec, q_global, updates, correction):
        q = super().aggregate(spec, q_global, updates, correction).copy()
        q[0] += 1
        return q

    def defend(self, job_id):
        return [r for r in _RingSplitter(self.dep, self.account, self.store).respond(job_id) if r is not None]


class _RingSplitter(Defender):
    def _aggregate(self, truth, g, send):
        ev = truth.evidence(g.round)
        size = truth.spec.quantization.chunk_size
        if g.claim == ZERO32:  # a root claim that gives the committed (wrong) chunk
            true, _, _ = truth.aggregate_claim(g.round, g.target, 0, ev.committed.count)
            width, total = len(true) - 1, true[-1]
            expected = truth.auditor.expected_model(truth.spec, ev)
            chunk = np.asarray(ev.model).ravel()[g.target * size:(g.target + 1) * size]
            wrong = [(true[c] + (int(chunk[c]) - int(expected[g.target * size + c])) * total) % R.RING
                     for c in range(width)] + [total]
            assert ev.prev is None  # round 0: no previous round to open
            return send("defend_aggregate", ev.committed.data, (ZERO32, ZERO32, 0, ZERO32, 0, ZERO32, ZERO32),
                        EMPTY_CHUNK, chunk_opening(ev.model, g.target, size),
                        chunk_opening(ev.correction, g.target, size), wrong, [], [])
        left = truth.aggregate_claim(g.round, g.target, g.lo, (g.lo + g.hi) // 2)[0]
        left[0] += R.RING
        try:
            return send("split", last_claims(g)[0], left)
        except ContractRevert as exc:
            RingSplitting.refused.append(str(exc))
            return None


def test_a_split_claim_outside_the_ring_is_refused(make):
    """`split` takes a secure sum's left claim only in [0, 2**64) (`rules._right`): the cheat cannot
    make the move, lets its deadline pass, and the watcher's game proves the round wrong."""
    s = make(providers=4, rounds=1, validators=3, strategy="norm_bounding", aggregator_cls=RingSplitting)
    s.run()
    assert any("arbiter: claim outside the ring" in r for r in RingSplitting.refused)
    _proven(s, R.Game.AGGREGATE)
    assert s.delta()[s.c.watcher.address] > 0
