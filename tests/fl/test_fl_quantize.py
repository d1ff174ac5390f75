"""Tests for fedmarket.fl.quantize: fixed-point round trip, rounding rule and range checks."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedmarket.errors import ConfigError
from fedmarket.fl.quantize import QMAX, SCALE, SCALE_BITS, dequantize, quantize

LIMIT = QMAX / SCALE
FAST = settings(max_examples=100, deadline=None, database=None)


def test_constants():
    assert SCALE_BITS == 20 and SCALE == 2**20 and QMAX == 2**47


@FAST
@given(arrays(np.float64, st.integers(0, 50), elements=st.floats(-LIMIT, LIMIT)))
def test_round_trip_within_half_a_step(x):
    q = quantize(x)
    assert q.dtype == np.int64 and q.shape == x.shape
    assert np.all(np.abs(q) <= QMAX)
    back = dequantize(q)
    assert back.dtype == np.float64
    assert np.all(np.abs(back - x) <= 0.5 / SCALE)


@FAST
@given(arrays(np.int64, st.integers(0, 50), elements=st.integers(-QMAX, QMAX)))
def test_integers_round_trip_exactly(q):
    np.testing.assert_array_equal(quantize(dequantize(q)), q)


def test_round_half_to_even():
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 0.49, 0.51]) / SCALE
    np.testing.assert_array_equal(quantize(x), [0, 2, 2, 0, -2, 0, 1])


def test_bounds_are_inclusive():
    np.testing.assert_array_equal(quantize(np.array([LIMIT, -LIMIT])), [QMAX, -QMAX])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_rejects_non_finite(bad):
    with pytest.raises(ConfigError, match="non-finite"):
        quantize(np.array([0.0, bad]))


@pytest.mark.parametrize("bad", [LIMIT + 1.0 / SCALE, -LIMIT - 1.0, 1e300, -1e308])
def test_rejects_too_large(bad):
    with pytest.raises(ConfigError, match="magnitude"):
        quantize(np.array([1.0, bad]))


def test_dequantize_rejects_floats():
    with pytest.raises(ConfigError, match="integers"):
        dequantize(np.array([1.5]))
