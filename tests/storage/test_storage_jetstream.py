"""Messages and blobs on a real NATS JetStream server (`nats-server -js`, started per test on
127.0.0.1): round trips, large blobs, a tampered object refused by its CID, a broker restart
that keeps everything (file storage), two clients on one topic, repeats dropped."""

from __future__ import annotations

import os
import threading

import pytest

from fedmarket.errors import BlobTooLarge, StorageError
from fedmarket.storage import cid_of, open_mailbox, open_store
from fedmarket.storage.jetstream import (
    BLOB_BUCKET,
    MAIL_STREAM,
    JetStreamBlobStore,
    JetStreamMailbox,
    NatsLink,
    subject_of,
)


@pytest.fixture(autouse=True)
def no_leaked_threads():
    yield
    left = [t.name for t in threading.enumerate() if t.name.startswith("nats-link")]
    assert left == [], f"NATS link threads left running: {left}"


@pytest.fixture
def clients(nats_server):
    opened = []

    def make(kind: str = "mailbox"):
        obj = open_mailbox(nats_server.url) if kind == "mailbox" else open_store(nats_server.url)
        opened.append(obj)
        return obj

    yield make
    for obj in opened:
        obj.close()


def stored_on(box: JetStreamMailbox, topic: str) -> int:
    """How many messages the server itself holds on `topic` (repeats included, if it kept any)."""
    info = box.link.call(box.link.js.stream_info(MAIL_STREAM, subjects_filter=subject_of(topic)))
    return sum((info.state.subjects or {}).values())


def test_mailbox_round_trip_in_publish_order_without_repeats(clients):
    box = clients("mailbox")
    assert isinstance(box, JetStreamMailbox)
    for m in (b"receipt b", b"receipt a", b"receipt c", b"receipt a", b"receipt b"):
        assert box.post("job-1-round-0", m) == cid_of(m)
    assert box.read("job-1-round-0") == [b"receipt b", b"receipt a", b"receipt c"]
    assert stored_on(box, "job-1-round-0") == 3  # the server dropped the repeats (Nats-Msg-Id)
    assert box.read("job-1-round-0") == [b"receipt b", b"receipt a", b"receipt c"]  # replayable
    assert box.read("job-2-round-0") == []
    # the same bytes on another topic are another message; topics with dots and underscores stay apart
    for topic in ("a.b", "a_db", "a_d.b", "a__b"):
        box.post(topic, b"same bytes")
        box.post(topic, topic.encode())
    for topic in ("a.b", "a_db", "a_d.b", "a__b"):
        assert box.read(topic) == [b"same bytes", topic.encode()]
    box.post("empty", b"")
    assert box.read("empty") == [b""]


def test_mailbox_refuses_bad_topics_and_oversized_messages(clients):
    box = clients("mailbox")
    with pytest.raises(StorageError, match="bad mailbox topic"):
        box.post("../escape", b"x")
    with pytest.raises(StorageError, match="bad mailbox topic"):
        box.read("a b")
    with pytest.raises(StorageError, match="exceeds the NATS server's max_payload"):
        box.post("big", b"x" * (box.link.max_payload + 1))


def test_two_clients_see_the_same_topic(clients):
    alice, bob = clients("mailbox"), clients("mailbox")
    alice.post("job-7-round-0-keys", b"alice's key")
    assert bob.read("job-7-round-0-keys") == [b"alice's key"]
    bob.post("job-7-round-0-keys", b"bob's key")
    bob.post("job-7-round-0-keys", b"alice's key")  # a relay of alice's message: still one
    assert alice.read("job-7-round-0-keys") == [b"alice's key", b"bob's key"]
    assert bob.read("job-7-round-0-keys") == alice.read("job-7-round-0-keys")
    assert stored_on(alice, "job-7-round-0-keys") == 2


def test_blob_round_trip_and_a_large_blob(clients):
    store = clients("store")
    assert isinstance(store, JetStreamBlobStore)
    cid = store.put(b"update bytes")
    held = store.link.call(store.link.js.stream_info(f"OBJ_{BLOB_BUCKET}")).state.messages
    assert cid == cid_of(b"update bytes") and store.put(b"update bytes") == cid
    assert store.link.call(store.link.js.stream_info(f"OBJ_{BLOB_BUCKET}")).state.messages == held  # not written twice
    assert store.get(cid) == b"update bytes" and store.has(cid)
    big = os.urandom(4 * 1024 * 1024 + 7)  # many object-store chunks, over the server's max_payload
    big_cid = store.put(big)
    other = clients("store")
    assert other.get(big_cid) == big
    assert store.get(store.put(b"")) == b""
    missing = cid_of(b"never stored")
    assert not store.has(missing)
    with pytest.raises(StorageError, match="not found in the NATS object store"):
        store.get(missing)
    with pytest.raises(StorageError, match="not a valid CID"):
        store.get("../../etc/passwd")


def test_a_capped_read_stops_downloading_past_its_limit(clients):
    """A reader that takes at most N bytes (an update of the job's size, `roles.common.read_vector`)
    stops downloading a larger object one chunk past N, instead of holding all of it."""
    store = clients("store")
    big = os.urandom(4 * 1024 * 1024)
    cid = store.put(big)
    got = []
    get_msg = store.link.js.get_msg

    async def counting(*args, **kw):
        msg = await get_msg(*args, **kw)
        got.append(len(msg.data or b""))
        return msg

    store.link.js.get_msg = counting
    with pytest.raises(BlobTooLarge, match="over the 100,000-byte limit of its reader"):
        store.get_capped(cid, 100_000)
    assert sum(got[:-1]) <= 100_000 < sum(got) <= 100_000 + max(got)  # one chunk past the limit, no more
    assert store.get_capped(cid, len(big)) == big


def test_a_message_id_taken_first_by_someone_else_does_not_drop_the_honest_message(clients, nats_server):
    box = clients("mailbox")
    honest = b"signed receipt of provider 3"
    # an attacker publishes junk under the id the honest post will carry (topic/CID of its bytes)
    with NatsLink(nats_server.url) as attacker:
        attacker.call(attacker.js.publish(subject_of("job-1-round-0"), b"junk",
                                          headers={"Nats-Msg-Id": f"job-1-round-0/{cid_of(honest)}"}))
    box.post("job-1-round-0", honest)
    assert box.read("job-1-round-0") == [b"junk", honest]  # junk fails its signature check at the reader
    box.post("job-1-round-0", honest)  # and a true repeat is still kept once
    assert box.read("job-1-round-0") == [b"junk", honest] and stored_on(box, "job-1-round-0") == 2


def test_a_tampered_object_is_refused_by_its_content_id(clients, nats_server):
    store = clients("store")
    cid = store.put(b"honest model")
    # whoever can write to the server (an operator, another client) replaces the object's bytes;
    # the object store's own digest then matches the new bytes, only the CID does not
    with NatsLink(nats_server.url) as attacker:
        bucket = attacker.call(attacker.js.object_store(BLOB_BUCKET))
        attacker.call(bucket.put(cid, b"tampered model"))
    assert store.has(cid)
    with pytest.raises(StorageError, match="does not match its content id"):
        store.get(cid)
    assert store.put(b"honest model") == cid and store.get(cid) == b"honest model"  # the owner writes it again
    # or drops an object's chunks and keeps its metadata: refused, not waited for
    big = store.put(os.urandom(300_000))
    with NatsLink(nats_server.url) as attacker:
        bucket = attacker.call(attacker.js.object_store(BLOB_BUCKET))
        nuid = attacker.call(bucket.get_info(big)).nuid
        attacker.call(attacker.js.purge_stream(f"OBJ_{BLOB_BUCKET}", subject=f"$O.{BLOB_BUCKET}.C.{nuid}"))
    with pytest.raises(StorageError, match="does not match its content id"):
        store.get(big)


def test_broker_restart_keeps_messages_and_blobs(clients, nats_server):
    box, store = clients("mailbox"), clients("store")
    box.post("job-3-rewards", b"approval 1")
    cid = store.put(b"x" * 300_000)
    nats_server.restart()  # same port, same JetStream file store
    assert nats_server.starts == 2
    # a role restarted with it resumes from the server: a fresh client reads everything back
    fresh_box, fresh_store = clients("mailbox"), clients("store")
    assert fresh_box.read("job-3-rewards") == [b"approval 1"]
    assert fresh_store.get(cid) == b"x" * 300_000
    # the clients that lived through the restart reconnect by themselves
    box.post("job-3-rewards", b"approval 2")
    box.post("job-3-rewards", b"approval 1")  # a repeat after the restart is still dropped
    assert box.read("job-3-rewards") == [b"approval 1", b"approval 2"]
    assert fresh_box.read("job-3-rewards") == [b"approval 1", b"approval 2"]
    assert store.get(cid) == b"x" * 300_000


def test_while_the_broker_is_down_calls_fail_with_one_line_and_a_retry_lands_once(clients, nats_server):
    box = clients("mailbox")
    box.link.timeout = 1.0
    box.post("t", b"before")
    nats_server.stop()
    with pytest.raises(StorageError, match=f"NATS server {nats_server.url}"):
        box.post("t", b"during")
    nats_server.start()
    box.link.timeout = 10.0
    # the failed post may still have gone out once the client reconnected (it buffers): the role
    # retries the very same message at its next step, and the server keeps it once either way
    box.post("t", b"during")
    box.post("t", b"after")
    assert box.read("t") == [b"before", b"during", b"after"]
    assert stored_on(box, "t") == 3


def test_unreachable_server_and_bad_urls(nats_server):
    port = nats_server.port
    nats_server.stop()
    with pytest.raises(StorageError, match=f"cannot reach NATS server at nats://127.0.0.1:{port}"):
        open_mailbox(f"nats://127.0.0.1:{port}")
    with pytest.raises(StorageError, match="not a NATS server URL"):
        NatsLink("nats://127.0.0.1:4222/some/path")
    with pytest.raises(StorageError, match="not a NATS server URL"):
        NatsLink("http://127.0.0.1:4222")


def test_a_server_with_a_password_and_a_url_that_never_shows_it(nats_server, tmp_path):
    from fedmarket.testing.natsserver import NatsServer

    with NatsServer(tmp_path / "auth", extra=("--user", "alice", "--pass", "s3cret")) as server:
        url = server.url.replace("nats://", "nats://alice:s3cret@")
        box = open_mailbox(url)
        try:
            box.post("t", b"signed")
            assert box.read("t") == [b"signed"] and "s3cret" not in repr(box)
        finally:
            box.close()
        with pytest.raises(StorageError, match="Authorization Violation") as refused:
            open_store(url.replace("s3cret", "wrong-guess"))
        assert "wrong-guess" not in str(refused.value) and ":***@" in str(refused.value)


def test_a_closed_link_says_so(nats_server):
    link = NatsLink(nats_server.url)
    link.close()
    link.close()  # idempotent
    with pytest.raises(StorageError, match="is closed"):
        link.call(link.js.stream_info(MAIL_STREAM))


def _ca_and_server_cert(tmp):
    """A CA and a certificate for 127.0.0.1 signed by it (PEM files in `tmp`)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "consortium test CA")])

    def signed(subject, public_key, ca: bool):
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name).public_key(public_key)
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return builder.sign(ca_key, hashes.SHA256())

    pem = serialization.Encoding.PEM
    (tmp / "ca.pem").write_bytes(signed(ca_name, ca_key.public_key(), True).public_bytes(pem))
    server = signed(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "broker")]), key.public_key(), False)
    (tmp / "server.pem").write_bytes(server.public_bytes(pem))
    (tmp / "server.key").write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))


def test_tls_with_the_consortium_ca_and_refused_without_it(nats_server, tmp_path, monkeypatch):
    from fedmarket.testing.natsserver import NatsServer

    _ca_and_server_cert(tmp_path)
    tls = ("--tls", "--tlscert", str(tmp_path / "server.pem"), "--tlskey", str(tmp_path / "server.key"))
    with NatsServer(tmp_path / "tls", extra=tls) as server:
        url = server.url.replace("nats://", "nats+tls://")
        monkeypatch.setenv("FEDMARKET_NATS_CA", str(tmp_path / "ca.pem"))
        store = open_store(url)
        try:
            assert store.get(store.put(b"update over TLS")) == b"update over TLS"
        finally:
            store.close()
        monkeypatch.delenv("FEDMARKET_NATS_CA")  # the system's CAs do not know the consortium's
        with pytest.raises(StorageError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            open_mailbox(url)
        monkeypatch.setenv("FEDMARKET_NATS_CA", str(tmp_path / "missing.pem"))
        with pytest.raises(StorageError, match="is not a file"):
            open_mailbox(url)
