"""Content-addressed storage: real CIDv1 values, verified reads, corrupted blobs refused."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multiformats import CID, multihash

from fedmarket.errors import StorageError
from fedmarket.storage import LocalBlobStore, Mailbox, cid_of, verify
from fedmarket.storage.cid import sha256_of_cid


def test_cid_of_empty_blob_is_the_well_known_ipfs_cid():
    assert cid_of(b"") == "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_cid_of_and_its_digest_match_multiformats(data):
    """The direct encoding of `cid_of` is the CID multiformats builds, and reads back to the digest."""
    digest = hashlib.sha256(data).digest()
    cid = cid_of(data)
    assert cid == str(CID("base32", 1, "raw", multihash.wrap(digest, "sha2-256")))
    assert sha256_of_cid(cid) == digest
    verify(cid, data)


def test_other_cids_of_sha256_are_read_and_anything_else_refused():
    digest = hashlib.sha256(b"x").digest()
    for form in (CID("base58btc", 1, "raw", multihash.wrap(digest, "sha2-256")),  # z...
                 CID("base32", 1, "dag-pb", multihash.wrap(digest, "sha2-256"))):
        assert sha256_of_cid(str(form)) == digest
    good = cid_of(b"x")
    assert sha256_of_cid(good.upper()) == digest  # multibase base32upper: the same content id
    bad = {
        good[:-1]: "not a valid CID",
        good[:-1] + "r": "not a valid CID",  # trailing bits set: not the canonical encoding
        "bafkrei" + "1" * 52: "not a valid CID",  # not base32
        "../../etc/passwd": "not a valid CID",
        str(CID("base32", 1, "raw", multihash.digest(b"x", "sha2-512"))): "unsupported hash function sha2-512",
    }
    for cid, why in bad.items():
        with pytest.raises(StorageError, match=why):
            sha256_of_cid(cid)
    with pytest.raises(StorageError, match="does not match its content id"):
        verify(good, b"y")


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
