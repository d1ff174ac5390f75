"""Federated averaging (float and exact integer), and the exact integer robust rules the contracts recompute.

The integer rules stream the stacked ``(n, d)`` update matrix in column
blocks that stay in cache, on the calling thread plus a small thread pool
(numpy and BLAS release the GIL). Each block takes the fastest path that is
exact for its own values (decided by an overflow check or cheap bounds on
that block, falling back to Python integers), so every result is
bit-identical to the plain Python-integer definition whatever the input.
"""

from __future__ import annotations

import functools
import math
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from fedmarket.errors import ConfigError

_INT64_MAX = np.iinfo(np.int64).max
_FAST_BOUND = 1 << 62  # int64 sums bounded by this cannot overflow
_UNIT_EXP = 1024 - 52  # in units of 2**972, float64 overflows before integers stop being exact
_INT32_BOUND = 1 << 31
_FEDAVG_WIDTH = 32768  # columns per FedAvg block: long row segments stream from memory at full speed
_TILE_ELEMS = 1 << 18  # entries per FedAvg tile; OpenBLAS runs a gemv below 460800 entries on one thread
_SORT_BLOCK_BYTES = 1 << 22  # int64 bytes per block of the order-statistic rules (fastest when measured)
_PARALLEL_BYTES = 1 << 23  # smaller matrices are aggregated on the calling thread alone
_WORKERS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


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
    bit-identical on every machine. Per column block the sum is a float64
    matrix-vector product (BLAS) with the weights scaled so that float64
    overflows exactly where it would stop being exact, and is kept when it
    comes out finite; otherwise it is an int64 sum when
    ``max|q| * sum(w) < 2**62``, else exact Python integers.

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
    out = np.empty(stacked.shape[1], dtype=np.int64)
    # every weight is at most the total, so these conversions are exact when the total fits
    w_units = np.ldexp(np.asarray(ws, dtype=np.float64), _UNIT_EXP) if total < 1 << (1024 - _UNIT_EXP) else None
    w_int = np.asarray(ws, dtype=np.int64) if total < _FAST_BOUND else None
    w_obj = np.asarray(ws, dtype=object)

    def block_mean(block: np.ndarray, cols: slice, scratch: _Scratch) -> None:
        if w_units is not None and _float_weighted_sum(w_units, block, out[cols], total, scratch):
            return
        if w_int is not None and _max_abs(block) * total < _FAST_BOUND:
            # einsum's integer sum of products streams the block; integer matmul has no BLAS path
            np.floor_divide(np.einsum("i,ij->j", w_int, block), total, out=out[cols])
        else:
            # floor(mean) lies within [min q, max q], so it fits int64.
            out[cols] = (w_obj @ block.astype(object)) // total

    _blockwise(stacked, _FEDAVG_WIDTH, block_mean)
    return out.reshape(shape)


def _float_weighted_sum(w_units: np.ndarray, block: np.ndarray, out: np.ndarray, total: int, scratch: _Scratch) -> bool:
    """Write ``floor(w @ block / total)`` to ``out`` if float64 computes ``w @ block`` exactly; return whether it did.

    ``w_units`` are the weights times ``2**972``, a power of two, so every
    product and partial sum is an integer number of units ``2**972``.
    float64 holds such a number exactly below ``2**52`` units and overflows
    to infinity from ``2**52`` units (``2**1024``) on, and no later step
    makes an infinity finite again. So a finite result is exact, whatever
    order BLAS sums in. A value the conversion to float64 rounds
    (``|q| > 2**53``) is read as at least ``2**53`` in magnitude, so with a
    weight of at least 1 its product is at least ``2**1025``: it overflows
    when rounded on its own, and under a fused multiply-add (where the
    product is never rounded) the running sum it joins is below ``2**1024``
    and cannot bring it back under the overflow threshold. (With units of
    ``2**971`` it could: ``-(2**53 + 1)``, read as ``-2**53``, plus 2 came
    out finite and one off.) A weight of 0 contributes exactly 0. The
    float path thus needs no look at the values; it covers sums below
    ``2**52`` units and leaves larger ones to the integer paths. The block is converted and
    multiplied in tiles of rows that stay in cache and under OpenBLAS's
    threading threshold (the pool's threads already fill the cores).
    """
    n, width = block.shape
    tiles = -(-n // max(1, _TILE_ELEMS // width))
    rows = -(-n // tiles)  # at most _TILE_ELEMS // width (or 1), the tiles evened out
    acc = scratch.get("acc", (width,), np.float64)
    partial = scratch.get("partial", (width,), np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, n, rows):
            stop = min(start + rows, n)
            f = scratch.get("float", (stop - start, width), np.float64)
            np.copyto(f, block[start:stop], casting="unsafe")
            np.matmul(w_units[start:stop], f, out=partial if start else acc)
            if start:
                acc += partial
    if not np.isfinite(acc).all():
        return False
    acc *= 2.0**-_UNIT_EXP
    np.floor_divide(acc.astype(np.int64), total, out=out)
    return True


def _stack_int(updates: Sequence[np.ndarray]) -> tuple[np.ndarray, tuple[int, ...]]:
    """Validate integer updates and stack them as int64 ``(n, size)``; also return their shape."""
    if len(updates) == 0:
        raise ConfigError("cannot aggregate zero updates")
    if isinstance(updates, np.ndarray) and updates.dtype == np.int64 and updates.ndim >= 2:
        return updates.reshape(updates.shape[0], -1), updates.shape[1:]
    arrays = [_as_int64(u, i) for i, u in enumerate(updates)]
    _check_shapes(arrays)
    return np.stack(arrays).reshape(len(arrays), -1), arrays[0].shape


def _max_abs(block: np.ndarray) -> int:
    return max(int(block.max()), -int(block.min()))


class _Scratch:
    """Buffers one thread reuses from block to block (a fresh large allocation page-faults on every block)."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[str, type], np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        size = math.prod(shape)
        buf = self._buffers.get((name, dtype))
        if buf is None or buf.size < size:
            buf = self._buffers[name, dtype] = np.empty(size, dtype=dtype)
        return buf[:size].reshape(shape)


@functools.cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=_WORKERS - 1, thread_name_prefix="fedmarket-int-agg")


def _blockwise(stacked: np.ndarray, width: int, kernel: Callable[[np.ndarray, slice, _Scratch], None]) -> None:
    """Call ``kernel(stacked[:, cols], cols, scratch)`` once for every block ``cols`` of ``width`` columns.

    Blocks are handed out one at a time to the calling thread and, for a
    large matrix, to the pool's threads, each with its own scratch buffers
    (and blocks narrowed if need be so that every thread gets a few).
    Kernels write disjoint parts of the output, so the result does not
    depend on the schedule.
    """
    d = stacked.shape[1]
    threads = _WORKERS if stacked.nbytes >= _PARALLEL_BYTES else 1
    if threads > 1:
        width = max(1, min(width, -(-d // (4 * threads))))
    starts = iter(range(0, d, width))
    lock = threading.Lock()

    def work() -> None:
        scratch = _Scratch()
        while True:
            with lock:
                start = next(starts, None)
            if start is None:
                return
            cols = slice(start, min(start + width, d))
            kernel(stacked[:, cols], cols, scratch)

    futures = [_pool().submit(work) for _ in range(min(threads, -(-d // width)) - 1)]
    try:
        work()
    finally:
        for future in futures:
            if not future.cancel():  # a helper still queued behind another call has nothing left to do
                future.result()


def _sort_width(n: int) -> int:
    """Columns per block of the order-statistic rules: ``_SORT_BLOCK_BYTES`` of int64 values."""
    return max(1, _SORT_BLOCK_BYTES // (8 * n))


def _sorted_columns(block: np.ndarray, scratch: _Scratch) -> tuple[np.ndarray, int]:
    """The block's columns as rows ``(width, n)`` sorted ascending, and the block's largest ``|q|``.

    The block is first copied row by row into a staging buffer whose rows
    span an odd number of cache lines, so the transposing read that follows
    spreads over every cache set whatever the input's row stride (a stride
    of a large power of two would make every row collide in a few). The
    rows are int32 when every value fits (half the bytes to move and sort),
    int64 otherwise.
    """
    n, width = block.shape
    lines = width // 8 + 1  # 64-byte cache lines per staged row, with room for the whole row
    lines += 1 - lines % 2  # an odd number of them
    staged = scratch.get("staged", (n, 8 * lines), np.int64)[:, :width]
    np.copyto(staged, block)
    lo, hi = int(staged.min()), int(staged.max())
    dtype = np.int32 if -_INT32_BOUND <= lo and hi < _INT32_BOUND else np.int64
    rows = scratch.get("rows", (width, n), dtype)
    np.copyto(rows, staged.T, casting="unsafe")  # exact: every value fits the dtype
    rows.sort(axis=1)
    return rows, max(hi, -lo)


def median_int(updates: Sequence[np.ndarray]) -> np.ndarray:
    """Exact integer coordinate-wise median.

    Per coordinate the values are sorted ascending into ``s``; for odd ``n``
    the result is ``s[n // 2]``, for even ``n`` it is
    ``floor((s[n/2 - 1] + s[n/2]) / 2)`` (Python ``//``, toward minus
    infinity), computed as ``(a >> 1) + (b >> 1) + (a & b & 1)``, which
    cannot overflow int64.

    Parameters
    ----------
    updates : sequence of numpy.ndarray, or numpy.ndarray
        ``n >= 1`` integer updates of one common shape (or one int64 array
        stacking them along axis 0, used without a copy).

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
    k = n // 2
    out = np.empty(stacked.shape[1], dtype=np.int64)

    def block_median(block: np.ndarray, cols: slice, scratch: _Scratch) -> None:
        rows, _ = _sorted_columns(block, scratch)
        if n % 2:
            out[cols] = rows[:, k]
        else:
            a, b = rows[:, k - 1], rows[:, k]
            out[cols] = (a >> 1) + (b >> 1) + (a & b & 1)

    _blockwise(stacked, _sort_width(n), block_median)
    return out.reshape(shape)


def trimmed_mean_int(updates: Sequence[np.ndarray], trim: int) -> np.ndarray:
    """Exact integer coordinate-wise trimmed mean.

    Per coordinate the ``n`` values are sorted, the ``trim`` smallest and
    the ``trim`` largest dropped, and the result is
    ``floor(sum(rest) / (n - 2 * trim))`` (Python ``//``, toward minus
    infinity). Per column block the sum is taken in int64 when ``max|q| *
    (n - 2 * trim) < 2**62`` and with exact Python integers otherwise; with
    ``trim == 0`` it is `fedavg_int` with equal weights.

    Parameters
    ----------
    updates : sequence of numpy.ndarray, or numpy.ndarray
        ``n >= 1`` integer updates of one common shape (or one int64 array
        stacking them along axis 0, used without a copy).
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
    if trim == 0:
        # nothing to drop: the mean of all values, which needs no sorting
        return fedavg_int(stacked, [1] * n).reshape(shape)
    kept = n - 2 * trim
    out = np.empty(stacked.shape[1], dtype=np.int64)

    def block_mean(block: np.ndarray, cols: slice, scratch: _Scratch) -> None:
        rows, max_abs = _sorted_columns(block, scratch)
        middle = rows[:, trim : n - trim]
        if max_abs * kept < _FAST_BOUND:
            np.floor_divide(middle.sum(axis=1, dtype=np.int64), kept, out=out[cols])
        else:
            # floor(mean) of the kept values lies within their range, so it fits int64.
            out[cols] = middle.astype(object).sum(axis=1) // kept

    _blockwise(stacked, _sort_width(n), block_mean)
    return out.reshape(shape)
