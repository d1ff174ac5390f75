"""Benchmark: EZKL proofs of inference for the job's model shapes, verified on anvil; prints one JSON object.

For the digits job's softmax model (64 -> 10, 650 parameters) and an MLP (64 -> 64 -> 10, 4,810
parameters), each with its trained-shape weights drawn from a fixed seed:

- ``prove_s`` and ``prove_peak_gb``: wall time and peak resident memory of ``ezkl.prove`` for one
  input, in a fresh process per model (public input and output, weights fixed in the circuit);
- ``verify_gas``: gas of the generated Halo2 verifier's ``verifyProof`` on anvil (receipt), and
  whether a proof with one output changed is rejected;
- ``setup_s``: settings, calibration, compilation, SRS and key generation.

The SRS comes from ``ezkl.gen_srs``: generated locally, for testing only (its secret is not
destroyed by a ceremony); a deployment would use a ceremony's SRS. ``create_evm_verifier``
writes the verifier's Solidity; it is compiled here with npm's ``solcjs`` (``npm install
--no-save solc@0.8.28``; ezkl's own compile step would download a solc binary). Needs
``pip install ezkl==23.0.5``. `--one softmax|mlp --work DIR` keeps one model's files (what
`tests/contracts/data/ezkl_softmax_64x10.json` was made from).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


async def awaited(value):
    """ezkl 23 returns futures from some calls, created on the running event loop."""
    if hasattr(value, "__await__"):
        return await value
    return value


def prove_one(kind: str, work: Path) -> dict:
    """Export, set up, prove and verify one model in this process (run in a child per model)."""
    return asyncio.run(_prove_one(kind, work))


async def _prove_one(kind: str, work: Path) -> dict:
    import ezkl
    import torch

    torch.manual_seed(0)
    net = torch.nn.Linear(64, 10) if kind == "softmax" else torch.nn.Sequential(
        torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    x = torch.rand(1, 64)
    torch.onnx.export(net, x, work / "m.onnx", input_names=["x"], output_names=["y"], opset_version=17, dynamo=False)
    (work / "input.json").write_text(json.dumps({"input_data": [x.reshape(-1).tolist()]}))
    run = ezkl.PyRunArgs()
    run.input_visibility, run.output_visibility, run.param_visibility = "public", "public", "fixed"
    f = {k: str(work / k) for k in ("m.onnx", "settings.json", "m.ezkl", "kzg.srs", "vk.key", "pk.key", "input.json",
                                      "witness.json", "proof.json")}
    t0 = time.perf_counter()
    ezkl.gen_settings(f["m.onnx"], f["settings.json"], py_run_args=run)
    await awaited(ezkl.calibrate_settings(f["input.json"], f["m.onnx"], f["settings.json"], "resources"))
    ezkl.compile_circuit(f["m.onnx"], f["m.ezkl"], f["settings.json"])
    logrows = json.loads(Path(f["settings.json"]).read_text())["run_args"]["logrows"]
    ezkl.gen_srs(f["kzg.srs"], logrows)  # a locally generated SRS: for testing only
    ezkl.setup(f["m.ezkl"], f["vk.key"], f["pk.key"], srs_path=f["kzg.srs"])
    await awaited(ezkl.gen_witness(f["input.json"], f["m.ezkl"], f["witness.json"], vk_path=f["vk.key"], srs_path=f["kzg.srs"]))
    t1 = time.perf_counter()
    ezkl.prove(f["witness.json"], f["m.ezkl"], f["pk.key"], f["proof.json"], srs_path=f["kzg.srs"])
    t2 = time.perf_counter()
    ok = ezkl.verify(f["proof.json"], f["settings.json"], f["vk.key"], srs_path=f["kzg.srs"])
    try:  # writes Verifier.sol, then fails offline where it would fetch a solc binary
        await awaited(ezkl.create_evm_verifier(f["vk.key"], f["settings.json"], str(work / "Verifier.sol"),
                                         str(work / "Verifier.abi"), srs_path=f["kzg.srs"]))
    except RuntimeError as exc:
        if not (work / "Verifier.sol").is_file():
            raise RuntimeError(f"create_evm_verifier wrote no verifier: {exc}") from None
    return {"n_params": sum(p.numel() for p in net.parameters()), "logrows": logrows, "setup_s": round(t1 - t0, 2),
            "prove_s": round(t2 - t1, 2), "prove_peak_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 3),
            "verified_off_chain": bool(ok)}


def compile_verifier(solcjs: Path, work: Path) -> tuple[list, bytes]:
    out = work / "solc"
    subprocess.run(["node", str(solcjs), "--bin", "--abi", "--optimize", "--optimize-runs", "1", "-o", str(out),
                    str(work / "Verifier.sol")], check=True, capture_output=True, cwd=work)
    abi = json.loads(next(out.glob("*.abi")).read_text())
    return abi, bytes.fromhex(next(out.glob("*.bin")).read_text())


def verify_on_anvil(abi: list, code: bytes, proof: dict) -> dict:
    from fedmarket.chain.abi import ContractABI
    from fedmarket.chain.anvil import AnvilNode
    from fedmarket.chain.rpc_backend import RpcChain
    from fedmarket.errors import ContractRevert

    with AnvilNode() as node:
        chain = RpcChain(node.url)
        acct = chain.new_account("ezkl-bench", 0)
        verifier = chain.deploy(acct, "Halo2Verifier", ContractABI(abi), code)
        instances = [int.from_bytes(bytes.fromhex(h), "little") for h in proof["instances"][0]]
        receipt = verifier.transact("verifyProof", bytes.fromhex(proof["hex_proof"][2:]), instances, sender=acct)
        forged = [*instances[:-1], instances[-1] + 1]
        try:
            verifier.transact("verifyProof", bytes.fromhex(proof["hex_proof"][2:]), forged, sender=acct)
            rejected = False
        except ContractRevert:
            rejected = True
    return {"verify_gas": receipt.gas_used, "verifier_bytes": len(code), "public_values": len(instances),
            "changed_output_rejected": rejected}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--solcjs", type=Path, default=ROOT / "node_modules" / ".bin" / "solcjs")
    ap.add_argument("--one", choices=["softmax", "mlp"], help=argparse.SUPPRESS)  # child process: prove one model
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(prove_one(args.one, args.work)), flush=True)
        os._exit(0)  # ezkl's tokio workers panic in interpreter teardown; the result is out
    if not args.solcjs.exists():
        sys.exit(f"no solcjs at {args.solcjs}: npm install --no-save solc@0.8.28 (or pass --solcjs PATH)")
    out: dict = {"srs": "ezkl.gen_srs, generated locally: for testing only", "ezkl": "23.0.5",
                 "visibility": "input and output public, weights fixed in the circuit"}
    t0 = time.perf_counter()
    for kind in ("softmax", "mlp"):
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            child = subprocess.run([sys.executable, __file__, "--one", kind, "--work", str(work)], capture_output=True,
                                   text=True)
            lines = [ln for ln in child.stdout.splitlines() if ln.startswith("{")]
            if not lines:
                sys.exit(f"proving the {kind} model failed: {child.stderr[-600:]}")
            result = json.loads(lines[-1])
            abi, code = compile_verifier(args.solcjs.resolve(), work)
            result.update(verify_on_anvil(abi, code, json.loads((work / "proof.json").read_text())))
            out[kind] = result
            print(f"{kind}: {result}", file=sys.stderr, flush=True)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
