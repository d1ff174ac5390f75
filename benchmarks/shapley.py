"""Benchmark: contribution scoring of real FL rounds — exact Shapley vs GTG-Shapley, TMC and leave-one-out; prints one JSON object.

    python benchmarks/shapley.py --seeds 0-4         # about 2 minutes; --verbose adds every seed's values

Each seed's round: softmax regression on Fashion-MNIST (or scikit-learn's digits when it is not
installed), ``--providers`` providers with a Dirichlet label split, ``--noisy`` of them with mostly
random labels; the global model is first trained for ``--warm-rounds`` FedAvg rounds, then every
provider trains locally once more, and the value of a coalition is the quality, on the validator's
held-out test images, of the starting model plus the coalition's FedAvg update: ``--metric neg_loss``
(default: minus the mean cross-entropy, what validators score with in ``roles/validator.py``) or
``accuracy``; with ``--share round`` (default, as ``scoring.score_round``) a member adds its own
term of the round's aggregate, with ``coalition`` the coalition's FedAvg. Exact, GTG, TMC and LOO run on the same round (each on a fresh cache, interleaved,
best of ``--repeats``). Errors are against exact: ``gtg_mae`` the mean absolute error as a fraction
of the total value ``|v(N) - v(empty)|``, ``gtg_provider_rel_err`` the median over providers of
``|estimate - exact| / |exact|``, ``gtg_spearman`` the rank correlation, ``gtg_speedup`` exact's
time over GTG's in the same run. Every figure is given as the median and the worst over the seeds.
GTG's settings were chosen on other rounds (``benchmarks/shapley_tune.py``: seeds 100-111,
validator data split off the training set), never on these. GTG is then timed on a round of the
same kind with ``--big`` providers (first seed).
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


def parse_seeds(text: str) -> list[int]:
    """Seeds from "0-4", "0,2,5" or "3"."""
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def provider_rel_err(est: np.ndarray, exact: np.ndarray) -> float:
    """Median over providers of |estimate - exact| / |exact|."""
    return float(np.median(np.abs(est - exact) / np.maximum(np.abs(exact), 1e-12)))


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def one_seed(data, args, seed: int, metric: str, repeats: int) -> dict:
    """Exact, GTG, TMC and LOO on the seed's round (timings best of ``repeats``, interleaved); errors against exact."""
    from fedmarket.scoring import AggregationUtility, exact_shapley, gtg_shapley, leave_one_out, tmc_shapley

    model, params, U, w, Xv, yv = make_round(
        data, args.providers, samples=args.samples * args.providers, val=args.val, noisy=args.noisy,
        alpha=args.alpha, warm=args.warm_rounds, seed=seed,
    )
    fresh = lambda: AggregationUtility(model, params, U, Xv, yv, w, metric=metric, share=args.share)  # every timing builds the utility
    fresh().evaluate(np.ones((4, args.providers), dtype=bool))  # warm-up (BLAS threads, page faults)
    runs = {
        "exact": lambda: exact_shapley(fresh()),
        "gtg": lambda: gtg_shapley(fresh(), seed=seed),
        "tmc": lambda: tmc_shapley(fresh(), seed=seed),
        "loo": lambda: leave_one_out(fresh()),
    }
    best = dict.fromkeys(runs, float("inf"))
    res = {}
    for _ in range(repeats):  # interleaved, best of the repeats: load on a shared machine hits all alike
        for key, fn in runs.items():
            res[key], t = timed(fn)
            best[key] = min(best[key], t)
    exact, gtg = res["exact"], res["gtg"]
    total = abs(float(exact.sum()))
    mae = lambda est: float(np.mean(np.abs(est - exact)) / total)
    return {
        "seed": seed, "total_value": total, "exact_s": best["exact"], "gtg_s": best["gtg"],
        "gtg_speedup": best["exact"] / best["gtg"], "tmc_s": best["tmc"], "loo_s": best["loo"],
        "gtg_mae": mae(gtg.values), "tmc_mae": mae(res["tmc"].values), "loo_mae": mae(res["loo"]),
        "gtg_spearman": spearman(gtg.values, exact), "gtg_provider_rel_err": provider_rel_err(gtg.values, exact),
        "gtg_evaluations": gtg.evaluations, "gtg_permutations": gtg.permutations,
        "exact": exact.round(5).tolist(), "gtg": gtg.values.round(5).tolist(),
    }


WORST = {"gtg_mae": max, "tmc_mae": max, "loo_mae": max, "gtg_provider_rel_err": max, "gtg_spearman": min,
         "gtg_speedup": min, "exact_s": max, "gtg_s": max, "gtg_evaluations": max}


def summary(rows: list[dict]) -> dict:
    """Median and worst over the seeds of every figure in ``WORST``."""
    return {k: {"median": round(float(np.median([r[k] for r in rows])), 5), "worst": round(float(worst([r[k] for r in rows])), 5)}
            for k, worst in WORST.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dataset", default=None, help="fashion_mnist (default when installed) or digits")
    ap.add_argument("--providers", type=int, default=12)
    ap.add_argument("--big", type=int, default=100, help="providers of the GTG-only timing round (first seed)")
    ap.add_argument("--noisy", type=int, default=2)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--samples", type=int, default=300, help="training samples per provider (on average)")
    ap.add_argument("--val", type=int, default=5000, help="held-out samples of the validator")
    ap.add_argument("--warm-rounds", type=int, default=3)
    ap.add_argument("--seeds", default="0-4", help="rounds to judge on, e.g. 0-4 (the tuning used 100-111: shapley_tune.py)")
    ap.add_argument("--metric", default="neg_loss", choices=["neg_loss", "accuracy"],
                    help="coalition value: neg_loss is what validators score with (roles/validator.py)")
    ap.add_argument("--share", default="round", choices=["round", "coalition"],
                    help="what a member's update is weighted against: round is what validators use (score_round)")
    ap.add_argument("--also-accuracy", action="store_true", help="add the errors under the accuracy metric (no timing)")
    ap.add_argument("--repeats", type=int, default=3, help="timings of each n = 12 method (best kept)")
    ap.add_argument("--verbose", action="store_true", help="add the per-seed rows (values, evaluation counts)")
    args = ap.parse_args()

    from fedmarket.fl.datasets import DatasetNotInstalled
    from fedmarket.scoring import AggregationUtility, gtg_shapley

    name = args.dataset
    if name is None:
        try:
            data, name = load("fashion_mnist"), "fashion_mnist"
        except DatasetNotInstalled:
            data, name = load("digits"), "digits"
    else:
        data = load(name)
    seeds = parse_seeds(args.seeds)
    rows = [one_seed(data, args, s, args.metric, args.repeats) for s in seeds]
    out = {"dataset": name, "metric": args.metric, "share": args.share, "seeds": seeds, **summary(rows)}
    if args.also_accuracy:
        acc = summary([one_seed(data, args, s, "accuracy", 1) for s in seeds])
        out["accuracy_metric"] = {k: acc[k] for k in ("gtg_mae", "gtg_spearman", "gtg_provider_rel_err", "gtg_evaluations")}
    if args.big:
        big = make_round(data, args.big, samples=args.samples * args.big, val=args.val, noisy=args.noisy,
                         alpha=args.alpha, warm=args.warm_rounds, seed=seeds[0])
        model, params, U, w, Xv, yv = big
        big_u = lambda: AggregationUtility(model, params, U, Xv, yv, w, metric=args.metric, share=args.share)
        est, t = timed(lambda: gtg_shapley(big_u(), seed=seeds[0]))
        out[f"gtg_s_n{args.big}"] = round(t, 3)
        out[f"gtg_n{args.big}_evaluations"] = est.evaluations
    if args.verbose:
        out["rows"] = rows
    print(json.dumps(out))


if __name__ == "__main__":
    main()
