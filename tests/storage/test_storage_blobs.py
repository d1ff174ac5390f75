"""Content-addressed storage: real CIDv1 values, verified reads, corrupted blobs refused."""

from __future__ import annotations

import pytest

from fedmarket.errors import StorageError
from fedmarket.storage import LocalBlobStore, Mailbox, cid_of


def test_cid_of_empty_blob_is_the_well_known_ipfs_cid():
    assert cid_of(b"") == "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"


def test_put_get_round_trip_and_idempotent(tmp_path):
    store = LocalBlobStore(tmp_path)
    cid = store.put(b"update bytes")
    assert cid.startswith("bafkrei") and store.put(b"update bytes") == cid
    assert store.get(cid) == b"update bytes" and store.has(cid)


def test_corrupted_blob_is_rejected(tmp_path):
    store = LocalBlobStore(tmp_path)
    cid = store.put(b"honest model")
    (tmp_path / cid).write_bytes(b"tampered model")
    with pytest.raises(StorageError, match="does not match its content id"):
        store.get(cid)


def test_missing_and_malformed_cids(tmp_path):
    store = LocalBlobStore(tmp_path)
    with pytest.raises(StorageError, match="not found"):
        store.get(cid_of(b"never stored"))
    with pytest.raises(StorageError, match="not a valid CID"):
        store.get("../../etc/passwd")


def test_mailbox_is_ordered_and_rejects_bad_topics(tmp_path):
    box = Mailbox(tmp_path)
    for m in (b"b", b"a", b"c"):
        box.post("job-1-round-0", m)
    assert sorted(box.read("job-1-round-0")) == [b"a", b"b", b"c"]
    assert box.read("job-1-round-0") == box.read("job-1-round-0")
    assert box.read("job-2-round-0") == []
    with pytest.raises(StorageError, match="bad mailbox topic"):
        box.post("../escape", b"x")
