"""`fedmarket broker check URL`: can this machine use the NATS JetStream server the job's roles
share (`--store`/`--mailbox nats://...`)? Run it on each machine before starting a role."""

from __future__ import annotations

import time

import typer

from ..errors import ConfigError
from .app import app

broker_app = typer.Typer(no_args_is_help=True, help="The NATS JetStream server that carries the roles' messages and blobs.")
app.add_typer(broker_app, name="broker")


@broker_app.command("check")
def broker_check(url: str = typer.Argument(..., help="The server, nats://HOST:4222 (nats+tls://HOST:4222 with TLS).")) -> None:
    """Connect, create the mailbox stream and the blob bucket if they are missing, store and read
    back a probe blob (checked against its CID), and print what the server holds."""
    from ..storage import is_nats
    from ..storage.jetstream import BLOB_BUCKET, MAIL_STREAM, JetStreamBlobStore, JetStreamMailbox

    if not is_nats(url):
        raise ConfigError(f"not a NATS server URL: {url!r} (expected nats://HOST:PORT or nats+tls://HOST:PORT)")
    box = JetStreamMailbox(url)
    store = JetStreamBlobStore(url, link=box.link)
    try:
        probe = b"fedmarket broker check"
        t0 = time.perf_counter()
        store.get(store.put(probe))  # checked against its CID
        blob_ms = (time.perf_counter() - t0) * 1000
        info = box.link.call(box.link.js.stream_info(MAIL_STREAM), what="stream info")
    finally:
        box.close()
    storage = getattr(info.config.storage, "value", info.config.storage)
    print(f"{box.url}: JetStream ok; mailbox stream {MAIL_STREAM} holds {info.state.messages} message(s) "
          f"({storage} storage); blob bucket {BLOB_BUCKET}: probe blob put and read back "
          f"in {blob_ms:.1f} ms")
