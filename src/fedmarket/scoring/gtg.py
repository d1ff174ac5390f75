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
from fedmarket.scoring.utility import Utility

MAX_EXACT_STRATA = 2


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
    eps: float = 0.1,
    round_tol: float = 1e-3,
    conv_tol: float = 0.1,
    max_permutations: int | None = None,
    min_batches: int = 2,
    exact_strata: int = 2,
    residual: bool = True,
) -> ShapleyEstimate:
    """Estimate one round's Shapley values with GTG-Shapley.

    - **Between-round truncation**: when the round's total gain
      ``|v(N) - v(empty)|`` is at most ``round_tol``, the round is skipped and
      every value is 0 (two evaluations).
    - **Within-round truncation**: a permutation stops once its prefix is
      within ``eps * |v(N) - v(empty)|`` of ``v(N)``; the remaining gain
      ``v(N) - v(prefix)`` is split equally among the players not reached
      (``residual``; else they get 0), so each walk stays efficient.
    - **Stratification by coalition size**: ``phi_i`` is the mean over sizes
      ``s`` of player ``i``'s mean marginal to coalitions of size ``s``. The
      ``exact_strata`` smallest sizes (where the marginal gains of FL
      concentrate and vary most) are enumerated exactly, ``1 + n + n(n-1)/2``
      coalitions for the default 2, in one batched evaluation; the other
      sizes are averaged from the walks, whose first steps then hit the cache.
    - **Guided sampling**: permutations come in batches of ``n`` forming a
      random Latin square (:func:`latin_permutations`), so every player is
      measured at every position, i.e. in every size stratum, once per batch.
    - **Convergence**: stop once the values' average relative change over the
      last batch is at most ``conv_tol``, or at the budget.

    Every batch walks its permutations in lockstep, so each step is one
    batched evaluation, and coalitions already seen come from the utility's cache.

    Parameters
    ----------
    utility : Utility
        The round's game (e.g. :class:`~fedmarket.scoring.utility.AggregationUtility`).
    seed : int
        Seed of the permutations.
    eps : float, optional
        Within-round truncation tolerance, relative to the total gain (default 0.1).
    round_tol : float, optional
        Between-round truncation threshold, absolute in utility units (default 1e-3).
    conv_tol : float, optional
        Convergence tolerance: average relative change of the values over a batch (default 0.1).
    max_permutations : int, optional
        Budget (default ``max(100, 10 * n)``).
    min_batches : int, optional
        Batches run before convergence is tested (default 2).
    exact_strata : int, optional
        Number of smallest coalition sizes enumerated exactly: 0, 1 or 2 (default 2).
    residual : bool, optional
        Split a truncated walk's remaining gain among the players not reached (default True).

    Returns
    -------
    ShapleyEstimate
    """
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
        tol=eps * abs(v_full - v_empty), budget=budget, conv_tol=conv_tol, min_batches=min_batches,
        residual=residual,
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
) -> tuple[np.ndarray, int, bool]:
    """The sampling loop of :func:`gtg_shapley`: Latin-square batches of truncated walks, to convergence or budget.

    Returns the stratified estimate, the number of permutations walked, and
    whether the estimate converged (immediately so when ``exact`` covers every stratum).
    """
    n = utility.n
    sums, counts = np.zeros((n, n)), np.zeros((n, n))
    est = stratified_values(sums, counts, exact)
    converged = exact.shape[0] == n  # every stratum enumerated: nothing to sample
    count = b = 0
    while not converged and count < budget:
        perms = latin_permutations(n, rng)[: budget - count]
        marg = walk(utility, perms, v_empty, v_full, tol, residual=residual)
        _add_by_stratum(sums, counts, perms, marg)
        count += perms.shape[0]
        b += 1
        new = stratified_values(sums, counts, exact)
        if b >= min_batches and np.mean(np.abs(new - est)) <= conv_tol * max(np.mean(np.abs(new)), 1e-12):
            converged = True
        est = new
    return est, count, converged


def _add_by_stratum(sums: np.ndarray, counts: np.ndarray, perms: np.ndarray, marg: np.ndarray) -> None:
    """Add walked marginals ``marg`` ``(p, n)`` into per-(coalition size, player) ``sums`` and ``counts``, in place."""
    n = sums.shape[1]
    pos = np.argsort(perms, axis=1)  # (p, i): the size of the coalition player i joined
    flat = (pos * n + np.arange(n)).ravel()
    sums += np.bincount(flat, weights=marg.ravel(), minlength=n * n).reshape(n, n)
    counts += np.bincount(flat, minlength=n * n).reshape(n, n)
