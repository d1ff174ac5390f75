"""Norm bounding (Sun et al., 2019): clip every update's L2 norm, then aggregate with an inner strategy."""

from __future__ import annotations

import numpy as np

from fedmarket.errors import ConfigError
from fedmarket.fl.strategies.base import Strategy, check_weights, stack_updates, usable
from fedmarket.fl.strategies.fedavg import FedAvg


def clip_norms(U: np.ndarray, max_norm: float) -> np.ndarray:
    """Scale every row of ``U`` whose L2 norm exceeds ``max_norm`` down to ``max_norm`` (a new array)."""
    norms = np.linalg.norm(U, axis=1)
    scale = np.minimum(1.0, max_norm / np.where(norms > 0, norms, 1.0))
    return U * scale[:, None]


class NormBounding(Strategy):
    """Clip each update to an L2 norm bound, then aggregate with ``inner`` (FedAvg by default).

    Parameters
    ----------
    max_norm : float, optional
        The bound, ``> 0``. By default it is the median of the round's update
        norms, so a minority cannot raise it: with a weighted-mean inner
        strategy the result's norm is at most the largest honest norm.
    inner : Strategy, optional
        What aggregates the clipped updates (default :class:`FedAvg`).
    """

    name = "norm_bounding"
    robust = True

    def __init__(self, max_norm: float | None = None, inner: Strategy | None = None) -> None:
        if max_norm is not None and (not np.isfinite(max_norm) or max_norm <= 0):
            raise ConfigError(f"max_norm must be a positive number, got {max_norm!r}")
        if inner is not None and not isinstance(inner, Strategy):
            raise ConfigError(f"inner must be a Strategy, got {inner!r}")
        self.max_norm = None if max_norm is None else float(max_norm)
        self.inner = inner if inner is not None else FedAvg()

    def reset(self) -> None:
        self.inner.reset()

    def bound(self, U: np.ndarray) -> float:
        """The norm bound used for updates ``U``."""
        if self.max_norm is not None:
            return self.max_norm
        return float(np.median(np.linalg.norm(U, axis=1)))

    def aggregate(self, updates, weights=None, *, server_update=None) -> np.ndarray:
        U = stack_updates(updates)
        U, w = usable(U, check_weights(weights, U.shape[0]))
        return self.inner.aggregate(clip_norms(U, self.bound(U)), w, server_update=server_update)

    def aggregate_int(self, updates, weights) -> np.ndarray:
        """The exact form a market job names as ``norm_bounding`` (the median norm as the bound, then
        FedAvg): :func:`fedmarket.fl.attested.norm_bounded_mean_int`."""
        from fedmarket.fl.attested import norm_bounded_mean_int

        if self.max_norm is not None or type(self.inner) is not FedAvg:
            return super().aggregate_int(updates, weights)
        keep = [(u, int(w)) for u, w in zip(updates, weights) if w > 0]
        return norm_bounded_mean_int([u for u, _ in keep], [w for _, w in keep])
