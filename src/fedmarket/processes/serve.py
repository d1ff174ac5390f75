"""`fedmarket serve` as a process: the model server over HTTP on 127.0.0.1, settling usage once per period.

- ``GET /info``: the job, the listed model root, the server's address, the model market, the chain id.
- ``GET /usage?caller=0x...``: the caller's last receipts here (credits' count, tab's queries and
  spent, access count), for a client that keeps no state to sign its next one.
- ``POST /query`` with ``{"features": [...], "count": N, "signature": "0x..."}``: the signature is the
  caller's ``Usage(jobId, server, N)`` with N its cumulative count at this server; the reply is the
  class, its label, the fixed-point input it answers and the server's ``Answer`` signature.
  A refused query is a 402 (no credit) or 400 (anything else) with a one-line error; a body over
  MAX_QUERY_BYTES is a 413, read no further (the body is parsed as untrusted JSON: bounded size
  and nesting, `encoding.untrusted_json`, before anything else looks at it).

A query paid from a tab (`roles.tabs`) adds ``"spent": S`` and signs ``Tab(jobId, server, N, S)``; a
holder of time-bound access (a server started with ``--access``) adds ``"access": true`` and signs
``AccessQuery(jobId, server, N)`` with N rising.

Every ``period`` seconds (and once more on shutdown) the latest receipt of each caller with
unsettled queries goes into one ``settle_usage`` transaction, and the tabs' usage root is
answered for, made final when due, and the next one posted (`TabBook.step`).

Proving (`prepare_proofs`, before the server stakes), the server builds its circuit kit
(`zkml.build_kit`, kept in its state directory for the next start) and offers the verifier for the
job's validators to attest (`roles.proofs`); the app registers it once a majority attested, and
answers a query with ``"prove": true`` with a proof that the registered verifier checks on chain.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from dataclasses import dataclass
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ..errors import FedMarketError
from ..protocol.encoding import BAD_INPUT, untrusted_json
from ..roles.server import ModelServer, QueryRefused

#: the largest /query body read (a query is a feature vector: a few kB to a few hundred kB)
MAX_QUERY_BYTES = 2**20
#: uvicorn's bounds on what a client sends before the app sees it: h11 (its httptools parser would
#: buffer headers without limit) with request lines and headers of at most 16 kB, at most this
#: many connections and tasks at once (then 503), idle keep-alive connections closed after 5 s
HTTP_LIMITS = {"http": "h11", "h11_max_incomplete_event_size": 16 * 1024, "limit_concurrency": 128,
               "timeout_keep_alive": 5}
QUERY_FORMAT = "a query is {features: [...], count: N, signature: 0x..., prove: false} (and spent: S on a tab, or access: true)"


class BodyTooLarge(Exception):
    pass


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body, BodyTooLarge once it passes `limit` bytes (by its Content-Length,
    before reading any, or while it arrives)."""
    declared = request.headers.get("content-length", "")
    if declared.strip().isdigit() and int(declared) > limit:
        raise BodyTooLarge
    parts, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        parts.append(chunk)
    return b"".join(parts)


@dataclass
class Proving:
    """A proving server's offer of its verifier (`roles.proofs.publish_verifier`) and the job's
    mailbox, where the validators' attestations arrive."""

    offer: dict
    box: object  # storage.Mailbox
    poll: float = 2.0


def prepare_proofs(server: ModelServer, kit_dir: Path, store, box, poll: float, say=print, srs: Path | None = None) -> Proving:
    """Build (or reuse) the circuit kit in `kit_dir` (on `srs`, else a test SRS generated here), give
    it to the server and offer its verifier."""
    from ..roles.proofs import publish_verifier
    from ..zkml import Kit, build_kit

    kit, root = Kit(kit_dir), server.trained.model_root.hex()
    built = kit.path("model-root")
    if not (built.is_file() and built.read_text() == root and kit.path("Verifier.bin-runtime").is_file()):
        say("building the circuit of the model (settings, keys, verifier)")
        if srs is None:
            say("no --srs: generating a structured reference string here, for testing only")
        kit = build_kit(server.trained, kit_dir, srs=srs)
        built.write_text(root)
    offer = publish_verifier(server.dep, server.account, store, box, server.job_id, kit)
    server.kit = kit
    say(f"proving answers; verifier {offer['verifier']} offered to the job's validators")
    return Proving(offer, box, poll)


def settle_period(server: ModelServer, say=print) -> None:
    """One period's settlement: the credits' receipts in `settle_usage` batches, then the tabs'
    usage root (answered, finalized, posted). A failure keeps the receipts for the next period."""
    try:
        for receipt in server.settle():
            ev = receipt.event("UsageSettled")
            say(f"settled {ev['queries']} queries of {ev['callers']} callers for {ev['amount']} base units "
                f"(tx {receipt.tx_hash}, {receipt.gas_used} gas)")
    except FedMarketError as exc:
        say(f"settlement failed, retrying next period: {exc}")
    if server.tabs is None:
        return
    try:
        for line in server.tabs.step():
            say(line)
    except FedMarketError as exc:
        say(f"posting tab usage failed, retrying next period: {exc}")


async def query_args(request: Request) -> tuple | JSONResponse:
    """(features, count, signature, prove, spent, access) of a `/query` request, or the error
    response: 413 past MAX_QUERY_BYTES (read no further), 400 for a body that is not the query's
    JSON (parsed as untrusted input: bounded nesting, finite numbers)."""
    try:
        body = await read_body(request, MAX_QUERY_BYTES)
    except BodyTooLarge:
        return JSONResponse({"error": f"a query is at most {MAX_QUERY_BYTES} bytes"}, status_code=413)
    try:
        doc = untrusted_json(body)
    except BAD_INPUT as exc:  # MalformedMessage: not JSON, too deep, a number out of range
        return JSONResponse({"error": f"{QUERY_FORMAT}: {str(exc).splitlines()[0][:200]}"}, status_code=400)
    try:
        return (doc["features"], int(doc["count"]), bytes.fromhex(str(doc["signature"]).removeprefix("0x")),
                bool(doc.get("prove", False)), None if doc.get("spent") is None else int(doc["spent"]),
                bool(doc.get("access", False)))
    except BAD_INPUT:
        return JSONResponse({"error": QUERY_FORMAT}, status_code=400)


def server_app(server: ModelServer, period: float, say=print, proving: Proving | None = None) -> Starlette:
    """The HTTP app of one model server; its lifespan runs the settlement loop (and, proving, the
    verifier's publication and registration)."""

    async def info(request: Request) -> JSONResponse:
        from ..zkml import input_scale

        doc = {"job_id": server.job_id, "model_root": "0x" + server.trained.model_root.hex(),
               "server": server.address, "model_market": server.mm.address, "chain_id": server.chain_id,
               "classes": server.classes, "linear_shape": list(server.shape), "proofs": server.kit is not None,
               "verifier": server.mm.call("verifier", server.job_id)}
        if server.kit is not None:
            doc["input_scale"] = input_scale(server.kit)
        return JSONResponse(doc)

    async def usage(request: Request) -> JSONResponse:
        caller = str(request.query_params.get("caller", "")).lower()
        if len(caller) != 42 or not caller.startswith("0x"):
            return JSONResponse({"error": "usage takes ?caller=0x... (an address)"}, status_code=400)
        return JSONResponse(server.usage_of(caller))

    async def query(request: Request) -> JSONResponse:
        args = await query_args(request)
        if isinstance(args, JSONResponse):
            return args
        try:
            reply = await run_in_threadpool(server.answer, *args)
        except QueryRefused as exc:
            return JSONResponse({"error": str(exc)}, status_code=402 if "credit" in str(exc) else 400)
        except BAD_INPUT as exc:  # features that are not a list of numbers
            return JSONResponse({"error": f"bad features: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}"},
                                status_code=400)
        except FedMarketError as exc:  # the prover failed: the query was not charged
            return JSONResponse({"error": f"proving failed: {exc}"}, status_code=503)
        return JSONResponse(reply.doc())

    async def settle_once() -> None:
        await run_in_threadpool(settle_period, server, say)

    async def settle_loop() -> None:
        while True:
            await asyncio.sleep(period)
            await settle_once()

    async def register_loop() -> None:
        from ..roles.proofs import register_verifier

        while server.mm.call("verifier", server.job_id) == "0x" + "0" * 40:
            try:
                receipt = await run_in_threadpool(register_verifier, server.dep, server.account, proving.box,
                                                  server.job_id, proving.offer["verifier"])
                if receipt is not None:
                    say(f"verifier {proving.offer['verifier']} registered (tx {receipt.tx_hash})")
                    break
            except FedMarketError as exc:
                say(f"registering the verifier failed, retrying: {exc}")
            await asyncio.sleep(proving.poll)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        tasks = [asyncio.create_task(settle_loop())]
        if proving is not None:
            tasks.append(asyncio.create_task(register_loop()))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await settle_once()

    return Starlette(routes=[Route("/info", info), Route("/usage", usage), Route("/query", query, methods=["POST"])], lifespan=lifespan)


def serve(server: ModelServer, port: int, period: float, say=print, proving: Proving | None = None) -> None:
    """Run the server on 127.0.0.1:`port` until SIGTERM/SIGINT (then settle what is pending and exit)."""
    import uvicorn

    config = uvicorn.Config(server_app(server, period, say, proving), host="127.0.0.1", port=port, log_level="warning",
                            lifespan="on", **HTTP_LIMITS)
    say(f"serving job {server.job_id} (model root 0x{server.trained.model_root.hex()}) on http://127.0.0.1:{port}")
    # uvicorn shuts down gracefully on SIGTERM/SIGINT and then raises the signal again for the
    # handler it found: a no-op one makes that shutdown an exit 0, as for every role process
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    uvicorn.Server(config).run()
