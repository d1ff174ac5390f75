"""Tests for the exact integer robust rules the contracts recompute: median_int and trimmed_mean_int."""

from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmarket.errors import ConfigError
from fedmarket.fl import aggregate
from fedmarket.fl.aggregate import median_int, trimmed_mean_int
from fedmarket.fl.quantize import QMAX, dequantize, quantize
from fedmarket.fl.strategies import coordinate_median, trimmed_mean

FAST = settings(max_examples=50, deadline=None, database=None)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


@st.composite
def int_updates(draw, lo=INT64_MIN, hi=INT64_MAX, max_n=9):
    n = draw(st.integers(1, max_n))
    d = draw(st.integers(1, 6))
    vals = st.integers(lo, hi)
    return [np.array(draw(st.lists(vals, min_size=d, max_size=d)), dtype=np.int64) for _ in range(n)]


def ref_median(ups):
    """Pure-Python reference of the contract's median."""
    n = len(ups)
    out = []
    for j in range(len(ups[0])):
        s = sorted(int(u[j]) for u in ups)
        out.append(s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) // 2)
    return out


def ref_trimmed(ups, trim):
    """Pure-Python reference of the contract's trimmed mean."""
    n = len(ups)
    out = []
    for j in range(len(ups[0])):
        s = sorted(int(u[j]) for u in ups)[trim : n - trim]
        out.append(sum(s) // (n - 2 * trim))
    return out


@FAST
@given(int_updates())
def test_median_int_matches_reference_for_any_int64(ups):
    out = median_int(ups)
    assert out.dtype == np.int64 and out.shape == ups[0].shape
    assert out.tolist() == ref_median(ups)


@FAST
@given(int_updates(lo=-QMAX, hi=QMAX))
def test_median_int_matches_reference_on_the_fast_path(ups):
    assert median_int(ups).tolist() == ref_median(ups)
    assert median_int(np.stack(ups)).tolist() == ref_median(ups)


@FAST
@given(int_updates(), st.data())
def test_trimmed_mean_int_matches_reference_for_any_int64(ups, data):
    trim = data.draw(st.integers(0, (len(ups) - 1) // 2))
    out = trimmed_mean_int(ups, trim)
    assert out.dtype == np.int64
    assert out.tolist() == ref_trimmed(ups, trim)


@FAST
@given(int_updates(lo=-QMAX, hi=QMAX), st.data())
def test_trimmed_mean_int_matches_reference_on_the_fast_path(ups, data):
    trim = data.draw(st.integers(0, (len(ups) - 1) // 2))
    assert trimmed_mean_int(ups, trim).tolist() == ref_trimmed(ups, trim)
    assert trimmed_mean_int(np.stack(ups), trim).tolist() == ref_trimmed(ups, trim)


@FAST
@given(int_updates(lo=-QMAX, hi=QMAX), st.data(), st.randoms(use_true_random=False))
def test_integer_rules_are_permutation_invariant_and_near_the_float_rules(ups, data, rnd):
    trim = data.draw(st.integers(0, (len(ups) - 1) // 2))
    shuffled = list(ups)
    rnd.shuffle(shuffled)
    np.testing.assert_array_equal(median_int(ups), median_int(shuffled))
    np.testing.assert_array_equal(trimmed_mean_int(ups, trim), trimmed_mean_int(shuffled, trim))
    U = np.stack([dequantize(u) for u in ups])
    # floor vs round-half-even of the same real number: at most one step apart
    assert np.all(np.abs(median_int(ups) - quantize(coordinate_median(U))) <= 1)
    assert np.all(np.abs(trimmed_mean_int(ups, trim) - quantize(trimmed_mean(U, trim))) <= 1)


def test_floors_toward_minus_infinity():
    ups = [np.array([-1, 1, -3, 4]), np.array([0, 0, 0, 5])]
    np.testing.assert_array_equal(median_int(ups), [-1, 0, -2, 4])
    np.testing.assert_array_equal(trimmed_mean_int(ups, 0), [-1, 0, -2, 4])
    three = [np.array([-7]), np.array([-2]), np.array([100])]
    np.testing.assert_array_equal(median_int(three), [-2])
    np.testing.assert_array_equal(trimmed_mean_int(three + [np.array([-100])], 1), [(-7 - 2) // 2])


def test_extreme_values_use_the_exact_path():
    big = [np.array([INT64_MAX, INT64_MIN, INT64_MAX]), np.array([INT64_MAX - 1, INT64_MIN, INT64_MIN])]
    assert median_int(big).tolist() == [(2 * INT64_MAX - 1) // 2, INT64_MIN, -1]
    four = big + [np.array([INT64_MAX, INT64_MIN + 1, 0]), np.array([0, 0, 0])]
    assert trimmed_mean_int(four, 0).tolist() == ref_trimmed(four, 0)
    assert trimmed_mean_int(four, 1).tolist() == ref_trimmed(four, 1)


def test_shapes_and_dtypes():
    ups = [np.arange(6, dtype=np.int32).reshape(2, 3)] * 3
    for out in (median_int(ups), trimmed_mean_int(ups, 1)):
        assert out.shape == (2, 3) and out.dtype == np.int64
        np.testing.assert_array_equal(out, ups[0])
    assert median_int([np.zeros(0, dtype=np.int64)]).shape == (0,)


@pytest.mark.parametrize("trim", [-1, 2, 3, 1.0, True])
def test_trimmed_mean_int_rejects_bad_trim(trim):
    ups = [np.ones(2, dtype=np.int64)] * 4
    with pytest.raises(ConfigError, match="trim"):
        trimmed_mean_int(ups, trim)


@pytest.mark.parametrize(
    "ups, match",
    [
        ([], "zero updates"),
        ([np.ones(2)], "integer array"),
        ([np.ones(2, dtype=np.int64), np.ones(3, dtype=np.int64)], "shape"),
        ([np.array([2**64 - 1], dtype=np.uint64)], "int64 range"),
    ],
)
def test_robust_int_rules_reject_bad_updates(ups, match):
    with pytest.raises(ConfigError, match=match):
        median_int(ups)
    with pytest.raises(ConfigError, match=match):
        trimmed_mean_int(ups, 0)


# ----------------------------------------------- blocks, int32 and int64 rows, threads, fallbacks


def tiny_blocks():
    """Blocks of a few columns, every one on the thread pool.

    Small inputs then cross block boundaries, and each block picks int32 or
    int64 rows and its summing path from its own values (``trim == 0`` goes
    through `fedavg_int`, hence its settings too).
    """
    return mock.patch.multiple(
        aggregate, _SORT_BLOCK_BYTES=24, _FEDAVG_WIDTH=3, _TILE_ELEMS=4, _PARALLEL_BYTES=0, _WORKERS=3
    )


# around the int32 rows, the int64 trimmed sum and the int64 range
EDGES = [0, 1, -1, 2, -2, 2**31 - 1, 2**31, -(2**31), -(2**31) - 1, 2**47, -(2**47)]
EDGES += [2**62 - 1, 2**62, -(2**62), INT64_MAX - 1, INT64_MAX, INT64_MIN + 1, INT64_MIN]


@st.composite
def edgy_updates(draw, max_n=9):
    n = draw(st.integers(1, max_n))
    d = draw(st.integers(1, 10))
    # few distinct values, so ties are common
    vals = st.one_of(st.integers(-3, 3), st.integers(-(2**40), 2**40), st.sampled_from(EDGES))
    return [np.array(draw(st.lists(vals, min_size=d, max_size=d)), dtype=np.int64) for _ in range(n)]


@settings(max_examples=150, deadline=None, database=None)
@given(edgy_updates(), st.data())
def test_median_and_trimmed_mean_exact_across_blocks_and_paths(ups, data):
    n = len(ups)
    trim = data.draw(st.one_of(st.just((n - 1) // 2), st.integers(0, (n - 1) // 2)))
    with tiny_blocks():
        median, stacked_median = median_int(ups), median_int(np.stack(ups))
        trimmed, stacked_trimmed = trimmed_mean_int(ups, trim), trimmed_mean_int(np.stack(ups), trim)
    assert median.dtype == trimmed.dtype == np.int64
    assert median.tolist() == stacked_median.tolist() == ref_median(ups)
    assert trimmed.tolist() == stacked_trimmed.tolist() == ref_trimmed(ups, trim)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
@pytest.mark.parametrize(
    "pair",
    [
        (2**31 - 1, -(2**31)),
        (2**31, -(2**31) - 1),
        (INT64_MAX, INT64_MAX - 1),
        (INT64_MIN, INT64_MIN + 1),
        (INT64_MAX, INT64_MIN),
    ],
)
def test_small_n_and_ties_at_the_limits(n, pair):
    a, b = pair
    ups = [np.array([a if i % 2 else b, a, b, (a + b) // 2], dtype=np.int64) for i in range(n)]
    assert median_int(ups).tolist() == ref_median(ups)
    for trim in range((n + 1) // 2):
        assert trimmed_mean_int(ups, trim).tolist() == ref_trimmed(ups, trim)


@pytest.mark.parametrize("n", [9, 10])
def test_large_input_with_a_few_extreme_blocks(n):
    """Real block sizes on the thread pool; a few blocks hold values beyond int32 or near the int64 limits."""
    rng = np.random.default_rng(n)
    d = 150_001
    Q = rng.integers(-(2**31), 2**31, (n, d))
    Q[1, 10] = 2**31  # int64 rows for that block
    Q[: n // 2 + 1, 100_000] = INT64_MAX  # the median pair and the trimmed sum overflow int64
    Q[2, 149_999] = INT64_MIN
    s = np.sort(Q, axis=0).astype(object)
    k = n // 2
    median = s[k] if n % 2 else (s[k - 1] + s[k]) // 2
    np.testing.assert_array_equal(median_int(Q), median.astype(np.int64))
    for trim in (0, 2, (n - 1) // 2):
        trimmed = s[trim : n - trim].sum(axis=0) // (n - 2 * trim)
        np.testing.assert_array_equal(trimmed_mean_int(Q, trim), trimmed.astype(np.int64))


def test_a_power_of_two_row_stride_gives_the_same_result():
    """Rows 2**15 int64 apart (every row in the same cache sets) go through the staging buffer like any other."""
    rng = np.random.default_rng(5)
    Q = rng.integers(-1000, 1000, (6, 2**15))
    s = np.sort(Q, axis=0)
    np.testing.assert_array_equal(median_int(Q), (s[2] + s[3]) // 2)
    np.testing.assert_array_equal(trimmed_mean_int(Q, 2), s[2:4].sum(axis=0) // 2)
