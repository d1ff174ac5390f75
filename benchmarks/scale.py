"""Benchmark: one in-process market job with many providers and every one of them in every round;
prints one JSON object.

The job is the product's own path (`runner.run_job`, the demo's driver: deploy, post, join, every
round trained, signed, filed, verified, aggregated and committed, the challenger's check of every
round, settlement and every claim) on the embedded EVM, with an MLP on Fashion-MNIST split evenly
over the providers. Reported:

- ``wall_s``: the whole job, wall clock;
- ``training_s``: the providers' local training (`JobModel.train`), summed: in process they train
  one after another, so the ratio ``wall_over_training`` is what the market adds to the work
  itself (goal <= 1.5);
- ``hashing_s``, ``chain_s``: where the rest goes: chunked Merkle roots of model vectors (every
  role re-derives the roots it relies on) and EVM execution (transactions and calls);
- ``bytes_per_param``: vector blob bytes over values, median over every blob of the job (updates, models)
  (goal <= 4: the blob carries each value at the fewest bytes that hold it exactly);
- ``updates_per_round`` and the final accuracy on the held-out test set;
- ``ms_per_update`` (training, hashing and chain milliseconds over the updates trained) and
  ``roots_per_update`` (chunked vector roots computed per update, by every role together): the ratio's
  anatomy, which does not depend on the number of providers the way totals do.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import defaultdict


class Timers:
    """Wall time spent inside wrapped callables, by category (no nesting across categories here)."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def wrap(self, owner, name: str, category: str, count: str | None = None) -> None:
        inner = getattr(owner, name)

        def timed(*args, **kwargs):
            if count:
                self.calls[count] += 1
            t = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.spent[category] += time.perf_counter() - t

        setattr(owner, name, timed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--providers", type=int, default=1_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--model", default="mlp")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from fedmarket import jobmodel
    from fedmarket.chain.boa_backend import BoaChain
    from fedmarket.protocol import encoding, merkle
    from fedmarket.runner import JobConfig, run_job
    from fedmarket.storage import LocalBlobStore

    timers = Timers()
    timers.wrap(jobmodel.JobModel, "train", "training")
    timers.wrap(encoding, "chunk_leaves", "hashing", count="vector_roots")
    timers.wrap(merkle.MerkleTree, "__init__", "hashing")
    timers.wrap(BoaChain, "_send", "chain")
    timers.wrap(BoaChain, "_call", "chain")
    blob_sizes: list[float] = []
    put = LocalBlobStore.put

    def put_counting(self, data: bytes) -> str:
        if data[:4] == b"FMV2":  # a vector blob: magic, width, count (uint64), values
            blob_sizes.append(len(data) / int.from_bytes(data[5:13], "big"))
        return put(self, data)

    LocalBlobStore.put = put_counting

    cfg = JobConfig.for_model(args.model, providers=args.providers, rounds=args.rounds, dataset=args.dataset,
                              seed=args.seed, stake_tokens=1, escrow_tokens=10 * args.providers)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        report = run_job(BoaChain(), tmp, cfg, centralized=False)
        wall = time.perf_counter() - t
    spent = timers.spent
    out = {
        "providers": args.providers, "rounds": args.rounds, "dataset": args.dataset, "model": args.model,
        "state": report["state"], "updates_per_round": report["updates_per_round"],
        "wall_s": round(wall, 1), "training_s": round(spent["training"], 1),
        "hashing_s": round(spent["hashing"], 1), "chain_s": round(spent["chain"], 1),
        "wall_over_training": round(wall / spent["training"], 2),
        # per update trained: what one more provider-round costs in each category
        "ms_per_update": {k: round(1e3 * spent[k] / sum(report["updates_per_round"]), 2) for k in ("training", "hashing", "chain")},
        "roots_per_update": round(timers.calls["vector_roots"] / sum(report["updates_per_round"]), 2),
        "final_accuracy": report["final_accuracy"],
        "round_gas": report["gas_per_round"], "conserved": report["conserved"],
    }
    out["bytes_per_param"] = round(statistics.median(blob_sizes), 3)  # updates and models alike
    out["goal_wall_over_training_at_most_1.5"] = out["wall_over_training"] <= 1.5
    out["goal_bytes_per_param_at_most_4"] = out["bytes_per_param"] <= 4
    print(json.dumps(out))


if __name__ == "__main__":
    main()
