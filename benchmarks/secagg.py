"""Benchmark: one SecAgg+ round of n providers with d-dimensional fixed-point updates and dropouts at every stage; prints one JSON object.

Each provider holds a random Fashion-MNIST-softmax-sized update (d = 7,850 int64 values by
default). A seeded ``dropout`` fraction of the providers vanishes, a third after advertising keys,
a third after sharing them and a third after sending its masked input (before unmasking).
``recovered`` is whether the unmasked sum equals the plain int64 sum of the providers whose
masked input arrived. ``client_s`` is a provider's mean compute time over all its rounds,
``server_s`` the aggregator's total; ``plain_client_s`` what a provider spends without secure
aggregation (quantize + serialize its update); ``expansion`` the mean bytes a completing provider
sends over the plain update's bytes (``8 d``). Degree and threshold come from
``SecAggConfig.for_population(n, d, dropout=0.3)`` (``k = O(log n)``, ``t = k // 2 + 1``).

``--flower`` also runs Flower 1.41's SecAgg+ (``SecAggPlusWorkflow`` + ``secaggplus_mod``, on its
Ray simulation backend, no dropout, same n and d, num_shares = our degree + 1, threshold = ours)
as a child process of the Flower venv (``/opt/flower-venv/bin/python``, set up as in
benchmarks/vs_flower.py) and reports ``flower_s``: the wall time of its SecAgg+ fit round
(the second of two rounds, so Ray actor start-up is left out), against our ``client_s * n +
server_s`` (``ours_sequential_s``: every client's work done one after another, as a single
process simulation does). Without ``--flower``, ``flower_s`` is ``null``.

    python benchmarks/secagg.py [--n 1000] [--d 7850] [--dropout 0.3] [--seed 0] [--flower]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--d", type=int, default=7850)
    ap.add_argument("--dropout", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--flower", action="store_true")
    ap.add_argument("--flower-python", default=os.environ.get("FEDMARKET_FLOWER_PYTHON", "/opt/flower-venv/bin/python"))
    ap.add_argument("--flower-worker", nargs=3, type=int, metavar=("N", "D", "K"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.flower_worker:
        print(json.dumps(flower_worker(*args.flower_worker)))
        return

    from fedmarket.fl.quantize import quantize
    from fedmarket.privacy.secagg import SecAggConfig, run_round

    rng = np.random.default_rng(args.seed)
    floats = rng.normal(0.0, 0.01, size=(args.n, args.d))
    t0 = time.perf_counter()
    Q = [quantize(floats[u]) for u in range(args.n)]
    _ = [q.tobytes() for q in Q]
    plain_client_s = (time.perf_counter() - t0) / args.n

    cfg = SecAggConfig.for_population(
        args.n, args.d, dropout=args.dropout, round_id=b"bench" + args.seed.to_bytes(8, "big")
    )
    gone = rng.permutation(args.n)[: round(args.dropout * args.n)].tolist()
    stages = [set(gone[i::3]) for i in range(3)]
    t0 = time.perf_counter()
    res = run_round(
        cfg, dict(enumerate(Q)), drop_before_share=stages[0], drop_before_mask=stages[1], drop_after_mask=stages[2]
    )
    wall = time.perf_counter() - t0
    plain = np.sum(np.stack([Q[u] for u in sorted(res.survivors)]), axis=0)
    complete = [u for u in range(args.n) if u not in stages[0] | stages[1] | stages[2]]
    out = {
        "n": args.n,
        "d": args.d,
        "dropout": args.dropout,
        "degree": cfg.k,
        "threshold": cfg.threshold,
        "survivors": len(res.survivors),
        "dropped_after_masking": len(stages[2]),
        "recovered": bool(np.array_equal(res.total, plain)),
        "client_s": round(float(np.mean([res.client_seconds[u] for u in complete])), 5),
        "server_s": round(res.server_seconds, 3),
        "plain_client_s": round(plain_client_s, 6),
        "expansion": round(float(np.mean([res.client_bytes[u] for u in complete])) / (8 * args.d), 4),
        "wall_s": round(wall, 2),
        "flower_s": None,
    }
    out["ours_sequential_s"] = round(float(sum(res.client_seconds.values())) + res.server_seconds, 3)
    if args.flower:
        env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "RAY_USAGE_STATS_ENABLED": "0"}
        proc = subprocess.run(
            [
                args.flower_python,
                __file__,
                "--flower-worker",
                str(args.n),
                str(args.d),
                str(min(cfg.k + 1, args.n)),
                "--seed",
                str(args.seed),
            ],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-4000:])
            raise SystemExit(f"secagg: the Flower run failed (exit {proc.returncode})")
        fl = json.loads(proc.stdout.strip().splitlines()[-1])
        out["flower_s"] = round(fl["round_s"][-1], 3)
        out["flower_rounds_s"] = [round(x, 3) for x in fl["round_s"]]
        out["flower_num_shares"] = fl["num_shares"]
        out["flower_threshold"] = fl["threshold"]
        out["flower_version"] = fl["version"]
        out["speedup_vs_flower"] = round(out["flower_s"] / out["ours_sequential_s"], 2)
    print(json.dumps(out))


def flower_worker(n: int, d: int, num_shares: int) -> dict:
    """Flower half (run in the Flower venv): two rounds of FedAvg under SecAgg+, each round timed."""
    import flwr
    from flwr.client import ClientApp, NumPyClient
    from flwr.client.mod import secaggplus_mod
    from flwr.common import ndarrays_to_parameters
    from flwr.server import LegacyContext, ServerApp, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
    from flwr.simulation import run_simulation

    threshold = num_shares // 2 + 1
    times: list[float] = []

    class Timed(SecAggPlusWorkflow):
        def __call__(self, grid, context):
            t0 = time.perf_counter()
            super().__call__(grid, context)
            times.append(time.perf_counter() - t0)

    class Client(NumPyClient):
        def __init__(self, pid: int):
            self.pid = pid

        def fit(self, parameters, config):
            rng = np.random.default_rng(self.pid)
            return [rng.normal(0.0, 0.01, size=d)], 1, {}

    client_app = ClientApp(
        client_fn=lambda context: Client(int(context.node_config["partition-id"])).to_client(), mods=[secaggplus_mod]
    )
    server_app = ServerApp()

    @server_app.main()
    def main(grid, context) -> None:
        strategy = FedAvg(
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_fit_clients=n,
            min_available_clients=n,
            initial_parameters=ndarrays_to_parameters([np.zeros(d)]),
        )
        ctx = LegacyContext(context=context, config=ServerConfig(num_rounds=2), strategy=strategy)
        DefaultWorkflow(fit_workflow=Timed(num_shares=num_shares, reconstruction_threshold=threshold))(grid, ctx)

    cores = os.cpu_count() or 1
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=n,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": cores, "include_dashboard": False},
        },
    )
    return {"round_s": times, "num_shares": num_shares, "threshold": threshold, "version": flwr.__version__}


if __name__ == "__main__":
    main()
