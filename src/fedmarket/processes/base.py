"""What every long-running role process shares: the poll loop, clean shutdown, a state
directory of small atomically written files, and a chain whose transactions are journaled.

A process's `step()` looks at the chain and the mailbox and does whatever is due now. Every
step is idempotent: the chain (committed rounds, attestations, claims) says what is done, and
the few facts the chain cannot hold (a validator's sealed scores, say) are small JSON files
in the role's state directory, replaced atomically. So a process can be killed at any point
and restarted with the same state directory: it picks up where the chain is.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import rlp

from ..chain.rpc_backend import RpcChain
from ..errors import ChainError, ContractRevert, FedMarketError, StorageError
from ..market import Deployment, JobState
from ..memory import Trimmer
from ..protocol.encoding import BAD_INPUT
from ..roles.common import LATE_START_GRACE, close_join_window, keep_job_files
from ..storage import BlobStore, LocalBlobStore, MirroredStore, write_atomic


class StateDir:
    """A role's state directory: named JSON documents, each replaced atomically."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create state directory {self.root}: {exc.strerror or exc}") from None

    def load(self, name: str, default: Any = None) -> Any:
        try:
            return json.loads((self.root / f"{name}.json").read_text())
        except FileNotFoundError:
            return default
        except ValueError:
            raise StorageError(f"state file {self.root / name}.json is corrupt") from None

    def save(self, name: str, value: Any) -> None:
        write_atomic(self.root / f"{name}.json", json.dumps(value, sort_keys=True, indent=1).encode())


class TxJournal:
    """Signed transactions, written to disk before they are sent: `pending/HASH.json` until
    the receipt is seen, then `mined/HASH.json`; `dropped/` holds ones whose nonce went to
    another transaction before they ever reached the node."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        try:
            for sub in ("pending", "mined", "dropped"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create transaction journal {self.root}: {exc.strerror or exc}") from None

    def record(self, raw: str, tx_hash: str) -> dict:
        from eth_account import Account as EthAccount  # loaded at the first transaction (about 0.5 s)

        blob = bytes.fromhex(raw.removeprefix("0x"))
        fields = rlp.decode(blob[1:]) if blob[0] < 0x80 else rlp.decode(blob)  # typed (EIP-2718) or legacy
        nonce = int.from_bytes(fields[1] if blob[0] < 0x80 else fields[0], "big")
        entry = {"hash": tx_hash, "raw": raw, "nonce": nonce, "sender": EthAccount.recover_transaction(raw),
                 "time": time.time()}
        write_atomic(self.root / "pending" / f"{tx_hash}.json", json.dumps(entry).encode())
        return entry

    def _move(self, tx_hash: str, to: str) -> None:
        src = self.root / "pending" / f"{tx_hash}.json"
        if src.exists():
            os.replace(src, self.root / to / f"{tx_hash}.json")

    def mined(self, tx_hash: str) -> None:
        self._move(tx_hash, "mined")

    def dropped(self, tx_hash: str) -> None:
        self._move(tx_hash, "dropped")

    def entries(self, which: str = "pending") -> list[dict]:
        out = []
        for path in sorted((self.root / which).glob("0x*.json")):
            try:
                out.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
        return sorted(out, key=lambda e: (e["sender"], e["nonce"]))


class JournaledRpcChain(RpcChain):
    """An `RpcChain` that journals every signed transaction before sending it.

    `RpcChain` already signs each intent exactly once and re-sends the same bytes after a
    dropped connection; the journal carries that guarantee across a crash: `reconcile()` (run
    at start and before every step) finds each pending transaction's receipt, or re-broadcasts
    its very bytes, so a restarted process never signs a second transaction for an intent
    whose first one may still land."""

    def __init__(self, url: str, journal_dir: str | os.PathLike, **kwargs):
        super().__init__(url, **kwargs)
        self.journal = TxJournal(journal_dir)

    def _submit(self, raw: str, tx_hash: str) -> None:
        self.journal.record(raw, tx_hash)
        super()._submit(raw, tx_hash)

    def _wait(self, tx_hash: str) -> dict:
        receipt = super()._wait(tx_hash)
        self.journal.mined(tx_hash)
        return receipt

    def reconcile(self) -> list[str]:
        """Settle every pending journaled transaction: mined (receipt found), re-broadcast
        (same bytes), or dropped (its nonce is taken by another mined transaction). Returns
        the hashes re-broadcast."""
        rebroadcast = []
        for entry in self.journal.entries("pending"):
            h = entry["hash"]
            receipt = self._rpc("eth_getTransactionReceipt", [h])
            if receipt is not None:
                self.journal.mined(h)
                continue
            mined_nonce = int(self._rpc("eth_getTransactionCount", [entry["sender"], "latest"]), 16)
            if mined_nonce > entry["nonce"]:
                self.journal.dropped(h)
                continue
            super()._submit(entry["raw"], h)  # the same signed bytes: at most one tx per nonce can land
            rebroadcast.append(h)
            try:
                self._wait(h)
            except ChainError:
                pass  # still pending: the next reconcile looks again
            self.forget_nonce(entry["sender"])  # re-read from the node
        return rebroadcast


def retrying(fn: Callable[[], Any], attempts: int = 8, backoff: float = 0.2) -> Any:
    """`fn()`, tried again after a failure to reach the node (connection refused or dropped),
    `attempts` times in all with exponential backoff (about 25 s with the defaults): what a
    role does while it starts, before its loop can take over retrying."""
    from ..chain.rpc_backend import NodeUnreachable

    for attempt in range(attempts):
        try:
            return fn()
        except NodeUnreachable:
            if attempt == attempts - 1:
                raise
            time.sleep(backoff * 2**attempt)


class Stop(Exception):
    """Raised inside a step to end the process's loop cleanly: the role's work is done."""


class Fatal(FedMarketError):
    """Raised inside a step when retrying cannot help (wrong account, unsupported job): the
    process ends with this one-line error."""


class RoleProcess:
    """A role as a long-running process: `step()` is called every `poll_interval` seconds
    until the role's work is done, `until()` says so, or SIGTERM / SIGINT arrives."""

    role = "role"

    def __init__(self, dep: Deployment, state_dir: str | os.PathLike, *, log: Callable[[str], None] | None = None):
        self.dep = dep
        self.state = StateDir(state_dir)
        self.done = False
        self._stop = threading.Event()
        self._log = log or (lambda m: print(m, file=sys.stderr, flush=True))
        self._last_error: str | None = None
        self._said: set[str] = set()
        self.steps = 0
        self._trimmer = Trimmer()  # freed round memory back to the OS, at most once a minute
        self._job_files_kept = False

    # ---- what it keeps --------------------------------------------------------------------
    def mirrored(self, store: BlobStore) -> MirroredStore:
        """`store`, with a copy in this process's state directory of every blob the role writes (the
        documents it posts, which it may have to defend) and of the job's files it keeps
        (`keep_job_files`), put back in the shared store when someone deletes them there."""
        return MirroredStore(store, LocalBlobStore(self.state.root / "blobs"), keep_reads=False)

    def keep_job_files(self, store: BlobStore, job_id: int, module: bool = True) -> None:
        """Once per process, before it stakes or works: keep the job's spec, and with `module` (once
        the job passed the checks before staking) its packed module."""
        if not self._job_files_kept:
            keep_job_files(self.dep, store, job_id, module)
            self._job_files_kept = module

    def close_join_window(self, job_id: int, job: dict, account) -> None:
        """A member's (or the requester's) part once the join window is over and `LATE_START_GRACE`
        more passed without the aggregator's start: start the job if it can start, else cancel it
        (`roles.common.close_join_window`), so that nobody's stake stays locked in an open job. The
        requester goes first; each member waits one more grace and a share of another, set by its
        address, so that they do not all send (and all but one revert) in one block."""
        now = max(int(self.dep.chain.timestamp()), int(time.time()))
        wait = LATE_START_GRACE
        if self.role != "requester":
            wait += LATE_START_GRACE + int(self.address, 16) % LATE_START_GRACE
        if job["state"] != JobState.OPEN or now < int(job["join_deadline"]) + wait:
            return
        try:
            receipt = close_join_window(self.dep, account, job_id, now)
        except ContractRevert as exc:  # someone was quicker, or the chain's clock is behind ours
            self.say_once(f"could not close the join window of job {job_id}: {exc}")
            return
        if receipt is not None:
            what = "started" if any(e.name == "TrainingStarted" for e in receipt.events) else "cancelled"
            self.say(f"the join window of job {job_id} is over and nobody moved: {what} it (tx {receipt.tx_hash})")

    # ---- logging -----------------------------------------------------------------------
    def say(self, message: str) -> None:
        stamp = time.strftime("%H:%M:%S", time.localtime()) + f".{int(time.time() * 1000) % 1000:03d}"
        self._log(f"{stamp} [{self.role} {self.address[:10]}] {message}")

    def say_once(self, message: str) -> None:
        if message not in self._said:
            self._said.add(message)
            self.say(message)

    @property
    def address(self) -> str:
        return "-"

    # ---- the loop ----------------------------------------------------------------------
    def step(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def safe_step(self) -> bool:
        """One step; expected failures (node unreachable, a bad blob, a revert) are logged on one
        line and retried at the next step instead of ending the process. Returns True if it ran clean."""
        self.steps += 1
        try:
            chain = getattr(self.dep, "chain", None)
            if isinstance(chain, JournaledRpcChain):
                for h in chain.reconcile():
                    self.say(f"re-broadcast journaled transaction {h}")
            self.step()
        except Stop:
            self.done = True
        except Fatal:
            raise
        except (FedMarketError, OSError, *BAD_INPUT) as exc:  # a message anyone posted never ends a role
            msg = f"{type(exc).__name__}: {exc}"
            if msg != self._last_error:
                self.say(f"step failed, will retry: {msg}")
            self._last_error = msg
            chain = getattr(self.dep, "chain", None)
            if isinstance(exc, ChainError) and chain is not None:
                chain.reconnect()  # a fresh connection, and nonces re-read from the node
            return False
        self._last_error = None
        return True

    def stop(self, *_args) -> None:
        self._stop.set()

    def run(self, poll_interval: float = 1.0, until: Callable[[], bool] | None = None) -> None:
        """Loop `step()` until done, `until()` is true, or SIGTERM/SIGINT (handled cleanly:
        the current step finishes, nothing is left half-written)."""
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, self.stop)
        try:
            while not self._stop.is_set():
                self.safe_step()
                self._trimmer.maybe()
                if self.done or (until is not None and until()):
                    break
                self._stop.wait(poll_interval)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if self._stop.is_set():
            self.say("stopped by signal; restart with the same state directory to resume")


def job_state(dep: Deployment, job_id: int) -> dict:
    job = dep.job(job_id)
    if job["state"] == JobState.NONE:
        raise FedMarketError(f"job {job_id} does not exist on market {dep.market.address}")
    return job
