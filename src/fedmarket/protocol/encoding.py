"""Canonical byte encodings shared with the contracts: leaves, vectors, chunk roots."""

from __future__ import annotations

import json
import struct
from typing import Any

import eth_abi
import numpy as np
from .keccak import keccak

from ..errors import StorageError
from .merkle import MerkleTree

CHUNK_SIZE = 64  # int64 entries per Merkle chunk of a model or update (the contracts accept up to 64)
_VECTOR_MAGIC = b"FMV1"


def double_hash(encoded: bytes) -> bytes:
    """keccak256(keccak256(x)): leaves can never be mistaken for inner nodes."""
    return keccak(keccak(encoded))


def reward_leaf(account: str, role: int, amount: int, reputation_delta: int, value: int, activity: int) -> bytes:
    """Leaf of a reward tree (`leaves._reward_leaf`): leaves sorted by account, one per member."""
    return double_hash(
        eth_abi.encode(
            ["address", "uint256", "uint256", "int256", "uint256", "uint256"],
            [account, role, amount, reputation_delta, value, activity],
        )
    )


def update_leaf(provider: str, update_root: bytes, weight: int) -> bytes:
    """Leaf of a round's updates tree (`leaves._update_leaf`): leaves sorted by provider, strictly ascending."""
    return double_hash(eth_abi.encode(["address", "bytes32", "uint256"], [provider, update_root, weight]))


def round_commitment(job_id: int, round_: int, data: tuple) -> bytes:
    """Leaf ``round_`` of a job's round accumulator (`leaves._round_commitment`); ``data`` is the
    RoundData tuple (model_root, updates_root, count, metrics_hash, epsilon_spent, aux_root, next_seed)."""
    return keccak(
        eth_abi.encode(
            ["uint256", "uint256", "bytes32", "bytes32", "uint256", "bytes32", "uint256", "bytes32", "bytes32"],
            [job_id, round_, *data],
        )
    )


def address_key(address: str) -> int:
    """Sort key of an address as the contracts compare them (uint160)."""
    return int(address, 16)


def _int256_words(values: np.ndarray) -> np.ndarray:
    """ABI int256 words of int64 values, vectorised (sign-extended big-endian), one row of 32 bytes each."""
    v = np.ascontiguousarray(values, dtype=np.int64).ravel()
    words = np.zeros((v.size, 32), dtype=np.uint8)
    words[v < 0, :24] = 0xFF
    words[:, 24:] = v.astype(">i8").view(np.uint8).reshape(-1, 8)
    return words


def _chunk_header(index: int, length: int) -> bytes:
    """``abi.encode(uint256 index, int256[] values)`` up to the values: index, offset 64, length."""
    return index.to_bytes(32, "big") + (64).to_bytes(32, "big") + length.to_bytes(32, "big")


def chunk_leaf(index: int, chunk: np.ndarray) -> bytes:
    """Leaf of one chunk: double keccak of abi.encode(uint256 index, int256[] values)."""
    return double_hash(_chunk_header(index, len(chunk)) + _int256_words(chunk).tobytes())


def chunk_leaves(q: np.ndarray, chunk_size: int = CHUNK_SIZE) -> list[bytes]:
    """Every chunk leaf of a vector, the ABI words of all chunks laid out by one NumPy pass."""
    q = np.asarray(q, dtype=np.int64).ravel()
    full, tail = divmod(q.size, chunk_size)
    words = _int256_words(q)
    body = words[: full * chunk_size].reshape(full, chunk_size * 32)
    headers = np.zeros((full, 96), dtype=np.uint8)
    headers[:, 24:32] = np.arange(full, dtype=">u8").view(np.uint8).reshape(full, 8)
    headers[:, 63] = 64
    headers[:, 88:96] = np.frombuffer(chunk_size.to_bytes(8, "big"), dtype=np.uint8)
    rows = np.concatenate([headers, body], axis=1)
    leaves = [keccak(keccak(row.tobytes())) for row in rows]
    if tail:
        leaves.append(double_hash(_chunk_header(full, tail) + words[full * chunk_size :].tobytes()))
    return leaves


def vector_tree(q: np.ndarray, chunk_size: int = CHUNK_SIZE) -> MerkleTree:
    """Positional Merkle tree over the chunk leaves of a quantized vector (chunk ``i`` at position ``i``)."""
    q = np.asarray(q, dtype=np.int64).ravel()
    if q.size == 0:
        raise ValueError("cannot commit an empty vector")
    return MerkleTree(chunk_leaves(q, chunk_size))


def vector_root(q: np.ndarray, chunk_size: int = CHUNK_SIZE) -> bytes:
    """Chunked Merkle root of a quantized vector (what rounds commit as model/update roots)."""
    return vector_tree(q, chunk_size).root


def encode_vector(q: np.ndarray) -> bytes:
    """Canonical blob of an int64 vector, at the fewest bytes per value that hold every value exactly.

    Layout: ``b"FMV2"``, one byte giving the width ``w`` (1, 2, 4 or 8: the
    smallest whose signed range holds the minimum and the maximum), the
    number of values (uint64 big-endian), then the values as big-endian
    two's complement of ``w`` bytes each. The width depends only on the
    values, so a vector always has the same blob (and content id).

    Parameters
    ----------
    q : array_like of int
        The vector (flattened), every value in the int64 range.

    Returns
    -------
    bytes
        The blob, ``13 + w * len(q)`` bytes.
    """
    q = np.asarray(q, dtype=np.int64).ravel()
    lo, hi = (int(q.min()), int(q.max())) if q.size else (0, 0)
    width = next(w for w in (1, 2, 4, 8) if -(1 << (8 * w - 1)) <= lo and hi < 1 << (8 * w - 1))
    return b"FMV2" + bytes([width]) + struct.pack(">Q", q.size) + q.astype(f">i{width}").tobytes()


def decode_vector(blob: bytes, expected_size: int | None = None) -> np.ndarray:
    """Inverse of `encode_vector`; also reads the older ``FMV1`` blobs (magic, length, 8-byte values).

    Parameters
    ----------
    blob : bytes
        An ``FMV2`` or ``FMV1`` vector blob.
    expected_size : int, optional
        The number of values the vector must have.

    Returns
    -------
    numpy.ndarray
        The values as int64.

    Raises
    ------
    StorageError
        On a bad magic, a truncated header, a width byte other than 1, 2, 4
        or 8, a length that does not match the header, or a number of values
        other than ``expected_size``.
    """
    if blob[:4] == b"FMV2":
        header = 13  # magic, width byte, length
    elif blob[:4] == _VECTOR_MAGIC:
        header = 12  # magic, length; always 8-byte values
    else:
        raise StorageError("blob is not a fedmarket vector (bad magic)")
    if len(blob) < header:
        raise StorageError(f"vector blob of {len(blob)} bytes is shorter than its {header}-byte header")
    width = blob[4] if header == 13 else 8
    if width not in (1, 2, 4, 8):
        raise StorageError(f"vector blob has width byte {width}, expected 1, 2, 4 or 8")
    (n,) = struct.unpack(">Q", blob[header - 8 : header])
    if len(blob) != header + width * n:
        raise StorageError(f"vector blob length {len(blob)} does not match its header ({n} entries of {width} bytes)")
    if expected_size is not None and n != expected_size:
        raise StorageError(f"vector has {n} entries, expected {expected_size}")
    return np.frombuffer(blob, dtype=f">i{width}", offset=header).astype(np.int64)


def canonical_json(doc: Any) -> bytes:
    """Deterministic JSON bytes (sorted keys, no whitespace): what hashes and CIDs are taken of."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def score_leaf(index: int, provider: str, score: int) -> bytes:
    """Leaf of a validator's scores tree (positional): (index, provider, score in millionths of utility)."""
    return double_hash(eth_abi.encode(["uint256", "address", "int256"], [index, provider, score]))
