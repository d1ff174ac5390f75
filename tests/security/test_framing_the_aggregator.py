"""Providers (and outsiders who can post on a round's topic) attack an honest aggregator: input
its code would take but the chain or its validators judge differently, so that the aggregator
is slashed for a round it ran honestly, or can never commit one. Each test passes when the
honest aggregator refuses the input (or keeps what it verified), commits, and keeps its stake."""

from __future__ import annotations

import json

import numpy as np
from sec_support import AGG_STAKE

from fedmarket.errors import ConfigError
from fedmarket.market import JobState
from fedmarket.protocol import rules as R
from fedmarket.protocol.encoding import canonical_json, encode_vector, vector_root
from fedmarket.protocol.receipts import UpdateReceipt
from fedmarket.roles import Aggregator, Provider
from fedmarket.roles import sealed as sl
from fedmarket.roles.common import committed_rounds, fetch_metrics, round_topic


def _settled_unslashed(s) -> None:
    assert s.state() == JobState.SETTLED, s.state()
    assert s.slashed() == {}
    assert s.delta()[s.agg.address] >= 0


def _rejected(s, round_: int) -> list[str]:
    return [r["reason"] for r in fetch_metrics(s.store, committed_rounds(s.dep, s.job)[round_])["rejected"]]


class Huge(Provider):
    """Posts an update with one value at the top of int64, at the largest weight: the sum of two
    such rounds wraps in numpy's int64 but not in the chain's int256."""

    def _released(self, spec, delta, cfg=None):
        q = np.zeros(spec.n_params, dtype=np.int64)
        q[0] = 2**63 - 1
        return q, 1 if spec.privacy.secure else R.MAX_WEIGHT


def test_an_update_outside_the_fixed_point_range_cannot_wrap_the_model(make):
    """Were the update taken, the model after round 1 would wrap at value 0, the honest claim
    would not give the committed model on chain, and an accomplice's aggregate game on chunk 0
    would slash the aggregator. It takes no update outside ±2**47 (what quantization allows), so
    the accomplice's game is the accomplice's loss."""
    s = make(providers=3, rounds=3, provider_cls=[Huge, Provider, Provider], challenger=False)
    s.open()
    s.rounds(2)
    assert all(c.count == 2 for c in committed_rounds(s.dep, s.job))
    assert any("outside ±2**47" in r for r in _rejected(s, 1))
    truth = s.truth()
    assert all(abs(int(truth.evidence(r).model[0])) < 2**20 for r in (0, 1))
    accomplice = s.c.stranger
    s.approve(accomplice, s.dep.round_arbiter.address)
    before = s.holdings()
    data, proof, prev, prev_proof = truth.round_args(1)
    s.dep.round_arbiter.transact("challenge_aggregate", s.job, 1, 0, data, proof, prev, prev_proof, sender=accomplice)
    for _ in range(50):  # the aggregator answers; the accomplice, having nothing to show, goes silent
        games = s.games()
        if not games:
            break
        if not s.agg.defend(s.job):
            s.past(games[0].deadline)
            s.dep.round_arbiter.transact("timeout", games[0].gid, sender=s.agg.account)
    (won,) = [e["challenger_won"] for e in s.dep.round_arbiter.events("GameResolved", job_id=s.job)]
    assert not won and s.state() == JobState.TRAINING
    bond = int(s.dep.job(s.job)["dispute_bond"])
    assert s.delta(before)[accomplice.address] == -bond and s.delta(before)[s.agg.address] == bond


class SitsOut(Provider):
    """An honest provider that sits a round out when the model it would start from cannot train
    (its update would leave the fixed-point range)."""

    def train(self, job_id, round_):
        try:
            return super().train(job_id, round_)
        except ConfigError:
            return None


class _NoRange:
    """The rules module without its range check: what a careless aggregator's code sees."""

    def __getattr__(self, name):
        return getattr(R, name)

    @staticmethod
    def values_problem(q, what):
        return ""


def test_the_exact_model_out_of_int64_is_provable(make, monkeypatch):
    """The other side: an aggregator that takes such updates and commits numpy's wrapped model is
    proven wrong by the watcher (the auditor adds as the chain does), not taken for right. Round 0
    holds the huge update but no wrap (only validators could judge it: there are none), so the
    watcher goes on to round 1, where the exact model leaves int64."""
    monkeypatch.setattr("fedmarket.roles.aggregator.R", _NoRange())

    class Wrapping(Aggregator):
        def aggregate(self, spec, q_global, updates, correction):
            if not updates:
                return q_global
            return q_global + R.aggregate(spec.rule, [u.q for u in updates], [u.weight for u in updates], spec.trim,
                                          correction)  # numpy wraps

    s = make(providers=3, rounds=3, provider_cls=[Huge, SitsOut, SitsOut], aggregator_cls=Wrapping)
    s.run()
    assert s.state() == JobState.FAILED
    assert s.slashed() == {s.agg.address: AGG_STAKE}
    opened = s.dep.round_arbiter.events("GameOpened", job_id=s.job)
    assert [(e["kind"], e["round"]) for e in opened] == [(R.Game.AGGREGATE, 1)]


def test_a_secure_round_whose_mean_leaves_the_range_is_aborted(make):
    """In a secure round nobody sees a masked update's values, so the aggregator checks the
    unmasked mean instead: out of range, the round is aborted before anything is acknowledged
    (it keeps the model; nobody is slashed). Which provider did it stays hidden (a known limit)."""
    s = make(providers=3, rounds=2, validators=3, privacy="secagg", provider_cls=[Huge, Provider, Provider])
    s.run()
    _settled_unslashed(s)
    assert [c.count for c in committed_rounds(s.dep, s.job)] == [0, 0]
    assert any("the unmasked mean has values outside" in r for r in _rejected(s, 0))
    assert not s.box.read(round_topic(s.job, 0) + "-acks")


class BadSalt(Provider):
    """Reveals its sealed update with a salt the commitment cannot be opened with as sent: empty
    (its commitment hashed 32 zero bytes, which a padding encoder would match) or 33 bytes."""

    salt = "0x"

    def _post_update(self, spec, job_id, round_, q, weight):
        cid = self.store.put(encode_vector(q))
        root = vector_root(q, spec.quantization.chunk_size)
        sig = UpdateReceipt(job_id, round_, root, weight).sign(self.account.key, self.dep.chain_id,
                                                              self.dep.disputes.address)
        message = {"provider": self.address, "job_id": job_id, "round": round_, "update_cid": cid,
                   "update_root": "0x" + root.hex(), "weight": weight, "signature": "0x" + sig.hex(), "salt": self.salt}
        value = sl.commitment(self.address, root, weight, b"\x00" * 32)
        self.mailbox.post(sl.commit_topic(job_id, round_), sl.commitment_message(self.dep, self.account, job_id, round_, value))
        self._sealed[(job_id, round_)] = message
        return message

    def reveal(self, job_id, round_):
        message = self._sealed.get((job_id, round_))
        found = sl.seals(self.dep, self.mailbox.read(sl.seal_topic(job_id, round_)), job_id, round_, s_agg(self, job_id))
        if message is None or not found:
            return None
        del self._sealed[(job_id, round_)]
        self.mailbox.post(round_topic(job_id, round_), canonical_json(message))  # no check of its own salt
        return message


def s_agg(provider, job_id: int) -> str:
    return provider.dep.job(job_id)["aggregator"]


class LongSalt(BadSalt):
    salt = "0x" + "00" * 33


def test_a_salt_that_is_not_32_bytes_is_refused_not_taken(make):
    """Taken, an empty salt would be left out of the metrics document and every validator would
    reject the round ("carries no salt"); a 33-byte one made the commitment check raise out of
    `collect` on every try. Either is refused as a bad update; the round goes on without it, the
    validators attest it."""
    for cls in (BadSalt, LongSalt):
        s = make(providers=3, rounds=2, validators=3, provider_cls=[cls, Provider, Provider])
        s.run()
        _settled_unslashed(s)
        assert [c.count for c in committed_rounds(s.dep, s.job)] == [2, 2]
        assert any("32-byte salt" in r for r in _rejected(s, 0)), _rejected(s, 0)


def test_junk_on_the_round_topic_cannot_stop_collect(make):
    """Anyone can post on a round's topic. A message whose weight is JSON's Infinity (or a float,
    or true) made `int()` raise out of `collect` on every try, so the round never committed and the
    aggregator was slashed at its deadline. Each is one rejected message."""
    s = make(providers=3, rounds=2)
    junk = [b'{"job_id": %d, "round": 0, "weight": Infinity}', b'{"job_id": %d, "round": 0, "weight": 1.0}',
            b'{"job_id": %d, "round": 0, "weight": true}', b'[%d]', b'{"job_id": %d, "round": 0, "weight": 1, '
            b'"update_root": 7}']
    s.open()
    for raw in junk:
        s.box.post(round_topic(s.job, 0), raw % s.job)
    s.rounds()
    s.driver.finish()
    _settled_unslashed(s)
    assert [c.count for c in committed_rounds(s.dep, s.job)] == [3, 3]
    assert len(_rejected(s, 0)) >= len(junk)


def test_a_survivor_withdrawing_its_masked_blob_cannot_stall_nor_void_the_round(make):
    """A survivor of a secure round deletes its masked update from the store once the survivor set
    is signed: the second collect no longer finds it. The aggregator unmasks what it verified
    when it signed the set, and publishes every update of the round itself, so the validators
    can fetch them all and attest."""

    class Watched(Aggregator):
        victim = None

        def secure_survivors(self, job_id, round_):
            out = super().secure_survivors(job_id, round_)
            for raw in self.mailbox.read(round_topic(job_id, round_)):
                msg = json.loads(raw)
                if msg["provider"] == self.victim:
                    (self.store.root / msg["update_cid"]).unlink()  # the survivor withdraws its blob
            return out

    s = make(providers=3, rounds=2, validators=3, privacy="secagg", aggregator_cls=Watched)
    s.agg.victim = s.providers[0].address
    s.run()
    _settled_unslashed(s)
    assert [c.count for c in committed_rounds(s.dep, s.job)] == [3, 3]
    doc = fetch_metrics(s.store, committed_rounds(s.dep, s.job)[0])
    assert all(s.store.has(u["update_cid"]) for u in doc["updates"])



class Bloated(Provider):
    """Posts a receipt for its real update but names a blob a hundred times the size of any update
    of the job: an aggregator that downloads it whole can be made to hold gigabytes, every round, and
    run out of memory or time before its deadline."""

    def _post_update(self, spec, job_id, round_, q, weight):
        message = super()._post_update(spec, job_id, round_, q, weight)
        big = np.zeros(100 * spec.n_params, dtype=np.int64)
        big[: len(q)] = q
        message["update_cid"] = self.store.put(encode_vector(big))
        self.mailbox.post(round_topic(job_id, round_), canonical_json(message))
        return message


def test_an_update_blob_past_the_jobs_vector_size_is_refused_unread(make, largest_read):
    """The aggregator asks the store for at most the bytes a vector of the job's size can take
    (`read_vector`): the bloated blob is refused before it is read, the round goes on with the
    honest updates, and the aggregator keeps its stake."""
    from fedmarket.protocol.encoding import vector_blob_limit

    s = make(providers=3, rounds=2, provider_cls=[Bloated, Provider, Provider])
    s.run()
    _settled_unslashed(s)
    assert all(c.count == 2 for c in committed_rounds(s.dep, s.job))
    assert any("limit of its reader" in r for r in _rejected(s, 0))
    assert largest_read[0] <= vector_blob_limit(s.spec.n_params)


def test_an_update_acknowledged_before_its_provider_is_slashed_stays_in_the_round(make, tmp_path):
    """A free-rider already reported by the validators waits until the aggregator's process has
    acknowledged its update (one junk message naming a slower provider makes the process collect
    early), then submits its own slashing, hoping the next collect leaves the now-slashed provider
    out and its acknowledgement wins an inclusion game against the honest aggregator. The
    aggregator keeps every update it acknowledged (a provider slashed during the round still counts
    in it, as `RoundArbiter._check_update` holds): no game, no slash but the free-rider's."""
    from fedmarket.processes.aggregator import AggregatorProcess
    from fedmarket.roles.challenger import Challenger
    from fedmarket.roles.validator import submit_misbehaviour
    from fedmarket.testing.adversary import AdversarialProvider, Coalition
    from sec_support import PROV_STAKE

    def free_rider(*args, **kw):
        return AdversarialProvider(*args, coalition=Coalition("free_rider"), **kw)

    s = make(providers=3, rounds=3, validators=3, provider_cls=[free_rider, Provider, Provider])
    a, b, c = s.providers
    s.open()
    s.driver.round(0)
    assert s.driver.quorum_or_fail() and s.state() == JobState.TRAINING
    for v in s.validators:
        v.report_misbehaviour(s.job)
    for p in s.providers:  # round 1 is sealed: all commit, the aggregator seals, a and b reveal
        p.train(s.job, 1)
    s.agg.seal(s.job, 1, s.spec)
    a.reveal(s.job, 1)
    b.reveal(s.job, 1)
    s.box.post(round_topic(s.job, 1), canonical_json({"provider": c.address}))  # junk naming c
    proc = AggregatorProcess(s.dep, s.agg.account, s.store, s.box, s.job, tmp_path / "agg", collect_timeout=3600,
                             log=lambda m: None)
    proc._round(s.dep.job(s.job), 1)  # a and b acknowledged; c not in yet: wait
    assert submit_misbehaviour(s.dep, s.box, a.account, s.job)  # a has itself slashed
    c.reveal(s.job, 1)
    proc._round(s.dep.job(s.job), 1)
    assert committed_rounds(s.dep, s.job)[1].count == 3  # a's acknowledged update kept
    assert not Challenger(s.dep, a.account, s.store, s.box).check_censorship(s.job, s.box)
    assert not s.dep.round_arbiter.events("GameOpened", job_id=s.job)
    assert s.slashed() == {a.address: PROV_STAKE}


def _two_revealed_one_pending(s) -> tuple[dict, bytes]:
    """Round 0 of three providers sealed; the first two revealed, the third's receipt in but its
    blob not (yet) in the store, so that the aggregator's process acknowledges the first two and
    waits for the third. Returns (the first provider's receipt, the third's blob, to put back)."""
    a, b, c = s.providers
    s.open()
    for p in s.providers:
        p.train(s.job, 0)
    s.agg.seal(s.job, 0, s.spec)
    first = a.reveal(s.job, 0)
    b.reveal(s.job, 0)
    late = c.reveal(s.job, 0)
    late_blob = s.store.get(late["update_cid"])
    s.store._path(late["update_cid"]).unlink()
    return first, late_blob


def test_a_second_receipt_after_the_acknowledgement_cannot_displace_the_acknowledged_update(make, tmp_path):
    """A provider whose update was acknowledged signs a second receipt of it with another weight,
    one whose message sorts first on the mailbox, and files it (as a Flower ServerApp files what a
    SuperNode sends): had the next collect taken the mailbox's first update, the acknowledged one
    would be left out and its acknowledgement would win an inclusion game. The acknowledged update
    stays the provider's; the second is refused (it opens no sealed commitment either)."""
    from fedmarket.processes.aggregator import AggregatorProcess
    from fedmarket.roles.challenger import Challenger
    from fedmarket.storage.cid import cid_of
    from fedmarket.transport.flower import file_update

    s = make(providers=3, rounds=2)
    a = s.providers[0]
    first, late_blob = _two_revealed_one_pending(s)
    proc = AggregatorProcess(s.dep, s.agg.account, s.store, s.box, s.job, tmp_path / "agg", collect_timeout=3600,
                             log=lambda m: None)
    proc._round(s.dep.job(s.job), 0)  # a and b acknowledged; c not in yet
    root = bytes.fromhex(first["update_root"][2:])
    for w in range(first["weight"] - 1, 0, -1):
        sig = UpdateReceipt(s.job, 0, root, w).sign(a.account.key, s.dep.chain_id, s.dep.disputes.address)
        second = dict(first, weight=w, signature="0x" + sig.hex())
        if cid_of(canonical_json(second)) < cid_of(canonical_json(first)):
            break
    file_update(s.store, s.box, s.job, 0, {"message": canonical_json(second).decode(),
                                           "blob": s.store.get(first["update_cid"])})
    s.store.put(late_blob)
    proc._round(s.dep.job(s.job), 0)
    listed = {u["provider"]: int(u["weight"]) for u in fetch_metrics(s.store, committed_rounds(s.dep, s.job)[0])["updates"]}
    assert listed[a.address] == first["weight"] and len(listed) == 3
    assert not Challenger(s.dep, a.account, s.store, s.box).check_censorship(s.job, s.box)
    assert s.slashed() == {}


def test_an_acknowledged_update_survives_the_aggregators_restart(make, tmp_path):
    """A provider whose update was acknowledged deletes its blob (anyone can, on a shared store),
    and the aggregator's process restarts before the round commits: had it kept its
    acknowledgements in memory only, it would leave the update out and lose an inclusion game. Its
    state directory keeps each acknowledged update, blob included."""
    from fedmarket.processes.aggregator import AggregatorProcess
    from fedmarket.roles.challenger import Challenger

    s = make(providers=3, rounds=2)
    a = s.providers[0]
    revealed, late_blob = _two_revealed_one_pending(s)
    state = tmp_path / "agg"
    AggregatorProcess(s.dep, s.agg.account, s.store, s.box, s.job, state, collect_timeout=3600,
                      log=lambda m: None)._round(s.dep.job(s.job), 0)
    s.store._path(revealed["update_cid"]).unlink()
    restarted = AggregatorProcess(s.dep, s.agg.account, s.store, s.box, s.job, state, collect_timeout=0,
                                  log=lambda m: None)
    s.store.put(late_blob)
    restarted._round(s.dep.job(s.job), 0)
    assert committed_rounds(s.dep, s.job)[0].count == 3 and s.store.has(revealed["update_cid"])
    assert not Challenger(s.dep, a.account, s.store, s.box).check_censorship(s.job, s.box)
    assert s.slashed() == {}


def test_a_blob_deleted_from_an_earlier_round_cannot_stop_the_aggregator_defending_it(make, tmp_path):
    """A provider deletes its update blob of round 0 once round 1 is committed (anyone can, on a
    shared store) and an accomplice opens a false aggregate game on round 0: an aggregator that can
    no longer open the update loses the game for its silence. Its process keeps a copy of every
    blob it took or wrote (`MirroredStore`, in its state directory), restarted or not, and puts a
    lost one back: it answers, and the accomplice loses its bond."""
    from fedmarket.processes.aggregator import AggregatorProcess
    from fedmarket.roles.games import Truth, job_games

    s = make(providers=3, rounds=3, challenger=False)
    s.open()
    state = tmp_path / "agg"
    proc = AggregatorProcess(s.dep, s.agg.account, s.store, s.box, s.job, state, collect_timeout=0,
                             log=lambda m: None)
    for r in (0, 1):
        for p in s.providers:
            p.train(s.job, r)
        proc._round(s.dep.job(s.job), r)  # seals
        for p in s.providers:
            p.reveal(s.job, r)
        proc._round(s.dep.job(s.job), r)  # commits
    assert len(committed_rounds(s.dep, s.job)) == 2
    gone = fetch_metrics(s.store, committed_rounds(s.dep, s.job)[0])["updates"][0]["update_cid"]
    s.store._path(gone).unlink()
    accomplice = s.c.stranger
    s.approve(accomplice, s.dep.round_arbiter.address)
    before = s.holdings()
    s.dep.round_arbiter.transact("challenge_aggregate", s.job, 0, 0, *Truth(s.dep, s.store, s.job).round_args(0),
                                 sender=accomplice)
    restarted = AggregatorProcess(s.dep, s.agg.account, s.store, s.box, s.job, state, log=lambda m: None)
    assert restarted.aggregator.defend(s.job) and s.store.has(gone)
    while job_games(s.dep, s.job):  # the aggregator answers every move; the accomplice goes silent
        if not restarted.aggregator.defend(s.job):
            (g,) = job_games(s.dep, s.job)
            s.past(int(g.deadline))
            g.arbiter.transact("timeout", g.gid, sender=accomplice)
    (resolved,) = s.dep.round_arbiter.events("GameResolved", job_id=s.job)
    assert not resolved["challenger_won"] and s.slashed() == {}
    assert s.delta(before)[s.agg.address] == int(s.dep.job(s.job)["dispute_bond"])
