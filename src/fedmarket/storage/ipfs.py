"""A blob store on an IPFS node (Kubo), through its HTTP RPC API; standard library only.

Blobs are stored as raw blocks (`block/put?cid-codec=raw&mhtype=sha2-256`), so the node names
each one by exactly the CIDv1 that `storage.cid.cid_of` computes (`bafkrei...`), the same CID
`ipfs add --cid-version 1 --raw-leaves` gives a file of up to one block. The node is not
trusted: every read is verified against its CID by `BlobStore.get`, and a put whose CID
differs from ours is refused.

Kubo's RPC API is an admin interface bound to localhost; point this at your own node
(`ipfs+http://127.0.0.1:5001`), never a public one.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
import uuid

from ..errors import StorageError, StorageUnreachable
from .blobstore import BlobStore
from .cid import cid_of, sha256_of_cid

#: Kubo refuses blocks above 1 MiB unless asked (`allow-big-block`); bitswap will not move
#: bigger ones between nodes, so neither do we.
MAX_BLOCK = 1024 * 1024


class IpfsHttpStore(BlobStore):
    """Blobs as raw blocks on a Kubo node at `url` (e.g. http://127.0.0.1:5001), pinned on put."""

    def __init__(self, url: str, *, timeout: float = 30.0, pin: bool = True):
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise StorageError(f"not an IPFS RPC URL: {url!r} (expected http://host:port)")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.pin = pin

    def __repr__(self) -> str:
        return f"IpfsHttpStore({self.url!r})"

    # ---- HTTP RPC ----------------------------------------------------------------------
    def _post(self, command: str, params: dict, body: bytes | None = None, content_type: str | None = None) -> bytes:
        """POST /api/v0/<command>?params; returns the body, or raises StorageError with the node's message."""
        query = urllib.parse.urlencode(params)
        req = urllib.request.Request(f"{self.url}/api/v0/{command}?{query}", data=body or b"", method="POST")
        if content_type:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.read()
        except urllib.error.HTTPError as exc:
            raise StorageError(f"IPFS node {self.url}: {command} failed: {self._message(exc)}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise StorageUnreachable(f"cannot reach IPFS node at {self.url} ({command}): {reason}") from None

    @staticmethod
    def _message(exc: urllib.error.HTTPError) -> str:
        try:
            raw = exc.read()
        except Exception:
            raw = b""
        try:
            msg = json.loads(raw).get("Message")
        except (ValueError, AttributeError):
            msg = raw.decode(errors="replace").strip()[:200]
        return f"HTTP {exc.code}" + (f": {msg}" if msg else "")

    # ---- BlobStore ---------------------------------------------------------------------
    def put(self, data: bytes) -> str:
        cid = cid_of(data)
        if len(data) > MAX_BLOCK:
            raise StorageError(f"blob of {len(data)} bytes exceeds the {MAX_BLOCK}-byte IPFS block limit")
        boundary = uuid.uuid4().hex
        body = (
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"blob\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode() + data + f"\r\n--{boundary}--\r\n".encode()
        params = {"cid-codec": "raw", "mhtype": "sha2-256", "mhlen": "-1", "pin": str(self.pin).lower()}
        out = self._post("block/put", params, body, f"multipart/form-data; boundary={boundary}")
        try:
            key = json.loads(out)["Key"]
        except (ValueError, KeyError, TypeError):
            raise StorageError(f"IPFS node {self.url}: unexpected block/put answer {out[:100]!r}") from None
        if key != cid:
            raise StorageError(f"IPFS node {self.url} stored the blob as {key}, expected {cid}")
        return cid

    def _read(self, cid: str) -> bytes:
        sha256_of_cid(cid)
        # the node searches the network for a block it lacks: let it give up before we do
        return self._post("block/get", {"arg": cid, "timeout": f"{max(1, int(self.timeout) - 1)}s"})

    def has(self, cid: str) -> bool:
        """Whether the node holds `cid` locally (`block/stat` with `offline`: no network search)."""
        sha256_of_cid(cid)
        try:
            self._post("block/stat", {"arg": cid, "offline": "true"})
        except StorageError as exc:
            if str(exc).startswith("cannot reach"):
                raise
            return False
        return True
