"""Federated training simulated in one process: client sampling, vectorised local training, attacks, aggregation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from fedmarket.errors import ConfigError
from fedmarket.fl.attacks import Attack
from fedmarket.fl.models import Model
from fedmarket.fl.optim import LocalTraining
from fedmarket.fl.quantize import dequantize, quantize
from fedmarket.fl.strategies.base import Strategy
from fedmarket.fl.train import local_sgd, local_sgd_many, local_train_many


def client_seed(seed: int, round_: int, client: int) -> int:
    """Shuffle seed of one client in one round, derived from the job seed (independent streams)."""
    return int(np.random.SeedSequence([int(seed), int(round_), int(client)]).generate_state(1, np.uint64)[0])


def sample_clients(n_clients: int, fraction: float, seed: int, round_: int) -> np.ndarray:
    """The sorted ids of the ``max(1, round(fraction * n_clients))`` clients taking part in a round."""
    m = max(1, int(round(fraction * n_clients)))
    if m >= n_clients:
        return np.arange(n_clients)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(round_), 2**31]))
    return np.sort(rng.choice(n_clients, size=m, replace=False))


@dataclass
class FederationResult:
    """What a simulated federation produced.

    Attributes
    ----------
    params : numpy.ndarray
        Final global parameters.
    history : list of tuple
        ``(round, metric)`` for every evaluated round (1-based: after that many rounds).
    rounds : int
        Rounds run (fewer than asked when ``target`` was reached).
    """

    params: np.ndarray
    history: list[tuple[int, float]] = field(default_factory=list)
    rounds: int = 0

    def rounds_to(self, target: float) -> int | None:
        """First evaluated round whose metric reached ``target``, or None."""
        return next((r for r, m in self.history if m >= target), None)


def federate(
    model: Model,
    Xs: Sequence[np.ndarray],
    ys: Sequence[np.ndarray],
    strategy: Strategy,
    *,
    rounds: int,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int = 0,
    fraction: float = 1.0,
    prox_mu: float = 0.0,
    params: np.ndarray | None = None,
    attack: Attack | None = None,
    malicious: Sequence[int] = (),
    root_data: tuple[np.ndarray, np.ndarray] | None = None,
    quantized: bool = False,
    evaluate: Callable[[np.ndarray], float] | None = None,
    eval_every: int = 1,
    target: float | None = None,
    training: LocalTraining | None = None,
    seeds: Callable[[int, int], int] | None = None,  # seeds(round, client): each client's seed (default client_seed)
) -> FederationResult:
    """Simulate ``rounds`` rounds of federated training.

    Each round a seeded sample of clients trains from the global model
    (all of them at once when the model allows, see
    :func:`~fedmarket.fl.train.local_sgd_many`); the malicious ones among
    them apply ``attack`` (their data was poisoned once, before round 1);
    the strategy turns the deltas, weighted by sample count, into the next
    global model. Pure computation: no I/O.

    Parameters
    ----------
    model : Model
        The model trained.
    Xs, ys : sequence of numpy.ndarray
        Each client's features and labels.
    strategy : Strategy
        Aggregation rule (its state is reset first).
    rounds, epochs, batch_size, lr, prox_mu
        Rounds, and local training as in :func:`~fedmarket.fl.train.local_sgd`.
    seed : int, optional
        Job seed: client sampling, local shuffles and attacks derive from it.
    fraction : float, optional
        Fraction ``C`` of clients sampled per round, in ``(0, 1]``.
    params : numpy.ndarray, optional
        Initial global parameters (default ``model.init_params()``).
    attack : Attack, optional
        What the ``malicious`` clients do.
    malicious : sequence of int, optional
        Ids of the malicious clients.
    root_data : tuple of numpy.ndarray, optional
        The server's clean root set ``(X, y)``; when given, the server trains
        on it each round like a client and passes that delta to the strategy
        as ``server_update`` (FLTrust needs it).
    quantized : bool, optional
        Send updates as fixed-point integers and aggregate them with the
        strategy's exact integer rule (``aggregate_int``), as the market does;
        the global model is then kept as integers too.
    evaluate : callable, optional
        ``evaluate(params) -> float`` (e.g. test accuracy), run every
        ``eval_every`` rounds and after the last.
    target : float, optional
        Stop as soon as an evaluation reaches it.
    training, seeds : LocalTraining and callable, optional
        Local training (:func:`~fedmarket.fl.train.local_train`) instead of the plain-SGD settings.

    Returns
    -------
    FederationResult
    """
    is_mal = _check_federation(len(Xs), len(ys), rounds, fraction, eval_every, malicious, attack)
    Xs, ys = _poison_data(model, Xs, ys, attack, is_mal, seed)
    strategy.reset()
    hp = dict(epochs=epochs, batch_size=batch_size, lr=lr, prox_mu=prox_mu)
    job = _Federation(model, Xs, ys, strategy, seed, fraction, hp, is_mal, attack, root_data, training, seeds)
    start = model.init_params() if params is None else np.array(params, dtype=np.float64, copy=True)
    return job.run(start, int(rounds), quantized=quantized, evaluate=evaluate, eval_every=eval_every, target=target)


@dataclass
class _Federation:
    """The fixed setup of one simulated federation (arguments of :func:`federate` already validated)."""

    model: Model
    Xs: list[np.ndarray]  # the malicious clients' data already poisoned
    ys: list[np.ndarray]
    strategy: Strategy
    seed: int
    fraction: float
    hp: dict  # local training: epochs, batch_size, lr, prox_mu
    is_mal: np.ndarray
    attack: Attack | None
    root_data: tuple[np.ndarray, np.ndarray] | None
    training: LocalTraining | None = None
    seeds: Callable[[int, int], int] | None = None

    def run(
        self,
        params: np.ndarray,
        rounds: int,
        *,
        quantized: bool,
        evaluate: Callable[[np.ndarray], float] | None,
        eval_every: int,
        target: float | None,
    ) -> FederationResult:
        """The rounds of :func:`federate` from the global parameters ``params``."""
        sizes = np.array([len(y) for y in self.ys], dtype=np.int64)
        q_params = quantize(params) if quantized else None
        if quantized:
            params = dequantize(q_params)
        result = FederationResult(params)
        for r in range(rounds):
            chosen = sample_clients(len(self.Xs), self.fraction, self.seed, r)
            P, server_update = self.updates(params, chosen, r)
            weights = sizes[chosen]
            if quantized:
                q_params = q_params + self.strategy.aggregate_int(list(quantize(P)), [int(w) for w in weights])
                params = dequantize(q_params)
            else:
                params = self.strategy.step(params, P, weights, server_update=server_update)
            result.params, result.rounds = params, r + 1
            if evaluate is not None and ((r + 1) % eval_every == 0 or r + 1 == rounds):
                metric = float(evaluate(params))
                result.history.append((r + 1, metric))
                if target is not None and metric >= target:
                    break
        return result

    def updates(self, params: np.ndarray, chosen: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Round ``r``'s deltas of the ``chosen`` clients, malicious rows attacked.

        Returns them, ``(len(chosen), n_params)``, with the server's delta on
        its root set (None without root data).
        """
        seed_of = self.seeds or (lambda r_, k: client_seed(self.seed, r_, k))
        seeds = [seed_of(r, int(k)) for k in chosen]
        Xs, ys = [self.Xs[k] for k in chosen], [self.ys[k] for k in chosen]
        if self.training is not None:
            P = local_train_many(self.model, params, Xs, ys, self.training, seeds=seeds, round_=r)
        else:
            P = local_sgd_many(self.model, params, Xs, ys, seeds=seeds, **self.hp)
        P -= params  # the deltas, in place
        mal_rows = np.flatnonzero(self.is_mal[chosen])
        if mal_rows.size:
            atk_rng = np.random.default_rng(np.random.SeedSequence([int(self.seed), r, 2**32 - 2]))
            if self.attack.omniscient:  # it sees the honest updates of the round and the rule
                honest = np.delete(P, mal_rows, axis=0)
                P[mal_rows] = self.attack.craft(P[mal_rows], honest, len(chosen), atk_rng, self.strategy.aggregate)
            else:
                P[mal_rows] = self.attack.poison_updates(P[mal_rows], len(chosen), atk_rng)
        if self.root_data is None:
            return P, None
        server_seed = client_seed(self.seed, r, 2**31 - 1)
        return P, local_sgd(self.model, params, *self.root_data, seed=server_seed, **self.hp) - params


def _check_federation(
    K: int,
    n_label_sets: int,
    rounds: int,
    fraction: float,
    eval_every: int,
    malicious: Sequence[int],
    attack: Attack | None,
) -> np.ndarray:
    """Validate the arguments of :func:`federate`; return the boolean ``(K,)`` mask of malicious clients."""
    if K == 0 or n_label_sets != K:
        raise ConfigError(f"need one label set per client, got {K} feature sets and {n_label_sets} label sets")
    if isinstance(rounds, bool) or int(rounds) != rounds or rounds < 1:
        raise ConfigError(f"rounds must be a positive integer, got {rounds!r}")
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"fraction must lie in (0, 1], got {fraction!r}")
    if isinstance(eval_every, bool) or int(eval_every) != eval_every or eval_every < 1:
        raise ConfigError(f"eval_every must be a positive integer, got {eval_every!r}")
    malicious = [int(i) for i in malicious]
    bad = sorted(set(malicious) - set(range(K)))
    if bad:
        raise ConfigError(f"malicious client ids {bad} are not in [0, {K})")
    if malicious and attack is None:
        raise ConfigError("malicious clients given without an attack")
    is_mal = np.zeros(K, dtype=bool)
    is_mal[malicious] = True
    return is_mal


def _poison_data(
    model: Model,
    Xs: Sequence[np.ndarray],
    ys: Sequence[np.ndarray],
    attack: Attack | None,
    is_mal: np.ndarray,
    seed: int,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Every client's data, the malicious clients' poisoned once by ``attack`` (inputs not modified)."""
    Xs, ys = list(Xs), list(ys)
    if attack is not None:
        data_rng = np.random.default_rng(np.random.SeedSequence([int(seed), 2**32 - 1]))
        for k in np.flatnonzero(is_mal):
            Xs[k], ys[k] = attack.poison_data(Xs[k], ys[k], model.n_classes, data_rng)
    return Xs, ys
