"""Benchmark: the dashboard's event indexer and job page on a 1,000-provider job; prints one JSON object.

A job of `--providers` providers and 3 validators runs on anvil with the real contracts: posted,
accepted, every provider joins, `--rounds` rounds are committed and attested to quorum, the reward
root is posted, the job settles, every member's claim lands (reward, stake, reputation), the model
token is minted and licences are sold. Rounds carry synthetic roots and the claims are sent in
JSON-RPC batches (what the indexer reads is the same events either way; training 1,000 providers
is not what is measured here).

Then, `--repeats` times on a fresh database: the indexer (`dashboard.indexer.Indexer.sync`, the
path `fedmarket dashboard` runs) catches up from the deployment block. Reported:
- `indexer_events_per_s`: events decoded and stored per second (median, worst); goal >= 5,000;
- `fetch_only_events_per_s`: the same `eth_getLogs` ranges fetched and JSON-parsed, nothing else
  (the floor the node sets), and `per_event_reads_events_per_s`: the same events read the way the
  roles and `fedmarket status` read them (`Contract.events(name)`, one query per event kind),
  decoded, not stored; ratios to the indexer;
- `job_page_ms`: `GET /job/ID` over HTTP from the dashboard's server (uvicorn, Starlette, Jinja2)
  on the caught-up index: the first load and the median/worst of the next ones; goal < 200 ms;
  `provider_page_ms` likewise for one provider.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gas import TOKEN, Bench, Rounds, bulk_join, log, rpc_batch  # noqa: E402

from fedmarket.chain.anvil import AnvilNode  # noqa: E402
from fedmarket.chain.rpc_backend import RpcChain  # noqa: E402
from fedmarket.dashboard.indexer import INDEXED, Indexer, clear_caches  # noqa: E402
from fedmarket.protocol.proofs import reward_struct, reward_tree  # noqa: E402


def bulk_send(b: Bench, sender, calls: list[bytes], to: str) -> None:
    """`calls` from one account, signed with consecutive nonces, sent in batches with automine off,
    then mined; every receipt checked."""
    from eth_account import Account as EthAccount

    nonce = b.chain.next_nonce(sender.address)
    raw = []
    for i, data in enumerate(calls):
        tx = {"type": 2, "chainId": b.chain.chain_id, "nonce": nonce + i, "to": to, "data": data, "value": 0,
              "gas": 400_000, "maxFeePerGas": 10**13, "maxPriorityFeePerGas": 10**9}
        raw.append("0x" + bytes(EthAccount.sign_transaction(tx, sender.key).raw_transaction).hex())
    rpc_batch(b.url, [("evm_setAutomine", [False])])
    hashes = rpc_batch(b.url, [("eth_sendRawTransaction", [r]) for r in raw])
    while int(rpc_batch(b.url, [("txpool_status", [])])[0]["pending"], 16) > 0:
        rpc_batch(b.url, [("evm_mine", [])])
    rpc_batch(b.url, [("evm_setAutomine", [True])])
    rpc_batch(b.url, [("anvil_setNextBlockBaseFeePerGas", [hex(10**9)])])
    receipts = rpc_batch(b.url, [("eth_getTransactionReceipt", [h]) for h in hashes])
    failed = sum(1 for r in receipts if r is None or int(r["status"], 16) != 1)
    if failed:
        raise RuntimeError(f"{failed} of {len(calls)} transactions failed")
    b.chain.forget_nonce(sender.address)


def build_job(b: Bench, n: int, rounds: int, licences: int) -> tuple[int, list]:
    """A whole job of n providers and 3 validators, from posting to every claim; returns (job, providers)."""
    t0 = time.perf_counter()
    escrow = 1_000 * TOKEN
    job = b.post(b.terms(n, rounds, escrow, 0, 3, licence_price=TOKEN), [])
    b.join_validators(job, [])
    providers = bulk_join(b, job, n, f"ix{n}")
    m = b.dep.market
    m.transact("start", job, sender=b.aggregator)
    rr = Rounds(b, job)
    for r in range(rounds):
        rr.commit(r, n)
        rr.attest(r)
    log(f"{n} providers joined, {rounds} rounds attested ({time.perf_counter() - t0:.0f}s)")
    pool = escrow - escrow // 100
    weights = {p.address: 10 + i % 7 for i, p in enumerate(providers)}
    roles = {**dict.fromkeys(weights, 1), **{v.address: 3 for v in b.validators}, b.aggregator.address: 2}
    members = sorted(roles, key=lambda a: int(a, 16))
    total_w = sum(weights.values())
    leaves = [{"index": i, "account": a, "role": roles[a], "amount": pool * weights.get(a, 0) // total_w,
               "reputation_delta": rounds, "value": weights.get(a, 0), "activity": rounds} for i, a in enumerate(members)]
    tree = reward_tree(leaves)
    b.chain.advance_time(86_400 // 2 + 1)  # no approved scores: the weight basis opens halfway to the deadline
    m.transact("post_rewards", job, tree.root, sum(x["amount"] for x in leaves), total_w, 0, True, "bafkrei-rewards", 0,
               sender=b.aggregator)
    b.chain.advance_time(3600)
    m.transact("settle", job, sender=b.requester)
    claim = m.abi.function("claim")
    bulk_send(b, b.challenger, [claim.encode((job, x["index"], reward_struct(x), tree.proof(x["index"]))) for x in leaves],
              m.address)
    lic = b.dep.licence
    lic.transact("mint", job, sender=b.requester)
    buyers = [b.chain.new_account("ix-buyer", i, 10**20) for i in range(licences)]
    for buyer in buyers:
        b.mint(buyer.address, TOKEN)
        b.dep.token.transact("approve", lic.address, TOKEN, sender=buyer)
        lic.transact("buy", job, sender=buyer)
    log(f"job {job} settled, {len(leaves)} claims, {licences} licences ({time.perf_counter() - t0:.0f}s)")
    return job, providers


def measure_indexer(url: str, addresses: dict, repeats: int) -> tuple[list[float], int, Indexer, str]:
    rates, events, tmp = [], 0, tempfile.mkdtemp(prefix="fedmarket-ix-")
    idx = None
    for k in range(repeats):
        if idx is not None:
            idx.close()
        db = Path(tmp) / f"index-{k}.sqlite"
        clear_caches()  # every repeat starts cold: no address seen before
        idx = Indexer(RpcChain(url), addresses, db)
        t0 = time.perf_counter()
        events = idx.sync()
        rates.append(events / (time.perf_counter() - t0))
    return rates, events, idx, str(db)


def measure_fetch_only(url: str, addresses: dict, span: int = 2_000) -> float:
    chain = RpcChain(url)
    latest = chain.block_number()
    t0, n, start = time.perf_counter(), 0, int(addresses["block"])
    while start <= latest:
        end = min(latest, start + span - 1)
        n += len(chain.request("eth_getLogs", [{"address": [addresses[k] for k, _ in INDEXED],
                                                "fromBlock": hex(start), "toBlock": hex(end)}]))
        start = end + 1
    return n / (time.perf_counter() - t0)


def measure_per_event_reads(url: str, addresses: dict) -> float:
    from fedmarket.market import Deployment

    dep = Deployment.attach(RpcChain(url), addresses)
    t0, n = time.perf_counter(), 0
    for key, _ in INDEXED:
        contract = getattr(dep, key)
        for name in contract.abi.events_by_name:
            n += len(contract.events(name))
    return n / (time.perf_counter() - t0)


def measure_pages(url: str, addresses: dict, db: str, job: int, provider: str, loads: int) -> dict:
    import uvicorn

    from fedmarket.dashboard.app import Dashboard, create_app

    dash = Dashboard(url, addresses, db)
    dash.start()
    server = uvicorn.Server(uvicorn.Config(create_app(dash), host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    base = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    out = {}
    for name, path in (("job_page_ms", f"/job/{job}"), ("provider_page_ms", f"/provider/{provider}")):
        times, size = [], 0
        for _ in range(loads + 1):
            t0 = time.perf_counter()
            with urllib.request.urlopen(base + path, timeout=30) as resp:
                body = resp.read()
            times.append(1000 * (time.perf_counter() - t0))
            size = len(body)
            if b"RewardClaimed" not in body and name == "job_page_ms" and body.count(b'data-role="provider"') < 1:
                raise RuntimeError(f"{path} did not render the job")
        out[name] = {"first": round(times[0], 1), "median": round(statistics.median(times[1:]), 1),
                     "worst": round(max(times[1:]), 1), "bytes": size}
    out["job_page_provider_rows"] = body_rows(base, job)
    server.should_exit = True
    thread.join(10)
    dash.close()
    return out


def body_rows(base: str, job: int) -> int:
    with urllib.request.urlopen(f"{base}/job/{job}", timeout=30) as resp:
        return resp.read().count(b'data-role="provider"')


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--providers", type=int, default=1_000)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--licences", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--page-loads", type=int, default=5)
    ap.add_argument("--threads", type=int, default=4)
    args = ap.parse_args()
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    with AnvilNode() as node:
        b = Bench(RpcChain(node.url), node.url, args.threads)
        job, providers = build_job(b, args.providers, args.rounds, args.licences)
        addresses = {**b.dep.addresses(), "block": b.dep.token.from_block, "chain_id": b.chain.chain_id}
        rates, events, idx, db = measure_indexer(node.url, addresses, args.repeats)
        blocks = idx.next_block - addresses["block"]
        idx.close()
        fetch = measure_fetch_only(node.url, addresses)
        per_event = measure_per_event_reads(node.url, addresses)
        pages = measure_pages(node.url, addresses, db, job, providers[0].address, args.page_loads)
    median = statistics.median(rates)
    out = {
        "source": "anvil (@foundry-rs/anvil@1.7.1), real contracts, the dashboard's own indexer and server",
        "providers": args.providers, "validators": 3, "rounds": args.rounds, "events": events, "blocks": blocks,
        "indexer_events_per_s": {"median": round(median), "worst": round(min(rates)), "repeats": args.repeats},
        "fetch_only_events_per_s": round(fetch),
        "per_event_reads_events_per_s": round(per_event),
        "indexer_over_fetch_only": round(median / fetch, 3),
        "indexer_over_per_event_reads": round(median / per_event, 2),
        **pages,
    }
    out["goals"] = {"indexer_at_least_5000_events_per_s": min(rates) >= 5_000,
                    "job_page_first_load_under_200ms": pages["job_page_ms"]["first"] < 200,
                    "job_page_every_load_under_200ms": pages["job_page_ms"]["worst"] < 200}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    out["load_average"] = [round(load0, 2), round(os.getloadavg()[0], 2)]  # other work on the machine, before and after
    print(json.dumps(out))


if __name__ == "__main__":
    main()
