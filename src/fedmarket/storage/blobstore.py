"""Content-addressed blob stores: every blob is named by its CID and checked on every read."""

from __future__ import annotations

import abc
import os
import shutil
import stat
from pathlib import Path

from ..errors import BlobCorrupted, BlobNotFound, BlobTooLarge, StorageError, StorageUnreachable
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
        if not self._holds(cid, path, len(data)):  # anything else under the name (junk, a directory,
            self._set_aside(path)                 # a pipe) is replaced
            tmp = path.with_name(f".{cid}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        return cid

    def _holds(self, cid: str, path: Path, size: int) -> bool:
        """Whether `path` is a regular file of `size` bytes that is the blob `cid`."""
        try:
            st = os.stat(path)
            if not stat.S_ISREG(st.st_mode) or st.st_size != size:
                return False
            verify(cid, self._read_file(cid, path, size))
        except (FileNotFoundError, StorageError):
            return False
        return True

    @staticmethod
    def _set_aside(path: Path) -> None:
        """Remove whatever is under a blob's name that is not the blob."""
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        except OSError:
            pass

    def has(self, cid: str) -> bool:
        """Whether a file is stored under `cid` (its bytes are checked when it is read)."""
        try:
            return self._path(cid).is_file()
        except StorageError:
            return False

    def size(self, cid: str) -> int | None:
        try:
            st = self._path(cid).stat()
        except (OSError, StorageError, ValueError):
            return None  # no such blob, or not a CID: `get` says which
        return st.st_size if stat.S_ISREG(st.st_mode) else None

    def _read_file(self, cid: str, path: Path, limit: int | None) -> bytes:
        """The bytes of the regular file `path` (at most `limit + 1` of them when a limit is given),
        opened without blocking: BlobNotFound if there is none, BlobCorrupted for anything else
        under the name (a directory, a pipe, a file nobody may read), which anyone on a shared
        directory can put there."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            raise BlobNotFound(f"blob {cid} not found in {self.root}") from None
        except OSError as exc:
            raise BlobCorrupted(f"blob {cid} in {self.root} cannot be read: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise BlobCorrupted(f"blob {cid} in {self.root} is not a regular file")
            with os.fdopen(fd, "rb", closefd=False) as fh:
                # never a buffer of the reader's whole limit (tens of GiB for the largest models)
                # for a file that is smaller: at most its size, and one byte to see it grew
                return fh.read() if limit is None else fh.read(min(limit, st.st_size) + 1)
        except OSError as exc:
            raise BlobCorrupted(f"blob {cid} in {self.root} cannot be read: {exc.strerror}") from None
        finally:
            os.close(fd)

    def _read(self, cid: str) -> bytes:
        return self._read_file(cid, self._path(cid), None)

    def _read_capped(self, cid: str, limit: int) -> bytes:
        return self._read_file(cid, self._path(cid), limit)


class MirroredStore(BlobStore):
    """A shared store, with a local copy of every blob written or read through it: a blob the
    shared store lost (anyone on a shared store can delete one, a provider its own update) is read
    from the copy and put back. What a role that must answer for data until its job settles (the
    aggregator, in every dispute game on its rounds) reads and writes through.

    With ``keep_reads=False`` only what it writes, and what it `keep`s, is copied: a provider or a
    validator keeps the documents it posted and the job's spec (a requester could delete its own
    spec once everyone staked), not every update it reads."""

    def __init__(self, shared: BlobStore, local: BlobStore, *, keep_reads: bool = True):
        self.shared = shared
        self.local = local
        self.keep_reads = keep_reads

    def keep(self, cid: str, limit: int) -> bytes:
        """Read `cid` (at most `limit` bytes) and keep a copy of it from now on."""
        data = self._through(cid, lambda store: store.get_capped(cid, limit))
        if not self.keep_reads and not self.local.has(cid):
            self.local.put(data)
        return data

    def put(self, data: bytes) -> str:
        self.local.put(data)
        return self.shared.put(data)

    def _through(self, cid: str, read) -> bytes:
        try:
            data = read(self.shared)
        except StorageUnreachable:
            raise
        except StorageError as lost:  # missing, overwritten, or past the reader's limit there
            try:
                data = read(self.local)
            except StorageError:
                raise lost from None  # no copy either: what the shared store said
            self.shared.put(data)
            return data
        if self.keep_reads:
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
            data = self.local.get(cid)
            try:
                self.shared.get_capped(cid, len(data))  # never more than the blob's own length
            except StorageUnreachable:
                raise
            except StorageError:  # missing, overwritten, or too long
                self.shared.put(data)
                back += 1
        return back
