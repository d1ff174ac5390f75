"""Copies (`roles.sealed`): a provider that posts another's update as its own earns nothing, and
the original keeps its pay. Updates are committed before any is revealed, so a copier sees the
victim's update only after the seal, too late to commit to it; an aggregator that seals again to
let the copy in leaves two of its seals in the mailbox: the validators reject the round, and anyone
holding both proves the aggregator's equivocation on chain."""

from __future__ import annotations

from sec_support import AGG_STAKE

from fedmarket.market import JobState
from fedmarket.roles import Provider
from fedmarket.roles.common import committed_rounds, fetch_metrics, round_topic
from fedmarket.roles.sealed import seal_topic, seals
from fedmarket.testing.adversary import CopyingProvider, ResealingAggregator


def _rounds(s) -> list[dict]:
    return [fetch_metrics(s.store, c) for c in committed_rounds(s.dep, s.job)]


def _copied(make):
    """A settled job of four providers whose last copies the first's update every round as soon as
    it is revealed: (setup, copier, victim), the copy checked to be left out of every round, with
    its reason in the metrics document, and the original in."""
    s = make(providers=4, rounds=2, provider_cls=[Provider, Provider, Provider, CopyingProvider])
    copier, victim = s.providers[3], s.providers[0]
    copier.victim = victim.address
    s.run()
    assert s.state() == JobState.SETTLED
    for doc in _rounds(s):
        assert copier.address not in {u["provider"] for u in doc["updates"]}
        assert victim.address in {u["provider"] for u in doc["updates"]}
        assert any("does not open a commitment sealed before the reveals" in r["reason"] for r in doc["rejected"])
    return s, copier, victim


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
    s, copier, victim = _copied(make)
    d = s.delta()
    assert d[copier.address] == 0  # nothing earned (its stake came back: a copy is unpaid, not slashed)
    assert d[victim.address] >= victim_honest > 0
    assert d[victim.address] / victim_honest >= 0.8  # copy_victim_share


def test_a_copier_in_a_flower_job_earns_nothing(make, monkeypatch):
    """A Flower job: its ServerApp files every update on the aggregator's mailbox, which anyone on a
    shared broker reads. Were its rounds not sealed, a provider reading a filed update could post
    a copy as its own before the round commits and be paid the victim's weight. They are sealed as
    mailbox rounds are (a SuperNode commits, and reveals only once the ServerApp brings the seal):
    the copy opens no commitment and earns nothing."""
    import sec_support

    sec_support.flower_jobs(monkeypatch)
    s, copier, victim = _copied(make)
    d = s.delta()
    assert d[copier.address] == 0 and d[victim.address] > 0


def test_an_aggregator_resealing_for_a_copier_fails_its_round(make):
    """The aggregator colludes: the copier commits to the victim's update only after seeing it,
    and the aggregator seals again over the late commitment to take the copy. Both seals, signed
    by it, are in the mailbox, and two seals of one round are proof on chain: the watcher proves
    it, the job fails back to that round at the aggregator's cost, and the copy earns nothing."""
    s = make(providers=4, rounds=2, validators=3, provider_cls=[Provider, Provider, Provider, CopyingProvider],
             aggregator_cls=ResealingAggregator)
    copier, victim = s.providers[3], s.providers[0]
    copier.victim, copier.late_commit = victim.address, True
    s.run()
    assert len(seals(s.dep, s.box.read(seal_topic(s.job, 0)), s.job, 0, s.agg.address)) == 2
    [proven] = s.dep.disputes.events("SealEquivocationProven", job_id=s.job)
    assert (proven["round"], proven["aggregator"]) == (0, s.agg.address)
    s.release_all()
    assert s.state() == JobState.FAILED
    assert s.slashed() == {s.agg.address: AGG_STAKE}
    d = s.delta()
    assert d[copier.address] == 0 and d[victim.address] == 0


def _second_seal(s, round_: int) -> None:
    """The aggregator signs and posts another seal of the round: over the commitments it sealed
    but one (whichever commitment it wanted out, or another in)."""
    from fedmarket.protocol.encoding import canonical_json
    from fedmarket.roles import sealed as sl

    first = sl.seals(s.dep, s.box.read(seal_topic(s.job, round_)), s.job, round_, s.agg.address)[0]
    fewer = dict(sorted(first.items())[1:])
    s.box.post(seal_topic(s.job, round_), canonical_json(sl.seal_message(s.dep, s.agg.account, s.job, round_, fewer)))


def test_a_second_seal_after_quorum_is_proven_on_chain(make):
    """Attack: the aggregator seals round 0 again after the round reached quorum. The validators
    that reviewed before attested; one that reviews after finds two seals and rejects a round that
    passes, losing its fee for it, while the job goes on. Two seals of one round, both signed by the
    aggregator, are now proof on chain (`Disputes.prove_seal_equivocation`): a stranger holding
    them fails the job back to that round, the escrow goes back to the requester, and the
    aggregator loses its stake, half to the prover."""
    from fedmarket.roles.challenger import Challenger

    s = make(providers=3, rounds=2, validators=3)
    s.open()
    s.rounds(1)
    assert s.dep.disputes.call("has_quorum", s.job, 0)
    watcher = Challenger(s.dep, s.c.stranger, s.store)
    assert watcher.check_seals(s.job, s.box) is None  # one seal per round: nothing to prove
    _second_seal(s, 0)
    receipt = watcher.check_seals(s.job, s.box)
    ev = receipt.event("SealEquivocationProven")
    assert (ev["round"], ev["aggregator"], ev["challenger"]) == (0, s.agg.address, s.c.stranger.address)
    assert s.state() == JobState.FAILED and s.dep.job(s.job)["current_round"] == 0
    assert s.slashed() == {s.agg.address: AGG_STAKE}
    s.release_all()
    d = s.delta()
    assert d[s.c.stranger.address] == AGG_STAKE // 2 and d[s.agg.address] == -AGG_STAKE
    assert d[s.c.requester.address] == 0  # the escrow came back whole
    s.assert_no_honest_loss([p.address for p in s.providers] + [v.address for v in s.validators])


def test_seal_proofs_that_prove_nothing_revert(make):
    """Every way to misuse `prove_seal_equivocation` reverts and changes nothing: one seal shown
    twice, a seal signed by anyone but the aggregator (a provider's two 'seals'), a round not yet
    reached, a job past disputes."""
    from fedmarket.protocol.receipts import CommitmentSeal
    from sec_support import revert

    s = make(providers=3, rounds=1, validators=3)
    s.open()
    chain_id, verifier = s.dep.chain_id, s.dep.disputes.address
    a, b = b"\x01" * 32, b"\x02" * 32

    def signed(account, round_, digest):
        return CommitmentSeal(s.job, round_, digest).sign(account.key, chain_id, verifier)

    def prove(round_, da, sa, db, sb, match):
        revert(s.dep.disputes.transact, "prove_seal_equivocation", s.job, round_, da, sa, db, sb,
               sender=s.c.stranger, match=match)

    agg, prov = s.agg.account, s.providers[0].account
    prove(0, a, signed(agg, 0, a), a, signed(agg, 0, a), "disputes: seals are identical")
    prove(0, a, signed(prov, 0, a), b, signed(prov, 0, b), "disputes: first seal not the aggregator's")
    prove(0, a, signed(agg, 0, a), b, signed(prov, 0, b), "disputes: second seal not the aggregator's")
    prove(0, a, signed(agg, 1, a), b, signed(agg, 0, b), "disputes: first seal not the aggregator's")  # another round's
    prove(1, a, signed(agg, 1, a), b, signed(agg, 1, b), "market: round not reached")
    assert s.state() == JobState.TRAINING
    s.run()
    assert s.state() == JobState.SETTLED
    prove(0, a, signed(agg, 0, a), b, signed(agg, 0, b), "market: job not disputable")


def test_a_deleted_seal_is_posted_again_never_signed_again(make, tmp_path):
    """Attack (a stranger on the shared broker): keep the aggregator's seal of a round, delete it
    from the mailbox, and wait for a slow provider's commitment. The aggregator's process used to
    find no seal of its own and seal again, over the new commitment: two seals, both signed by the
    honest aggregator, and the stranger proved an equivocation that slashed it. The process keeps
    the seals it signs in its state directory, before posting them, and posts a deleted one again:
    every seal of the round is the same, and no proof can be made."""
    from pathlib import Path

    from fedmarket.processes.aggregator import AggregatorProcess
    from fedmarket.protocol.encoding import untrusted_json
    from fedmarket.roles import sealed as sl
    from fedmarket.roles.challenger import Challenger

    s = make(providers=3, validators=3, rounds=2)
    s.open()
    p0, p1, slow = s.providers
    for p in (p0, p1):
        p.train(s.job, 0)
    logs: list[str] = []

    def process():
        return AggregatorProcess(s.dep, s.agg.account, s.store, s.box, s.job, tmp_path / "agg", collect_timeout=0,
                                 log=logs.append)

    process().safe_step()  # the collect timeout passed: it seals the two commitments in
    topic = Path(s.box.root) / sl.seal_topic(s.job, 0)
    [posted] = [f for f in topic.iterdir() if not f.name.startswith(".")]
    first = untrusted_json(posted.read_bytes())  # the stranger keeps it ...
    posted.unlink()  # ... and deletes it
    slow.train(s.job, 0)  # a slow provider's commitment comes in after the seal
    process().safe_step()  # a restarted process, too
    found = sl.seals(s.dep, s.box.read(sl.seal_topic(s.job, 0)), s.job, 0, s.agg.address)
    assert found == [sl.open_seal(s.dep, first, s.job, 0, s.agg.address)], "\n".join(logs)
    assert Challenger(s.dep, s.c.stranger, s.store).check_seals(s.job, s.box) is None
    assert s.state() == JobState.TRAINING and s.slashed() == {}


def test_a_committed_update_is_not_in_the_store_before_its_reveal(make):
    """A provider that stored its update blob when it committed would let a later provider read it
    from a shared store (a directory, or the broker's one account) and commit to a copy before the
    seal: scaled down to a tenth, the copy is no near-copy of the original as sent, yet validators
    value it like the original. The blob is stored at the reveal, after the seal."""
    from fedmarket.protocol.encoding import canonical_json
    from fedmarket.roles.sealed import commit_topic

    s = make(providers=3, rounds=1)
    s.open()
    s.providers[0].train(s.job, 0)
    message = s.providers[0]._sealed[(s.job, 0)]
    assert s.box.read(commit_topic(s.job, 0)) and not s.store.has(message["update_cid"])
    for p in s.providers[1:]:
        p.train(s.job, 0)
    s.agg.seal(s.job, 0, s.spec)
    assert s.providers[0].reveal(s.job, 0) == message and s.store.has(message["update_cid"])
    assert canonical_json(message) in s.box.read(round_topic(s.job, 0))
