"""A cheap surrogate of a round's game, as a control variate for sampled Shapley values (pure math).

The value of coalition ``S`` in federated learning is the quality of the model aggregated from
its members' updates with coefficients ``a_S`` (``Utility.coefficients``: their aggregation
weights over the coalition's, or the round's, total weight), a smooth function of ``a_S`` plus
evaluation noise. A quadratic in ``a_S``, ``g(S) = c + b.a_S + sum_{i<=j} Q_ij a_i a_j``, fitted by least squares to the coalitions a
sampler has already evaluated, follows most of it; its Shapley values cost no evaluation of the
real game (every coalition when ``n`` is small, else many cheap sampled permutations), so only
the residual ``v - g``, whose marginals vary far less than those of ``v``, has to be sampled
(regression-adjusted Monte Carlo). Above ``QUADRATIC_UP_TO`` players the surrogate is linear in
``a_S`` (``n + 1`` terms instead of ``(n + 1)(n + 2) / 2``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fedmarket.scoring.shapley_exact import shapley_from_table
from fedmarket.scoring.utility import all_masks

QUADRATIC_UP_TO = 30  # players; beyond, the surrogate is linear in the coefficients
RIDGE = 1e-9  # ridge of the fit, relative to the mean diagonal of the normal equations
ENUMERATE_UP_TO = 14  # players; beyond, the surrogate's Shapley values are sampled


@dataclass
class Surrogate:
    """A fitted quadratic (or linear) function of a coalition's aggregation coefficients.

    Attributes
    ----------
    n : int
        Number of players.
    coefficients : callable
        Maps coalitions ``(B, n)`` to their members' aggregation coefficients (``Utility.coefficients``).
    coef : numpy.ndarray
        Fitted coefficients, one per feature (see :func:`features`).
    quadratic : bool
        Whether the pairwise terms are in.
    empty : float
        The empty coalition's value (taken as is, not fitted).
    """

    n: int
    coefficients: Callable[[np.ndarray], np.ndarray]
    coef: np.ndarray
    quadratic: bool
    empty: float

    def __call__(self, masks: np.ndarray) -> np.ndarray:
        """Surrogate values of boolean coalitions ``(B, n)``; the empty coalition gets ``empty``."""
        masks = np.asarray(masks, dtype=bool)
        out = features(self.coefficients(masks), self.quadratic) @ self.coef
        out[~masks.any(axis=1)] = self.empty
        return out


def features(A: np.ndarray, quadratic: bool) -> np.ndarray:
    """Design matrix from coalitions' coefficients ``A`` ``(B, n)``: a constant, ``A`` and (quadratic) every ``a_i a_j``, ``i <= j``."""
    cols = [np.ones((A.shape[0], 1)), A]
    if quadratic:
        iu, ju = np.triu_indices(A.shape[1])
        cols.append(A[:, iu] * A[:, ju])
    return np.concatenate(cols, axis=1)


def fit(masks: np.ndarray, values: np.ndarray, coefficients: Callable[[np.ndarray], np.ndarray], empty: float) -> Surrogate:
    """Least-squares fit (a vanishing ridge) of the surrogate to evaluated non-empty coalitions.

    Parameters
    ----------
    masks : numpy.ndarray
        Evaluated coalitions ``(B, n)``.
    values : numpy.ndarray
        Their values ``(B,)``.
    coefficients : callable
        The game's aggregation coefficients of coalitions (``Utility.coefficients``).
    empty : float
        The empty coalition's value.
    """
    masks = np.asarray(masks, dtype=bool)
    keep = masks.any(axis=1)
    quadratic = masks.shape[1] <= QUADRATIC_UP_TO
    F = features(coefficients(masks[keep]), quadratic)
    y = np.asarray(values, dtype=np.float64)[keep]
    # normal equations with a vanishing ridge: the design is rank-deficient when the coefficients
    # sum to 1 (FedAvg over the coalition) or there are fewer coalitions than terms; one small
    # solve, where an SVD-based lstsq stalls on a loaded BLAS
    G = F.T @ F
    G[np.diag_indices_from(G)] += RIDGE * max(float(np.trace(G)) / G.shape[0], 1e-300)
    return Surrogate(masks.shape[1], coefficients, np.linalg.solve(G, F.T @ y), quadratic, float(empty))


def prefix_values(g: Surrogate, perms: np.ndarray) -> np.ndarray:
    """Surrogate values of every prefix of every permutation: ``(P, n + 1)``, column ``k`` the first ``k`` players."""
    P, n = perms.shape
    pos = np.argsort(perms, axis=1)  # (p, i): where player i stands
    masks = pos[:, None, :] < np.arange(1, n + 1)[None, :, None]  # (P, n, n): prefix k+1 holds players at < k+1
    vals = g(masks.reshape(P * n, n)).reshape(P, n)
    return np.concatenate([np.full((P, 1), g.empty), vals], axis=1)


def prefix_marginals(g: Surrogate, perms: np.ndarray) -> np.ndarray:
    """Surrogate marginals along permutations, ``(P, n)`` by player (as :func:`~fedmarket.scoring._permutations.walk`)."""
    pv = prefix_values(g, perms)
    steps = np.diff(pv, axis=1)  # (P, n) by position
    out = np.empty_like(steps)
    np.put_along_axis(out, perms, steps, axis=1)
    return out


def surrogate_shapley(g: Surrogate, draw, batches: int = 50) -> np.ndarray:
    """Shapley values of the surrogate: exact over every coalition up to ``ENUMERATE_UP_TO`` players,
    else the mean marginal over ``batches`` batches of permutations from ``draw()`` (no real evaluation)."""
    n = g.n
    if n <= ENUMERATE_UP_TO:
        return shapley_from_table(g(all_masks(n)))
    total, count = np.zeros(n), 0
    for _ in range(batches):
        perms = draw()
        total += prefix_marginals(g, perms).sum(axis=0)
        count += perms.shape[0]
    return total / count
