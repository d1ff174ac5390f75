"""Weighted federated averaging: a float version and an exact, bit-reproducible integer version."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fedmarket.errors import ConfigError

_INT64_MAX = np.iinfo(np.int64).max
_FAST_BOUND = 1 << 62


def _check_shapes(arrays: list[np.ndarray]) -> None:
    shape = arrays[0].shape
    for i, a in enumerate(arrays):
        if a.shape != shape:
            raise ConfigError(f"update {i} has shape {a.shape}, expected {shape}")


def fedavg(updates: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Weighted mean of update vectors, ``sum_i w_i u_i / sum_i w_i``.

    Parameters
    ----------
    updates : sequence of numpy.ndarray
        Updates of one common shape.
    weights : sequence of float
        One finite weight ``>= 0`` per update, with a positive sum.

    Returns
    -------
    numpy.ndarray
        float64 array of the common shape.

    Raises
    ------
    ConfigError
        On no updates, a count mismatch, unequal shapes or invalid weights.
    """
    if len(updates) == 0:
        raise ConfigError("cannot average zero updates")
    if len(weights) != len(updates):
        raise ConfigError(f"got {len(updates)} updates but {len(weights)} weights")
    arrays = [np.asarray(u, dtype=np.float64) for u in updates]
    _check_shapes(arrays)
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ConfigError("weights must be finite and non-negative")
    total = w.sum()
    if not total > 0:
        raise ConfigError("weights must have a positive sum")
    stacked = np.stack(arrays).reshape(len(arrays), -1)
    return ((w / total) @ stacked).reshape(arrays[0].shape)


def _int_weight(w: object, i: int) -> int:
    if isinstance(w, bool) or not isinstance(w, (int, np.integer)):
        raise ConfigError(f"weight {i} must be an integer, got {w!r}")
    if w < 0:
        raise ConfigError(f"weight {i} must be non-negative, got {w}")
    return int(w)


def _as_int64(u: np.ndarray, i: int) -> np.ndarray:
    a = np.asarray(u)
    if a.dtype.kind not in "iu":
        raise ConfigError(f"update {i} must be an integer array, got dtype {a.dtype}")
    if a.dtype.kind == "u" and a.size and int(a.max()) > _INT64_MAX:
        raise ConfigError(f"update {i} has values beyond the int64 range")
    return a.astype(np.int64, copy=False)


def fedavg_int(updates: Sequence[np.ndarray], weights: Sequence[int]) -> np.ndarray:
    """Exact integer weighted mean, ``floor(sum_i w_i q_i / sum_i w_i)`` per coordinate.

    The floor rounds toward minus infinity (Python ``//``). The result is
    bit-identical on every machine. When ``max|q| * sum(w) < 2**62`` the sum
    is computed in int64; otherwise it is computed exactly with Python
    integers.

    Parameters
    ----------
    updates : sequence of numpy.ndarray
        int64 (or other integer) updates of one common shape.
    weights : sequence of int
        One integer weight ``>= 0`` per update, with a positive sum.

    Returns
    -------
    numpy.ndarray
        int64 array of the common shape.

    Raises
    ------
    ConfigError
        On no updates, a count mismatch, unequal shapes, non-integer data or
        invalid weights.
    """
    if len(updates) == 0:
        raise ConfigError("cannot average zero updates")
    if len(weights) != len(updates):
        raise ConfigError(f"got {len(updates)} updates but {len(weights)} weights")
    ws = [_int_weight(w, i) for i, w in enumerate(weights)]
    total = sum(ws)
    if total <= 0:
        raise ConfigError("weights must have a positive sum")
    arrays = [_as_int64(u, i) for i, u in enumerate(updates)]
    _check_shapes(arrays)
    shape = arrays[0].shape
    stacked = np.stack(arrays).reshape(len(arrays), -1)
    if stacked.size == 0:
        return np.zeros(shape, dtype=np.int64)
    max_abs = max(int(stacked.max()), -int(stacked.min()))
    if max_abs == 0:
        return np.zeros(shape, dtype=np.int64)
    if max_abs * total < _FAST_BOUND:
        sums = np.asarray(ws, dtype=np.int64) @ stacked
        return (sums // np.int64(total)).reshape(shape)
    sums = np.asarray(ws, dtype=object) @ stacked.astype(object)
    # floor(mean) lies within [min q, max q], so it fits int64.
    return (sums // total).astype(np.int64).reshape(shape)
