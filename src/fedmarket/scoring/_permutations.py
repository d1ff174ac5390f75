"""Shared engine of the permutation estimators: batched walks along permutations with truncation, and the result type."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedmarket.errors import ConfigError
from fedmarket.scoring.utility import Utility


@dataclass
class ShapleyEstimate:
    """Shapley values estimated by sampling permutations.

    Attributes
    ----------
    values : numpy.ndarray
        float64 ``(n,)`` estimates.
    permutations : int
        Permutations walked.
    evaluations : int
        Coalitions evaluated (cache misses of the utility) by this call.
    converged : bool
        Whether the convergence criterion stopped the sampling (rather than the permutation budget).
    round_truncated : bool
        Whether the whole round was skipped (between-round truncation: too small a total gain).
    """

    values: np.ndarray
    permutations: int
    evaluations: int
    converged: bool
    round_truncated: bool = False


def check_positive(name: str, value: float, allow_zero: bool = True) -> float:
    """Validate a finite tolerance, ``>= 0`` (or ``> 0``), and return it as float."""
    ok = np.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if isinstance(value, bool) or not ok:
        raise ConfigError(f"{name} must be a finite {'non-negative' if allow_zero else 'positive'} number, got {value!r}")
    return float(value)


def check_count(name: str, value: int) -> int:
    """Validate a positive integer and return it."""
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def walk(
    utility: Utility, perms: np.ndarray, v_empty: float, v_full: float, tol: float, *, residual: bool = False
) -> np.ndarray:
    """Marginal contributions along a batch of permutations, all walked in lockstep.

    At step ``k`` every permutation still walking adds its ``k``-th player;
    the new prefixes are evaluated as one batch (through the utility's
    cache). A permutation is truncated once its prefix is within ``tol`` of
    the grand coalition's value: the remaining players get a zero marginal.
    The last prefix is the grand coalition and is not re-evaluated. The
    utility may keep running sums along the walk (``new_walk`` /
    ``walk_values``) so a step costs one added update, not a whole aggregation.

    Parameters
    ----------
    utility : Utility
        The game.
    perms : numpy.ndarray
        int ``(P, n)``, each row a permutation of ``range(n)``.
    v_empty, v_full : float
        Values of the empty and the grand coalition.
    tol : float
        Truncation tolerance (absolute, in utility units); 0 disables it
        (except on exact equality).
    residual : bool, optional
        On truncation, split the remaining gain ``v_full - v(prefix)`` equally
        among the players not reached instead of giving them 0, so every
        row's marginals sum to exactly ``v_full - v_empty`` (default False).

    Returns
    -------
    numpy.ndarray
        float64 ``(P, n)``: entry ``(p, i)`` is player ``i``'s marginal in permutation ``p``.
    """
    P, n = perms.shape
    marg = np.zeros((P, n))
    mask = np.zeros((P, n), dtype=bool)
    prev = np.full(P, float(v_empty))
    alive = np.ones(P, dtype=bool)
    state = utility.new_walk(P)
    for k in range(n):
        a = np.flatnonzero(alive)
        if a.size == 0:
            break
        players = perms[a, k]
        mask[a, players] = True
        if k == n - 1:
            vals = np.full(a.size, float(v_full))
        else:
            vals = utility.walk_values(state, a, players, mask[a])
        marg[a, players] = vals - prev[a]
        prev[a] = vals
        dead = a[np.abs(v_full - vals) <= tol]
        alive[dead] = False
        if residual and k < n - 1 and dead.size:
            rest = perms[dead, k + 1 :]
            marg[dead[:, None], rest] = ((v_full - prev[dead]) / (n - 1 - k))[:, None]
    return marg


def sample(
    utility: Utility,
    draw,
    *,
    eps: float,
    conv_tol: float,
    max_permutations: int,
    min_batches: int,
) -> ShapleyEstimate:
    """Run batches of permutations from ``draw(batch_index) -> perms`` until the running mean settles.

    The estimate after each batch is the mean marginal over every
    permutation so far; sampling stops when the values' mean absolute change
    over the last batch is at most ``conv_tol`` times their mean absolute
    value (an average relative change, after at least ``min_batches``
    batches), or after ``max_permutations``.
    """
    start = utility.evaluations
    v_empty, v_full = utility.empty(), utility.grand()
    total = abs(v_full - v_empty)
    tol = eps * total
    n = utility.n
    acc = np.zeros(n)
    count = 0
    est = np.zeros(n)
    converged = False
    b = 0
    while count < max_permutations:
        perms = draw(b)[: max_permutations - count]
        acc += walk(utility, perms, v_empty, v_full, tol).sum(axis=0)
        count += perms.shape[0]
        new = acc / count
        b += 1
        if b >= min_batches and np.mean(np.abs(new - est)) <= conv_tol * max(np.mean(np.abs(new)), 1e-12):
            est, converged = new, True
            break
        est = new
    return ShapleyEstimate(est, count, utility.evaluations - start, converged)
