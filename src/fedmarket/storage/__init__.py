"""Storage layer: content-addressed blobs (CIDv1) and the off-chain mailbox between roles."""

from __future__ import annotations

import os
from pathlib import Path

from .blobstore import BlobStore, LocalBlobStore, MirroredStore
from .cid import cid_of, verify
from .mailbox import Mailbox


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically (temp file in the same directory, fsync, rename): a
    role's own state files, which a crash must leave whole or untouched."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


from .kept import KeptMailbox  # noqa: E402  (it writes with write_atomic)


def is_nats(location: str | os.PathLike) -> bool:
    """Whether `location` names a NATS server (nats://HOST:PORT, or nats+tls:// with TLS)."""
    text = os.fspath(location)
    return isinstance(text, str) and text.lower().startswith(("nats://", "nats+tls://"))


def open_store(location: str | os.PathLike) -> BlobStore:
    """The blob store at `location`: `nats://host:port` (or `nats+tls://...`) is a NATS
    JetStream server's object store (`JetStreamBlobStore`), `ipfs+http://host:port` (or `ipfs+https://...`) a Kubo node's
    RPC API (`IpfsHttpStore`); anything else is a local directory (`LocalBlobStore`)."""
    text = os.fspath(location)
    if is_nats(text):
        from .jetstream import JetStreamBlobStore

        return JetStreamBlobStore(text)
    if isinstance(text, str) and text.lower().startswith(("ipfs+http://", "ipfs+https://")):
        from .ipfs import IpfsHttpStore

        return IpfsHttpStore(text[len("ipfs+"):])
    return LocalBlobStore(text)


def open_mailbox(location: str | os.PathLike):
    """The mailbox at `location`: `nats://host:port` (or `nats+tls://...`) is a NATS JetStream stream
    (`JetStreamMailbox`, for roles on different machines); anything else is a directory
    (`Mailbox`, for roles on one machine)."""
    text = os.fspath(location)
    if is_nats(text):
        from .jetstream import JetStreamMailbox

        return JetStreamMailbox(text)
    return Mailbox(text)


def is_remote(location: str | os.PathLike) -> bool:
    """Whether `location` names a service (nats://, nats+tls://, ipfs+http(s)://) rather than a directory."""
    text = os.fspath(location)
    return is_nats(text) or (isinstance(text, str) and text.lower().startswith(("ipfs+http://", "ipfs+https://")))


__all__ = ["BlobStore", "KeptMailbox", "LocalBlobStore", "Mailbox", "MirroredStore", "cid_of", "is_nats", "is_remote", "open_mailbox", "open_store", "verify", "write_atomic"]
