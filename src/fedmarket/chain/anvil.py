"""Start and stop a local anvil node (npm package @foundry-rs/anvil, pinned in package.json)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from ..errors import ChainError

ANVIL_NPM_VERSION = "1.7.1"


ENV_ANVIL = "FEDMARKET_ANVIL"


def _node_modules_anvil(root: Path) -> str | None:
    """The platform binary `npm install @foundry-rs/anvil` put under `root/node_modules`, if any."""
    nm = root / "node_modules" / "@foundry-rs"
    if nm.is_dir():
        for binary in sorted(nm.glob("anvil-*/bin/anvil")):
            if os.access(binary, os.X_OK):
                return str(binary)
    return None


def find_anvil(cwd: Path | None = None, package: Path | None = None) -> str | None:
    """Path of the anvil binary: $FEDMARKET_ANVIL; else `node_modules` (from `npm install`) in the
    working directory or any directory above it, or next to the installed package (an editable
    install or a checkout); else `anvil` on PATH. None when there is none."""
    env = os.environ.get(ENV_ANVIL)
    if env:
        return env if os.path.isfile(env) and os.access(env, os.X_OK) else None
    cwd = (cwd or Path.cwd()).resolve()
    package = (package or Path(__file__)).resolve()
    seen: set[Path] = set()
    for root in [cwd, *cwd.parents, *package.parents, Path(sys.prefix)]:
        if root in seen:
            continue
        seen.add(root)
        found = _node_modules_anvil(root)
        if found:
            return found
    return shutil.which("anvil")


def anvil_missing() -> str:
    """The one-line reason why no anvil was found, and how to get one."""
    env = os.environ.get(ENV_ANVIL)
    if env:
        return f"{ENV_ANVIL}={env} is not an executable file: point it at the anvil binary"
    return (f"anvil not found: run `npm install @foundry-rs/anvil@{ANVIL_NPM_VERSION}` in this directory "
            f"(or `npm install` in the fedmarket repository), put anvil on PATH, or set {ENV_ANVIL}=/path/to/anvil")


def _parent_death_signal() -> None:
    """In the child, before exec: ask Linux to send SIGTERM when the parent dies (no-op elsewhere)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AnvilNode:
    """A running anvil process on 127.0.0.1; use as a context manager."""

    def __init__(self, port: int | None = None, *, chain_id: int = 31337, block_time: float | None = None,
                 fixed_interval: bool = True, accounts: int | None = None, die_with_parent: bool = False):
        binary = find_anvil()
        if binary is None:
            raise ChainError(anvil_missing())
        if port:
            # otherwise a node already listening there would pass for this one
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine, a listener is not
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    raise ChainError(f"port {port} on 127.0.0.1 is already in use (another node?): choose another port") from None
        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [binary, "--host", "127.0.0.1", "--port", str(self.port), "--chain-id", str(chain_id), "--silent"]
        if block_time:
            args += ["--block-time", str(block_time)]
        if accounts:
            args += ["--accounts", str(accounts)]
        # die_with_parent: the kernel ends anvil if this process dies without stopping it (even on SIGKILL)
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     preexec_fn=_parent_death_signal if die_with_parent else None)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace").strip() if self.proc.stderr else ""
                raise ChainError(f"anvil exited at start: {err or 'no output'}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    pass
            except OSError:
                time.sleep(0.05)
                continue
            if not block_time and fixed_interval:
                # every automined block one second after the previous, whatever the wall clock:
                # deadlines and gas (same-second storage writes are cheaper) become reproducible
                self.rpc("anvil_setBlockTimestampInterval", [1])
            return
        self.stop()
        raise ChainError(f"anvil did not open port {self.port} within 15 s")

    def rpc(self, method: str, params: list):
        """One raw JSON-RPC call to this node."""
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
        req = urllib.request.Request(self.url, body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            doc = json.loads(resp.read())
        if "error" in doc:
            raise ChainError(f"anvil {method}: {doc['error']}")
        return doc["result"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> AnvilNode:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
