"""Centred clipping around the median: exact and identical from any input order, bounded under arbitrary
(also int64-extreme) updates, and committed through the secure sum's correction."""

import numpy as np
import pytest

from fedmarket.errors import ConfigError, FedMarketError
from fedmarket.fl.attested import DEVIATION_CAP, centered_clip_int, norms
from fedmarket.fl.quantize import dequantize, quantize
from fedmarket.fl.strategies import CenteredClip, make_strategy
from fedmarket.protocol import rules as R


def _honest(n=12, d=300, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(0.01, 0.005, size=(n, d))


def test_the_integer_rule_follows_the_float_rule_and_ignores_order():
    U = _honest()
    Q = quantize(U)
    exact = centered_clip_int(list(Q))
    np.testing.assert_allclose(dequantize(exact), CenteredClip().aggregate(U), atol=1e-5)
    assert np.array_equal(exact, centered_clip_int(list(Q[::-1])))
    assert make_strategy("centered_clip").name == "centered_clip"


def test_norms_are_exact_integers():
    E = np.array([[3, 4, 0], [2**26, 0, 0], [-(2**26), 5, 12]], dtype=np.int64)
    assert norms(E) == [5, 2**26, 2**26]  # isqrt(2**52 + 169) is still 2**26


@pytest.mark.parametrize("bad", ["huge", "extreme", "aligned"])
def test_a_minority_moves_the_result_by_little(bad):
    U = _honest(n=15, seed=1)
    honest = CenteredClip().aggregate(U[:11])
    P = U.copy()
    if bad == "huge":
        P[11:] = 1e3
    elif bad == "aligned":  # pushed together along the honest spread, as an adaptive attacker would
        P[11:] = U[:11].mean(0) - 3.0 * U[:11].std(0)
    Q = quantize(P)
    if bad == "extreme":
        Q[11:] = np.iinfo(np.int64).max
        Q[12] = np.iinfo(np.int64).min
    out = dequantize(centered_clip_int(list(Q)))
    spread = np.linalg.norm(U[:11] - np.median(U[:11], axis=0), axis=1).max()
    assert np.linalg.norm(out - honest) <= spread  # never further than an honest update's distance


def test_bad_input_is_refused():
    with pytest.raises(ConfigError):
        centered_clip_int([])
    with pytest.raises(ConfigError, match="integer"):
        centered_clip_int([np.zeros(3)])
    with pytest.raises(ConfigError, match="iterations"):
        centered_clip_int([np.zeros(3, dtype=np.int64)], iterations=0)


def test_an_attested_result_rides_on_the_secure_sum():
    Q = list(quantize(_honest(n=7, seed=2)))
    Q[0] = np.full_like(Q[0], 2**62)  # even an absurd update: the sum wraps, the correction still fits
    corr = R.attested_correction("centered_clip", Q, [1] * 7)
    expected = R.attested_delta("centered_clip", Q)
    assert np.abs(expected).max() <= R.ATTESTED_CAP
    assert np.array_equal(R.aggregate(R.Rule.SECURE_SUM, Q, [1] * 7, 0, corr), expected)
    assert R.rule_for("centered_clip") == R.Rule.SECURE_SUM
    with pytest.raises(ConfigError, match="cannot run securely"):
        R.rule_for("centered_clip", secure=True)
    with pytest.raises(ConfigError, match="not one the validators attest"):
        R.attested_delta("krum", Q)
    with pytest.raises(FedMarketError, match="total weight"):
        R.attested_correction("centered_clip", Q, [0] * 7)
    assert DEVIATION_CAP < R.ATTESTED_CAP


def test_norm_bounding_is_attested_too_and_caps_a_minority():
    from fedmarket.fl.attested import norm_bounded_mean_int

    U = _honest(n=11, seed=4)
    P = U.copy()
    P[8:] = 50.0  # three huge updates
    out = dequantize(norm_bounded_mean_int(list(quantize(P))))
    assert np.linalg.norm(out) <= np.linalg.norm(U[:8], axis=1).max() * 1.001  # no longer than the largest honest
    exact = make_strategy("norm_bounding").aggregate_int(list(quantize(U)), [1] * 11)
    np.testing.assert_allclose(dequantize(exact), make_strategy("norm_bounding").aggregate(U), atol=1e-3)
    Q = list(quantize(P))
    corr = R.attested_correction("norm_bounding", Q, [1] * 11)
    assert np.array_equal(R.aggregate(R.Rule.SECURE_SUM, Q, [1] * 11, 0, corr), R.attested_delta("norm_bounding", Q))
    assert R.rule_for("norm_bounding") == R.Rule.SECURE_SUM
