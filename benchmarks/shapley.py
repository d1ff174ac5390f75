"""Benchmark: contribution scoring of one real FL round — exact Shapley vs GTG-Shapley, TMC and leave-one-out; prints one JSON object.

The round: softmax regression on Fashion-MNIST (or scikit-learn's digits when it is not installed),
``--providers`` providers with a Dirichlet label split, ``--noisy`` of them with mostly random labels
(poor quality, so values differ); the global model is first trained for ``--warm-rounds`` FedAvg
rounds, then every provider trains locally once more and the utility of a coalition is the
held-out accuracy of the starting model plus the coalition's FedAvg update. Exact, GTG, TMC and LOO
are measured on the same round (each on a fresh cache, interleaved, best of ``--repeats``); errors are mean absolute errors against
exact, as a fraction of the total value ``v(N) - v(empty)``. GTG is then timed on a round of the
same kind with ``--big`` providers.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    from scipy.stats import rankdata

    ra, rb = rankdata(a), rankdata(b)
    return float(np.corrcoef(ra, rb)[0, 1])


def load(dataset: str):
    """(X_train, y_train, X_test, y_test, n_classes), features scaled to [0, 1]."""
    from fedmarket.fl.data import load_dataset, train_test_split
    from fedmarket.fl.models import normalize

    if dataset == "fashion_mnist":
        from fedmarket.fl.datasets import load_fashion_mnist

        train, test = load_fashion_mnist()
    else:
        train, test = train_test_split(load_dataset(dataset), 0.3, seed=0)
    f = lambda d: normalize(d.X, d.feature_low, d.feature_high)
    return f(train), train.y, f(test), test.y, train.num_classes


def make_round(data, n: int, *, samples: int, val: int, noisy: int, alpha: float, warm: int, seed: int):
    """Build one scoring round: (model, start params, deltas (n, p), sample weights, X_val, y_val)."""
    from fedmarket.fl.models import SoftmaxRegression
    from fedmarket.fl.partition import dirichlet_partition
    from fedmarket.fl.simulation import client_seed
    from fedmarket.fl.train import local_sgd_many

    Xtr, ytr, Xte, yte, c = data
    rng = np.random.default_rng(seed)
    pick = rng.choice(Xtr.shape[0], size=min(samples, Xtr.shape[0]), replace=False)
    X, y = Xtr[pick], ytr[pick]
    parts = dirichlet_partition(y, n, alpha, seed=seed, min_size=10)
    Xs = [X[p] for p in parts]
    ys = [y[p].copy() for p in parts]
    for k in range(noisy):  # poor-quality providers: 80% of their labels random
        bad = rng.random(ys[k].shape[0]) < 0.8
        ys[k][bad] = rng.integers(0, c, bad.sum())
    model = SoftmaxRegression(X.shape[1], c)
    w = np.array([len(t) for t in ys], dtype=np.float64)
    hp = {"epochs": 1, "batch_size": 32, "lr": 0.05}
    params = model.init_params()
    for r in range(warm + 1):
        P = local_sgd_many(model, params, Xs, ys, seeds=[client_seed(seed, r, k) for k in range(n)], **hp)
        U = P - params
        if r < warm:
            params = params + (w / w.sum()) @ U
    vpick = rng.choice(Xte.shape[0], size=min(val, Xte.shape[0]), replace=False)
    return model, params, U, w, Xte[vpick], yte[vpick]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dataset", default=None, help="fashion_mnist (default when installed) or digits")
    ap.add_argument("--providers", type=int, default=12)
    ap.add_argument("--big", type=int, default=100, help="providers of the GTG-only timing round")
    ap.add_argument("--noisy", type=int, default=2)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--samples", type=int, default=300, help="training samples per provider (on average)")
    ap.add_argument("--val", type=int, default=5000, help="held-out samples of the validator")
    ap.add_argument("--warm-rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3, help="timings of each n = 12 method (best kept)")
    ap.add_argument("--verbose", action="store_true", help="add a \"details\" object (values, evaluation counts)")
    args = ap.parse_args()

    from fedmarket.fl.datasets import DatasetNotInstalled
    from fedmarket.scoring import AggregationUtility, exact_shapley, gtg_shapley, leave_one_out, tmc_shapley

    name = args.dataset
    if name is None:
        try:
            data, name = load("fashion_mnist"), "fashion_mnist"
        except DatasetNotInstalled:
            data, name = load("digits"), "digits"
    else:
        data = load(name)

    def game(n: int) -> tuple:
        """The round's (model, params, updates, X_val, y_val, weights): the utility's arguments."""
        model, params, U, w, Xv, yv = make_round(
            data, n, samples=args.samples * n, val=args.val, noisy=args.noisy, alpha=args.alpha,
            warm=args.warm_rounds, seed=args.seed,
        )
        return model, params, U, Xv, yv, w

    def timed(fn):
        t = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t

    base = game(args.providers)
    fresh = lambda: AggregationUtility(*base)  # every timing includes building the utility (the logit deltas)
    fresh().evaluate(np.ones((4, args.providers), dtype=bool))  # warm-up (BLAS threads, page faults)
    runs = {
        "exact": lambda: exact_shapley(fresh()),
        "gtg": lambda: gtg_shapley(fresh(), seed=args.seed),
        "tmc": lambda: tmc_shapley(fresh(), seed=args.seed),
        "loo": lambda: leave_one_out(fresh()),
    }
    best = dict.fromkeys(runs, float("inf"))
    res = {}
    for _ in range(args.repeats):  # interleaved, best of --repeats: load on a shared machine hits all alike
        for key, fn in runs.items():
            res[key], t = timed(fn)
            best[key] = min(best[key], t)
    exact, gtg, tmc, loo = res["exact"], res["gtg"], res["tmc"], res["loo"]
    exact_s, gtg_s, tmc_s, loo_s = best["exact"], best["gtg"], best["tmc"], best["loo"]
    total = abs(float(exact.sum()))
    mae = lambda est: float(np.mean(np.abs(est - exact)) / total)

    big = game(args.big)
    big_est, gtg_s_big = timed(lambda: gtg_shapley(AggregationUtility(*big), seed=args.seed))

    out = {
        "exact_s": round(exact_s, 4),
        "gtg_s": round(gtg_s, 4),
        "tmc_s": round(tmc_s, 4),
        "loo_s": round(loo_s, 4),
        "gtg_mae": round(mae(gtg.values), 5),
        "tmc_mae": round(mae(tmc.values), 5),
        "loo_mae": round(mae(loo), 5),
        "gtg_spearman": round(spearman(gtg.values, exact), 4),
        f"gtg_s_n{args.big}": round(gtg_s_big, 3),
    }
    if args.verbose:
        out["details"] = {
            "dataset": name, "providers": args.providers, "total_value": total,
            "v_empty": fresh().empty(), "v_full": fresh().grand(),
            "exact": exact.round(5).tolist(), "gtg": gtg.values.round(5).tolist(),
            "tmc": tmc.values.round(5).tolist(), "loo": loo.round(5).tolist(),
            "gtg_permutations": gtg.permutations, "gtg_evaluations": gtg.evaluations, "gtg_converged": gtg.converged,
            "tmc_permutations": tmc.permutations, "tmc_evaluations": tmc.evaluations,
            f"gtg_n{args.big}_permutations": big_est.permutations, f"gtg_n{args.big}_evaluations": big_est.evaluations,
            f"gtg_n{args.big}_converged": big_est.converged,
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
