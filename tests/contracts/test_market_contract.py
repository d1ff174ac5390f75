"""JobMarket on the embedded EVM: each transition, its events, and its revert paths."""

from __future__ import annotations

import pytest
from eth_utils import keccak

from fedmarket.errors import ContractRevert
from fedmarket.market import JobState
from fedmarket.protocol.encoding import reward_leaf
from fedmarket.protocol.merkle import MerkleTree

TOKEN = 10**18
ESCROW = 1_000 * TOKEN
STAKE = 10 * TOKEN
ROOT = keccak(b"model")
UPD = keccak(b"updates")


def post(w, *, rounds=2, min_p=2, max_p=3, escrow=ESCROW, stake=STAKE, join_window=1000, challenge=100, claim=1000):
    dep, req = w["dep"], w["requester"]
    dep.token.transact("approve", dep.market.address, escrow, sender=req)
    r = dep.market.transact(
        "post_job", keccak(b"spec"), "bafkreispec", w["aggregator"].address, escrow, stake, min_p, max_p, rounds,
        w["chain"].timestamp() + join_window, 500, challenge, claim, sender=req,
    )
    return r.event("JobPosted")["job_id"]


def join(w, job, provider):
    dep = w["dep"]
    dep.token.transact("approve", dep.market.address, STAKE, sender=provider)
    return dep.market.transact("join", job, sender=provider)


def training_job(w, n=2, rounds=2):
    job = post(w, rounds=rounds, min_p=n, max_p=n)
    for p in w["providers"][:n]:
        join(w, job, p)
    w["dep"].market.transact("start", job, sender=w["aggregator"])
    return job


def commit_all(w, job, rounds=2):
    for r in range(rounds):
        w["dep"].market.transact("submit_round", job, r, ROOT, "bafkreimodel", UPD, 2, b"\x00" * 32, sender=w["aggregator"])


def rewards(w, job, amounts):
    leaves = [(i, p.address, a, 1) for i, (p, a) in enumerate(zip(w["providers"], amounts))]
    tree = MerkleTree([reward_leaf(*l) for l in leaves])
    w["dep"].market.transact("post_rewards", job, tree.root, sum(amounts), "bafkreirewards", sender=w["aggregator"])
    return leaves, tree


def settled_job(w, amounts=(400 * TOKEN, 500 * TOKEN)):
    job = training_job(w)
    commit_all(w, job)
    leaves, tree = rewards(w, job, list(amounts))
    w["chain"].advance_time(100)
    w["dep"].market.transact("settle", job, sender=w["outsider"])
    return job, leaves, tree


def test_post_job_locks_escrow_and_emits(world):
    dep, req = world["dep"], world["requester"]
    before = dep.balance(req.address)
    job = post(world)
    assert dep.balance(req.address) == before - ESCROW
    assert dep.balance(dep.market.address) == ESCROW
    info = dep.job(job)
    assert info["state"] == JobState.OPEN and info["escrow"] == ESCROW and info["requester"] == req.address
    ev = dep.market.events("JobPosted", job_id=job)[0]
    assert ev["spec_hash"] == keccak(b"spec") and ev["spec_cid"] == "bafkreispec"


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        ({"escrow": 0}, "escrow is zero"),
        ({"rounds": 0}, "bad round count"),
        ({"min_p": 0}, "min providers is zero"),
        ({"min_p": 4, "max_p": 3}, "min above max providers"),
        ({"join_window": 0}, "join deadline passed"),
        ({"claim": 0}, "claim period is zero"),
    ],
)
def test_post_job_rejects_bad_parameters(world, kwargs, reason):
    with pytest.raises(ContractRevert, match=reason):
        post(world, **kwargs)


def test_post_job_without_allowance_moves_nothing(world):
    dep, req = world["dep"], world["requester"]
    dep.token.transact("approve", dep.market.address, 0, sender=req)
    before = dep.balance(req.address)
    with pytest.raises(ContractRevert):
        dep.market.transact(
            "post_job", keccak(b"s"), "c", world["aggregator"].address, ESCROW, 0, 1, 1, 1,
            world["chain"].timestamp() + 10, 10, 10, 10, sender=req,
        )
    assert dep.balance(req.address) == before and dep.market.call("job_count") == 0


def test_join_locks_stake_once(world):
    dep = world["dep"]
    job = post(world)
    p = world["providers"][0]
    r = join(world, job, p)
    assert r.event("ProviderJoined")["n_providers"] == 1
    assert dep.market.call("stake_of", job, p.address) == STAKE
    assert dep.market.call("is_provider", job, p.address)
    with pytest.raises(ContractRevert, match="already joined"):
        join(world, job, p)


def test_join_rejects_full_late_and_unknown_jobs(world):
    job = post(world, min_p=1, max_p=1)
    join(world, job, world["providers"][0])
    with pytest.raises(ContractRevert, match="job is full"):
        join(world, job, world["providers"][1])
    with pytest.raises(ContractRevert, match="job not open"):
        join(world, 99, world["providers"][1])
    job2 = post(world)
    world["chain"].advance_time(1000)
    with pytest.raises(ContractRevert, match="join deadline passed"):
        join(world, job2, world["providers"][1])


def test_start_rules(world):
    dep, agg, out = world["dep"], world["aggregator"], world["outsider"]
    job = post(world, min_p=2)
    join(world, job, world["providers"][0])
    with pytest.raises(ContractRevert, match="too few providers"):
        dep.market.transact("start", job, sender=agg)
    join(world, job, world["providers"][1])
    with pytest.raises(ContractRevert, match="join window still open"):
        dep.market.transact("start", job, sender=out)
    r = dep.market.transact("start", job, sender=agg)
    assert r.event("TrainingStarted")["n_providers"] == 2
    assert dep.job(job)["state"] == JobState.TRAINING


def test_anyone_may_start_after_join_deadline(world):
    job = post(world, min_p=1)
    join(world, job, world["providers"][0])
    world["chain"].advance_time(1000)
    world["dep"].market.transact("start", job, sender=world["outsider"])
    assert world["dep"].job(job)["state"] == JobState.TRAINING


def test_submit_round_rules_and_commitment(world):
    dep, agg = world["dep"], world["aggregator"]
    job = training_job(world)
    m = dep.market
    with pytest.raises(ContractRevert, match="not the aggregator"):
        m.transact("submit_round", job, 0, ROOT, "c", UPD, 2, b"\x00" * 32, sender=world["outsider"])
    with pytest.raises(ContractRevert, match="wrong round"):
        m.transact("submit_round", job, 1, ROOT, "c", UPD, 2, b"\x00" * 32, sender=agg)
    with pytest.raises(ContractRevert, match="bad update count"):
        m.transact("submit_round", job, 0, ROOT, "c", UPD, 3, b"\x00" * 32, sender=agg)
    with pytest.raises(ContractRevert, match="empty root"):
        m.transact("submit_round", job, 0, b"\x00" * 32, "c", UPD, 2, b"\x00" * 32, sender=agg)
    r = m.transact("submit_round", job, 0, ROOT, "bafkreimodel", UPD, 2, b"\x01" * 32, sender=agg)
    ev = r.event("RoundCommitted")
    assert (ev["round"], ev["model_root"], ev["model_cid"], ev["count"]) == (0, ROOT, "bafkreimodel", 2)
    assert m.call("round_commitment", job, 0) != b"\x00" * 32
    world["chain"].advance_time(501)
    with pytest.raises(ContractRevert, match="round deadline passed"):
        m.transact("submit_round", job, 1, ROOT, "c", UPD, 2, b"\x00" * 32, sender=agg)


def test_post_rewards_rules(world):
    dep, agg = world["dep"], world["aggregator"]
    job = training_job(world)
    with pytest.raises(ContractRevert, match="rounds not finished"):
        dep.market.transact("post_rewards", job, ROOT, 1, "c", sender=agg)
    commit_all(world, job)
    with pytest.raises(ContractRevert, match="all rounds committed"):
        dep.market.transact("submit_round", job, 2, ROOT, "c", UPD, 2, b"\x00" * 32, sender=agg)
    with pytest.raises(ContractRevert, match="rewards exceed escrow"):
        dep.market.transact("post_rewards", job, ROOT, ESCROW, "c", sender=agg)  # the 1% fee comes first
    r = dep.market.transact("post_rewards", job, ROOT, ESCROW * 99 // 100, "c", sender=agg)
    assert r.event("RewardRootPosted")["reward_total"] == ESCROW * 99 // 100
    assert dep.job(job)["state"] == JobState.FINALIZING


def test_settle_pays_fee_and_refunds_unassigned(world):
    dep, req, treasury = world["dep"], world["requester"], world["treasury"]
    job = training_job(world)
    commit_all(world, job)
    rewards(world, job, [400 * TOKEN, 500 * TOKEN])
    with pytest.raises(ContractRevert, match="challenge window open"):
        dep.market.transact("settle", job, sender=world["outsider"])
    world["chain"].advance_time(100)
    r_before, t_before = dep.balance(req.address), dep.balance(treasury.address)
    ev = dep.market.transact("settle", job, sender=world["outsider"]).event("JobSettled")
    assert ev["fee"] == ESCROW // 100 and ev["refund"] == ESCROW - ESCROW // 100 - 900 * TOKEN
    assert dep.balance(treasury.address) - t_before == ev["fee"]
    assert dep.balance(req.address) - r_before == ev["refund"]


def test_claim_pays_reward_and_stake_once(world):
    dep = world["dep"]
    job, leaves, tree = settled_job(world)
    p = world["providers"][0]
    before = dep.balance(p.address)
    idx, acct, amount, rep = leaves[0]
    r = dep.market.transact("claim", job, idx, acct, amount, rep, tree.proof(0), sender=world["outsider"])
    assert r.event("RewardClaimed")["stake_returned"] == STAKE
    assert r.event("ReputationChanged")["reputation"] == 1
    assert dep.balance(p.address) - before == amount + STAKE
    assert dep.market.call("is_claimed", job, 0) and not dep.market.call("is_claimed", job, 1)
    with pytest.raises(ContractRevert, match="already claimed"):
        dep.market.transact("claim", job, idx, acct, amount, rep, tree.proof(0), sender=p)


def test_claim_rejects_forged_leaves(world):
    dep = world["dep"]
    job, leaves, tree = settled_job(world)
    idx, acct, amount, rep = leaves[0]
    m = dep.market
    for forged in [(idx, acct, amount + 1, rep), (idx, acct, amount, rep + 5), (1, acct, amount, rep),
                   (idx, world["outsider"].address, amount, rep)]:
        with pytest.raises(ContractRevert, match="invalid proof"):
            m.transact("claim", job, *forged, tree.proof(0), sender=world["outsider"])


def test_claims_close_and_unclaimed_is_swept(world):
    dep, req = world["dep"], world["requester"]
    job, leaves, tree = settled_job(world)
    idx, acct, amount, rep = leaves[0]
    dep.market.transact("claim", job, idx, acct, amount, rep, tree.proof(0), sender=world["outsider"])
    with pytest.raises(ContractRevert, match="claim period open"):
        dep.market.transact("sweep", job, sender=world["outsider"])
    world["chain"].advance_time(1000)
    with pytest.raises(ContractRevert, match="claim period over"):
        dep.market.transact("claim", job, *leaves[1], tree.proof(1), sender=world["outsider"])
    before = dep.balance(req.address)
    ev = dep.market.transact("sweep", job, sender=world["outsider"]).event("UnclaimedSwept")
    assert ev["amount"] == leaves[1][2] and dep.balance(req.address) - before == leaves[1][2]
    with pytest.raises(ContractRevert, match="nothing to sweep"):
        dep.market.transact("sweep", job, sender=world["outsider"])
    # the provider that never claimed still gets its stake back
    p1 = world["providers"][1]
    assert dep.market.transact("withdraw_stake", job, sender=p1).event("StakeWithdrawn")["amount"] == STAKE


def test_cancel_refunds_requester_and_frees_stakes(world):
    dep, req = world["dep"], world["requester"]
    job = post(world, min_p=2)
    join(world, job, world["providers"][0])
    with pytest.raises(ContractRevert, match="join window still open"):
        dep.market.transact("cancel", job, sender=req)
    with pytest.raises(ContractRevert, match="job still running"):
        dep.market.transact("withdraw_stake", job, sender=world["providers"][0])
    world["chain"].advance_time(1000)
    before = dep.balance(req.address)
    assert dep.market.transact("cancel", job, sender=world["outsider"]).event("JobCancelled")["refund"] == ESCROW
    assert dep.balance(req.address) - before == ESCROW
    dep.market.transact("withdraw_stake", job, sender=world["providers"][0])
    with pytest.raises(ContractRevert, match="no stake"):
        dep.market.transact("withdraw_stake", job, sender=world["providers"][0])
    assert dep.balance(dep.market.address) == 0


def test_requester_may_cancel_only_before_anyone_joins(world):
    dep, req = world["dep"], world["requester"]
    job = post(world)
    dep.market.transact("cancel", job, sender=req)
    assert dep.job(job)["state"] == JobState.CANCELLED
    job2 = post(world, min_p=1)
    join(world, job2, world["providers"][0])
    world["chain"].advance_time(1000)
    with pytest.raises(ContractRevert, match="enough providers joined"):
        dep.market.transact("cancel", job2, sender=req)


def test_fail_after_missed_round_refunds_escrow(world):
    dep, req = world["dep"], world["requester"]
    job = training_job(world)
    with pytest.raises(ContractRevert, match="deadline not missed"):
        dep.market.transact("fail", job, sender=world["outsider"])
    world["chain"].advance_time(501)
    before = dep.balance(req.address)
    ev = dep.market.transact("fail", job, sender=world["outsider"]).event("JobFailed")
    assert ev["refund"] == ESCROW and dep.balance(req.address) - before == ESCROW
    for p in world["providers"][:2]:
        dep.market.transact("withdraw_stake", job, sender=p)
    assert dep.balance(dep.market.address) == 0
    with pytest.raises(ContractRevert, match="job not training"):
        dep.market.transact("submit_round", job, 0, ROOT, "c", UPD, 2, b"\x00" * 32, sender=world["aggregator"])
