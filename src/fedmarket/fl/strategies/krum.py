"""Krum and Multi-Krum (Blanchard et al., 2017; El Mhamdi et al., 2018)."""

from __future__ import annotations

import math

import numpy as np

from fedmarket.errors import ConfigError
from fedmarket.fl.strategies.base import Strategy, check_weights, stack_updates, usable


def pairwise_sq_distances(U: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances between the rows of ``U`` ``(n, d)``, from one Gram matrix (BLAS syrk)."""
    sq = np.einsum("ij,ij->i", U, U)
    G = U @ U.T
    D = sq[:, None] + sq[None, :] - 2.0 * G
    np.maximum(D, 0.0, out=D)
    np.fill_diagonal(D, 0.0)
    return D


def krum_scores(U: np.ndarray, f: int) -> np.ndarray:
    """Krum score of each row: the sum of its squared distances to its ``n - f - 2`` nearest other rows.

    Parameters
    ----------
    U : numpy.ndarray
        Updates ``(n, d)``.
    f : int
        Assumed number of arbitrary updates, ``0 <= f <= n - 3``.

    Returns
    -------
    numpy.ndarray
        float64 scores ``(n,)``; lower is more central.
    """
    n = U.shape[0]
    if not 0 <= f <= n - 3:
        raise ConfigError(f"Krum needs 0 <= f <= n - 3, got f = {f} for n = {n}")
    D = pairwise_sq_distances(U)
    np.fill_diagonal(D, np.inf)
    m = n - f - 2
    return np.sort(D, axis=1)[:, :m].sum(axis=1)  # summed in sorted order: independent of the row order


def multi_krum(U: np.ndarray, w: np.ndarray, f: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean of the ``m`` rows with the lowest Krum scores, and their indices.

    Ties at the cut (Krum's two closest updates always tie) are broken by the
    rows' values in lexicographic order, so the choice does not depend on
    the order of the updates.

    Each selected row lies within ``sqrt(n - f - 2)`` times the diameter of
    the honest rows from some honest row whenever ``n >= 2 f + 3`` and
    ``m <= n - f``, whatever the other ``f`` rows are.
    """
    n = U.shape[0]
    if not 1 <= m <= n:
        raise ConfigError(f"Multi-Krum must keep between 1 and n = {n} updates, got {m}")
    scores = krum_scores(U, f)
    cut = np.sort(scores)[m - 1]
    below = np.flatnonzero(scores < cut)
    tied = sorted(np.flatnonzero(scores == cut), key=lambda i: U[i].tolist())
    chosen = np.sort(np.concatenate([below, tied[: m - below.size]]).astype(np.int64))
    ws = w[chosen]
    return (ws / ws.sum()) @ U[chosen], chosen


class MultiKrum(Strategy):
    """Multi-Krum: average (by weight) the ``m`` updates whose Krum scores are lowest.

    Per round, with ``n`` usable updates: ``f = floor(byzantine_fraction * n)``
    (capped at ``n - 3``) and ``m = n - f`` unless ``keep`` is given
    (``keep = 1`` is Krum). Bounded when ``n >= 2 f + 3``.

    Parameters
    ----------
    byzantine_fraction : float, optional
        Assumed fraction of arbitrary updates, in ``[0, 0.5)`` (default 0.3).
    keep : int, optional
        Number of updates averaged, ``>= 1`` (default ``n - f``).
    """

    name = "multikrum"
    robust = True

    def __init__(self, byzantine_fraction: float = 0.3, keep: int | None = None) -> None:
        if not 0.0 <= byzantine_fraction < 0.5:
            raise ConfigError(f"byzantine_fraction must lie in [0, 0.5), got {byzantine_fraction!r}")
        if keep is not None and (isinstance(keep, bool) or int(keep) != keep or keep < 1):
            raise ConfigError(f"keep must be a positive integer, got {keep!r}")
        self.byzantine_fraction = float(byzantine_fraction)
        self.keep = None if keep is None else int(keep)

    def select(self, n: int) -> tuple[int, int]:
        """Return ``(f, m)`` for ``n`` updates."""
        if n < 3:
            raise ConfigError(f"Krum needs at least 3 updates, got {n}")
        f = min(int(math.floor(self.byzantine_fraction * n)), n - 3)
        m = n - f if self.keep is None else min(self.keep, n)
        return f, m

    def aggregate(self, updates, weights=None, *, server_update=None) -> np.ndarray:
        U = stack_updates(updates)
        U, w = usable(U, check_weights(weights, U.shape[0]))
        f, m = self.select(U.shape[0])
        return multi_krum(U, w, f, m)[0]


class Krum(MultiKrum):
    """Krum: the single update with the lowest Krum score (Multi-Krum with ``keep = 1``).

    Parameters
    ----------
    byzantine_fraction : float, optional
        Assumed fraction of arbitrary updates, in ``[0, 0.5)`` (default 0.3).
    """

    name = "krum"
    weighted = False

    def __init__(self, byzantine_fraction: float = 0.3) -> None:
        super().__init__(byzantine_fraction, keep=1)
