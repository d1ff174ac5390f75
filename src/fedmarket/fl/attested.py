"""Robust rules in deterministic integer arithmetic that need no Byzantine fraction: what validators
recompute bit for bit (the contracts recompute only the sum their result is committed as).

Every step is either exact integer arithmetic or one IEEE-754 operation per element (a product,
then a floor), so every machine gets the same int64 vector from the same quantized updates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fedmarket.errors import ConfigError
from fedmarket.fl.aggregate import median_int

#: |a coordinate's deviation from the centre| is capped here before anything else (2**26 fixed-point
#: units: 64.0, far beyond any real update), so that 2**11 squares fit int64
DEVIATION_CAP = 1 << 26
_NORM_BLOCK = 1 << 11
_INT64_MIN, _INT64_MAX = np.iinfo(np.int64).min, np.iinfo(np.int64).max


def _stack(updates: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    if isinstance(updates, np.ndarray) and updates.ndim == 2 and updates.dtype == np.int64:
        return updates
    if len(updates) == 0:
        raise ConfigError("cannot aggregate zero updates")
    rows = [np.asarray(u) for u in updates]
    if any(r.dtype.kind not in "iu" for r in rows):
        raise ConfigError("attested rules aggregate integer (quantized) updates")
    if any(r.shape != rows[0].shape or r.ndim != 1 for r in rows):
        raise ConfigError("updates must be flat vectors of one length")
    return np.stack([r.astype(np.int64) for r in rows])


def deviations(Q: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """``Q - centre`` per row, each entry capped to ``[-DEVIATION_CAP, DEVIATION_CAP]`` (no overflow)."""
    lo = np.clip(centre, _INT64_MIN + DEVIATION_CAP, None) - DEVIATION_CAP
    hi = np.clip(centre, None, _INT64_MAX - DEVIATION_CAP) + DEVIATION_CAP
    return np.clip(Q, lo, hi) - centre


def norms(E: np.ndarray) -> list[int]:
    """Integer L2 norm of each row of deviations ``E`` (entries within ``DEVIATION_CAP``):
    ``isqrt(sum e**2)``, exact."""
    e = np.clip(E, -DEVIATION_CAP, DEVIATION_CAP)
    n, d = e.shape
    pad = (-d) % _NORM_BLOCK
    if pad:
        e = np.concatenate([e, np.zeros((n, pad), dtype=np.int64)], axis=1)
    blocks = (e * e).reshape(n, -1, _NORM_BLOCK).sum(axis=2)  # each at most 2**63 - 1
    return [math.isqrt(sum(int(b) for b in row)) for row in blocks]


def clip_scaled(E: np.ndarray, radius: int, r: Sequence[int]) -> np.ndarray:
    """Rows of ``E`` whose norm ``r[i]`` exceeds ``radius`` scaled by ``radius / r[i]`` and floored
    (one correctly rounded division, one product and a floor per element); others as they are."""
    out = E.copy()
    for i, ri in enumerate(r):
        if ri > radius:
            factor = radius / ri  # Python's int / int: correctly rounded
            out[i] = np.floor(E[i].astype(np.float64) * factor).astype(np.int64)
    return out


def centered_clip_int(updates: Sequence[np.ndarray] | np.ndarray, iterations: int = 1) -> np.ndarray:
    """Centred clipping around the coordinate-wise median, its radius the median distance.

    The centre ``v`` starts at the exact coordinate median of the updates. Each iteration
    measures every update's distance ``r_i = ||q_i - v||`` (integers), takes the (lower) median
    ``tau`` of those distances as the clipping radius, clips every deviation ``q_i - v`` to norm
    ``tau`` and moves ``v`` by the floor of their mean. Nothing depends on a Byzantine fraction:
    with fewer than half of the updates arbitrary, ``tau`` is at most the largest honest distance
    and each arbitrary update moves the result by at most ``tau / n`` (Karimireddy, He and Jaggi,
    2021, "Learning from history for Byzantine robust optimization", from a robust start).
    Weights are ignored (every update counts once); each coordinate's deviation is capped to
    ``DEVIATION_CAP`` first.

    Parameters
    ----------
    updates : sequence of numpy.ndarray or numpy.ndarray
        ``n >= 1`` quantized (int64) updates of one length, or their ``(n, d)`` stack.
    iterations : int, optional
        Clipping steps (default 1).

    Returns
    -------
    numpy.ndarray
        int64 ``(d,)``: the aggregated update.
    """
    Q = _stack(updates)
    if isinstance(iterations, bool) or int(iterations) != iterations or iterations < 1:
        raise ConfigError(f"iterations must be a positive integer, got {iterations!r}")
    v = median_int(Q)
    n = Q.shape[0]
    for _ in range(int(iterations)):
        E = deviations(Q, v)
        r = norms(E)
        tau = sorted(r)[(n - 1) // 2]
        moved = clip_scaled(E, tau, r).sum(axis=0) // n  # |sum| <= n * 2**26: no overflow
        v = np.clip(v, _INT64_MIN + DEVIATION_CAP, _INT64_MAX - DEVIATION_CAP) + moved  # saturating, never wraps
    return v


def norm_bounded_mean_int(updates: Sequence[np.ndarray] | np.ndarray, weights: Sequence[int] | None = None) -> np.ndarray:
    """Norm bounding (Sun et al., 2019) with the median norm as the bound: every update (each
    coordinate capped to ``DEVIATION_CAP``) whose integer L2 norm exceeds the (lower) median norm
    is scaled down to it, then the exact weighted mean (``fedavg_int``; all weights 1 by default).
    Needs no Byzantine fraction: a minority cannot raise the bound, so the result's norm is at most
    the largest honest norm."""
    from fedmarket.fl.aggregate import fedavg_int

    Q = _stack(updates)
    E = deviations(Q, np.zeros(Q.shape[1], dtype=np.int64))
    r = norms(E)
    bound = sorted(r)[(len(r) - 1) // 2]
    return fedavg_int(clip_scaled(E, bound, r), [1] * len(r) if weights is None else list(weights))
