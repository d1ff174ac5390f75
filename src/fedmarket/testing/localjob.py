"""One market job run as separate OS processes on this machine (`python -m fedmarket <role> run`),
for the integration tests and `benchmarks/distributed.py`; also a worked example of what an
operator runs on each machine (see docs/deployment.md).

`LocalJob` deploys the contracts on a development node (anvil), splits a bundled dataset into
one `.npz` file per provider (validators and the requester keep held-out parts), writes the
spec, mints the tokens every role needs, then starts and watches the role processes.
`RpcProxy` sits between the processes and the node: it counts JSON-RPC requests and can drop
connections or go away for a while, as a flaky network would.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from ..chain.rpc_backend import RpcChain
from ..errors import FedMarketError
from ..keys import dev_account
from ..market import Deployment, JobState
from ..runner import JobConfig, demo_spec

TOKEN = 10**18


class RpcProxy:
    """JSON-RPC pass-through that counts requests (per method, with times) and, on demand, drops
    every `drop_every`-th connection (alternately before and after forwarding it) or stops
    listening for a while (`outage`)."""

    def __init__(self, upstream: str, *, drop_every: int = 0, host: str = "127.0.0.1"):
        self.upstream = upstream
        self.host = host  # where it listens (the harness's address on a NetLab bridge, say)
        self.drop_every = drop_every
        self.lock = threading.Lock()
        self.log: list[tuple[float, str]] = []  # (monotonic time, method) of every request answered or dropped
        self.dropped = 0
        self._n = 0
        self.port = 0
        self.server: ThreadingHTTPServer | None = None
        self._listen()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _listen(self) -> None:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    doc = json.loads(body)
                    method = doc.get("method", "?")
                except (ValueError, AttributeError):
                    doc, method = {}, "?"
                with proxy.lock:
                    proxy.log.append((time.monotonic(), method))
                    action = proxy.decide(method, doc)
                if action == "drop-before":
                    return self._cut()
                if action == "null":
                    return self._reply(json.dumps({"jsonrpc": "2.0", "id": doc.get("id"), "result": None}).encode())
                req = urllib.request.Request(proxy.upstream, body, {"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(req, timeout=60) as resp:
                        answer = resp.read()
                except OSError:
                    return self._cut()
                with proxy.lock:
                    proxy.forwarded(method, doc)
                if action == "drop-after":
                    return self._cut()
                self._reply(answer)

            def _reply(self, payload: bytes):
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _cut(self):
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        self.server = ThreadingHTTPServer((self.host, self.port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def decide(self, method: str, doc: dict) -> str:
        """What to do with one request (called under `lock`): "ok" (forward and answer),
        "drop-before" (close without forwarding), "drop-after" (forward, then close without
        answering) or "null" (answer result null without forwarding). Here: every `drop_every`-th
        request is cut, alternately before and after forwarding."""
        self._n += 1
        if not (self.drop_every and self._n % self.drop_every == 0):
            return "ok"
        self.dropped += 1
        return "drop-before" if (self._n // self.drop_every) % 2 == 0 else "drop-after"

    def forwarded(self, method: str, doc: dict) -> None:
        """Called (under `lock`) after a request reached the node."""

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def outage(self, seconds: float) -> None:
        """Stop listening (every client connection is refused), then come back on the same port."""
        self.close()
        time.sleep(seconds)
        self._listen()

    def count(self, method: str | None = None, since: float = 0.0, until: float = float("inf")) -> int:
        with self.lock:
            return sum(1 for t, m in self.log if since <= t <= until and (method is None or m == method))

    def __enter__(self) -> RpcProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def deploy_dev(chain: RpcChain, deployer, treasury: str, workdir: Path, accounts, *, mint: int = 0,
               **deploy_kwargs) -> Deployment:
    """On a development node: ether for gas to the deployer and `accounts`, the contracts deployed
    (fee 100 bps) and their addresses written to `workdir/contracts.json` for role processes, then
    `mint` tokens to each of `accounts` (none if 0)."""
    for acct in [deployer, *accounts]:
        chain.fund(acct.address, 10**21)
    dep = Deployment.deploy(chain, deployer, treasury, 100, **deploy_kwargs)
    dep.save(Path(workdir) / "contracts.json", chain_id=chain.chain_id, block=dep.token.from_block,
             deployer=deployer.address)
    if mint:
        for acct in accounts:
            dep.token.transact("mint", acct.address, mint, sender=deployer)
    return dep


@dataclass
class LocalJob:
    """A job across OS processes on one machine. `node_url` is the node itself (setup and
    checks); `rpc_url` what the role processes use (the node, or a proxy in front of it). The
    job itself is the demo's (`runner.demo_spec`) for `cfg`; `LocalJob.make` takes its settings
    as keywords."""

    workdir: Path
    node_url: str
    cfg: JobConfig
    rpc_url: str = ""
    poll: float = 0.2
    collect_timeout: float = 5.0
    reveal_timeout: float = 20.0
    challenge_period: int = 1
    round_duration: int = 600
    response_period: int = 5  # seconds a dispute game's mover has to answer
    keystore_requester: bool = False  # sign the requester's transactions from an encrypted keystore
    cheats: dict[str, str] = field(default_factory=dict)  # process name -> adversary class it runs instead
    challenger: bool = False  # start a challenger process (dev account 30) with start_all
    broker: str = ""  # a NATS server URL: every role's store and mailbox; each role then writes only in its home()
    prefix: Callable[[str], list[str]] | None = None  # command prefix per process name (e.g. `ip netns exec NS`)
    flower: str = ""  # HOST:PORT: rounds on Flower's Deployment Engine, the aggregator's SuperLink listening there
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    killed: list[str] = field(default_factory=list)
    job_id: int | None = None

    @classmethod
    def make(cls, workdir, node_url: str, **kwargs) -> LocalJob:
        """A local job; keywords naming `JobConfig` fields set the job (5 providers, 2 rounds of one
        local epoch unless given), the others this harness."""
        job = {"providers": 5, "rounds": 2, "local_epochs": 1}
        job.update({k: kwargs.pop(k) for k in list(kwargs) if k in JobConfig.__dataclass_fields__})
        return cls(workdir, node_url, JobConfig(**job), **kwargs)

    @property
    def providers(self) -> int:
        return self.cfg.providers

    @property
    def validators(self) -> int:
        return self.cfg.validators

    @property
    def rounds(self) -> int:
        return self.cfg.rounds

    # dev account indexes: 0 deployer, 1 treasury, 2 requester, 3 aggregator, 4.. validators, 30 challenger, 40.. providers
    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.rpc_url = self.rpc_url or self.node_url
        self.chain = RpcChain(self.node_url)
        self.deployer, self.treasury, self.requester, self.aggregator = (dev_account(i) for i in range(4))
        self.validator_accts = [dev_account(4 + i) for i in range(self.validators)]
        self.provider_accts = [dev_account(40 + i) for i in range(self.providers)]
        self.challenger_acct = dev_account(30)
        self.dep: Deployment | None = None
        self.before: dict[str, int] = {}
        self.market_before = 0

    # ---- setup --------------------------------------------------------------------------
    @property
    def accounts(self) -> list:
        return [self.requester, self.treasury, self.aggregator, *self.provider_accts, *self.validator_accts,
                self.challenger_acct]

    def setup(self) -> None:
        """Deploy, fund every account, write one data file per role and the job's spec."""
        from ..spec import DeadlineSpec

        w = self.workdir
        for sub in ("data",) if self.broker else ("data", "logs", "state", "blobs", "mailbox"):
            (w / sub).mkdir(parents=True, exist_ok=True)
        self.dep = deploy_dev(self.chain, self.deployer, self.treasury.address, w, self.accounts, unbonding_delay=1_000)
        ds, train, test, parts = self.cfg.split()
        deadlines = DeadlineSpec(join_window=3_600, round_duration=self.round_duration,
                                 challenge_period=self.challenge_period, claim_period=86_400,
                                 response_period=self.response_period)
        self.spec = demo_spec(self.cfg, ds, deadlines)
        if self.flower:
            from ..spec import TransportSpec
            from ..transport.flower import app_hash

            self.spec = self.spec.model_copy(update={"transport": TransportSpec(flower_app_hash=app_hash())})
        r = self.spec.reward
        mint = [(self.requester, r.escrow), (self.aggregator, r.aggregator_stake)]
        mint += [(a, r.provider_funds) for a in self.provider_accts]
        mint += [(a, r.validator_stake) for a in self.validator_accts]
        mint += [(self.challenger_acct, r.dispute_bond)]  # enough for one dispute game
        for acct, amount in mint:
            if amount:
                self.dep.token.transact("mint", acct.address, amount, sender=self.deployer)
        self._write_data(train, test, parts)
        (w / "spec.json").write_bytes(self.spec.canonical())
        if self.keystore_requester:
            from ..keys import Keystore

            Keystore(w / "keystore").new("requester", "local-job", key=self.requester.key, scrypt_n=2**10)
        self.nonces0 = {a.address: self.chain.next_nonce(a.address) for a in self.accounts}
        self.before = {a.address: self.dep.holdings(a.address) for a in self.accounts}
        # tokens in the market outside the watched accounts' free stake: job escrows and locked stakes
        self.market_before = self.dep.balance(self.dep.market.address) - sum(self.dep.staked(a.address) for a in self.accounts)

    def _write_data(self, train, test, parts) -> None:
        """One .npz per provider, held-out halves for the validators, the rest for the requester."""
        from ..fl.data import subset

        data = self.workdir / "data"
        for i, idx in enumerate(parts):
            np.savez(data / f"provider-{i}.npz", X=train.X[idx], y=train.y[idx])
        if self.validators:
            half = test.n_samples // 2
            for i, idx in enumerate(np.array_split(np.arange(half, test.n_samples), self.validators)):
                np.savez(data / f"validator-{i}.npz", X=test.X[idx], y=test.y[idx])
            test = subset(test, np.arange(half))
        np.savez(data / "test.npz", X=test.X, y=test.y)

    # ---- processes ----------------------------------------------------------------------
    def home(self, name: str) -> Path:
        """The only directory role `name` writes in when the job runs on a broker (its working
        directory, state and logs), as on a machine of its own; without a broker, `logs/`."""
        return self.workdir / "roles" / name if self.broker else self.workdir / "logs"

    @property
    def mailbox(self) -> str:
        return self.broker or str(self.workdir / "mailbox")

    def _common(self, name: str, rpc: str | None = None) -> list[str]:
        state = self.home(name) / "state" if self.broker else self.workdir / "state" / name
        return ["--rpc", rpc or self.rpc_url, "--contracts", str(self.workdir / "contracts.json"),
                "--store", self.broker or str(self.workdir / "blobs"), "--state-dir", str(state),
                "--poll", str(self.poll)]

    def _spawn(self, name: str, args: list[str], env: dict | None = None) -> subprocess.Popen:
        full_env = dict(os.environ)
        full_env.update(env or {})
        launcher = ["fedmarket.testing.cheat", self.cheats[name]] if name in self.cheats else ["fedmarket"]
        home = self.home(name)
        home.mkdir(parents=True, exist_ok=True)
        with open(home / f"{name}.log", "ab") as log, open(home / f"{name}.out", "ab") as out:
            wrap = self.prefix(name) if self.prefix is not None else []
            proc = subprocess.Popen([*wrap, sys.executable, "-m", *launcher, *args], stdout=out, stderr=log,
                                    stdin=subprocess.DEVNULL, env=full_env, cwd=home if self.broker else None)
        self.procs[name] = proc
        return proc

    def post(self, timeout: float = 60.0) -> int:
        """Start the requester (`requester post`, which then follows the job); returns the job id."""
        args = ["requester", "post", *self._common("requester"), "--spec", str(self.workdir / "spec.json"),
                "--aggregator", self.aggregator.address, "--test", str(self.workdir / "data" / "test.npz")]
        env = {}
        if self.keystore_requester:
            args += ["--account", "requester", "--keystore", str(self.workdir / "keystore")]
            env["FEDMARKET_PASSWORD"] = "local-job"
        else:
            args += ["--dev-account", "2"]
        proc = self._spawn("requester", args, env)
        out = self.home("requester") / "requester.out"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = out.read_text() if out.exists() else ""
            if text.strip():
                self.job_id = int(text.split()[0])
                return self.job_id
            if proc.poll() is not None:
                raise FedMarketError(f"requester exited with {proc.returncode}: {self.log('requester')[-2000:]}")
            time.sleep(0.05)
        raise FedMarketError("requester did not post the job in time")

    def start_aggregator(self, env: dict | None = None, rpc: str | None = None) -> subprocess.Popen:
        """The aggregator process (through `rpc` instead of the job's RPC URL if given); over Flower,
        `aggregator serve-flower` (its SuperLink on `flower`)."""
        if self.flower:
            host, port = self.flower.rsplit(":", 1)
            return self._spawn("aggregator", ["aggregator", "serve-flower", *self._common("aggregator", rpc),
                                              "--dev-account", "3", "--job", str(self.job_id), "--mailbox", self.mailbox,
                                              "--flower-host", host, "--flower-port", port,
                                              "--collect-timeout", str(self.collect_timeout),
                                              "--reveal-timeout", str(self.reveal_timeout)], env)
        return self._spawn("aggregator", ["aggregator", "run", *self._common("aggregator", rpc), "--dev-account", "3",
                                          "--job", str(self.job_id), "--mailbox", self.mailbox,
                                          "--collect-timeout", str(self.collect_timeout),
                                          "--reveal-timeout", str(self.reveal_timeout)], env)

    def start_provider(self, i: int) -> subprocess.Popen:
        if self.flower:  # a SuperNode that connects out to the aggregator's SuperLink; messages in its own directory
            return self._spawn(f"provider-{i}", ["provider", "supernode", *self._common(f"provider-{i}"),
                                                 "--dev-account", str(40 + i), "--job", str(self.job_id),
                                                 "--superlink", self.flower, "--mailbox", str(self.home(f"provider-{i}") / "mailbox"),
                                                 "--data", str(self.workdir / "data" / f"provider-{i}.npz")])
        return self._spawn(f"provider-{i}", ["provider", "run", *self._common(f"provider-{i}"), "--dev-account", str(40 + i),
                                             "--job", str(self.job_id), "--mailbox", self.mailbox,
                                             "--data", str(self.workdir / "data" / f"provider-{i}.npz")])

    def start_validator(self, i: int) -> subprocess.Popen:
        return self._spawn(f"validator-{i}", ["validator", "run", *self._common(f"validator-{i}"), "--dev-account", str(4 + i),
                                              "--job", str(self.job_id), "--mailbox", self.mailbox,
                                              "--data", str(self.workdir / "data" / f"validator-{i}.npz")])

    def start_challenger(self) -> subprocess.Popen:
        return self._spawn("challenger", ["challenger", "run", *self._common("challenger"), "--dev-account", "30",
                                          "--job", str(self.job_id), "--mailbox", self.mailbox])

    def start_all(self) -> None:
        self.post()
        if self.challenger:
            self.start_challenger()
        self.start_aggregator()
        for i in range(self.validators):
            self.start_validator(i)
        for i in range(self.providers):
            self.start_provider(i)

    def log(self, name: str) -> str:
        path = self.home(name) / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def logs(self) -> str:
        return "\n".join(f"--- {n}\n{self.log(n)[-3000:]}" for n in sorted({*self.procs, *self.killed}))

    def wait(self, pred, timeout: float, what: str, poll: float = 0.1):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = pred()
            if got:
                return got
            for name, proc in self.procs.items():
                if proc.poll() not in (None, 0):
                    raise FedMarketError(f"{name} exited with {proc.returncode} while waiting for {what}\n{self.logs()}")
            time.sleep(poll)
        raise FedMarketError(f"timed out after {timeout}s waiting for {what}\n{self.logs()}")

    def committed(self) -> int:
        return len(self.dep.market.events("RoundCommitted", job_id=self.job_id)) if self.job_id is not None else 0

    def wait_done(self, timeout: float = 120.0) -> None:
        """Wait until every live role process exits, and check they all exited 0."""
        live = dict(self.procs)
        self.wait(lambda: all(p.poll() is not None for p in live.values()), timeout, "every role process to finish")
        bad = {n: p.returncode for n, p in live.items() if p.returncode != 0}
        if bad:
            raise FedMarketError(f"role processes failed: {bad}\n{self.logs()}")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Kill a role process (SIGKILL: no clean-up); it is no longer watched."""
        proc = self.procs.pop(name)
        proc.send_signal(sig)
        proc.wait(10)
        self.killed.append(name)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def shared_writes(self, since: float) -> list[str]:
        """Directories (relative to the work directory) holding a file written since `since`
        (wall clock) outside every role's own home: with a broker, the places more than one
        role could write. The goal is none."""
        homes = self.workdir / "roles"
        return sorted({str(p.parent.relative_to(self.workdir)) for p in self.workdir.rglob("*")
                       if p.is_file() and homes not in p.parents and p.stat().st_mtime >= since})

    # ---- what the chain says ------------------------------------------------------------
    def report(self) -> dict:
        dep, job_id = self.dep, self.job_id
        job = dep.job(job_id)
        after = {a.address: dep.holdings(a.address) for a in self.accounts}
        escrow = self.spec.reward.escrow
        settled = dep.market.events("JobSettled", job_id=job_id)
        posted = dep.market.events("RewardRootPosted", job_id=job_id)
        claims = dep.market.events("RewardClaimed", job_id=job_id)
        providers = [a.address for a in self.provider_accts]
        validators = [a.address for a in self.validator_accts]
        earners = providers + validators + [self.aggregator.address]
        paid = sum(after[p] - self.before[p] for p in earners)  # rewards and fees: the reward root's total
        fee = after[self.treasury.address] - self.before[self.treasury.address]
        refunded = after[self.requester.address] - (self.before[self.requester.address] - escrow)
        market_after = dep.balance(dep.market.address)
        staked = sum(dep.staked(a.address) for a in self.accounts)
        rounds = dep.market.events("RoundCommitted", job_id=job_id)
        return {
            "job_id": job_id,
            "state": job["state"].name,
            "rounds_committed": sorted(int(e["round"]) for e in rounds),
            "round_counts": [int(e["count"]) for e in sorted(rounds, key=lambda e: e["round"])],
            "claimed": sorted(e["account"] for e in claims),
            "participants_claimable": sorted(providers + validators + [self.aggregator.address]),
            "reward_total": int(posted[-1]["reward_total"]) if posted else None,
            "escrow": escrow,
            "paid": paid,
            "providers_paid": sum(after[p] - self.before[p] for p in providers),
            "fee": fee,
            "refunded": refunded,
            "fee_event": int(settled[0]["fee"]) if settled else None,
            "refund_event": int(settled[0]["refund"]) if settled else None,
            "minted": bool(dep.licence.events("ModelMinted", job_id=job_id)),
            # every token is still on some watched account or in the market
            "holdings_conserved": sum(self.before.values()) + self.market_before == sum(after.values()) + market_after - staked,
            "job_funds_left_in_market": market_after - staked,
            "aggregator_delta": after[self.aggregator.address] - self.before[self.aggregator.address],
            "validators_delta": sum(after[v] - self.before[v] for v in validators),
            "settled": job["state"] == JobState.SETTLED,
        }
