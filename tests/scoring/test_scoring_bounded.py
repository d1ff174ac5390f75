"""Bounded scores (`scoring.round.bounded`, what market validators value updates by): a provider is
paid for the direction its data gives, not for a sample count it claims or a norm it chooses."""

from __future__ import annotations

import numpy as np

from fedmarket.scoring import score_round


def _values(digits_round, U, w):
    model, params, _, _, Xv, yv = digits_round
    return score_round(model, params, U, Xv, yv, w, metric="neg_loss", seed=0, bound=True).values


def test_a_claimed_weight_above_the_median_buys_nothing(digits_round):
    _, _, U, w, _, _ = digits_round
    claimed, median = w.copy(), w.copy()
    claimed[0], median[0] = 100 * w[0], np.median(w)
    assert np.array_equal(_values(digits_round, U, claimed), _values(digits_round, U, median))


def test_a_boosted_update_is_valued_as_sent_at_the_rounds_norm(digits_round):
    _, _, U, w, _, _ = digits_round
    top = int(np.argmax(np.linalg.norm(U, axis=1)))  # boosting it leaves the round's median norm as it is
    boosted = U.copy()
    boosted[top] *= 4
    assert np.allclose(_values(digits_round, boosted, w), _values(digits_round, U, w), rtol=1e-9, atol=1e-12)


def test_the_detection_report_reads_the_updates_as_sent(digits_round):
    """Bounding is for the values only: a boosted update (20x) is still flagged for its norm."""
    model, params, U, w, Xv, yv = digits_round
    boosted = U.copy()
    boosted[0] *= 20
    sc = score_round(model, params, boosted, Xv, yv, w, metric="neg_loss", bound=True)
    assert sc.report.poisoners[0] and sc.report.norm_ratio[0] > 10


def test_a_copy_scaled_down_is_flagged_as_a_copy(digits_round):
    """A tenth of another provider's update is far from it as sent (no near-copy there) but the same
    at the round's norm, where it would be valued like its original: both are flagged."""
    model, params, U, w, Xv, yv = digits_round
    copied = U.copy()
    copied[1] = 0.1 * U[0]
    assert not score_round(model, params, copied, Xv, yv, w, metric="neg_loss").report.sybils[1]
    report = score_round(model, params, copied, Xv, yv, w, metric="neg_loss", bound=True).report
    assert report.sybils[0] and report.sybils[1] and (0, 1) in report.sybil_pairs
