"""JSON-RPC backend: any EVM node (anvil locally), transactions signed here with local keys."""

from __future__ import annotations

import threading
import time
from typing import Any

from eth_utils import to_checksum_address

from ..errors import ChainError, ContractRevert
from .abi import decode_revert
from .base import Account, Chain, RawReceipt

GWEI = 10**9


class NodeUnreachable(ChainError):
    """The node did not answer at all (refused, timed out); `reason` is the short cause."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


class RpcChain(Chain):
    """A chain reached over JSON-RPC (web3.py's HTTP provider).

    Transactions are EIP-1559, signed locally (coincurve-backed eth-account),
    gas-estimated first so a revert is reported with its reason and never mined,
    and their receipts polled with a short latency. Nonces are tracked locally
    per sender, so one process can send back to back without asking the node.

    Sending is retry-safe: each intent is signed once and its hash known before it is
    sent; if the connection drops, the chain reconnects and either finds that hash on the
    node or re-sends the very same bytes (same nonce). It never signs a second transaction
    for the same intent, so a flaky connection cannot make anything happen twice.
    """

    name = "rpc"

    def __init__(self, url: str, *, poll_latency: float = 0.005, timeout: float = 60.0, own_clock: bool = True) -> None:
        super().__init__()
        self.url = url
        self.own_clock = own_clock  # False: a node shared with others, whose clock is never set (see advance_time)
        self.poll_latency = poll_latency
        self.timeout = timeout
        self._lock = threading.RLock()
        self._connect()
        self._nonces: dict[str, int] = {}
        self.resends = 0  # signed transactions sent again after a dropped connection (same bytes, same nonce)
        self.rpc_calls = 0
        try:
            self.chain_id = int(self._rpc("eth_chainId", []), 16)
        except NodeUnreachable as exc:
            raise NodeUnreachable(f"cannot reach an EVM node at {url}: {exc.reason}", exc.reason) from None
        self._fee_cap: int | None = None

    # ---- raw JSON-RPC ---------------------------------------------------------------
    def _connect(self) -> None:
        """A fresh HTTP provider (and so a fresh session and connection pool)."""
        from web3 import Web3

        self.w3 = Web3(Web3.HTTPProvider(self.url, request_kwargs={"timeout": self.timeout}))

    def _rpc(self, method: str, params: list) -> Any:
        self.rpc_calls += 1
        try:
            resp = self.w3.provider.make_request(method, params)
        except Exception as exc:
            reason = "connection refused" if "refused" in str(exc).lower() else type(exc).__name__
            raise NodeUnreachable(f"RPC {method} to {self.url} failed: {reason}", reason) from None
        if "error" in resp:
            err = resp["error"]
            data = err.get("data") if isinstance(err, dict) else None
            if isinstance(data, dict):  # some nodes nest the payload
                data = data.get("data")
            if isinstance(data, str) and data.startswith("0x") and (
                "revert" in str(err.get("message", "")).lower() or int(err.get("code", 0)) == 3
            ):
                raise ContractRevert(decode_revert(bytes.fromhex(data[2:])))
            msg = err.get("message", err) if isinstance(err, dict) else err
            if "revert" in str(msg).lower():
                raise ContractRevert(str(msg))
            raise ChainError(f"RPC {method} failed: {msg}")
        return resp["result"]

    def _fees(self) -> tuple[int, int]:
        if self._fee_cap is None:
            block = self._rpc("eth_getBlockByNumber", ["latest", False])
            base = int(block.get("baseFeePerGas", "0x0"), 16)
            self._fee_cap = 2 * base + GWEI
        return self._fee_cap, GWEI

    def _next_nonce(self, address: str) -> int:
        """Reserve the sender's next nonce."""
        with self._lock:
            nonce = self.next_nonce(address)
            self._nonces[address] = nonce + 1
            return nonce

    # ---- Chain primitives -----------------------------------------------------------
    def _send(self, sender: Account, to: str | None, data: bytes, value: int = 0) -> RawReceipt:
        call: dict[str, Any] = {"from": sender.address, "data": "0x" + data.hex(), "value": hex(value)}
        if to is not None:
            call["to"] = to
        gas = int(self._rpc("eth_estimateGas", [call]), 16)  # raises ContractRevert with the reason
        max_fee, tip = self._fees()
        tx = {
            "type": 2,
            "chainId": self.chain_id,
            "nonce": self._next_nonce(sender.address),
            "gas": gas + gas // 5 + 10_000,
            "maxFeePerGas": max_fee,
            "maxPriorityFeePerGas": tip,
            "data": data,
            "value": value,
        }
        if to is not None:
            tx["to"] = to_checksum_address(to)
        # Signed exactly once: from here on this intent IS this raw transaction (this hash, this
        # nonce). A dropped connection re-sends the same bytes or finds their receipt; it never
        # signs a second transaction, so a retry can neither pay twice nor burn a nonce.
        from eth_account import Account as EthAccount  # loaded at the first transaction (about 0.5 s)

        signed = EthAccount.sign_transaction(tx, sender.key)
        raw = "0x" + bytes(signed.raw_transaction).hex()
        tx_hash = "0x" + bytes(signed.hash).hex()
        try:
            self._submit(raw, tx_hash)
        except ChainError as exc:
            # refused, or the node stayed unreachable: re-read the nonce from the node ('pending'
            # counts this transaction if it did arrive) rather than trusting our reservation
            with self._lock:
                self._nonces.pop(sender.address, None)
            if "fee" in str(exc).lower():
                self._fee_cap = None
            raise
        receipt = self._wait(tx_hash)
        if int(receipt["status"], 16) != 1:
            raise ContractRevert(f"transaction {tx_hash} reverted on chain after a successful estimate")
        logs = [
            (log["address"], [bytes.fromhex(t[2:]) for t in log["topics"]], bytes.fromhex(log["data"][2:]))
            for log in receipt["logs"]
        ]
        created = receipt.get("contractAddress")
        return RawReceipt(
            tx_hash,
            int(receipt["blockNumber"], 16),
            int(receipt["gasUsed"], 16),
            logs,
            to_checksum_address(created) if created else None,
        )

    # ---- idempotent submission ------------------------------------------------------
    #: how many times a send or a receipt poll is retried after the connection dropped
    max_retries = 5
    retry_backoff = 0.05

    def _submit(self, raw: str, tx_hash: str) -> None:
        """Hand the signed transaction `raw` (hash `tx_hash`) to the node, exactly once in effect.

        If the connection drops we cannot know whether the node got it: reconnect, look the
        hash up, and re-send the same bytes only if the node has never seen them. A resend
        answered with 'already known' / 'nonce too low' means the first copy made it.
        """
        resent = False
        for attempt in range(self.max_retries + 1):
            try:
                got = self._rpc("eth_sendRawTransaction", [raw])
                if isinstance(got, str) and got.lower() != tx_hash.lower():
                    raise ChainError(f"node returned hash {got} for transaction {tx_hash}")
                return
            except NodeUnreachable:
                if attempt == self.max_retries:
                    raise
                self._recover(attempt)
                if self._sent_or_mined(tx_hash) is not None:
                    return  # the first copy reached the node before the connection dropped
                resent = True
                self.resends += 1
            except ContractRevert:
                raise
            except ChainError as exc:
                msg = str(exc).lower()
                if any(s in msg for s in ("already known", "known transaction", "nonce too low",
                                          "already imported", "already exists")):
                    # the node has this nonce: ours if it knows our hash, someone else's otherwise
                    if self._sent_or_mined(tx_hash) is not None:
                        return
                    if resent:
                        raise ChainError(f"transaction {tx_hash} was lost and its nonce used by another "
                                         "transaction from the same account; nothing was re-signed") from None
                raise

    def _recover(self, attempt: int) -> None:
        time.sleep(self.retry_backoff * 2**attempt)
        self.reconnect()

    def _sent_or_mined(self, tx_hash: str) -> dict | None:
        """The node's record of `tx_hash` (pending or mined), None if it has never seen it."""
        for attempt in range(self.max_retries + 1):
            try:
                return self._rpc("eth_getTransactionByHash", [tx_hash])
            except NodeUnreachable:
                if attempt == self.max_retries:
                    raise
                self._recover(attempt)
        return None

    def _wait(self, tx_hash: str) -> dict:
        deadline = time.monotonic() + self.timeout
        failures = 0
        while True:
            try:
                receipt = self._rpc("eth_getTransactionReceipt", [tx_hash])
            except NodeUnreachable:
                failures += 1
                if failures > self.max_retries:
                    raise
                self._recover(failures - 1)
                continue
            if receipt is not None:
                return receipt
            if time.monotonic() > deadline:
                raise ChainError(f"transaction {tx_hash} not mined after {self.timeout:.0f}s")
            time.sleep(self.poll_latency)

    def _call(self, to: str, data: bytes, sender: str | None = None) -> bytes:
        call: dict[str, Any] = {"to": to, "data": "0x" + data.hex()}
        if sender:
            call["from"] = sender
        return bytes.fromhex(self._rpc("eth_call", [call, "latest"])[2:])

    def _get_logs(self, address: str, topics: list[bytes | None], from_block: int):
        flt = {"address": address, "topics": [None if t is None else "0x" + t.hex() for t in topics],
               "fromBlock": hex(from_block), "toBlock": "latest"}
        return [
            (
                log["address"],
                [bytes.fromhex(t[2:]) for t in log["topics"]],
                bytes.fromhex(log["data"][2:]),
                int(log["blockNumber"], 16),
            )
            for log in self._rpc("eth_getLogs", [flt])
        ]

    def next_nonce(self, address: str) -> int:
        with self._lock:
            if address not in self._nonces:
                self._nonces[address] = int(self._rpc("eth_getTransactionCount", [address, "pending"]), 16)
            return self._nonces[address]

    def fund(self, address: str, wei: int) -> None:
        self._rpc("anvil_setBalance", [address, hex(wei)])

    def native_balance(self, address: str) -> int:
        return int(self._rpc("eth_getBalance", [address, "latest"]), 16)

    def fee_cap(self) -> int:
        return self._fees()[0]

    def code(self, address: str) -> bytes:
        return bytes.fromhex(self._rpc("eth_getCode", [address, "latest"])[2:])

    def request(self, method: str, params: list) -> Any:
        """One raw JSON-RPC request (for what the `Chain` interface does not cover: receipts by
        hash, node-specific methods); errors map onto ChainError / ContractRevert."""
        return self._rpc(method, params)

    def forget_nonce(self, address: str) -> None:
        """Re-read `address`'s next nonce from the node at its next send."""
        with self._lock:
            self._nonces.pop(address, None)

    def reconnect(self) -> None:
        """A fresh connection, and nonces re-read from the node at the next send."""
        with self._lock:
            self._connect()
            self._nonces.clear()

    def timestamp(self) -> int:
        return int(self._rpc("eth_getBlockByNumber", ["latest", False])["timestamp"], 16)

    def block_number(self) -> int:
        return int(self._rpc("eth_blockNumber", []), 16)

    def advance_time(self, seconds: int) -> None:
        """Mine one block `seconds` after the latest (development nodes: anvil, hardhat). On a node
        this process does not own (`own_clock=False`) it waits for the time to pass instead."""
        if not self.own_clock:
            self.wait_time(seconds)
            return
        self._rpc("evm_setNextBlockTimestamp", [self.timestamp() + int(seconds)])
        self._rpc("evm_mine", [])

    def wait_time(self, seconds: int, pace: float = 1.0) -> None:
        """Let `seconds` pass on the chain without setting its clock: other jobs' deadlines on a shared
        node never jump. Once per `pace` seconds of wall-clock time an empty block is mined at the
        node's own next timestamp (what a node with a block time would do) until the latest block
        is `seconds` later."""
        target = self.timestamp() + int(seconds)
        while self.timestamp() < target:
            time.sleep(pace)
            if self.timestamp() < target:
                self._rpc("evm_mine", [])
