"""The dashboard's web application (Starlette + Jinja2) and the service behind it: the indexer
running in a thread, the blob store documents are read from, the accuracy of each committed
model on a held-out set, and server-sent events that tell open pages when new events arrived."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..chain.rpc_backend import RpcChain
from ..errors import BlobTooLarge, FedMarketError, StorageError, StorageUnreachable
from ..protocol.encoding import BAD_INPUT, untrusted_json
from ..spec import MAX_SPEC_BYTES
from . import views
from .indexer import Indexer, connect_db

TEMPLATES = Path(__file__).resolve().parent / "templates"

#: the largest document (a round's metrics, a job's rewards) a page reads from the store: a large
#: job's are a few MB; a bigger one shows as "no data"
DOCUMENT_MAX_BYTES = 16 * 2**20
#: how many bytes of parsed documents (counted as their source size: parsed, a few times more) stay cached
DOCUMENT_CACHE_BYTES = 16 * 2**20
#: how many store reads (documents, specs, /blob) run at once: each holds a blob in memory
STORE_READS = 4


#: uvicorn's bounds on what a client sends before the app sees it: h11 (its httptools parser would
#: buffer headers without limit) with request lines and headers of at most 16 kB, at most this
#: many connections and tasks at once (then 503; every open page holds one event stream), idle
#: keep-alive connections closed after 5 s
HTTP_LIMITS = {"http": "h11", "h11_max_incomplete_event_size": 16 * 1024, "limit_concurrency": 256,
               "timeout_keep_alive": 5}


class DocumentCache:
    """Parsed documents by content id (the same bytes forever), least recently used out first,
    bounded by the total size of their sources. Outcomes that can change (a blob not in the store
    yet, a store that did not answer) are not kept."""

    def __init__(self, budget: int = DOCUMENT_CACHE_BYTES, entries: int = 1024):
        self.budget, self.entries = budget, entries
        self.items: OrderedDict[str, tuple[object, int]] = OrderedDict()
        self.size = 0
        self.lock = threading.Lock()

    def get(self, cid: str):
        with self.lock:
            hit = self.items.get(cid)
            if hit is not None:
                self.items.move_to_end(cid)
            return hit

    def put(self, cid: str, value, size: int) -> None:
        with self.lock:
            if cid in self.items or size > self.budget:
                return
            self.items[cid] = (value, size)
            self.size += size
            while self.size > self.budget or len(self.items) > self.entries:
                _, (_, gone) = self.items.popitem(last=False)
                self.size -= gone


class Dashboard:
    """The indexer, its database and what pages need, for one deployment."""

    def __init__(self, rpc: str, addresses: dict, db_path: str | Path, *, store: str | None = None,
                 test: tuple[np.ndarray, np.ndarray] | None = None, poll: float = 0.2,
                 log=lambda m: print(m, file=sys.stderr, flush=True)):
        from ..storage import open_store

        self.chain = RpcChain(rpc)
        self.indexer = Indexer(self.chain, addresses, db_path)
        self.db_path = str(db_path)
        self.store = open_store(store) if store else None
        self.test = test
        self.poll = poll
        self.log = log
        self.stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._local = threading.local()
        # verified specs and documents, cached for this dashboard only (a cache on the method would
        # keep every Dashboard alive for the process's lifetime); both keyed by content, so a reorg
        # that changes a job's spec_cid or a round's metrics hash finds other entries
        self._specs: dict[tuple[str, str], object] = {}
        self.documents = DocumentCache()
        self.reads = threading.BoundedSemaphore(STORE_READS)
        self._failed_accuracy: set[tuple[int, int]] = set()
        self._reorgs = 0

    # ---- background work ----------------------------------------------------------------
    def start(self) -> None:
        """Catch up once (so the first page is complete), then follow the chain in a thread."""
        self.step()
        self._thread = threading.Thread(target=self._loop, name="fedmarket-indexer", daemon=True)
        self._thread.start()

    def step(self) -> int:
        n = self.indexer.sync()
        if self.indexer.reorgs != self._reorgs:  # rounds that failed may be other rounds now
            self._reorgs = self.indexer.reorgs
            self._failed_accuracy.clear()
        if self.store is not None and self.test is not None:
            self._accuracy()
        return n

    def _loop(self) -> None:
        last_error = None
        while not self.stop.is_set():
            try:
                self.step()
                last_error = None
            except Exception as exc:
                msg = f"indexer: {type(exc).__name__}: {exc}"
                if msg != last_error:
                    self.log(msg + " (retrying)")
                last_error = msg
                self.chain.reconnect()
            self.stop.wait(self.poll)

    def close(self) -> None:
        self.stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.indexer.close()

    def _accuracy(self) -> None:
        """Test accuracy of every committed model not measured yet (on the `--test` set)."""
        db = self.indexer.db
        todo = db.execute("SELECT e.job_id, e.round, e.args FROM events e LEFT JOIN accuracy a ON a.job_id = e.job_id "
                          "AND a.round = e.round WHERE e.name = 'RoundCommitted' AND a.accuracy IS NULL").fetchall()
        for job_id, round_, args in todo:
            if (job_id, round_) in self._failed_accuracy:
                continue
            try:
                acc = self._evaluate(job_id, json.loads(args))
            except FedMarketError as exc:
                self._failed_accuracy.add((job_id, round_))
                self.log(f"job {job_id} round {round_}: no accuracy ({exc})")
                continue
            with self.indexer.lock, db:
                db.execute("INSERT OR REPLACE INTO accuracy VALUES (?, ?, ?)", (job_id, round_, acc))
            self.indexer.version += 1

    def _evaluate(self, job_id: int, args: dict) -> float:
        from ..fl.quantize import dequantize
        from ..roles.common import CommittedRound, fetch_model

        spec = self.spec(job_id)
        h = lambda k: bytes.fromhex(args[k][2:])
        committed = CommittedRound(int(args["round"]), h("model_root"), h("updates_root"), int(args["count"]),
                                   h("metrics_hash"), int(args["epsilon_spent"]), h("aux_root"), h("next_seed"), 0)
        X, y = self.test
        return float(spec.make_model().accuracy(dequantize(fetch_model(self.store, spec, committed)), spec.normalize(X), y))

    def _posted(self, job_id: int, db=None) -> dict:
        row = (db or self.indexer.db).execute("SELECT args FROM events WHERE job_id = ? AND name = 'JobPosted'",
                                              (job_id,)).fetchone()
        if row is None:
            raise FedMarketError(f"job {job_id} is not indexed")
        return json.loads(row[0])

    def spec(self, job_id: int, db=None):
        """The job's spec from the store, checked as the roles check it (`roles.common.load_spec`):
        it hashes to the spec_hash the job committed to, and its bytes are its canonical form.
        ProtocolViolation when the blob its spec_cid names is another document."""
        posted = self._posted(job_id, db)
        return self._verified_spec(str(posted["spec_cid"]), str(posted["spec_hash"]), job_id)

    def _verified_spec(self, spec_cid: str, spec_hash: str, job_id: int):
        from ..roles.common import ProtocolViolation, committed_spec

        key = (spec_cid, spec_hash)
        known = self._specs.get(key)
        if known is None:
            try:
                with self.reading():
                    raw = self.store.get_capped(spec_cid, MAX_SPEC_BYTES)  # what every role reads
                known = committed_spec(raw, bytes.fromhex(spec_hash.removeprefix("0x")), f"spec {spec_cid}")
            except BlobTooLarge as exc:
                known = ProtocolViolation(str(exc))
            except StorageError:
                raise  # not in the store (yet), or the store did not answer: asked again next time
            except FedMarketError as exc:  # not a spec, or another one: these bytes never change
                known = ProtocolViolation(str(exc))
            if len(self._specs) >= 1024:
                self._specs.clear()
            self._specs[key] = known
        if isinstance(known, Exception):
            raise ProtocolViolation(f"job {job_id}: {known}")
        return known

    def spec_status(self, job_id: int) -> dict:
        """Whether the job page may link its spec_cid as the job's spec: status "verified" (it is
        the committed spec), "mismatch" (another document: the page warns), or "unverified" (no
        store, or the blob cannot be read now), with a one-line note."""
        from ..roles.common import ProtocolViolation

        if self.store is None:
            return {"status": "unverified", "note": "this dashboard has no blob store to check it against"}
        try:
            self.spec(job_id, self.db)
        except ProtocolViolation as exc:
            return {"status": "mismatch", "note": str(exc)}
        except FedMarketError as exc:
            return {"status": "unverified", "note": str(exc)}
        return {"status": "verified", "note": "matches the spec hash committed on chain"}

    # ---- what pages read ----------------------------------------------------------------
    @property
    def db(self):
        """A read connection per thread (pages are rendered in a thread pool)."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = connect_db(self.db_path)
        return db

    @contextlib.contextmanager
    def reading(self, wait: float = 30.0):
        """One of the STORE_READS slots for reading a blob; StorageUnreachable if none frees up in time."""
        if not self.reads.acquire(timeout=wait):
            raise StorageUnreachable("the dashboard is busy reading other blobs: try again")
        try:
            yield
        finally:
            self.reads.release()

    def document(self, cid: str):
        """A JSON blob of the store, parsed as untrusted input (`encoding.untrusted_json`: bounded
        size and nesting), or None without a store, or if it is missing, too large or not JSON."""
        if self.store is None:
            return None
        hit = self.documents.get(cid)
        if hit is not None:
            return hit[0]
        try:
            with self.reading():
                raw = self.store.get_capped(cid, DOCUMENT_MAX_BYTES)
                doc = untrusted_json(raw)
        except BlobTooLarge:
            doc, raw = None, b""  # a content id's bytes never change: remembered as "no data"
        except StorageError:
            return None  # missing (yet) or unreachable: asked again next time
        except (FedMarketError, OSError, *BAD_INPUT):
            doc = None  # not JSON, too deep: as permanent as its bytes
            raw = b""
        self.documents.put(cid, doc, max(len(raw), 1))
        return doc


def create_app(dash: Dashboard):
    """The Starlette application serving `dash`."""
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    from .pages import Pages

    pages = Pages(dash, TEMPLATES)

    def page(render):
        def endpoint(request):
            partial = request.headers.get("x-partial") == "1"
            status, html = render(request, partial)
            return HTMLResponse(html, status_code=status)

        return endpoint

    async def events(request):
        async def stream():
            yield "retry: 1000\n\n"
            last = None
            while not dash.stop.is_set():
                now = (dash.indexer.version, dash.indexer.head)  # new events, or just a new block
                if now != last:
                    last = now
                    yield f"data: {json.dumps({'version': now[0], 'head': now[1]})}\n\n"
                await asyncio.sleep(0.05)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def blob(request):
        status, body, media = pages.blob(request.path_params["cid"])
        # anyone writes blobs: never let a browser take one for a page of this origin
        return Response(body, status_code=status, media_type=media,
                        headers={"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox"})

    def api_head(request):
        return JSONResponse({**views.head(dash.db), "head": dash.indexer.head, "version": dash.indexer.version})

    routes = [
        Route("/", page(pages.index)),
        Route("/job/{job_id:int}", page(pages.job)),
        Route("/provider/{address}", page(pages.provider)),
        Route("/tx/{tx}", page(pages.tx)),
        Route("/blob/{cid}", blob),
        Route("/events", events),
        Route("/api/head", api_head),
    ]
    return Starlette(routes=routes)


def serve(dash: Dashboard, host: str, port: int, ready=None) -> None:
    """Serve the dashboard on host:port (0: any free port) until SIGINT or SIGTERM, then stop
    cleanly (open event streams end, the indexer thread stops, exit 0); `ready(url)` is called
    once it listens."""
    import signal
    import socket

    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            dash.stop.set()  # ends the event streams at once, so shutdown needs no timeout
            super().handle_exit(sig, frame)

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        raise FedMarketError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(128)  # connections wait in the backlog until the server accepts them
    url = f"http://{host if ':' not in host else f'[{host}]'}:{sock.getsockname()[1]}"
    config = uvicorn.Config(create_app(dash), log_level="warning", timeout_graceful_shutdown=2, lifespan="off",
                            **HTTP_LIMITS)
    server = Server(config)
    # uvicorn re-raises the signal that stopped it once it is done: let that find a no-op, so a
    # stopped dashboard exits 0 after cleaning up instead of dying by the signal
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    if ready is not None:
        ready(url)
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        dash.close()
        sock.close()
