"""Attacks on the validators' messages while they wait on the mailbox (found by an attacker's
review of the validator layer): deleting the posted votes or reveals, and copying revealed scores.
A validator's process keeps its signed vote and its reveals in its state directory, sends the
vote itself from there, and posts its reveals again; scores are revealed only once no attestation
can count any more."""

from __future__ import annotations

import shutil
import time

from proc_support import Procs
from sec_support import revert

from fedmarket.market import JobState
from fedmarket.protocol.encoding import address_key, canonical_json, untrusted_json
from fedmarket.protocol.keccak import keccak
from fedmarket.protocol.receipts import Attestation, ScoresReveal
from fedmarket.roles import Validator
from fedmarket.roles.common import committed_rounds, read_document, round_accumulator, round_topic
from fedmarket.roles.settlement import scores_tree


def _chain_ahead_of_the_clock(chain) -> None:
    """Chain time ahead of wall time, as on a live chain where the two agree: a validator's grace
    before it sends its own vote is counted on the chain's time."""
    lag = int(time.time()) - chain.dep.chain.timestamp()
    if lag > -3600:
        chain.dep.chain.advance_time(lag + 3600)


def _absent_after_the_deadline(P: Procs, chain) -> list[str]:
    """Past round 0's deadline, the aggregator fails it on every validator with no vote on chain
    (if the round lacks quorum); returns who was slashed."""
    P.c.chain.advance_time(int(P.spec.deadlines.round_duration) + 10)
    if not P.dep.disputes.call("has_quorum", P.job, 0):
        absent = sorted([v.address for v in chain.validators[:3]
                         if P.dep.disputes.call("attestation_of", P.job, 0, v.address) == b"\x00" * 32
                         and not P.dep.disputes.call("rejected", P.job, 0, v.address)], key=address_key)
        P.dep.disputes.transact("fail_round", P.job, absent, sender=chain.aggregator)
    return [e["account"] for e in P.dep.market.events("StakeSlashed", job_id=P.job)]


def _review_round_0_with(P: Procs, after_step) -> None:
    """Every process steps until round 0 is committed and each validator attested it; from then on
    the aggregator submits no vote; `after_step(name)` runs after each process's step; then the
    validators alone step on, past their grace."""
    P.after_step = after_step
    for _ in range(60):
        P.step([n for n in P.procs if not (n == "aggregator" and committed_rounds(P.dep, P.job))])
        if committed_rounds(P.dep, P.job):
            P.c.chain.advance_time(20)
        if len([line for line in P.logs if "attested" in line]) >= 3:
            break
    assert len([line for line in P.logs if "attested" in line]) == 3, "\n".join(P.logs[-20:])
    for _ in range(6):
        P.step([n for n in P.procs if n.startswith("v")])
        P.c.chain.advance_time(70)


def test_deleting_the_posted_votes_cannot_get_present_validators_slashed(chain, tmp_path):
    """ATTACK: the aggregator (or anyone on a shared mailbox) deletes each validator's attestation as
    soon as it is posted, submits none itself, and fails round 0 on the 'absent' validators after its
    deadline, taking half of each stake. A validator's process sent its own vote from the mailbox
    after its grace: finding nothing there, it counted the vote as sent. It keeps its signed vote in
    its state directory now and sends it from there: every vote is on chain and nobody is slashed."""
    _chain_ahead_of_the_clock(chain)
    P = Procs(chain, tmp_path, collect_timeout=60.0, providers=3, validators=3, rounds=2)
    topic = P.box.root / (round_topic(P.job, 0) + "-attestations")
    _review_round_0_with(P, lambda name: shutil.rmtree(topic) if topic.is_dir() else None)
    assert P.dep.disputes.call("has_quorum", P.job, 0)
    assert not _absent_after_the_deadline(P, chain)


def test_on_the_broker_a_stranger_deleting_the_posted_votes_cannot_get_validators_slashed(chain, tmp_path,
                                                                                          nats_server, monkeypatch):
    """The same on the NATS mailbox, where every role shares one account: anyone on the server
    deletes the attestation messages (`delete_msg`) as they arrive."""
    import nats
    import proc_support

    from fedmarket.storage import open_mailbox
    from fedmarket.storage.jetstream import MAIL_STREAM, NatsLink, subject_of

    _chain_ahead_of_the_clock(chain)
    monkeypatch.setattr(proc_support, "Mailbox", lambda root: open_mailbox(nats_server.url))
    P = Procs(chain, tmp_path, collect_timeout=60.0, providers=3, validators=3, rounds=2)
    subject = subject_of(round_topic(P.job, 0) + "-attestations")
    stranger = NatsLink(nats_server.url)

    async def purge():
        seq = 1
        while True:
            try:
                m = await stranger.js.get_msg(MAIL_STREAM, seq=seq, subject=subject, next=True, direct=True)
            except nats.js.errors.NotFoundError:
                return
            await stranger.js.delete_msg(MAIL_STREAM, m.seq)
            seq = m.seq + 1

    try:
        _review_round_0_with(P, lambda name: stranger.call(purge()) if name.startswith("v") else None)
    finally:
        stranger.close()
    try:
        assert not _absent_after_the_deadline(P, chain)
    finally:
        P.box.close()


def test_deleting_the_reveals_cannot_turn_a_met_quality_gate_into_the_miss_payout(chain, tmp_path):
    """ATTACK: the requester (or anyone on the mailbox) deletes the validators' reveals once they are
    posted. A validator's process posted each reveal once, so no round had counted reveals, no
    scores statement could be approved, and the aggregator fell back to the weight basis, where a
    gated job pays its miss payout: the requester took back most of the providers' pool although
    the validators found the target met, and every validator lost reputation as 'not revealed'. Each
    process posts its reveals again (and puts their documents back) until the job settles."""
    _chain_ahead_of_the_clock(chain)
    P = Procs(chain, tmp_path, collect_timeout=60.0, providers=3, validators=3, rounds=1, target_accuracy=0.2,
              miss_payout_bps=2_000)
    wiped: list[int] = []

    def wipe(name):  # every reveal and its document, the first time all three are posted
        dirs = list(P.box.root.glob(f"job-{P.job}-*-reveals"))
        if not wiped and dirs and sum(len(list(d.iterdir())) for d in dirs) >= 3:
            for d in dirs:
                for f in d.iterdir():
                    (P.store.root / untrusted_json(f.read_bytes())["scores_cid"]).unlink()
                shutil.rmtree(d)
            wiped.append(1)

    P.after_step = wipe

    def tick(i):
        if P.state() == JobState.TRAINING and committed_rounds(P.dep, P.job):
            P.c.chain.advance_time(30)
        if wiped:
            time.sleep(0.1)  # the processes post their reveals again every 5 s of wall time

    P.run(150, on_step=tick)
    posted = P.dep.market.events("RewardRootPosted", job_id=P.job)
    assert wiped and posted, "\n".join(P.logs[-20:])
    assert posted[-1]["gate_met"] and int(posted[-1]["basis"]) == 1, "\n".join(P.logs[-20:])  # scores basis


class _IdleValidator(Validator):
    """Joins and stakes, never reviews a round: it means to copy the others' work."""

    def review(self, job_id, round_):
        return None

    def reveal(self, job_id, round_):
        return None


def test_a_lazy_validator_finds_no_revealed_scores_to_copy_while_votes_count(make):
    """ATTACK: a validator that never reviews waits for a round's quorum, when the honest validators
    used to reveal their scores, copies one revealed document under its own address, attests its
    root (the votes stay open until a quarter of the step after the last quorum) and reveals the
    copy: it was counted in the consensus (the copied view twice), gained reputation and its fee.
    Scores are revealed only once the votes are closed for good now: while an attestation can still
    count there is nothing to copy, and once there is, its attestation is refused."""
    s = make(providers=3, rounds=2, validators=3, validator_cls=[Validator, Validator, _IdleValidator])
    s.open()
    lazy, dep, job = s.validators[2], s.dep, s.job
    for r in range(2):
        assert s.driver.quorum_or_fail()
        s.driver.round(r)
        assert dep.disputes.call("has_quorum", job, r) and not dep.disputes.call("votes_closed", job)
        assert s.box.read(round_topic(job, r) + "-reveals") == []  # nothing to copy while votes count
    s.past(int(dep.market.call("votes_close", job)) - 1)
    s.driver.reveal()
    rounds = committed_rounds(dep, job)
    for r in range(2):
        [raw, *_] = s.box.read(round_topic(job, r) + "-reveals")
        doc = {k: v for k, v in read_document(s.store, untrusted_json(raw)["scores_cid"]).items() if k != "signature"}
        root = scores_tree([(e["provider"], int(e["score"])) for e in doc["scores"]], lazy.address).root
        sig = Attestation(job, r, rounds[r].model_root, root).sign(lazy.account.key, dep.chain_id, dep.disputes.address)
        revert(dep.disputes.transact, "attest", job, r, rounds[r].data, round_accumulator(dep, job, rounds).proof(r),
               root, [lazy.address], [sig], sender=lazy.account, match="disputes: votes closed")
        copy = {**doc, "validator": lazy.address, "scores_root": "0x" + root.hex()}
        rsig = ScoresReveal(job, r, keccak(canonical_json(copy))).sign(lazy.account.key, dep.chain_id,
                                                                        dep.disputes.address)
        cid = s.store.put(canonical_json({**copy, "signature": "0x" + rsig.hex()}))
        s.box.post(round_topic(job, r) + "-reveals", canonical_json({"validator": lazy.address, "scores_cid": cid}))
    doc = s.honest_document()
    counted = {read_document(s.store, cid)["validator"] for cids in doc["reveals"].values() for cid in cids}
    assert lazy.address not in counted and len(counted) == 2


def test_an_aggregator_withholding_the_approvals_cannot_post_the_weight_basis(chain, tmp_path):
    """ATTACK (found by a review of the reveal timing): the validators reveal once the votes close,
    sign the scores statement and post their approvals on the mailbox; only the root's poster put
    approvals on chain. An aggregator that never did waited for half of the last step and posted
    the weight basis, where a gated job's `gate_met` follows the terms: the validators found the
    target met, and the providers got the miss payout. Each validator's process now puts its own
    approval on chain past a short grace, which closes the weight basis (the aggregator is then
    failed for its missing root, and a provider posts the scores root in its place)."""
    from fedmarket.protocol import rules as R

    _chain_ahead_of_the_clock(chain)
    P = Procs(chain, tmp_path, collect_timeout=60.0, providers=3, validators=3, rounds=1, target_accuracy=0.2,
              miss_payout_bps=2_000)
    agg = P.procs["aggregator"].aggregator
    honest_post = agg.post_rewards
    agg.post_rewards = lambda job_id, basis=None: honest_post(job_id, R.Basis.WEIGHT)  # never the approved basis

    def tick(i):
        if P.state() == JobState.TRAINING and committed_rounds(P.dep, P.job):
            P.c.chain.advance_time(30)

    P.run(150, on_step=tick)
    posted = P.dep.market.events("RewardRootPosted", job_id=P.job)
    assert posted, "\n".join(P.logs[-20:])
    assert int(posted[-1]["basis"]) == R.Basis.SCORES and posted[-1]["gate_met"], "\n".join(P.logs[-20:])


def test_flipping_one_reveal_back_and_forth_cannot_keep_the_approvals_off_chain(chain, tmp_path):
    """ATTACK (found by a review of the fix above): the aggregator withholds the approvals as above,
    and, on the shared mailbox, deletes one honest validator's reveal and posts the same bytes back
    between the validators' looks. Each validator's statement flips (that validator revealed, or
    not) every time it looks, and its grace ran from the last change, so no approval ever reached
    the chain and the weight basis paid the miss payout. The grace runs from when each statement
    first was the validator's: both go on chain, and the weight basis stays closed."""
    from fedmarket.protocol import rules as R

    _chain_ahead_of_the_clock(chain)
    P = Procs(chain, tmp_path, collect_timeout=60.0, providers=3, validators=3, rounds=1, target_accuracy=0.2,
              miss_payout_bps=2_000)
    agg = P.procs["aggregator"].aggregator
    honest_post = agg.post_rewards
    agg.post_rewards = lambda job_id, basis=None: honest_post(job_id, R.Basis.WEIGHT)
    for name in ("v0", "v1", "v2"):
        P.procs[name].approve_interval = 0.0  # a look every step: the flips come between them
    victim = chain.validators[2].address
    topic = round_topic(P.job, 0) + "-reveals"
    kept: dict = {}
    absent = [False]  # flipped once a step: every look of a step sees the same, the next the other

    def enforce(name=None):
        d = P.box.root / topic
        mine = [f for f in d.iterdir() if not f.name.startswith(".") and victim in f.read_text()] if d.is_dir() else []
        if mine:
            kept.setdefault("bytes", mine[0].read_bytes())
        if absent[0]:
            for f in mine:
                f.unlink()
        elif not mine and "bytes" in kept:
            P.box.post(topic, kept["bytes"])  # the same public bytes, back

    P.after_step = enforce

    def tick(i):
        if P.state() == JobState.TRAINING and committed_rounds(P.dep, P.job):
            P.c.chain.advance_time(30)
        absent[0] = not absent[0]
        enforce()

    P.run(150, on_step=tick)
    posted = P.dep.market.events("RewardRootPosted", job_id=P.job)
    assert posted and "bytes" in kept, "\n".join(P.logs[-20:])
    assert int(posted[-1]["basis"]) == R.Basis.SCORES and posted[-1]["gate_met"], "\n".join(P.logs[-20:])
