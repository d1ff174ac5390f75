"""A stranger on the roles' NATS server (one account for every role, as docs/deployment.md sets it
up) against the blob store and the mailbox: whatever it does to the server's state, an honest
role's next write heals its blob and its next read sees what was posted since. The server is
trusted for delivery only: every blob is checked against its CID and every message's signature
by whoever reads it, so a stranger can withhold but not forge."""

from __future__ import annotations

import base64
import json

from fedmarket.storage import LocalBlobStore, MirroredStore, open_mailbox, open_store
from fedmarket.storage import jetstream as js_mod
from fedmarket.storage.jetstream import BLOB_BUCKET, MAIL_STREAM, NatsLink


def test_an_owners_put_heals_a_blob_replaced_under_forged_metadata(nats_server):
    """Attack: replace a provider's update blob with junk and publish the object's metadata again
    with the honest digest. `put` used to trust that recorded digest and skip the write, so the
    provider's own put could never restore the blob, and every reader found bytes that do not
    match the CID (an update refused as bad). Now a matching digest is checked against the bytes
    themselves, and the owner's put writes the blob again."""
    store = open_store(nats_server.url)
    honest = b"honest update " * 1000
    cid = store.put(honest)
    with NatsLink(nats_server.url) as stranger:
        bucket = stranger.call(stranger.js.object_store(BLOB_BUCKET))
        good_digest = stranger.call(bucket.get_info(cid)).digest
        stranger.call(bucket.put(cid, b"junk"))
        info = stranger.call(bucket.get_info(cid))
        meta = {"name": info.name, "bucket": BLOB_BUCKET, "nuid": info.nuid, "size": info.size,
                "chunks": info.chunks, "digest": good_digest}
        subject = f"$O.{BLOB_BUCKET}.M.{base64.urlsafe_b64encode(cid.encode()).decode()}"
        stranger.call(stranger.js.publish(subject, json.dumps(meta).encode(), headers={"Nats-Rollup": "sub"}))
    assert store.put(honest) == cid
    fresh = open_store(nats_server.url)
    assert fresh.get(cid) == honest
    fresh.close()
    store.close()


def test_a_reader_sees_new_messages_after_the_mail_stream_is_deleted(nats_server):
    """Attack: delete the mail stream. The next role to start makes it again, numbering messages
    from 1, while a running reader (the aggregator) used to go on from its old position and miss
    every message posted since: updates, receipts, attestations. A reader now notices the stream
    was made anew and reads its topics again from the start, each message once."""
    reader, writer = open_mailbox(nats_server.url), open_mailbox(nats_server.url)
    for i in range(20):
        writer.post("job-1-round-0", f"old {i}".encode())
    assert len(reader.read("job-1-round-0")) == 20
    with NatsLink(nats_server.url) as stranger:
        stranger.call(stranger.js.delete_stream(MAIL_STREAM))
    late = open_mailbox(nats_server.url)  # a role (re)starting makes the stream again
    for i in range(5):
        late.post("job-1-round-0", f"new {i}".encode())
    late.post("job-1-round-0", b"old 3")  # posted again after the reset: still read once
    got = reader.read("job-1-round-0")
    assert got[:20] == [f"old {i}".encode() for i in range(20)]
    assert got[20:] == [f"new {i}".encode() for i in range(5)]
    for box in (reader, writer, late):
        box.close()


JUNK = 40 * 2**20


def _forge_size(url: str, cid: str) -> None:
    """The stranger stores 40 MB of junk and republishes the honest blob's metadata, honest digest
    and all, over the junk's chunks and size."""
    with NatsLink(url, timeout=60) as stranger:
        bucket = stranger.call(stranger.js.object_store(BLOB_BUCKET))
        good_digest = stranger.call(bucket.get_info(cid)).digest
        stranger.call(bucket.put("junk-of-the-stranger", b"\0" * JUNK), 120)
        info = stranger.call(bucket.get_info("junk-of-the-stranger"))
        meta = {"name": cid, "bucket": BLOB_BUCKET, "nuid": info.nuid, "size": info.size,
                "chunks": info.chunks, "digest": good_digest}
        subject = f"$O.{BLOB_BUCKET}.M.{base64.urlsafe_b64encode(cid.encode()).decode()}"
        stranger.call(stranger.js.publish(subject, json.dumps(meta).encode(), headers={"Nats-Rollup": "sub"}))


def _largest_read(monkeypatch) -> list[int]:
    most = [0]
    inner = js_mod.JetStreamBlobStore._get

    async def counted(self, cid, limit=None):
        data = await inner(self, cid, limit)
        most[0] = max(most[0], len(data))
        return data

    monkeypatch.setattr(js_mod.JetStreamBlobStore, "_get", counted)
    return most


def test_a_put_or_restore_reads_no_more_than_its_blob(nats_server, monkeypatch, tmp_path):
    """Attack (found by a review of the transport): metadata naming 40 MB of junk under an honest
    blob's digest. An owner's `put` checked a matching digest by reading the object back uncapped,
    as many bytes as the stranger's metadata said, and `MirroredStore.restore` (which reads the
    shared copy capped) then called that put: every heal pulled the stranger's junk into memory. It
    now reads back at most the blob's own length, and writes the blob again."""
    shared = open_store(nats_server.url)
    mirrored = MirroredStore(shared, LocalBlobStore(tmp_path / "kept"))
    honest = b"an aggregator's model " * 50
    cid = mirrored.put(honest)
    _forge_size(nats_server.url, cid)
    most = _largest_read(monkeypatch)
    assert mirrored.restore([cid]) == 1
    assert shared.put(honest) == cid
    fresh = open_store(nats_server.url)
    assert fresh.get(cid) == honest
    fresh.close()
    shared.close()
    assert most[0] <= len(honest) + 128 * 1024, f"{most[0]:,} bytes read for a {len(honest):,}-byte blob"  # one chunk
