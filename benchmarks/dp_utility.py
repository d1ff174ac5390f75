"""Benchmark: privacy/utility of central DP-FedAvg on Fashion-MNIST with 1,000 simulated providers; prints one JSON object.

Softmax regression (784 x 10), IID split of the 60,000 training images over 1,000 providers
(60 each), every provider every round, one local epoch (batch 16, lr 0.2), ``--rounds`` rounds.
Non-private: FedAvg, uniform weights. Private: each update clipped to L2 norm ``--clip``, the
aggregator adds Gaussian noise of std ``z * clip`` to the sum, ``z`` the smallest noise multiplier
whose RDP accountant (no sampling, add/remove-one-provider adjacency) keeps the whole job within
``(epsilon, 1e-5)``. ``local_points``: the same budget spent with local DP (each provider noises
its own update with std ``2 z clip``, sensitivity 2 clip), to show its cost. ``market_points``: what
a market job in privacy mode ``secagg_dp`` gets for the same budget: on chain, who takes part is
public, so the market calibrates to replace-one adjacency (sensitivity ``2 clip``) and the sum
carries noise of std ``2 z clip`` (split among the providers under the masks). Accuracy on the 10,000
test images after the last round. Goal: at epsilon <= 8, accuracy >= 0.9 x the non-private run.

    python benchmarks/dp_utility.py [--rounds 25] [--clip 0.5] [--epsilons 1,2,4,8] [--local-epsilons 8] [--market-epsilons 8] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
from concurrent.futures import ProcessPoolExecutor

import numpy as np

DELTA = 1e-5
N_PROVIDERS = 1000
_S: dict = {}


def _setup(seed: int) -> None:
    from fedmarket.fl.datasets import load_fashion_mnist
    from fedmarket.fl.models import SoftmaxRegression, normalize
    from fedmarket.fl.partition import iid_partition

    train, test = load_fashion_mnist()
    X = normalize(train.X, train.feature_low, train.feature_high)
    parts = iid_partition(train.y, N_PROVIDERS, seed)
    _S.update(
        model=SoftmaxRegression(784, 10),
        Xs=[X[p] for p in parts],
        ys=[train.y[p] for p in parts],
        Xt=normalize(test.X, test.feature_low, test.feature_high),
        yt=test.y,
    )


def _run(job: tuple) -> float:
    from fedmarket.fl.simulation import federate
    from fedmarket.fl.strategies.fedavg import FedAvg
    from fedmarket.privacy.strategy import DPFedAvg

    mode, z, clip, rounds, seed = job
    if not _S:
        _setup(seed)
    m = _S["model"]
    if mode == "market":  # replace-one calibration: std 2 z C on the sum (what secagg_dp jobs add)
        mode, z = "central", 2 * z
    strategy = FedAvg() if mode == "plain" else DPFedAvg(clip, z, seed=seed, mode=mode)
    res = federate(
        m,
        _S["Xs"],
        _S["ys"],
        strategy,
        rounds=rounds,
        epochs=1,
        batch_size=16,
        lr=0.2,
        seed=seed,
        evaluate=lambda p: float(np.mean(m.predict(p, _S["Xt"]) == _S["yt"])),
        eval_every=rounds,
    )
    return res.history[-1][1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=25)
    ap.add_argument("--clip", type=float, default=0.5)
    ap.add_argument("--epsilons", default="1,2,4,8")
    ap.add_argument("--local-epsilons", default="8")
    ap.add_argument("--market-epsilons", default="8")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    args = ap.parse_args()

    from fedmarket.privacy.accountant import epsilon_for, noise_multiplier_for

    eps_c = [float(e) for e in args.epsilons.split(",") if e]
    eps_l = [float(e) for e in args.local_epsilons.split(",") if e]
    eps_m = [float(e) for e in args.market_epsilons.split(",") if e]
    zs = {e: noise_multiplier_for(e, DELTA, args.rounds) for e in sorted(set(eps_c + eps_l + eps_m))}
    jobs = [("plain", 0.0, args.clip, args.rounds, args.seed)]
    jobs += [("central", zs[e], args.clip, args.rounds, args.seed) for e in eps_c]
    jobs += [("local", zs[e], args.clip, args.rounds, args.seed) for e in eps_l]
    jobs += [("market", zs[e], args.clip, args.rounds, args.seed) for e in eps_m]
    with ProcessPoolExecutor(args.workers) as ex:
        accs = list(ex.map(_run, jobs))
    point = lambda e, a: {
        "epsilon": round(epsilon_for(zs[e], args.rounds, DELTA), 4),
        "delta": DELTA,
        "noise_multiplier": round(zs[e], 4),
        "accuracy": round(a, 4),
    }
    nonprivate = accs[0]
    out = {
        "nonprivate_acc": round(nonprivate, 4),
        "points": [point(e, a) for e, a in zip(eps_c, accs[1 : 1 + len(eps_c)])],
        "local_points": [point(e, a) for e, a in zip(eps_l, accs[1 + len(eps_c) : 1 + len(eps_c) + len(eps_l)])],
        "market_points": [{**point(e, a), "mode": "secagg_dp"} for e, a in zip(eps_m, accs[1 + len(eps_c) + len(eps_l) :])],
        "providers": N_PROVIDERS,
        "rounds": args.rounds,
        "clip": args.clip,
    }
    ok = [p["accuracy"] >= 0.9 * nonprivate for p in out["points"] if p["epsilon"] <= 8]
    out["goal_met"] = bool(ok) and all(ok)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
