"""An event indexer: every event of a deployment's contracts, from its deployment block on, in
SQLite, so the dashboard reads a local database instead of asking the node on every page.

It resumes where it stopped (the next block to read is kept in the database) and notices when
the node is not the chain it indexed (another chain id): then it starts again from the deployment
block. It keeps the hashes of the last REORG_WINDOW blocks it read and, before every sync, checks
the last one against the node: when a reorganisation replaced it, everything indexed from the fork
on is deleted and read again (and when no kept hash is on the chain any more, as for an anvil
restarted from scratch, everything is). Each range's logs must come from the blocks whose hashes
it records, each of those blocks the child of the one before.
Reading is one `eth_getLogs` per range of blocks over all the deployment's addresses at once,
decoded with the contracts' ABIs and written in one transaction per range.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from functools import lru_cache
from pathlib import Path

from eth_utils import to_checksum_address

from ..chain import artifacts
from ..chain.abi import EventSpec
from ..chain.rpc_backend import RpcChain
from ..errors import ConfigError

#: the deployment's contracts whose events are indexed (the token's are not: it may be any ERC-20)
INDEXED = (("market", "JobMarket"), ("disputes", "Disputes"), ("round_arbiter", "RoundArbiter"),
           ("reward_arbiter", "RewardArbiter"), ("licence", "ModelLicence"))
#: the event field that names "the account" an event is about, first match wins
ACCOUNT_FIELDS = ("provider", "validator", "account", "buyer", "aggregator", "requester", "owner", "challenger")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    block INTEGER NOT NULL, log_index INTEGER NOT NULL, time INTEGER NOT NULL, tx TEXT NOT NULL,
    contract TEXT NOT NULL, name TEXT NOT NULL, job_id INTEGER, account TEXT, round INTEGER, args TEXT NOT NULL,
    PRIMARY KEY (block, log_index)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS events_job ON events (job_id, name);
CREATE INDEX IF NOT EXISTS events_account ON events (account, name);
CREATE INDEX IF NOT EXISTS events_name ON events (name);
CREATE INDEX IF NOT EXISTS events_tx ON events (tx);
CREATE TABLE IF NOT EXISTS gas (tx TEXT PRIMARY KEY, gas INTEGER NOT NULL, sender TEXT);
CREATE TABLE IF NOT EXISTS terms (job_id INTEGER PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS accuracy (job_id INTEGER, round INTEGER, accuracy REAL, PRIMARY KEY (job_id, round));
CREATE TABLE IF NOT EXISTS blocks (number INTEGER PRIMARY KEY, hash TEXT NOT NULL);
"""
#: how many of the last indexed blocks' hashes are kept: a reorganisation deeper than this (or
#: one that replaced every kept block) makes the index start again from the deployment block
REORG_WINDOW = 128


class Reorganised(Exception):
    """The chain changed under a range being read: nothing of it is stored, the next sync rolls back."""


@lru_cache(maxsize=65_536)
def _checksum(raw: bytes) -> str:
    return to_checksum_address(raw)


def clear_caches() -> None:
    """Forget the checksummed addresses seen so far (a benchmark's repeats each start cold)."""
    _checksum.cache_clear()


def _word_decoder(typ: str):
    """A decoder of one 32-byte ABI word of static type `typ`, or None for other types."""
    if "[" in typ or "(" in typ:
        return None  # arrays and tuples take more than one word
    if typ == "address":
        return lambda w: _checksum(w[12:])
    if typ == "bool":
        return lambda w: w[31] == 1
    if typ.startswith("uint"):
        return lambda w: int.from_bytes(w, "big")
    if typ.startswith("int"):
        return lambda w: int.from_bytes(w, "big", signed=True)
    if typ.startswith("bytes") and typ[5:].isdigit():
        n = int(typ[5:])
        return lambda w: w[:n]
    return None


def fast_decoder(spec: EventSpec):
    """`spec.decode` for events whose every field is one static word (most of the market's): the
    words sliced directly instead of through eth_abi, same values (tests/dashboard checks parity).
    None when a field is dynamic (a string, an array): those go through `spec.decode`."""
    indexed = [(n, _word_decoder(t)) for n, t, i in spec.fields if i]
    plain = [(n, _word_decoder(t)) for n, t, i in spec.fields if not i]
    if any(d is None for _, d in indexed + plain):
        return None

    def decode(topics: list[bytes], data: bytes) -> dict:
        out = {n: d(t) for (n, d), t in zip(indexed, topics[1:])}
        for k, (n, d) in enumerate(plain):
            out[n] = d(data[32 * k : 32 * k + 32])
        return out

    return decode


def _plain(value):
    """An event value as JSON: bytes as 0x-hex, tuples as lists (ints stay exact)."""
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def connect_db(path: str | Path) -> sqlite3.Connection:
    """A connection to the index (created if missing); WAL, so pages read while the indexer writes."""
    db = sqlite3.connect(str(path), timeout=30, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(SCHEMA)
    return db


class Indexer:
    """Catches an SQLite index up with the chain: `sync()` once, or `run()` until stopped."""

    def __init__(self, chain: RpcChain, addresses: dict, db_path: str | Path, *, span: int = 2_000):
        if "market" not in addresses:
            raise ConfigError("the addresses file names no market contract")
        self.chain = chain
        self.addresses = {key: addresses[key] for key, _ in INDEXED if key in addresses}
        self.start_block = int(addresses.get("block", 0))
        self.span = span
        self.db = connect_db(db_path)
        self.lock = threading.Lock()  # one writer
        self.specs: dict[bytes, tuple] = {}  # topic0 -> (contract key, event spec, its decoder)
        for key, name in INDEXED:
            if key in self.addresses:
                for topic, spec in artifacts.load(name).abi.events.items():
                    self.specs[topic] = (key, spec, fast_decoder(spec) or spec.decode)
        self.market_abi = artifacts.load("JobMarket").abi
        self.version = 0  # bumped whenever new events are stored (what live pages wait for)
        self.head = 0  # the latest block the index has read
        self.reorgs = 0  # rollbacks (a reorganisation seen) since this Indexer was made
        self.stats = {"events": 0, "seconds": 0.0, "ranges": 0}
        self._check_identity()

    # ---- identity and resuming ---------------------------------------------------------
    def meta(self, key: str, default: str | None = None) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def _set_meta(self, **values) -> None:
        self.db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                            [(k, str(v)) for k, v in values.items()])

    def _check_identity(self) -> None:
        """The database belongs to this deployment on this chain, or it is reset."""
        market = self.meta("market")
        if market is not None and market.lower() != self.addresses["market"].lower():
            raise ConfigError(f"index {self.db_path()} belongs to the market at {market}, not "
                              f"{self.addresses['market']}: use another --db")
        same_chain = self.meta("chain_id") == str(self.chain.chain_id)
        if market is None or not same_chain:
            self.reset()
        else:
            self._follow_reorg()

    def db_path(self) -> str:
        return self.db.execute("PRAGMA database_list").fetchone()[2]

    def _hash_at(self, number: int) -> str | None:
        block = self.chain.request("eth_getBlockByNumber", [hex(number), False])
        return block["hash"].lower() if block else None

    def _kept_hashes(self) -> list[tuple[int, str]]:
        rows = self.db.execute("SELECT number, hash FROM blocks ORDER BY number DESC").fetchall()
        if not rows and self.meta("last_block") is not None and self.meta("last_hash"):
            rows = [(int(self.meta("last_block")), self.meta("last_hash").lower())]  # an index of an older release
        return rows

    def _follow_reorg(self) -> None:
        """If the last indexed block is no longer on the node's chain, roll back to the newest kept
        block that still is (or start again when none is)."""
        kept = self._kept_hashes()
        if not kept or self._hash_at(kept[0][0]) == kept[0][1]:
            return
        for number, want in kept[1:]:
            if self._hash_at(number) == want:
                self.rollback(number)
                return
        self.reset()
        self.reorgs += 1

    def rollback(self, last_good: int) -> None:
        """Forget everything indexed after block `last_good` (events, their gas, terms and
        accuracy of jobs and rounds no longer posted) and read on from the block after it."""
        with self.lock, self.db:
            # a round committed again on the new branch is another model: its accuracy is measured again
            self.db.execute("DELETE FROM accuracy WHERE EXISTS (SELECT 1 FROM events e WHERE e.name = 'RoundCommitted' "
                            "AND e.block > ? AND e.job_id = accuracy.job_id AND e.round = accuracy.round)", (last_good,))
            self.db.execute("DELETE FROM events WHERE block > ?", (last_good,))
            self.db.execute("DELETE FROM blocks WHERE number > ?", (last_good,))
            self.db.execute("DELETE FROM gas WHERE tx NOT IN (SELECT tx FROM events)")
            self.db.execute("DELETE FROM terms WHERE job_id NOT IN (SELECT job_id FROM events WHERE name = 'JobPosted')")
            self.db.execute("DELETE FROM accuracy WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.name = "
                            "'RoundCommitted' AND e.job_id = accuracy.job_id AND e.round = accuracy.round)")
            kept = self.db.execute("SELECT hash FROM blocks WHERE number = ?", (last_good,)).fetchone()
            self._set_meta(next_block=last_good + 1, last_block=last_good, last_hash=kept[0] if kept else "")
        self.reorgs += 1
        self.version += 1

    def reset(self) -> None:
        """Forget everything and read again from the deployment block."""
        with self.lock, self.db:
            for table in ("events", "gas", "terms", "accuracy", "meta"):
                self.db.execute(f"DELETE FROM {table}")
            self.db.execute("DELETE FROM blocks")
            self._set_meta(market=self.addresses["market"], chain_id=self.chain.chain_id, next_block=self.start_block,
                           start_block=self.start_block)
        self.version += 1

    @property
    def next_block(self) -> int:
        return int(self.meta("next_block", str(self.start_block)))

    # ---- catching up -------------------------------------------------------------------
    def sync(self) -> int:
        """Roll back what a reorganisation replaced, then read every block up to the node's latest;
        returns how many events were stored."""
        t0 = time.perf_counter()
        self._follow_reorg()
        latest = self.chain.block_number()
        stored = 0
        start = self.next_block
        while start <= latest:
            end = min(latest, start + self.span - 1)
            try:
                stored += self._range(start, end, latest)
            except Reorganised:
                break  # the next sync rolls back to the fork and reads the new branch
            start = end + 1
        self.head = min(latest, self.next_block - 1)
        self.stats["events"] += stored
        self.stats["seconds"] += time.perf_counter() - t0
        return stored

    def _headers(self, start: int, end: int, latest: int) -> dict[int, dict]:
        """The headers of the range's blocks within REORG_WINDOW of `latest` (and of its last
        block), each checked to be the child of the one before it (the first one: of the last
        block indexed, when its hash is kept); Reorganised if they are not."""
        numbers = sorted({end, *range(max(start, latest - REORG_WINDOW + 1), end + 1)})
        headers = {}
        for n in numbers:
            block = self.chain.request("eth_getBlockByNumber", [hex(n), False])
            if block is None:
                raise Reorganised(f"block {n} is gone")
            headers[n] = block
        parent = self.db.execute("SELECT hash FROM blocks WHERE number = ?", (start - 1,)).fetchone()
        known = {start - 1: parent[0]} if parent else {}
        for n in numbers:
            known[n] = headers[n]["hash"].lower()
            if n - 1 in known and headers[n]["parentHash"].lower() != known[n - 1]:
                raise Reorganised(f"block {n} is not the child of block {n - 1} as indexed")
        return headers

    def _range(self, start: int, end: int, latest: int | None = None) -> int:
        headers = self._headers(start, end, end if latest is None else latest)
        flt = {"address": list(self.addresses.values()), "fromBlock": hex(start), "toBlock": hex(end)}
        logs = self.chain.request("eth_getLogs", [flt])
        for log in logs:  # every log from the blocks recorded, none of a branch left meanwhile
            header = headers.get(int(log["blockNumber"], 16))
            if log.get("removed") or (header is not None and str(log.get("blockHash", "")).lower()
                                      != header["hash"].lower()):
                raise Reorganised(f"a log of block {int(log['blockNumber'], 16)} is of another branch")
        rows, changed = self._decode(logs, {n: int(h["timestamp"], 16) for n, h in headers.items()})
        gas_txs = sorted({r[3] for r in rows if r[5] in ("RoundCommitted", "JobPosted")})
        gas = [self._gas(tx) for tx in gas_txs]
        terms = [(job, self._terms(job)) for name, job in changed if name == "JobPosted"]
        blocks = [(n, h["hash"].lower()) for n, h in headers.items()]
        with self.lock, self.db:
            # a row of the same (block, log index) can only be one a rollback missed: the chain's wins
            self.db.executemany("INSERT OR REPLACE INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            self.db.executemany("INSERT OR REPLACE INTO gas VALUES (?, ?, ?)", gas)
            self.db.executemany("INSERT OR REPLACE INTO terms VALUES (?, ?)", terms)
            self.db.executemany("INSERT OR REPLACE INTO blocks VALUES (?, ?)", blocks)
            self.db.execute("DELETE FROM blocks WHERE number <= ?", (end - REORG_WINDOW,))
            self._set_meta(next_block=end + 1, last_block=end, last_hash=headers[end]["hash"].lower())
        self.stats["ranges"] += 1
        if rows:
            self.version += 1
        return len(rows)

    def _decode(self, logs: list[dict], times: dict[int, int] | None = None) -> tuple[list[tuple], list[tuple[str, int | None]]]:
        rows, changed, times = [], [], dict(times or {})
        for log in logs:
            topics = [bytes.fromhex(t[2:]) for t in log["topics"]]
            found = self.specs.get(topics[0]) if topics else None
            if found is None:
                continue
            key, spec, decode = found
            args = decode(topics, bytes.fromhex(log["data"][2:]))
            block = int(log["blockNumber"], 16)
            if log.get("blockTimestamp"):
                ts = int(log["blockTimestamp"], 16)
            else:
                ts = times.get(block) or self._block_time(block)
            times[block] = ts
            job = args.get("job_id")
            account = next((args[f] for f in ACCOUNT_FIELDS if f in args), None)
            rows.append((block, int(log["logIndex"], 16), ts, log["transactionHash"].lower(), key, spec.name,
                         None if job is None else int(job), account, args.get("round"),
                         json.dumps({k: _plain(v) for k, v in args.items()})))
            changed.append((spec.name, None if job is None else int(job)))
        return rows, changed

    def _block_time(self, block: int) -> int:
        head = self.chain.request("eth_getBlockByNumber", [hex(block), False])
        return int(head["timestamp"], 16) if head else 0

    def _gas(self, tx: str) -> tuple[str, int, str]:
        receipt = self.chain.request("eth_getTransactionReceipt", [tx])
        return tx, int(receipt["gasUsed"], 16), receipt.get("from", "")

    def _terms(self, job_id: int) -> str:
        """A job's terms as posted (they never change), read once when the job appears."""
        fn = self.market_abi.function("terms")
        raw = self.chain.request("eth_call", [{"to": self.addresses["market"], "data": "0x" + fn.encode((job_id,)).hex()},
                                              "latest"])
        return json.dumps({k: _plain(v) for k, v in fn.decode(bytes.fromhex(raw[2:])).items()})

    def close(self) -> None:
        self.db.close()
