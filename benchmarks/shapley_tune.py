"""How GTG-Shapley's stopping tolerance was chosen: on validation rounds, never on the rounds it is judged on; prints one JSON object.

    python benchmarks/shapley_tune.py      # about 2 minutes

The rounds are built as in ``benchmarks/shapley.py`` (Fashion-MNIST, 12 providers, Dirichlet(0.5),
two noisy, 3 warm-up rounds) but with seeds 100-111 and a validator whose 5,000 held-out images
are split off the *training* set (the last 10,000 training images; the providers sample from the
first 50,000): neither the seeds nor the test images of ``shapley.py --seeds 0-4`` are touched.
Each round's game (``neg_loss`` and ``--share round``, what validators score with) is evaluated on all 4,096
coalitions once; every setting then runs on that table (three permutation seeds per round), so
the sweep costs no timing noise. The rule: the smallest ``conv_tol`` whose worst evaluation count
stays within ``--max-evals`` (about a tenth of the 4,096 exact needs, less the utility's set-up).
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from shapley import load, make_round, provider_rel_err, spearman


class TableGame:
    """A round's game read from its table of every coalition's value, with the round's aggregation coefficients."""

    def __new__(cls, table: np.ndarray, coefficients):
        from fedmarket.scoring import FunctionUtility

        n = int(table.shape[0]).bit_length() - 1
        bits = 1 << np.arange(n)

        class Game(FunctionUtility):
            def coefficients(self, masks: np.ndarray) -> np.ndarray:
                return coefficients(masks)

        return Game(n, lambda M: table[M.astype(np.int64) @ bits])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", default="100-111")
    ap.add_argument("--tols", default="0.2,0.1,0.07,0.05,0.03")
    ap.add_argument("--max-evals", type=int, default=300)
    ap.add_argument("--share", default="round", choices=["round", "coalition"])
    args = ap.parse_args()

    from fedmarket.scoring import AggregationUtility, all_masks, gtg_shapley, shapley_from_table
    from shapley import parse_seeds

    Xtr, ytr, _, _, c = load("fashion_mnist")
    cut = Xtr.shape[0] - 10_000
    data = (Xtr[:cut], ytr[:cut], Xtr[cut:], ytr[cut:], c)  # the validator's data split off the training set
    games = []
    for seed in parse_seeds(args.seeds):
        model, params, U, w, Xv, yv = make_round(data, 12, samples=3600, val=5000, noisy=2, alpha=0.5, warm=3, seed=seed)
        u = AggregationUtility(model, params, U, Xv, yv, w, metric="neg_loss", share=args.share)
        games.append((u.evaluate(all_masks(12)), u.coefficients))
    sweep = {}
    for tol in [float(t) for t in args.tols.split(",")]:
        rows = []
        for table, coefficients in games:
            exact = shapley_from_table(table)
            for rep in range(3):
                u = TableGame(table, coefficients)
                est = gtg_shapley(u, seed=rep, conv_tol=tol).values
                rows.append((float(np.mean(np.abs(est - exact)) / abs(exact.sum())), spearman(est, exact),
                             provider_rel_err(est, exact), u.evaluations))
        a = np.array(rows)
        sweep[str(tol)] = {"gtg_mae_worst": round(a[:, 0].max(), 4), "gtg_spearman_worst": round(a[:, 1].min(), 4),
                           "gtg_provider_rel_err_median": round(float(np.median(a[:, 2])), 4),
                           "evaluations_mean": round(float(a[:, 3].mean()), 1), "evaluations_worst": int(a[:, 3].max())}
    fits = [float(t) for t, r in sweep.items() if r["evaluations_worst"] <= args.max_evals]
    print(json.dumps({"seeds": parse_seeds(args.seeds), "metric": "neg_loss", "share": args.share, "sweep": sweep,
                      "chosen_conv_tol": min(fits) if fits else None}))


if __name__ == "__main__":
    main()
