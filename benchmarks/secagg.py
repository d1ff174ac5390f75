"""Benchmark: one SecAgg+ round of n providers with d-dimensional fixed-point updates and dropouts at every stage; prints one JSON object.

Each provider holds a random Fashion-MNIST-softmax-sized update (d = 7,850 int64 values by
default). A seeded ``dropout`` fraction of the providers vanishes, a third after advertising keys,
a third after sharing them and a third after sending its masked input (before unmasking).
``recovered`` is whether the unmasked sum equals the plain int64 sum of the providers whose
masked input arrived. ``client_s`` is a provider's mean compute time over all its rounds,
``server_s`` the aggregator's total; ``plain_client_s`` what a provider spends without secure
aggregation (quantize + serialize its update); ``expansion`` the mean bytes a completing provider
sends over the plain update's bytes (``8 d``). The masks are ChaCha20 keystreams: ``prg_chacha20_s``
is the seconds per mask of ``d`` words, next to ``prg_philox_old_s`` for the Philox-4x64 generator used
before. The consistency check (every survivor signs the survivor set; every provider verifies all
the confirmations before unmasking) is measured as market providers run it (``roles.secure_round``,
secp256k1 signatures over canonical JSON): ``consistency_sign_s`` and ``consistency_verify_s`` per
provider, ``consistency_bytes`` its message, ``expansion_with_consistency`` the expansion with it.
Degree and threshold come from
``SecAggConfig.for_population(n, d, dropout=0.3)`` (``k = O(log n)``, ``k/2 < t <= k``, sized for the
dropout and for a third of the providers colluding).

``--flower`` also runs Flower 1.41's SecAgg+ (``SecAggPlusWorkflow`` + ``secaggplus_mod``, same n
and d, no dropout, num_shares = our degree + 1, reconstruction threshold = ours) as a child process
of the Flower venv (``/opt/flower-venv/bin/python``, set up as in benchmarks/vs_flower.py) and
reports ``flower_s``: the wall time of its SecAgg+ fit round (the second of two rounds, so Ray
start-up is left out), with ``flower_stages_s`` (its four stages). Flower's simulation runtime has
only a Ray backend in 1.41 (``start_vce`` always builds a ``RayBackend``), so the child uses Ray with
one actor per core (``num_cpus`` 1 per client). Ours is ``ours_sequential_s = sum of client_s +
server_s`` (every client's work done one after another, as a single-process simulation does) and,
as Flower's run has no dropout, ``ours_sequential_s_no_dropout`` (the same round with no one
dropping); ``speedup_vs_flower`` and ``speedup_vs_flower_no_dropout`` are ``flower_s`` over those.
Flower's cost grows steeply with n when num_shares ~ n (pure-Python Shamir over GF(2**128) from
pycryptodome, per 16-byte chunk; its share-keys and unmask stages dominate): measured 7 s per round
at n = 20 and 67 s at n = 50 on 2 cores (about n**2.5), so several minutes per round at n = 100
(two rounds plus Ray start-up did not finish in 14 min); compare at ``--n 50``. The child gets
telemetry and update checks off and is killed after ``--flower-timeout`` s (default 1200); then
``flower_s`` is ``null`` and ``flower_error`` says why. Without ``--flower``, ``flower_s`` is
``null``.

    python benchmarks/secagg.py [--n 1000] [--d 7850] [--dropout 0.3] [--seed 0]
    python benchmarks/secagg.py --n 50 --flower [--flower-timeout 1200]
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
    ap.add_argument("--flower-timeout", type=float, default=1200.0, help="seconds before the Flower run is killed")
    ap.add_argument("--flower-worker", nargs=4, type=int, metavar=("N", "D", "K", "T"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.flower_worker:
        for k, v in (
            ("FLWR_TELEMETRY_ENABLED", "0"),
            ("FLWR_DISABLE_UPDATE_CHECK", "1"),
            ("RAY_USAGE_STATS_ENABLED", "0"),
        ):
            os.environ.setdefault(k, v)
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
    out.update(prg_cost(args.d, cfg.k))
    out.update(consistency_cost(cfg, sorted(res.survivors), len(complete)))
    out["expansion_with_consistency"] = round(out["expansion"] + out["consistency_bytes"] / (8 * args.d), 4)
    if args.flower:
        # Flower's run has no dropout: time our round without dropout too, same n, d, degree, threshold
        res0 = run_round(cfg, dict(enumerate(Q)))
        out["ours_sequential_s_no_dropout"] = round(float(sum(res0.client_seconds.values())) + res0.server_seconds, 3)
        out.update(run_flower(args, num_shares=min(cfg.k + 1, args.n), threshold=cfg.threshold))
        if out["flower_s"] is not None:
            out["speedup_vs_flower"] = round(out["flower_s"] / out["ours_sequential_s"], 2)
            out["speedup_vs_flower_no_dropout"] = round(out["flower_s"] / out["ours_sequential_s_no_dropout"], 2)
    print(json.dumps(out))


def prg_cost(d: int, k: int, reps: int = 200) -> dict:
    """Seconds per mask of ``d`` words: the ChaCha20 keystream the protocol uses, and the Philox-4x64
    generator it used before (keyed the same way), and a provider's PRG time per round (``k + 1`` masks)."""
    from fedmarket.privacy.secagg import prg_mask

    seeds = [os.urandom(32) for _ in range(reps)]
    t0 = time.perf_counter()
    for sd in seeds:
        prg_mask(sd, d)
    chacha = (time.perf_counter() - t0) / reps
    t0 = time.perf_counter()
    for sd in seeds:
        np.random.Philox(key=int.from_bytes(sd[:16], "little")).random_raw(d).astype(np.uint64, copy=False)
    philox = (time.perf_counter() - t0) / reps
    return {"prg_chacha20_s": round(chacha, 7), "prg_philox_old_s": round(philox, 7),
            "prg_per_client_round_s": round(chacha * (k + 1), 5)}


def consistency_cost(cfg, survivors: list[int], completing: int) -> dict:
    """The consistency check as market providers run it (``roles.secure_round``): each survivor signs the
    survivor set (secp256k1, its market key) and every provider verifies all the confirmations before it
    unmasks (``pinned``). Per completing provider: signing seconds, verifying seconds, bytes sent."""
    from eth_account import Account as EthAccount

    from fedmarket.roles import secure_round as sr

    signers = survivors[:completing]
    accounts = sorted((EthAccount.create() for _ in range(cfg.n)), key=lambda a: int(a.address, 16))
    members = [a.address for a in accounts]
    t0 = time.perf_counter()
    raws = [sr.confirm_message(accounts[u].key, cfg.round_id, members[u], u, frozenset(survivors)) for u in signers]
    sign_s = (time.perf_counter() - t0) / len(signers)
    t0 = time.perf_counter()
    confirmed = sr.pinned(cfg, members, raws, frozenset(survivors))
    verify_s = time.perf_counter() - t0
    assert len(confirmed) == len(signers)
    return {"consistency_sign_s": round(sign_s, 5), "consistency_verify_s": round(verify_s, 3),
            "consistency_bytes": int(np.mean([len(r) for r in raws])), "consistency_confirmations": len(raws)}


def run_flower(args: argparse.Namespace, num_shares: int, threshold: int) -> dict:
    """Run the Flower half in the Flower venv as a child process, killed after ``--flower-timeout`` s.

    Returns the ``flower_*`` fields; on a timeout or a failure ``flower_s`` is ``null`` and
    ``flower_error`` says why (with the stages the child had finished, from its stderr).
    """
    env = {
        **os.environ,
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_DEDUP_LOGS": "0",
    }
    cmd = [args.flower_python, os.path.abspath(__file__), "--flower-worker"]
    cmd += [str(args.n), str(args.d), str(num_shares), str(threshold)]
    out: dict = {"flower_s": None, "flower_num_shares": num_shares, "flower_threshold": threshold}
    t0 = time.perf_counter()
    try:
        # own session, so that on a timeout the child and everything it started (Ray) can be killed
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
        )
    except OSError as e:
        out["flower_error"] = f"could not start {args.flower_python}: {e}"
        return out
    try:
        stdout, stderr = proc.communicate(timeout=args.flower_timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass
        try:  # a grandchild that left the group may still hold the pipes: don't wait on it for long
            stdout, stderr = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            stdout, stderr = "", ""
        done = [ln.split("flower-secagg: ", 1)[1] for ln in stderr.splitlines() if "flower-secagg: " in ln]
        out["flower_error"] = f"timeout: no result after {args.flower_timeout:.0f} s (killed); finished: {done}"
        return out
    out["flower_wall_s"] = round(time.perf_counter() - t0, 1)
    try:
        fl = json.loads(stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        fl = None
    if proc.returncode != 0 or fl is None or len(fl.get("round_s", [])) < 2:
        sys.stderr.write(stderr[-4000:])
        out["flower_error"] = (
            f"the Flower run failed (exit {proc.returncode}): " + (stderr.strip().splitlines() or [""])[-1][-300:]
        )
        return out
    out["flower_s"] = round(fl["round_s"][-1], 3)
    out["flower_rounds_s"] = [round(x, 3) for x in fl["round_s"]]
    out["flower_stages_s"] = fl["stages_s"][-1]
    out["flower_version"] = fl["version"]
    out["ray_version"] = fl.get("ray_version")
    return out


def flower_worker(n: int, d: int, num_shares: int, threshold: int) -> dict:
    """Flower half (run in the Flower venv): two rounds of FedAvg under SecAgg+, each round timed."""
    import flwr
    import ray
    from flwr.client import ClientApp, NumPyClient
    from flwr.client.mod import secaggplus_mod
    from flwr.common import ndarrays_to_parameters
    from flwr.server import LegacyContext, ServerApp, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
    from flwr.simulation import run_simulation

    times: list[float] = []
    stages: list[dict[str, float]] = []

    def timed_stage(name: str):
        def run(self, grid, context, state):
            t0 = time.perf_counter()
            ok = getattr(SecAggPlusWorkflow, name)(self, grid, context, state)
            dt = time.perf_counter() - t0
            stages[-1][name.removesuffix("_stage")] = round(dt, 3)
            # progress on stderr, so a timed-out run still shows how far it got
            print(f"flower-secagg: round {len(stages)} {name} {dt:.2f}s ok={ok}", file=sys.stderr, flush=True)
            return ok

        return run

    class Timed(SecAggPlusWorkflow):
        setup_stage = timed_stage("setup_stage")
        share_keys_stage = timed_stage("share_keys_stage")
        collect_masked_vectors_stage = timed_stage("collect_masked_vectors_stage")
        unmask_stage = timed_stage("unmask_stage")

        def __call__(self, grid, context):
            stages.append({})
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
    return {
        "round_s": times,
        "stages_s": stages,
        "num_shares": num_shares,
        "threshold": threshold,
        "version": flwr.__version__,
        "ray_version": ray.__version__,
    }


if __name__ == "__main__":
    main()
