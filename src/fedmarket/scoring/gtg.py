"""GTG-Shapley (Liu et al., 2022): guided, truncated permutation sampling of per-round Shapley values in federated learning.

This implementation stratifies the estimate by coalition size: the Shapley value
is the average over sizes ``s = 0..n-1`` of the mean marginal contribution to a
coalition of size ``s``, so the smallest sizes (where FL gains concentrate and the
marginals vary most) are enumerated exactly and the rest are sampled with
Latin-square batches of truncated permutation walks.
"""

from __future__ import annotations

import numpy as np

from fedmarket.errors import ConfigError
from fedmarket.scoring._permutations import ShapleyEstimate, check_count, check_positive, walk
from fedmarket.scoring.surrogate import QUADRATIC_UP_TO, fit, prefix_marginals, surrogate_shapley
from fedmarket.scoring.utility import FunctionUtility, Utility

MAX_EXACT_STRATA = 2
CONTROL_CONV_TOL = 0.07  # mean standard error over mean |value| at which the controlled sampling stops (shapley_tune.py)
CONTROL_UP_TO = QUADRATIC_UP_TO  # players: beyond, a linear surrogate leaves too much variance to stop in budget
SURROGATE_BATCHES = 20  # Latin batches of the surrogate's own (free) walks, when it is too large to enumerate


def guided_permutations(n: int, rng: np.random.Generator, first: np.ndarray | None = None) -> np.ndarray:
    """One guided batch: ``n`` permutations, row ``k`` starting with player ``first[k]`` (default ``k``), the rest in random order.

    Parameters
    ----------
    n : int
        Number of players.
    rng : numpy.random.Generator
        Source of the random tails.
    first : numpy.ndarray, optional
        Leading player of each row (default ``arange(n)``).

    Returns
    -------
    numpy.ndarray
        int64 ``(len(first), n)``, each row a permutation.
    """
    first = np.arange(n) if first is None else np.asarray(first, dtype=np.int64)
    rest = np.tile(np.arange(n), (first.shape[0], 1))
    rest = rest[rest != first[:, None]].reshape(first.shape[0], n - 1)
    return np.concatenate([first[:, None], rng.permuted(rest, axis=1)], axis=1)


def latin_permutations(n: int, rng: np.random.Generator) -> np.ndarray:
    """One guided batch balanced at every position: ``n`` permutations forming a random Latin square.

    Row ``k`` is ``pi[(r[k] + c[j]) % n]`` for three independent uniform
    permutations ``pi, r, c``: every row is a uniformly random permutation,
    and every player stands at every position exactly once in the batch (the
    guided batch of the paper balances the first position only).

    Parameters
    ----------
    n : int
        Number of players.
    rng : numpy.random.Generator
        Source of the three permutations.

    Returns
    -------
    numpy.ndarray
        int64 ``(n, n)``; each row and each column a permutation of ``range(n)``.
    """
    pi, r, c = rng.permutation(n), rng.permutation(n), rng.permutation(n)
    return pi[(r[:, None] + c[None, :]) % n].astype(np.int64)


def small_strata(utility: Utility, sizes: int) -> np.ndarray:
    """Exact mean marginals for the ``sizes`` smallest coalition sizes (0, 1 or 2), enumerating every coalition of size ``<= sizes``.

    Returns
    -------
    numpy.ndarray
        float64 ``(sizes, n)``: entry ``(s, i)`` is the mean of ``v(S + i) - v(S)``
        over all coalitions ``S`` of size ``s`` without ``i``
        (``1 + n + n(n-1)/2`` evaluations for ``sizes = 2``, in one batch).
    """
    n = utility.n
    sizes = min(sizes, n)
    out = np.zeros((sizes, n))
    if sizes == 0:
        return out
    eye = np.eye(n, dtype=bool)
    iu, ju = np.triu_indices(n, 1) if sizes > 1 else (np.zeros(0, np.int64), np.zeros(0, np.int64))
    pairs = np.zeros((iu.size, n), dtype=bool)
    pairs[np.arange(iu.size), iu] = True
    pairs[np.arange(iu.size), ju] = True
    vals = utility.values(np.concatenate([np.zeros((1, n), dtype=bool), eye, pairs]))
    v0, v1 = vals[0], vals[1 : n + 1]
    out[0] = v1 - v0
    if sizes > 1:
        V2 = np.zeros((n, n))
        V2[iu, ju] = V2[ju, iu] = vals[n + 1 :]
        out[1] = (V2.sum(axis=1) - (v1.sum() - v1)) / (n - 1)  # mean over j != i of v({i, j}) - v({j})
    return out


def stratified_values(sums: np.ndarray, counts: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """Shapley estimate ``phi_i = (1/n) sum_s mu[s, i]`` from per-(size, player) sums and counts of sampled marginals.

    Rows ``s < len(exact)`` are taken from ``exact``; a sampled stratum with no
    sample yet falls back to the player's mean over all its samples (0 if none).
    """
    n = sums.shape[1]
    tot_c = counts.sum(axis=0)
    fallback = np.divide(sums.sum(axis=0), tot_c, out=np.zeros(n), where=tot_c > 0)
    mu = np.where(counts > 0, sums / np.maximum(counts, 1), fallback[None, :])
    mu[: exact.shape[0]] = exact
    return mu.mean(axis=0)


def gtg_shapley(
    utility: Utility,
    *,
    seed: int,
    eps: float | None = None,
    round_tol: float = 1e-3,
    conv_tol: float | None = None,
    max_permutations: int | None = None,
    min_batches: int | None = None,
    exact_strata: int = 2,
    residual: bool = True,
    control: bool | None = None,
) -> ShapleyEstimate:
    """Estimate one round's Shapley values with GTG-Shapley.

    - **Between-round truncation**: when ``|v(N) - v(empty)|`` is at most ``round_tol``, the
      round is skipped and every value is 0 (two evaluations).
    - **Stratification by coalition size**: ``phi_i`` is the mean over sizes ``s`` of player
      ``i``'s mean marginal to coalitions of size ``s``. The ``exact_strata`` smallest sizes
      (where FL gains concentrate and vary most) are enumerated exactly, ``1 + n + n(n-1)/2``
      coalitions for the default 2, in one batch; the others are averaged from the walks.
    - **Guided sampling**: permutations come in batches of ``n`` forming a random Latin square
      (:func:`latin_permutations`): every player at every position once per batch.
    - **Control variate** (``control``, default up to ``CONTROL_UP_TO`` players): only the
      residual ``v - g`` of a quadratic surrogate ``g`` fitted to the coalitions evaluated so far
      (:mod:`~fedmarket.scoring.surrogate`, whose Shapley values cost no evaluation) is sampled,
      until the residual's standard error (:func:`controlled_values`) averages at most
      ``conv_tol`` times the values' mean magnitude: the budget follows the observed variance.
    - **Within-round truncation** (default only without the control variate): a walk stops once
      its prefix is within ``eps * |v(N) - v(empty)|`` of ``v(N)``, the remaining gain split
      among the players not reached (``residual``); sampling stops at an average relative change
      of the values of at most ``conv_tol`` over a batch.

    Every batch walks its permutations in lockstep, so each step is one
    batched evaluation, and coalitions already seen come from the utility's cache.

    Parameters
    ----------
    utility : Utility
        The round's game (e.g. :class:`~fedmarket.scoring.utility.AggregationUtility`).
    seed : int
        Seed of the permutations.
    eps, conv_tol : float, optional
        Truncation (relative to the total gain) and stopping tolerances; defaults 0 and 0.07
        with the control variate, 0.1 and 0.1 without.
    round_tol : float, optional
        Between-round truncation threshold, absolute in utility units (default 1e-3).
    max_permutations : int, optional
        Budget (default ``max(100, 10 * n)``).
    min_batches : int, optional
        Batches run before stopping is tested (default 1 with the control variate, else 2).
    exact_strata : int, optional
        Number of smallest coalition sizes enumerated exactly: 0, 1 or 2 (default 2).
    residual : bool, optional
        Split a truncated walk's remaining gain among the players not reached (default True).
    control : bool, optional
        Sample only the residual of a fitted surrogate (default: up to ``CONTROL_UP_TO`` players).

    Returns
    -------
    ShapleyEstimate
    """
    control = utility.n <= CONTROL_UP_TO if control is None else bool(control)
    eps = (0.0 if control else 0.1) if eps is None else eps
    conv_tol = (CONTROL_CONV_TOL if control else 0.1) if conv_tol is None else conv_tol
    min_batches = (1 if control else 2) if min_batches is None else min_batches
    eps, round_tol, conv_tol, min_batches = _check_options(eps, round_tol, conv_tol, min_batches, exact_strata)
    n = utility.n
    budget = max(100, 10 * n) if max_permutations is None else check_count("max_permutations", max_permutations)
    start = utility.evaluations
    v_empty, v_full = utility.empty(), utility.grand()
    if abs(v_full - v_empty) <= round_tol:
        return ShapleyEstimate(np.zeros(n), 0, utility.evaluations - start, True, round_truncated=True)
    exact = small_strata(utility, exact_strata)
    est, count, converged = _sample_strata(
        utility, exact, np.random.default_rng(seed), v_empty=v_empty, v_full=v_full,
        tol=eps * abs(v_full - v_empty) if eps > 0 else -1.0, budget=budget, conv_tol=conv_tol,
        min_batches=min_batches, residual=residual, control=control,
    )
    return ShapleyEstimate(est, count, utility.evaluations - start, converged)


def _check_options(
    eps: float, round_tol: float, conv_tol: float, min_batches: int, exact_strata: int
) -> tuple[float, float, float, int]:
    """Validate the tolerances and counts of :func:`gtg_shapley`; return them normalised."""
    eps = check_positive("eps", eps)
    round_tol = check_positive("round_tol", round_tol)
    conv_tol = check_positive("conv_tol", conv_tol)
    min_batches = check_count("min_batches", min_batches)
    if isinstance(exact_strata, bool) or exact_strata not in range(MAX_EXACT_STRATA + 1):
        raise ConfigError(f"exact_strata must be 0, 1 or {MAX_EXACT_STRATA}, got {exact_strata!r}")
    return eps, round_tol, conv_tol, min_batches


def _sample_strata(
    utility: Utility,
    exact: np.ndarray,
    rng: np.random.Generator,
    *,
    v_empty: float,
    v_full: float,
    tol: float,
    budget: int,
    conv_tol: float,
    min_batches: int,
    residual: bool,
    control: bool,
) -> tuple[np.ndarray, int, bool]:
    """The sampling loop of :func:`gtg_shapley`: Latin-square batches of walks, to convergence or budget.

    Returns the stratified estimate, the number of permutations walked, and
    whether the estimate converged (immediately so when ``exact`` covers every stratum).
    """
    n = utility.n
    sums, counts = np.zeros((n, n)), np.zeros((n, n))
    est = stratified_values(sums, counts, exact)
    converged = exact.shape[0] == n  # every stratum enumerated: nothing to sample
    perms_all, marg_all = [], []
    surrogate_rng = np.random.default_rng(rng.integers(2**63))  # the surrogate's own permutations (large n)
    count = b = 0
    while not converged and count < budget:
        perms = latin_permutations(n, rng)[: budget - count]
        marg = walk(utility, perms, v_empty, v_full, tol, residual=residual)
        count += perms.shape[0]
        b += 1
        if control:
            perms_all.append(perms)
            marg_all.append(marg)
            if count < budget and (b < min_batches or conv_tol == 0):
                continue  # no stopping test due: the estimate is made once it is
            new, se = controlled_values(utility, exact.shape[0], np.concatenate(perms_all), np.concatenate(marg_all),
                                        v_empty, surrogate_rng)
            converged = b >= min_batches and np.mean(se) <= conv_tol * max(np.mean(np.abs(new)), 1e-12)
        else:
            _add_by_stratum(sums, counts, perms, marg)
            new = stratified_values(sums, counts, exact)
            converged = b >= min_batches and np.mean(np.abs(new - est)) <= conv_tol * max(np.mean(np.abs(new)), 1e-12)
        est = new
    return est, count, converged


def controlled_values(
    utility: Utility, exact_strata: int, perms: np.ndarray, marg: np.ndarray, v_empty: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Shapley estimate with a fitted surrogate as control variate, and each value's standard error.

    The surrogate ``g`` is fitted to every coalition ``utility`` has evaluated; the estimate is
    ``g``'s Shapley values plus the stratified estimate of the residual game ``v - g`` from the
    walked marginals ``marg`` ``(P, n)`` along ``perms`` (its ``exact_strata`` smallest strata
    exact, from the cache). The standard error of value ``i`` is
    ``sqrt(sum_s var[s] / count[s, i]) / n`` over the sampled strata, ``var[s]`` the variance of
    every player's residual marginals to coalitions of size ``s`` about their common mean (an
    upper bound of the within-player variance, that one Latin batch, one sample of every player
    in every stratum, already gives).
    """
    n = utility.n
    masks, vals = utility.seen()
    g = fit(masks, vals, utility.coefficients, v_empty)
    phi_g = surrogate_shapley(g, lambda: latin_permutations(n, rng), batches=SURROGATE_BATCHES)
    exact_r = small_strata(utility, exact_strata) - small_strata(FunctionUtility(n, g), exact_strata)
    r = marg - prefix_marginals(g, perms)
    sums, counts = np.zeros((n, n)), np.zeros((n, n))
    _add_by_stratum(sums, counts, perms, r)
    sq = np.zeros((n, n))
    _add_by_stratum(sq, np.zeros((n, n)), perms, r * r)
    k, tot = counts.sum(axis=1), sums.sum(axis=1)  # per stratum, every player's samples together
    var = np.divide(sq.sum(axis=1) - tot * tot / np.maximum(k, 1), k - 1, out=np.full(n, np.inf), where=k > 1)
    c = counts[exact_strata:]
    se = np.sqrt(np.sum(np.where(c > 0, np.maximum(var[exact_strata:, None], 0.0) / np.maximum(c, 1), np.inf), axis=0)) / n
    return phi_g + stratified_values(sums, counts, exact_r), se


def _add_by_stratum(sums: np.ndarray, counts: np.ndarray, perms: np.ndarray, marg: np.ndarray) -> None:
    """Add walked marginals ``marg`` ``(p, n)`` into per-(coalition size, player) ``sums`` and ``counts``, in place."""
    n = sums.shape[1]
    pos = np.argsort(perms, axis=1)  # (p, i): the size of the coalition player i joined
    flat = (pos * n + np.arange(n)).ravel()
    sums += np.bincount(flat, weights=marg.ravel(), minlength=n * n).reshape(n, n)
    counts += np.bincount(flat, minlength=n * n).reshape(n, n)
