"""Helpers for the contract tests: post a job with default terms, move it through its states."""

from __future__ import annotations

import pytest
from eth_utils import keccak

from fedmarket.market import JobTerms
from fedmarket.protocol.encoding import reward_leaf
from fedmarket.protocol.merkle import MerkleTree

TOKEN = 10**18
ESCROW = 1_000 * TOKEN
STAKE = 10 * TOKEN
AGG_STAKE = 100 * TOKEN
VAL_STAKE = 50 * TOKEN
ROOT = keccak(b"model")
UPD = keccak(b"updates")
ZERO32 = b"\x00" * 32


class Market:
    """Drives one JobMarket through its states with the test world's accounts."""

    def __init__(self, w):
        self.w = w
        self.dep = w["dep"]
        self.m = w["dep"].market
        self.chain = w["chain"]

    def terms(self, **over) -> JobTerms:
        base = dict(
            spec_hash=keccak(b"spec"), aggregator=self.w["aggregator"].address, escrow=ESCROW,
            provider_stake=STAKE, aggregator_stake=AGG_STAKE, validator_stake=VAL_STAKE,
            min_providers=2, max_providers=3, max_validators=0, rounds=2,
            join_deadline=self.chain.timestamp() + 1000, round_duration=500, challenge_period=100,
            claim_period=1000, rule=0, trim=0, chunk_size=64, licence_price=0,
        )
        base.update(over)
        return JobTerms(**base)

    def post(self, **over) -> int:
        r = self.m.transact("post_job", self.terms(**over).abi(), "bafkreispec", sender=self.w["requester"])
        return r.event("JobPosted")["job_id"]

    def accept(self, job):
        return self.m.transact("accept", job, sender=self.w["aggregator"])

    def join(self, job, i):
        return self.m.transact("join", job, sender=self.w["providers"][i])

    def join_validator(self, job, i, stake=VAL_STAKE):
        return self.m.transact("join_validator", job, stake, sender=self.w["validators"][i])

    def training(self, n=2, rounds=2, validators=0, **over) -> int:
        job = self.post(min_providers=n, max_providers=n, rounds=rounds, max_validators=validators, **over)
        self.accept(job)
        for i in range(n):
            self.join(job, i)
        for i in range(validators):
            self.join_validator(job, i)
        self.m.transact("start", job, sender=self.w["aggregator"])
        return job

    def commit(self, job, r, model_root=ROOT, updates_root=UPD, count=2, metrics=ZERO32, cid="bafkreimodel", epsilon=0):
        return self.m.transact("submit_round", job, r, model_root, cid, updates_root, count, metrics, epsilon, sender=self.w["aggregator"])

    def commit_all(self, job, rounds=2):
        for r in range(rounds):
            self.commit(job, r)

    def rewards(self, job, amounts, reps=None):
        accts = self.w["providers"]
        leaves = [(i, accts[i].address, a, (reps or [1] * len(amounts))[i]) for i, a in enumerate(amounts)]
        tree = MerkleTree([reward_leaf(*l) for l in leaves])
        self.m.transact("post_rewards", job, tree.root, sum(amounts), "bafkreirewards", sender=self.w["aggregator"])
        return leaves, tree

    def settled(self, amounts=(400 * TOKEN, 500 * TOKEN), **over):
        job = self.training(**over)
        self.commit_all(job)
        leaves, tree = self.rewards(job, list(amounts))
        self.chain.advance_time(100)
        self.m.transact("settle", job, sender=self.w["outsider"])
        return job, leaves, tree

    def claim(self, job, leaves, tree, i, sender=None):
        return self.m.transact("claim", job, *leaves[i], tree.proof(i), sender=sender or self.w["outsider"])


@pytest.fixture
def mk(world):
    return Market(world)
