"""Storage layer: content-addressed blobs (CIDv1) and the off-chain mailbox between roles."""

from .blobstore import BlobStore, LocalBlobStore
from .cid import cid_of, verify
from .mailbox import Mailbox

__all__ = ["BlobStore", "LocalBlobStore", "Mailbox", "cid_of", "verify"]
