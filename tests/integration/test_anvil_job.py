"""The same job code on a real node: anvil from npm, JSON-RPC, locally signed transactions."""

from __future__ import annotations

import pytest

from fedmarket.chain.rpc_backend import RpcChain
from fedmarket.market import Deployment
from fedmarket.runner import JobConfig, run_job

pytestmark = pytest.mark.anvil


def test_job_runs_on_anvil_with_real_receipts(node, tmp_path):
    chain = RpcChain(node.url)
    report = run_job(chain, tmp_path, JobConfig(providers=4, rounds=2, seed=1))
    assert report["chain"] == "rpc"
    assert report["conserved"] is True
    dep = Deployment.attach(chain, report["contracts"])
    job_id = report["job_id"]
    # every member claimed its leaf: 4 providers and the aggregator (its stake back)
    assert len(dep.market.events("RewardClaimed", job_id=job_id)) == 5
    assert all(dep.market.call("is_claimed", job_id, i) for i in range(5))
    # gas from real receipts: a round is one small transaction
    assert all(21_000 < g < 60_000 for g in report["gas_per_round"])


def test_embedded_and_anvil_agree_on_the_job(node, tmp_path):
    """Same config, two backends: identical accuracy, payouts and gas (the embedded figure matches receipts)."""
    from fedmarket.chain.boa_backend import BoaChain

    cfg = JobConfig(providers=3, rounds=2, seed=2)
    a = run_job(BoaChain(), tmp_path / "boa", cfg)
    b = run_job(RpcChain(node.url), tmp_path / "rpc", cfg)
    assert a["accuracy"] == b["accuracy"]
    assert [r["reward"] for r in a["settlement"]] == [r["reward"] for r in b["settlement"]]
    assert a["paid"] == b["paid"] and a["fee"] == b["fee"] and a["refunded"] == b["refunded"]
    # the rounds' metrics documents carry the providers' EIP-712 signatures, whose domain is the
    # Disputes address: on a node other tests deployed to first it differs, and so does the
    # committed metrics hash, whose zero bytes cost 12 gas less in calldata than non-zero ones
    assert all(abs(x - y) <= 12 * 32 for x, y in zip(a["gas_per_round"], b["gas_per_round"], strict=True))
    assert a["claim_gas"] == b["claim_gas"]


def test_revert_reason_reaches_the_caller_over_rpc(node):
    from fedmarket.errors import ContractRevert

    chain = RpcChain(node.url)
    deployer = chain.new_account("rpc-revert", 0)
    dep = Deployment.deploy(chain, deployer, deployer.address)
    block = chain.block_number()
    with pytest.raises(ContractRevert, match="market: job not open"):
        dep.market.transact("join", 42, sender=deployer)
    assert chain.block_number() == block  # the reverting call was estimated, never mined


def test_cli_demo_on_anvil_then_audit(node, tmp_path):
    """A user's path: run the demo against a node, then audit the job from chain + blobs alone."""
    import json
    import subprocess
    import sys

    out = tmp_path / "job"
    demo = subprocess.run([sys.executable, "-m", "fedmarket", "demo", "-n", "3", "-r", "2", "--out", str(out),
                           "--rpc", node.url], capture_output=True, text=True, timeout=300)
    assert demo.returncode == 0, demo.stderr
    job_id = json.loads((out / "report.json").read_text())["job_id"]
    audit = subprocess.run([sys.executable, "-m", "fedmarket", "audit", str(job_id), "--rpc", node.url, "--dir", str(out)],
                           capture_output=True, text=True, timeout=300)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "verdict: ok" in audit.stdout and "re-derived, matches" in audit.stdout
    assert json.loads((out / "report.json").read_text())["conserved"] is True
    # a store that does not exist is a one-line error
    nostore = subprocess.run([sys.executable, "-m", "fedmarket", "audit", str(job_id), "--rpc", node.url,
                              "--dir", str(out), "--store", str(tmp_path / "nowhere")], capture_output=True, text=True)
    assert nostore.returncode == 2 and nostore.stderr.strip().endswith("does not exist")
    # tamper with the stored vectors (models and updates): content hashes give it away
    for blob in (out / "blobs").iterdir():
        data = blob.read_bytes()
        if data[:4] in (b"FMV1", b"FMV2"):
            blob.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    tampered = subprocess.run([sys.executable, "-m", "fedmarket", "audit", str(job_id), "--rpc", node.url,
                               "--dir", str(out)], capture_output=True, text=True, timeout=300)
    assert tampered.returncode == 1 and "MISMATCH" in tampered.stdout and "content id" in tampered.stdout
