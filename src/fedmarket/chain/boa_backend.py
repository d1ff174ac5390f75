"""Embedded chain: titanoboa's in-process EVM (py-evm), the default backend."""

from __future__ import annotations

import contextlib
import itertools

from ..errors import ContractRevert
from .abi import decode_revert, intrinsic_gas
from .base import Account, Chain, RawReceipt


class BoaChain(Chain):
    """An in-process EVM. Every transaction is mined in its own block, one second after the
    previous block (as `AnvilNode` is configured), so both chains see the same timestamps.

    Gas is reported as a receipt would: execution gas from the EVM plus the
    intrinsic cost (21,000 and calldata) that titanoboa leaves out, minus the
    capped refund, with every transaction starting cold (see `_begin_transaction`).
    """

    name = "boa"
    development = True  # its clock is ours to move

    def __init__(self) -> None:
        super().__init__()
        import boa

        self.env = boa.Env()
        self.env.evm.patch.block_number = max(self.env.evm.patch.block_number, 1)
        self._logs: list[tuple[str, list[bytes], bytes, int]] = []
        self._tx_counter = itertools.count(1)
        self.chain_id = int(self.env.evm.chain.chain_id)
        self._snapshot_depth = 0
        self._hashes: list[bytes] = []  # hashes of the latest blocks, newest first (what BLOCKHASH sees)

    def _begin_transaction(self) -> None:
        """Start a transaction as a real chain does: storage and accounts cold again, and the
        current storage values become the "original" values that EIP-2200 gas pricing compares
        against. py-evm can only do this by persisting its journals, which would discard open
        snapshots, so inside `snapshot()` (tests) storage touched by an earlier transaction of
        the snapshot stays warm and gas is under-reported there; outside, it matches receipts.
        """
        if self._snapshot_depth == 0:
            self.env.evm.vm.state.lock_changes()

    def _send(self, sender: Account, to: str | None, data: bytes, value: int = 0) -> RawReceipt:
        env = self.env
        patch = env.evm.patch
        self._begin_transaction()
        # the transaction runs in a new block, one second after the latest (as on anvil)
        patch.block_number += 1
        patch.timestamp += 1
        if to is None:
            address, comp = env.deploy(sender=sender.address, bytecode=data, value=value)
        else:
            address, comp = None, env.execute_code(to_address=to, sender=sender.address, data=data, value=value)
        if comp.is_error:
            # a reverting transaction is never mined (the RPC backend estimates first)
            patch.block_number -= 1
            patch.timestamp -= 1
            raise ContractRevert(decode_revert(_revert_data(comp)))
        block = patch.block_number
        used = intrinsic_gas(data, create=to is None) + comp.get_gas_used()
        used -= min(comp.get_gas_refund(), used // 5)
        logs = []
        for addr, topics, payload in comp.get_log_entries():
            entry = ("0x" + bytes(addr).hex(), [t.to_bytes(32, "big") for t in topics], bytes(payload))
            logs.append(entry)
            self._logs.append((*entry, block))
        tx_hash = f"boa-{next(self._tx_counter)}"
        self._seal_block(data)
        return RawReceipt(tx_hash, block, used, logs, None if address is None else str(address))

    def _seal_block(self, payload: bytes) -> None:
        """Give the block just mined a hash (keccak of its parent's hash, number, time and payload)
        and make it what BLOCKHASH / block.prevhash return from the next block on, as on a node."""
        from eth_utils import keccak

        patch = self.env.evm.patch
        parent = self._hashes[0] if self._hashes else keccak(b"fedmarket embedded chain genesis")
        sealed = keccak(parent + int(patch.block_number).to_bytes(32, "big") + int(patch.timestamp).to_bytes(32, "big") + payload)
        self._hashes = [sealed, *self._hashes[:255]]
        patch.prev_hashes = tuple(self._hashes)

    def _call(self, to: str, data: bytes, sender: str | None = None) -> bytes:
        comp = self.env.execute_code(to_address=to, sender=sender, data=data, is_modifying=False)
        if comp.is_error:
            raise ContractRevert(decode_revert(_revert_data(comp)))
        return bytes(comp.output)

    def _get_logs(self, address: str, topics: list[bytes | None], from_block: int):
        address = address.lower()

        def match(log) -> bool:
            t = log[1]
            return len(t) >= len(topics) and all(want is None or got == want for want, got in zip(topics, t))

        return [log for log in self._logs if log[0].lower() == address and log[3] >= from_block and match(log)]

    def next_nonce(self, address: str) -> int:
        # titanoboa bumps nonces only when deploying, which is all CREATE addresses depend on
        return int(self.env.evm.vm.state.get_nonce(bytes.fromhex(address[2:])))

    def fund(self, address: str, wei: int) -> None:
        self.env.set_balance(address, wei)

    def native_balance(self, address: str) -> int:
        return int(self.env.get_balance(address))

    def code(self, address: str) -> bytes:
        return bytes(self.env.evm.vm.state.get_code(bytes.fromhex(address[2:])))

    def timestamp(self) -> int:
        return int(self.env.timestamp)

    def block_number(self) -> int:
        return int(self.env.evm.patch.block_number)

    def advance_time(self, seconds: int) -> None:
        """Mine one empty block `seconds` after the latest."""
        self.env.evm.patch.timestamp += int(seconds)
        self.env.evm.patch.block_number += 1
        self._seal_block(b"")

    @contextlib.contextmanager
    def snapshot(self):
        """Context manager: state, time, blocks and logs made inside it are rolled back on exit."""
        n_logs = len(self._logs)
        patch = self.env.evm.patch
        block, ts, hashes = patch.block_number, patch.timestamp, list(self._hashes)
        self._snapshot_depth += 1
        try:
            with self.env.anchor():
                yield self
        finally:
            self._snapshot_depth -= 1
            self.rollbacks += 1
            del self._logs[n_logs:]
            patch.block_number, patch.timestamp = block, ts
            self._hashes = hashes
            patch.prev_hashes = tuple(hashes)


def _revert_data(comp) -> bytes:
    """Revert payload of a failed computation (py-evm keeps it as the output)."""
    try:
        return bytes(comp.output)
    except Exception:  # errors other than REVERT (out of gas, invalid opcode) carry no data
        return b""
