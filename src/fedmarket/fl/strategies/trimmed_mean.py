"""Coordinate-wise trimmed mean (Yin et al., 2018)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fedmarket.errors import ConfigError
from fedmarket.fl.aggregate import trimmed_mean_int
from fedmarket.fl.strategies.base import Strategy, check_weights, columnwise, stack_updates, usable


def trimmed_mean(U: np.ndarray, trim: int) -> np.ndarray:
    """Per coordinate, drop the ``trim`` smallest and ``trim`` largest of the ``n`` rows and average the rest.

    Parameters
    ----------
    U : numpy.ndarray
        Updates ``(n, d)``.
    trim : int
        Values dropped at each end, ``0 <= 2 * trim < n``.

    Returns
    -------
    numpy.ndarray
        float64 ``(d,)``.
    """
    n = U.shape[0]
    if isinstance(trim, bool) or int(trim) != trim or not 0 <= 2 * trim < n:
        raise ConfigError(f"trim must be an integer with 0 <= 2 * trim < n = {n}, got {trim!r}")
    trim = int(trim)
    if trim == 0:
        return U.mean(axis=0)
    kept = n - 2 * trim

    def middle(B: np.ndarray) -> np.ndarray:
        B.partition((trim, n - trim - 1), axis=1)
        return B[:, trim : n - trim].sum(axis=1) / kept

    return columnwise(U, middle)


def trim_count(n: int, beta: float) -> int:
    """Values trimmed at each end for ``n`` updates and fraction ``beta``: ``floor(beta * n)``, capped so one remains."""
    return min(int(math.floor(beta * n)), (n - 1) // 2)


class FedTrimmedMean(Strategy):
    """Coordinate-wise ``beta``-trimmed mean of the usable updates (positive weight, finite values).

    Each round ``trim = floor(beta * n)`` values are dropped at each end of
    every coordinate (at most ``(n - 1) // 2``). Bounded when the number of
    arbitrary updates is at most ``trim``: every coordinate of the result lies
    between the smallest and largest honest value. ``aggregate_int`` is
    :func:`fedmarket.fl.aggregate.trimmed_mean_int` with the same ``trim``.

    Parameters
    ----------
    beta : float, optional
        Fraction trimmed at each end, in ``[0, 0.5)`` (default 0.2).
    """

    name = "trimmed_mean"
    robust = True
    weighted = False

    def __init__(self, beta: float = 0.2) -> None:
        if not 0.0 <= beta < 0.5:
            raise ConfigError(f"beta must lie in [0, 0.5), got {beta!r}")
        self.beta = float(beta)

    def aggregate(self, updates, weights=None, *, server_update=None) -> np.ndarray:
        U = stack_updates(updates)
        U, _ = usable(U, check_weights(weights, U.shape[0]))
        return trimmed_mean(U, trim_count(U.shape[0], self.beta))

    def aggregate_int(self, updates: Sequence[np.ndarray], weights: Sequence[int]) -> np.ndarray:
        keep = [u for u, w in zip(updates, check_weights(weights, len(updates))) if w > 0]
        return trimmed_mean_int(keep, trim_count(len(keep), self.beta))
