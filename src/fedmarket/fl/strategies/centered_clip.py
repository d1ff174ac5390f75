"""Centred clipping around the coordinate-wise median (after Karimireddy, He and Jaggi, 2021): robust without a Byzantine fraction."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedmarket.errors import ConfigError
from fedmarket.fl.attested import centered_clip_int
from fedmarket.fl.strategies.base import Strategy, check_weights, stack_updates, usable
from fedmarket.fl.strategies.median import coordinate_median


def centered_clip(U: np.ndarray, iterations: int = 1) -> np.ndarray:
    """Float version of :func:`fedmarket.fl.attested.centered_clip_int`: from the coordinate median
    ``v``, ``iterations`` times clip every ``u_i - v`` to the median of their norms and move ``v``
    by their mean."""
    v = coordinate_median(U)
    for _ in range(iterations):
        D = U - v
        r = np.linalg.norm(D, axis=1)
        tau = np.sort(r)[(U.shape[0] - 1) // 2]
        scale = np.where(r > tau, tau / np.where(r > 0, r, 1.0), 1.0)
        v = v + (D * scale[:, None]).mean(axis=0)
    return v


class CenteredClip(Strategy):
    """Clip each update's deviation from the coordinate median to the median deviation, then average.

    Every usable update counts once (weights only drop zero-weight updates). Needs no
    assumed Byzantine fraction: with fewer than half of the updates arbitrary, the radius is at
    most the largest honest deviation, so each arbitrary update moves the result by at most
    ``radius / n``. ``aggregate_int`` is :func:`fedmarket.fl.attested.centered_clip_int`, the rule
    a market job names as ``centered_clip`` (recomputed by validators).

    Parameters
    ----------
    iterations : int, optional
        Clipping steps from the median (default 1).
    """

    name = "centered_clip"
    robust = True
    weighted = False

    def __init__(self, iterations: int = 1) -> None:
        if isinstance(iterations, bool) or int(iterations) != iterations or iterations < 1:
            raise ConfigError(f"iterations must be a positive integer, got {iterations!r}")
        self.iterations = int(iterations)

    def aggregate(self, updates, weights=None, *, server_update=None) -> np.ndarray:
        U = stack_updates(updates)
        U, _ = usable(U, check_weights(weights, U.shape[0]))
        return centered_clip(U, self.iterations)

    def aggregate_int(self, updates: Sequence[np.ndarray], weights: Sequence[int]) -> np.ndarray:
        keep = [u for u, w in zip(updates, check_weights(weights, len(updates))) if w > 0]
        return centered_clip_int(keep, self.iterations)
