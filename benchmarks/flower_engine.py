"""Benchmark: a market job's rounds on Flower's Deployment Engine against the same training as a
plain Flower app on the same SuperLink and SuperNodes, in one run; prints one JSON object.

Setup: anvil, the contracts, one job (digits, softmax, IID split over ``--providers``, ``--rounds``
rounds of one local epoch) whose spec names the market's Flower app bundle; one
``flower-superlink`` and one ``flower-supernode`` per provider on 127.0.0.1 (plain TCP), every
provider's account, data, store and mailbox in its node config.

- **market** (``s_per_round``): `flwr run` of the market's app; the aggregator's process
  (``AggregatorProcess``) commits each round on chain as the ServerApp files the signed updates.
  A round is the time between two consecutive ``RoundCommitted`` seen by this script (round 0,
  which holds the ServerApp's start, is left out).
- **native** (``flower_native_s_per_round``): a plain Flower app (no market: no signing, no blobs,
  no chain) on the same SuperLink and SuperNodes, each ClientApp training its provider's data file
  with the very function the provider uses (`jobmodel.JobModel.train`, same seeds), the ServerApp
  averaging the deltas weighted by sample count; a round is the time between two consecutive
  aggregations (round 0 left out).

Both are medians over the rounds (worst also given); the machine is shared and noisy, so
compare the ratio. Each Flower round starts a fresh ClientApp process per SuperNode (Flower's
subprocess isolation), on both sides.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile
import time
from pathlib import Path

NATIVE_PYPROJECT = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "fedmarket-native-baseline"
version = "1.0.0"
description = "the market job's training as a plain Flower app (benchmark baseline)"
license = "AGPL-3.0-only"
dependencies = ["flwr==1.41.0"]

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "fedmarket"

[tool.flwr.app.components]
serverapp = "native_baseline.apps:server"
clientapp = "native_baseline.apps:client"

[tool.flwr.app.config]
spec = ""
rounds = 3
nodes = 1
"""

NATIVE_APPS = '''"""A plain Flower app doing the market job's training (no signing, blobs or chain)."""

import sys
import time

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

server = ServerApp()
client = ClientApp()


def _job(path):
    from fedmarket.jobmodel import job_model
    from fedmarket.spec import JobSpec

    spec = JobSpec.parse(open(path, "rb").read())
    return spec, job_model(spec)


@server.main()
def main(grid: Grid, context: Context) -> None:
    from fedmarket.fl.quantize import quantize

    spec, _ = _job(str(context.run_config["spec"]))
    want = int(context.run_config["nodes"])
    while len(list(grid.get_node_ids())) < want:
        time.sleep(0.1)
    nodes = sorted(grid.get_node_ids())
    q = np.zeros(spec.n_params, dtype=np.int64)
    for r in range(int(context.run_config["rounds"])):
        msgs = [Message(content=RecordDict({"arrays": ArrayRecord([q]), "metrics": MetricRecord({"round": r})}),
                        dst_node_id=n, message_type="train") for n in nodes]
        waiting = set(grid.push_messages(msgs))
        deltas, weights = [], []
        while waiting:
            for m in grid.pull_messages(waiting):
                waiting.discard(m.metadata.reply_to_message_id)
                if not m.has_error():
                    deltas.append(m.content["arrays"].to_numpy_ndarrays()[0])
                    weights.append(float(m.content["metrics"]["n"]))
            if waiting:
                time.sleep(0.2)
        w = np.asarray(weights) / sum(weights)
        q = q + quantize(sum(wi * d for wi, d in zip(w, deltas)))
        print(f"NATIVE round {r} aggregated {len(deltas)} at {time.time():.3f}", file=sys.stderr, flush=True)


@client.train()
def train(msg: Message, context: Context) -> Message:
    from fedmarket.roles.provider import training_seed
    from fedmarket.keys import dev_account

    spec, jm = _job(str(context.run_config["spec"]))
    data = np.load(str(context.node_config["data"]))
    r = int(msg.content["metrics"]["round"])
    q = msg.content["arrays"].to_numpy_ndarrays()[0]
    address = dev_account(int(context.node_config["dev-account"])).address
    delta = jm.train(q, jm.features(data["X"]), data["y"], seed=training_seed(address, 0, r), round_=r, scaled=True)
    content = RecordDict({"arrays": ArrayRecord([np.asarray(delta)]), "metrics": MetricRecord({"n": len(data["y"])})})
    return Message(content=content, reply_to=msg)
'''


def setup(tmp: Path, url: str, n: int, rounds: int):
    """Deploy, post and start-ready the job (providers joined in this process); returns what the runs need."""
    import numpy as np

    from fedmarket.chain.rpc_backend import RpcChain
    from fedmarket.fl.data import load_dataset, subset
    from fedmarket.fl.partition import iid_partition
    from fedmarket.keys import dev_account
    from fedmarket.roles import Aggregator, Provider, Requester
    from fedmarket.spec import DataSchema, JobSpec, ParticipationSpec, RewardSpec, TrainingSpec, TransportSpec
    from fedmarket.storage import LocalBlobStore, Mailbox
    from fedmarket.testing.localjob import deploy_dev
    from fedmarket.transport.flower import app_hash

    chain = RpcChain(url)
    deployer, treasury, requester, agg = (dev_account(i) for i in range(4))
    provs = [dev_account(40 + i) for i in range(n)]
    dep = deploy_dev(chain, deployer, treasury.address, tmp, [requester, agg, *provs], mint=10**21)
    ds = load_dataset("digits")
    spec = JobSpec(name="flower-bench", data=DataSchema(n_features=64, n_classes=10, feature_low=[0.0] * 64,
                                                        feature_high=[16.0] * 64),
                   training=TrainingSpec(rounds=rounds, local_epochs=1), reward=RewardSpec(escrow=10**20, provider_stake=10**18),
                   participation=ParticipationSpec(min_providers=n, max_providers=n),
                   transport=TransportSpec(flower_app_hash=app_hash()))
    (tmp / "spec.json").write_bytes(spec.canonical())
    agg_store, agg_box = LocalBlobStore(tmp / "agg-blobs"), Mailbox(tmp / "agg-box")
    job = Requester(dep, requester, agg_store).post(spec, agg.address)
    aggregator = Aggregator(dep, agg, agg_store, agg_box)
    aggregator.accept(job)
    configs = []
    for i, idx in enumerate(iid_partition(ds.y, n, 0)):
        np.savez(tmp / f"p{i}.npz", X=subset(ds, idx).X, y=subset(ds, idx).y)
        store = LocalBlobStore(tmp / f"p{i}-blobs")
        store.put(spec.canonical())
        Provider(dep, provs[i], store, Mailbox(tmp / f"p{i}-box"), subset(ds, idx).X, subset(ds, idx).y).join(job)
        configs.append({"rpc": url, "contracts": str(tmp / "contracts.json"), "job": job, "data": str(tmp / f"p{i}.npz"),
                        "store": str(tmp / f"p{i}-blobs"), "mailbox": str(tmp / f"p{i}-box"), "dev-account": 40 + i,
                        "state": str(tmp / f"p{i}-committed")})
    return dep, agg, aggregator, job, configs


def market_rounds(tmp: Path, url: str, link, dep, agg, aggregator, job: int, rounds: int):
    """Round times of the market job over Flower (commit to commit), transactions per round, and the
    ServerApp's exchange times (rounds after the first)."""
    from fedmarket.processes import AggregatorProcess
    from fedmarket.roles.common import committed_rounds

    run = link.submit({"rpc": url, "contracts": str(tmp / "contracts.json"), "job-id": job,
                       "store": str(tmp / "agg-blobs"), "mailbox": str(tmp / "agg-box"), "round-timeout": 600.0,
                       "node-wait": 120.0, "give-up-after": 0.0, "poll": 0.1}, name="market")
    nonce0 = dep.chain.next_nonce(agg.address)
    aggregator.start(job)
    commits: list[float] = []
    proc = AggregatorProcess(dep, agg, aggregator.store, aggregator.mailbox, job, tmp / "agg-state", collect_timeout=600,
                             log=lambda m: None)

    def seen() -> bool:
        n = len(committed_rounds(dep, job))
        while len(commits) < n:
            commits.append(time.monotonic())
        return n >= rounds or not run.alive

    proc.run(0.05, until=seen)
    if len(commits) < rounds:
        raise SystemExit(f"flower_engine: the market run ended early:\n{run.output()[-3000:]}")
    tx = (dep.chain.next_nonce(agg.address) - nonce0 - 1) / rounds  # less the start transaction
    run.wait(60)
    # the ServerApp's own time per round: messages out to the last update filed (the Flower exchange,
    # the ClientApps' start, chain reads and training); the rest of a round is the aggregator's commit
    relay = [float(t) for t in re.findall(r"round \d+: \d+ SuperNodes, \d+ commitments, \d+ updates filed in ([0-9.]+) s", run.output())]
    return [b - a for a, b in zip(commits, commits[1:])], tx, relay[1:]


def native_app(tmp: Path) -> Path:
    app = tmp / "native-app"
    (app / "native_baseline").mkdir(parents=True)
    (app / "pyproject.toml").write_text(NATIVE_PYPROJECT)
    (app / "native_baseline" / "__init__.py").write_text('"""Benchmark baseline."""\n')
    (app / "native_baseline" / "apps.py").write_text(NATIVE_APPS)
    return app


def native_rounds(tmp: Path, link, app: Path, nodes: int, rounds: int) -> list[float]:
    run = link.submit({"spec": str(tmp / "spec.json"), "rounds": rounds, "nodes": nodes}, app_dir=app, name="native")
    if not run.wait(900):
        raise SystemExit("flower_engine: the native run did not end in 900 s")
    stamps = [float(t) for t in re.findall(r"NATIVE round \d+ aggregated \d+ at ([0-9.]+)", run.output())]
    if len(stamps) < rounds:
        raise SystemExit(f"flower_engine: the native run failed:\n{run.output()[-3000:]}")
    return [b - a for a, b in zip(stamps, stamps[1:])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--providers", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    from fedmarket.chain.anvil import AnvilNode
    from fedmarket.transport.flower import app_bundle, app_hash
    from fedmarket.transport.flower_nodes import SuperLink, SuperNode, stop_all

    with tempfile.TemporaryDirectory() as tmpdir, AnvilNode(fixed_interval=False) as node:
        tmp = Path(tmpdir)
        dep, agg, aggregator, job, configs = setup(tmp, node.url, args.providers, args.rounds)
        services = []
        try:
            link = SuperLink(tmp / "link")
            services.append(link.start())
            link.wait_ready()
            # the SuperNodes accept the market's bundle and this benchmark's baseline bundle only
            baseline = native_app(tmp)
            accepted = f"{app_hash()},{app_hash(baseline)}"
            for i, cfg in enumerate(configs):
                services.append(SuperNode(tmp / f"node{i}", link.address, cfg, accepted).start())
            market, tx, relay = market_rounds(tmp, node.url, link, dep, agg, aggregator, job, args.rounds)
            native = native_rounds(tmp, link, baseline, args.providers, args.rounds)
        finally:
            stop_all(reversed(services))
    out = {"providers": args.providers, "rounds": args.rounds, "transport": "flower-deployment-engine",
           "s_per_round": round(statistics.median(market), 3), "worst_s_per_round": round(max(market), 3),
           "flower_native_s_per_round": round(statistics.median(native), 3),
           "worst_flower_native_s_per_round": round(max(native), 3),
           "market_exchange_s_per_round": round(statistics.median(relay), 3) if relay else None,
           "tx_per_round": round(tx, 2), "app_bundle_bytes": len(app_bundle())}
    out["ratio_to_native"] = round(out["s_per_round"] / out["flower_native_s_per_round"], 2)
    out["goal_ratio_le_1_5"] = out["ratio_to_native"] <= 1.5
    print(json.dumps(out))


if __name__ == "__main__":
    main()
