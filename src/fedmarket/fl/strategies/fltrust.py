"""FLTrust (Cao et al., 2021): trust each update by its direction relative to the server's own update."""

from __future__ import annotations

import numpy as np

from fedmarket.errors import ConfigError
from fedmarket.fl.strategies.base import Strategy, check_weights, stack_updates, usable


def fltrust(U: np.ndarray, server_update: np.ndarray) -> np.ndarray:
    """FLTrust's rule on updates ``U`` ``(n, d)`` and the server's update ``g0`` ``(d,)``.

    Trust score ``ts_i = max(0, cos(u_i, g0))``; each update is rescaled to
    ``|g0|``; the result is ``sum_i ts_i |g0| u_i / |u_i| / sum_i ts_i``
    (zero when every score is zero). Its norm never exceeds ``|g0|``,
    whatever the updates.
    """
    g0 = np.asarray(server_update, dtype=np.float64).ravel()
    if g0.shape != (U.shape[1],):
        raise ConfigError(f"server update has {g0.size} entries, expected {U.shape[1]}")
    if not np.isfinite(g0).all():
        raise ConfigError("server update must be finite")
    n0 = float(np.linalg.norm(g0))
    norms = np.linalg.norm(U, axis=1)
    if n0 == 0.0:
        return np.zeros(U.shape[1])
    safe = np.where(norms > 0, norms, 1.0)
    cos = (U @ g0) / (safe * n0)
    ts = np.where(norms > 0, np.maximum(cos, 0.0), 0.0)
    total = ts.sum()
    if total <= 0:
        return np.zeros(U.shape[1])
    return ((ts * n0 / safe) / total) @ U


class FLTrust(Strategy):
    """FLTrust: needs ``server_update``, the server's own update from the same global model on a small clean root set.

    Weights only select the usable updates (as in the paper, sample counts are
    not used). Bounded: the result's norm is at most ``|server_update|``.
    """

    name = "fltrust"
    robust = True
    weighted = False

    def aggregate(self, updates, weights=None, *, server_update=None) -> np.ndarray:
        if server_update is None:
            raise ConfigError("FLTrust needs the server's update on its root data set (server_update)")
        U = stack_updates(updates)
        U, _ = usable(U, check_weights(weights, U.shape[0]))
        return fltrust(U, server_update)
