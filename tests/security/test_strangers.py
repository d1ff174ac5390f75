"""Strangers: accounts with tokens and nothing to do with the job, calling what only a game's
challenger or the protocol's judges may call, or replaying signed statements where they were not
made."""

from __future__ import annotations

from sec_support import revert

from fedmarket.driver import RoundPlan
from fedmarket.market import Role
from fedmarket.protocol.encoding import address_key
from fedmarket.protocol.proofs import EMPTY_CHUNK, chunk_opening
from fedmarket.protocol.receipts import Attestation, Misbehaviour, ReceiptAck, Rejection, RewardsApproval, UpdateReceipt
from fedmarket.roles.common import committed_rounds, round_accumulator
from fedmarket.roles.games import choose, job_games
from fedmarket.testing.adversary import ShiftyAggregator


def test_only_challenger_chooses(make):
    """The aggregator committed a wrong aggregate and the watcher disputes the chunk. The cheat
    stands by a claim consistent with its wrong chunk and splits it into a true left half and a
    false right half; then it (and a stranger on its behalf, and the requester) choose the true
    half for the watcher, so that the watcher would dispute what is right and lose. Only the game's
    challenger may choose: it disputes the false half and the cheat is proven."""
    s = make(providers=4, rounds=2, aggregator_cls=ShiftyAggregator)
    s.open()
    for r in range(2):
        s.driver._train_and_commit(r, RoundPlan())
    s.cast.challenger.check(s.job)
    (g,) = s.games()
    truth, size = s.truth(), s.spec.quantization.chunk_size
    ev = truth.evidence(1)
    claim, lo_h, hi_h = truth.aggregate_claim(1, g.target, 0, ev.committed.count)
    claim = list(claim)
    claim[200 - g.target * size] += 3 * claim[-1]  # the sum that gives its shifted value
    agg = s.agg.account
    g.arbiter.transact("defend_aggregate", g.gid, ev.committed.data, ev.prev.data, chunk_opening(ev.prev_model, g.target, size),
                       chunk_opening(ev.model, g.target, size), EMPTY_CHUNK, claim, lo_h, hi_h, sender=agg)
    left = truth.aggregate_claim(1, g.target, 0, 2, lo_h, hi_h)[0]  # true
    g.arbiter.transact("split", g.gid, claim, left, sender=agg)  # the right half carries the lie
    for intruder in (s.c.stranger, agg, s.c.requester):
        for side in (True, False):
            revert(g.arbiter.transact, "choose", g.gid, side, sender=intruder, match="not this side")
    (g,) = s.games()
    assert choose(truth, g) is True  # the watcher disputes the false right half
    g.arbiter.transact("choose", g.gid, True, sender=s.c.watcher)
    s.driver.play_games()
    s.release_all()
    assert s.slashed() == {s.agg.address: s.spec.reward.aggregator_stake}


def test_privileged_calls_refused(make):
    """A stranger (and the aggregator, the requester, the deployer) calls the market's judge-only
    functions: slash a provider, fail a job as proven or judged, reject its reward root, mark a
    round at quorum. Only the named contract may call each; nothing moves."""
    s = make(providers=3, validators=1, rounds=1)
    s.open()
    s.driver._train_and_commit(0, RoundPlan())
    m = s.dep.market
    p = s.providers[0].address
    calls = [
        ("slash", (s.job, p, s.c.stranger.address), "caller is not disputes"),
        ("fail_judged", (s.job, True, s.c.stranger.address), "caller is not disputes"),
        ("mark_quorum", (s.job, 0), "caller is not disputes"),
        ("fail_proven", (s.job, 0, s.c.stranger.address, "made up"), "caller is not a judge"),
        ("reward_fault", (s.job, s.c.stranger.address), "caller is not the arbiter"),
    ]
    before = s.holdings()
    for caller in (s.c.stranger, s.agg.account, s.c.requester, s.c.deployer):
        for fn, args, reason in calls:
            revert(m.transact, fn, *args, sender=caller, match=reason)
    assert s.holdings() == before
    assert m.call("membership", s.job, p) == (Role.PROVIDER, s.spec.reward.provider_stake)
    assert not s.dep.job(s.job)["quorum"]


def test_statements_do_not_replay(make):
    """Signed statements lifted from where they were made: a validator's attestation, rejection,
    misbehaviour report and reward approval of one job replayed in another job, another round, or
    signed for another chain or verifying contract; a provider's receipt and the aggregator's
    acknowledgement of one job replayed in another's inclusion game. Every replay recovers another
    signer and is refused."""
    a = make(providers=3, validators=2, rounds=2)
    b = make(providers=3, validators=2, rounds=2)
    for s in (a, b):
        s.open()
        s.driver._train_and_commit(0, RoundPlan())
    d, chain_id = a.dep.disputes, a.dep.chain_id
    vs = sorted(a.validators, key=lambda v: address_key(v.address))
    v = vs[0]
    ra, rb = committed_rounds(a.dep, a.job)[0], committed_rounds(b.dep, b.job)[0]
    proof_b = round_accumulator(b.dep, b.job).proof(0)
    scores = b"\x07" * 32

    def attest_b(sig, round_=0):
        return d.transact("attest", b.job, round_, rb.data, proof_b, scores, [v.address], [sig], sender=b.c.stranger)

    # an attestation of job a (same validator, same scores, even the same model root) in job b
    for job, rnd, cid, verifier, root in (
        (a.job, 0, chain_id, d.address, rb.model_root),  # another job
        (b.job, 1, chain_id, d.address, rb.model_root),  # another round
        (b.job, 0, chain_id + 1, d.address, rb.model_root),  # another chain
        (b.job, 0, chain_id, b.dep.round_arbiter.address, rb.model_root),  # another verifier
        (b.job, 0, chain_id, d.address, ra.model_root),  # another model
    ):
        sig = Attestation(job, rnd, root, scores).sign(v.account.key, cid, verifier)
        revert(attest_b, sig, match="bad signature")
    attest_b(Attestation(b.job, 0, rb.model_root, scores).sign(v.account.key, chain_id, d.address))  # the real one

    sig = Rejection(a.job, 0, rb.model_root).sign(vs[1].account.key, chain_id, d.address)
    revert(d.transact, "reject", b.job, 0, rb.data, proof_b, [vs[1].address], [sig], sender=b.c.stranger,
           match="bad signature")
    p = b.providers[0].address
    sigs = [Misbehaviour(a.job, p).sign(x.account.key, chain_id, d.address) for x in vs]
    revert(d.transact, "slash_provider", b.job, p, [x.address for x in vs], sigs, sender=b.c.stranger,
           match="bad signature")
    sig = RewardsApproval(a.job, b"\x01" * 32, 1, 1, True).sign(vs[1].account.key, chain_id, d.address)
    revert(d.transact, "approve_rewards", b.job, b"\x01" * 32, 1, 1, True, [vs[1].address], [sig], sender=b.c.stranger,
           match="bad signature")

    # a receipt and its acknowledgement from job a's round 0, replayed as censorship in job b
    prov = a.providers[0]
    msg = next(m for m in (__import__("json").loads(raw) for raw in a.box.read(f"job-{a.job}-round-0"))
               if m["provider"] == prov.address)
    root, weight = bytes.fromhex(msg["update_root"][2:]), int(msg["weight"])
    psig = bytes.fromhex(msg["signature"][2:])
    asig = ReceiptAck(a.job, 0, prov.address, root, weight).sign(a.agg.account.key, chain_id, d.address)
    b.approve(b.c.stranger, b.dep.round_arbiter.address)
    revert(b.dep.round_arbiter.transact, "challenge_inclusion", b.job, 0, rb.data, proof_b, prov.address, root, weight,
           psig, asig, sender=b.c.stranger, match="bad provider signature")
    psig_b = UpdateReceipt(b.job, 0, root, weight).sign(prov.account.key, chain_id, d.address)
    revert(b.dep.round_arbiter.transact, "challenge_inclusion", b.job, 0, rb.data, proof_b, prov.address, root, weight,
           psig_b, asig, sender=b.c.stranger, match="bad aggregator signature")
    assert not job_games(b.dep, b.job) and not a.slashed() and not b.slashed()
