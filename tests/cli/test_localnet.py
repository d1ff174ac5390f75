"""`fedmarket localnet up`, a job on the user's files, `status`, `down`, as a user runs them: the job
settles across real processes, and `down` leaves no process, port or lock behind."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedmarket.chain.anvil import anvil_missing, find_anvil
from fedmarket.cli import main
from fedmarket.localnet import LOCK, STATE

pytestmark = [pytest.mark.anvil, pytest.mark.slow]

EXAMPLE_SPEC = Path(__file__).resolve().parents[2] / "examples" / "spec.json"


def fm(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedmarket", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=180, stdin=subprocess.DEVNULL)


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_localnet_up_job_status_down_leaves_nothing(tmp_path, capsys):
    if find_anvil() is None:
        if os.environ.get("CI"):
            pytest.fail(f"anvil is required in CI: {anvil_missing()}")
        pytest.skip(anvil_missing())
    assert main(["data", "split", "--out", str(tmp_path / "data"), "--providers", "3"]) == 0
    capsys.readouterr()
    up = fm("localnet", "up", "--dir", "net", "--spec", str(EXAMPLE_SPEC), "--data", "data", "--port", "0",
            "--dashboard-port", "0", cwd=tmp_path)
    net = tmp_path / "net"
    try:
        assert up.returncode == 0, up.stderr
        lines = {line.split()[0]: line for line in up.stdout.splitlines()}
        rpc, contracts = lines["chain"].split()[1], lines["contracts"].split()[1]
        dashboard, job = lines["dashboard"].split()[1], lines["job"].split()[1].rstrip(":")
        state = json.loads((net / STATE).read_text())
        assert {"node", "dashboard", "requester", "aggregator", "provider-0", "provider-1", "provider-2"} == set(state["procs"])
        assert (net / LOCK).exists()
        again = fm("localnet", "up", "--dir", "net", "--port", "0", "--dashboard-port", "0", cwd=tmp_path)
        assert again.returncode == 2 and "already up" in again.stderr and "Traceback" not in again.stderr
        deadline, doc = time.monotonic() + 120, {}
        while time.monotonic() < deadline:
            main(["status", job, "--rpc", rpc, "--contracts", contracts, "--json"])
            doc = json.loads(capsys.readouterr().out)
            # every claim, the aggregator's too (it claims from its own process, on its own poll)
            if doc["state"] == "SETTLED" and all(doc["next"].get(r) == "done" for r in ("providers", "aggregator")):
                break
            time.sleep(1)
        assert doc.get("state") == "SETTLED", (net / "logs" / "aggregator.log").read_text()[-3000:]
        status = fm("status", job, "--rpc", rpc, "--contracts", contracts, cwd=tmp_path)
        assert status.returncode == 0 and f"job {job}: Settled, round 3 of 3" in status.stdout
        assert "rewards     99 FED posted, 99 FED claimed" in status.stdout
        ports = [int(rpc.rsplit(":", 1)[1]), int(dashboard.rsplit(":", 1)[1])]
        assert all(listening(p) for p in ports)
        node_pid = state["procs"]["node"]["pid"]
        anvil_pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _parent(int(p.name)) == node_pid]
        assert anvil_pids, "anvil runs under its node"
        pids = [p["pid"] for p in state["procs"].values()] + anvil_pids
    finally:
        down = fm("localnet", "down", "--dir", "net", cwd=tmp_path)
    assert down.returncode == 0, down.stderr
    assert "node" in down.stdout and "dashboard" in down.stdout
    gone = time.monotonic() + 5
    while time.monotonic() < gone and (any(alive(p) for p in pids) or any(listening(p) for p in ports)):
        time.sleep(0.1)
    assert not [p for p in pids if alive(p)], "a process outlived `localnet down`"
    assert not [p for p in ports if listening(p)], "a port is still open after `localnet down`"
    assert not (net / LOCK).exists() and not (net / STATE).exists()
    twice = fm("localnet", "down", "--dir", "net", cwd=tmp_path)
    assert twice.returncode == 1 and "no localnet is up" in twice.stderr


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None
