"""IPFS content ids: CIDv1, raw codec, sha2-256 multihash, base32 (the `bafkrei...` form).

The roles name every blob by this one form, thousands of times a round at scale, so it is
encoded and checked here directly (a fixed 4-byte prefix and base32); any other CID a Kubo node
may hand back goes through `multiformats`, which the tests also hold this encoding to.
"""

from __future__ import annotations

import base64
import hashlib

from multiformats import CID, multihash

from ..errors import BlobCorrupted, StorageError

#: CIDv1, the raw codec (0x55), a sha2-256 multihash (0x12) of 32 bytes (0x20)
_RAW_SHA256 = bytes([0x01, 0x55, 0x12, 0x20])


def _base32(raw: bytes) -> str:
    """Multibase base32: ``b`` then RFC 4648 base32, lower case, unpadded."""
    return "b" + base64.b32encode(raw).decode("ascii").rstrip("=").lower()


def cid_of(data: bytes) -> str:
    """CIDv1 (raw, sha2-256, base32) of `data`: what `ipfs add --cid-version 1 --raw-leaves` gives a small file."""
    return _base32(_RAW_SHA256 + hashlib.sha256(data).digest())


def sha256_of_cid(cid: str) -> bytes:
    """The sha2-256 digest a CID names; StorageError, one line, for anything that is not a CID or
    names another hash function."""
    if isinstance(cid, str) and len(cid) == 59 and cid.startswith("bafkrei"):  # the form cid_of writes
        try:
            raw = base64.b32decode(cid[1:].upper() + "======")
        except ValueError:
            raw = b""
        if raw[:4] == _RAW_SHA256 and _base32(raw) == cid:  # canonical: re-encodes to itself
            return raw[4:]
    parsed = _parse_cid(cid)
    return bytes(multihash.unwrap(parsed.digest))


def _parse_cid(cid: str) -> CID:
    """Parse and check a CID string, with a clear error for anything else."""
    try:
        parsed = CID.decode(cid)
    except Exception as exc:
        raise StorageError(f"not a valid CID: {cid!r} ({exc})") from None
    if parsed.hashfun.name != "sha2-256":
        raise StorageError(f"unsupported hash function {parsed.hashfun.name} in CID {cid}")
    return parsed


def verify(cid: str, data: bytes) -> None:
    """Raise BlobCorrupted (a StorageError) unless `data` hashes to `cid`."""
    if hashlib.sha256(data).digest() != sha256_of_cid(cid):
        raise BlobCorrupted(f"blob does not match its content id {cid}: refusing corrupted data")
