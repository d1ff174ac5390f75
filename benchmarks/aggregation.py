"""Benchmark: aggregation throughput against the machine's memory-read bandwidth, measured in the same run; prints one JSON object.

Every figure is bytes of the stacked float64 update matrix ``(n, d)`` read per second (GB/s, 1e9),
best of ``--repeats`` timings, interleaved with the baseline's. ``bandwidth_gbps`` is the best of several pure read kernels over a
buffer of the same size (numpy max on one thread, numpy max on every core in chunks, BLAS dot), so
it is the fastest rate numpy can read that memory here; ``fedavg_gbps`` should reach 0.6 of it.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def best_times(fns: dict, repeats: int) -> dict[str, float]:
    """Best wall time of each callable, measured interleaved (one of each per pass) so drift on a shared machine hits all alike."""
    for fn in fns.values():
        fn()  # warm-up (page faults, thread pools)
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for key, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[key] = min(best[key], time.perf_counter() - t)
    return best


def read_kernels(buf: np.ndarray, pool: ThreadPoolExecutor, cores: int) -> dict:
    """Pure read kernels over ``buf``: numpy max on one thread, on every core in chunks, and BLAS gemv with ones."""
    flat = buf.reshape(-1)
    chunks = np.array_split(flat, 4 * cores)
    ones = np.ones(buf.shape[1])
    return {
        "max_1_thread": lambda: flat.max(),
        f"max_{cores}_threads": lambda: list(pool.map(np.max, chunks)),
        "blas_gemv_ones": lambda: buf @ ones,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=100, help="number of updates")
    ap.add_argument("--d", type=int, default=500_000, help="parameters per update")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--krum-d", type=int, default=None, help="d for Multi-Krum (default: --d)")
    args = ap.parse_args()

    from fedmarket.fl.aggregate import fedavg_int, median_int, trimmed_mean_int
    from fedmarket.fl.quantize import quantize
    from fedmarket.fl.strategies import FedAvg, FedMedian, FedTrimmedMean, MultiKrum

    rng = np.random.default_rng(0)
    U = rng.standard_normal((args.n, args.d)) * 1e-2
    w = rng.integers(100, 1000, args.n).astype(np.float64)
    Q = quantize(U)
    wi = [int(x) for x in w]
    gb = U.nbytes / 1e9

    cores = os.cpu_count() or 1
    out: dict = {"n": args.n, "d": args.d, "matrix_gb": round(gb, 3)}
    with ThreadPoolExecutor(cores) as pool:
        reads = read_kernels(U, pool, cores)
        fast = best_times({**reads, "fedavg": lambda: FedAvg().aggregate(U, w),
                           "fedavg_int": lambda: fedavg_int(Q, wi)}, args.repeats)
    bw = {k: gb / fast[k] for k in reads}
    out["bandwidth_gbps"] = round(max(bw.values()), 2)
    out["bandwidth_kernels_gbps"] = {k: round(v, 2) for k, v in bw.items()}
    out["fedavg_gbps"] = round(gb / fast["fedavg"], 3)
    out["fedavg_int_gbps"] = round(gb / fast["fedavg_int"], 3)
    slow = best_times({
        "median_gbps": lambda: FedMedian().aggregate(U, w),
        "trimmed_mean_gbps": lambda: FedTrimmedMean(0.2).aggregate(U, w),
        "multikrum_gbps": lambda: MultiKrum(0.3).aggregate(U, w),
        "median_int_gbps": lambda: median_int(Q),
        "trimmed_mean_int_gbps": lambda: trimmed_mean_int(Q, args.n // 5),
    }, max(1, args.repeats // 2))
    out.update({k: round(gb / v, 3) for k, v in slow.items()})
    out["fedavg_over_bandwidth"] = round(out["fedavg_gbps"] / out["bandwidth_gbps"], 3)
    out["goal_fedavg_at_least_0.6_bandwidth"] = out["fedavg_over_bandwidth"] >= 0.6
    print(json.dumps(out))


if __name__ == "__main__":
    main()
