"""Exact Shapley values over all ``2**n`` coalitions (small ``n``), vectorised."""

from __future__ import annotations

import math

import numpy as np

from fedmarket.errors import ConfigError
from fedmarket.scoring.utility import Utility, all_masks

MAX_EXACT_PLAYERS = 20


def shapley_weights(n: int) -> np.ndarray:
    """Weight ``|S|! (n - |S| - 1)! / n!`` of a marginal contribution to a coalition of size ``|S|``, for ``|S| = 0..n-1``."""
    return np.array([1.0 / (n * math.comb(n - 1, s)) for s in range(n)])


def shapley_from_table(table: np.ndarray) -> np.ndarray:
    """Exact Shapley values from the value of every coalition.

    Parameters
    ----------
    table : numpy.ndarray
        ``(2**n,)`` values, entry ``k`` the value of the coalition with bitmask ``k``.

    Returns
    -------
    numpy.ndarray
        float64 ``(n,)``: ``phi_i = sum_{S not containing i} |S|!(n-|S|-1)!/n! (v(S + i) - v(S))``.

    Raises
    ------
    ConfigError
        If the table's length is not a power of two.
    """
    v = np.asarray(table, dtype=np.float64)
    n = int(v.shape[0]).bit_length() - 1
    if v.ndim != 1 or n < 1 or v.shape[0] != 1 << n:
        raise ConfigError(f"a value table has 2**n entries (n >= 1), got shape {v.shape}")
    idx = np.arange(1 << n, dtype=np.int64)
    size = np.zeros(1 << n, dtype=np.int64)
    for i in range(n):
        size += (idx >> i) & 1
    w = shapley_weights(n)
    phi = np.empty(n)
    for i in range(n):
        without = idx[((idx >> i) & 1) == 0]
        phi[i] = w[size[without]] @ (v[without | (1 << i)] - v[without])
    return phi


def exact_table(utility: Utility) -> np.ndarray:
    """The value of every coalition of ``utility``'s players, indexed by bitmask (``2**n`` evaluations, one batch)."""
    if utility.n > MAX_EXACT_PLAYERS:
        raise ConfigError(
            f"exact Shapley enumerates 2**n coalitions; n = {utility.n} exceeds {MAX_EXACT_PLAYERS}: use gtg_shapley"
        )
    return utility.evaluate(all_masks(utility.n))


def exact_shapley(utility: Utility) -> np.ndarray:
    """Exact Shapley values of the game ``utility`` (``n <= 20``; practical up to about 14).

    Parameters
    ----------
    utility : Utility
        The game; all ``2**n`` coalitions are evaluated in one batch.

    Returns
    -------
    numpy.ndarray
        float64 ``(n,)``, summing to ``v(N) - v(empty)``.

    Raises
    ------
    ConfigError
        If ``n`` exceeds ``MAX_EXACT_PLAYERS``.
    """
    return shapley_from_table(exact_table(utility))
