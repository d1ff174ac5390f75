"""JSON-RPC backend: any EVM node (anvil locally), transactions signed here with local keys."""

from __future__ import annotations

import threading
import time
from typing import Any

from eth_account import Account as EthAccount
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
    """

    name = "rpc"

    def __init__(self, url: str, *, poll_latency: float = 0.005, timeout: float = 60.0) -> None:
        super().__init__()
        from web3 import Web3

        self.url = url
        self.poll_latency = poll_latency
        self.timeout = timeout
        self.w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": timeout}))
        self._nonces: dict[str, int] = {}
        self._lock = threading.RLock()
        self.rpc_calls = 0
        try:
            self.chain_id = int(self._rpc("eth_chainId", []), 16)
        except NodeUnreachable as exc:
            raise NodeUnreachable(f"cannot reach an EVM node at {url}: {exc.reason}", exc.reason) from None
        self._fee_cap: int | None = None

    # ---- raw JSON-RPC ---------------------------------------------------------------
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
        signed = EthAccount.sign_transaction(tx, sender.key)
        try:
            tx_hash = self._rpc("eth_sendRawTransaction", ["0x" + bytes(signed.raw_transaction).hex()])
        except ChainError as exc:
            # the nonce we reserved was not used: re-read it from the node next time
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

    def _wait(self, tx_hash: str) -> dict:
        deadline = time.monotonic() + self.timeout
        while True:
            receipt = self._rpc("eth_getTransactionReceipt", [tx_hash])
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

    def _get_logs(self, address: str, topic0: bytes, from_block: int):
        flt = {"address": address, "topics": ["0x" + topic0.hex()], "fromBlock": hex(from_block), "toBlock": "latest"}
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

    def timestamp(self) -> int:
        return int(self._rpc("eth_getBlockByNumber", ["latest", False])["timestamp"], 16)

    def block_number(self) -> int:
        return int(self._rpc("eth_blockNumber", []), 16)

    def advance_time(self, seconds: int) -> None:
        """Mine one block `seconds` after the latest (development nodes: anvil, hardhat)."""
        self._rpc("evm_setNextBlockTimestamp", [self.timestamp() + int(seconds)])
        self._rpc("evm_mine", [])
