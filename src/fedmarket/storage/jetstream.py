"""Messages and blobs between roles on a NATS JetStream server (`nats://HOST:4222`): the
transport for roles on machines that share no directory.

The server is trusted for delivery only. Every blob is named by its CID and checked against it
on every read (`BlobStore.get`), so a tampered object is refused; every mailbox message is
signed by its author and checked by its reader (the roles do that, as with the directory
mailbox). Both live in JetStream file storage, so they survive a restart of the server, and a
restarted role reads everything again from the server, not from files of its own.

- `JetStreamMailbox`: one stream (`FEDMARKET_MAIL`, subjects `fedmarket.mail.<topic>`). A post
  carries the header `Nats-Msg-Id: <topic>/<CID of the message>`, so the server drops a second
  post of the same message within its duplicate window (a day); `read` also drops repeats
  beyond it (by the CID of the bytes, not the header, which anyone can set). A topic reads
  back in publish order (the stream's sequence).
- `JetStreamBlobStore`: the object store bucket `fedmarket-blobs`, one object per CID.

This is the only module that touches the asyncio client (nats-py): `NatsLink` runs it on an
event loop in a daemon thread and offers blocking calls; `close()` (or the end of the
interpreter) closes the connection and joins the thread.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import concurrent.futures
import hashlib
import os
import ssl
import threading
import urllib.parse
import weakref
from collections.abc import Coroutine
from typing import Any

import nats
import nats.errors
import nats.js.api
import nats.js.errors

from ..errors import BlobNotFound, StorageError, StorageUnreachable
from .blobstore import BlobStore
from .cid import cid_of, sha256_of_cid
from .mailbox import check_topic

MAIL_STREAM = "FEDMARKET_MAIL"
MAIL_SUBJECTS = "fedmarket.mail"
BLOB_BUCKET = "fedmarket-blobs"
#: how long the server remembers a message id to drop a repeated post (seconds)
DUPLICATE_WINDOW = 24 * 3600.0
#: a PEM file of the CA that signed the server's certificate (nats+tls://), if not a system CA
ENV_CA = "FEDMARKET_NATS_CA"
#: message ids tried for one post when others took them first (then it goes out without one)
ID_ATTEMPTS = 4

_NATS_ERRORS = (nats.errors.Error, asyncio.TimeoutError, OSError)
_LINKS: weakref.WeakSet[NatsLink] = weakref.WeakSet()


def redacted(url: str) -> str:
    """`url` with any password replaced by `***`."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.password is None:
        return url
    return url.replace(f":{parsed.password}@", ":***@", 1)


def tls_context() -> ssl.SSLContext:
    """The TLS context for `nats+tls://` servers: the system's CAs, or only the PEM file named by
    $FEDMARKET_NATS_CA (a consortium's own CA)."""
    cafile = os.environ.get(ENV_CA)
    if cafile and not os.path.isfile(cafile):
        raise StorageError(f"${ENV_CA}={cafile} is not a file (a PEM file of the CA that signed the NATS server's certificate)")
    try:
        return ssl.create_default_context(cafile=cafile or None)
    except (ssl.SSLError, ValueError) as exc:
        raise StorageError(f"${ENV_CA}={cafile}: not a PEM CA certificate ({exc})") from None


class NatsLink:
    """A connection to a NATS server, used synchronously: the asyncio client runs on its own
    event loop in a daemon thread, and `call` waits for one coroutine there. After the first
    connection the client reconnects by itself for as long as it takes (a restarted server);
    calls made meanwhile fail with a `StorageError` after `timeout` seconds. `nats+tls://`
    connects with TLS, the server's certificate checked against the system's CAs or
    $FEDMARKET_NATS_CA."""

    def __init__(self, url: str, *, timeout: float = 10.0, connect_timeout: float = 5.0):
        parsed = urllib.parse.urlsplit(url)
        scheme = parsed.scheme.lower()
        if scheme not in ("nats", "nats+tls") or not parsed.hostname or parsed.path not in ("", "/"):
            raise StorageError(f"not a NATS server URL: {url!r} (expected nats://HOST:PORT or nats+tls://HOST:PORT)")
        self._tls = tls_context() if scheme == "nats+tls" else None
        self._url = "tls://" + url.split("://", 1)[1] if self._tls else url
        self.url = redacted(url)  # what messages show: never the password
        self.timeout = timeout
        self.last_error: str | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"nats-link {self.url}", daemon=True)
        self._thread.start()
        self._nc = None
        try:
            self._nc = self.call(self._connect(connect_timeout), connect_timeout + 2, "connect")
        except BaseException:
            self._stop_loop()
            raise
        self.js = self._nc.jetstream(timeout=timeout)
        _LINKS.add(self)

    async def _connect(self, connect_timeout: float):
        async def quiet(exc):  # the client logs every reconnect attempt otherwise
            # the server's refusal of the credentials names the problem; the reset of the socket it
            # closes next (seen first or last, depending on the load) must not hide it
            if "authorization" not in (self.last_error or "").lower():
                self.last_error = str(exc) or type(exc).__name__

        nc = await nats.connect(self._url, name="fedmarket", connect_timeout=connect_timeout, allow_reconnect=True,
                                max_reconnect_attempts=2, reconnect_time_wait=0.5, error_cb=quiet, tls=self._tls)
        nc.options["max_reconnect_attempts"] = -1  # connected once: from now on, never give up on the server
        return nc

    @property
    def max_payload(self) -> int:
        return self._nc.max_payload

    def call(self, coro: Coroutine, timeout: float | None = None, what: str = "request") -> Any:
        """Run `coro` on the link's loop and return its result; a NATS failure or no answer within
        `timeout` seconds (default: the link's) is a `StorageError` naming the server."""
        if not self._thread.is_alive():
            coro.close()
            raise StorageUnreachable(f"NATS link to {self.url} is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(self.timeout if timeout is None else timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise StorageUnreachable(f"NATS server {self.url}: no answer to {what} ({self.last_error or 'timed out'})") from None
        except nats.errors.NoServersError:
            why = f" ({self.last_error})" if self.last_error else ""
            raise StorageUnreachable(f"cannot reach NATS server at {self.url}{why}") from None
        except _NATS_ERRORS as exc:
            raise StorageUnreachable(f"NATS server {self.url}: {what} failed: {type(exc).__name__} {exc}".rstrip()) from None

    def close(self) -> None:
        """Close the connection (every post was acknowledged already), stop the loop and join its
        thread (idempotent)."""
        if self._nc is not None and self._thread.is_alive():
            try:
                self.call(self._nc.close(), 5.0, "close")
            except StorageError:
                pass
        self._stop_loop()

    def _stop_loop(self) -> None:
        if self._thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(_cancel_others(), self._loop).result(5.0)
            except (concurrent.futures.TimeoutError, RuntimeError):
                pass
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5.0)
        if not self._loop.is_closed() and not self._loop.is_running():
            self._loop.close()

    def __enter__(self) -> NatsLink:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


async def _cancel_others() -> None:
    """Cancel every other task on this loop (a connection attempt given up on, say) and let them end."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@atexit.register
def _close_links() -> None:
    for link in list(_LINKS):
        link.close()


def subject_of(topic: str) -> str:
    """The subject of a mailbox topic: `fedmarket.mail.` + the topic with `_` written `__` and
    `.` written `_d` (NATS splits subjects at dots; the mapping is one to one)."""
    check_topic(topic)
    return f"{MAIL_SUBJECTS}.{topic.replace('_', '__').replace('.', '_d')}"


async def _ensure_stream(js, **config) -> None:
    try:
        await js.stream_info(config["name"])
    except nats.js.errors.NotFoundError:
        try:
            await js.add_stream(**config)
        except nats.js.errors.BadRequestError:
            await js.stream_info(config["name"])  # created meanwhile by another role: fine if it exists now


class _Topic:
    """What this client has read of one topic: the next stream sequence to look at (in the stream
    created at `created`), the messages in publish order, their CIDs."""

    def __init__(self) -> None:
        self.next_seq = 1
        self.created = None
        self.messages: list[bytes] = []
        self.cids: set[str] = set()


class JetStreamMailbox:
    """The mailbox (`post`/`read` per topic, like `storage.Mailbox`) as a JetStream stream."""

    def __init__(self, url: str, *, link: NatsLink | None = None):
        self.link = link or NatsLink(url)
        self.url = self.link.url
        self._topics: dict[str, _Topic] = {}
        self.link.call(_ensure_stream(
            self.link.js, name=MAIL_STREAM, subjects=[f"{MAIL_SUBJECTS}.>"], storage=nats.js.api.StorageType.FILE,
            duplicate_window=DUPLICATE_WINDOW, allow_direct=True), what="create the mailbox stream")

    def __repr__(self) -> str:
        return f"JetStreamMailbox({self.url!r})"

    def post(self, topic: str, message: bytes) -> str:
        """Publish `message` on `topic` (once: a repeat of the same bytes is dropped); its CID."""
        subject, cid = subject_of(topic), cid_of(message)
        if len(message) > self.link.max_payload:
            raise StorageError(f"mailbox message of {len(message)} bytes exceeds the NATS server's "
                               f"max_payload ({self.link.max_payload} bytes) at {self.url}")
        self.link.call(self._publish(subject, message, f"{topic}/{cid}"), what=f"post on {topic}")
        return cid

    async def _publish(self, subject: str, message: bytes, msg_id: str) -> None:
        """Publish once per message id. Anyone can send any id, so when the server calls a post a
        repeat, the message it kept under that id must be these bytes; if not (someone took the
        id first), the next id (`ID/1`, `ID/2`, ...) is tried, and after a few, none."""
        js = self.link.js
        for attempt in range(ID_ATTEMPTS):
            headers = {"Nats-Msg-Id": msg_id if attempt == 0 else f"{msg_id}/{attempt}"}
            ack = await js.publish(subject, message, stream=MAIL_STREAM, headers=headers)
            if not ack.duplicate:
                return
            try:
                kept = await js.get_msg(MAIL_STREAM, seq=ack.seq, direct=True)
            except nats.js.errors.NotFoundError:
                continue
            if kept.subject == subject and (kept.data or b"") == message:
                return
        await js.publish(subject, message, stream=MAIL_STREAM)

    def read(self, topic: str) -> list[bytes]:
        """Every distinct message posted on `topic`, each once, in publish order."""
        subject = subject_of(topic)
        state = self._topics.setdefault(topic, _Topic())
        return self.link.call(self._catch_up(state, subject), what=f"read {topic}")

    async def _catch_up(self, state: _Topic, subject: str) -> list[bytes]:
        """Read on from `state.next_seq`. At the end, the stream's creation time is checked: a stream
        deleted and made again (anyone on the server can) numbers its messages from 1 again, so the
        topic is read again from the start (what was read before stays, each message once)."""
        while True:
            try:
                msg = await self.link.js.get_msg(MAIL_STREAM, seq=state.next_seq, subject=subject, next=True,
                                                 direct=True)
            except nats.js.errors.NotFoundError:
                try:
                    created = (await self.link.js.stream_info(MAIL_STREAM)).created
                except nats.js.errors.NotFoundError:  # deleted, not made again yet: nothing new to read
                    return list(state.messages)
                if state.created is None or created == state.created:
                    state.created = created
                    return list(state.messages)
                state.created, state.next_seq = created, 1
                continue
            data = msg.data or b""
            cid = cid_of(data)
            if cid not in state.cids:
                state.cids.add(cid)
                state.messages.append(data)
            state.next_seq = msg.seq + 1

    def close(self) -> None:
        self.link.close()


class JetStreamBlobStore(BlobStore):
    """Blobs in the JetStream object store bucket `fedmarket-blobs`, one object per CID (file
    storage). The server is untrusted: `get` checks every blob against its CID."""

    def __init__(self, url: str, *, link: NatsLink | None = None, timeout: float = 120.0):
        self.link = link or NatsLink(url)
        self.url = self.link.url
        self.timeout = timeout
        self._bucket = self.link.call(self._open_bucket(), what="open the blob bucket")

    def __repr__(self) -> str:
        return f"JetStreamBlobStore({self.url!r})"

    async def _open_bucket(self):
        js = self.link.js
        try:
            return await js.object_store(BLOB_BUCKET)
        except nats.js.errors.BucketNotFoundError:
            try:
                return await js.create_object_store(BLOB_BUCKET, storage=nats.js.api.StorageType.FILE)
            except nats.js.errors.BadRequestError:
                return await js.object_store(BLOB_BUCKET)  # created meanwhile by another role

    def put(self, data: bytes) -> str:
        """Store `data` under its CID, unless an object of that name already holds these very
        bytes. The recorded SHA-256 is only metadata, which anyone on the server can publish over
        other chunks: when it matches, the bytes are read back and checked against the CID, and
        an object that does not hold them is written again."""
        cid = cid_of(data)
        digest = "SHA-256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode()
        if self.link.call(self._recorded_digest(cid), what=f"look up {cid}") == digest:
            try:
                self.get_capped(cid, len(data))  # never more than its own length: a stranger's object can be any size
                return cid
            except StorageUnreachable:
                raise
            except StorageError:
                pass  # replaced under honest metadata: write it again
        self.link.call(self._bucket.put(cid, data), self.timeout, f"put {cid}")
        return cid

    def _read(self, cid: str) -> bytes:
        sha256_of_cid(cid)
        return self.link.call(self._get(cid), self.timeout, f"get {cid}")

    def _read_capped(self, cid: str, limit: int) -> bytes:
        sha256_of_cid(cid)
        return self.link.call(self._get(cid, limit), self.timeout, f"get {cid}")

    async def _get(self, cid: str, limit: int | None = None) -> bytes:
        """The object's chunks, read one by one with direct gets (raw bytes, no consumer); with a
        `limit`, no more chunks once past it (the size in the metadata is anyone's word)."""
        try:
            info = await self._bucket.get_info(cid)
        except nats.js.errors.ObjectNotFoundError:
            raise BlobNotFound(f"blob {cid} not found in the NATS object store at {self.url}") from None
        parts, size, seq = [], 0, 1
        chunks = f"$O.{BLOB_BUCKET}.C.{info.nuid}"
        while size < (info.size or 0) and (limit is None or size <= limit):
            try:
                msg = await self.link.js.get_msg(f"OBJ_{BLOB_BUCKET}", seq=seq, subject=chunks, next=True, direct=True)
            except nats.js.errors.NotFoundError:
                break  # fewer bytes than the object claims: the CID check refuses what we have
            parts.append(msg.data or b"")
            size += len(parts[-1])
            seq = msg.seq + 1
        return b"".join(parts)

    def has(self, cid: str) -> bool:
        sha256_of_cid(cid)
        return self.link.call(self._has(cid), what=f"look up {cid}")

    async def _has(self, cid: str) -> bool:
        return await self._recorded_digest(cid) is not None

    async def _recorded_digest(self, cid: str) -> str | None:
        try:
            return (await self._bucket.get_info(cid)).digest or ""
        except nats.js.errors.ObjectNotFoundError:
            return None

    def close(self) -> None:
        self.link.close()
