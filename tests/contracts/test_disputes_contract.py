"""Disputes: attestations and quorum, equivocation, censorship and chunk fraud proofs,
with every argument built by fedmarket's Python side (so encodings agree byte for byte)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import AGG_STAKE, ESCROW, VAL_STAKE, ZERO32
from eth_utils import keccak

from fedmarket.errors import ContractRevert
from fedmarket.fl.aggregate import fedavg_int, median_int, trimmed_mean_int
from fedmarket.market import JobState, Role
from fedmarket.protocol.encoding import address_key
from fedmarket.protocol.proofs import (
    RoundUpdate,
    censorship_leaf,
    fraud_proof,
    round_data,
    sort_updates,
)
from fedmarket.protocol.receipts import Attestation, ReceiptAck, UpdateReceipt

D = 150  # three chunks of 64: 64, 64, 22
CS = 64
METRICS = keccak(b"metrics")


def sign(stmt, acct, dep):
    return stmt.sign(acct.key, dep.chain_id, dep.disputes.address)


def make_updates(w, n, seed=0, scale=1_000_000):
    rng = np.random.default_rng(seed)
    ups = [RoundUpdate(w["providers"][i].address, rng.integers(-scale, scale, D), int(rng.integers(5, 50)), CS)
           for i in range(n)]
    return sort_updates(ups)


def aggregate(rule, trim, updates):
    qs, ws = [u.q for u in updates], [u.weight for u in updates]
    return {0: lambda: fedavg_int(qs, ws), 1: lambda: median_int(qs), 2: lambda: trimmed_mean_int(qs, trim)}[rule]()


def commit(mk, job, r, model_q, updates):
    data = round_data(model_q, updates, METRICS, CS)
    mk.m.transact("submit_round", job, r, data[0], "bafkreimodel", data[1], data[2], data[3], 0, sender=mk.w["aggregator"])
    return data


# ---------------------------------------------------------------- byte-for-byte agreement


def test_receipt_digest_matches_the_contract(mk):
    r = UpdateReceipt(7, 3, keccak(b"u"), 42)
    assert r.digest(mk.dep.chain_id, mk.dep.disputes.address) == mk.dep.disputes.call("receipt_digest", 7, 3, keccak(b"u"), 42)


# ---------------------------------------------------------------- fraud proofs


@pytest.mark.parametrize("rule, trim, n", [(0, 0, 3), (0, 0, 5), (1, 0, 3), (1, 0, 4), (2, 1, 5), (2, 2, 6)])
def test_correct_aggregate_cannot_be_disputed(mk, rule, trim, n):
    job = _job(mk, n, rule, trim)
    ups = make_updates(mk.w, n, seed=rule * 10 + n)
    model = aggregate(rule, trim, ups)
    data = commit(mk, job, 0, model, ups)
    for chunk in range(3):
        args = fraud_proof(job_id=job, round_=0, chunk_index=chunk, chunk_size=CS, rule=rule, trim=trim,
                           prev_model_q=None, prev_data=None, new_model_q=model, data=data, updates=ups)
        with pytest.raises(ContractRevert, match="aggregate is correct"):
            mk.dep.disputes.transact("prove_fraud", *args, sender=mk.w["outsider"])
    assert mk.dep.job(job)["state"] == JobState.TRAINING


def _job(mk, n, rule, trim):
    job = mk.post(min_providers=n, max_providers=n, rule=rule, trim=trim)
    mk.accept(job)
    for i in range(n):
        mk.join(job, i)
    mk.m.transact("start", job, sender=mk.w["aggregator"])
    return job


@pytest.mark.parametrize("rule, trim, n", [(0, 0, 3), (1, 0, 4), (2, 1, 5)])
def test_wrong_aggregate_is_slashed_reverted_and_refunded(mk, rule, trim, n):
    dep, out, req = mk.dep, mk.w["outsider"], mk.w["requester"]
    job = _job(mk, n, rule, trim)
    ups = make_updates(mk.w, n, seed=1)
    model = aggregate(rule, trim, ups).copy()
    model[64 + 5] += 1  # one coordinate of chunk 1 off by one quantization step
    data = commit(mk, job, 0, model, ups)
    args = fraud_proof(job_id=job, round_=0, chunk_index=0, chunk_size=CS, rule=rule, trim=trim,
                       prev_model_q=None, prev_data=None, new_model_q=model, data=data, updates=ups)
    with pytest.raises(ContractRevert, match="aggregate is correct"):  # chunk 0 is right
        dep.disputes.transact("prove_fraud", *args, sender=out)
    args = fraud_proof(job_id=job, round_=0, chunk_index=1, chunk_size=CS, rule=rule, trim=trim,
                       prev_model_q=None, prev_data=None, new_model_q=model, data=data, updates=ups)
    o_before, r_before = dep.balance(out.address), dep.balance(req.address)
    r = dep.disputes.transact("prove_fraud", *args, sender=out)
    assert r.event("FraudProven")["chunk"] == 1
    assert r.event("JobFailed")["reason"] == "wrong aggregate"
    job_info = dep.job(job)
    assert job_info["state"] == JobState.FAILED and job_info["current_round"] == 0
    assert dep.balance(out.address) - o_before == AGG_STAKE // 2
    assert dep.balance(req.address) - r_before == ESCROW + AGG_STAKE // 2
    with pytest.raises(ContractRevert, match="job not disputable"):
        dep.disputes.transact("prove_fraud", *args, sender=out)


def test_fraud_in_a_later_round_uses_the_previous_model(mk):
    job = _job(mk, 3, 0, 0)
    ups0 = make_updates(mk.w, 3, seed=2)
    m0 = fedavg_int([u.q for u in ups0], [u.weight for u in ups0])
    d0 = commit(mk, job, 0, m0, ups0)
    ups1 = make_updates(mk.w, 3, seed=3)
    m1 = m0 + fedavg_int([u.q for u in ups1], [u.weight for u in ups1])
    bad = m1.copy()
    bad[149] -= 7  # the last, short chunk
    d1 = commit(mk, job, 1, bad, ups1)
    kw = dict(job_id=job, round_=1, chunk_size=CS, rule=0, trim=0, prev_model_q=m0, prev_data=d0,
              new_model_q=bad, data=d1, updates=ups1)
    with pytest.raises(ContractRevert, match="aggregate is correct"):
        mk.dep.disputes.transact("prove_fraud", *fraud_proof(chunk_index=1, **kw), sender=mk.w["outsider"])
    mk.dep.disputes.transact("prove_fraud", *fraud_proof(chunk_index=2, **kw), sender=mk.w["outsider"])
    assert mk.dep.job(job)["state"] == JobState.FAILED and mk.dep.job(job)["current_round"] == 1


def test_fraud_proof_rejects_bad_openings_and_hints(mk):
    job = _job(mk, 4, 1, 0)
    ups = make_updates(mk.w, 4, seed=4)
    model = median_int([u.q for u in ups]).copy()
    model[3] += 1
    data = commit(mk, job, 0, model, ups)
    args = list(fraud_proof(job_id=job, round_=0, chunk_index=0, chunk_size=CS, rule=1, trim=0,
                            prev_model_q=None, prev_data=None, new_model_q=model, data=data, updates=ups))
    d = mk.dep.disputes
    out = mk.w["outsider"]
    bad = list(args)
    bad[9] = args[9][:-1]
    with pytest.raises(ContractRevert, match="need every update"):
        d.transact("prove_fraud", *bad, sender=out)
    bad = list(args)
    bad[9] = [args[9][1], args[9][0], *args[9][2:]]
    with pytest.raises(ContractRevert, match="openings not sorted|update not in round"):
        d.transact("prove_fraud", *bad, sender=out)
    bad = list(args)
    o = list(args[9][0])
    o[5] = [v + 1 for v in o[5]]
    bad[9] = [tuple(o), *args[9][1:]]
    with pytest.raises(ContractRevert, match="chunk not in update"):
        d.transact("prove_fraud", *bad, sender=out)
    bad = list(args)
    bad[10] = [v - 10**9 for v in args[10]]
    with pytest.raises(ContractRevert, match="bad low hint"):
        d.transact("prove_fraud", *bad, sender=out)
    bad = list(args)
    bad[7] = [v + 1 for v in args[7]]
    with pytest.raises(ContractRevert, match="model chunk not in round"):
        d.transact("prove_fraud", *bad, sender=out)
    bad = list(args)
    bad[3] = (data[0], data[1], data[2], keccak(b"other"))
    with pytest.raises(ContractRevert, match="does not match commitment"):
        d.transact("prove_fraud", *bad, sender=out)
    with pytest.raises(ContractRevert, match="round not committed"):
        d.transact("prove_fraud", job, 1, *args[2:], sender=out)
    d.transact("prove_fraud", *args, sender=out)  # the untampered proof goes through


# ---------------------------------------------------------------- secure-sum rounds (SecAgg+)


def _secure_round(mk, n, seed, drop_after_mask=frozenset()):
    """A real SecAgg+ round over `make_updates`: masked weight*q per provider, the exact sum, the correction."""
    from fedmarket.privacy.secagg import SecAggConfig, run_round
    from fedmarket.roles.secure_round import correction, secure_mean

    ups = make_updates(mk.w, n, seed=seed)
    cfg = SecAggConfig.for_population(n, D, round_id=b"test-%d" % seed, graph_seed=b"graph")
    inputs = {i: u.q * np.int64(u.weight) for i, u in enumerate(ups)}
    res = run_round(cfg, inputs, drop_after_mask=set(drop_after_mask))
    captured = {u: y.view(np.int64) for u, y in res.masked.items()}
    masked = [RoundUpdate(u.provider, captured[i], u.weight, CS) for i, u in enumerate(ups)]
    corr = correction({i: captured[i] for i in range(n)}, res.total)
    model = secure_mean([m.q for m in masked], corr, [u.weight for u in ups])
    assert np.array_equal(model, fedavg_int([u.q for u in ups], [u.weight for u in ups]))  # the sum is exact
    return masked, corr, model


def _commit_secure(mk, job, r, model_q, masked, corr):
    from fedmarket.protocol.encoding import vector_root, vector_tree
    from fedmarket.protocol.proofs import updates_tree

    data = (vector_tree(model_q, CS).root, updates_tree(masked, vector_root(corr, CS)).root, len(masked), METRICS)
    mk.m.transact("submit_round", job, r, data[0], "bafkreimodel", data[1], data[2], data[3], 0, sender=mk.w["aggregator"])
    return data


@pytest.mark.parametrize("n, drop", [(4, ()), (5, (1,))])
def test_secure_sum_round_is_checked_in_the_ring(mk, n, drop):
    job = _job(mk, n, 3, 0)
    masked, corr, model = _secure_round(mk, n, seed=20 + n, drop_after_mask=drop)
    bad = model.copy()
    bad[64 + 9] -= 1
    data = _commit_secure(mk, job, 0, bad, masked, corr)
    kw = dict(job_id=job, round_=0, chunk_size=CS, rule=3, trim=0, prev_model_q=None, prev_data=None,
              new_model_q=bad, data=data, updates=masked, correction=corr)
    d, out = mk.dep.disputes, mk.w["outsider"]
    for chunk in (0, 2):
        with pytest.raises(ContractRevert, match="aggregate is correct"):
            d.transact("prove_fraud", *fraud_proof(chunk_index=chunk, **kw), sender=out)
    args = list(fraud_proof(chunk_index=1, **kw))
    no_corr = list(args)
    no_corr[9] = args[9][:-1]
    with pytest.raises(ContractRevert, match="need every update"):
        d.transact("prove_fraud", *no_corr, sender=out)
    forged = list(args)
    leaf = list(args[9][-1])
    leaf[2] = 1  # a correction leaf with weight
    forged[9] = [*args[9][:-1], tuple(leaf)]
    with pytest.raises(ContractRevert, match="bad correction leaf"):
        d.transact("prove_fraud", *forged, sender=out)
    altered = list(args)
    leaf = list(args[9][-1])
    leaf[5] = [v + 1 for v in leaf[5]]
    altered[9] = [*args[9][:-1], tuple(leaf)]
    with pytest.raises(ContractRevert, match="chunk not in update"):
        d.transact("prove_fraud", *altered, sender=out)
    r = d.transact("prove_fraud", *args, sender=out)
    assert r.event("FraudProven")["chunk"] == 1 and mk.dep.job(job)["state"] == JobState.FAILED


def test_secure_sum_without_the_correction_is_not_a_proof(mk):
    """Proving against the plain sum of masked values (as if no masks existed) fails: the contract subtracts the committed correction."""
    job = _job(mk, 4, 3, 0)
    masked, corr, model = _secure_round(mk, 4, seed=31)
    data = _commit_secure(mk, job, 0, model, masked, corr)
    for chunk in range(3):
        args = fraud_proof(job_id=job, round_=0, chunk_index=chunk, chunk_size=CS, rule=3, trim=0, prev_model_q=None,
                           prev_data=None, new_model_q=model, data=data, updates=masked, correction=corr)
        with pytest.raises(ContractRevert, match="aggregate is correct"):
            mk.dep.disputes.transact("prove_fraud", *args, sender=mk.w["outsider"])


def test_trimmed_mean_round_with_too_few_updates_is_fraud(mk):
    job = _job(mk, 2, 2, 1)
    ups = make_updates(mk.w, 2, seed=5)
    model = fedavg_int([u.q for u in ups], [u.weight for u in ups])
    data = commit(mk, job, 0, model, ups)
    args = fraud_proof(job_id=job, round_=0, chunk_index=0, chunk_size=CS, rule=2, trim=1,
                       prev_model_q=None, prev_data=None, new_model_q=model, data=data, updates=ups)
    r = mk.dep.disputes.transact("prove_fraud", *args, sender=mk.w["outsider"])
    assert r.event("FraudProven")["round"] == 0 and mk.dep.job(job)["state"] == JobState.FAILED


# ---------------------------------------------------------------- censorship


def _receipts(mk, job, r, upd, acct):
    dep = mk.dep
    psig = sign(UpdateReceipt(job, r, upd.root, upd.weight), acct, dep)
    asig = sign(ReceiptAck(job, r, upd.provider, upd.root, upd.weight), mk.w["aggregator"], dep)
    return psig, asig


def test_censored_update_is_proven(mk):
    job = _job(mk, 3, 0, 0)
    ups = make_updates(mk.w, 3, seed=6)
    victim = ups[1]
    kept = [ups[0], ups[2]]
    model = fedavg_int([u.q for u in kept], [u.weight for u in kept])
    data = commit(mk, job, 0, model, kept)
    acct = next(a for a in mk.w["providers"] if a.address == victim.provider)
    psig, asig = _receipts(mk, job, 0, victim, acct)
    leaf, proof = censorship_leaf(kept, victim.provider)
    r = mk.dep.disputes.transact("prove_censorship", job, 0, data, victim.provider, victim.root, victim.weight,
                                 psig, asig, leaf, proof, sender=mk.w["outsider"])
    assert r.event("CensorshipProven")["provider"] == victim.provider
    assert r.event("JobFailed")["reason"] == "censored update"
    assert mk.dep.job(job)["state"] == JobState.FAILED


def test_censorship_claims_that_fail(mk):
    job = _job(mk, 3, 0, 0)
    ups = make_updates(mk.w, 3, seed=7)
    model = fedavg_int([u.q for u in ups], [u.weight for u in ups])
    data = commit(mk, job, 0, model, ups)
    d, out = mk.dep.disputes, mk.w["outsider"]
    u = ups[0]
    acct = next(a for a in mk.w["providers"] if a.address == u.provider)
    psig, asig = _receipts(mk, job, 0, u, acct)
    leaf, proof = censorship_leaf(ups, u.provider)
    with pytest.raises(ContractRevert, match="update is in the round"):
        d.transact("prove_censorship", job, 0, data, u.provider, u.root, u.weight, psig, asig, leaf, proof, sender=out)
    with pytest.raises(ContractRevert, match="bad aggregator signature"):
        d.transact("prove_censorship", job, 0, data, u.provider, u.root, u.weight, psig, psig, leaf, proof, sender=out)
    with pytest.raises(ContractRevert, match="bad provider signature"):
        d.transact("prove_censorship", job, 0, data, u.provider, u.root, u.weight + 1, psig, asig, leaf, proof, sender=out)
    with pytest.raises(ContractRevert, match="not a provider of the job"):
        d.transact("prove_censorship", job, 0, data, out.address, u.root, u.weight, psig, asig, leaf, proof, sender=out)
    bad_leaf = (leaf[0], leaf[1], leaf[2], leaf[3] + 1, leaf[4])
    with pytest.raises(ContractRevert, match="leaf not in round"):
        d.transact("prove_censorship", job, 0, data, u.provider, u.root, u.weight, psig, asig, bad_leaf, proof, sender=out)


def test_altered_update_counts_as_censorship(mk):
    job = _job(mk, 3, 0, 0)
    ups = make_updates(mk.w, 3, seed=8)
    u = ups[2]
    acct = next(a for a in mk.w["providers"] if a.address == u.provider)
    psig, asig = _receipts(mk, job, 0, u, acct)
    altered = [ups[0], ups[1], RoundUpdate(u.provider, u.q, u.weight + 5, CS)]
    model = fedavg_int([x.q for x in altered], [x.weight for x in altered])
    data = commit(mk, job, 0, model, altered)
    leaf, proof = censorship_leaf(altered, u.provider)
    mk.dep.disputes.transact("prove_censorship", job, 0, data, u.provider, u.root, u.weight, psig, asig, leaf, proof,
                             sender=mk.w["outsider"])
    assert mk.dep.job(job)["state"] == JobState.FAILED


# ---------------------------------------------------------------- attestations


def _validated_job(mk, stakes=(VAL_STAKE, VAL_STAKE, 2 * VAL_STAKE)):
    job = mk.post(min_providers=2, max_providers=2, max_validators=len(stakes))
    mk.accept(job)
    mk.join(job, 0)
    mk.join(job, 1)
    for i, s in enumerate(stakes):
        mk.join_validator(job, i, s)
    mk.m.transact("start", job, sender=mk.w["aggregator"])
    ups = make_updates(mk.w, 2, seed=9)
    model = fedavg_int([u.q for u in ups], [u.weight for u in ups])
    return job, commit(mk, job, 0, model, ups)


def _attest(mk, job, data, idx, scores=b"\x05" * 32, round_=0):
    vals = sorted((mk.w["validators"][i] for i in idx), key=lambda a: address_key(a.address))
    sigs = [sign(Attestation(job, round_, data[0], scores), v, mk.dep) for v in vals]
    return mk.dep.disputes.transact("attest", job, round_, data, scores, [v.address for v in vals], sigs,
                                    sender=mk.w["outsider"])


def test_quorum_is_two_thirds_of_validator_stake(mk):
    job, data = _validated_job(mk)
    d = mk.dep.disputes
    assert not d.call("has_quorum", job, 0)
    r = _attest(mk, job, data, [0, 1])  # 100 of 200
    assert len([e for e in r.events if e.name == "RoundAttested"]) == 2
    assert not d.call("has_quorum", job, 0)
    # what the market asks, passing the stake total from its own storage, agrees with has_quorum
    total = mk.dep.job(job)["validator_total_stake"]
    assert total == 4 * VAL_STAKE and not d.call("quorum_of", job, 0, total) and d.call("quorum_of", job, 0, 150 * 10**18)
    r = _attest(mk, job, data, [2])  # 200 of 200
    assert r.event("QuorumReached")["attested_stake"] == 4 * VAL_STAKE
    assert d.call("has_quorum", job, 0) and d.call("quorum_of", job, 0, total)
    assert d.call("attestation_of", job, 0, mk.w["validators"][2].address) == b"\x05" * 32
    # the next round may now be committed
    ups = make_updates(mk.w, 2, seed=10)
    commit(mk, job, 1, fedavg_int([u.q for u in ups], [u.weight for u in ups]), ups)


def test_attestation_errors(mk):
    job, data = _validated_job(mk)
    d, out = mk.dep.disputes, mk.w["outsider"]
    vals = sorted(mk.w["validators"][:2], key=lambda a: address_key(a.address))
    S = b"\x07" * 32
    zero_sigs = [sign(Attestation(job, 0, data[0], ZERO32), v, mk.dep) for v in vals]
    with pytest.raises(ContractRevert, match="empty scores root"):
        d.transact("attest", job, 0, data, ZERO32, [v.address for v in vals], zero_sigs, sender=out)
    sigs = [sign(Attestation(job, 0, data[0], S), v, mk.dep) for v in vals]
    with pytest.raises(ContractRevert, match="validators not ascending"):
        d.transact("attest", job, 0, data, S, [vals[1].address, vals[0].address], [sigs[1], sigs[0]], sender=out)
    with pytest.raises(ContractRevert, match="bad attestation signature"):
        d.transact("attest", job, 0, data, S, [v.address for v in vals], [sigs[1], sigs[0]], sender=out)
    with pytest.raises(ContractRevert, match="bad signature list"):
        d.transact("attest", job, 0, data, S, [vals[0].address], sigs, sender=out)
    with pytest.raises(ContractRevert, match="does not match commitment"):
        d.transact("attest", job, 0, (data[0], data[1], 3, data[3]), S, [v.address for v in vals], sigs, sender=out)
    outsider_sig = sign(Attestation(job, 0, data[0], S), out, mk.dep)
    with pytest.raises(ContractRevert, match="not a validator of the job"):
        d.transact("attest", job, 0, data, S, [out.address], [outsider_sig], sender=out)
    d.transact("attest", job, 0, data, S, [v.address for v in vals], sigs, sender=out)
    with pytest.raises(ContractRevert, match="already attested"):
        d.transact("attest", job, 0, data, S, [vals[0].address], [sigs[0]], sender=out)


def test_equivocating_validator_is_slashed_to_the_treasury(mk):
    job, data = _validated_job(mk)
    dep, out, v = mk.dep, mk.w["outsider"], mk.w["validators"][0]
    a = Attestation(job, 0, data[0], b"\x01" * 32)
    b = Attestation(job, 0, data[0], b"\x02" * 32)
    sa, sb = sign(a, v, dep), sign(b, v, dep)
    with pytest.raises(ContractRevert, match="attestations are identical"):
        dep.disputes.transact("prove_equivocation", job, 0, v.address, a.model_root, a.scores_root, sa,
                              a.model_root, a.scores_root, sa, sender=out)
    with pytest.raises(ContractRevert, match="second signature invalid"):
        dep.disputes.transact("prove_equivocation", job, 0, v.address, a.model_root, a.scores_root, sa,
                              b.model_root, b.scores_root, sign(b, mk.w["validators"][1], dep), sender=out)
    t_before, o_before = dep.balance(mk.w["treasury"].address), dep.balance(out.address)
    r = dep.disputes.transact("prove_equivocation", job, 0, v.address, a.model_root, a.scores_root, sa,
                              b.model_root, b.scores_root, sb, sender=out)
    ev = r.event("StakeSlashed")
    assert (ev["account"], ev["role"], ev["amount"]) == (v.address, Role.VALIDATOR, VAL_STAKE)
    assert dep.balance(out.address) - o_before == VAL_STAKE // 2
    assert dep.balance(mk.w["treasury"].address) - t_before == VAL_STAKE // 2
    assert dep.job(job)["validator_total_stake"] == 3 * VAL_STAKE
    with pytest.raises(ContractRevert, match="not a validator of the job"):  # slashed once
        dep.disputes.transact("prove_equivocation", job, 0, v.address, a.model_root, a.scores_root, sa,
                              b.model_root, b.scores_root, sb, sender=out)


def test_equivocation_after_release_takes_unbonding_stake(mk):
    """Stake released at the end of a job stays slashable through the unbonding delay."""
    job, data = _validated_job(mk, stakes=(VAL_STAKE,))
    dep, v, out = mk.dep, mk.w["validators"][0], mk.w["outsider"]
    mk.chain.advance_time(501)
    dep.market.transact("fail", job, sender=out)
    dep.market.transact("release_stake", job, v.address, sender=v)
    dep.market.transact("request_unbond", Role.VALIDATOR, VAL_STAKE, sender=v)
    a, b = Attestation(job, 0, data[0], b"\x01" * 32), Attestation(job, 0, data[0], b"\x02" * 32)
    r = dep.disputes.transact("prove_equivocation", job, 0, v.address, a.model_root, a.scores_root, sign(a, v, dep),
                              b.model_root, b.scores_root, sign(b, v, dep), sender=out)
    assert r.event("StakeSlashed")["amount"] == VAL_STAKE
    assert dep.market.call("unbonding", v.address, Role.VALIDATOR)["amount"] == 0


# ---------------------------------------------------------------- validator supermajority against a provider


def _reports(mk, job, provider, idx):
    from fedmarket.protocol.receipts import Misbehaviour

    vals = sorted((mk.w["validators"][i] for i in idx), key=lambda a: address_key(a.address))
    return [v.address for v in vals], [sign(Misbehaviour(job, provider), v, mk.dep) for v in vals]


def test_misbehaviour_digest_matches_the_contract(mk):
    from fedmarket.protocol.receipts import Misbehaviour

    p = mk.w["providers"][0].address
    assert Misbehaviour(7, p).digest(mk.dep.chain_id, mk.dep.disputes.address) == mk.dep.disputes.call("misbehaviour_digest", 7, p)


def test_a_provider_is_slashed_only_by_two_thirds_of_the_validator_stake(mk):
    job, _ = _validated_job(mk)  # stakes 50, 50, 100: validator 2 alone holds half
    dep, out, d = mk.dep, mk.w["outsider"], mk.dep.disputes
    target = mk.w["providers"][0].address
    vals, sigs = _reports(mk, job, target, [2])
    with pytest.raises(ContractRevert, match="no validator supermajority"):
        d.transact("slash_provider", job, target, vals, sigs, sender=out)
    vals, sigs = _reports(mk, job, target, [0, 1])
    with pytest.raises(ContractRevert, match="no validator supermajority"):
        d.transact("slash_provider", job, target, vals, sigs, sender=out)
    vals, sigs = _reports(mk, job, target, [0, 2])
    with pytest.raises(ContractRevert, match="validators not ascending"):
        d.transact("slash_provider", job, target, vals[::-1], sigs[::-1], sender=out)
    with pytest.raises(ContractRevert, match="bad misbehaviour signature"):
        d.transact("slash_provider", job, target, vals, sigs[::-1], sender=out)
    with pytest.raises(ContractRevert, match="bad signature list"):
        d.transact("slash_provider", job, target, vals, sigs[:1], sender=out)
    other, osigs = _reports(mk, job, mk.w["providers"][1].address, [0, 2])
    with pytest.raises(ContractRevert, match="bad misbehaviour signature"):  # signed about someone else
        d.transact("slash_provider", job, target, other, osigs, sender=out)
    with pytest.raises(ContractRevert, match="not a provider of the job"):
        d.transact("slash_provider", job, out.address, *_reports(mk, job, out.address, [0, 2]), sender=out)
    o_before, t_before = dep.balance(out.address), dep.balance(mk.w["treasury"].address)
    r = d.transact("slash_provider", job, target, vals, sigs, sender=out)
    assert r.event("ProviderSlashed")["attested_stake"] == 3 * VAL_STAKE
    stake = dep.job(job)["provider_stake"]
    assert dep.balance(out.address) - o_before == stake // 2
    assert dep.balance(mk.w["treasury"].address) - t_before == stake - stake // 2
    assert not dep.market.call("is_provider", job, target)  # its later updates are refused
    with pytest.raises(ContractRevert, match="not a provider of the job"):  # once
        d.transact("slash_provider", job, target, vals, sigs, sender=out)


def test_no_provider_slashing_without_validators_or_outside_training(mk):
    job = mk.training()
    p = mk.w["providers"][0].address
    with pytest.raises(ContractRevert, match="job has no validators"):
        mk.dep.disputes.transact("slash_provider", job, p, [mk.w["validators"][0].address], [b"\x00" * 65],
                                 sender=mk.w["outsider"])
    open_job = mk.post(max_validators=3)
    with pytest.raises(ContractRevert, match="job not disputable"):
        mk.dep.disputes.transact("slash_provider", open_job, p, *_reports(mk, open_job, p, [0]), sender=mk.w["outsider"])


def test_round_seeds_are_public_block_hashes(mk):
    job = mk.post(min_providers=2, max_providers=2)
    mk.accept(job)
    mk.join(job, 0)
    mk.join(job, 1)
    started = mk.m.transact("start", job, sender=mk.w["aggregator"]).event("TrainingStarted")
    committed = mk.commit(job, 0).event("RoundCommitted")
    assert started["seed"] != ZERO32 and committed["next_seed"] != ZERO32 and started["seed"] != committed["next_seed"]


# ---------------------------------------------------------------- validators approve the reward root


def _approvals(mk, job, root, total, idx):
    from fedmarket.protocol.receipts import RewardsApproval

    vals = sorted((mk.w["validators"][i] for i in idx), key=lambda a: address_key(a.address))
    return [v.address for v in vals], [sign(RewardsApproval(job, root, total), v, mk.dep) for v in vals]


def test_a_validated_job_posts_only_a_reward_root_two_thirds_of_its_validators_signed(mk):
    job, data = _validated_job(mk)  # stakes 50, 50, 100
    _attest(mk, job, data, [0, 1, 2])
    ups = make_updates(mk.w, 2, seed=10)
    data1 = commit(mk, job, 1, fedavg_int([u.q for u in ups], [u.weight for u in ups]), ups)  # the second of two rounds
    _attest(mk, job, data1, [0, 1, 2], round_=1)
    d, agg, out = mk.dep.disputes, mk.w["aggregator"], mk.w["outsider"]
    root, total = keccak(b"rewards"), ESCROW // 2
    with pytest.raises(ContractRevert, match="rewards not approved by validators"):
        mk.m.transact("post_rewards", job, root, total, "c", sender=agg)
    d.transact("approve_rewards", job, root, total, *_approvals(mk, job, root, total, [0, 1]), sender=out)
    assert not d.call("rewards_approved", job, root, total)  # 100 of 200: not two thirds
    with pytest.raises(ContractRevert, match="already approved"):
        d.transact("approve_rewards", job, root, total, *_approvals(mk, job, root, total, [0]), sender=out)
    other = keccak(b"self-serving root")
    with pytest.raises(ContractRevert, match="bad rewards signature"):  # signed for another root
        vals, sigs = _approvals(mk, job, root, total, [2])
        d.transact("approve_rewards", job, other, total, vals, sigs, sender=out)
    from fedmarket.protocol.receipts import RewardsApproval

    stranger = mk.w["providers"][0]
    with pytest.raises(ContractRevert, match="not a validator of the job"):
        d.transact("approve_rewards", job, root, total, [stranger.address],
                   [sign(RewardsApproval(job, root, total), stranger, mk.dep)], sender=out)
    d.transact("approve_rewards", job, root, total, *_approvals(mk, job, root, total, [2]), sender=out)
    assert d.call("rewards_approved", job, root, total) and not d.call("rewards_approved", job, other, total)
    with pytest.raises(ContractRevert, match="rewards not approved by validators"):
        mk.m.transact("post_rewards", job, other, total, "c", sender=agg)  # a root they did not sign
    with pytest.raises(ContractRevert, match="rewards not approved by validators"):
        mk.m.transact("post_rewards", job, root, total + 1, "c", sender=agg)  # nor another total
    mk.m.transact("post_rewards", job, root, total, "c", sender=agg)
    assert mk.dep.job(job)["reward_root"] == root
