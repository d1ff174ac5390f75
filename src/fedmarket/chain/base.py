"""The chain interface every backend implements, and the contract handle built on it."""

from __future__ import annotations

import abc
import hashlib
from dataclasses import dataclass, field
from typing import Any

import eth_abi
from eth_utils import keccak, to_checksum_address

from ..errors import ChainError, ContractRevert
from ..protocol.ecdsa import address_of
from .abi import ContractABI, Event


@dataclass(frozen=True)
class Account:
    """An externally owned account: checksum address and its private key."""

    address: str
    key: bytes = field(repr=False)

    @classmethod
    def from_key(cls, key: bytes) -> Account:
        return cls(address_of(key), key)

    @classmethod
    def derive(cls, seed: str, index: int) -> Account:
        """Deterministic development account number `index` of `seed` (never for real funds)."""
        key = hashlib.sha256(f"fedmarket-dev:{seed}:{index}".encode()).digest()
        return cls.from_key(key)


@dataclass(frozen=True)
class RawReceipt:
    """What a backend returns for a mined transaction."""

    tx_hash: str
    block: int
    gas_used: int
    logs: list[tuple[str, list[bytes], bytes]]  # (address, topics, data)
    contract_address: str | None = None


@dataclass(frozen=True)
class Receipt:
    """A mined transaction with its events decoded."""

    tx_hash: str
    block: int
    gas_used: int
    events: list[Event]
    return_value: Any = None

    def event(self, name: str) -> Event:
        """The single event called `name` (raises if absent or repeated)."""
        found = [e for e in self.events if e.name == name]
        if len(found) != 1:
            raise LookupError(f"expected one {name} event, found {len(found)}")
        return found[0]


class Chain(abc.ABC):
    """An EVM chain as fedmarket needs it: deploy, call, transact, read events, move time.

    Backends implement the `_`-prefixed primitives on raw bytes; ABI encoding,
    event decoding and revert mapping live here once for all of them.
    """

    name: str = "chain"

    def __init__(self) -> None:
        self._abis: dict[str, tuple[str, ContractABI]] = {}
        self.rollbacks = 0  # times state was rolled back (test snapshots): what was final may not be

    @property
    def development(self) -> bool:
        """Whether this is a development chain (anvil's or hardhat's chain id 31337), whose clock
        the tests move and whose blocks come as fast as transactions."""
        return int(self.chain_id) == 31337

    # ---- primitives each backend provides -------------------------------------------
    @abc.abstractmethod
    def _send(self, sender: Account, to: str | None, data: bytes, value: int = 0) -> RawReceipt:
        """Execute and mine one transaction; raise ContractRevert with the raw reason."""

    @abc.abstractmethod
    def _call(self, to: str, data: bytes, sender: str | None = None) -> bytes:
        """Run a read-only call against the latest state."""

    @abc.abstractmethod
    def _get_logs(self, address: str, topics: list[bytes | None], from_block: int) -> list[tuple[str, list[bytes], bytes, int]]:
        """Raw logs (address, topics, data, block) of one contract since `from_block` whose topics
        match `topics` position by position (None matches anything), filtered by the backend."""

    @abc.abstractmethod
    def next_nonce(self, address: str) -> int:
        """Nonce the next transaction (or contract creation) from `address` will use."""

    def create_address(self, deployer: str, nonce: int) -> str:
        """Address of the contract `deployer` creates with `nonce` (CREATE)."""
        import rlp

        return to_checksum_address(keccak(rlp.encode([bytes.fromhex(deployer[2:]), nonce]))[12:])

    @abc.abstractmethod
    def fund(self, address: str, wei: int) -> None:
        """Give an account native currency for gas (development chains only)."""

    @abc.abstractmethod
    def native_balance(self, address: str) -> int:
        """Native currency (wei) an account holds."""

    def fee_cap(self) -> int:
        """The most (wei) this chain's transactions are sent to pay per unit of gas: what a role
        checks its ether against before a sequence of transactions (0 where gas costs nothing)."""
        return 0

    @abc.abstractmethod
    def code(self, address: str) -> bytes:
        """Runtime bytecode at an address (empty for an externally owned account)."""

    def reconnect(self) -> None:
        """Drop connections and cached nonces and start afresh (a no-op for in-process chains)."""

    @abc.abstractmethod
    def timestamp(self) -> int:
        """Timestamp of the latest block (what the next transaction will roughly see)."""

    @abc.abstractmethod
    def block_number(self) -> int:
        """Number of the latest block."""

    @abc.abstractmethod
    def advance_time(self, seconds: int) -> None:
        """Move chain time forward (development chains only)."""

    def close(self) -> None:
        """Release the backend's resources."""

    # ---- shared layer ---------------------------------------------------------------
    def new_account(self, seed: str, index: int, wei: int = 10**20) -> Account:
        """A deterministic funded development account."""
        acct = Account.derive(seed, index)
        self.fund(acct.address, wei)
        return acct

    def register(self, address: str, name: str, abi: ContractABI, from_block: int = 0) -> Contract:
        """A handle to the contract at `address`; its event queries start at `from_block` (its deployment)."""
        self._abis[address.lower()] = (name, abi)
        return Contract(self, address, name, abi, from_block)

    def deploy(self, sender: Account, name: str, abi: ContractABI, bytecode: bytes, *args: Any) -> Contract:
        """Deploy `bytecode` with constructor `args`; returns a handle to the new contract."""
        data = bytecode + eth_abi.encode(abi.constructor_types(), list(args))
        try:
            raw = self._send(sender, None, data)
        except ContractRevert as exc:
            raise ContractRevert(exc.reason, f"deploy {name}") from None
        if raw.contract_address is None:
            raise ChainError(f"deploying {name} produced no contract address")
        return self.register(raw.contract_address, name, abi, raw.block)

    def decode_logs(self, logs: list[tuple[str, list[bytes], bytes]], block: int) -> list[Event]:
        events = []
        for address, topics, data in logs:
            entry = self._abis.get(address.lower())
            if entry is None or not topics:
                continue
            spec = entry[1].events.get(topics[0])
            if spec is not None:
                events.append(Event(spec.name, to_checksum_address(address), spec.decode(topics, data), block))
        return events


class Contract:
    """A deployed contract on some chain: typed calls, transactions and event queries."""

    def __init__(self, chain: Chain, address: str, name: str, abi: ContractABI, from_block: int = 0):
        self.chain = chain
        self.address = address
        self.name = name
        self.abi = abi
        self.from_block = from_block

    def __repr__(self) -> str:
        return f"<{self.name} at {self.address} on {self.chain.name}>"

    def call(self, fn: str, *args: Any, sender: str | None = None) -> Any:
        """Read-only call of `fn`; returns the decoded value."""
        f = self.abi.function(fn)
        try:
            out = self.chain._call(self.address, f.encode(args), sender)
        except ContractRevert as exc:
            raise ContractRevert(exc.reason, f"{self.name}.{fn}") from None
        return f.decode(out)

    def transact(self, fn: str, *args: Any, sender: Account, value: int = 0) -> Receipt:
        """Send a transaction calling `fn`; returns the receipt with decoded events."""
        f = self.abi.function(fn)
        try:
            raw = self.chain._send(sender, self.address, f.encode(args), value)
        except ContractRevert as exc:
            raise ContractRevert(exc.reason, f"{self.name}.{fn}") from None
        return Receipt(raw.tx_hash, raw.block, raw.gas_used, self.chain.decode_logs(raw.logs, raw.block))

    def events(self, name: str, from_block: int | None = None, **where: Any) -> list[Event]:
        """Events called `name` emitted by this contract since `from_block` (default: its deployment
        block) whose fields equal `where`: indexed fields are filtered by the node, the rest here."""
        spec = self.abi.events_by_name[name]
        topics: list[bytes | None] = [spec.topic0]
        rest = dict(where)
        for field_name, typ, indexed in spec.fields:
            if not indexed:
                continue
            if field_name in rest and typ not in ("string", "bytes") and not typ.endswith("]"):
                topics.append(eth_abi.encode([typ], [rest.pop(field_name)]))
            else:
                topics.append(None)
        while topics and topics[-1] is None:
            topics.pop()
        start = self.from_block if from_block is None else from_block
        out = []
        for address, raw_topics, data, block in self.chain._get_logs(self.address, topics, start):
            ev = Event(name, to_checksum_address(address), spec.decode(raw_topics, data), block)
            if all(ev.args.get(k) == v for k, v in rest.items()):
                out.append(ev)
        return out
