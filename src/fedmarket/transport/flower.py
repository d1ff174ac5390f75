"""Flower as the update transport of a market job (optional extra: ``pip install "fedmarket[flower]"``).

One Flower round per market round, over Flower's gRPC server and clients (no Ray, no simulation):

- the server (aggregator side) sends each provider the job, the round and the round's starting
  global model blob (as committed on chain);
- each provider files that blob in its own store (its content id and model root are checked
  against the chain when it trains), trains with the market's `Provider.train`, and answers with
  its signed round message and its update blob;
- the server checks each blob against the content id its signed message names, files both in the
  aggregator's store and mailbox, and lets the aggregator commit the round (`Aggregator.run_round`)
  exactly as it would after collecting from the shared mailbox.

Telemetry and update checks of Flower are switched off before it is imported.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

from ..errors import ConfigError, FedMarketError, StorageError  # noqa: E402
from ..protocol.encoding import canonical_json  # noqa: E402
from ..roles.common import committed_rounds, metrics_cid, round_topic  # noqa: E402
from ..storage import BlobStore, Mailbox, cid_of  # noqa: E402

try:  # noqa: SIM105
    from flwr.common import (  # noqa: E402
        Code,
        EvaluateIns,
        EvaluateRes,
        FitIns,
        FitRes,
        GetParametersIns,
        GetParametersRes,
        Parameters,
        Status,
    )
    from flwr.compat.client.app import start_client as _start_client  # noqa: E402
    from flwr.compat.client.client import Client as _FlowerClient  # noqa: E402
    from flwr.server import ServerConfig, start_server  # noqa: E402
    from flwr.server.strategy import Strategy  # noqa: E402
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ConfigError(f'the Flower transport needs the flower extra: pip install "fedmarket[flower]" ({exc})') from None

BLOB = "fedmarket/blob"
_OK = Status(code=Code.OK, message="")


def _params(*blobs: bytes) -> Parameters:
    return Parameters(tensors=list(blobs), tensor_type=BLOB)


def _round_blobs(store: BlobStore, committed) -> tuple[bytes, bytes]:
    """The blobs a provider needs to start from a committed round: its metrics document (found by
    the hash on chain) and the model it names (checked against the model root when training)."""
    metrics = store.get(metrics_cid(committed.metrics_hash))
    return metrics, store.get(json.loads(metrics)["model_cid"])


class FlowerGateway(Strategy):
    """The aggregator's side: a Flower strategy that relays updates into the market round.

    Parameters
    ----------
    aggregator : fedmarket.roles.Aggregator
        Commits each round once its updates arrived.
    job_id : int
    rounds : int
        Market rounds to run (one Flower round each).
    min_providers : int
        Flower clients to wait for before each round.
    lock : threading.Lock, optional
        Held while touching the chain (for an in-process chain shared with clients).
    on_round : callable, optional
        ``on_round(round_)`` after each commit (validators, attestations, ...).
    """

    def __init__(self, aggregator, job_id: int, rounds: int, min_providers: int,
                 lock: threading.Lock | None = None, on_round: Callable[[int], None] | None = None,
                 connect_timeout: float = 60.0):
        super().__init__()
        self.connect_timeout = connect_timeout
        self.aggregator = aggregator
        self.store: BlobStore = aggregator.store
        self.mailbox: Mailbox = aggregator.mailbox
        self.job_id, self.rounds, self.min_providers = job_id, rounds, min_providers
        self.lock = lock or threading.Lock()
        self.on_round = on_round
        self.rejected: list[str] = []
        self.committed: list[int] = []

    def __repr__(self) -> str:
        return f"FlowerGateway(job={self.job_id})"

    # -- Flower strategy -------------------------------------------------------------------
    def initialize_parameters(self, client_manager):
        return _params()

    def configure_fit(self, server_round, parameters, client_manager):
        r = server_round - 1
        with self.lock:
            done = committed_rounds(self.aggregator.dep, self.job_id)
            blobs = _round_blobs(self.store, done[-1]) if done else ()
        # wait (bounded) for the providers; a round goes on with those connected, like a mailbox round
        client_manager.wait_for(self.min_providers, timeout=self.connect_timeout)
        available = client_manager.num_available()
        if available == 0:
            raise FedMarketError(f"no provider connected within {self.connect_timeout:g} s")
        clients = client_manager.sample(num_clients=available, min_num_clients=1)
        ins = FitIns(_params(*blobs), {"job_id": self.job_id, "round": r})
        return [(c, ins) for c in clients]

    def aggregate_fit(self, server_round, results, failures):
        r = server_round - 1
        for _, res in results:
            try:
                message = json.loads(res.metrics["message"])
                blob = res.parameters.tensors[0]
                if cid_of(blob) != message["update_cid"]:
                    raise StorageError("update blob does not match the content id its signed message names")
                if message.get("job_id") != self.job_id or message.get("round") != r:
                    raise FedMarketError("message for another job or round")
            except (KeyError, IndexError, ValueError, TypeError, FedMarketError) as exc:
                self.rejected.append(str(exc))
                continue
            self.store.put(blob)
            self.mailbox.post(round_topic(self.job_id, r), canonical_json(message))
        with self.lock:
            self.aggregator.run_round(self.job_id, r)
            self.committed.append(r)
            if self.on_round is not None:
                self.on_round(r)
        return None, {"round": r, "updates": len(results)}

    def configure_evaluate(self, server_round, parameters, client_manager):
        return []

    def aggregate_evaluate(self, server_round, results, failures):
        return None, {}

    def evaluate(self, server_round, parameters):
        return None

    # -- running -------------------------------------------------------------------------
    def serve(self, address: str, round_timeout: float | None = 600.0) -> None:
        """Run the job's rounds over Flower on ``address`` (``host:port``); returns when all are committed."""
        start_server(server_address=address, config=ServerConfig(num_rounds=self.rounds, round_timeout=round_timeout),
                     strategy=self)


class FlowerProvider(_FlowerClient):
    """A provider's side: answers each Flower round with the market provider's signed update."""

    def __init__(self, provider, lock: threading.Lock | None = None):
        self.provider = provider
        self.lock = lock or threading.Lock()

    def get_parameters(self, ins: GetParametersIns) -> GetParametersRes:
        return GetParametersRes(status=_OK, parameters=_params())

    def fit(self, ins: FitIns) -> FitRes:
        job_id, r = int(ins.config["job_id"]), int(ins.config["round"])
        for blob in ins.parameters.tensors:  # the last round's metrics and model, checked against the chain when training
            self.provider.store.put(blob)
        with self.lock:
            message = self.provider.train(job_id, r)
        if message is None:  # not selected this round
            return FitRes(status=_OK, parameters=_params(), num_examples=0, metrics={})
        blob = self.provider.store.get(message["update_cid"])
        return FitRes(status=_OK, parameters=_params(blob), num_examples=int(message["weight"]),
                      metrics={"message": canonical_json(message).decode()})

    def evaluate(self, ins: EvaluateIns) -> EvaluateRes:
        return EvaluateRes(status=_OK, loss=0.0, num_examples=0, metrics={})

    def connect(self, address: str, wait: float = 60.0, max_retries: int = 50, max_wait_time: float = 60.0) -> None:
        """Serve the aggregator at ``address`` until it ends the job (blocks). Waits up to ``wait``
        seconds for the aggregator to listen first (Flower's legacy client gives up on a refused connection)."""
        host, _, port = address.rpartition(":")
        deadline = time.monotonic() + wait
        while True:
            try:
                with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=1.0):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise FedMarketError(f"no aggregator listening at {address} after {wait:g} s") from None
                time.sleep(0.1)
        _start_client(server_address=address, client=self, insecure=True, max_retries=max_retries,
                      max_wait_time=max_wait_time)
