"""Benchmark: the same federated job in fedmarket's engine and in Flower's simulation (Ray), in one run; prints one JSON object.

The job: Fashion-MNIST, softmax regression, 100 clients (Dirichlet alpha=0.5), every client in
every round, one local epoch of SGD (batch 32, lr 0.2), FedAvg weighted by sample count, test
accuracy on the server after every round. Both sides run the very same client computation
(``fedmarket.fl.train.local_sgd`` with the same per-client, per-round seeds), so they must reach
the same accuracy; what differs is the orchestration: our engine trains all clients as one
vectorised stack in one process, Flower sends a Message to each ClientApp through its Ray
simulation backend (one actor per core). For reference the JSON also gives our engine
training the clients one after another (no vectorising). Seconds per round are the median time between the
server-side evaluations of consecutive rounds, leaving out round 1 (actor start-up and data
loading) and the evaluation itself.

Flower 1.41 pins typer<0.21 and rich<15, which conflict with fedmarket's CLI pins, so Flower
lives in its own virtual environment: this script runs its Flower half there, as a child
process of the same run (``--flower-python``, or $FEDMARKET_FLOWER_PYTHON, or this interpreter
if it can import flwr). Set up once with:
    python -m venv --system-site-packages /opt/flower-venv
    /opt/flower-venv/bin/pip install "flwr[simulation]==1.41.0"
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

JOB = dict(n_clients=100, alpha=0.5, epochs=1, batch_size=32, lr=0.2)
DEFAULT_VENV_PYTHON = "/opt/flower-venv/bin/python"


def prepare(seed: int):
    """Data, partition and model of the job (same on both sides)."""
    from fedmarket.fl.datasets import load_fashion_mnist
    from fedmarket.fl.models import SoftmaxRegression, normalize
    from fedmarket.fl.partition import dirichlet_partition

    train, test = load_fashion_mnist()
    X = normalize(train.X, train.feature_low, train.feature_high)
    Xt = normalize(test.X, test.feature_low, test.feature_high)
    parts = dirichlet_partition(train.y, JOB["n_clients"], JOB["alpha"], seed=seed)
    return SoftmaxRegression(784, 10), X, train.y, Xt, test.y, parts


def per_round(stamps: list[float], eval_s: list[float]) -> float:
    """Median seconds per round from the end-of-round timestamps (round 0 = start), without round 1 and evaluation."""
    gaps = [b - a - e for a, b, e in zip(stamps[1:-1], stamps[2:], eval_s[2:])]
    return statistics.median(gaps)


def run_ours(rounds: int, seed: int, vectorised: bool = True) -> dict:
    from fedmarket.fl.models import Model, SoftmaxRegression
    from fedmarket.fl.simulation import federate
    from fedmarket.fl.strategies import FedAvg

    model, X, y, Xt, yt, parts = prepare(seed)
    if not vectorised:  # the same engine training client after client (what the speed-up owes to vectorising)

        class OneByOne(SoftmaxRegression):
            batched_step = Model.batched_step

        model = OneByOne(784, 10)
    stamps, eval_s, accs = [time.perf_counter()], [0.0], []

    def evaluate(w):
        t = time.perf_counter()
        accs.append(model.accuracy(w, Xt, yt))
        eval_s.append(time.perf_counter() - t)
        stamps.append(time.perf_counter())
        return accs[-1]

    hp = {k: JOB[k] for k in ("epochs", "batch_size", "lr")}
    federate(model, [X[p] for p in parts], [y[p] for p in parts], FedAvg(), rounds=rounds, seed=seed,
             evaluate=evaluate, **hp)
    return {"s_per_round": per_round(stamps, eval_s), "acc": accs}


def run_flower(rounds: int, seed: int) -> dict:
    """Flower half: ServerApp + ClientApp on the Ray simulation backend (run inside the Flower venv)."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    client_app = ClientApp()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        from fedmarket.fl.simulation import client_seed
        from fedmarket.fl.train import local_sgd

        model, X, y, _, _, parts = _cached_job(seed)
        k = int(context.node_config["partition-id"])
        rnd = int(msg.content["config"]["server-round"]) - 1
        params = msg.content["arrays"].to_numpy_ndarrays()[0]
        new = local_sgd(model, params, X[parts[k]], y[parts[k]], seed=client_seed(seed, rnd, k),
                        epochs=JOB["epochs"], batch_size=JOB["batch_size"], lr=JOB["lr"])
        content = RecordDict({"arrays": ArrayRecord([new]), "metrics": MetricRecord({"num-examples": len(parts[k])})})
        return Message(content=content, reply_to=msg)

    model, _, _, Xt, yt, _ = _cached_job(seed)
    stamps, eval_s, accs = [], [], []
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=JOB["n_clients"],
                          min_available_nodes=JOB["n_clients"])

        def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            t = time.perf_counter()
            acc = model.accuracy(arrays.to_numpy_ndarrays()[0], Xt, yt) if server_round else 0.0
            if server_round:
                accs.append(acc)
            eval_s.append(time.perf_counter() - t)
            stamps.append(time.perf_counter())
            return MetricRecord({"accuracy": acc})

        strategy.start(grid=grid, initial_arrays=ArrayRecord([model.init_params()]), num_rounds=rounds,
                       evaluate_fn=evaluate)

    cores = os.cpu_count() or 1
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=JOB["n_clients"],
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": cores, "include_dashboard": False}})
    return {"s_per_round": per_round(stamps, eval_s), "acc": accs, "ray_actors": cores}


_JOB_CACHE: dict = {}


def _cached_job(seed: int):
    if seed not in _JOB_CACHE:
        _JOB_CACHE[seed] = prepare(seed)
    return _JOB_CACHE[seed]


def flower_python(arg: str | None) -> str:
    for cand in (arg, os.environ.get("FEDMARKET_FLOWER_PYTHON")):
        if cand:
            return cand
    if importlib.util.find_spec("flwr") is not None:
        return sys.executable
    if Path(DEFAULT_VENV_PYTHON).exists():
        return DEFAULT_VENV_PYTHON
    raise SystemExit("vs_flower: no Python with Flower found; see this script's docstring for the venv set-up")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--flower-python", default=None)
    ap.add_argument("--flower-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.flower_worker:
        print(json.dumps(run_flower(args.rounds, args.seed)))
        return

    ours = run_ours(args.rounds, args.seed)
    ours_loop = run_ours(args.rounds, args.seed, vectorised=False)
    py = flower_python(args.flower_python)
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1] / "src"),
                                                       os.environ.get("PYTHONPATH")]))}
    t = time.perf_counter()
    proc = subprocess.run([py, __file__, "--flower-worker", "--rounds", str(args.rounds), "--seed", str(args.seed)],
                          capture_output=True, text=True, env=env, check=False)
    flower_wall = time.perf_counter() - t
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"vs_flower: the Flower run failed (exit {proc.returncode})")
    flower = json.loads(proc.stdout.strip().splitlines()[-1])
    version = subprocess.run([py, "-c", "import flwr, ray; print(flwr.__version__, ray.__version__)"],
                             capture_output=True, text=True, env=env, check=False).stdout.split()
    out = {
        "job": "Fashion-MNIST, softmax regression, 100 clients Dirichlet(0.5), all clients every round, E=1, B=32, lr=0.2",
        "rounds": args.rounds,
        "ours_s_per_round": round(ours["s_per_round"], 3),
        "flower_s_per_round": round(flower["s_per_round"], 3),
        "speedup": round(flower["s_per_round"] / ours["s_per_round"], 2),
        "ours_one_client_at_a_time_s_per_round": round(ours_loop["s_per_round"], 3),
        "ours_acc": round(ours["acc"][-1], 4),
        "flower_acc": round(flower["acc"][-1], 4),
        "max_acc_gap_over_rounds": round(max(abs(a - b) for a, b in zip(ours["acc"], flower["acc"])), 4),
        "goal_5x_faster_at_equal_accuracy": flower["s_per_round"] >= 5 * ours["s_per_round"]
        and abs(ours["acc"][-1] - flower["acc"][-1]) <= 0.005,
        "flower_wall_s": round(flower_wall, 1),
        "flower_version": version[0] if version else None,
        "ray_version": version[1] if len(version) > 1 else None,
        "ray_actors": flower["ray_actors"],
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
