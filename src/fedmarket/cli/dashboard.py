"""`fedmarket dashboard`: index a deployment's events into SQLite and serve the web view."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from ..errors import ConfigError
from .app import app, read_addresses


@app.command()
def dashboard(
    rpc: str = typer.Option(..., "--rpc", help="JSON-RPC URL of the chain."),
    contracts: Path = typer.Option(..., "--contracts", help="Addresses file written by `fedmarket deploy` (its block is where indexing starts)."),
    db: Path = typer.Option(Path("fedmarket-index.sqlite"), "--db", help="The index (SQLite); kept across restarts."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (loopback by default)."),
    port: int = typer.Option(8050, "--port", help="Port (0: any free port)."),
    store: str = typer.Option(None, "--store", help="Blob store (directory, nats://... or ipfs+http://...): documents, scores, models."),
    test: Path = typer.Option(None, "--test", help="Held-out data (.npz with X, y): test accuracy of every committed model (needs --store)."),
    poll: float = typer.Option(0.2, "--poll", help="Seconds between two looks at the chain."),
) -> None:
    """Serve a live web view of the deployment's jobs: rounds (accuracy, gas, quorum, selection),
    members (scores, payouts, reputation), disputes, slashes and licence sales, each figure linked
    to its transaction or blob; pages update as blocks arrive."""
    from ..chain.rpc_backend import RpcChain
    from ..dashboard.app import Dashboard, serve
    from ..processes.base import retrying
    from ..storage import is_remote

    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535 (got {port})")
    if not poll > 0:
        raise ConfigError(f"--poll must be positive (got {poll})")
    if test is not None and store is None:
        raise ConfigError("--test needs --store (the models are read from the blob store)")
    if store is not None and not is_remote(store) and not Path(store).is_dir():
        raise ConfigError(f"blob store {store} does not exist")
    if not db.parent.is_dir():
        raise ConfigError(f"directory {db.parent} does not exist")
    addresses = read_addresses(contracts)
    data = None
    if test is not None:
        from .roles import load_npz

        data = load_npz(test, "test data")
    retrying(lambda: RpcChain(rpc), attempts=4)  # the node must answer before anything is served
    dash = Dashboard(rpc, addresses, db, store=store, test=data, poll=poll)
    dash.start()
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"fedmarket: warning: serving on {host}, not loopback: anyone who reaches it sees this index",
              file=sys.stderr)

    def ready(url: str) -> None:
        print(f"dashboard on {url} (index {db}, from block {dash.indexer.start_block})", flush=True)

    serve(dash, host, port, ready)
