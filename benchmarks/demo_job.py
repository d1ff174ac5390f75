"""Benchmark: one whole market job (the demo's defaults) on the embedded EVM and on anvil; prints one JSON object.

Gas comes from anvil's real receipts; time is wall clock, and the anvil run is reported as a
ratio to the embedded run measured in the same process (the machines here are shared and noisy).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--providers", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--no-anvil", action="store_true", help="only the embedded chain")
    args = ap.parse_args()

    from fedmarket.chain.boa_backend import BoaChain
    from fedmarket.runner import JobConfig, run_job

    cfg = JobConfig(providers=args.providers, rounds=args.rounds)
    out: dict = {"providers": cfg.providers, "rounds": cfg.rounds}
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        boa = run_job(BoaChain(), f"{tmp}/boa", cfg)
        out["boa_s"] = round(time.perf_counter() - t, 3)
        out["boa_final_accuracy"] = boa["final_accuracy"]
        out["boa_conserved"] = boa["conserved"]
        out["boa_round_gas"] = int(statistics.median(boa["gas_per_round"]))
        if not args.no_anvil:
            from fedmarket.chain.anvil import AnvilNode
            from fedmarket.chain.rpc_backend import RpcChain

            with AnvilNode() as node:
                chain = RpcChain(node.url)
                t = time.perf_counter()
                rpc = run_job(chain, f"{tmp}/rpc", cfg)
                out["anvil_s"] = round(time.perf_counter() - t, 3)
                out["anvil_rpc_calls"] = chain.rpc_calls
            out["anvil_conserved"] = rpc["conserved"]
            out["anvil_round_gas"] = rpc["gas_per_round"]
            out["anvil_claim_gas_median"] = int(statistics.median(rpc["claim_gas"]))
            out["anvil_over_boa_time"] = round(out["anvil_s"] / out["boa_s"], 2)
            out["same_accuracy"] = rpc["accuracy"] == boa["accuracy"]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
