"""Content-addressed blob stores: every blob is named by its CID and checked on every read."""

from __future__ import annotations

import abc
import os
from pathlib import Path

from ..errors import BlobNotFound, BlobTooLarge, StorageError, StorageUnreachable
from .cid import cid_of, sha256_of_cid, verify


class BlobStore(abc.ABC):
    """Untrusted content-addressed storage. `get` never returns bytes that do not match the CID."""

    @abc.abstractmethod
    def put(self, data: bytes) -> str:
        """Store `data`; returns its CID."""

    @abc.abstractmethod
    def _read(self, cid: str) -> bytes:
        """Raw bytes stored under `cid` (unverified); StorageError if absent."""

    def get(self, cid: str) -> bytes:
        """The blob named `cid`, verified against it."""
        data = self._read(cid)
        verify(cid, data)
        return data

    def get_capped(self, cid: str, limit: int) -> bytes:
        """`get(cid)`, refused with BlobTooLarge past `limit` bytes: before reading it where the
        store can tell its size (`size`), else as soon as the read passes the limit (a store that
        streams stops there, `_read_capped`), so nobody's blob makes its reader hold more."""
        size = self.size(cid)
        if size is not None and size > limit:
            raise BlobTooLarge(f"blob {cid} is {size:,} bytes, over the {limit:,}-byte limit of its reader")
        data = self._read_capped(cid, limit)
        if len(data) > limit:
            raise BlobTooLarge(f"blob {cid} is over the {limit:,}-byte limit of its reader")
        verify(cid, data)
        return data

    def _read_capped(self, cid: str, limit: int) -> bytes:
        """Raw bytes under `cid`, of which a store may return just the first `limit + 1` when there
        are more (enough for `get_capped` to refuse them)."""
        return self._read(cid)

    def size(self, cid: str) -> int | None:
        """A blob's size without reading it, where the store can tell; None otherwise (or if absent)."""
        return None

    def has(self, cid: str) -> bool:
        try:
            self._read(cid)
        except StorageError:
            return False
        return True

    def close(self) -> None:
        """Release connections (a network store's); a directory has none."""


class LocalBlobStore(BlobStore):
    """A directory of files named by CID (written atomically)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create blob store at {self.root}: {exc.strerror}") from None

    def _path(self, cid: str) -> Path:
        sha256_of_cid(cid)  # also rules out path tricks: a valid CID is plain base32
        return self.root / cid

    def put(self, data: bytes) -> str:
        cid = cid_of(data)
        path = self._path(cid)
        if not path.exists() or not self._intact(cid, path):  # a file someone overwrote is replaced
            tmp = path.with_name(f".{cid}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        return cid

    @staticmethod
    def _intact(cid: str, path: Path) -> bool:
        try:
            verify(cid, path.read_bytes())
        except (OSError, StorageError):
            return False
        return True

    def has(self, cid: str) -> bool:
        """Whether a file is stored under `cid` (its bytes are checked when it is read)."""
        try:
            return self._path(cid).is_file()
        except StorageError:
            return False

    def size(self, cid: str) -> int | None:
        try:
            return self._path(cid).stat().st_size
        except (OSError, StorageError, ValueError):
            return None  # no such blob, or not a CID: `get` says which

    def _read(self, cid: str) -> bytes:
        try:
            return self._path(cid).read_bytes()
        except FileNotFoundError:
            raise BlobNotFound(f"blob {cid} not found in {self.root}") from None


class MirroredStore(BlobStore):
    """A shared store, with a local copy of every blob written or read through it: a blob the
    shared store lost (anyone on a shared store can delete one, a provider its own update) is read
    from the copy and put back. What a role that must answer for data until its job settles (the
    aggregator, in every dispute game on its rounds) reads and writes through."""

    def __init__(self, shared: BlobStore, local: BlobStore):
        self.shared = shared
        self.local = local

    def put(self, data: bytes) -> str:
        self.local.put(data)
        return self.shared.put(data)

    def _through(self, cid: str, read) -> bytes:
        try:
            data = read(self.shared)
        except (StorageUnreachable, BlobTooLarge):
            raise
        except StorageError as lost:
            try:
                data = read(self.local)
            except StorageError:
                raise lost from None  # no copy either: what the shared store said
            self.shared.put(data)
            return data
        self.local.put(data)
        return data

    def get(self, cid: str) -> bytes:
        return self._through(cid, lambda store: store.get(cid))

    def get_capped(self, cid: str, limit: int) -> bytes:
        return self._through(cid, lambda store: store.get_capped(cid, limit))

    def _read(self, cid: str) -> bytes:
        return self.get(cid)

    def has(self, cid: str) -> bool:
        return self.shared.has(cid) or self.local.has(cid)

    def restore(self, cids) -> int:
        """Put back in the shared store each of `cids` it lost, or holds overwritten, that the local
        copy holds (each shared blob is read to check it); returns how many it put back (a blob in
        neither is left to whoever asks for it)."""
        back = 0
        for cid in cids:
            if not self.local.has(cid):
                continue
            try:
                self.shared.get(cid)
            except BlobNotFound:
                self.shared.put(self.local.get(cid))
                back += 1
        return back
