"""A `secagg` round that commits nothing leaves the model where it was, so the next round's update
from it is the same vector (found by a privacy review). Aborted rounds, or an aggregator that
unmasks a round's sum and then makes up an abort, re-sent every provider's update into sums over
different sets of providers, and the sums solved for each update exactly: with a sampled job the
aggregator alone, and with one spoiler (an out-of-range masked input, within `max_dishonest`) even
an honest aggregator's mailbox. A provider now spends the model its update was trained from when it
masks it (`ReleaseLog.claim`), and sits out every later round that trains from the same model
(`Provider.frozen`)."""

from __future__ import annotations

import numpy as np
import pytest

import sec_support
from fedmarket.driver import RoundPlan
from fedmarket.errors import SecAggAbort
from fedmarket.protocol.rules import ring_sum
from fedmarket.roles import Aggregator, Provider
from fedmarket.roles import secure_round as sr
from fedmarket.roles.common import committed_rounds


class Recorder(Provider):
    """An honest provider; the test notes what it released (the ground truth only)."""

    truth: dict = {}

    def _released(self, spec, delta, cfg=None):
        q, w = super()._released(spec, delta, cfg)
        Recorder.truth.setdefault(self.address, []).append(np.asarray(q, dtype=np.int64).copy())
        return q, w


class Spoiler(Recorder):
    """A colluder within `max_dishonest`: masks a value out of the fixed-point range, so that the
    round aborts once unmasked, and tells the aggregator what it masked."""

    sent: dict = {}

    def _released(self, spec, delta, cfg=None):
        q, w = super()._released(spec, delta, cfg)
        q = np.asarray(q, dtype=np.int64).copy()
        q[0] = 2**55
        Spoiler.sent[self.address] = q.copy()
        return q, w


class Freezer(Aggregator):
    """Runs each round to the end, keeps the survivors' unmasked sum, and commits the round empty
    as if it had aborted (nothing acknowledged yet: nobody can check the claim)."""

    sums: list = []

    def _secure_round(self, job_id, round_, spec, updates):
        kept, corr, doc = super()._secure_round(job_id, round_, spec, updates)
        total = (ring_sum([u.q for u in kept], corr.shape) - corr.view(np.uint64)).view(np.int64)
        Freezer.sums.append(([u.provider for u in kept], total.copy()))
        raise SecAggAbort("the unmasked mean leaves the range")


@pytest.fixture
def full_batch(monkeypatch):
    """Full-batch local training: a provider's update is a function of the model alone."""
    plain = sec_support.make_spec

    def spec(**kw):
        s = plain(**kw)
        return s.model_copy(update={"training": s.training.model_copy(update={"batch_size": 100_000})})

    monkeypatch.setattr(sec_support, "make_spec", spec)


def _most_sums(sums) -> int:
    """The most unmasked sums any one provider's update is in."""
    counts: dict[str, int] = {}
    for who, _ in sums:
        for a in who:
            counts[a] = counts.get(a, 0) + 1
    return max(counts.values())


def _opened(sums, addrs, truth, minus=None) -> list[str]:
    """The providers whose exact update the sums give (least squares over who was in each)."""
    if not sums:
        return []
    rows = [[1.0 if a in who else 0.0 for a in addrs] for who, _ in sums]
    rhs = [(total if minus is None else (total.view(np.uint64) - minus.view(np.uint64)).view(np.int64))
           .astype(np.float64) for _, total in sums]
    X = np.rint(np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)[0]).astype(np.int64)
    return [a for i, a in enumerate(addrs) if a in truth and np.array_equal(X[i], truth[a][0])]


def test_a_made_up_abort_cannot_have_sampled_providers_release_one_update_twice(make, full_batch):
    """ATTACK (the aggregator alone, a job sampling 4 of 6 providers): unmask every round's sum,
    commit it empty, and let the seed draw another set of the same updates next round. Sixteen
    rounds gave all six updates exactly. Now each provider's update is in one sum at most."""
    Recorder.truth, Freezer.sums = {}, []
    s = make(providers=6, rounds=16, privacy="secagg", per_round=4, validators=1, aggregator_cls=Freezer,
             provider_cls=Recorder, max_dishonest=0.0)
    s.open()
    for r in range(s.spec.training.rounds):
        assert s.driver.quorum_or_fail()
        s.driver.round(r)
    assert [c.count for c in committed_rounds(s.dep, s.job)] == [0] * 16
    assert Freezer.sums, "the aggregator unmasked no round: the attack was never tried"
    assert _most_sums(Freezer.sums) == 1  # (a round that never had a survivor set unmasked nothing)
    assert _opened(Freezer.sums, [p.address for p in s.providers], Recorder.truth) == []
    frozen = [p for p in s.providers if p.sat_out]
    assert frozen and all("same model" in why for p in frozen for why in p.sat_out.values())


def test_a_spoiler_cannot_open_the_honest_updates_of_rounds_it_aborts(make, full_batch, monkeypatch):
    """ATTACK (one spoiler within `max_dishonest`, an honest aggregator whose sums it can re-derive
    from the mailbox, or a curious one): every round aborts once unmasked on the spoiler's value,
    and one honest provider dropping per round (within the promised dropout) made the frozen model's
    sums solve for every honest update. Now each is in one sum at most."""
    Recorder.truth, Spoiler.sent = {}, {}
    seen = []
    real = sr.unmasked_sum

    def curious(cfg, members, transcript, masked):
        total = real(cfg, members, transcript, masked)
        seen.append(([members[u] for u in masked], total.copy()))
        return total

    monkeypatch.setattr(sr, "unmasked_sum", curious)
    s = make(providers=6, rounds=6, privacy="secagg", validators=1, provider_cls=[Recorder] * 5 + [Spoiler],
             max_dishonest=0.17)
    s.open()
    honest = [p.address for p in s.providers[:5]]
    for r in range(6):
        assert s.driver.quorum_or_fail()
        s.driver.round(r, RoundPlan({r: "keys"} if r < 5 else {}))
    assert [c.count for c in committed_rounds(s.dep, s.job)] == [0] * 6
    assert seen, "no round was unmasked: the attack was never tried"
    assert _most_sums(seen) == 1
    assert _opened(seen, honest, Recorder.truth, minus=Spoiler.sent[s.providers[5].address]) == []


def test_a_masked_input_spends_its_model_even_without_a_confirmation(make, full_batch):
    """ATTACK (found by a review of the first version of this rule, which spent a model when its
    provider confirmed a survivor set): a provider that masks and then never confirms (its process
    killed in between, or the aggregator deleting the survivor set before it read it) is still in
    the sum, its self-mask rebuilt by its neighbours; it spent nothing, so it released the same
    update into later rounds' sums. Its first masked input spends the model now."""
    Recorder.truth, Freezer.sums = {}, []
    s = make(providers=4, rounds=3, privacy="secagg", validators=1, aggregator_cls=Freezer, provider_cls=Recorder,
             max_dishonest=0.0)
    s.open()
    victim = s.providers[0]
    for r in range(3):
        assert s.driver.quorum_or_fail()
        s.driver.round(r, RoundPlan({0: "unmask"} if r == 0 else {}))  # round 0: it masks, never confirms
    assert victim.address in Freezer.sums[0][0]  # it is in round 0's unmasked sum all the same
    assert len(Recorder.truth[victim.address]) == 1, "the same update left the machine again"
    assert all("same model" in why for why in victim.sat_out.values()) and victim.sat_out


class Tamperer(Provider):
    """A member within `max_dishonest` that, in round 0 only, flips a byte of every share it sends
    (nobody but the receiver can tell: only it decrypts the share); an honest provider after."""

    def share(self, job_id, round_):
        if round_ != 0:
            return super().share(job_id, round_)
        from fedmarket.privacy.secagg import EncryptedShare

        client, cfg = self._client(job_id, round_)
        keys = sr.advertised(self.mailbox.read(sr.topic(job_id, round_, "keys")), self._members(job_id, round_),
                             cfg.round_id)
        spoilt = [EncryptedShare(x.src, x.dst, x.blob[:-1] + bytes([x.blob[-1] ^ 1])) for x in client.share_keys(keys)]
        self.mailbox.post(sr.topic(job_id, round_, "shares"),
                          sr.shares_message(self.account.key, cfg.round_id, self.address, client.uid, spoilt))


def test_a_refusal_to_mask_spends_no_model(make):
    """ATTACK (found by a review of the rule above): the model was journaled as spent before the
    provider masked, and masking refuses bad shares (too few, doubled, failing authentication).
    One member spoiling its shares in round 0 alone left every honest provider frozen with nothing
    released, and the job committed nothing to its end (each honest provider paid 0, not 16.5). A
    refusal to mask spends nothing now: the job goes on from round 1."""
    s = make(providers=6, rounds=3, privacy="secagg", validators=1, provider_cls=[Provider] * 5 + [Tamperer],
             max_dishonest=0.17)
    s.open()
    for r in range(3):
        assert s.driver.quorum_or_fail()
        s.driver.round(r)
    counts = [c.count for c in committed_rounds(s.dep, s.job)]
    # round 1 from the same model: only the spoiler, which did mask in round 0, sits it out
    assert counts == [0, 5, 6], counts
    assert [bool(p.sat_out) for p in s.providers] == [False] * 5 + [True]


def test_a_spent_model_is_remembered_across_a_restart(tmp_path):
    """CRASH: the model a `secagg` release spends is in the same journal line as the release, written
    before the masked input leaves, so a restarted provider's process still sits out the rounds
    that train from it; the round that spent it is not frozen itself."""
    from fedmarket.privacy.releases import ReleaseLog

    log = ReleaseLog(tmp_path / "releases.jsonl")
    log.claim(1, 3, "secagg", "0xab")
    log.claim(1, 2, "secagg_dp")
    again = ReleaseLog(tmp_path / "releases.jsonl")
    assert again.spent(1, "0xab") == 3 and again.spent(1, "0xcd") is None and again.spent(2, "0xab") is None
    assert again.released(1, 3) and again.released(1, 2) and not again.released(1, 4)
