"""Truncated Monte-Carlo Shapley (Ghorbani & Zou, 2019): uniformly random permutations, truncated once the prefix is near the full value."""

from __future__ import annotations

import numpy as np

from fedmarket.scoring._permutations import ShapleyEstimate, check_count, check_positive, sample
from fedmarket.scoring.utility import Utility


def tmc_shapley(
    utility: Utility,
    *,
    seed: int,
    eps: float = 0.01,
    conv_tol: float = 0.1,
    batch: int | None = None,
    max_permutations: int = 2000,
    min_batches: int = 2,
) -> ShapleyEstimate:
    """Estimate Shapley values by truncated Monte-Carlo sampling of permutations.

    Parameters
    ----------
    utility : Utility
        The game.
    seed : int
        Seed of the permutations.
    eps : float, optional
        Truncation: a permutation stops once its prefix is within
        ``eps * |v(N) - v(empty)|`` of ``v(N)`` (default 0.01).
    conv_tol : float, optional
        Stop when the estimates' average relative change over the last batch
        is at most ``conv_tol`` (default 0.1).
    batch : int, optional
        Permutations per batch, walked together (default ``n``).
    max_permutations : int, optional
        Budget (default 2000).
    min_batches : int, optional
        Batches run before convergence is tested (default 2).

    Returns
    -------
    ShapleyEstimate
    """
    eps = check_positive("eps", eps)
    conv_tol = check_positive("conv_tol", conv_tol)
    n = utility.n
    batch = n if batch is None else check_count("batch", batch)
    rng = np.random.default_rng(seed)

    def draw(_b: int) -> np.ndarray:
        return rng.permuted(np.tile(np.arange(n), (batch, 1)), axis=1)

    return sample(
        utility, draw, eps=eps, conv_tol=conv_tol,
        max_permutations=check_count("max_permutations", max_permutations),
        min_batches=check_count("min_batches", min_batches),
    )
