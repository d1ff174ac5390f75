"""The Strategy base class: combine one round's client updates into the next global model."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar

import numpy as np

from fedmarket.errors import ConfigError


def stack_updates(updates: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """Return the updates as one float64 matrix ``(n, d)``, without copying when already one.

    Parameters
    ----------
    updates : sequence of numpy.ndarray, or numpy.ndarray
        ``n >= 1`` flat updates of one length ``d``, or a 2-D array stacking them.

    Returns
    -------
    numpy.ndarray
        float64 array ``(n, d)``; the input itself when it already is one.

    Raises
    ------
    ConfigError
        On no updates or unequal lengths.
    """
    if isinstance(updates, np.ndarray):
        if updates.ndim != 2:
            raise ConfigError(f"stacked updates must be a 2-D array (n, d), got shape {updates.shape}")
        U = updates if updates.dtype == np.float64 else updates.astype(np.float64)
    else:
        if len(updates) == 0:
            raise ConfigError("cannot aggregate zero updates")
        rows = [np.asarray(u, dtype=np.float64).ravel() for u in updates]
        for i, r in enumerate(rows):
            if r.shape != rows[0].shape:
                raise ConfigError(f"update {i} has {r.size} entries, expected {rows[0].size}")
        U = np.stack(rows)
    if U.shape[0] == 0:
        raise ConfigError("cannot aggregate zero updates")
    return U


def check_weights(weights: Sequence[float] | np.ndarray | None, n: int) -> np.ndarray:
    """Validate per-update weights (finite, ``>= 0``, positive sum); ``None`` means all ones.

    Returns
    -------
    numpy.ndarray
        float64 weights of length ``n``.

    Raises
    ------
    ConfigError
        On a count mismatch or invalid weights.
    """
    if weights is None:
        return np.ones(n)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,):
        raise ConfigError(f"got {n} updates but {w.size} weights")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ConfigError("weights must be finite and non-negative")
    if not w.sum() > 0:
        raise ConfigError("weights must have a positive sum")
    return w


class Strategy(ABC):
    """Combine client updates (parameter deltas) into one step of the global model.

    A strategy is an object holding its hyper-parameters and, for server
    optimisers, their state across rounds; the math lives in pure module
    functions. ``aggregate`` combines one round's updates into one delta;
    ``step`` applies it to the global parameters (plain strategies add it;
    server optimisers transform it first).

    Attributes
    ----------
    name : str
        Registry name of the strategy (what a job spec names).
    robust : bool
        Whether the rule bounds the influence of a minority of arbitrary updates.
    weighted : bool
        Whether the result depends on the weights beyond which are positive
        (order-statistic rules only drop zero-weight updates).
    """

    name: ClassVar[str] = ""
    robust: ClassVar[bool] = False
    weighted: ClassVar[bool] = True

    @abstractmethod
    def aggregate(
        self,
        updates: Sequence[np.ndarray] | np.ndarray,
        weights: Sequence[float] | np.ndarray | None = None,
        *,
        server_update: np.ndarray | None = None,
    ) -> np.ndarray:
        """Combine updates into one delta.

        Parameters
        ----------
        updates : sequence of numpy.ndarray, or numpy.ndarray
            ``n >= 1`` flat updates of length ``d`` or a matrix ``(n, d)``.
        weights : array_like of float, optional
            One weight ``>= 0`` per update (e.g. its sample count), positive sum;
            all ones by default. Zero-weight updates never influence the result.
        server_update : numpy.ndarray, optional
            The server's own update on its root data set (used by FLTrust).

        Returns
        -------
        numpy.ndarray
            float64 delta of length ``d``.
        """

    def step(
        self,
        params: np.ndarray,
        updates: Sequence[np.ndarray] | np.ndarray,
        weights: Sequence[float] | np.ndarray | None = None,
        *,
        server_update: np.ndarray | None = None,
    ) -> np.ndarray:
        """Return the next global parameters, ``params + aggregate(updates, weights)``."""
        params = np.asarray(params, dtype=np.float64)
        delta = self.aggregate(updates, weights, server_update=server_update)
        if delta.shape != params.shape:
            raise ConfigError(f"updates have {delta.size} entries but the model has {params.size}")
        return params + delta

    def aggregate_int(self, updates: Sequence[np.ndarray], weights: Sequence[int]) -> np.ndarray:
        """Exact integer version of :meth:`aggregate` on quantized updates, where the rule has one.

        Raises
        ------
        ConfigError
            If the strategy has no exact integer form.
        """
        raise ConfigError(f"strategy '{self.name}' has no exact integer form")

    def reset(self) -> None:
        """Forget any state kept across rounds (server optimisers)."""

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


def usable(U: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep the rows with positive weight and only finite values (what the robust rules aggregate).

    A non-finite update is an arbitrary update like any other: robust rules
    drop it rather than fail the round or let it spread.

    Raises
    ------
    ConfigError
        If no row is left.
    """
    keep = (w > 0) & np.isfinite(U).all(axis=1)
    if keep.all():
        return U, w
    if not keep.any():
        raise ConfigError("no update with positive weight and finite values to aggregate")
    return U[keep], w[keep]


_BLOCK = 1024  # columns per block of the order-statistic rules (n x 1024 float64 stays in cache)
_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="fedmarket-agg")
    return _POOL


def columnwise(U: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Apply ``fn`` to column blocks of ``U`` and concatenate the results.

    ``fn`` receives a block transposed to a contiguous ``(b, n)`` array (one
    row per coordinate, which it may modify) and returns ``(b,)`` values.
    Blocks are independent, so they run on a small thread pool (numpy's
    sorting releases the GIL) and the result does not depend on the schedule.
    """
    n, d = U.shape
    out = np.empty(d)

    def run(j: int) -> None:
        out[j : j + _BLOCK] = fn(np.ascontiguousarray(U[:, j : j + _BLOCK].T))

    starts = range(0, d, _BLOCK)
    if d <= 4 * _BLOCK:
        for j in starts:
            run(j)
    else:
        list(_pool().map(run, starts))
    return out
