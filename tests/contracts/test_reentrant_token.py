"""A token that calls back into the market on every transfer cannot drain it: each re-entry fails
(`@nonreentrant`), the outer call pays exactly once, and the market's balance matches its books."""

from __future__ import annotations

import pytest
from eth_utils import keccak

from fedmarket.chain import artifacts
from fedmarket.chain.boa_backend import BoaChain
from fedmarket.market import Deployment, JobTerms
from fedmarket.protocol.encoding import reward_leaf
from fedmarket.protocol.merkle import MerkleTree

TOKEN = 10**18
ESCROW, STAKE, AGG = 1_000 * TOKEN, 10 * TOKEN, 100 * TOKEN


@pytest.fixture(scope="module")
def evil():
    chain = BoaChain()
    acct = [chain.new_account("evil", i) for i in range(6)]
    deployer, treasury, requester, aggregator, p0, p1 = acct
    art = artifacts.load("mocks/ReentrantToken")
    token = chain.deploy(deployer, "ReentrantToken", art.abi, art.bytecode)
    dep = Deployment.deploy(chain, deployer, treasury.address, 100, 100, token=token)
    for a in (requester, aggregator, p0, p1):
        token.transact("mint", a.address, 10_000 * TOKEN, sender=deployer)
        token.transact("approve", dep.market.address, 2**255, sender=a)
    m = dep.market
    terms = JobTerms(keccak(b"s"), aggregator.address, ESCROW, STAKE, AGG, 0, 2, 2, 0, 1,
                     chain.timestamp() + 100, 1000, 10, 1000, 0, 0, 64, 0)
    job = m.transact("post_job", terms.abi(), "bafkreispec", sender=requester).event("JobPosted")["job_id"]
    m.transact("accept", job, sender=aggregator)
    m.transact("join", job, sender=p0)
    m.transact("join", job, sender=p1)
    m.transact("start", job, sender=aggregator)
    m.transact("submit_round", job, 0, keccak(b"m"), "bafkreim", keccak(b"u"), 2, keccak(b"x"), sender=aggregator)
    leaves = [(0, p0.address, 400 * TOKEN, 1), (1, p1.address, 500 * TOKEN, 1)]
    tree = MerkleTree([reward_leaf(*l) for l in leaves])
    m.transact("post_rewards", job, tree.root, 900 * TOKEN, "bafkreir", sender=aggregator)
    chain.advance_time(10)
    return dict(chain=chain, dep=dep, token=token, job=job, leaves=leaves, tree=tree, accts=acct)


def arm(w, fn, *args):
    m = w["dep"].market
    w["token"].transact("arm", m.address, m.abi.function(fn).encode(args), sender=w["accts"][0])


def books(w) -> int:
    """What the market owes: open escrow/unclaimed rewards of the job + stakes still locked or free."""
    dep, job = w["dep"], w["job"]
    info = dep.job(job)
    owed = 0
    if info["state"] == 4:  # Finalizing: the whole escrow
        owed += info["escrow"]
    elif info["state"] == 8:  # Settled: unclaimed rewards
        owed += info["reward_total"] - info["claimed_total"]
    for a in w["accts"]:
        owed += dep.market.call("membership", job, a.address)[1] + dep.staked(a.address)
    return owed


@pytest.mark.parametrize(
    "attack",
    [
        lambda w: ("claim", (w["job"], *w["leaves"][0], w["tree"].proof(0))),
        lambda w: ("claim", (w["job"], *w["leaves"][1], w["tree"].proof(1))),
        lambda w: ("sweep", (w["job"],)),
        lambda w: ("release_stake", (w["job"], w["accts"][3].address)),
        lambda w: ("withdraw", (2,)),
        lambda w: ("settle", (w["job"],)),
    ],
    ids=["double-claim", "claim-other", "sweep", "release-stake", "withdraw", "settle"],
)
def test_reentry_during_settle_and_claim_fails(evil, attack):
    w = evil
    chain, dep, token = w["chain"], w["dep"], w["token"]
    with chain.snapshot():
        fn, args = attack(w)
        arm(w, fn, *args)
        attempts = token.call("attempts")
        dep.market.transact("settle", w["job"], sender=w["accts"][1])  # pushes fee and refund: re-enters
        p0 = w["accts"][4]
        before = dep.balance(p0.address)
        dep.market.transact("claim", w["job"], *w["leaves"][0], w["tree"].proof(0), sender=p0)  # re-enters again
        assert token.call("attempts") > attempts
        assert token.call("successes") == 0
        assert dep.balance(p0.address) - before == 400 * TOKEN + STAKE  # paid exactly once
        assert dep.balance(dep.market.address) == books(w)
        with pytest.raises(Exception, match="already claimed"):
            dep.market.transact("claim", w["job"], *w["leaves"][0], w["tree"].proof(0), sender=p0)


def test_reentry_during_withdraw_fails(evil):
    w = evil
    chain, dep, token = w["chain"], w["dep"], w["token"]
    agg = w["accts"][3]
    with chain.snapshot():
        dep.market.transact("deposit", 2, 50 * TOKEN, sender=agg)
        dep.market.transact("request_unbond", 2, 50 * TOKEN, sender=agg)
        chain.advance_time(100)
        arm(w, "withdraw", 2)
        before = dep.balance(agg.address)
        dep.market.transact("withdraw", 2, sender=agg)
        assert token.call("successes") == 0 and token.call("attempts") >= 1
        assert dep.balance(agg.address) - before == 50 * TOKEN
        assert dep.balance(dep.market.address) == books(w)
