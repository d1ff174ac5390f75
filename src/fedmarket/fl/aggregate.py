"""Federated averaging (float and exact integer), and the exact integer robust rules the contracts recompute."""

from __future__ import annotations

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
    updates : sequence of numpy.ndarray, or numpy.ndarray
        int64 (or other integer) updates of one common shape (or one int64
        array stacking them along axis 0, used without a copy).
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
    stacked, shape = _stack_int(updates)
    if stacked.size == 0:
        return np.zeros(shape, dtype=np.int64)
    max_abs = _max_abs(stacked)
    if max_abs == 0:
        return np.zeros(shape, dtype=np.int64)
    if max_abs * total < _FAST_BOUND:
        # einsum's integer sum of products streams the matrix; integer matmul has no BLAS path
        sums = np.einsum("i,ij->j", np.asarray(ws, dtype=np.int64), stacked)
        return (sums // np.int64(total)).reshape(shape)
    sums = np.asarray(ws, dtype=object) @ stacked.astype(object)
    # floor(mean) lies within [min q, max q], so it fits int64.
    return (sums // total).astype(np.int64).reshape(shape)


def _stack_int(updates: Sequence[np.ndarray]) -> tuple[np.ndarray, tuple[int, ...]]:
    """Validate integer updates and stack them as int64 ``(n, size)``; also return their shape."""
    if len(updates) == 0:
        raise ConfigError("cannot aggregate zero updates")
    if isinstance(updates, np.ndarray) and updates.dtype == np.int64 and updates.ndim >= 2:
        return updates.reshape(updates.shape[0], -1), updates.shape[1:]
    arrays = [_as_int64(u, i) for i, u in enumerate(updates)]
    _check_shapes(arrays)
    return np.stack(arrays).reshape(len(arrays), -1), arrays[0].shape


def _max_abs(stacked: np.ndarray) -> int:
    return max(int(stacked.max()), -int(stacked.min())) if stacked.size else 0


def median_int(updates: Sequence[np.ndarray]) -> np.ndarray:
    """Exact integer coordinate-wise median.

    Per coordinate the values are sorted ascending into ``s``; for odd ``n``
    the result is ``s[n // 2]``, for even ``n`` it is
    ``floor((s[n/2 - 1] + s[n/2]) / 2)`` (Python ``//``, toward minus
    infinity). The pair sum is taken in int64 when it cannot overflow and
    with exact Python integers otherwise.

    Parameters
    ----------
    updates : sequence of numpy.ndarray, or numpy.ndarray
        ``n >= 1`` integer updates of one common shape (or one int64 array
        stacking them along axis 0).

    Returns
    -------
    numpy.ndarray
        int64 array of the common shape.

    Raises
    ------
    ConfigError
        On no updates, unequal shapes or non-integer data.
    """
    stacked, shape = _stack_int(updates)
    n = stacked.shape[0]
    if stacked.shape[1] == 0:
        return np.zeros(shape, dtype=np.int64)
    if n % 2:
        return np.partition(stacked, n // 2, axis=0)[n // 2].reshape(shape)
    part = np.partition(stacked, (n // 2 - 1, n // 2), axis=0)
    lo, hi = part[n // 2 - 1], part[n // 2]
    if _max_abs(stacked) < _FAST_BOUND:
        return ((lo + hi) // 2).reshape(shape)
    # floor of the mean of two int64 values lies between them, so it fits int64.
    return ((lo.astype(object) + hi.astype(object)) // 2).astype(np.int64).reshape(shape)


def trimmed_mean_int(updates: Sequence[np.ndarray], trim: int) -> np.ndarray:
    """Exact integer coordinate-wise trimmed mean.

    Per coordinate the ``n`` values are sorted, the ``trim`` smallest and
    the ``trim`` largest dropped, and the result is
    ``floor(sum(rest) / (n - 2 * trim))`` (Python ``//``, toward minus
    infinity). The sum is taken in int64 when ``max|q| * (n - 2 * trim) <
    2**62`` and with exact Python integers otherwise.

    Parameters
    ----------
    updates : sequence of numpy.ndarray, or numpy.ndarray
        ``n >= 1`` integer updates of one common shape (or one int64 array
        stacking them along axis 0).
    trim : int
        Number of values dropped at each end, ``0 <= 2 * trim < n``.

    Returns
    -------
    numpy.ndarray
        int64 array of the common shape.

    Raises
    ------
    ConfigError
        On no updates, unequal shapes, non-integer data, or a ``trim``
        outside ``0 <= 2 * trim < n``.
    """
    stacked, shape = _stack_int(updates)
    n = stacked.shape[0]
    if isinstance(trim, bool) or not isinstance(trim, (int, np.integer)):
        raise ConfigError(f"trim must be an integer, got {trim!r}")
    trim = int(trim)
    if not 0 <= 2 * trim < n:
        raise ConfigError(f"trim must satisfy 0 <= 2 * trim < n = {n}, got trim = {trim}")
    if stacked.shape[1] == 0:
        return np.zeros(shape, dtype=np.int64)
    kept = n - 2 * trim
    s = np.sort(stacked, axis=0)[trim : n - trim] if trim else stacked
    if _max_abs(stacked) * kept < _FAST_BOUND:
        return (s.sum(axis=0) // np.int64(kept)).reshape(shape)
    # floor(mean) of the kept values lies within their range, so it fits int64.
    return (s.astype(object).sum(axis=0) // kept).astype(np.int64).reshape(shape)
