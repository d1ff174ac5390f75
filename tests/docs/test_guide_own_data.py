"""docs/guide-own-data.md, run as written, from a new user's point of view: a CSV table split into
one file per provider, `spec init` on it, every role a separate process on anvil (requester, aggregator,
three providers training on their own CSVs), then `model get` (verified against the model root on
chain) and `model predict`. The test adds only a guard that stops the session's background
processes if a command fails, then checks what the page promises."""

from __future__ import annotations

import csv
import json
import os
import re
import socket
import subprocess

import pytest
from doc_blocks import blocks

from fedmarket.chain.anvil import anvil_missing, find_anvil

pytestmark = [pytest.mark.anvil, pytest.mark.slow]
PORT = 8547  # the page's own port


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _stop_processes_in(directory) -> None:
    """SIGTERM, then SIGKILL, every process whose working directory is `directory` (the page's own)."""
    import signal
    import time
    from pathlib import Path

    def mine() -> list[int]:
        out = []
        for p in Path("/proc").iterdir():
            try:
                if p.name.isdigit() and Path(os.readlink(p / "cwd")) == Path(directory):
                    out.append(int(p.name))
            except OSError:
                continue
        return out

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in mine():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(1)


def test_the_own_data_guide_runs_as_written(tmp_path):
    if find_anvil() is None:
        if os.environ.get("CI"):
            pytest.fail(f"anvil is required in CI: {anvil_missing()}")
        pytest.skip(anvil_missing())
    assert not _listening(PORT), f"the guide uses port {PORT}; something already listens there"
    script = blocks("guide-own-data.md", "sh")
    text = "\n".join(script)
    for step in ("data split --data", "spec init", "requester post", "provider run", "model get", "model predict"):
        assert step in text, step
    guard = "set -euo pipefail\ntrap 'kill $(jobs -pr) 2>/dev/null || true' EXIT\n"
    try:
        proc = subprocess.run(["bash", "-c", guard + "\n".join(script)], cwd=tmp_path, capture_output=True, text=True,
                              timeout=400, stdin=subprocess.DEVNULL, env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"})
    finally:  # whatever happened, nothing the page started keeps running
        _stop_processes_in(tmp_path)
    logs = "".join(f"\n--- {p.name}\n{p.read_text(errors='replace')[-1500:]}" for p in sorted(tmp_path.glob("*.log")))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + logs
    out = proc.stdout + proc.stderr
    assert "job 1: Settled, round 5 of 5" in out, out
    # the spec came from the CSV: its columns by name and its classes by name
    spec = json.loads((tmp_path / "spec.json").read_text())
    assert spec["data"]["label"] == "diagnosis" and spec["data"]["classes"] == ["benign", "malignant"]
    assert spec["data"]["features"][0] == "mean_radius" and spec["model"] == {
        "kind": "mlp", "hidden": [32], "activation": "relu", "l2": 0.0, "init_seed": 0}
    # the providers trained on their own CSV files
    for i in range(3):
        assert "round 4: update" in (tmp_path / f"provider-{i}.log").read_text()
    # the model came out verified, and predicts the held-out file well, the same from .npz and .onnx
    assert re.search(r"job 1 round 4: model root 0x[0-9a-f]{64} verified; wrote model.npz", out), out
    with open(tmp_path / "shares" / "test.csv") as f:
        truth = [row["diagnosis"] for row in csv.DictReader(f)]
    preds = (tmp_path / "predictions.csv").read_text().split()[1:]
    assert len(preds) == len(truth) and set(preds) <= {"benign", "malignant"}
    accuracy = sum(p == t for p, t in zip(preds, truth)) / len(truth)
    assert accuracy > 0.85, accuracy
    assert f"accuracy {accuracy:.4f} on {len(truth)} rows" in out
    assert (tmp_path / "predictions-onnx.csv").read_text().split()[1:] == preds
    assert not _listening(PORT), "the node stayed up after the guide"
