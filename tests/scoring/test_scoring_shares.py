"""Reward shares: negatives clipped, exact integer split of the pool, deterministic ties, rounds combined."""

from __future__ import annotations

import numpy as np
import pytest

from fedmarket.errors import ConfigError
from fedmarket.scoring import combine_rounds, reward_amounts, shares


@pytest.mark.parametrize("pool", [0, 1, 7, 999_999_937, 10**24 + 3])
def test_amounts_sum_exactly_to_the_pool(pool):
    rng = np.random.default_rng(pool % 1000)
    for _ in range(20):
        v = rng.normal(size=rng.integers(1, 30))
        amounts = reward_amounts(pool, v)
        assert all(isinstance(a, int) and a >= 0 for a in amounts)
        assert sum(amounts) == (pool if (v > 0).any() else 0)
        assert all(a == 0 for a, x in zip(amounts, v) if x <= 0)


def test_proportional_and_deterministic_ties():
    assert reward_amounts(10, [1.0, 1.0, 1.0]) == [4, 3, 3]  # the spare unit goes to the lowest index
    assert reward_amounts(100, [3.0, -5.0, 1.0]) == [75, 0, 25]
    assert reward_amounts(10, [1.0, 1.0, 1.0]) == reward_amounts(10, np.array([1.0, 1.0, 1.0]))


def test_excluded_and_all_negative():
    assert reward_amounts(90, [1.0, 2.0, 3.0], exclude=np.array([False, False, True])) == [30, 60, 0]
    assert reward_amounts(90, [-1.0, 0.0]) == [0, 0]
    np.testing.assert_array_equal(shares([-1.0, 0.0]), [0.0, 0.0])
    np.testing.assert_allclose(shares([2.0, -1.0, 6.0]), [0.25, 0.0, 0.75])


def test_combine_rounds_sums_before_clipping():
    total = combine_rounds([np.array([1.0, -2.0, 0.5]), np.array([1.0, 3.0, -1.0])])
    np.testing.assert_allclose(total, [2.0, 1.0, -0.5])
    np.testing.assert_allclose(combine_rounds([np.ones(2), np.ones(2)], round_weights=[1.0, 3.0]), [4.0, 4.0])
    assert reward_amounts(300, total) == [200, 100, 0]


def test_bad_input():
    with pytest.raises(ConfigError):
        reward_amounts(-1, [1.0])
    with pytest.raises(ConfigError):
        reward_amounts(1.5, [1.0])
    with pytest.raises(ConfigError):
        combine_rounds([])
    with pytest.raises(ConfigError):
        shares([np.nan, 1.0])
