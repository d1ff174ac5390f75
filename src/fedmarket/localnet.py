"""`fedmarket localnet up|down`: a whole market on this machine, on loopback, from one command.

`up` starts a development chain (`fedmarket node`), deploys the contracts, funds the roles'
development accounts, and, given a spec and a data directory, posts the job and starts one OS
process per role on the user's files (`provider-I.npz`, `validator-I.npz`, `test.npz`, as
`fedmarket data split` writes them), then the dashboard. Every process runs detached from the
terminal, logs to DIR/logs/, and is recorded (pid, command) in DIR/localnet.json; a lock file
keeps a second `up` out of the same directory. `down` stops exactly the recorded processes
(SIGTERM, then SIGKILL after a grace period), and anvil with its node, and removes the lock: no
process, port or lock is left. If `up` fails half-way, it takes down what it started.
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
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError, FedMarketError

STATE = "localnet.json"
LOCK = "localnet.lock"
DEPLOYER, REQUESTER, AGGREGATOR, FIRST_VALIDATOR, FIRST_PROVIDER = 0, 2, 3, 4, 10
MAX_VALIDATORS = FIRST_PROVIDER - FIRST_VALIDATOR


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting for its parent counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (anvil under its `fedmarket node`)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return out


def port_open(port: int) -> bool:
    """Whether something listens on 127.0.0.1:`port`."""
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class LocalNet:
    """The local market kept in directory `root`."""

    root: Path
    procs: dict[str, dict] = field(default_factory=dict)  # name -> {pid, cmd, log}
    info: dict = field(default_factory=dict)  # urls, ports, job id, files

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()

    # ---- state on disk ------------------------------------------------------------------
    @property
    def lock(self) -> Path:
        return self.root / LOCK

    def load(self) -> bool:
        """Read the recorded state; False when no localnet was brought up here."""
        try:
            doc = json.loads((self.root / STATE).read_text())
        except FileNotFoundError:
            return False
        except ValueError:
            raise FedMarketError(f"{self.root / STATE} is corrupt; stop its processes by hand") from None
        self.procs, self.info = doc["procs"], doc["info"]
        return True

    def save(self) -> None:
        tmp = self.root / f".{STATE}.tmp"
        tmp.write_text(json.dumps({"procs": self.procs, "info": self.info}, indent=2))
        os.replace(tmp, self.root / STATE)

    def take_lock(self) -> None:
        """Create the lock, or refuse if a localnet is up here (a stale one is cleaned first)."""
        self.root.mkdir(parents=True, exist_ok=True)
        if self.lock.exists():
            if self.load() and any(_alive(p["pid"]) for p in self.procs.values()):
                raise ConfigError(f"a localnet is already up in {self.root}: `fedmarket localnet down --dir {self.root}` first")
            self.down()  # stale: its processes are gone; clear what is left
        fd = os.open(self.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)

    # ---- processes ----------------------------------------------------------------------
    def spawn(self, name: str, args: list[str]) -> int:
        """Start `fedmarket ARGS` detached (its own session), logging to logs/NAME.{out,log}."""
        logs = self.root / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
        with open(logs / f"{name}.out", "wb") as out, open(logs / f"{name}.log", "wb") as err:
            proc = subprocess.Popen([sys.executable, "-m", "fedmarket", *args], stdout=out, stderr=err,
                                    stdin=subprocess.DEVNULL, env=env, cwd=self.root, start_new_session=True)
        self.procs[name] = {"pid": proc.pid, "cmd": " ".join(args[:2]), "log": str(logs / f"{name}.log")}
        self.save()
        return proc.pid

    def wait_output(self, name: str, prefix: str, timeout: float) -> str:
        """The first line of NAME's stdout starting with `prefix` (its process must stay alive)."""
        out = self.root / "logs" / f"{name}.out"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in (out.read_text(errors="replace") if out.exists() else "").splitlines():
                if line.startswith(prefix):
                    return line
            if not _alive(self.procs[name]["pid"]):
                err = Path(self.procs[name]["log"]).read_text(errors="replace").strip().splitlines()
                raise FedMarketError(f"{name} exited at start: {err[-1] if err else 'no output'}")
            time.sleep(0.05)
        raise FedMarketError(f"{name} did not start within {timeout:.0f} s (see {self.procs[name]['log']})")

    def down(self, grace: float = 10.0) -> list[str]:
        """Stop every recorded process (and anvil under its node) and remove the lock and state;
        returns the names of the processes that were still running."""
        self.load()
        targets: dict[int, str] = {}
        for name, p in self.procs.items():
            pid = int(p["pid"])
            if _alive(pid) and "fedmarket" in _cmdline(pid):  # never a recycled pid
                targets[pid] = name
                for child in _children(pid):
                    targets.setdefault(child, f"{name} (child)")
        for pid in targets:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_alive(pid) for pid in targets):
            time.sleep(0.05)
        for pid in targets:
            if _alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for path in (self.root / STATE, self.lock):
            path.unlink(missing_ok=True)
        return sorted(set(targets.values()))


@dataclass(frozen=True)
class RoleFiles:
    """The user's data for a local job: one file per provider, per validator, and the requester's test set."""

    providers: list[Path]
    validators: list[Path]
    test: Path | None

    @classmethod
    def find(cls, data: Path) -> RoleFiles:
        if not data.is_dir():
            raise ConfigError(f"data directory {data} does not exist (make one with `fedmarket data split --out {data}`)")
        providers = sorted(data.glob("provider-*.npz"), key=lambda p: (len(p.name), p.name))
        validators = sorted(data.glob("validator-*.npz"), key=lambda p: (len(p.name), p.name))
        if not providers:
            raise ConfigError(f"{data} holds no provider-I.npz file (make them with `fedmarket data split --out {data}`)")
        if len(validators) > MAX_VALIDATORS:
            raise ConfigError(f"at most {MAX_VALIDATORS} validators run locally ({len(validators)} validator files in {data})")
        test = data / "test.npz"
        return cls(providers, validators, test if test.is_file() else None)


def _check_job(spec, files: RoleFiles) -> None:
    """The spec can run with these files: enough providers and validators, not too many."""
    p = spec.participation
    n, v = len(files.providers), len(files.validators)
    if not p.min_providers <= n <= p.max_providers:
        raise ConfigError(f"the spec takes {p.min_providers} to {p.max_providers} providers; the data has {n} provider files")
    if v > p.max_validators or v < p.validators_needed:
        raise ConfigError(f"the spec takes {p.validators_needed} to {p.max_validators} validators; the data has {v} validator files")


def _fund(url: str, addresses: dict, spec, files: RoleFiles) -> None:
    """Ether for gas and tokens for the escrow and stakes, to each role's development account."""
    from .chain.rpc_backend import RpcChain
    from .keys import dev_account
    from .market import Deployment

    chain = RpcChain(url)
    dep = Deployment.attach(chain, addresses)
    r = spec.reward
    grants = [(REQUESTER, r.escrow), (AGGREGATOR, r.aggregator_stake)]
    grants += [(FIRST_VALIDATOR + i, r.validator_stake) for i in range(len(files.validators))]
    grants += [(FIRST_PROVIDER + i, r.provider_funds) for i in range(len(files.providers))]
    deployer = dev_account(DEPLOYER)
    for index, amount in grants:
        address = dev_account(index).address
        chain.fund(address, max(chain.native_balance(address), 100 * 10**18))
        if amount:
            dep.token.transact("mint", address, amount, sender=deployer)


def up(net: LocalNet, *, port: int = 8545, dashboard_port: int = 8050, spec_path: Path | None = None,
       data: Path | None = None, poll: float = 0.5) -> dict:
    """Bring the local market up (see the module's docstring); returns what was started."""
    spec = files = None
    if (spec_path is None) != (data is None):
        raise ConfigError("give both --spec and --data to run a job (or neither for an empty market)")
    if spec_path is not None:
        from .spec import JobSpec

        if not spec_path.is_file():
            raise ConfigError(f"spec file {spec_path} does not exist")
        spec, files = JobSpec.parse(spec_path.read_bytes()), RoleFiles.find(data)
        _check_job(spec, files)
    net.take_lock()
    try:
        _start(net, port, dashboard_port, spec_path, spec, files, poll)
    except BaseException:
        net.down()
        raise
    return net.info


def _start(net: LocalNet, port: int, dashboard_port: int, spec_path, spec, files: RoleFiles | None, poll: float) -> None:
    net.procs, net.info = {}, {"dir": str(net.root)}
    # a new chain: what roles remembered about the previous one (job ids, journals, messages) is void
    for stale in ("state", "mailbox"):
        shutil.rmtree(net.root / stale, ignore_errors=True)
    for stale in ("addresses.json", "index.sqlite", "index.sqlite-wal", "index.sqlite-shm"):
        (net.root / stale).unlink(missing_ok=True)
    net.spawn("node", ["node", "--port", str(port)])
    url = net.wait_output("node", "anvil listening on ", 30).split()[3]
    net.info.update(rpc=url, contracts=str(net.root / "addresses.json"), store=str(net.root / "blobs"),
                    mailbox=str(net.root / "mailbox"))
    _deploy(url, net.root / "addresses.json")
    if spec is not None:
        net.info["job"] = _start_job(net, url, spec_path, spec, files, poll)
    args = ["dashboard", "--rpc", url, "--contracts", net.info["contracts"], "--port", str(dashboard_port),
            "--db", str(net.root / "index.sqlite"), "--store", net.info["store"]]
    if files is not None and files.test is not None:
        args += ["--test", str(files.test.resolve())]
    (net.root / "blobs").mkdir(exist_ok=True)
    net.spawn("dashboard", args)
    net.info["dashboard"] = net.wait_output("dashboard", "dashboard on ", 60).split()[2]
    net.save()


def _deploy(url: str, out: Path) -> None:
    from .chain.rpc_backend import RpcChain
    from .keys import dev_account
    from .market import Deployment

    chain = RpcChain(url)
    deployer = dev_account(DEPLOYER)
    dep = Deployment.deploy(chain, deployer, deployer.address)
    dep.save(out, chain_id=chain.chain_id, block=dep.token.from_block, deployer=deployer.address)


def _start_job(net: LocalNet, url: str, spec_path: Path, spec, files: RoleFiles, poll: float) -> int:
    """Fund the roles, post the job (the requester then follows it), start every other role."""
    from .keys import dev_account

    contracts = net.info["contracts"]
    _fund(url, json.loads(Path(contracts).read_text()), spec, files)

    def common(name: str) -> list[str]:
        return ["--rpc", url, "--contracts", contracts, "--store", net.info["store"], "--poll", str(poll),
                "--state-dir", str(net.root / "state" / name)]

    req = ["requester", "post", *common("requester"), "--dev-account", str(REQUESTER), "--spec", str(spec_path.resolve()),
           "--aggregator", dev_account(AGGREGATOR).address]
    if files.test is not None:
        req += ["--test", str(files.test.resolve())]
    net.spawn("requester", req)
    job = int(net.wait_output("requester", "", 90).split()[0])
    mail = ["--mailbox", net.info["mailbox"], "--job", str(job)]
    net.spawn("aggregator", ["aggregator", "run", *common("aggregator"), "--dev-account", str(AGGREGATOR), *mail])
    for i, path in enumerate(files.validators):
        net.spawn(f"validator-{i}", ["validator", "run", *common(f"validator-{i}"), "--dev-account",
                                     str(FIRST_VALIDATOR + i), "--data", str(path.resolve()), *mail])
    for i, path in enumerate(files.providers):
        net.spawn(f"provider-{i}", ["provider", "run", *common(f"provider-{i}"), "--dev-account",
                                    str(FIRST_PROVIDER + i), "--data", str(path.resolve()), *mail])
    return job
