"""Benchmark: gas of the protocol from real anvil receipts; prints one JSON object.

- round_gas: gas of one round transaction for jobs with 10 / 1,000 / 10,000 joined providers
  (median over rounds 1-4; the round carries the roots of 100 aggregated updates, or n if fewer);
- claim_gas: median gas of a provider's claim (reward + stake back + reputation) in the job below;
- job_total_gas: everything from posting a 100-provider, 20-round job to its last claim
  (approvals, post, accept, joins, rounds, reward root, settlement, claims);
- naive_job_total_gas: the same job on contracts/reference/NaiveMarket.vy, where every provider
  commits every update in its own transaction, measured in the same run on the same node.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from eth_utils import keccak

from fedmarket.chain import artifacts
from fedmarket.chain.anvil import AnvilNode
from fedmarket.chain.rpc_backend import RpcChain
from fedmarket.market import Deployment, JobTerms
from fedmarket.protocol.encoding import reward_leaf
from fedmarket.protocol.merkle import MerkleTree
from fedmarket.protocol.receipts import permit_signature
from fedmarket.storage import cid_of

TOKEN = 10**18
ETH = 10**18


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Bench:
    def __init__(self, chain: RpcChain, threads: int):
        self.chain = chain
        self.threads = threads
        self.deployer = chain.new_account("gas", 0, 10**24)
        self.treasury = chain.new_account("gas", 1)
        self.requester = chain.new_account("gas", 2, 10**24)
        self.aggregator = chain.new_account("gas", 3, 10**24)
        self.dep = Deployment.deploy(chain, self.deployer, self.treasury.address, 100, 7 * 86_400)
        self.seq = 0

    def accounts(self, n: int, tag: str):
        with ThreadPoolExecutor(self.threads) as pool:
            return list(pool.map(lambda i: self.chain.new_account(f"gas-{tag}", i, ETH), range(n)))

    def terms(self, n: int, rounds: int, escrow: int, stake: int) -> JobTerms:
        self.seq += 1
        return JobTerms(
            spec_hash=keccak(f"spec-{self.seq}".encode()), aggregator=self.aggregator.address, escrow=escrow,
            provider_stake=stake, aggregator_stake=100 * TOKEN, validator_stake=0, min_providers=n,
            max_providers=n, max_validators=0, rounds=rounds, join_deadline=self.chain.timestamp() + 10**6,
            round_duration=10**6, challenge_period=3600, claim_period=30 * 86_400, rule=0, trim=0,
            chunk_size=64, licence_price=0,
        )

    def mint(self, who: str, amount: int) -> None:
        self.dep.token.transact("mint", who, amount, sender=self.deployer)

    def post(self, terms: JobTerms, gas: list[int]) -> int:
        m, t = self.dep.market, self.dep.token
        self.mint(self.requester.address, terms.escrow)
        gas.append(t.transact("approve", m.address, terms.escrow, sender=self.requester).gas_used)
        r = m.transact("post_job", terms.abi(), cid_of(b"spec" + terms.spec_hash), sender=self.requester)
        gas.append(r.gas_used)
        job = r.event("JobPosted")["job_id"]
        self.mint(self.aggregator.address, terms.aggregator_stake)
        gas.append(t.transact("approve", m.address, terms.aggregator_stake, sender=self.aggregator).gas_used)
        gas.append(m.transact("accept", job, sender=self.aggregator).gas_used)
        return job

    def join_all(self, job: int, providers, stake: int, gas: list[int]) -> None:
        m, t = self.dep.market, self.dep.token

        def one(p):
            if not stake:
                return m.transact("join", job, sender=p).gas_used
            deadline = self.chain.timestamp() + 3600
            v, r, s = permit_signature(t, p, m.address, stake, deadline)  # no separate approve transaction
            return m.transact("join_with_permit", job, deadline, v, r, s, sender=p).gas_used

        if stake:
            for p in providers:
                self.mint(p.address, stake)
        with ThreadPoolExecutor(self.threads) as pool:
            gas.extend(pool.map(one, providers))

    def round(self, job: int, r: int, count: int) -> int:
        model = keccak(f"model-{job}-{r}".encode())
        cid = cid_of(model)
        return self.dep.market.transact(
            "submit_round", job, r, model, cid, keccak(f"updates-{job}-{r}".encode()), count,
            keccak(f"metrics-{job}-{r}".encode()), 0, sender=self.aggregator,
        ).gas_used


def rpc_batch(url: str, calls: list[tuple[str, list]], size: int = 500) -> list:
    """JSON-RPC batch requests (anvil accepts them): one HTTP round trip per `size` calls."""
    out = []
    for i in range(0, len(calls), size):
        body = [{"jsonrpc": "2.0", "id": j, "method": m, "params": p} for j, (m, p) in enumerate(calls[i : i + size])]
        req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=300) as resp:
            replies = sorted(json.loads(resp.read()), key=lambda r: r["id"])
        for r in replies:
            if "error" in r:
                raise RuntimeError(f"RPC error: {r['error']}")
            out.append(r["result"])
    return out


def bulk_join(b: Bench, url: str, job: int, n: int, tag: str) -> None:
    """n fresh providers join a stake-free job: funded, signed and sent in JSON-RPC batches,
    mined with automine off, every receipt checked (10,000 one-by-one joins take too long)."""
    from eth_account import Account as EthAccount

    from fedmarket.chain.base import Account

    providers = [Account.derive(f"gas-{tag}", i) for i in range(n)]
    rpc_batch(url, [("anvil_setBalance", [p.address, hex(100 * ETH)]) for p in providers])
    data = b.dep.market.abi.function("join").encode((job,))
    raw = []
    for p in providers:
        tx = {"type": 2, "chainId": b.chain.chain_id, "nonce": 0, "to": b.dep.market.address, "data": data,
              "value": 0, "gas": 200_000, "maxFeePerGas": 10**13, "maxPriorityFeePerGas": 10**9}
        raw.append("0x" + bytes(EthAccount.sign_transaction(tx, p.key).raw_transaction).hex())
    rpc_batch(url, [("evm_setAutomine", [False])])
    hashes = rpc_batch(url, [("eth_sendRawTransaction", [r]) for r in raw])
    while int(rpc_batch(url, [("txpool_status", [])])[0]["pending"], 16) > 0:
        rpc_batch(url, [("evm_mine", [])])
    rpc_batch(url, [("evm_setAutomine", [True])])
    # dozens of full blocks raised the base fee (EIP-1559); put it back for the timed part
    rpc_batch(url, [("anvil_setNextBlockBaseFeePerGas", [hex(10**9)])])
    receipts = rpc_batch(url, [("eth_getTransactionReceipt", [h]) for h in hashes])
    failed = sum(1 for r in receipts if r is None or int(r["status"], 16) != 1)
    if failed:
        raise RuntimeError(f"{failed} of {n} joins failed")


def measure_round_gas(b: Bench, n: int, url: str) -> int:
    t0 = time.perf_counter()
    job = b.post(b.terms(n, 5, 1_000 * TOKEN, 0), [])
    bulk_join(b, url, job, n, f"r{n}")
    assert b.dep.job(job)["n_providers"] == n
    b.dep.market.transact("start", job, sender=b.aggregator)
    gas = [b.round(job, r, min(n, 100)) for r in range(5)]
    log(f"round gas with {n} providers: {gas} ({time.perf_counter() - t0:.0f}s)")
    return int(statistics.median(gas[1:]))


def ours_job(b: Bench, n: int, rounds: int) -> tuple[int, list[int]]:
    gas: list[int] = []
    providers = b.accounts(n, "ours")
    escrow, stake = 1_000 * TOKEN, 10 * TOKEN
    job = b.post(b.terms(n, rounds, escrow, stake), gas)
    b.join_all(job, providers, stake, gas)
    m = b.dep.market
    gas.append(m.transact("start", job, sender=b.aggregator).gas_used)
    for r in range(rounds):
        gas.append(b.round(job, r, min(n, 100)))
    pool = escrow - escrow // 100
    weights = [10 + i % 7 for i in range(n)]
    amounts = [pool * w // sum(weights) for w in weights]
    leaves = [(i, p.address, a, rounds) for i, (p, a) in enumerate(zip(providers, amounts))]
    tree = MerkleTree([reward_leaf(*leaf) for leaf in leaves])
    gas.append(m.transact("post_rewards", job, tree.root, sum(amounts), cid_of(tree.root), sender=b.aggregator).gas_used)
    b.chain.advance_time(3600)
    gas.append(m.transact("settle", job, sender=b.requester).gas_used)
    with ThreadPoolExecutor(b.threads) as ex:
        claims = list(ex.map(lambda i: m.transact("claim", job, *leaves[i], tree.proof(i), sender=providers[i]).gas_used,
                             range(n)))
    gas.extend(claims)
    gas.append(m.transact("release_stake", job, b.aggregator.address, sender=b.aggregator).gas_used)
    return sum(gas), claims


def naive_job(b: Bench, n: int, rounds: int) -> int:
    art = artifacts.load("reference/NaiveMarket")
    naive = b.chain.deploy(b.deployer, "NaiveMarket", art.abi, art.bytecode, b.dep.token.address, b.treasury.address, 100)
    t = b.dep.token
    gas: list[int] = []
    providers = b.accounts(n, "naive")
    escrow, stake = 1_000 * TOKEN, 10 * TOKEN
    b.mint(b.requester.address, escrow)
    gas.append(t.transact("approve", naive.address, escrow, sender=b.requester).gas_used)
    r = naive.transact("post_job", b.aggregator.address, escrow, stake, n, rounds, sender=b.requester)
    gas.append(r.gas_used)
    job = r.event("JobPosted")["job_id"]
    for p in providers:
        b.mint(p.address, stake)

    def join(p):
        return t.transact("approve", naive.address, stake, sender=p).gas_used + naive.transact("join", job, sender=p).gas_used

    with ThreadPoolExecutor(b.threads) as ex:
        gas.extend(ex.map(join, providers))
        for rnd in range(rounds):
            gas.extend(ex.map(
                lambda i: naive.transact("submit_update", job, rnd, keccak(f"u-{rnd}-{i}".encode()), 10 + i % 7,
                                         sender=providers[i]).gas_used,
                range(n)))
            gas.append(naive.transact("commit_round", job, rnd, keccak(f"m-{rnd}".encode()), sender=b.aggregator).gas_used)
    gas.append(naive.transact("settle", job, sender=b.requester).gas_used)
    with ThreadPoolExecutor(b.threads) as ex:
        gas.extend(ex.map(lambda p: naive.transact("claim", job, sender=p).gas_used, providers))
    return sum(gas)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="10,1000,10000", help="provider counts for round_gas")
    ap.add_argument("--providers", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--threads", type=int, default=min(8, 2 * (os.cpu_count() or 2)))
    args = ap.parse_args()
    out: dict = {"source": "anvil receipts", "anvil": "@foundry-rs/anvil@1.7.1"}
    t0 = time.perf_counter()
    with AnvilNode() as node:
        b = Bench(RpcChain(node.url), args.threads)
        total, claims = ours_job(b, args.providers, args.rounds)
        naive = naive_job(b, args.providers, args.rounds)
        out["job"] = {"providers": args.providers, "rounds": args.rounds}
        out["claim_gas"] = int(statistics.median(claims))
        out["claim_gas_max"] = max(claims)
        out["job_total_gas"] = total
        out["naive_job_total_gas"] = naive
        out["job_over_naive"] = round(total / naive, 4)
        log(f"job {total:,} vs naive {naive:,}")
    round_gas = {}
    for n in (int(s) for s in args.sizes.split(",")):
        with AnvilNode() as node:  # a fresh node per size: anvil slows down on long chains
            round_gas[str(n)] = measure_round_gas(Bench(RpcChain(node.url), args.threads), n, node.url)
    out["round_gas"] = round_gas
    sizes = list(round_gas.values())
    out["round_gas_spread"] = round(max(sizes) / min(sizes) - 1, 4)
    out["goals"] = {
        "round_gas_under_80k": max(sizes) < 80_000,
        "round_gas_within_5pct": out["round_gas_spread"] <= 0.05,
        "claim_gas_under_120k": out["claim_gas"] < 120_000,
        "job_under_15pct_of_naive": out["job_over_naive"] < 0.15,
    }
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
