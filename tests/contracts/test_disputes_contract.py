"""Disputes on the embedded EVM: attestations and quorum (two thirds of the stake fixed at the
start), rejections and `fail_round` (who pays for a round that never reaches quorum),
equivocation, provider misbehaviour, reward approvals and `reward_pool`; every revert and event,
and the EIP-712 statements byte for byte with `protocol.receipts`."""

from __future__ import annotations

import contextlib

import eth_abi
from contract_kit import (
    AGG_STAKE,
    ESCROW,
    FEE_BPS,
    TOKEN,
    SCORES,
    STAKE,
    VAL_STAKE,
    ZERO32,
    events,
    pool_of,
    reverts,
    sort_accounts,
)
from eth_utils import keccak

from fedmarket.errors import ContractRevert
from fedmarket.market import JobState, Role
from fedmarket.protocol import rules as R
from fedmarket.protocol.receipts import Attestation, Misbehaviour, Rejection, RewardsApproval, domain

# ---------------------------------------------------------------- the domain


def test_separator_is_the_protocols_eip712_domain(kit):
    typehash = keccak(b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)")
    expected = keccak(eth_abi.encode(["bytes32", "bytes32", "bytes32", "uint256", "address"],
                                     [typehash, keccak(b"fedmarket"), keccak(b"1"), kit.chain_id, kit.disputes.address]))
    assert kit.disputes.call("separator") == expected
    _, name, version, chain_id, verifier, _, _ = kit.disputes.call("eip712Domain")
    assert {"name": name, "version": version, "chainId": chain_id, "verifyingContract": verifier} == domain(
        kit.chain_id, kit.disputes.address)


def test_misbehaviour_digest_matches_python(kit):
    p = kit.providers[0].address
    assert kit.disputes.call("misbehaviour_digest", 7, p) == Misbehaviour(7, p).eip712_digest(kit.chain_id, kit.disputes.address)
    assert kit.disputes.call("misbehaviour_digest", 8, p) != Misbehaviour(7, p).eip712_digest(kit.chain_id, kit.disputes.address)


# ---------------------------------------------------------------- attestations


def test_attestations_reach_quorum_at_two_thirds_of_the_stake(kit):
    job = kit.job(validators=3, stakes={2: 2 * VAL_STAKE})  # stakes 50, 50, 100: quorum at 133.3
    job.commit(attest=False)
    small, big = job.validators[0], job.validators[2]
    receipt = job.attest(0, [small], scores=keccak(b"a"))
    ev = receipt.event("RoundAttested")
    assert (ev["job_id"], ev["round"], ev["validator"], ev["scores_root"], ev["stake"]) == (
        job.id, 0, small.address, keccak(b"a"), VAL_STAKE)
    assert not events(receipt, "QuorumReached") and not events(receipt, "QuorumMarked")
    assert not kit.disputes.call("has_quorum", job.id, 0) and not job.status()[3]
    receipt = job.attest(0, [big])
    ev = receipt.event("QuorumReached")
    assert (ev["job_id"], ev["round"], ev["attested_stake"], ev["total_stake"]) == (job.id, 0, 3 * VAL_STAKE,
                                                                                     4 * VAL_STAKE)
    assert receipt.event("QuorumMarked")["round"] == 0
    assert kit.disputes.call("has_quorum", job.id, 0) and job.status()[3]
    assert kit.disputes.call("attestation_of", job.id, 0, small.address) == keccak(b"a")
    assert kit.disputes.call("attestation_of", job.id, 0, big.address) == SCORES
    assert (kit.disputes.call("attested_stake", job.id, 0), kit.disputes.call("voters", job.id, 0)) == (3 * VAL_STAKE, 2)
    receipt = job.attest(0, [job.validators[1]])  # past quorum: counted, not announced again
    assert not events(receipt, "QuorumReached") and not events(receipt, "QuorumMarked")
    assert kit.disputes.call("voters", job.id, 0) == 3


def test_exactly_two_thirds_is_quorum_and_the_total_is_fixed_at_the_start(kit):
    job = kit.job(validators=3)  # 150 in all: quorum at exactly 100
    job.commit(attest=False)
    v0, v1, v2 = job.validators
    # v0 equivocates and is slashed: the total stays what it was at the start
    sigs = [job.sign_attestation(v0, 0, keccak(x)) for x in (b"a", b"b")]
    kit.disputes.transact("prove_equivocation", job.id, 0, v0.address, job.rounds[0].data[0], keccak(b"a"), sigs[0],
                          job.rounds[0].data[0], keccak(b"b"), sigs[1], sender=kit.outsider)
    assert job.info()["validator_total_stake"] == 3 * VAL_STAKE
    job.attest(0, [v1])
    assert not kit.disputes.call("has_quorum", job.id, 0)
    assert job.attest(0, [v2]).event("QuorumReached")["attested_stake"] == 2 * VAL_STAKE
    assert job.status()[3]


def test_attest_rules(kit):
    job = kit.job(validators=3)
    job.commit(attest=False)
    data, proof, _, _ = job.round_args(0)
    v0, v1, v2 = sort_accounts(job.validators)
    attest = lambda *a, **o: kit.disputes.transact("attest", job.id, *a, sender=kit.outsider, **o)
    sig = lambda v, r=0, scores=SCORES: job.sign_attestation(v, r, scores, model_root=data[0])
    with reverts("disputes: empty scores root"):
        attest(0, data, proof, ZERO32, [v0.address], [job.sign_attestation(v0, 0, ZERO32)])
    with reverts("disputes: round data not committed"):
        attest(0, (keccak(b"other"), *data[1:]), proof, SCORES, [v0.address], [sig(v0)])
    with reverts("disputes: round data not committed"):
        attest(0, data, proof[:-1] + [keccak(b"x")], SCORES, [v0.address], [sig(v0)])
    with reverts("disputes: round data not committed"):
        attest(0, data, proof[:-1], SCORES, [v0.address], [sig(v0)])
    with reverts("disputes: round data not committed"):
        attest(1, data, proof, SCORES, [v0.address], [sig(v0, 1)])
    with reverts("disputes: bad signature list"):
        attest(0, data, proof, SCORES, [v0.address, v1.address], [sig(v0)])
    with reverts("disputes: bad signature list"):
        attest(0, data, proof, SCORES, [], [])
    with reverts("disputes: validators not ascending"):
        attest(0, data, proof, SCORES, [v1.address, v0.address], [sig(v1), sig(v0)])
    with reverts("disputes: validators not ascending"):
        attest(0, data, proof, SCORES, [v0.address, v0.address], [sig(v0), sig(v0)])
    with reverts("disputes: bad signature"):
        attest(0, data, proof, SCORES, [v0.address], [sig(v0, scores=keccak(b"other"))])
    with reverts("disputes: bad signature"):
        attest(0, data, proof, SCORES, [v0.address], [sig(v1)])
    with reverts("disputes: bad signature"):  # a signature of another length recovers no one
        attest(0, data, proof, SCORES, [v0.address], [sig(v0)[:63]])
    with reverts("ecdsa: invalid signature"):  # snekmate reverts on a signature ecrecover refuses
        attest(0, data, proof, SCORES, [v0.address], [b"\x01" * 65])
    with reverts("ecdsa: invalid signature `s` value"):  # ... and on a malleable one
        attest(0, data, proof, SCORES, [v0.address], [high_s(sig(v0))])
    for stranger in (kit.outsider, kit.providers[0], kit.aggregator):
        with reverts("disputes: not a validator of the job"):
            attest(0, data, proof, SCORES, [stranger.address], [sig(stranger)])
    attest(0, data, proof, SCORES, [v0.address], [sig(v0)])
    with reverts("disputes: already voted"):
        attest(0, data, proof, keccak(b"again"), [v0.address], [sig(v0, scores=keccak(b"again"))])
    job.reject(0, [v1])
    with reverts("disputes: already voted"):
        attest(0, data, proof, SCORES, [v1.address], [sig(v1)])
    assert kit.disputes.call("voters", job.id, 0) == 2
    opened = kit.post()
    with reverts("disputes: job not training"):
        kit.disputes.transact("attest", opened, 0, data, proof, SCORES, [v2.address], [sig(v2)], sender=kit.outsider)


SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def high_s(sig: bytes) -> bytes:
    """The same signature with s mirrored to the upper half (valid for ecrecover, refused as malleable)."""
    r, s, v = sig[:32], int.from_bytes(sig[32:64], "big"), sig[64]
    return r + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - v])


def compact(sig: bytes) -> bytes:
    """The EIP-2098 64-byte form of a signature."""
    s = int.from_bytes(sig[32:64], "big") | ((sig[64] - 27) << 255)
    return sig[:32] + s.to_bytes(32, "big")


def test_a_validator_votes_once_whatever_the_signature_encoding(kit):
    job = kit.job(validators=3)
    job.commit(attest=False)
    data, proof, _, _ = job.round_args(0)
    v = job.validators[0]
    sig = job.sign_attestation(v, 0)
    kit.disputes.transact("attest", job.id, 0, data, proof, SCORES, [v.address], [compact(sig)], sender=kit.outsider)
    assert kit.disputes.call("attested_stake", job.id, 0) == VAL_STAKE
    with reverts("disputes: already voted"):
        kit.disputes.transact("attest", job.id, 0, data, proof, SCORES, [v.address], [sig], sender=kit.outsider)


def test_a_slashed_validator_casts_no_more_votes(kit):
    job = kit.job(validators=3)
    job.commit(attest=False)
    v0 = job.validators[0]
    sigs = [job.sign_attestation(v0, 0, keccak(x)) for x in (b"a", b"b")]
    root = job.rounds[0].data[0]
    kit.disputes.transact("prove_equivocation", job.id, 0, v0.address, root, keccak(b"a"), sigs[0], root,
                          keccak(b"b"), sigs[1], sender=kit.outsider)
    with reverts("disputes: not a validator of the job"):
        job.attest(0, [v0])
    with reverts("disputes: not a validator of the job"):
        job.reject(0, [v0])


def test_attest_after_the_job_moved_on(kit):
    job = kit.job(validators=3)
    job.finalize()
    with reverts("disputes: job not training"):
        job.attest(0)


# ---------------------------------------------------------------- rejections and fail_round


def test_reject_records_the_votes(kit):
    job = kit.job(validators=3, stakes={1: 2 * VAL_STAKE})
    job.commit(attest=False)
    v = job.validators[1]
    receipt = job.reject(0, [v])
    ev = receipt.event("RoundRejected")
    assert (ev["job_id"], ev["round"], ev["validator"], ev["stake"]) == (job.id, 0, v.address, 2 * VAL_STAKE)
    assert kit.disputes.call("rejected", job.id, 0, v.address)
    assert (kit.disputes.call("rejected_stake", job.id, 0), kit.disputes.call("voters", job.id, 0)) == (2 * VAL_STAKE, 1)
    assert kit.disputes.call("attestation_of", job.id, 0, v.address) == ZERO32


def test_reject_rules(kit):
    job = kit.job(validators=3)
    job.commit(attest=False)
    data, proof, _, _ = job.round_args(0)
    v0, v1, _ = sort_accounts(job.validators)
    reject = lambda v, sig, d=data, p=proof: kit.disputes.transact(
        "reject", job.id, 0, d, p, [v.address], [sig], sender=kit.outsider)
    rejection = lambda v: Rejection(job.id, 0, data[0]).sign(v.key, kit.chain_id, kit.disputes.address)
    with reverts("disputes: round data not committed"):
        reject(v0, rejection(v0), d=(keccak(b"x"), *data[1:]))
    with reverts("disputes: bad signature"):
        reject(v0, job.sign_attestation(v0, 0))  # an attestation is not a rejection
    with reverts("disputes: not a validator of the job"):
        reject(kit.outsider, rejection(kit.outsider))
    reject(v0, rejection(v0))
    with reverts("disputes: already voted"):
        reject(v0, rejection(v0))
    job.attest(0, [v1])
    with reverts("disputes: already voted"):
        reject(v1, rejection(v1))
    opened = kit.post()
    with reverts("disputes: job not training"):
        kit.disputes.transact("reject", opened, 0, data, proof, [v0.address], [rejection(v0)], sender=kit.outsider)


def test_more_than_a_third_rejecting_fails_the_job_at_the_aggregators_cost(kit):
    job = kit.job(validators=3, stakes={0: 2 * VAL_STAKE})  # 100 of 200 reject: more than a third
    job.commit(attest=False)
    job.reject(0, [job.validators[0]])
    req, out = kit.balance(kit.requester), kit.balance(kit.outsider)
    receipt = kit.disputes.transact("fail_round", job.id, [], sender=kit.outsider)  # at once: no deadline to wait for
    ev = receipt.event("JobFailed")
    assert (ev["round"], ev["refund"], ev["reason"]) == (1, ESCROW, "round rejected")
    slashed = receipt.event("StakeSlashed")
    assert (slashed["account"], slashed["amount"], slashed["challenger"]) == (kit.aggregator.address, AGG_STAKE,
                                                                              kit.outsider.address)
    assert kit.balance(kit.requester) == req + ESCROW and kit.balance(kit.outsider) == out + AGG_STAKE // 2
    assert job.status()[0] == JobState.FAILED
    assert job.membership(kit.aggregator) == (Role.AGGREGATOR | R.SLASHED, 1)
    for v in job.validators:  # validators lose nothing
        assert job.membership(v)[0] == Role.VALIDATOR


def test_absent_validators_pay_for_a_round_without_quorum(kit):
    job = kit.job(validators=3)
    job.commit(attest=False)
    v0, v1, v2 = job.validators
    job.attest(0, [v0])
    job.reject(0, [v1])  # one third rejecting is not enough to blame the aggregator
    with reverts("disputes: deadline not passed"):
        kit.disputes.transact("fail_round", job.id, [v2.address], sender=kit.outsider)
    kit.advance(500)
    req, out, agg_word = kit.balance(kit.requester), kit.balance(kit.outsider), job.membership(kit.aggregator)
    receipt = kit.disputes.transact("fail_round", job.id, [v2.address], sender=kit.outsider)
    slashed = events(receipt, "StakeSlashed")
    assert [(e["account"], e["role"], e["amount"], e["challenger"]) for e in slashed] == [
        (v2.address, Role.VALIDATOR, VAL_STAKE, kit.outsider.address)]
    assert receipt.event("JobFailed")["reason"] == "validators absent"
    assert job.membership(kit.aggregator) == agg_word == (Role.AGGREGATOR, AGG_STAKE)  # the aggregator keeps its stake
    assert job.membership(v2) == (Role.VALIDATOR | R.SLASHED, 1)
    assert kit.balance(kit.requester) == req + ESCROW and kit.balance(kit.outsider) == out + VAL_STAKE // 2
    kit.m.transact("release_stake", job.id, kit.aggregator.address, sender=kit.outsider)


def test_every_absent_validator_is_slashed_and_a_slashed_one_only_once(kit):
    job = kit.job(validators=4)
    job.commit(attest=False)
    absent = sort_accounts(job.validators[1:])
    job.attest(0, [job.validators[0]])
    # one absentee had already been slashed for equivocation
    v = absent[0]
    sigs = [job.sign_attestation(v, 0, keccak(x)) for x in (b"a", b"b")]
    root = job.rounds[0].data[0]
    kit.disputes.transact("prove_equivocation", job.id, 0, v.address, root, keccak(b"a"), sigs[0], root,
                          keccak(b"b"), sigs[1], sender=kit.outsider)
    kit.advance(500)
    receipt = kit.disputes.transact("fail_round", job.id, [a.address for a in absent], sender=kit.outsider)
    assert [e["account"] for e in events(receipt, "StakeSlashed")] == [a.address for a in absent[1:]]


def test_fail_round_rules(kit):
    job = kit.job(validators=3)
    v0, v1, v2 = sort_accounts(job.validators)
    fail_round = lambda absent: kit.disputes.transact(
        "fail_round", job.id, [a.address for a in absent], sender=kit.outsider)
    with reverts("disputes: round not in doubt"):  # nothing committed yet
        fail_round([])
    job.commit()  # attested by all: quorum
    with reverts("disputes: round not in doubt"):
        fail_round([])
    job.commit(attest=False)
    job.attest(1, [v0])
    kit.advance(500)
    with reverts("disputes: absent list incomplete"):
        fail_round([v1])
    with reverts("disputes: absent list incomplete"):
        fail_round([v1, v2, kit.outsider])
    with reverts("disputes: validators not ascending"):
        fail_round([v2, v1])
    with reverts("disputes: validator voted"):
        fail_round([v0, v1])
    stranger = sort_accounts([v1, kit.outsider])
    with reverts("disputes: not a validator of the job"):
        fail_round(stranger)
    fail_round([v1, v2])
    with reverts("disputes: round not in doubt"):
        fail_round([])
    opened = kit.post()
    with reverts("disputes: round not in doubt"):
        kit.disputes.transact("fail_round", opened, [], sender=kit.outsider)


def test_an_unvalidated_job_cannot_be_failed_as_validators_absent(kit):
    job = kit.job()
    job.commit()
    kit.advance(500)  # the aggregator missed round 1
    with contextlib.suppress(ContractRevert):  # refused, whatever the reason: the fix
        kit.disputes.transact("fail_round", job.id, [], sender=kit.aggregator)
    if job.status()[0] == JobState.FAILED:
        assert R.is_slashed(job.membership(kit.aggregator)[0]), "the aggregator escaped its slash"
    else:
        receipt = kit.m.transact("fail", job.id, sender=kit.outsider)
        assert receipt.event("StakeSlashed")["account"] == kit.aggregator.address


# ---------------------------------------------------------------- equivocation


def test_equivocation_slashes_the_validator(kit):
    job = kit.job(validators=3)
    job.commit(attest=False)
    v = job.validators[1]
    root = job.rounds[0].data[0]
    sig_a = job.sign_attestation(v, 0, keccak(b"a"))
    sig_b = job.sign_attestation(v, 0, keccak(b"b"), model_root=keccak(b"another model"))
    out, treasury = kit.balance(kit.outsider), kit.balance(kit.treasury)
    receipt = kit.disputes.transact("prove_equivocation", job.id, 0, v.address, root, keccak(b"a"), sig_a,
                                    keccak(b"another model"), keccak(b"b"), sig_b, sender=kit.outsider)
    ev = receipt.event("EquivocationProven")
    assert (ev["job_id"], ev["round"], ev["validator"], ev["challenger"]) == (job.id, 0, v.address, kit.outsider.address)
    ev = receipt.event("StakeSlashed")
    assert (ev["account"], ev["role"], ev["amount"]) == (v.address, Role.VALIDATOR, VAL_STAKE)
    assert kit.balance(kit.outsider) == out + VAL_STAKE // 2 and kit.balance(kit.treasury) == treasury + VAL_STAKE // 2
    assert job.membership(v) == (Role.VALIDATOR | R.SLASHED, 1)


def test_equivocation_rules(kit):
    job = kit.job(validators=2)
    job.commit(attest=False)
    v, w = job.validators
    root = job.rounds[0].data[0]
    a, b = keccak(b"a"), keccak(b"b")
    sig = lambda signer, scores, r=0: job.sign_attestation(signer, r, scores, model_root=root)
    prove = lambda who, ra, sa, siga, rb, sb, sigb, r=0, j=job.id: kit.disputes.transact(
        "prove_equivocation", j, r, who.address, ra, sa, siga, rb, sb, sigb, sender=kit.outsider)
    with reverts("disputes: attestations are identical"):
        prove(v, root, a, sig(v, a), root, a, sig(v, a))
    with reverts("disputes: not a validator of the job"):
        prove(kit.outsider, root, a, sig(kit.outsider, a), root, b, sig(kit.outsider, b))
    with reverts("disputes: first signature invalid"):
        prove(v, root, a, sig(w, a), root, b, sig(v, b))
    with reverts("disputes: second signature invalid"):
        prove(v, root, a, sig(v, a), root, b, sig(v, b, r=1))  # signed for another round
    prove(v, root, a, sig(v, a), root, b, sig(v, b))
    with reverts("disputes: not a validator of the job"):  # once per job
        prove(v, root, a, sig(v, a), root, b, sig(v, b))
    opened = kit.job(validators=1, start=False)
    x = opened.validators[0]
    sx = lambda scores: Attestation(opened.id, 0, root, scores).sign(x.key, kit.chain_id, kit.disputes.address)
    with reverts("market: job not disputable"):  # nothing is at stake before the job starts
        prove(x, root, a, sx(a), root, b, sx(b), j=opened.id)


# ---------------------------------------------------------------- provider misbehaviour


def test_two_thirds_of_the_validator_stake_slash_a_provider(kit):
    job = kit.job(validators=3)
    job.commit()
    p = kit.providers[1]
    out = kit.balance(kit.outsider)
    receipt = job.slash_provider(p, job.validators[:2])
    ev = receipt.event("ProviderSlashed")
    assert (ev["job_id"], ev["provider"], ev["attested_stake"], ev["total_stake"], ev["challenger"]) == (
        job.id, p.address, 2 * VAL_STAKE, 3 * VAL_STAKE, kit.outsider.address)
    assert receipt.event("StakeSlashed")["amount"] == STAKE
    assert job.membership(p) == (Role.PROVIDER | R.SLASHED, 1)  # its updates from round 2 on are invalid
    assert kit.balance(kit.outsider) == out + STAKE // 2


def test_slash_provider_rules(kit):
    job = kit.job(validators=3)
    p = kit.providers[0]
    v0, v1, v2 = sort_accounts(job.validators)
    with reverts("disputes: no validator supermajority"):
        job.slash_provider(p, [v0])
    with reverts("disputes: not a provider of the job"):
        job.slash_provider(v0, [v0, v1])
    with reverts("disputes: not a provider of the job"):
        job.slash_provider(kit.outsider, [v0, v1])
    with reverts("disputes: not a provider of the job"):
        job.slash_provider(kit.aggregator, [v0, v1])
    sigs = [Misbehaviour(job.id, p.address).sign(v.key, kit.chain_id, kit.disputes.address) for v in (v0, v1)]
    with reverts("disputes: bad signature"):
        kit.disputes.transact("slash_provider", job.id, p.address, [v0.address, v1.address], sigs[::-1],
                              sender=kit.outsider)
    with reverts("disputes: validators not ascending"):
        kit.disputes.transact("slash_provider", job.id, p.address, [v1.address, v0.address], sigs[::-1],
                              sender=kit.outsider)
    with reverts("disputes: bad signature list"):
        kit.disputes.transact("slash_provider", job.id, p.address, [v0.address], sigs, sender=kit.outsider)
    job.slash_provider(p, [v1, v2])
    with reverts("disputes: not a provider of the job"):  # once
        job.slash_provider(p, [v1, v2])
    unvalidated = kit.job()
    with reverts("disputes: job has no validators"):
        unvalidated.slash_provider(p, [v0])
    job.finalize()
    with reverts("disputes: job not training"):
        job.slash_provider(kit.providers[1], [v0, v1])


# ---------------------------------------------------------------- reward approvals and the pool


def _statement(job, gate_met=True):
    leaves = job.weight_leaves(gate_met)
    from contract_kit import reward_leaf_bytes

    from fedmarket.protocol.merkle import MerkleTree

    root = MerkleTree([reward_leaf_bytes(leaf) for leaf in leaves]).root
    return leaves, (root, sum(leaf["amount"] for leaf in leaves), sum(leaf["value"] for leaf in leaves), gate_met)


def test_approvals_are_recorded_per_statement(kit):
    job = kit.job(validators=3, stakes={2: 2 * VAL_STAKE})
    job.commit_all()
    _, st = _statement(job)
    key = keccak(eth_abi.encode(["bytes32", "uint256", "uint256", "bool"], list(st)))
    receipt = job.approve(st, job.validators[:2])
    evs = events(receipt, "RewardsApproved")
    assert [(e["validator"], e["key"], e["reward_root"], e["reward_total"], e["value_total"], e["gate_met"], e["stake"])
            for e in evs] == [(v.address, key, *st, VAL_STAKE) for v in sort_accounts(job.validators[:2])]
    assert kit.disputes.call("rewards_stake", job.id, key) == 2 * VAL_STAKE
    assert kit.disputes.call("rewards_signed", job.id, key, job.validators[0].address)
    assert not kit.disputes.call("rewards_signed", job.id, key, job.validators[2].address)
    with reverts("disputes: already approved"):  # one approval per validator and statement
        job.approve(st, [job.validators[0]])
    other = (st[0], st[1], st[2] + 1, st[3])  # a statement replacing a stale one is approved anew
    other_key = keccak(eth_abi.encode(["bytes32", "uint256", "uint256", "bool"], list(other)))
    job.approve(other, [job.validators[0]])
    assert kit.disputes.call("rewards_stake", job.id, other_key) == VAL_STAKE
    assert kit.disputes.call("rewards_stake", job.id, key) == 2 * VAL_STAKE
    assert kit.disputes.call("top_approval", job.id) == 2 * VAL_STAKE


def test_approve_rewards_rules(kit):
    job = kit.job(validators=2)
    job.commit_all()
    _, st = _statement(job)
    v = job.validators[0]
    for other in ((keccak(b"x"), *st[1:]), (st[0], st[1] + 1, *st[2:]), (*st[:2], st[2] + 1, st[3]), (*st[:3], False)):
        sig = RewardsApproval(job.id, *other).sign(v.key, kit.chain_id, kit.disputes.address)
        with reverts("disputes: bad signature"):  # every field of the statement is signed
            kit.disputes.transact("approve_rewards", job.id, *st, [v.address], [sig], sender=kit.outsider)
    with reverts("disputes: not a validator of the job"):
        job.approve(st, [kit.outsider])
    opened = kit.post()
    with reverts("disputes: job not training"):
        kit.disputes.transact("approve_rewards", opened, *st, [v.address], [b""], sender=kit.outsider)


def test_a_scores_root_needs_two_thirds_approving_exactly_it(kit):
    job = kit.job(validators=3)
    job.commit_all()
    leaves, st = _statement(job)
    job.approve(st, [job.validators[0]])
    with reverts("disputes: rewards not approved"):
        job.post_rewards(leaves, basis=R.Basis.SCORES, gate_met=True)
    job.approve(st, [job.validators[1]])
    with reverts("disputes: rewards not approved"):  # the value total is part of what was approved
        job.post_rewards(leaves, value_total=st[2] + 1, basis=R.Basis.SCORES)
    with reverts("disputes: rewards not approved"):
        job.post_rewards(leaves, basis=R.Basis.SCORES, gate_met=False)
    _, receipt = job.post_rewards(leaves, basis=R.Basis.SCORES)
    assert receipt.event("RewardRootPosted")["basis"] == R.Basis.SCORES
    assert job.info()["pool"] == pool_of()


def test_a_missed_quality_gate_pays_the_miss_payout(kit):
    job = kit.job(validators=3, miss_payout_bps=2_500)
    job.commit_all()
    leaves, st = _statement(job, gate_met=False)
    pool = pool_of(miss_bps=2_500, gate_met=False)
    job.approve(st)
    assert kit.disputes.call("reward_pool", job.id, *st[:3], R.Basis.SCORES, False) == pool
    job.post_rewards(leaves, basis=R.Basis.SCORES, gate_met=False)
    assert job.info()["pool"] == pool == pool_of() // 4


def test_a_missed_quality_gate_still_pays_the_roles_fees(kit):
    """The fees pay for work done: a missed gate shrinks only what the providers share. The pool is
    the reserved fees (aggregator x rounds, each joined validator x rounds) plus the miss payout's
    share of the rest."""
    fees = {"aggregator_fee": 11 * TOKEN, "validator_fee": 5 * TOKEN}
    job = kit.job(validators=3, miss_payout_bps=2_500, **fees)
    job.commit_all()
    reserved = job.terms.rounds * (fees["aggregator_fee"] + 3 * fees["validator_fee"])
    full = pool_of()
    expected = reserved + (full - reserved) * 2_500 // R.BPS
    assert R.pool(ESCROW, FEE_BPS, 2_500, False, reserved) == expected
    leaves, st = _statement(job, gate_met=False)
    job.approve(st)
    assert kit.disputes.call("reward_pool", job.id, *st[:3], R.Basis.SCORES, False) == expected
    assert kit.disputes.call("reward_pool", job.id, *st[:3], R.Basis.SCORES, False) > pool_of(miss_bps=2_500, gate_met=False)


def test_reward_pool_rules(kit):
    job = kit.job(validators=3, miss_payout_bps=5_000)
    job.commit()
    job.commit(attest=False)
    pool = lambda basis, gate, value=0: kit.disputes.call(
        "reward_pool", job.id, keccak(b"r"), 0, value, basis, gate)
    with reverts("disputes: last round lacks quorum"):
        pool(R.Basis.WEIGHT, False)
    job.attest(1)
    with reverts("disputes: value too large"):
        pool(R.Basis.WEIGHT, False, R.MAX_AMOUNT + 1)
    with reverts("disputes: unknown basis"):
        pool(2, False)
    with reverts("disputes: rewards not approved"):
        pool(R.Basis.SCORES, True)
    with reverts("disputes: approval window open"):
        pool(R.Basis.WEIGHT, False)
    deadline = job.status()[2]
    kit.advance(deadline - 250 - kit.now() - 1)  # the weight basis opens for the last half of the deadline
    with reverts("disputes: approval window open"):
        pool(R.Basis.WEIGHT, False)
    kit.advance(1)
    assert pool(R.Basis.WEIGHT, False) == pool_of(miss_bps=5_000, gate_met=False)
    with reverts("disputes: gate must follow the terms"):  # no validator judged the quality: a gated job misses
        pool(R.Basis.WEIGHT, True)


def test_approved_scores_close_the_weight_basis(kit):
    """Once two thirds of the validator stake approved a scores root, the weight basis (whose
    sample counts are claims) can no longer be posted instead, even after half the deadline."""
    job = kit.job(validators=3)
    job.commit_all()
    leaves, st = _statement(job)
    job.approve(st, job.validators[:1])  # one third: the fallback stays open
    kit.advance(job.status()[2] - kit.now() - 200)  # past half the last step's time
    assert kit.disputes.call("reward_pool", job.id, keccak(b"r"), 0, 0, R.Basis.WEIGHT, True) == pool_of()
    job.approve(st, job.validators[1:2])
    top = kit.disputes.call("top_approval", job.id)
    assert top == kit.disputes.call("rewards_stake", job.id, keccak(eth_abi.encode(
        ["bytes32", "uint256", "uint256", "bool"], list(st))))
    with reverts("disputes: scores approved"):
        kit.disputes.call("reward_pool", job.id, keccak(b"r"), 0, 0, R.Basis.WEIGHT, True)
    job.post_rewards(leaves, basis=R.Basis.SCORES)


def test_a_secure_job_has_no_scores_to_approve(kit):
    job = kit.job(validators=3, rule=R.Rule.SECURE_SUM)
    job.commit_all()
    with reverts("disputes: no scores to approve"):
        kit.disputes.call("reward_pool", job.id, keccak(b"r"), 0, 0, R.Basis.SCORES, True)
    assert kit.disputes.call("reward_pool", job.id, keccak(b"r"), 0, 0, R.Basis.WEIGHT, True) == pool_of()  # at once
    job.post_rewards(job.weight_leaves())
    assert job.status()[0] == JobState.FINALIZING


def test_an_unvalidated_job_posts_the_weight_basis_at_once(kit):
    job = kit.job()
    job.commit_all()
    assert kit.disputes.call("reward_pool", job.id, keccak(b"r"), 0, 0, R.Basis.WEIGHT, True) == pool_of()
    with reverts("disputes: no scores to approve"):
        kit.disputes.call("reward_pool", job.id, keccak(b"r"), 0, 0, R.Basis.SCORES, True)
