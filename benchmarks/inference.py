"""Benchmark: the model market's inference path on anvil; prints one JSON object.

A softmax job and an MLP job (digits, 3 providers, 2 rounds) run to settlement on a fresh anvil
node and are listed on the ModelMarket. Then, for each model:

- ``queries_per_s``: queries answered by a real ``fedmarket serve`` process over HTTP on
  127.0.0.1 (each query: the caller signs its cumulative usage, the server checks the signature,
  the caller's credit and refund state on chain, answers and signs the answer; the caller checks
  that signature), median and worst of 5 runs; no proofs. Baselines in the same run: the same
  server's ``answer`` in process (no HTTP) and the bare model's prediction of one row, as ratios.
- ``settlement_gas_per_query`` (goal <= 500 gas per query): gas of settling a period of 1,000
  queries paid from tabs (`UsageRollup`: one usage root posted, then made final after the
  challenge window, which pays the split), divided by 1,000, for 1, 10, 100 and 1,000 callers
  sharing the 1,000 queries; the first period and the next. Its cost does not depend on the
  number of callers. Beside it, ``settlement_gas_per_query_credits``: the same periods paid from
  prepaid credits through ``settle_usage``, which checks one receipt per caller on chain (its
  cost grows with the callers). The serve process's own shutdown settlement of the throughput
  runs (10 callers, 1,000 queries, credits) is reported as a cross-check.

- proofs, through the serving role's own path (`fedmarket.zkml`: the listed model's EZKL circuit,
  weights fixed, input and class scores public, a locally generated SRS: for testing only):
  ``setup_s`` (settings, calibration, circuit, keys, verifier compiled by npm's solc),
  ``prove_s`` and ``prove_peak_gb`` (wall time and peak resident memory of one proof, in a fresh
  process), and ``verify_gas`` (anvil receipt of the verifier's ``verifyProof`` transaction on the
  proof; ``ModelMarket.prove_answer`` adds its own checks to it). Needs the zk extra and
  ``npm install``.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from fedmarket.chain.anvil import AnvilNode
from fedmarket.chain.rpc_backend import RpcChain
from fedmarket.driver import Cast, JobDriver, fund
from fedmarket.fl.data import load_dataset, subset
from fedmarket.fl.partition import iid_partition
from fedmarket.keys import dev_account
from fedmarket.market import Deployment
from fedmarket.roles import Aggregator, Provider, Requester
from fedmarket.roles.caller import ModelCaller
from fedmarket.roles.model_owner import Offer, list_model
from fedmarket.roles.server import ModelServer
from fedmarket.spec import DataSchema, JobSpec, ParticipationSpec, RewardSpec, TrainingSpec
from fedmarket.storage import LocalBlobStore, Mailbox

TOKEN = 10**18
PRICE = TOKEN // 1_000
PERIOD_QUERIES = 1_000


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def make_spec(model: dict) -> JobSpec:
    return JobSpec(
        name=f"{model['kind']} inference benchmark",
        data=DataSchema(n_features=64, n_classes=10, feature_low=[0.0] * 64, feature_high=[16.0] * 64),
        model=model, training=TrainingSpec(rounds=2, local_epochs=1, batch_size=16, learning_rate=0.1),
        reward=RewardSpec(escrow=100 * TOKEN, provider_stake=TOKEN, aggregator_stake=50 * TOKEN, validator_stake=0,
                          licence_requester_bps=3_000),
        participation=ParticipationSpec(min_providers=3, max_providers=3, max_validators=0),
    )


class World:
    """A deployment on anvil with a requester, an aggregator and three providers holding digits."""

    def __init__(self, node: AnvilNode, tmp: Path):
        self.url = node.url
        self.chain = RpcChain(node.url)
        self.deployer, treasury, self.requester, self.aggregator = (self.chain.new_account("inference", i) for i in range(4))
        self.providers = [self.chain.new_account("inference", 10 + i) for i in range(3)]
        self.dep = Deployment.deploy(self.chain, self.deployer, treasury.address)
        fund(self.dep, self.deployer, {a.address: 10_000 * TOKEN for a in (self.requester, self.aggregator, *self.providers)})
        for a in (self.requester, self.aggregator, *self.providers):
            self.dep.token.transact("approve", self.dep.market.address, 2**256 - 1, sender=a)
        self.store, self.box = LocalBlobStore(tmp / "blobs"), Mailbox(tmp / "box")
        self.ds = load_dataset("digits")
        self.contracts = tmp / "contracts.json"
        self.dep.save(self.contracts, chain_id=self.chain.chain_id)

    def settled(self, model: dict) -> int:
        parts = iid_partition(self.ds.y, 3, 0)
        provs = [Provider(self.dep, a, self.store, self.box, subset(self.ds, p).X, subset(self.ds, p).y)
                 for a, p in zip(self.providers, parts)]
        cast = Cast(Requester(self.dep, self.requester, self.store), Aggregator(self.dep, self.aggregator, self.store, self.box),
                    provs, [])
        job = JobDriver(self.dep, self.store, self.box, cast, make_spec(model)).run()
        list_model(self.dep, self.store, self.requester, job, Offer(query_price=PRICE, owner_bps=1_000, server_bps=2_000,
                                                                      server_stake=TOKEN))
        return job

    def callers(self, tag: str, n: int, job: int, server: str, queries: int) -> list[ModelCaller]:
        out = []
        for i in range(n):
            acct = self.chain.new_account(f"inference-{tag}", i)
            fund(self.dep, self.deployer, {acct.address: queries * PRICE})
            caller = ModelCaller(self.dep, acct, job, server)
            caller.buy(queries)
            out.append(caller)
        return out


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_process(w: World, job: int, dev: int, tmp: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "fedmarket", "serve", "--job", str(job), "--rpc", w.url,
           "--contracts", str(w.contracts), "--dev-account", str(dev), "--store", str(tmp / "blobs"),
           "--state-dir", str(tmp / f"serve-{dev}"), "--port", str(port), "--period", "3600"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/info", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            if proc.poll() is not None:
                raise RuntimeError(f"fedmarket serve exited: {proc.stderr.read()[-500:]}") from None
            time.sleep(0.2)
    raise RuntimeError("fedmarket serve did not come up")


def http_queries(url: str, callers: list[ModelCaller], X: np.ndarray, per_caller: int) -> float:
    """Seconds for every caller to make `per_caller` queries in turn over one keep-alive connection."""
    t0 = time.perf_counter()
    with httpx.Client(timeout=30) as client:
        for k in range(per_caller):
            for c in callers:
                count, sig = c.next_receipt()
                r = client.post(url + "/query", json={"features": X[k % len(X)].tolist(), "count": count,
                                                     "signature": "0x" + sig.hex()})
                if r.status_code != 200:
                    raise RuntimeError(f"query refused: {r.text}")
                c.check(r.json())
    return time.perf_counter() - t0


def stop_and_read_gas(proc: subprocess.Popen) -> list[int]:
    """SIGTERM the server (it settles what is pending) and read the gas of its settlements."""
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    return [int(line.rsplit(", ", 1)[1].split(" ")[0]) for line in err.splitlines() if line.startswith("settled ")]


def throughput(w: World, job: int, dev: int, tmp: Path, tag: str, runs: int = 5, per_run: int = 200) -> dict:
    """queries_per_s over HTTP (10 callers, `runs` runs of `per_run` queries) and the in-process baselines;
    the 10-caller period of `runs * per_run` queries is settled by the process at shutdown."""
    server_acct = dev_account(dev)
    w.chain.fund(server_acct.address, 10**20)
    fund(w.dep, w.deployer, {server_acct.address: 10 * TOKEN})
    callers = w.callers(tag, 10, job, server_acct.address, runs * per_run // 10)
    X = w.ds.X[:200]
    proc, url = serve_process(w, job, dev, tmp)
    try:
        rates = [per_run / http_queries(url, callers, X[i * 20:], per_run // 10) for i in range(runs)]
    finally:
        gas = stop_and_read_gas(proc)
    # baselines in process: the same server's answer (chain reads and signatures, no HTTP), the bare model
    inproc = ModelServer(w.dep, server_acct, w.store, job)
    extra = w.callers(tag + "-inproc", 1, job, server_acct.address, per_run)[0]
    t0 = time.perf_counter()
    for k in range(per_run):
        inproc.answer(X[k].tolist(), *extra.next_receipt())
    inproc_rate = per_run / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for k in range(per_run):
        inproc.jm.predict(inproc.trained.q, X[k : k + 1])
    bare_rate = per_run / (time.perf_counter() - t0)
    out = {"queries_per_s": round(statistics.median(rates), 1), "queries_per_s_worst": round(min(rates), 1),
           "in_process_answers_per_s": round(inproc_rate, 1), "bare_predictions_per_s": round(bare_rate, 1),
           "http_over_in_process": round(statistics.median(rates) / inproc_rate, 3)}
    if runs * per_run == PERIOD_QUERIES:
        out["settlement_10_callers"] = {"txs": len(gas), "gas": sum(gas),
                                        "gas_per_query": round(sum(gas) / PERIOD_QUERIES, 1)}
    return out


def settlement_gas(w: World, job: int, dev: int, n_callers: int) -> dict:
    """Gas per query of settling a period of 1,000 queries shared by `n_callers` callers: the first
    period (each caller's settled count at this server is written for the first time: a fresh
    storage slot) and the next one (the same callers again: every slot already written)."""
    server_acct = dev_account(dev)
    w.chain.fund(server_acct.address, 10**20)
    fund(w.dep, w.deployer, {server_acct.address: 10 * TOKEN})
    server = ModelServer(w.dep, server_acct, w.store, job)
    server.ensure_staked()
    per = PERIOD_QUERIES // n_callers
    callers = w.callers(f"settle-{n_callers}", n_callers, job, server_acct.address, 2 * per)
    x = w.ds.X[0].tolist()
    out = {"callers": n_callers}
    for period in ("first", "next"):
        for c in callers:
            for _ in range(per):
                server.answer(x, *c.next_receipt())
        receipts = server.settle()
        gas = sum(r.gas_used for r in receipts)
        out[period] = {"txs": len(receipts), "gas": gas, "gas_per_query": round(gas / PERIOD_QUERIES, 1)}
    return out


def tab_settlement_gas(w: World, job: int, dev: int, n_callers: int) -> dict:
    """Gas per query of settling a period of 1,000 queries paid from tabs (`roles.tabs`) and shared
    by `n_callers` callers, through the server's own path: every query admitted by
    `ModelServer.answer`, then `TabBook.step` posts the period's usage root and, after the
    challenge window (anvil's clock moved on), makes it final and pays the split. The gas of the
    post and the finalization, first period and next; the server's one-off bond is not counted,
    as the credits' stake is not."""
    server_acct = dev_account(dev)
    w.chain.fund(server_acct.address, 10**20)
    fund(w.dep, w.deployer, {server_acct.address: 10 * TOKEN})
    server = ModelServer(w.dep, server_acct, w.store, job)
    per = PERIOD_QUERIES // n_callers
    callers = []
    for i in range(n_callers):
        acct = w.chain.new_account(f"inference-tab-{n_callers}", i)
        fund(w.dep, w.deployer, {acct.address: 2 * per * PRICE})
        caller = ModelCaller(w.dep, acct, job, server_acct.address)
        fund_gas = caller.fund(2 * per * PRICE).gas_used
        callers.append(caller)
    x = w.ds.X[0].tolist()
    window = int(w.dep.usage_rollup.call("CHALLENGE_WINDOW"))
    out = {"callers": n_callers, "fund_tab_gas": fund_gas}
    for period in ("first", "next"):
        for c in callers:
            for _ in range(per):
                q, spent, sig = c.next_tab()
                server.answer(x, q, sig, spent=spent)
        server.tabs.step()  # posts (and bonds, the first time)
        w.chain.advance_time(window)
        server.tabs.step()  # final: the revenue goes to the split
        post, final = server.tabs.sent
        assert final.event("UsageFinalized")["queries"] == PERIOD_QUERIES, "the root did not go final"
        gas = post.gas_used + final.gas_used
        out[period] = {"txs": 2, "gas": gas, "gas_per_query": round(gas / PERIOD_QUERIES, 1),
                       "post_gas": post.gas_used, "finalize_gas": final.gas_used}
        server.tabs.sent.clear()
    return out


def proof_figures(w: World, job: int, tmp: Path) -> dict:
    """setup_s, prove_s, prove_peak_gb (a child process proves) and verify_gas of one answer of the job's model."""
    from fedmarket.chain.abi import ContractABI
    from fedmarket.modelfile import trained_model
    from fedmarket.zkml import Proof, build_kit

    trained = trained_model(w.dep, w.store, job)
    t0 = time.perf_counter()
    kit = build_kit(trained, tmp / f"kit-{job}")
    setup_s = time.perf_counter() - t0
    x = trained.job_model.features(w.ds.X[1500:1501])[0]
    child = subprocess.run([sys.executable, __file__, "--prove-one", str(kit.dir), json.dumps(x.tolist())],
                           capture_output=True, text=True, check=False)
    lines = [ln for ln in child.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"proving failed: {child.stderr[-600:]}")
    res = json.loads(lines[-1])
    proof = Proof.from_doc(res.pop("proof"))
    verifier = w.chain.deploy(w.deployer, "Halo2Verifier", ContractABI(kit.abi), kit.creation)
    receipt = verifier.transact("verifyProof", proof.proof, proof.instances, sender=w.deployer)
    accepted = bool(verifier.call("verifyProof", proof.proof, proof.instances))
    return {"setup_s": round(setup_s, 2), **res, "verify_gas": receipt.gas_used, "verified_on_chain": accepted,
            "verifier_bytes": len(kit.runtime), "public_values": len(proof.instances),
            "answer_matches_model": proof.answer == int(trained.job_model.predict(trained.q, w.ds.X[1500:1501])[0])}


def prove_one(kit_dir: str, x_json: str) -> None:
    """Child process: one proof with the kit in `kit_dir`; prints its time, peak memory and the proof."""
    import resource

    from fedmarket.zkml import Kit, prove

    x = np.asarray(json.loads(x_json))
    t0 = time.perf_counter()
    proof = prove(Kit(Path(kit_dir)), x, 10)
    print(json.dumps({"prove_s": round(time.perf_counter() - t0, 2),
                      "prove_peak_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 3),
                      "proof": proof.doc()}), flush=True)
    os._exit(0)  # ezkl's worker threads can panic in interpreter teardown; the result is out


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--prove-one":
        prove_one(sys.argv[2], sys.argv[3])
    t0 = time.perf_counter()
    out: dict = {"source": "anvil receipts and a fedmarket serve process over HTTP on 127.0.0.1",
                 "anvil": "@foundry-rs/anvil@1.7.1", "period_queries": PERIOD_QUERIES,
                 "proofs": "EZKL 23.0.5 Halo2 (KZG), SRS from ezkl.gen_srs: for testing only; solc 0.8.28 from npm"}
    with AnvilNode() as node, tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        w = World(node, tmp)
        softmax = w.settled({"kind": "softmax"})
        mlp = w.settled({"kind": "mlp", "hidden": [64]})
        log(f"jobs settled and listed: softmax {softmax}, mlp {mlp}")
        out["softmax"] = throughput(w, softmax, 5, tmp, "softmax")
        out["mlp"] = throughput(w, mlp, 6, tmp, "mlp", runs=5, per_run=100)
        log(f"throughput: {out['softmax']} {out['mlp']}")
        out["softmax"].update(proof_figures(w, softmax, tmp))
        out["mlp"].update(proof_figures(w, mlp, tmp))
        log(f"proofs: softmax {out['softmax']['prove_s']} s, mlp {out['mlp']['prove_s']} s")
        out["settlement_credits"] = [settlement_gas(w, softmax, 7 + i, k) for i, k in enumerate((1, 10, 100, 1_000))]
        out["settlement_tabs"] = [tab_settlement_gas(w, softmax, 11 + i, k) for i, k in enumerate((1, 10, 100, 1_000))]
    for kind in ("credits", "tabs"):
        rows = out[f"settlement_{kind}"]
        out[f"settlement_gas_per_query_{kind}"] = {str(s["callers"]): s["first"]["gas_per_query"] for s in rows}
        out[f"settlement_gas_per_query_{kind}_next_period"] = {str(s["callers"]): s["next"]["gas_per_query"] for s in rows}
    # the goal is on tabs, the path whose period costs the same whatever the callers; credits beside it
    out["settlement_gas_per_query"] = out["settlement_gas_per_query_tabs"]
    out["settlement_gas_per_query_next_period"] = out["settlement_gas_per_query_tabs_next_period"]
    first, nxt = out["settlement_gas_per_query"], out["settlement_gas_per_query_next_period"]
    out["goals"] = {"settlement_gas_per_query_under_500": {k: v <= 500 for k, v in first.items()},
                    "settlement_gas_per_query_next_period_under_500": {k: v <= 500 for k, v in nxt.items()}}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    main()
