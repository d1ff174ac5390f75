"""Start and stop a local anvil node (npm package @foundry-rs/anvil, pinned in package.json)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from ..errors import ChainError

ANVIL_NPM_VERSION = "1.7.1"


def find_anvil() -> str | None:
    """Path of the anvil binary: $FEDMARKET_ANVIL, the repository's node_modules, or PATH."""
    env = os.environ.get("FEDMARKET_ANVIL")
    if env:
        return env if os.access(env, os.X_OK) else None
    here = Path(__file__).resolve()
    for root in [Path.cwd(), *here.parents]:
        nm = root / "node_modules" / "@foundry-rs"
        if nm.is_dir():
            for binary in sorted(nm.glob("anvil-*/bin/anvil")):
                if os.access(binary, os.X_OK):
                    return str(binary)
    return shutil.which("anvil")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AnvilNode:
    """A running anvil process on 127.0.0.1; use as a context manager."""

    def __init__(self, port: int | None = None, *, chain_id: int = 31337, block_time: float | None = None,
                 fixed_interval: bool = True):
        binary = find_anvil()
        if binary is None:
            raise ChainError(
                "anvil not found: run `npm install` in the fedmarket repository "
                f"(installs @foundry-rs/anvil@{ANVIL_NPM_VERSION}) or set FEDMARKET_ANVIL"
            )
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
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
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
