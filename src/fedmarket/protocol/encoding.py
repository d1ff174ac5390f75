"""Canonical byte encodings shared with the contracts: leaves, vectors, chunk roots."""

from __future__ import annotations

import json
import struct
from typing import Any

import eth_abi
import numpy as np
from eth_utils import keccak

from ..errors import StorageError
from .merkle import MerkleTree

CHUNK_SIZE = 64  # int64 entries per Merkle chunk of a model or update (the contracts accept up to 64)
_VECTOR_MAGIC = b"FMV1"


def double_hash(encoded: bytes) -> bytes:
    """keccak256(keccak256(x)): leaves can never be mistaken for inner nodes."""
    return keccak(keccak(encoded))


def reward_leaf(index: int, account: str, amount: int, reputation_delta: int) -> bytes:
    """Leaf of the reward tree, matching JobMarket.claim."""
    return double_hash(
        eth_abi.encode(["uint256", "address", "uint256", "int256"], [index, account, amount, reputation_delta])
    )


def update_leaf(index: int, provider: str, update_root: bytes, weight: int, next_provider: str) -> bytes:
    """Leaf of a round's updates tree: which provider's update (by root) entered with what weight.

    Leaves are sorted by provider address and each names the next provider
    (`receipts.LAST_PROVIDER` for the last), so one leaf proves an omission.
    """
    return double_hash(
        eth_abi.encode(
            ["uint256", "address", "bytes32", "uint256", "address"], [index, provider, update_root, weight, next_provider]
        )
    )


def address_key(address: str) -> int:
    """Sort key of an address as the contracts compare them (uint160)."""
    return int(address, 16)


def _int256_words(values: np.ndarray) -> bytes:
    """ABI int256 words of int64 values, vectorised (sign-extended big-endian)."""
    v = np.ascontiguousarray(values, dtype=np.int64)
    words = np.zeros((v.size, 32), dtype=np.uint8)
    words[v < 0, :24] = 0xFF
    words[:, 24:] = v.astype(">i8").view(np.uint8).reshape(-1, 8)
    return words.tobytes()


def chunk_leaf(index: int, chunk: np.ndarray) -> bytes:
    """Leaf of one chunk: double keccak of abi.encode(uint256 index, int256[] values)."""
    header = eth_abi.encode(["uint256"], [index]) + (64).to_bytes(32, "big") + len(chunk).to_bytes(32, "big")
    return double_hash(header + _int256_words(chunk))


def vector_tree(q: np.ndarray, chunk_size: int = CHUNK_SIZE) -> MerkleTree:
    """Merkle tree over the chunk leaves of a quantized vector."""
    q = np.asarray(q, dtype=np.int64).ravel()
    if q.size == 0:
        raise ValueError("cannot commit an empty vector")
    return MerkleTree([chunk_leaf(i, q[s : s + chunk_size]) for i, s in enumerate(range(0, q.size, chunk_size))])


def vector_root(q: np.ndarray, chunk_size: int = CHUNK_SIZE) -> bytes:
    """Chunked Merkle root of a quantized vector (what rounds commit as model/update roots)."""
    return vector_tree(q, chunk_size).root


def encode_vector(q: np.ndarray) -> bytes:
    """Canonical blob of an int64 vector: magic, length, big-endian values."""
    q = np.asarray(q, dtype=np.int64).ravel()
    return _VECTOR_MAGIC + struct.pack(">Q", q.size) + q.astype(">i8").tobytes()


def decode_vector(blob: bytes, expected_size: int | None = None) -> np.ndarray:
    """Inverse of `encode_vector`, with clear errors on malformed blobs."""
    if len(blob) < 12 or blob[:4] != _VECTOR_MAGIC:
        raise StorageError("blob is not a fedmarket vector (bad magic)")
    (n,) = struct.unpack(">Q", blob[4:12])
    if len(blob) != 12 + 8 * n:
        raise StorageError(f"vector blob length {len(blob)} does not match its header ({n} entries)")
    if expected_size is not None and n != expected_size:
        raise StorageError(f"vector has {n} entries, expected {expected_size}")
    return np.frombuffer(blob, dtype=">i8", offset=12).astype(np.int64)


def canonical_json(doc: Any) -> bytes:
    """Deterministic JSON bytes (sorted keys, no whitespace): what hashes and CIDs are taken of."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def score_leaf(index: int, provider: str, score: int) -> bytes:
    """Leaf of a validator's scores tree: (index, provider, score in millionths of utility)."""
    return double_hash(eth_abi.encode(["uint256", "address", "int256"], [index, provider, score]))
