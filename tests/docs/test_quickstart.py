"""docs/quickstart.md, run as written: its shell blocks, in order, in one bash session (background
processes and `jobs` carry across blocks), from a fresh directory holding the repository's
examples/. The test adds only a guard that stops the session's background processes if a command
fails (and takes a localnet down). It checks what the page promises: the job settles both ways, the providers got their stake
and a reward, and nothing keeps running or listening afterwards."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from doc_blocks import blocks

from fedmarket.chain.anvil import anvil_missing, find_anvil

pytestmark = [pytest.mark.anvil, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
PORTS = (8545, 8050)  # the page's own ports: the test runs it literally


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_quickstart_commands_run_as_written(tmp_path):
    if find_anvil() is None:
        if os.environ.get("CI"):
            pytest.fail(f"anvil is required in CI: {anvil_missing()}")
        pytest.skip(anvil_missing())
    busy = [p for p in PORTS if listening(p)]
    assert not busy, f"the quickstart uses ports {PORTS}; something already listens on {busy}"
    script = blocks("quickstart.md", "sh")
    assert len(script) >= 8 and any("localnet up" in b for b in script) and any("provider run" in b for b in script)
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    guard = ("set -euo pipefail\n"
             "trap 'kill $(jobs -pr) 2>/dev/null || true; fedmarket localnet down >/dev/null 2>&1 || true' EXIT\n")
    try:
        proc = subprocess.run(["bash", "-c", guard + "\n".join(script)], cwd=tmp_path, capture_output=True, text=True,
                              timeout=400, stdin=subprocess.DEVNULL, env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"})
    finally:  # whatever happened, the localnet's detached processes go
        if (tmp_path / "fedmarket-localnet" / "localnet.lock").exists():
            subprocess.run(["fedmarket", "localnet", "down", "--dir", str(tmp_path / "fedmarket-localnet")],
                           capture_output=True, timeout=60)
    logs = "".join(f"\n--- {p.name}\n{p.read_text(errors='replace')[-1500:]}" for p in sorted(tmp_path.glob("*.log")))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + logs
    out = proc.stdout
    assert out.count("job 1: Settled, round 3 of 3") == 2, out  # the localnet's job, then the one by hand
    assert out.count("rewards     99 FED posted, 99 FED claimed") == 2, out
    wallet = re.search(r"0x[0-9a-fA-F]{40}: wallet ([0-9.,]+) FED", out)
    assert wallet and 120 < float(wallet.group(1).replace(",", "")) < 150, out  # the 100 funded, stake back, a reward
    assert (tmp_path / "requester.out").read_text().split()[0] == "1"
    assert not [p for p in PORTS if listening(p)], "a port stayed open after the quickstart"
    leftover = subprocess.run(["pgrep", "-f", f"fedmarket.*{tmp_path}"], capture_output=True, text=True).stdout.split()
    assert not leftover, f"processes left running: {leftover}"
