"""Storage layer: content-addressed blobs (CIDv1) and the off-chain mailbox between roles."""

from __future__ import annotations

import os

from .blobstore import BlobStore, LocalBlobStore
from .cid import cid_of, verify
from .mailbox import Mailbox


def open_store(location: str | os.PathLike) -> BlobStore:
    """The blob store at `location`: `ipfs+http://host:port` (or `ipfs+https://...`) is a Kubo
    node's RPC API (`IpfsHttpStore`); anything else is a local directory (`LocalBlobStore`)."""
    text = os.fspath(location)
    if isinstance(text, str) and text.lower().startswith(("ipfs+http://", "ipfs+https://")):
        from .ipfs import IpfsHttpStore

        return IpfsHttpStore(text[len("ipfs+"):])
    return LocalBlobStore(text)


__all__ = ["BlobStore", "LocalBlobStore", "Mailbox", "cid_of", "open_store", "verify"]
