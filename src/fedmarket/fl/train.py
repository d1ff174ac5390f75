"""Mini-batch SGD for local (optionally FedProx) and centralised training, one client or many at once."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from fedmarket.errors import ConfigError
from fedmarket.fl.models import Model
from fedmarket.fl.optim import FlatOptimizer, LocalTraining


@dataclass(frozen=True)
class _Hparams:
    """The SGD hyper-parameters of one call, validated and kept as given (see :func:`local_sgd`)."""

    epochs: int
    batch_size: int
    lr: float
    prox_mu: float


def _check_hparams(epochs: int, batch_size: int, lr: float, prox_mu: float) -> _Hparams:
    """Validate the hyper-parameters of :func:`local_sgd` / :func:`local_sgd_many` and bundle them."""
    if isinstance(epochs, bool) or int(epochs) != epochs or epochs < 1:
        raise ConfigError(f"epochs must be a positive integer, got {epochs!r}")
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not np.isfinite(lr) or lr <= 0:
        raise ConfigError(f"learning rate must be a positive number, got {lr!r}")
    if not np.isfinite(prox_mu) or prox_mu < 0:
        raise ConfigError(f"prox_mu must be a non-negative number, got {prox_mu!r}")
    return _Hparams(epochs, batch_size, lr, prox_mu)


def local_sgd(
    model: Model,
    params: np.ndarray,
    X: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    prox_mu: float = 0.0,
) -> np.ndarray:
    """Run mini-batch SGD from ``params`` and return the new parameters.

    Samples are reshuffled at every epoch with a generator seeded by ``seed``;
    the last batch of an epoch may be smaller. With ``prox_mu > 0`` the
    FedProx proximal term ``prox_mu / 2 * ||w - w_global||^2`` is added to the
    objective, ``w_global`` being the ``params`` passed in.

    Parameters
    ----------
    model : Model
        The model whose ``loss_and_grad`` is minimised (any :class:`~fedmarket.fl.models.Model`,
        or any object with ``n_params`` and ``loss_and_grad``, e.g. a
        :class:`~fedmarket.fl.torch_adapter.TorchModel`).
    params : numpy.ndarray
        Starting parameters (not modified).
    X, y : numpy.ndarray
        Local features ``(n, d)`` and labels ``(n,)``, ``n >= 1``.
    epochs : int
        Number of passes over the data, ``>= 1``.
    batch_size : int
        Mini-batch size, ``>= 1``.
    lr : float
        Step size, ``> 0``.
    seed : int
        Seed of the shuffles.
    prox_mu : float, optional
        FedProx coefficient, ``>= 0`` (default 0: plain SGD).

    Returns
    -------
    numpy.ndarray
        New float64 parameter vector.
    """
    _check_hparams(epochs, batch_size, lr, prox_mu)
    w_global = np.array(params, dtype=np.float64, copy=True)
    w = w_global.copy()
    if isinstance(model, Model):
        X = model.check_X(X)
        y = model.check_y(X, y)  # also rejects an empty dataset
        grad_fn = model.grad_fn(model.check_params(w))  # reads w live, checked once here
    else:
        X, y = np.asarray(X), np.asarray(y)
        if X.shape[0] == 0:
            raise ConfigError("no samples given")
        grad_fn = lambda Xb, yb: model.loss_and_grad(w, Xb, yb)  # noqa: E731
    n = X.shape[0]
    bs = int(batch_size)
    rng = np.random.default_rng(seed)
    with threadpool_limits(1, user_api="blas"):  # one thread: the same sums on every machine, and no contention
        for _ in range(int(epochs)):
            perm = rng.permutation(n)
            for s in range(0, n, bs):
                idx = perm[s : s + bs]
                _, g = grad_fn(X[idx], y[idx])
                if prox_mu:
                    g += prox_mu * (w - w_global)
                w -= lr * g
    return w


def local_train(
    model: Model,
    params: np.ndarray,
    X: np.ndarray,
    y: np.ndarray,
    cfg: LocalTraining,
    *,
    seed: int,
    round_: int = 0,
) -> np.ndarray:
    """One client's local training of one round with the job's settings; returns the new parameters.

    A model that trains itself (``model.train_local``, e.g. the PyTorch networks of
    :mod:`fedmarket.fl.torch_models`) does so with its own optimizers; any other runs
    mini-batch training on the flat vector: samples reshuffled every epoch by a generator
    seeded with ``seed`` (the batches :func:`local_sgd` draws), the round's learning rate
    ``cfg.lr_at(round_)``, the job's optimizer (:class:`~fedmarket.fl.optim.FlatOptimizer`)
    and the FedProx term around ``params``. Plain SGD is :func:`local_sgd` itself.

    Parameters
    ----------
    model : Model
        The model trained.
    params : numpy.ndarray
        The global parameters the round starts from (not modified).
    X, y : numpy.ndarray
        Local features and labels.
    cfg : LocalTraining
        The job's local training settings.
    seed : int
        Seed of the shuffles (and of a network's own randomness, such as dropout).
    round_ : int, optional
        The round (sets the learning rate of a schedule).

    Returns
    -------
    numpy.ndarray
        The new float64 parameter vector.
    """
    lr = cfg.lr_at(round_)
    if hasattr(model, "train_local"):
        return model.train_local(params, X, y, cfg, seed=seed, lr=lr)
    if cfg.plain_sgd:
        return local_sgd(model, params, X, y, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=lr, seed=seed,
                         prox_mu=cfg.prox_mu)
    w_global = model.check_params(np.array(params, dtype=np.float64, copy=True))
    X = model.check_X(X)
    y = model.check_y(X, y)
    w = w_global.copy()
    grad_fn = model.grad_fn(w)
    opt = FlatOptimizer(cfg, w, lr)
    n, bs = X.shape[0], int(cfg.batch_size)
    rng = np.random.default_rng(seed)
    with threadpool_limits(1, user_api="blas"):
        for _ in range(int(cfg.epochs)):
            perm = rng.permutation(n)
            for s in range(0, n, bs):
                idx = perm[s : s + bs]
                _, g = grad_fn(X[idx], y[idx])
                if cfg.prox_mu:
                    g += cfg.prox_mu * (w - w_global)
                opt.step(g)
    return w


def local_train_many(
    model: Model,
    params: np.ndarray,
    Xs: Sequence[np.ndarray],
    ys: Sequence[np.ndarray],
    cfg: LocalTraining,
    *,
    seeds: Sequence[int],
    round_: int = 0,
) -> np.ndarray:
    """:func:`local_train` for many clients from the same ``params``: rows ``(K, n_params)``.

    Plain SGD on a model that can train clients together goes through the vectorised
    :func:`local_sgd_many` (the same batches, so the same result up to summation order);
    anything else trains client after client.
    """
    _check_clients(len(Xs), len(ys), len(seeds), None)
    if cfg.plain_sgd and not hasattr(model, "train_local"):
        return local_sgd_many(model, params, Xs, ys, epochs=cfg.epochs, batch_size=cfg.batch_size,
                              lr=cfg.lr_at(round_), seeds=seeds, prox_mu=cfg.prox_mu)
    return np.stack([local_train(model, params, X, y, cfg, seed=s, round_=round_) for X, y, s in zip(Xs, ys, seeds)])


def centralized_train(
    model: Model,
    X: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
) -> np.ndarray:
    """Train from ``model.init_params()`` on all data with the same SGD (baseline).

    Parameters
    ----------
    model : Model
        The model to train.
    X, y : numpy.ndarray
        All training features and labels.
    epochs, batch_size, lr, seed
        As in :func:`local_sgd`.

    Returns
    -------
    numpy.ndarray
        Trained float64 parameter vector.
    """
    return local_sgd(
        model, model.init_params(), X, y, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed
    )


def _schedule(sizes: Sequence[int], seeds: Sequence[int], epochs: int, bs: int) -> np.ndarray:
    """Mini-batch row indices of every client, exactly as :func:`local_sgd` draws them.

    Returns an int64 array ``(K, T, bs)`` of local row indices, ``-1`` for
    padding (short last batches, clients with fewer steps than ``T``).
    """
    steps = [int(epochs) * -(-n // bs) for n in sizes]
    out = np.full((len(sizes), max(steps), bs), -1, dtype=np.int64)
    for k, (n, seed) in enumerate(zip(sizes, seeds)):
        rng = np.random.default_rng(seed)
        per_epoch = -(-n // bs)
        for e in range(int(epochs)):
            padded = np.full(per_epoch * bs, -1, dtype=np.int64)
            padded[:n] = rng.permutation(n)
            out[k, e * per_epoch : (e + 1) * per_epoch] = padded.reshape(per_epoch, bs)
    return out


def local_sgd_many(
    model: Model,
    params: np.ndarray,
    Xs: Sequence[np.ndarray],
    ys: Sequence[np.ndarray],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seeds: Sequence[int],
    prox_mu: float = 0.0,
    blas_threads: int | None = 1,
) -> np.ndarray:
    """Run :func:`local_sgd` for many clients from the same ``params``, vectorised across clients.

    Every client draws the same mini-batches as ``local_sgd`` with its own
    seed, so the result equals running ``local_sgd`` client by client (up to
    floating-point summation order). When the model supports batched
    steps (``model.supports_batched``) all clients take their ``t``-th
    step together, as one stacked matrix product; clients are ordered by their
    number of steps so the ones still training are always a prefix of the
    stack (a view, no copy). Other models fall back to a loop.

    Parameters
    ----------
    model : Model
        The model to train.
    params : numpy.ndarray
        Starting (global) parameters, shape ``(n_params,)`` (not modified).
    Xs, ys : sequence of numpy.ndarray
        Each client's features ``(n_k, d)`` and labels ``(n_k,)``, ``n_k >= 1``.
    epochs, batch_size, lr, prox_mu
        As in :func:`local_sgd`.
    seeds : sequence of int
        One shuffle seed per client.
    blas_threads : int or None, optional
        BLAS threads during the vectorised steps (default 1: the per-step
        products are small, and multi-threaded BLAS on small products can be
        ten times slower on a busy machine); None leaves the setting alone.

    Returns
    -------
    numpy.ndarray
        New parameters, float64, shape ``(K, n_params)``, row ``k`` for client ``k``.

    Raises
    ------
    ConfigError
        On a bad hyper-parameter, mismatched client counts, or a client without data.
    """
    hp = _check_hparams(epochs, batch_size, lr, prox_mu)
    _check_clients(len(Xs), len(ys), len(seeds), blas_threads)
    if not (isinstance(model, Model) and model.supports_batched):
        return np.stack(
            [
                local_sgd(model, params, X, y, epochs=epochs, batch_size=batch_size, lr=lr,
                          seed=s, prox_mu=prox_mu)
                for X, y, s in zip(Xs, ys, seeds)
            ]
        )
    return _local_sgd_batched(model, params, Xs, ys, seeds, hp, blas_threads)


def _check_clients(n_X: int, n_y: int, n_seeds: int, blas_threads: int | None) -> None:
    """Validate the client counts and the BLAS thread setting of :func:`local_sgd_many`."""
    if n_y != n_X or n_seeds != n_X:
        raise ConfigError(f"got {n_X} feature sets, {n_y} label sets and {n_seeds} seeds")
    if n_X == 0:
        raise ConfigError("no clients given")
    if blas_threads is not None and (isinstance(blas_threads, bool) or int(blas_threads) != blas_threads or blas_threads < 1):
        raise ConfigError(f"blas_threads must be a positive integer or None, got {blas_threads!r}")


def _local_sgd_batched(
    model: Model,
    params: np.ndarray,
    Xs: Sequence[np.ndarray],
    ys: Sequence[np.ndarray],
    seeds: Sequence[int],
    hp: _Hparams,
    blas_threads: int | None,
) -> np.ndarray:
    """The vectorised path of :func:`local_sgd_many` (arguments already validated, ``model.supports_batched``)."""
    w_global = model.check_params(np.array(params, dtype=np.float64, copy=True))
    Xs = [model.check_X(X) for X in Xs]
    ys = [model.check_y(X, y) for X, y in zip(Xs, ys)]
    K = len(Xs)
    sizes = np.array([X.shape[0] for X in Xs])
    bs = int(hp.batch_size)
    steps = int(hp.epochs) * -(-sizes // bs)
    order = np.argsort(-steps, kind="stable")  # most steps first: active clients form a prefix
    Xo = [Xs[k] for k in order]
    yo = [ys[k] for k in order]
    sched = _schedule(sizes[order].tolist(), [int(seeds[k]) for k in order], hp.epochs, bs)
    rows, sw, active = _batch_plan(sched, steps[order])
    P = np.tile(w_global, (K, 1))
    Xb = np.empty((K, bs, model.n_features))
    yb = np.empty((K, bs), dtype=np.int64)
    limit = threadpool_limits(blas_threads, user_api="blas") if blas_threads else contextlib.nullcontext()
    with limit:
        _steps(model, P, w_global, Xo, yo, rows, sw, active, Xb, yb, hp.lr, hp.prox_mu)
    out = np.empty_like(P)
    out[order] = P
    return out


def _batch_plan(sched: np.ndarray, steps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gather rows, sample weights and active-client counts from a :func:`_schedule` ``(K, T, bs)``.

    ``steps`` is each client's step count, in the schedule's (non-increasing)
    client order. Returns ``rows`` (the schedule with padding read from row 0),
    ``sw`` (``1 / batch size`` for real samples, 0 for padding), both
    ``(K, T, bs)``, and ``active`` ``(T,)``: how many clients take step ``t``.
    """
    valid = sched >= 0
    rows = np.where(valid, sched, 0)  # padding reads row 0 with sample weight 0
    sw = valid / np.maximum(valid.sum(axis=2, keepdims=True), 1)  # 1 / batch size, 0 for padding
    active = (steps[None, :] > np.arange(sched.shape[1])[:, None]).sum(axis=1)
    return rows, sw, active


def _steps(model, P, w_global, Xo, yo, rows, sw, active, Xb, yb, lr, prox_mu) -> None:
    """The vectorised SGD loop of :func:`local_sgd_many` (clients ordered by step count, in place on ``P``)."""
    for t in range(rows.shape[1]):
        a = int(active[t])
        for i in range(a):  # gather each client's batch into the stack (no copy of whole data sets)
            np.take(Xo[i], rows[i, t], axis=0, out=Xb[i])
            np.take(yo[i], rows[i, t], out=yb[i])
        prox = lr * prox_mu * (P[:a] - w_global) if prox_mu else None  # at the weights before the step
        model.batched_step(P[:a], Xb[:a], yb[:a], sw[:a, t], lr)
        if prox is not None:
            P[:a] -= prox
