"""Exact Shapley values: the axioms on synthetic games, and agreement with brute-force enumeration of permutations."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from fedmarket.errors import ConfigError
from fedmarket.scoring import FunctionUtility, exact_shapley, shapley_from_table


def random_game(n: int, seed: int) -> FunctionUtility:
    """A game with an arbitrary (random) value for every coalition, v(empty) = 0."""
    table = np.random.default_rng(seed).normal(size=1 << n)
    table[0] = 0.0
    bits = 1 << np.arange(n)
    return FunctionUtility(n, lambda M: table[M.astype(np.int64) @ bits])


def brute_force(u: FunctionUtility) -> np.ndarray:
    """Mean marginal contribution over all n! orders (the definition)."""
    n = u.n
    phi = np.zeros(n)
    for order in itertools.permutations(range(n)):
        members: list[int] = []
        prev = u.value(members)
        for p in order:
            members.append(p)
            cur = u.value(members)
            phi[p] += cur - prev
            prev = cur
    return phi / math.factorial(n)


def test_matches_the_definition_on_a_random_game():
    u = random_game(5, seed=1)
    np.testing.assert_allclose(exact_shapley(u), brute_force(u), atol=1e-12)


def test_efficiency():
    u = random_game(7, seed=2)
    phi = exact_shapley(u)
    assert phi.sum() == pytest.approx(u.grand() - u.empty(), abs=1e-12)


def test_symmetry_and_null_player():
    w = np.array([2.0, 2.0, 1.0, 0.0, 3.0])  # players 0 and 1 interchangeable, player 3 adds nothing
    u = FunctionUtility(5, lambda M: np.sqrt(M @ w))
    phi = exact_shapley(u)
    assert phi[0] == pytest.approx(phi[1], abs=1e-12)
    assert phi[3] == pytest.approx(0.0, abs=1e-12)
    assert phi[4] > phi[0] > phi[2] > 0


def test_additivity():
    a, b = random_game(6, seed=3), random_game(6, seed=4)
    both = FunctionUtility(6, lambda M: a.evaluate(M) + b.evaluate(M))
    np.testing.assert_allclose(exact_shapley(both), exact_shapley(a) + exact_shapley(b), atol=1e-12)


def test_unanimity_game_splits_equally_among_the_carriers():
    T = np.array([1, 0, 1, 1, 0, 0], dtype=bool)
    u = FunctionUtility(6, lambda M: np.all(M[:, T], axis=1).astype(float))
    np.testing.assert_allclose(exact_shapley(u), T / T.sum(), atol=1e-12)


def test_bad_table_and_too_many_players_are_refused():
    with pytest.raises(ConfigError):
        shapley_from_table(np.zeros(6))
    with pytest.raises(ConfigError, match="exceeds"):
        exact_shapley(FunctionUtility(21, lambda M: M.sum(axis=1)))
