"""GTG-Shapley (Liu et al., 2022): guided, truncated permutation sampling of per-round Shapley values in federated learning."""

from __future__ import annotations

import numpy as np

from fedmarket.scoring._permutations import ShapleyEstimate, check_count, check_positive, sample
from fedmarket.scoring.utility import Utility


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


def gtg_shapley(
    utility: Utility,
    *,
    seed: int,
    eps: float = 0.05,
    round_tol: float = 1e-3,
    conv_tol: float = 0.1,
    max_permutations: int | None = None,
    min_batches: int = 2,
) -> ShapleyEstimate:
    """Estimate one round's Shapley values with GTG-Shapley.

    - **Between-round truncation**: when the round's total gain
      ``|v(N) - v(empty)|`` is at most ``round_tol``, the round is skipped and
      every value is 0 (two evaluations).
    - **Within-round truncation**: a permutation stops once its prefix is
      within ``eps * |v(N) - v(empty)|`` of ``v(N)``; the remaining players get 0.
    - **Guided sampling**: permutations come in batches of ``n``, the ``k``-th
      starting with player ``k`` (the marginal gains of FL concentrate on
      small coalitions, so every player is measured first once per batch).
    - **Convergence**: stop once the values' average relative change over the
      last batch is at most ``conv_tol``, or at the budget.

    Every batch walks its permutations in lockstep, so each step is one
    batched evaluation, and coalitions already seen come from the utility's cache.

    Parameters
    ----------
    utility : Utility
        The round's game (e.g. :class:`~fedmarket.scoring.utility.AggregationUtility`).
    seed : int
        Seed of the permutation tails.
    eps : float, optional
        Within-round truncation tolerance, relative to the total gain (default 0.05).
    round_tol : float, optional
        Between-round truncation threshold, absolute in utility units (default 1e-3).
    conv_tol : float, optional
        Convergence tolerance: average relative change of the values over a batch (default 0.1).
    max_permutations : int, optional
        Budget (default ``max(100, 10 * n)``).
    min_batches : int, optional
        Batches run before convergence is tested (default 2).

    Returns
    -------
    ShapleyEstimate
    """
    eps = check_positive("eps", eps)
    round_tol = check_positive("round_tol", round_tol)
    conv_tol = check_positive("conv_tol", conv_tol)
    n = utility.n
    budget = max(100, 10 * n) if max_permutations is None else check_count("max_permutations", max_permutations)
    start = utility.evaluations
    if abs(utility.grand() - utility.empty()) <= round_tol:
        return ShapleyEstimate(np.zeros(n), 0, utility.evaluations - start, True, round_truncated=True)
    rng = np.random.default_rng(seed)
    est = sample(
        utility, lambda _b: guided_permutations(n, rng), eps=eps, conv_tol=conv_tol,
        max_permutations=budget, min_batches=check_count("min_batches", min_batches),
    )
    est.evaluations = utility.evaluations - start
    return est
