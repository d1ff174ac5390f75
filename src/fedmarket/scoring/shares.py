"""Final reward shares from per-round contribution values, and exact integer reward amounts for a pool."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedmarket.errors import ConfigError

SCALE = 10**12  # fixed-point resolution of a share before the integer split


def combine_rounds(per_round: Sequence[np.ndarray], round_weights: Sequence[float] | None = None) -> np.ndarray:
    """Total contribution of each provider across rounds: the (weighted) sum of its per-round values.

    Parameters
    ----------
    per_round : sequence of numpy.ndarray
        One ``(n,)`` array of values per round (a provider absent from a round has 0 there).
    round_weights : sequence of float, optional
        One finite weight per round (default all 1).

    Returns
    -------
    numpy.ndarray
        float64 ``(n,)``. Negative values are kept here: a round's harm offsets other rounds' help.

    Raises
    ------
    ConfigError
        On no rounds, unequal lengths, or non-finite values or weights.
    """
    if len(per_round) == 0:
        raise ConfigError("no rounds to combine")
    V = np.asarray([np.asarray(v, dtype=np.float64) for v in per_round])
    if V.ndim != 2:
        raise ConfigError("every round must give one value per provider (equal lengths)")
    w = np.ones(V.shape[0]) if round_weights is None else np.asarray(round_weights, dtype=np.float64)
    if w.shape != (V.shape[0],) or not np.all(np.isfinite(w)):
        raise ConfigError(f"need {V.shape[0]} finite round weights, got {round_weights!r}")
    if not np.all(np.isfinite(V)):
        raise ConfigError("round values must be finite")
    return w @ V


def shares(values: np.ndarray, exclude: np.ndarray | None = None) -> np.ndarray:
    """Reward fractions: negatives (and excluded providers) clipped to zero, then normalised to sum 1.

    Parameters
    ----------
    values : numpy.ndarray
        Total contribution per provider ``(n,)``.
    exclude : numpy.ndarray, optional
        Boolean ``(n,)``: providers that get nothing (e.g. flagged by detection).

    Returns
    -------
    numpy.ndarray
        float64 ``(n,)``, non-negative, summing to 1 (all zeros when nobody contributed positively).
    """
    v = np.clip(np.asarray(values, dtype=np.float64), 0.0, None)
    if not np.all(np.isfinite(v)):
        raise ConfigError("values must be finite")
    if exclude is not None:
        ex = np.asarray(exclude, dtype=bool)
        if ex.shape != v.shape:
            raise ConfigError(f"exclude must have shape {v.shape}, got {ex.shape}")
        v = np.where(ex, 0.0, v)
    total = v.sum()
    return v / total if total > 0 else np.zeros_like(v)


def reward_amounts(pool: int, values: np.ndarray, exclude: np.ndarray | None = None) -> list[int]:
    """Split an integer pool in proportion to the clipped values, exactly and deterministically.

    Each value is clipped at zero and fixed to an integer numerator
    ``q_i = round(v_i / max(v) * 10**12)``; provider ``i`` first gets
    ``floor(pool * q_i / sum q)``, and the few units left go one each to the
    largest remainders, ties to the lower index (largest-remainder method, in
    exact integer arithmetic). The amounts then sum to exactly ``pool`` when
    some value is positive, and to 0 otherwise; a provider with ``q_i = 0``
    gets nothing. The result can go straight into a reward Merkle tree.

    Parameters
    ----------
    pool : int
        Amount to split, ``>= 0`` (token base units).
    values : numpy.ndarray
        Total contribution per provider ``(n,)``.
    exclude : numpy.ndarray, optional
        Boolean ``(n,)``: providers that get nothing.

    Returns
    -------
    list of int
        One Python int per provider.

    Raises
    ------
    ConfigError
        On a negative or non-integer pool, or non-finite values.
    """
    if isinstance(pool, bool) or not isinstance(pool, (int, np.integer)) or pool < 0:
        raise ConfigError(f"pool must be a non-negative integer, got {pool!r}")
    pool = int(pool)
    v = shares(values, exclude)
    top = v.max() if v.size else 0.0
    if not top > 0:
        return [0] * v.shape[0]
    q = [int(x) for x in np.rint(v / top * SCALE)]
    Q = sum(q)
    base = [pool * qi // Q for qi in q]
    rem = [pool * qi % Q for qi in q]
    left = pool - sum(base)
    for i in sorted(range(len(q)), key=lambda i: (-rem[i], i))[:left]:
        base[i] += 1
    return base
