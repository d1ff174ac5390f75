"""docs/deployment.md's broker blocks, run as written in one bash session from a fresh
directory: a NATS JetStream server on 127.0.0.1:4222, `fedmarket broker check`, a restart that
keeps the store, and nothing left listening afterwards."""

from __future__ import annotations

import os
import socket
import subprocess
import time

import pytest
from doc_blocks import blocks

from fedmarket.testing.natsserver import find_nats_server

PORT = 4222  # the page's own port: the test runs it literally


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_broker_commands_run_as_written(tmp_path):
    if find_nats_server() is None:
        if os.environ.get("CI"):
            pytest.fail("nats-server is required in CI: README line 2 installs it")
        pytest.skip("nats-server not installed (apt-get install nats-server)")
    assert not listening(PORT), f"the page uses port {PORT}; something already listens there"
    script = blocks("deployment.md", "sh")
    assert len(script) == 2 and all("nats-server -js" in b and "fedmarket broker check" in b for b in script)
    guard = "set -euo pipefail\ntrap 'kill $(jobs -pr) 2>/dev/null || true' EXIT\n"
    proc = subprocess.run(["bash", "-c", guard + "\n".join(script)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)
    log = (tmp_path / "broker.log").read_text(errors="replace") if (tmp_path / "broker.log").exists() else ""
    assert proc.returncode == 0, proc.stdout + proc.stderr + log[-2000:]
    checks = [line for line in proc.stdout.splitlines() if "JetStream ok" in line]
    assert len(checks) == 2 and all("(file storage)" in line and "probe blob put and read back" in line for line in checks)
    assert (tmp_path / "broker-store" / "jetstream").is_dir()
    assert log.count("Server is ready") == 2
    deadline = time.monotonic() + 10  # `kill %1` returns at once; the server takes a moment to shut down
    while listening(PORT) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not listening(PORT), "the broker kept listening after the page's last command"
