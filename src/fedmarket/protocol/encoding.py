"""Canonical byte encodings shared with the contracts: leaves, vectors, chunk roots."""

from __future__ import annotations

import json
import re
import struct
from typing import Any

import eth_abi
import eth_abi.exceptions
import numpy as np

from ..errors import MalformedMessage, StorageError
from .keccak import keccak
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


def _packed_words(values: np.ndarray) -> bytes:
    """int64 values packed four to a 32-byte big-endian word, the last word zero-padded."""
    raw = np.ascontiguousarray(values, dtype=">i8").tobytes()
    return raw + bytes(-len(raw) % 32)


def _chunk_header(index: int, count: int) -> bytes:
    """``abi.encode(uint256 index, uint256 count, uint256[] words)`` up to the words: index, count,
    offset 96, number of words."""
    n_words = -(-count // 4)
    return b"".join(x.to_bytes(32, "big") for x in (index, count, 96, n_words))


def chunk_leaf(index: int, chunk: np.ndarray) -> bytes:
    """Leaf of one chunk (`leaves._chunk_leaf`): double keccak of ``abi.encode(index, count, words)``,
    the values as int64 packed four to a word."""
    chunk = np.asarray(chunk, dtype=np.int64).ravel()
    return double_hash(_chunk_header(index, chunk.size) + _packed_words(chunk))


def chunk_leaves(q: np.ndarray, chunk_size: int = CHUNK_SIZE) -> list[bytes]:
    """Every chunk leaf of a vector, the ABI words of all full chunks laid out by one NumPy pass."""
    q = np.asarray(q, dtype=np.int64).ravel()
    full, tail = divmod(q.size, chunk_size)
    row_words = -(-chunk_size // 4) * 32
    body = np.zeros((full, row_words), dtype=np.uint8)
    body[:, : 8 * chunk_size] = q[: full * chunk_size].astype(">i8").view(np.uint8).reshape(full, 8 * chunk_size)
    header = np.frombuffer(_chunk_header(0, chunk_size), dtype=np.uint8)
    headers = np.tile(header, (full, 1))
    headers[:, 24:32] = np.arange(full, dtype=">u8").view(np.uint8).reshape(full, 8)
    rows = np.concatenate([headers, body], axis=1)
    leaves = [keccak(keccak(row.tobytes())) for row in rows]
    if tail:
        leaves.append(chunk_leaf(full, q[full * chunk_size :]))
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


def vector_blob_limit(n: int) -> int:
    """The most bytes the blob of a vector of `n` values can take (`FMV2` at the widest width): what
    a reader of a job's update, model or correction downloads at most."""
    return 13 + 8 * n


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


# What a reader of one untrusted message catches to drop it (and only it): every error that parsing,
# hex, int conversion or ABI encoding raises on a field of the wrong type or size.
BAD_INPUT = (ValueError, KeyError, TypeError, AttributeError, OverflowError, IndexError,
             eth_abi.exceptions.EncodingError)
MAX_UNTRUSTED_BYTES = 256 * 2**20  # a metrics or rewards document of a large job is a few MB
MAX_UNTRUSTED_DEPTH = 64  # our documents nest a few levels


def _finite(text: str) -> float:
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise MalformedMessage(f"number {text[:20]} is out of range")
    return value


def _no_constant(name: str):
    raise MalformedMessage(f"{name} is not a JSON number")


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_BRACKET = np.zeros(256, dtype=np.int32)  # +1 for a bracket that opens, -1 for one that closes
_BRACKET[[ord("["), ord("{")]] = 1
_BRACKET[[ord("]"), ord("}")]] = -1


def json_depth(raw: bytes) -> int:
    """How deep a JSON text nests (arrays and objects), counted without parsing it: its strings
    removed, the running count of brackets opened less brackets closed."""
    opens = raw.count(b"[") + raw.count(b"{")
    if opens <= MAX_UNTRUSTED_DEPTH:
        return opens  # at most this deep: nothing to count
    levels = np.frombuffer(_JSON_STRING.sub(b'""', raw), dtype=np.uint8)
    return int(np.cumsum(_BRACKET[levels]).max()) if levels.size else 0


def untrusted_json(raw: bytes | str) -> Any:
    """JSON from the mailbox or the content store, where anyone writes: MalformedMessage (a
    FedMarketError and a ValueError, so every reader's handler takes it) for bytes that are not
    JSON, a document past MAX_UNTRUSTED_BYTES, nesting past MAX_UNTRUSTED_DEPTH (counted before
    parsing: deep enough nesting overflows the C stack once a library raised the recursion
    limit, as eth_account's py_ecc does, a crash no `except` catches), or a number that is not
    finite (`Infinity`, `NaN`, `1e400`, which `int()` cannot take)."""
    data = raw.encode() if isinstance(raw, str) else bytes(raw)
    if len(data) > MAX_UNTRUSTED_BYTES:
        raise MalformedMessage(f"document of {len(data)} bytes is over the {MAX_UNTRUSTED_BYTES}-byte limit")
    if json_depth(data) > MAX_UNTRUSTED_DEPTH:
        raise MalformedMessage(f"document nests deeper than {MAX_UNTRUSTED_DEPTH} levels")
    try:
        return json.loads(data, parse_float=_finite, parse_constant=_no_constant)
    except MalformedMessage:
        raise
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise MalformedMessage(f"not JSON: {exc}") from None


def canonical_json(doc: Any) -> bytes:
    """Deterministic JSON bytes (sorted keys, no whitespace): what hashes and CIDs are taken of."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def score_leaf(index: int, provider: str, score: int) -> bytes:
    """Leaf of a validator's scores tree (positional): (index, provider, score in millionths of utility)."""
    return double_hash(eth_abi.encode(["uint256", "address", "int256"], [index, provider, score]))
