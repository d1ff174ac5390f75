"""A real NATS server with JetStream (Debian's `nats-server`) on 127.0.0.1, for the tests and
benchmarks: a free port picked by the server itself, its file store in a directory of the
caller's, stopped (and restartable on the same port, with the same store) on demand."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from ..errors import FedMarketError

_LISTENING = re.compile(rb"Listening for client connections on [^\s]+:(\d+)")


def find_nats_server() -> str | None:
    return shutil.which("nats-server") or next(
        (p for p in ("/usr/sbin/nats-server", "/usr/bin/nats-server") if os.access(p, os.X_OK)), None)


def die_with_parent() -> None:  # in the child, before exec: SIGTERM when the test process dies (Linux)
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, 15)  # PR_SET_PDEATHSIG, SIGTERM
    except (OSError, AttributeError):
        pass


class NatsServer:
    """`nats-server -js` on `host` (127.0.0.1 unless given) with its JetStream file store under
    `store_dir`; `prefix` is put before the command (e.g. `ip netns exec NS`)."""

    def __init__(self, store_dir: str | os.PathLike, *, port: int = -1, extra: tuple[str, ...] = (),
                 host: str = "127.0.0.1", prefix: tuple[str, ...] | list[str] = ()):
        self.binary = find_nats_server()
        if self.binary is None:
            raise FedMarketError("nats-server not found: `apt-get install nats-server` (Debian)")
        self.store_dir = Path(store_dir)
        self.port = port
        self.extra = tuple(extra)  # more nats-server flags, e.g. ("--user", "u", "--pass", "p")
        self.host = host
        self.prefix = list(prefix)
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.store_dir / "nats-server.log"

    def start(self, timeout: float = 10.0) -> NatsServer:
        """Start the server (on the port it had before, after a `stop`) and wait until it listens."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        args = [*self.prefix, self.binary, "-js", "-sd", str(self.store_dir), "-a", self.host, "-p", str(self.port),
                *self.extra]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                         preexec_fn=die_with_parent)
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_bytes()[offset:]
            found = _LISTENING.search(text)
            if found and b"Server is ready" in text:
                self.port = int(found.group(1))
                return self
            if self.proc.poll() is not None:
                raise FedMarketError(f"nats-server exited with {self.proc.returncode}: {text[-500:].decode(errors='replace')}")
            time.sleep(0.005)
        self.stop()
        raise FedMarketError(f"nats-server did not start within {timeout}s (log: {self.log_path})")

    def stop(self) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after 10 s) and wait for it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> NatsServer:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
