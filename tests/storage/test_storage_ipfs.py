"""The IPFS blob store against a stand-in Kubo node: same endpoints, blocks in a dict.

No IPFS daemon is needed: `FakeKubo` answers `block/put`, `block/get` and `block/stat` the way
Kubo's HTTP RPC API does (POST only, multipart upload, JSON `{"Key", "Size"}`, errors as HTTP
500 with `{"Message", "Code", "Type"}`), naming blocks CIDv1 raw sha2-256 with its own code
(hashlib + a hand-rolled base32), so agreement with `cid_of` is checked, not assumed.
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import hashlib
import json
import socket
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fedmarket.errors import StorageError
from fedmarket.storage import LocalBlobStore, cid_of, open_store
from fedmarket.storage.ipfs import IpfsHttpStore


def kubo_raw_cid(data: bytes) -> str:
    """CIDv1, raw codec (0x55), sha2-256 multihash (0x12, 32), multibase base32 lower ('b')."""
    binary = bytes([0x01, 0x55, 0x12, 0x20]) + hashlib.sha256(data).digest()
    return "b" + base64.b32encode(binary).decode().lower().rstrip("=")


class FakeKubo:
    def __init__(self):
        self.blocks: dict[str, bytes] = {}
        self.calls: list[tuple[str, dict]] = []
        self.corrupt = False  # serve flipped bytes on block/get
        self.wrong_key = False  # claim another CID on block/put
        store = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):  # Kubo's RPC refuses GET
                self._error(405, "method GET not allowed")

            def do_POST(self):
                url = urllib.parse.urlsplit(self.path)
                args = dict(urllib.parse.parse_qsl(url.query))
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                store.calls.append((url.path, args))
                if url.path == "/api/v0/block/put":
                    if args.get("cid-codec") != "raw" or args.get("mhtype") != "sha2-256":
                        return self._error(500, "only raw sha2-256 in this fake")
                    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                        b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + body
                    )
                    parts = [p for p in msg.iter_parts() if p.get_param("name", header="content-disposition") == "file"]
                    if len(parts) != 1:
                        return self._error(400, "file argument 'data' is required")
                    data = parts[0].get_payload(decode=True)
                    key = kubo_raw_cid(data)
                    store.blocks[key] = data
                    if store.wrong_key:
                        key = kubo_raw_cid(data + b"!")
                    return self._json({"Key": key, "Size": len(data)})
                if url.path in ("/api/v0/block/get", "/api/v0/block/stat"):
                    cid = args.get("arg", "")
                    if cid not in store.blocks:
                        return self._error(500, "block was not found locally (offline): ipld: could not find " + cid)
                    data = store.blocks[cid]
                    if url.path.endswith("stat"):
                        return self._json({"Key": cid, "Size": len(data)})
                    if store.corrupt:
                        data = data[:-1] + bytes([data[-1] ^ 1]) if data else b"x"
                    return self._raw(data)
                self._error(404, "404 page not found")

            def _raw(self, payload: bytes, code: int = 200, ctype: str = "application/octet-stream"):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _json(self, doc: dict, code: int = 200):
                self._raw(json.dumps(doc).encode(), code, "application/json")

            def _error(self, code: int, message: str):
                self._json({"Message": message, "Code": 0, "Type": "error"}, code)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def kubo():
    node = FakeKubo()
    yield node
    node.close()


def test_fake_node_names_blocks_like_cid_of():
    for data in (b"", b"update bytes", bytes(range(256)) * 50):
        assert kubo_raw_cid(data) == cid_of(data)


def test_put_get_round_trip_with_our_cids(kubo):
    store = IpfsHttpStore(kubo.url)
    blobs = [b"", b"model weights", bytes(range(256)) * 400]
    cids = [store.put(b) for b in blobs]
    assert cids == [cid_of(b) for b in blobs]
    assert [store.get(c) for c in cids] == blobs
    assert all(store.has(c) for c in cids)
    assert not store.has(cid_of(b"never stored"))
    put = next(args for path, args in kubo.calls if path == "/api/v0/block/put")
    assert put["cid-codec"] == "raw" and put["mhtype"] == "sha2-256" and put["pin"] == "true"


def test_corrupted_bytes_from_the_node_are_refused(kubo):
    store = IpfsHttpStore(kubo.url)
    cid = store.put(b"honest update")
    kubo.corrupt = True
    with pytest.raises(StorageError, match="does not match its content id"):
        store.get(cid)


def test_node_claiming_another_cid_on_put_is_refused(kubo):
    kubo.wrong_key = True
    with pytest.raises(StorageError, match="expected " + cid_of(b"blob")):
        IpfsHttpStore(kubo.url).put(b"blob")


def test_missing_block_is_a_storage_error_with_the_node_message(kubo):
    with pytest.raises(StorageError, match="block/get failed: HTTP 500: block was not found"):
        IpfsHttpStore(kubo.url).get(cid_of(b"absent"))


def test_malformed_cid_never_reaches_the_node(kubo):
    with pytest.raises(StorageError, match="not a valid CID"):
        IpfsHttpStore(kubo.url).get("../../etc/passwd")
    assert kubo.calls == []


def test_unreachable_node_is_a_clear_storage_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    store = IpfsHttpStore(f"http://127.0.0.1:{port}", timeout=2)
    with pytest.raises(StorageError, match=f"cannot reach IPFS node at http://127.0.0.1:{port}"):
        store.put(b"x")
    with pytest.raises(StorageError, match="cannot reach IPFS node"):
        store.get(cid_of(b"x"))
    with pytest.raises(StorageError, match="cannot reach IPFS node"):
        store.has(cid_of(b"x"))


def test_bad_url_is_refused():
    with pytest.raises(StorageError, match="not an IPFS RPC URL"):
        IpfsHttpStore("ftp://example")


def test_open_store_picks_the_backend(kubo, tmp_path):
    ipfs = open_store("ipfs+" + kubo.url)
    assert isinstance(ipfs, IpfsHttpStore) and ipfs.url == kubo.url
    assert ipfs.get(ipfs.put(b"via open_store")) == b"via open_store"
    local = open_store(tmp_path / "blobs")
    assert isinstance(local, LocalBlobStore) and local.root == tmp_path / "blobs"
    assert isinstance(open_store(str(tmp_path / "other")), LocalBlobStore)
