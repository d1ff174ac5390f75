"""Coordinate-wise median (Yin et al., 2018)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedmarket.fl.aggregate import median_int
from fedmarket.fl.strategies.base import Strategy, check_weights, columnwise, stack_updates, usable


def coordinate_median(U: np.ndarray) -> np.ndarray:
    """Per-coordinate median of the rows of ``U`` ``(n, d)``; for even ``n`` the mean of the two middle values.

    Equals ``numpy.median(U, axis=0)``, computed block by block on
    transposed, cache-sized slices.
    """
    n = U.shape[0]
    k = n // 2
    if n % 2:
        return columnwise(U, lambda B: np.partition(B, k, axis=1)[:, k])

    def mid(B: np.ndarray) -> np.ndarray:
        B.partition((k - 1, k), axis=1)
        return (B[:, k - 1] + B[:, k]) * 0.5

    return columnwise(U, mid)


class FedMedian(Strategy):
    """Coordinate-wise median of the usable updates (positive weight, finite values); weights beyond that are ignored.

    Bounded under a minority of arbitrary updates: with ``f < n / 2`` of them,
    every coordinate of the result lies between the smallest and largest
    honest value of that coordinate. ``aggregate_int`` is
    :func:`fedmarket.fl.aggregate.median_int`.
    """

    name = "median"
    robust = True
    weighted = False

    def aggregate(self, updates, weights=None, *, server_update=None) -> np.ndarray:
        U = stack_updates(updates)
        U, _ = usable(U, check_weights(weights, U.shape[0]))
        return coordinate_median(U)

    def aggregate_int(self, updates: Sequence[np.ndarray], weights: Sequence[int]) -> np.ndarray:
        keep = [u for u, w in zip(updates, check_weights(weights, len(updates))) if w > 0]
        return median_int(keep)
