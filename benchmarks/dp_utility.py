"""Benchmark: accuracy of the mechanism ``secagg_dp`` market jobs run, against non-private FedAvg, on Fashion-MNIST; prints one JSON object.

Softmax regression (784 x 10), IID split of the 60,000 training images over ``n`` providers
(``--providers``, default 20 and 1,000), every provider every round, one local epoch (batch 16,
lr 0.2), ``--rounds`` rounds, ``--seeds`` seeds (data split, training and noise), median and worst.

Non-private: FedAvg, uniform weights. Private (``privacy.strategy.DistributedDPFedAvg``, the
provider's own arithmetic): each update clipped to L2 norm ``--clip`` and rounded to the fixed-point
grid, plus a Skellam share sized so that the *honest minimum* alone carries the job's noise: a
round accepts no fewer than ``m = n - floor(dropout n)`` survivors (dropout 0.3), at most
``--max-dishonest`` of the ``n`` selected providers (default a third) collude with the aggregator,
all of them possibly among the survivors it picks, so ``h = m - floor(n/3)`` honest shares must
give std ``2 z C`` on the sum (replace-one adjacency); with every provider
surviving, the sum carries ``n / h`` times that variance. ``z`` is what the market's terms carry for
``(epsilon, 1e-5)`` over the rounds (``protocol.rules.noise_micro_for``, the chain's zCDP bound),
and ``epsilon`` the figure the chain records after the last round. Test accuracy on the 10,000
test images after the last round. Goal: at epsilon <= 8, with a third of the providers assumed
dishonest, >= 0.9 x the non-private accuracy at 1,000 providers (the worst seed's ratio).

    python benchmarks/dp_utility.py [--providers 20,1000] [--seeds 5] [--rounds 25] [--clip 0.5] [--epsilon 8] [--max-dishonest 0.3333]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
from concurrent.futures import ProcessPoolExecutor

import numpy as np

DELTA = 1e-5
DROPOUT = 0.3
_S: dict = {}


def _setup(n: int, seed: int) -> None:
    from fedmarket.fl.datasets import load_fashion_mnist
    from fedmarket.fl.models import SoftmaxRegression, normalize
    from fedmarket.fl.partition import iid_partition

    if _S.get("key") == (n, seed):
        return
    if "train" not in _S:
        _S["train"], _S["test"] = load_fashion_mnist()
    train, test = _S["train"], _S["test"]
    X = normalize(train.X, train.feature_low, train.feature_high)
    parts = iid_partition(train.y, n, seed)
    _S.update(key=(n, seed), model=SoftmaxRegression(784, 10), Xs=[X[p] for p in parts], ys=[train.y[p] for p in parts],
              Xt=normalize(test.X, test.feature_low, test.feature_high), yt=test.y)


def _run(job: tuple) -> float:
    from fedmarket.fl.simulation import federate
    from fedmarket.fl.strategies.fedavg import FedAvg
    from fedmarket.privacy.strategy import DistributedDPFedAvg

    mode, n, z, clip, max_dishonest, rounds, seed = job
    _setup(n, seed)
    m = _S["model"]
    min_survivors = n - math.floor(DROPOUT * n)
    strategy = FedAvg() if mode == "plain" else DistributedDPFedAvg(clip, z, min_survivors, max_dishonest,
                                                                    seed=seed, selected=n)
    res = federate(m, _S["Xs"], _S["ys"], strategy, rounds=rounds, epochs=1, batch_size=16, lr=0.2, seed=seed,
                   evaluate=lambda p: float(np.mean(m.predict(p, _S["Xt"]) == _S["yt"])), eval_every=rounds)
    return res.history[-1][1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--providers", default="20,1000")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=25)
    ap.add_argument("--clip", type=float, default=0.5)
    ap.add_argument("--epsilon", type=float, default=8.0)
    ap.add_argument("--max-dishonest", type=float, default=1 / 3)
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    args = ap.parse_args()

    from fedmarket.privacy.dp import honest_minimum
    from fedmarket.protocol import rules as R

    delta_log = R.delta_log_micro(DELTA)
    noise = R.noise_micro_for(int(args.epsilon * R.EPSILON_SCALE), delta_log, args.rounds)
    z = noise / R.EPSILON_SCALE
    ns = [int(x) for x in args.providers.split(",") if x]
    jobs = [(mode, n, z, args.clip, args.max_dishonest, args.rounds, s)
            for n in ns for s in range(args.seeds) for mode in ("plain", "secagg_dp")]
    with ProcessPoolExecutor(args.workers) as ex:
        accs = dict(zip(jobs, ex.map(_run, jobs)))
    out = {"epsilon": R.epsilon_micro(noise, delta_log, args.rounds) / R.EPSILON_SCALE, "delta": DELTA,
           "noise_multiplier": z, "rounds": args.rounds, "clip": args.clip, "max_dishonest": round(args.max_dishonest, 4),
           "dropout": DROPOUT, "seeds": args.seeds, "by_providers": {}}
    for n in ns:
        m = n - math.floor(DROPOUT * n)
        h = honest_minimum(m, args.max_dishonest, n)
        plain = [accs[("plain", n, z, args.clip, args.max_dishonest, args.rounds, s)] for s in range(args.seeds)]
        dp = [accs[("secagg_dp", n, z, args.clip, args.max_dishonest, args.rounds, s)] for s in range(args.seeds)]
        ratios = [d / p for d, p in zip(dp, plain)]
        out["by_providers"][str(n)] = {
            "min_survivors": m, "honest_minimum": h, "noise_std_over_2zC": round(math.sqrt(n / h), 4),
            "nonprivate_acc_median": round(statistics.median(plain), 4), "nonprivate_acc_worst": round(min(plain), 4),
            "secagg_dp_acc_median": round(statistics.median(dp), 4), "secagg_dp_acc_worst": round(min(dp), 4),
            "ratio_median": round(statistics.median(ratios), 4), "ratio_worst": round(min(ratios), 4),
        }
    big = out["by_providers"].get("1000")
    out["goal_met"] = bool(big) and out["epsilon"] <= 8 and big["ratio_worst"] >= 0.9
    print(json.dumps(out))


if __name__ == "__main__":
    main()
