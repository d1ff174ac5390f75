"""One round's scores for a validator: contribution values of every provider plus the detection report."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedmarket.errors import ConfigError
from fedmarket.fl.models import Model
from fedmarket.scoring.detect import DetectionReport, detect
from fedmarket.scoring.gtg import gtg_shapley
from fedmarket.scoring.loo import leave_one_out
from fedmarket.scoring.shapley_exact import exact_shapley
from fedmarket.scoring.tmc import tmc_shapley
from fedmarket.scoring.utility import AggregationUtility

METHODS: tuple[str, ...] = ("auto", "exact", "gtg", "tmc", "loo")
EXACT_UP_TO = 12  # "auto" enumerates every coalition up to this many providers, GTG beyond
def bounded(updates: np.ndarray, weights: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """What a market validator values a round's updates by: each (nonzero) update scaled to the
    round's median norm, each claimed weight capped at the round's median weight. A sample count
    is a claim and a norm is the provider's choice: scaled by either, an update's value (its share
    of every coalition's model) would grow with it, and so would its pay; bounded, a provider is
    paid for the direction its data gives, not for the size it claims."""
    U = np.asarray(updates, dtype=np.float64)
    norms = np.linalg.norm(U, axis=1)
    target = float(np.median(norms))
    scale = np.where(norms > 0, target / np.where(norms > 0, norms, 1.0), 0.0)
    w = np.asarray(weights, dtype=np.float64)
    return U * scale[:, None], np.minimum(w, float(np.median(w)))


@dataclass
class RoundScore:
    """A validator's scores of one round.

    Attributes
    ----------
    values : numpy.ndarray
        Contribution value of each provider ``(n,)`` (utility units; they sum to about ``v(N) - v(empty)``).
    method : str
        The estimator used.
    report : DetectionReport
        Free-rider, Sybil and poisoning flags (they use ``values``).
    evaluations : int
        Coalitions evaluated.
    """

    values: np.ndarray
    method: str
    report: DetectionReport
    evaluations: int

    @property
    def rewardable(self) -> np.ndarray:
        """Values with every flagged provider set to 0 (feed these to :func:`~fedmarket.scoring.shares.combine_rounds`)."""
        return np.where(self.report.flagged, 0.0, self.values)


def score_round(
    model: Model,
    params: np.ndarray,
    updates: np.ndarray,
    X: np.ndarray,
    y: np.ndarray,
    weights: Sequence[float] | None = None,
    *,
    method: str = "auto",
    metric: str = "accuracy",
    seed: int = 0,
    share: str = "round",
    bound: bool = False,
) -> RoundScore:
    """Score every provider of one round on the validator's held-out data.

    Parameters
    ----------
    model : Model
        The job's model.
    params : numpy.ndarray
        The round's starting global parameters.
    updates : numpy.ndarray
        The providers' deltas ``(n, n_params)`` (dequantised), ``n >= 1`` (a lone update is valued
        by what it adds to the round's starting model).
    X, y : numpy.ndarray
        The validator's held-out data.
    weights : sequence of float, optional
        Aggregation weights (sample counts), default all 1.
    method : {"auto", "exact", "gtg", "tmc", "loo"}, optional
        Estimator; "auto" is exact Shapley for ``n <= 12`` and GTG-Shapley above.
    metric : {"accuracy", "neg_loss"}, optional
        Value of a coalition's model.
    seed : int, optional
        Seed of the sampling estimators.
    share : {"round", "coalition"}, optional
        What a member's update is weighted against in a coalition's model (see
        :class:`~fedmarket.scoring.utility.AggregationUtility`). The default "round" values each
        provider by the term it really adds to the round's aggregate: weighted against the
        coalition instead, an honest provider with few samples (hence few local steps, a short
        update) is valued below 0 for diluting the longer updates, and paid nothing.
    bound : bool, optional
        Value the updates as :func:`bounded` makes them (what market validators do); the
        detection report reads the updates as sent, and looks for near copies among the bounded
        ones too (a copy scaled down would be valued like its original).

    Returns
    -------
    RoundScore
    """
    if method not in METHODS:
        raise ConfigError(f"unknown scoring method {method!r}; choose one of: {', '.join(METHODS)}")
    if bound:
        raw = np.asarray(updates, dtype=np.float64)
        updates, weights = bounded(raw, np.ones(len(raw)) if weights is None else weights)
    u = AggregationUtility(model, params, updates, X, y, weights, metric=metric, share=share)
    if method == "auto":
        method = "exact" if u.n <= EXACT_UP_TO else "gtg"
    if method == "exact":
        values = exact_shapley(u)
    elif method == "loo":
        values = leave_one_out(u)
    else:
        values = (gtg_shapley if method == "gtg" else tmc_shapley)(u, seed=seed).values
    report = detect(raw if bound else u.U, values=values)
    if bound:  # a copy shrunk (or grown) is a near copy at the round's norm: its value is its original's
        scaled = detect(u.U, values=values)
        for i, j in scaled.sybil_pairs:
            if (i, j) not in report.sybil_pairs and not (report.free_riders[i] or report.free_riders[j]):
                report.sybil_pairs.append((i, j))
                for a, b in ((i, j), (j, i)):
                    report.sybils[a] = True
                    report.reasons.setdefault(a, []).append(f"sybil: copy of provider {b} (scaled)")
    return RoundScore(values, method, report, u.evaluations)
