"""The processes of Flower's Deployment Engine for a market job: the aggregator's SuperLink, a
provider's SuperNode, and the run of the market's Flower app on the SuperLink (`flwr run`).

Each is Flower's own command (``flower-superlink``, ``flower-supernode``, ``flwr``) started as
a subprocess in its own session, with telemetry and Flower's update check off and runtime
dependency installation disabled (the app runs on the installed fedmarket and flwr).
`Service.stop` ends the process and every process it started (Flower's SuperExec and the app
processes), by pid. Plain TCP on loopback needs ``insecure``; anywhere else give `Tls`
(the SuperLink's certificate and key, and the CA every SuperNode and ``flwr`` trust), and
``node_auth=True`` admits only SuperNodes whose public keys were registered (`SuperLink.register`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, FedMarketError
from .flower import APP_DIR, APP_HASH_ENV

CONNECTION = "fedmarket"  # the name of the SuperLink connection in a FLWR_HOME


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flower_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env.update({"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
                "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
                # SuperExec looks for new app tasks every second by default: a round waits for it twice
                "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.2"})
    env.update(extra or {})
    return env


def _command(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        raise ConfigError(f'`{name}` not found: install the flower extra (pip install "fedmarket[flower]")')
    return found


def toml_file(path: Path, values: dict) -> Path:
    """A flat TOML document of str/int/float/bool values (JSON scalars are valid TOML)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items()))
    return path


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (Linux /proc), children first found first."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _die_with_parent() -> None:
    """In the child before exec: the kernel sends it SIGTERM when the process that started it dies
    (so a provider's SuperNode goes when its provider process does, even on SIGKILL)."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


@dataclass(frozen=True)
class Tls:
    """TLS for the Deployment Engine: the CA certificate (PEM) SuperNodes and ``flwr`` trust, and
    (SuperLink side only) the SuperLink's certificate and private key."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None


class Service:
    """One Flower process, logged to `log`, stopped with everything it started."""

    def __init__(self, name: str, args: list[str], log: Path, env: dict | None = None):
        self.name, self.args, self.log, self.env = name, args, Path(log), env
        self.proc: subprocess.Popen | None = None
        self._family: list[int] = []

    def start(self) -> Service:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=self.env or flower_env(), start_new_session=True,
                                         preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the process to end by itself; whether it did."""
        try:
            return self.proc is not None and self.proc.wait(timeout=timeout) is not None
        except subprocess.TimeoutExpired:
            return False

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def signal(self) -> None:
        """SIGTERM the process and each process it started (by pid); `reap` waits for them."""
        if self.proc is None:
            return
        self._family = descendants(self.proc.pid) if self.alive else []
        for pid in [self.proc.pid, *self._family]:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def reap(self, timeout: float = 10.0) -> None:
        """Wait for what `signal` ended; SIGKILL whatever is still there after `timeout` seconds."""
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=timeout)
        deadline = time.monotonic() + timeout
        for pid in self._family:
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop(self, timeout: float = 10.0) -> None:
        self.signal()
        self.reap(timeout)

    def __enter__(self):
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


def stop_all(services, timeout: float = 10.0) -> None:
    """Stop several services at once (signal them all, then wait for each)."""
    services = list(services)
    for s in services:
        s.signal()
    for s in services:
        s.reap(timeout)


class SuperLink(Service):
    """The aggregator's ``flower-superlink`` (Fleet, Control and Runtime APIs on one port); `prefix`
    runs it through another command (``ip netns exec NS`` puts it on another host)."""

    def __init__(self, workdir: str | os.PathLike, port: int = 0, host: str = "127.0.0.1", tls: Tls | None = None,
                 node_auth: bool = False, database: str | None = None, prefix: list[str] = ()):
        self.workdir, self.host, self.port, self.tls = Path(workdir), host, port or free_port(), tls
        args = [*prefix, _command("flower-superlink"), "--host", host, "--port", str(self.port),
                "--disable-runtime-dependency-installation"]
        if tls is None:
            if node_auth:
                raise ConfigError("SuperNode authentication needs TLS (a certificate and key for the SuperLink)")
            args.append("--insecure")
        else:
            if tls.cert is None or tls.key is None:
                raise ConfigError("the SuperLink needs its TLS certificate and key")
            args += ["--ssl-ca-certfile", str(tls.ca), "--ssl-certfile", str(tls.cert), "--ssl-keyfile", str(tls.key)]
        if node_auth:
            args.append("--enable-supernode-auth")
        if database:
            args += ["--database", database]
        self.home = self.workdir / "flwr-home"  # its ServerApp's bundle is installed here, not in ~/.flwr
        super().__init__("superlink", args, self.workdir / "superlink.log", flower_env({"FLWR_HOME": str(self.home)}))
        self._write_home()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _write_home(self) -> None:
        """A FLWR_HOME of its own whose config names this SuperLink (for ``flwr run`` / ``flwr supernode``)."""
        self.home.mkdir(parents=True, exist_ok=True)
        lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]",
                 f"address = {json.dumps(self.address)}"]
        lines.append(f"root-certificates = {json.dumps(str(self.tls.ca))}" if self.tls else "insecure = true")
        (self.home / "config.toml").write_text("\n".join(lines) + "\n")

    def flwr(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        return subprocess.run([_command("flwr"), *args], capture_output=True, text=True, timeout=timeout,
                              env=flower_env({"FLWR_HOME": str(self.home)}), cwd=self.workdir, check=False)

    def wait_ready(self, timeout: float = 30.0) -> SuperLink:
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive:
                raise FedMarketError(f"flower-superlink exited: {self.output()[-1500:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    raise FedMarketError(f"flower-superlink not listening on {self.address} after {timeout:g} s") from None
                time.sleep(0.1)

    def register(self, *public_keys: str | os.PathLike, timeout: float = 60.0) -> None:
        """Admit the SuperNodes holding the private halves of `public_keys` (EC public keys, OpenSSH
        format), with ``flwr supernode register`` (all at once)."""
        env = flower_env({"FLWR_HOME": str(self.home)})
        procs = [subprocess.Popen([_command("flwr"), "supernode", "register", str(k), CONNECTION], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, env=env, cwd=self.workdir) for k in public_keys]
        failed = []
        for key, proc in zip(public_keys, procs):
            out, _ = proc.communicate(timeout=timeout)
            if proc.returncode != 0:
                failed.append(f"{key}: {out.strip()[-400:]}")
        if failed:
            raise FedMarketError("flwr supernode register failed: " + "; ".join(failed))

    def submit(self, run_config: dict, app_dir: str | os.PathLike = APP_DIR, name: str = "run") -> Service:
        """Start ``flwr run`` of the app on this SuperLink (streaming the ServerApp's log); the
        returned service ends when the ServerApp does."""
        overrides = toml_file(self.workdir / f"{name}-config.toml", run_config)
        args = [_command("flwr"), "run", str(Path(app_dir)), CONNECTION, "--stream", "--run-config", str(overrides)]
        return Service(name, args, self.workdir / f"{name}.log", flower_env({"FLWR_HOME": str(self.home)})).start()


class Serving:
    """A SuperLink and the run of the market's app on it, kept up for a job: `keep_up` starts the
    SuperLink again on its port if it died (registering the SuperNode keys again) and submits the
    app again if its run ended while the job still trains."""

    def __init__(self, link: SuperLink, run_config: dict, node_keys=()):
        self.link, self.run_config, self.node_keys = link, run_config, [Path(k) for k in node_keys]
        self.run: Service | None = None
        self.restarts = 0

    def start(self) -> Serving:
        if not self.link.alive:
            self.link.start()
        self.link.wait_ready()
        if self.node_keys:
            self.link.register(*self.node_keys)
        self.run = self.link.submit(self.run_config)
        return self

    def keep_up(self, training: bool = True) -> list[str]:
        """Restart what died; returns what it did (for the log)."""
        if not self.link.alive:
            self.link.stop()  # reap it and whatever it had started
            self.restarts += 1
            if self.run is not None:
                self.run.stop()
            self.start()
            return [f"the SuperLink had stopped: started again on {self.link.address}, app submitted again"]
        if training and self.run is not None and not self.run.alive:
            self.restarts += 1
            self.run = self.link.submit(self.run_config)
            return ["the app run had ended while the job trains: submitted again"]
        return []

    def signal(self) -> None:
        for s in (self.run, self.link):
            if s is not None:
                s.signal()

    def reap(self, timeout: float = 10.0) -> None:
        for s in (self.run, self.link):
            if s is not None:
                s.reap(timeout)

    def stop(self) -> None:
        self.signal()
        self.reap()


#: Flower's app runners other than the client app's: a SuperNode launches one by name for a run of
#: that kind, and each installs the run's bundle and imports its code (an aggregator submitting a
#: bundle that declares an `agentapp` had its code run on the provider's machine, guard unpassed)
REFUSED_RUNNERS = ("flwr-agentapp", "flwr-serverapp", "flwr-simulation")


def clientapp_shim(bin_dir: Path) -> Path:
    """A ``flwr-clientapp`` that is `flower_guard` (checks the bundle before it runs), in `bin_dir`,
    and every other app runner a SuperNode could launch (`REFUSED_RUNNERS`, and any other Flower
    names for a task type) as a refusal: a provider's node runs the job's client app and nothing else."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    shim = bin_dir / "flwr-clientapp"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m fedmarket.transport.flower_guard "$@"\n')
    shim.chmod(0o755)
    runners = set(REFUSED_RUNNERS)
    try:
        from flwr.supercore.constant import TASK_TYPE_TO_COMMAND

        runners |= set(TASK_TYPE_TO_COMMAND.values())
    except ImportError:  # the names above are Flower 1.41's
        pass
    for name in sorted(runners - {"flwr-clientapp"}):
        refusal = bin_dir / name
        refusal.write_text(f'#!/bin/sh\necho "fedmarket: a provider runs the job\'s client app only; refusing {name}" >&2\n'
                           "exit 1\n")
        refusal.chmod(0o755)
    return bin_dir


class SuperNode(Service):
    """A provider's ``flower-supernode``: connects outward to the SuperLink only, runs the market's
    ClientApp for the bundle `app_hash` names (any other is refused), with `node_config` (written
    to a TOML file in `workdir`) as the provider's account, data, store and chain; `prefix` runs it
    through another command, as for the SuperLink."""

    def __init__(self, workdir: str | os.PathLike, superlink: str, node_config: dict, app_hash: str, port: int = 0,
                 root_certificates: str | os.PathLike | None = None, auth_key: str | os.PathLike | None = None,
                 env: dict | None = None, prefix: list[str] = ()):
        self.workdir, self.port = Path(workdir), port or free_port()
        config = toml_file(self.workdir / "node-config.toml", node_config)
        args = [*prefix, _command("flower-supernode"), "--superlink", superlink, "--host", "127.0.0.1", "--port", str(self.port),
                "--node-config", str(config)]
        args += ["--root-certificates", str(root_certificates)] if root_certificates else ["--insecure"]
        if auth_key is not None:
            args += ["--auth-supernode-private-key", str(auth_key)]
        bin_dir = clientapp_shim(self.workdir / "bin")
        extra = {**(env or {}), APP_HASH_ENV: app_hash, "FLWR_HOME": str(self.workdir / "flwr-home"),
                 "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
        super().__init__("supernode", args, self.workdir / "supernode.log", flower_env(extra))
