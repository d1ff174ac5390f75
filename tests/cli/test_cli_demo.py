"""The CLI as a user runs it: the default demo, and one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fedmarket", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


@pytest.mark.slow
def test_default_demo_meets_the_bar(tmp_path):
    out = tmp_path / "demo"
    proc = run("demo", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["providers"] == 20 and report["rounds"] == 10
    assert report["final_accuracy"] >= 0.90
    assert report["conserved"] is True
    assert report["escrow"] == (report["paid"] + report["aggregator_earned"] + report["validators_earned"]
                                + report["fee"] + report["refunded"])
    assert len(report["gas_per_round"]) == 10
    png = (out / "accuracy.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5_000
    assert "settlement of job" in proc.stdout and "conserved: true" in proc.stdout


def test_secure_demo_with_dropouts_completes_and_conserves(tmp_path):
    out = tmp_path / "demo"
    proc = run("demo", "--out", str(out), "-n", "10", "-r", "3", "--privacy", "secagg", "--dropout", "0.3",
               "--validators", "2")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["privacy"] == "secagg" and report["conserved"] is True
    assert report["updates_per_round"] == [8, 8, 8]  # 3 of 10 vanish: before keys, before masking, after masking
    assert report["final_accuracy"] >= 0.9


def test_dp_demo_commits_its_epsilon(tmp_path):
    out = tmp_path / "demo"
    proc = run("demo", "--out", str(out), "-n", "6", "-r", "2", "--privacy", "dp_local", "--epsilon", "4")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert 3.99 < report["epsilon_spent"] <= 4.0 and report["epsilon_budget"] == 4.0 and report["conserved"] is True


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
        (["--providers", "0"], "--providers must be at least 1"),
        (["--rounds", "0"], "--rounds must be at least 1"),
        (["--rounds", "-3"], "--rounds must be at least 1"),
        (["--providers", "many"], "Invalid value for '--providers'"),
        (["--partition", "zipf"], "unknown partition 'zipf'"),
        (["--alpha", "0"], "--alpha must be positive"),
        (["--providers", "5000"], "exceeds the 1347 training samples"),
        (["--privacy", "homomorphic"], "unknown privacy mode 'homomorphic'"),
        (["--privacy", "dp_local", "--epsilon", "0"], "bad privacy settings"),
        (["--privacy", "secagg", "--providers", "2"], "secure aggregation needs at least 3 providers"),
        (["--dropout", "1"], "--dropout must be in [0, 1)"),
        (["--privacy", "secagg"], "--privacy secagg needs --validators"),
        (["--per-round", "30"], "--per-round must be between 0 (everyone) and --providers"),
        (["--target-accuracy", "0.9"], "--target-accuracy needs --validators"),
        (["--privacy", "secagg", "--validators", "1", "--target-accuracy", "0.9"], "--target-accuracy needs scored updates"),
    ],
)
def test_bad_input_is_one_line_without_traceback(tmp_path, args, expected):
    proc = run("demo", "--out", str(tmp_path / "o"), *args)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert expected in lines[0] and lines[0].startswith("fedmarket: error:")
    assert "Traceback" not in proc.stderr + proc.stdout


def test_unwritable_out_dir_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    proc = run("demo", "--out", str(blocker / "sub"))
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        f"fedmarket: error: cannot write to output directory {blocker / 'sub'}: Not a directory"
    ]


def test_unreachable_rpc_is_one_line(tmp_path):
    proc = run("demo", "--out", str(tmp_path / "o"), "--rpc", "http://127.0.0.1:9")
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("fedmarket: error: cannot reach an EVM node at http://127.0.0.1:9")
    assert "Traceback" not in proc.stderr
