"""Mini-batch SGD for local (optionally FedProx) and centralised training."""

from __future__ import annotations

import numpy as np

from fedmarket.errors import ConfigError
from fedmarket.fl.models import SoftmaxRegression


def _check_hparams(epochs: int, batch_size: int, lr: float, prox_mu: float) -> None:
    if isinstance(epochs, bool) or int(epochs) != epochs or epochs < 1:
        raise ConfigError(f"epochs must be a positive integer, got {epochs!r}")
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not np.isfinite(lr) or lr <= 0:
        raise ConfigError(f"learning rate must be a positive number, got {lr!r}")
    if not np.isfinite(prox_mu) or prox_mu < 0:
        raise ConfigError(f"prox_mu must be a non-negative number, got {prox_mu!r}")


def local_sgd(
    model: SoftmaxRegression,
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
    model : SoftmaxRegression
        The model whose ``loss_and_grad`` is minimised.
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
    X = model._check_X(X)
    y = model._check_y(X, y)  # also rejects an empty dataset
    w_global = np.array(params, dtype=np.float64, copy=True)
    w = w_global.copy()
    W, b = model._unpack(w)  # views into w, checked once here
    n = X.shape[0]
    bs = int(batch_size)
    rng = np.random.default_rng(seed)
    for _ in range(int(epochs)):
        perm = rng.permutation(n)
        for s in range(0, n, bs):
            idx = perm[s : s + bs]
            _, g = model._loss_and_grad(W, b, X[idx], y[idx])
            if prox_mu:
                g += prox_mu * (w - w_global)
            w -= lr * g
    return w


def centralized_train(
    model: SoftmaxRegression,
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
    model : SoftmaxRegression
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
