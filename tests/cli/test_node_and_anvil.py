"""Finding anvil from anywhere after `pip install .`, and `fedmarket node` leaving nothing behind on
SIGTERM (it used to leave anvil running)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedmarket.chain.anvil import ENV_ANVIL, anvil_missing, find_anvil


def fake_npm_anvil(root: Path) -> Path:
    """What `npm install @foundry-rs/anvil` leaves under `root` (an executable at the platform path)."""
    binary = root / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    return binary


def test_anvil_is_found_from_any_directory_below_an_npm_install(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_ANVIL, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    elsewhere = tmp_path / "site-packages" / "fedmarket" / "chain" / "anvil.py"  # an installed package
    project = tmp_path / "project"
    binary = fake_npm_anvil(project)
    deep = project / "runs" / "today"
    deep.mkdir(parents=True)
    assert find_anvil(cwd=deep, package=elsewhere) == str(binary)  # from a subdirectory, not only the root
    assert find_anvil(cwd=tmp_path / "site-packages", package=project / "src" / "fedmarket" / "x.py") == str(binary)
    assert find_anvil(cwd=tmp_path, package=elsewhere) is None  # nothing above tmp_path has one
    on_path = tmp_path / "bin" / "anvil"
    on_path.parent.mkdir()
    on_path.write_text("#!/bin/sh\n")
    on_path.chmod(0o755)
    monkeypatch.setenv("PATH", str(on_path.parent))
    assert find_anvil(cwd=tmp_path, package=elsewhere) == str(on_path)


def test_fedmarket_anvil_overrides_and_a_bad_one_is_named(tmp_path, monkeypatch):
    binary = fake_npm_anvil(tmp_path)
    monkeypatch.setenv(ENV_ANVIL, str(binary))
    assert find_anvil() == str(binary)
    monkeypatch.setenv(ENV_ANVIL, str(tmp_path / "missing"))
    assert find_anvil() is None
    assert anvil_missing() == f"{ENV_ANVIL}={tmp_path / 'missing'} is not an executable file: point it at the anvil binary"
    monkeypatch.delenv(ENV_ANVIL)
    assert "npm install @foundry-rs/anvil@1.7.1" in anvil_missing() and ENV_ANVIL in anvil_missing()


def test_node_without_anvil_is_one_line(tmp_path):
    env = {**os.environ, ENV_ANVIL: str(tmp_path / "nope")}
    proc = subprocess.run([sys.executable, "-m", "fedmarket", "node", "--port", "0"], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 1 and proc.stderr.strip() == f"fedmarket: error: {ENV_ANVIL}={tmp_path / 'nope'} is not an executable file: point it at the anvil binary"


@pytest.mark.anvil
def test_node_stops_anvil_on_sigterm():
    if find_anvil() is None:
        if os.environ.get("CI"):
            pytest.fail(f"anvil is required in CI: {anvil_missing()}")
        pytest.skip(anvil_missing())
    proc = subprocess.Popen([sys.executable, "-m", "fedmarket", "node", "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    assert first.startswith("anvil listening on"), first
    children = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _parent(int(p.name)) == proc.pid]
    assert children and all("anvil" in Path(f"/proc/{c}/cmdline").read_bytes().decode(errors="replace") for c in children)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    assert "stopping anvil" in proc.stderr.read()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(Path(f"/proc/{c}").exists() and _state(c) != "Z" for c in children):
        time.sleep(0.05)
    assert not [c for c in children if Path(f"/proc/{c}").exists() and _state(c) != "Z"], "anvil outlived its node"


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "gone"
