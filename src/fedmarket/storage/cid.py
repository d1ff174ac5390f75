"""IPFS content ids: CIDv1, raw codec, sha2-256 multihash, base32 (the `bafkrei...` form)."""

from __future__ import annotations

import hashlib

from multiformats import CID, multihash

from ..errors import StorageError


def cid_of(data: bytes) -> str:
    """CIDv1 (raw, sha2-256, base32) of `data`: what `ipfs add --cid-version 1 --raw-leaves` gives a small file."""
    return str(CID("base32", 1, "raw", multihash.wrap(hashlib.sha256(data).digest(), "sha2-256")))


def parse_cid(cid: str) -> CID:
    """Parse and check a CID string, with a clear error for anything else."""
    try:
        parsed = CID.decode(cid)
    except Exception as exc:
        raise StorageError(f"not a valid CID: {cid!r} ({exc})") from None
    if parsed.hashfun.name != "sha2-256":
        raise StorageError(f"unsupported hash function {parsed.hashfun.name} in CID {cid}")
    return parsed


def verify(cid: str, data: bytes) -> None:
    """Raise StorageError unless `data` hashes to `cid`."""
    parsed = parse_cid(cid)
    digest = multihash.unwrap(parsed.digest)
    if hashlib.sha256(data).digest() != bytes(digest):
        raise StorageError(f"blob does not match its content id {cid}: refusing corrupted data")
