"""Benchmark: accuracy on Fashion-MNIST, 100 providers, Dirichlet(0.5): centralised vs FedAvg, and every attack at 30% malicious; prints one JSON object.

Model: softmax regression (784 x 10, L2 1e-4), the engine's default model. Centralised baseline:
the same model and SGD on all 60,000 training images (10 epochs, batch 32, lr 0.05).
Federated: 100 providers (Dirichlet alpha 0.5 label skew), all providers every round, one local
epoch (batch 32, lr 0.2), ``--rounds`` rounds, weights = sample counts. Under attack, 30 of the
100 providers (a seeded random choice) run the attack from ``fedmarket.fl.attacks`` and the same
job is aggregated with FedAvg and with one robust strategy (Multi-Krum assuming 30% Byzantine by
default; ``--robust`` picks another registered one) -- the same robust strategy for every attack.
Accuracy is on the 10,000 test images after the last round. Goals: ``fedavg_acc >= 0.97 *
centralized_acc``; the robust accuracy at least 0.9 times the clean FedAvg accuracy under every
attack.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

ATTACKS = {
    "label_flip": ("label_flip", {}),
    "sign_flip": ("sign_flip", {"scale": 4.0}),
    "scaling": ("scaling", {"factor": 20.0}),
    "gaussian": ("gaussian", {"sigma": 1.0}),
    "alie": ("alie", {}),
    "backdoor": ("backdoor", {"target": 0, "fraction": 0.5}),
    "free_rider_global": ("free_rider", {"mode": "global"}),
    "free_rider_noise": ("free_rider", {"mode": "noise", "sigma": 1e-3}),
    "sybil": ("sybil", {"base": "label_flip"}),
}
_STATE: dict = {}


def _setup(seed: int, robust: str) -> None:
    from fedmarket.fl.datasets import load_fashion_mnist
    from fedmarket.fl.models import SoftmaxRegression, normalize
    from fedmarket.fl.partition import dirichlet_partition

    train, test = load_fashion_mnist()
    X = normalize(train.X, train.feature_low, train.feature_high)
    Xt = normalize(test.X, test.feature_low, test.feature_high)
    rng = np.random.default_rng(seed)
    ids = np.arange(train.n_samples)
    root = None
    if robust == "fltrust":  # the server's clean root set: 100 training images no provider holds
        pick = rng.choice(train.n_samples, 100, replace=False)
        root = (X[pick], train.y[pick])
        ids = np.setdiff1d(ids, pick)
    parts = [ids[p] for p in dirichlet_partition(train.y[ids], 100, 0.5, seed=seed)]
    _STATE.update(
        model=SoftmaxRegression(784, 10), X=X, y=train.y, Xt=Xt, yt=test.y, root=root,
        Xs=[X[p] for p in parts], ys=[train.y[p] for p in parts],
        malicious=np.sort(rng.choice(100, 30, replace=False)),
    )


def _run(job: tuple) -> tuple:
    """One federation: (key, strategy name, attack key, rounds, seed) -> (key, accuracy, backdoor success, seconds)."""
    from threadpoolctl import threadpool_limits

    from fedmarket.fl.attacks import Backdoor, make_attack
    from fedmarket.fl.simulation import federate
    from fedmarket.fl.strategies import make_strategy

    key, strat, attack_key, rounds, seed, threads = job
    s = _STATE
    strategy = make_strategy(strat, byzantine_fraction=0.3) if strat in ("multikrum", "krum") else make_strategy(strat)
    attack = None
    if attack_key is not None:
        name, params = ATTACKS[attack_key]
        attack = make_attack(name, **dict(params))
    t = time.perf_counter()
    with threadpool_limits(threads):
        res = federate(s["model"], s["Xs"], s["ys"], strategy, rounds=rounds, epochs=1, batch_size=32, lr=0.2,
                       seed=seed, attack=attack, malicious=s["malicious"] if attack else (), root_data=s["root"])
    acc = s["model"].accuracy(res.params, s["Xt"], s["yt"])
    bd = attack.success_rate(s["model"], res.params, s["Xt"], s["yt"]) if isinstance(attack, Backdoor) else None
    return key, acc, bd, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--robust", default="multikrum", help="registered strategy used against every attack")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="federations run in parallel")
    args = ap.parse_args()
    t0 = time.perf_counter()
    _setup(args.seed, args.robust)

    from fedmarket.fl.train import centralized_train

    s = _STATE
    t = time.perf_counter()
    central = centralized_train(s["model"], s["X"], s["y"], epochs=10, batch_size=32, lr=0.05, seed=args.seed)
    central_s = time.perf_counter() - t
    centralized_acc = s["model"].accuracy(central, s["Xt"], s["yt"])

    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    jobs = [("clean", "fedavg", None, args.rounds, args.seed, threads)]
    for a in ATTACKS:
        jobs += [((a, "fedavg"), "fedavg", a, args.rounds, args.seed, threads),
                 ((a, "robust"), args.robust, a, args.rounds, args.seed, threads)]
    if args.jobs > 1:
        import multiprocessing as mp

        with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("fork")) as ex:
            results = list(ex.map(_run, jobs))
    else:
        results = [_run(j) for j in jobs]
    by_key = {k: (acc, bd, sec) for k, acc, bd, sec in results}
    fedavg_acc = by_key["clean"][0]
    attacks = {}
    for a in ATTACKS:
        fa, fbd, _ = by_key[(a, "fedavg")]
        ra, rbd, _ = by_key[(a, "robust")]
        entry = {"fedavg": round(fa, 4), "robust": round(ra, 4), "robust_strategy": args.robust,
                 "robust_over_clean_fedavg": round(ra / fedavg_acc, 3)}
        if fbd is not None:
            entry["backdoor_success_fedavg"] = round(fbd, 4)
            entry["backdoor_success_robust"] = round(rbd, 4)
        attacks[a] = entry
    worst = min(e["robust_over_clean_fedavg"] for e in attacks.values())
    out = {
        "dataset": "fashion_mnist", "model": "softmax_regression", "providers": 100, "alpha": 0.5,
        "rounds": args.rounds, "malicious_fraction": 0.3, "robust_strategy": args.robust,
        "centralized_acc": round(centralized_acc, 4),
        "fedavg_acc": round(fedavg_acc, 4),
        "fedavg_over_centralized": round(fedavg_acc / centralized_acc, 4),
        "goal_fedavg_at_least_0.97_centralized": fedavg_acc >= 0.97 * centralized_acc,
        "attacks": attacks,
        "worst_robust_over_clean_fedavg": worst,
        "goal_robust_at_least_0.9_clean_fedavg": worst >= 0.9,
        "centralized_train_s": round(central_s, 1),
        "s_per_federation_median": round(float(np.median([r[3] for r in results])), 1),
        "total_s": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
