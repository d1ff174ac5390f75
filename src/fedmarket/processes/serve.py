"""`fedmarket serve` as a process: the model server over HTTP on 127.0.0.1, settling usage once per period.

- ``GET /info``: the job, the listed model root, the server's address, the model market, the chain id.
- ``POST /query`` with ``{"features": [...], "count": N, "signature": "0x..."}``: the signature is the
  caller's ``Usage(jobId, server, N)`` with N its cumulative count at this server; the reply is the
  class, its label, the fixed-point input it answers and the server's ``Answer`` signature.
  A refused query is a 402 (no credit) or 400 (anything else) with a one-line error.

Every ``period`` seconds (and once more on shutdown) the latest receipt of each caller with
unsettled queries goes into one ``settle_usage`` transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ..errors import FedMarketError
from ..roles.server import ModelServer, QueryRefused


def server_app(server: ModelServer, period: float, say=print) -> Starlette:
    """The HTTP app of one model server; its lifespan runs the settlement loop."""

    async def info(request: Request) -> JSONResponse:
        return JSONResponse({"job_id": server.job_id, "model_root": "0x" + server.trained.model_root.hex(),
                             "server": server.address, "model_market": server.mm.address, "chain_id": server.chain_id,
                             "classes": server.classes, "linear_shape": list(server.shape)})

    async def query(request: Request) -> JSONResponse:
        try:
            doc = await request.json()
            features, count, sig = doc["features"], int(doc["count"]), bytes.fromhex(str(doc["signature"]).removeprefix("0x"))
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": "a query is {features: [...], count: N, signature: 0x...}"}, status_code=400)
        try:
            reply = await run_in_threadpool(server.answer, features, count, sig)
        except QueryRefused as exc:
            return JSONResponse({"error": str(exc)}, status_code=402 if "credit" in str(exc) else 400)
        except ValueError as exc:
            return JSONResponse({"error": f"bad features: {exc}"}, status_code=400)
        return JSONResponse(reply.doc())

    async def settle_once() -> None:
        try:
            for receipt in await run_in_threadpool(server.settle):
                ev = receipt.event("UsageSettled")
                say(f"settled {ev['queries']} queries of {ev['callers']} callers for {ev['amount']} base units "
                    f"(tx {receipt.tx_hash}, {receipt.gas_used} gas)")
        except FedMarketError as exc:  # a failed settlement keeps its receipts for the next period
            say(f"settlement failed, retrying next period: {exc}")

    async def settle_loop() -> None:
        while True:
            await asyncio.sleep(period)
            await settle_once()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        task = asyncio.create_task(settle_loop())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await settle_once()

    return Starlette(routes=[Route("/info", info), Route("/query", query, methods=["POST"])], lifespan=lifespan)


def serve(server: ModelServer, port: int, period: float, say=print) -> None:
    """Run the server on 127.0.0.1:`port` until SIGTERM/SIGINT (then settle what is pending and exit)."""
    import uvicorn

    config = uvicorn.Config(server_app(server, period, say), host="127.0.0.1", port=port, log_level="warning",
                            lifespan="on")
    say(f"serving job {server.job_id} (model root 0x{server.trained.model_root.hex()}) on http://127.0.0.1:{port}")
    # uvicorn shuts down gracefully on SIGTERM/SIGINT and then raises the signal again for the
    # handler it found: a no-op one makes that shutdown an exit 0, as for every role process
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    uvicorn.Server(config).run()
