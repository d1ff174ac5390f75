"""JobMarket on the embedded EVM: every external function, its events, and its revert paths."""

from __future__ import annotations

import pytest
from conftest import AGG_STAKE, ESCROW, ROOT, STAKE, TOKEN, UPD, VAL_STAKE, ZERO32
from eth_utils import keccak

from fedmarket.errors import ContractRevert
from fedmarket.market import JobState, Role

# ---------------------------------------------------------------- post_job


def test_post_job_locks_escrow_and_emits(mk):
    dep, req = mk.dep, mk.w["requester"]
    before = dep.balance(req.address)
    job = mk.post()
    assert dep.balance(req.address) == before - ESCROW
    assert dep.balance(dep.market.address) == ESCROW
    info = dep.job(job)
    assert info["state"] == JobState.OPEN and info["escrow"] == ESCROW and info["requester"] == req.address
    assert (info["provider_stake"], info["aggregator_stake"], info["chunk_size"]) == (STAKE, AGG_STAKE, 64)
    ev = dep.market.events("JobPosted", job_id=job)[0]
    assert ev["spec_hash"] == keccak(b"spec") and ev["spec_cid"] == "bafkreispec" and ev["escrow"] == ESCROW


@pytest.mark.parametrize(
    "over, reason",
    [
        ({"escrow": 0}, "escrow is zero"),
        ({"spec_hash": ZERO32}, "empty spec hash"),
        ({"aggregator": "0x" + "00" * 20}, "aggregator is zero"),
        ({"rounds": 0}, "bad round count"),
        ({"rounds": 10_001}, "bad round count"),
        ({"min_providers": 0}, "min providers is zero"),
        ({"min_providers": 4, "max_providers": 3}, "min above max providers"),
        ({"max_providers": 1_000_001}, "too many providers"),
        ({"max_validators": 33}, "too many validators"),
        ({"join_deadline": 0}, "join deadline passed"),
        ({"round_duration": 0}, "round duration is zero"),
        ({"claim_period": 0}, "claim period is zero"),
        ({"rule": 4}, "unknown rule"),
        ({"rule": 0, "trim": 1}, "trim without trimmed mean"),
        ({"chunk_size": 65}, "bad chunk size"),
        ({"chunk_size": 0}, "bad chunk size"),
        ({"rule": 2, "trim": 0}, "trim is zero"),
    ],
)
def test_post_job_rejects_bad_terms(mk, over, reason):
    with pytest.raises(ContractRevert, match=reason):
        mk.post(**over)
    assert mk.m.call("job_count") == 0


def test_requester_cannot_be_its_own_aggregator(mk):
    with pytest.raises(ContractRevert, match="requester cannot aggregate"):
        mk.post(aggregator=mk.w["requester"].address)


def test_post_job_without_allowance_moves_nothing(mk):
    req = mk.w["requester"]
    mk.dep.token.transact("approve", mk.m.address, 0, sender=req)
    before = mk.dep.balance(req.address)
    with pytest.raises(ContractRevert):
        mk.post()
    assert mk.dep.balance(req.address) == before and mk.m.call("job_count") == 0


# ---------------------------------------------------------------- staking


def test_deposit_unbond_withdraw_cycle(mk):
    v = mk.w["validators"][0]
    m = mk.m
    before = mk.dep.balance(v.address)
    ev = m.transact("deposit", Role.VALIDATOR, 30 * TOKEN, sender=v).event("StakeDeposited")
    assert (ev["role"], ev["amount"]) == (Role.VALIDATOR, 30 * TOKEN)
    assert m.call("free_stake", v.address, Role.VALIDATOR) == 30 * TOKEN
    with pytest.raises(ContractRevert, match="not enough free stake"):
        m.transact("request_unbond", Role.VALIDATOR, 31 * TOKEN, sender=v)
    ev = m.transact("request_unbond", Role.VALIDATOR, 20 * TOKEN, sender=v).event("UnbondRequested")
    assert ev["release_time"] == mk.chain.timestamp() + 1_000
    with pytest.raises(ContractRevert, match="still unbonding"):
        m.transact("withdraw", Role.VALIDATOR, sender=v)
    mk.chain.advance_time(1_000)
    assert m.transact("withdraw", Role.VALIDATOR, sender=v).event("StakeWithdrawn")["amount"] == 20 * TOKEN
    assert mk.dep.balance(v.address) == before - 10 * TOKEN
    with pytest.raises(ContractRevert, match="nothing unbonding"):
        m.transact("withdraw", Role.VALIDATOR, sender=v)


@pytest.mark.parametrize(
    "fn, args, reason",
    [
        ("deposit", (0, TOKEN), "bad role"),
        ("deposit", (4, TOKEN), "bad role"),
        ("deposit", (1, 0), "amount is zero"),
        ("request_unbond", (1, 0), "amount is zero"),
    ],
)
def test_staking_rejects_bad_input(mk, fn, args, reason):
    with pytest.raises(ContractRevert, match=reason):
        mk.m.transact(fn, *args, sender=mk.w["providers"][0])


def test_join_uses_free_stake_before_the_wallet(mk):
    p = mk.w["providers"][0]
    mk.m.transact("deposit", Role.PROVIDER, 4 * TOKEN, sender=p)
    job = mk.post()
    before = mk.dep.balance(p.address)
    mk.join(job, 0)
    assert mk.dep.balance(p.address) == before - (STAKE - 4 * TOKEN)
    assert mk.m.call("free_stake", p.address, Role.PROVIDER) == 0
    assert mk.m.call("membership", job, p.address) == (Role.PROVIDER, STAKE)


def test_only_disputes_may_slash_or_fail(mk):
    job = mk.training()
    with pytest.raises(ContractRevert, match="caller is not disputes"):
        mk.m.transact("slash", job, mk.w["providers"][0].address, mk.w["outsider"].address, sender=mk.w["requester"])
    with pytest.raises(ContractRevert, match="caller is not disputes"):
        mk.m.transact("fail_proven", job, 0, mk.w["outsider"].address, "x", sender=mk.w["aggregator"])


# ---------------------------------------------------------------- open


def test_accept_and_join_lock_stakes(mk):
    job = mk.post()
    ev = mk.accept(job).event("JobAccepted")
    assert ev["stake"] == AGG_STAKE and mk.dep.job(job)["accepted"]
    r = mk.join(job, 0)
    assert r.event("ProviderJoined")["n_providers"] == 1
    assert mk.m.call("membership", job, mk.w["providers"][0].address) == (Role.PROVIDER, STAKE)
    assert mk.m.call("is_provider", job, mk.w["providers"][0].address)
    assert mk.dep.balance(mk.m.address) == ESCROW + AGG_STAKE + STAKE
    with pytest.raises(ContractRevert, match="already a participant"):
        mk.join(job, 0)
    with pytest.raises(ContractRevert, match="already a participant"):
        mk.accept(job)


def test_accept_rules(mk):
    job = mk.post()
    with pytest.raises(ContractRevert, match="caller is not the aggregator"):
        mk.m.transact("accept", job, sender=mk.w["outsider"])
    with pytest.raises(ContractRevert, match="job not open"):
        mk.m.transact("accept", 99, sender=mk.w["aggregator"])


def test_join_rejects_full_late_and_unknown_jobs(mk):
    job = mk.post(min_providers=1, max_providers=1)
    mk.join(job, 0)
    with pytest.raises(ContractRevert, match="job is full"):
        mk.join(job, 1)
    with pytest.raises(ContractRevert, match="job not open"):
        mk.join(99, 1)
    job2 = mk.post()
    mk.chain.advance_time(1000)
    with pytest.raises(ContractRevert, match="join deadline passed"):
        mk.join(job2, 1)


def test_join_validator_rules(mk):
    job = mk.post(max_validators=1)
    with pytest.raises(ContractRevert, match="stake below minimum"):
        mk.join_validator(job, 0, VAL_STAKE - 1)
    with pytest.raises(ContractRevert, match="requester cannot validate"):
        mk.m.transact("join_validator", job, VAL_STAKE, sender=mk.w["requester"])
    ev = mk.join_validator(job, 0, 2 * VAL_STAKE).event("ValidatorJoined")
    assert ev["stake"] == 2 * VAL_STAKE and mk.dep.job(job)["validator_total_stake"] == 2 * VAL_STAKE
    with pytest.raises(ContractRevert, match="validator set full"):
        mk.join_validator(job, 1)
    mk.chain.advance_time(1000)
    with pytest.raises(ContractRevert, match="job not open|join deadline passed"):
        mk.join_validator(job, 1)


def test_start_rules(mk):
    dep, agg, out = mk.dep, mk.w["aggregator"], mk.w["outsider"]
    job = mk.post(min_providers=2)
    mk.join(job, 0)
    mk.join(job, 1)
    with pytest.raises(ContractRevert, match="aggregator has not accepted"):
        dep.market.transact("start", job, sender=agg)
    mk.accept(job)
    with pytest.raises(ContractRevert, match="join window still open"):
        dep.market.transact("start", job, sender=out)
    r = dep.market.transact("start", job, sender=mk.w["requester"])
    assert r.event("TrainingStarted")["n_providers"] == 2
    assert dep.job(job)["state"] == JobState.TRAINING
    with pytest.raises(ContractRevert, match="job not open"):
        dep.market.transact("start", job, sender=agg)


def test_start_needs_enough_providers_and_anyone_may_start_late(mk):
    job = mk.post(min_providers=2)
    mk.accept(job)
    mk.join(job, 0)
    with pytest.raises(ContractRevert, match="too few providers"):
        mk.m.transact("start", job, sender=mk.w["aggregator"])
    mk.join(job, 1)
    mk.chain.advance_time(1000)
    mk.m.transact("start", job, sender=mk.w["outsider"])
    assert mk.dep.job(job)["state"] == JobState.TRAINING


# ---------------------------------------------------------------- training


def test_submit_round_rules_and_commitment(mk):
    job = mk.training()
    m, agg = mk.m, mk.w["aggregator"]
    with pytest.raises(ContractRevert, match="not the aggregator"):
        m.transact("submit_round", job, 0, ROOT, "c", UPD, 2, ZERO32, 0, sender=mk.w["outsider"])
    with pytest.raises(ContractRevert, match="wrong round"):
        mk.commit(job, 1)
    with pytest.raises(ContractRevert, match="bad update count"):
        mk.commit(job, 0, count=3)
    with pytest.raises(ContractRevert, match="bad update count"):
        mk.commit(job, 0, count=0)
    with pytest.raises(ContractRevert, match="empty root"):
        mk.commit(job, 0, model_root=ZERO32)
    with pytest.raises(ContractRevert, match="empty model cid"):
        mk.commit(job, 0, cid="")
    ev = mk.commit(job, 0, metrics=b"\x01" * 32).event("RoundCommitted")
    assert (ev["round"], ev["model_root"], ev["model_cid"], ev["count"]) == (0, ROOT, "bafkreimodel", 2)
    assert m.call("round_commitment", job, 0) == keccak(ROOT + UPD + (2).to_bytes(32, "big") + b"\x01" * 32)
    mk.chain.advance_time(501)
    with pytest.raises(ContractRevert, match="round deadline passed"):
        mk.commit(job, 1)


def test_spent_epsilon_is_committed_and_capped_by_the_budget(mk):
    job = mk.training(privacy_budget=2_000_000)  # epsilon 2.0 in millionths
    with pytest.raises(ContractRevert, match="privacy budget exceeded"):
        mk.commit(job, 0, epsilon=2_000_001)
    assert mk.commit(job, 0, epsilon=1_250_000).event("RoundCommitted")["epsilon_spent"] == 1_250_000
    assert mk.commit(job, 1, epsilon=2_000_000).event("RoundCommitted")["epsilon_spent"] == 2_000_000


def test_a_job_without_privacy_budget_commits_zero_epsilon(mk):
    job = mk.training()
    with pytest.raises(ContractRevert, match="privacy budget exceeded"):
        mk.commit(job, 0, epsilon=1)
    assert mk.commit(job, 0).event("RoundCommitted")["epsilon_spent"] == 0


def test_trim_only_with_the_trimmed_mean(mk):
    with pytest.raises(ContractRevert, match="trim without trimmed mean"):
        mk.post(rule=0, trim=1)
    with pytest.raises(ContractRevert, match="unknown rule"):
        mk.post(rule=4)
    assert mk.post(rule=3) > 0  # the secure sum of masked updates


def test_round_waits_for_validator_quorum(mk):
    job = mk.training(validators=1)
    mk.commit(job, 0)
    with pytest.raises(ContractRevert, match="previous round lacks quorum"):
        mk.commit(job, 1)


def test_post_rewards_rules(mk):
    job = mk.training()
    agg = mk.w["aggregator"]
    with pytest.raises(ContractRevert, match="rounds not finished"):
        mk.m.transact("post_rewards", job, ROOT, 1, "c", sender=agg)
    mk.commit_all(job)
    with pytest.raises(ContractRevert, match="all rounds committed"):
        mk.commit(job, 2)
    with pytest.raises(ContractRevert, match="not the aggregator"):
        mk.m.transact("post_rewards", job, ROOT, 1, "c", sender=mk.w["outsider"])
    with pytest.raises(ContractRevert, match="rewards exceed escrow"):
        mk.m.transact("post_rewards", job, ROOT, ESCROW, "c", sender=agg)  # the 1% fee comes first
    with pytest.raises(ContractRevert, match="empty root"):
        mk.m.transact("post_rewards", job, ZERO32, 1, "c", sender=agg)
    r = mk.m.transact("post_rewards", job, ROOT, ESCROW * 99 // 100, "bafkreir", sender=agg)
    ev = r.event("RewardRootPosted")
    assert ev["reward_total"] == ESCROW * 99 // 100 and ev["rewards_cid"] == "bafkreir"
    assert mk.dep.job(job)["state"] == JobState.FINALIZING


# ---------------------------------------------------------------- settlement


def test_settle_pays_fee_and_refunds_unassigned(mk):
    dep, req, treasury = mk.dep, mk.w["requester"], mk.w["treasury"]
    job = mk.training()
    mk.commit_all(job)
    mk.rewards(job, [400 * TOKEN, 500 * TOKEN])
    with pytest.raises(ContractRevert, match="challenge window open"):
        mk.m.transact("settle", job, sender=mk.w["outsider"])
    mk.chain.advance_time(100)
    r_before, t_before = dep.balance(req.address), dep.balance(treasury.address)
    ev = mk.m.transact("settle", job, sender=mk.w["outsider"]).event("JobSettled")
    assert ev["fee"] == ESCROW // 100 and ev["refund"] == ESCROW - ESCROW // 100 - 900 * TOKEN
    assert dep.balance(treasury.address) - t_before == ev["fee"]
    assert dep.balance(req.address) - r_before == ev["refund"]
    with pytest.raises(ContractRevert, match="job not finalizing"):
        mk.m.transact("settle", job, sender=mk.w["outsider"])


def test_claim_pays_reward_and_stake_once(mk):
    dep = mk.dep
    job, leaves, tree = mk.settled()
    p = mk.w["providers"][0]
    before = dep.balance(p.address)
    r = mk.claim(job, leaves, tree, 0)
    assert r.event("RewardClaimed")["stake_released"] == STAKE
    assert r.event("ReputationChanged")["reputation"] == 1
    assert dep.balance(p.address) - before == leaves[0][2] + STAKE
    assert mk.m.call("reputation", p.address) == 1
    assert mk.m.call("is_claimed", job, 0) and not mk.m.call("is_claimed", job, 1)
    assert mk.m.call("membership", job, p.address) == (Role.PROVIDER, 0)
    with pytest.raises(ContractRevert, match="already claimed"):
        mk.claim(job, leaves, tree, 0, sender=p)


def test_claim_rejects_forged_leaves_and_bad_state(mk):
    job, leaves, tree = mk.settled()
    idx, acct, amount, rep = leaves[0]
    for forged in [(idx, acct, amount + 1, rep), (idx, acct, amount, rep + 5), (1, acct, amount, rep),
                   (idx, mk.w["outsider"].address, amount, rep)]:
        with pytest.raises(ContractRevert, match="invalid proof"):
            mk.m.transact("claim", job, *forged, tree.proof(0), sender=mk.w["outsider"])
    with pytest.raises(ContractRevert, match="bad index"):
        mk.m.transact("claim", job, 10**6, acct, amount, rep, tree.proof(0), sender=mk.w["outsider"])
    with pytest.raises(ContractRevert, match="job not settled"):
        mk.m.transact("claim", job + 1, *leaves[0], tree.proof(0), sender=mk.w["outsider"])


def test_claims_close_and_unclaimed_is_swept(mk):
    dep, req = mk.dep, mk.w["requester"]
    job, leaves, tree = mk.settled()
    mk.claim(job, leaves, tree, 0)
    with pytest.raises(ContractRevert, match="claim period open"):
        mk.m.transact("sweep", job, sender=mk.w["outsider"])
    mk.chain.advance_time(1000)
    with pytest.raises(ContractRevert, match="claim period over"):
        mk.claim(job, leaves, tree, 1)
    before = dep.balance(req.address)
    ev = mk.m.transact("sweep", job, sender=mk.w["outsider"]).event("UnclaimedSwept")
    assert ev["amount"] == leaves[1][2] and dep.balance(req.address) - before == leaves[1][2]
    with pytest.raises(ContractRevert, match="nothing to sweep"):
        mk.m.transact("sweep", job, sender=mk.w["outsider"])
    # the provider that never claimed still gets its stake back, to its wallet
    p1 = mk.w["providers"][1]
    before = dep.balance(p1.address)
    ev = mk.m.transact("release_stake", job, p1.address, sender=mk.w["outsider"]).event("StakeReleased")
    assert ev["amount"] == STAKE and dep.balance(p1.address) - before == STAKE
    # the aggregator's goes to its free stake and leaves through the unbonding delay
    agg = mk.w["aggregator"]
    mk.m.transact("release_stake", job, agg.address, sender=agg)
    assert mk.m.call("free_stake", agg.address, Role.AGGREGATOR) == AGG_STAKE
    with pytest.raises(ContractRevert, match="no stake locked"):
        mk.m.transact("release_stake", job, agg.address, sender=agg)


def test_cancel_refunds_requester_and_frees_stakes(mk):
    dep, req = mk.dep, mk.w["requester"]
    job = mk.post(min_providers=2)
    mk.accept(job)
    mk.join(job, 0)
    with pytest.raises(ContractRevert, match="join window still open"):
        mk.m.transact("cancel", job, sender=req)
    with pytest.raises(ContractRevert, match="job still running"):
        mk.m.transact("release_stake", job, mk.w["providers"][0].address, sender=mk.w["providers"][0])
    mk.chain.advance_time(1000)
    before = dep.balance(req.address)
    assert mk.m.transact("cancel", job, sender=mk.w["outsider"]).event("JobCancelled")["refund"] == ESCROW
    assert dep.balance(req.address) - before == ESCROW
    mk.m.transact("release_stake", job, mk.w["providers"][0].address, sender=mk.w["outsider"])
    mk.m.transact("release_stake", job, mk.w["aggregator"].address, sender=mk.w["outsider"])
    # only free aggregator stake is left in the market
    assert dep.balance(dep.market.address) == mk.m.call("free_stake", mk.w["aggregator"].address, Role.AGGREGATOR)


def test_cancel_when_the_aggregator_never_accepted(mk):
    job = mk.post(min_providers=1)
    mk.join(job, 0)
    mk.chain.advance_time(1000)
    mk.m.transact("cancel", job, sender=mk.w["outsider"])
    assert mk.dep.job(job)["state"] == JobState.CANCELLED


def test_requester_may_cancel_only_before_anyone_joins(mk):
    req = mk.w["requester"]
    job = mk.post()
    mk.m.transact("cancel", job, sender=req)
    assert mk.dep.job(job)["state"] == JobState.CANCELLED
    job2 = mk.post(min_providers=1)
    mk.accept(job2)
    mk.join(job2, 0)
    mk.chain.advance_time(1000)
    with pytest.raises(ContractRevert, match="enough providers joined"):
        mk.m.transact("cancel", job2, sender=req)


def test_fail_after_missed_round_refunds_and_slashes_aggregator(mk):
    dep, req, out = mk.dep, mk.w["requester"], mk.w["outsider"]
    job = mk.training()
    with pytest.raises(ContractRevert, match="deadline not missed"):
        mk.m.transact("fail", job, sender=out)
    mk.chain.advance_time(501)
    r_before, o_before = dep.balance(req.address), dep.balance(out.address)
    r = mk.m.transact("fail", job, sender=out)
    assert r.event("JobFailed")["refund"] == ESCROW and r.event("JobFailed")["reason"] == "deadline missed"
    slash = r.event("StakeSlashed")
    assert (slash["account"], slash["amount"], slash["challenger_share"]) == (mk.w["aggregator"].address, AGG_STAKE, AGG_STAKE // 2)
    assert dep.balance(req.address) - r_before == ESCROW + AGG_STAKE // 2
    assert dep.balance(out.address) - o_before == AGG_STAKE // 2
    for i in range(2):
        mk.m.transact("release_stake", job, mk.w["providers"][i].address, sender=out)
    assert dep.balance(dep.market.address) == 0
    with pytest.raises(ContractRevert, match="job not training"):
        mk.commit(job, 0)
    with pytest.raises(ContractRevert, match="no stake locked"):
        mk.m.transact("release_stake", job, mk.w["aggregator"].address, sender=out)


def test_views_for_disputes_and_licence(mk):
    job, _, tree = mk.settled()
    state, root, total, requester, price = mk.m.call("reward_terms", job)
    assert (state, root, total, requester, price) == (JobState.SETTLED, tree.root, 900 * TOKEN, mk.w["requester"].address, 0)
    st, agg, current, rule, trim, chunk, vstake = mk.m.call("dispute_terms", job)
    assert (st, agg, current, rule, trim, chunk, vstake) == (JobState.SETTLED, mk.w["aggregator"].address, 2, 0, 0, 64, 0)


def test_join_with_permit_needs_no_prior_approve(mk):
    from fedmarket.protocol.receipts import permit_signature

    p = mk.w["providers"][3]
    t = mk.dep.token
    t.transact("approve", mk.m.address, 0, sender=p)
    job = mk.post()
    deadline = mk.chain.timestamp() + 100
    v, r, s = permit_signature(t, p, mk.m.address, STAKE, deadline)
    before = mk.dep.balance(p.address)
    ev = mk.m.transact("join_with_permit", job, deadline, v, r, s, sender=p).event("ProviderJoined")
    assert ev["provider"] == p.address and ev["stake"] == STAKE
    assert mk.dep.balance(p.address) == before - STAKE
    assert t.call("allowance", p.address, mk.m.address) == 0


def test_join_with_a_bad_permit_falls_back_to_the_allowance(mk):
    from fedmarket.protocol.receipts import permit_signature

    p, other = mk.w["providers"][3], mk.w["providers"][4]
    t = mk.dep.token
    t.transact("approve", mk.m.address, 0, sender=p)
    job = mk.post()
    deadline = mk.chain.timestamp() + 100
    v, r, s = permit_signature(t, other, mk.m.address, STAKE, deadline)  # signed by someone else
    with pytest.raises(ContractRevert):
        mk.m.transact("join_with_permit", job, deadline, v, r, s, sender=p)
    assert not mk.m.call("is_provider", job, p.address)
    t.transact("approve", mk.m.address, STAKE, sender=p)
    mk.m.transact("join_with_permit", job, deadline, v, r, s, sender=p)  # the allowance carries it
    assert mk.m.call("is_provider", job, p.address)


def test_claims_never_exceed_the_reserved_reward_total(mk):
    """A root whose leaves sum to more than its declared total cannot pay from other jobs' funds."""
    from fedmarket.protocol.encoding import reward_leaf
    from fedmarket.protocol.merkle import MerkleTree

    other = mk.post()  # another job's escrow sits in the market too
    job = mk.training()
    mk.commit_all(job)
    leaves = [(0, mk.w["providers"][0].address, 500 * TOKEN, 1), (1, mk.w["providers"][1].address, 400 * TOKEN, 1)]
    tree = MerkleTree([reward_leaf(*l) for l in leaves])
    mk.m.transact("post_rewards", job, tree.root, 600 * TOKEN, "bafkreirewards", sender=mk.w["aggregator"])
    mk.chain.advance_time(100)
    mk.m.transact("settle", job, sender=mk.w["outsider"])
    mk.claim(job, leaves, tree, 0)
    with pytest.raises(ContractRevert, match="claims exceed rewards"):
        mk.claim(job, leaves, tree, 1)
    assert mk.dep.job(other)["escrow"] == ESCROW
    assert mk.dep.balance(mk.m.address) >= ESCROW  # the other job is still fully funded
