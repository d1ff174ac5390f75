"""Benchmark: messages and blobs through a NATS JetStream server (what role processes on
different machines use: `--mailbox/--store nats://...`) against a directory on this machine
(`Mailbox`, `LocalBlobStore`: what roles on one machine use), in the same run; prints one JSON
object.

A real `nats-server -js` is started on 127.0.0.1 with file storage in a temporary directory.
Each figure is the median and the worst of `--repeats` runs on fresh random bytes: a post, a
read of an up-to-date topic (what a role's poll costs), a cold read of a topic of 50 messages
by a new client (what a restarted role does), a blob put and a verified get of 1 KB, 1 MB and
10 MB. Loopback only: this measures the client, the server and the disk, not a network.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path


def timed(fn, repeats: int) -> dict:
    """Median and worst seconds of `fn(i)` over `repeats` calls."""
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return {"median_ms": round(statistics.median(times) * 1000, 3), "worst_ms": round(max(times) * 1000, 3)}


def measure(box, store, open_box, repeats: int) -> dict:
    """Every figure for one (mailbox, blob store) pair; `open_box()` opens a fresh client."""
    out = {"post_1kb": timed(lambda i: box.post(f"post-{i}", os.urandom(1024)), repeats)}
    for i in range(50):
        box.post("full", os.urandom(600))
    box.read("full")
    out["read_uptodate_50"] = timed(lambda i: box.read("full"), repeats)

    def cold(_):
        fresh = open_box()
        assert len(fresh.read("full")) == 50
        fresh.close()

    out["read_cold_50"] = timed(cold, repeats)
    for label, size in (("1kb", 1024), ("1mb", 1 << 20), ("10mb", 10 << 20)):
        blobs = [os.urandom(size) for _ in range(repeats)]
        cids = []
        out[f"blob_put_{label}"] = timed(lambda i: cids.append(store.put(blobs[i])), repeats)
        out[f"blob_get_{label}"] = timed(lambda i: store.get(cids[i]), repeats)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    from fedmarket.storage import LocalBlobStore, Mailbox
    from fedmarket.storage.jetstream import JetStreamBlobStore, JetStreamMailbox
    from fedmarket.testing.natsserver import NatsServer

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        with NatsServer(Path(tmp) / "nats") as server:
            start_ms = (time.perf_counter() - t0) * 1000
            box, store = JetStreamMailbox(server.url), JetStreamBlobStore(server.url)
            try:
                nats = measure(box, store, lambda: JetStreamMailbox(server.url), args.repeats)
            finally:
                box.close()
                store.close()
        local = measure(Mailbox(Path(tmp) / "mail"), LocalBlobStore(Path(tmp) / "blobs"),
                        lambda: Mailbox(Path(tmp) / "mail"), args.repeats)
    ratios = {k: round(nats[k]["median_ms"] / max(local[k]["median_ms"], 1e-3), 2) for k in nats}
    print(json.dumps({"transport": "nats-jetstream", "server_start_ms": round(start_ms, 1), "repeats": args.repeats,
                      "nats": nats, "directory": local, "nats_over_directory_median": ratios}))


if __name__ == "__main__":
    main()
