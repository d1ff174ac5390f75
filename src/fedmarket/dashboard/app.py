"""The dashboard's web application (Starlette + Jinja2) and the service behind it: the indexer
running in a thread, the blob store documents are read from, the accuracy of each committed
model on a held-out set, and server-sent events that tell open pages when new events arrived."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..chain.rpc_backend import RpcChain
from ..errors import FedMarketError
from . import views
from .indexer import Indexer, connect_db

TEMPLATES = Path(__file__).resolve().parent / "templates"


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
        # a verified spec per job, cached for this dashboard only (a cache on the method would keep
        # every Dashboard alive for the process's lifetime)
        self.spec = lru_cache(maxsize=64)(self._spec)
        self._failed_accuracy: set[tuple[int, int]] = set()

    # ---- background work ----------------------------------------------------------------
    def start(self) -> None:
        """Catch up once (so the first page is complete), then follow the chain in a thread."""
        self.step()
        self._thread = threading.Thread(target=self._loop, name="fedmarket-indexer", daemon=True)
        self._thread.start()

    def step(self) -> int:
        n = self.indexer.sync()
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

    def _spec(self, job_id: int):
        from ..roles.common import ProtocolViolation
        from ..spec import JobSpec

        row = self.indexer.db.execute("SELECT args FROM events WHERE job_id = ? AND name = 'JobPosted'", (job_id,)).fetchone()
        if row is None:
            raise FedMarketError(f"job {job_id} is not indexed")
        posted = json.loads(row[0])
        raw = self.store.get(posted["spec_cid"])
        spec = JobSpec.parse(raw)
        if "0x" + spec.hash().hex() != posted["spec_hash"]:
            raise ProtocolViolation(f"job {job_id}: spec {posted['spec_cid']} does not match its committed hash")
        return spec

    # ---- what pages read ----------------------------------------------------------------
    @property
    def db(self):
        """A read connection per thread (pages are rendered in a thread pool)."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = connect_db(self.db_path)
        return db

    def document(self, cid: str):
        """A JSON blob of the store, parsed (None without a store, or if it is missing or not JSON)."""
        if self.store is None:
            return None
        return _document(self.store, cid)


@lru_cache(maxsize=256)
def _document(store, cid: str):
    try:
        return json.loads(store.get(cid))
    except (FedMarketError, ValueError, OSError):
        return None


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
        return Response(body, status_code=status, media_type=media)

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
    config = uvicorn.Config(create_app(dash), log_level="warning", timeout_graceful_shutdown=2, lifespan="off")
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
