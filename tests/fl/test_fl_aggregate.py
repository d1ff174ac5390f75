"""Tests for fedmarket.fl.aggregate: float FedAvg and exact integer FedAvg."""

from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmarket.errors import ConfigError
from fedmarket.fl import aggregate
from fedmarket.fl.aggregate import fedavg, fedavg_int
from fedmarket.fl.quantize import QMAX, dequantize, quantize

FAST = settings(max_examples=100, deadline=None, database=None)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


@st.composite
def float_updates(draw):
    m = draw(st.integers(1, 8))
    d = draw(st.integers(1, 6))
    vals = st.floats(-1e6, 1e6)
    ups = [np.array(draw(st.lists(vals, min_size=d, max_size=d))) for _ in range(m)]
    # subnormal weights make the reference itself underflow (5e-324 * 0.5 == 0), not the code under test
    ws = draw(st.lists(st.floats(0, 1e6, allow_subnormal=False), min_size=m, max_size=m).filter(lambda w: sum(w) > 0))
    return ups, ws


@st.composite
def int_updates(draw, lo=INT64_MIN + 1, hi=INT64_MAX, max_weight=2**40):
    m = draw(st.integers(1, 8))
    d = draw(st.integers(1, 6))
    vals = st.integers(lo, hi)
    ups = [np.array(draw(st.lists(vals, min_size=d, max_size=d)), dtype=np.int64) for _ in range(m)]
    ws = draw(st.lists(st.integers(0, max_weight), min_size=m, max_size=m).filter(lambda w: sum(w) > 0))
    return ups, ws


def _reference(ups, ws):
    total = sum(ws)
    return [sum(w * int(u[j]) for u, w in zip(ups, ws)) // total for j in range(len(ups[0]))]


# ---------------------------------------------------------------- float fedavg


@FAST
@given(float_updates(), st.randoms(use_true_random=False))
def test_fedavg_permutation_invariant(data, rnd):
    ups, ws = data
    order = list(range(len(ups)))
    rnd.shuffle(order)
    a = fedavg(ups, ws)
    b = fedavg([ups[i] for i in order], [ws[i] for i in order])
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-6)


@FAST
@given(float_updates())
def test_fedavg_matches_definition_and_zero_weight_is_ignored(data):
    ups, ws = data
    expected = sum(w * u for u, w in zip(ups, ws)) / sum(ws)
    np.testing.assert_allclose(fedavg(ups, ws), expected, rtol=1e-9, atol=1e-6)
    junk = np.full_like(ups[0], 1e9)
    np.testing.assert_allclose(fedavg(ups + [junk], ws + [0.0]), fedavg(ups, ws), rtol=1e-12, atol=1e-6)


@FAST
@given(float_updates())
def test_fedavg_of_equal_updates_is_that_update(data):
    ups, ws = data
    same = [ups[0]] * len(ups)
    np.testing.assert_allclose(fedavg(same, ws), ups[0], rtol=1e-12, atol=1e-9)


def test_fedavg_weights_are_relative():
    ups = [np.array([0.0, 4.0]), np.array([2.0, 0.0])]
    np.testing.assert_allclose(fedavg(ups, [1, 3]), [1.5, 1.0])
    np.testing.assert_allclose(fedavg(ups, [10, 30]), [1.5, 1.0])
    assert fedavg([np.ones((2, 3))], [2.0]).shape == (2, 3)


@pytest.mark.parametrize(
    "ups, ws, match",
    [
        ([], [], "zero updates"),
        ([np.ones(2)], [1.0, 2.0], "weights"),
        ([np.ones(2), np.ones(3)], [1.0, 1.0], "shape"),
        ([np.ones(2), np.ones(2)], [1.0, -1.0], "non-negative"),
        ([np.ones(2), np.ones(2)], [0.0, 0.0], "positive sum"),
        ([np.ones(2)], [float("nan")], "finite"),
    ],
)
def test_fedavg_errors(ups, ws, match):
    with pytest.raises(ConfigError, match=match):
        fedavg(ups, ws)


# ---------------------------------------------------------- integer fedavg


@FAST
@given(int_updates(lo=-QMAX, hi=QMAX, max_weight=2**14))
def test_fedavg_int_exact_on_fast_path(data):
    ups, ws = data
    out = fedavg_int(ups, ws)
    assert out.dtype == np.int64
    assert out.tolist() == _reference(ups, ws)


@FAST
@given(int_updates())
def test_fedavg_int_exact_for_any_int64_values(data):
    ups, ws = data
    assert fedavg_int(ups, ws).tolist() == _reference(ups, ws)


def test_fedavg_int_big_value_fallback():
    big = 2**62
    ups = [np.array([big, -big, big - 1, INT64_MAX]), np.array([big, -big, -(big - 1), INT64_MAX - 2])]
    ws = [3, 1]
    # w @ q overflows int64 here; the exact path must still give the true floor.
    assert fedavg_int(ups, ws).tolist() == [big, -big, (big - 1) // 2, (4 * INT64_MAX - 2) // 4]
    assert fedavg_int(ups, ws).tolist() == _reference(ups, ws)
    huge_w = [2**70, 1]
    assert fedavg_int(ups, huge_w).tolist() == _reference(ups, huge_w)


def test_fedavg_int_floors_toward_minus_infinity():
    ups = [np.array([-1, 1, -3]), np.array([0, 0, 0])]
    np.testing.assert_array_equal(fedavg_int(ups, [1, 1]), [-1, 0, -2])
    np.testing.assert_array_equal(fedavg_int([np.array([7, -7])], [5]), [7, -7])


@FAST
@given(int_updates(max_weight=1000), st.randoms(use_true_random=False))
def test_fedavg_int_permutation_invariant_and_zero_weight(data, rnd):
    ups, ws = data
    order = list(range(len(ups)))
    rnd.shuffle(order)
    a = fedavg_int(ups, ws)
    np.testing.assert_array_equal(a, fedavg_int([ups[i] for i in order], [ws[i] for i in order]))
    junk = np.full_like(ups[0], INT64_MAX)
    np.testing.assert_array_equal(a, fedavg_int(ups + [junk], ws + [0]))
    np.testing.assert_array_equal(fedavg_int([ups[0]] * len(ups), ws), ups[0])


@FAST
@given(int_updates(lo=-QMAX, hi=QMAX, max_weight=10**6))
def test_fedavg_int_within_one_step_of_float_path(data):
    ups, ws = data
    exact = fedavg_int(ups, ws)
    via_float = quantize(fedavg([dequantize(u) for u in ups], ws))
    assert np.all(np.abs(exact - via_float) <= 1)


def test_fedavg_int_keeps_shape_and_accepts_numpy_weights():
    ups = [np.arange(6, dtype=np.int64).reshape(2, 3)] * 2
    out = fedavg_int(ups, [np.int64(2), np.int32(1)])
    assert out.shape == (2, 3) and out.dtype == np.int64
    np.testing.assert_array_equal(out, ups[0])


@pytest.mark.parametrize(
    "ups, ws, match",
    [
        ([], [], "zero updates"),
        ([np.ones(2, dtype=np.int64)], [1, 2], "weights"),
        ([np.ones(2)], [1], "integer array"),
        ([np.ones(2, dtype=np.int64)], [1.0], "must be an integer"),
        ([np.ones(2, dtype=np.int64)], [True], "must be an integer"),
        ([np.ones(2, dtype=np.int64)], [-1], "non-negative"),
        ([np.ones(2, dtype=np.int64)], [0], "positive sum"),
        ([np.ones(2, dtype=np.int64), np.ones(3, dtype=np.int64)], [1, 1], "shape"),
        ([np.array([2**64 - 1], dtype=np.uint64)], [1], "int64 range"),
    ],
)
def test_fedavg_int_errors(ups, ws, match):
    with pytest.raises(ConfigError, match=match):
        fedavg_int(ups, ws)


# ------------------------------------------- integer fedavg: blocks, tiles, threads and fallbacks


def tiny_blocks():
    """Blocks of a few columns, tiles of a few rows and every block on the thread pool.

    Small inputs then cross block and tile boundaries, and each block picks
    its own path (float, int64 or Python integers) from its own values.
    """
    return mock.patch.multiple(aggregate, _FEDAVG_WIDTH=3, _TILE_ELEMS=4, _PARALLEL_BYTES=0, _WORKERS=3)


# values at the edges of every path: float64 exactness, int64 overflow, int32
EDGES = [0, 1, -1, 2**31 - 1, -(2**31), 2**47, -(2**47), 2**52, 2**53 - 1, 2**53, 2**53 + 1, -(2**53) - 1]
EDGES += [2**62 - 1, 2**62, -(2**62), INT64_MAX, INT64_MIN + 1, INT64_MIN]


@st.composite
def edgy_int_updates(draw):
    m = draw(st.integers(1, 7))
    d = draw(st.integers(1, 10))
    vals = st.one_of(st.integers(-(2**20), 2**20), st.sampled_from(EDGES))
    ups = [np.array(draw(st.lists(vals, min_size=d, max_size=d)), dtype=np.int64) for _ in range(m)]
    weight = st.one_of(st.integers(0, 1000), st.sampled_from([0, 1, 2**32, 2**40 - 1, 2**40, 2**53, 2**70]))
    ws = draw(st.lists(weight, min_size=m, max_size=m).filter(lambda w: sum(w) > 0))
    return ups, ws


@FAST
@given(edgy_int_updates())
def test_fedavg_int_exact_across_blocks_and_paths(data):
    ups, ws = data
    with tiny_blocks():
        out = fedavg_int(ups, ws)
        stacked = fedavg_int(np.stack(ups), ws)
    assert out.dtype == np.int64
    assert out.tolist() == stacked.tolist() == _reference(ups, ws)


@pytest.mark.parametrize(
    "column, ws",
    [
        ([2**52 - 1], [1]),  # the largest sum the float path takes (units of 2**972)
        ([2**52], [1]),  # one past it: the float product overflows, the int64 path answers
        ([2**52, -1], [1, 1]),  # a product at the threshold, brought back under it by a fused multiply-add: exact
        ([2**53 - 1], [1]),  # the largest integer float64 holds
        ([2**53], [1]),
        ([2**52, 2**52 - 1], [1, 1]),
        ([2**52, 2**52, -(2**52)], [1, 1, 1]),  # a partial sum overflows though the total fits
        ([2**52, 2**52, -(2**52)], [2**40, 2**40, 2**40]),
        ([INT64_MAX, 5], [0, 3]),  # a zero weight cancels any value
        ([INT64_MAX, INT64_MIN, INT64_MAX], [1, 1, 1]),  # only exact Python integers can do this sum
        ([2**47, -(2**47)], [2**40, 2**40 - 1]),
        # read as -2**53 by float64; a fused multiply-add keeps the product unrounded, so it did not overflow
        ([2, -(2**53) - 1], [1, 1]),
        ([2**53 + 1, -(2**53)], [1, 1]),  # rounded up to 2**53 (ties to even) beside its negation
        ([-(2**53) - 1, 2**53 - 1, 2**53 - 1], [1, 1, 1]),
        ([2**62 + 1, -(2**62)], [1, 1]),
    ],
)
def test_fedavg_int_at_the_float_and_int64_limits(column, ws):
    ups = [np.array([v, -v - 1, v // 3], dtype=np.int64) for v in column]
    assert fedavg_int(ups, ws).tolist() == _reference(ups, ws)
    with tiny_blocks():
        assert fedavg_int(ups, ws).tolist() == _reference(ups, ws)


def test_fedavg_int_large_input_with_a_few_extreme_blocks():
    """Real block sizes on the thread pool; two blocks hold values that force the int64 and Python-integer paths."""
    rng = np.random.default_rng(3)
    n, d = 12, 100_003
    Q = rng.integers(-(2**20), 2**20, (n, d), endpoint=True)
    ws = [int(w) for w in rng.integers(1, 2**20, n)]
    ws[3] = 2**19
    Q[3, 40_000] = 2**36  # w * q = 2**55 overflows float64; max|q| * sum(w) < 2**60 fits int64
    Q[7, 99_999] = INT64_MIN  # beyond int64 sums
    expected = (np.array(ws, dtype=object) @ Q.astype(object)) // sum(ws)
    np.testing.assert_array_equal(fedavg_int(Q, ws), expected.astype(np.int64))
    np.testing.assert_array_equal(fedavg_int(list(Q), ws), expected.astype(np.int64))


def test_fedavg_int_reads_a_read_only_stacked_matrix():
    Q = np.arange(24, dtype=np.int64).reshape(4, 6) - 11
    Q.flags.writeable = False
    assert fedavg_int(Q, [1, 2, 3, 4]).tolist() == _reference(list(Q), [1, 2, 3, 4])
