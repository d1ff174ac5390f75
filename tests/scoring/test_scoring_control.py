"""GTG with a fitted surrogate as control variate: exact on the surrogate's own family, the pieces it is
built from, and estimates that hold on every seed of a real round."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmarket.scoring import AggregationUtility, FunctionUtility, exact_shapley, gtg_shapley, latin_permutations
from fedmarket.scoring._permutations import walk
from fedmarket.scoring.surrogate import Surrogate, features, fit, prefix_marginals, surrogate_shapley
from fedmarket.scoring.shapley_exact import shapley_from_table
from fedmarket.scoring.utility import all_masks


class WeightedGame(FunctionUtility):
    """A game given by a function, aggregating by the given weights."""

    def __init__(self, fn, w):
        super().__init__(len(w), fn)
        self.w = np.asarray(w, dtype=float)

    def aggregation_weights(self):
        return self.w


def quadratic_game(n: int, seed: int) -> WeightedGame:
    """v(S) = a random quadratic of the coalition's aggregation coefficients (the surrogate's own family)."""
    rng = np.random.default_rng(seed)
    w = rng.integers(1, 50, n).astype(float)
    game = WeightedGame(lambda M: np.zeros(M.shape[0]), w)
    k = features(np.ones((1, n)), True).shape[1]
    game._fn = Surrogate(n, game.coefficients, rng.normal(size=k), True, float(rng.normal()))
    return game


@settings(max_examples=25, deadline=None)
@given(n=st.integers(3, 9), seed=st.integers(0, 2**32 - 1))
def test_exact_on_the_surrogates_own_family(n, seed):
    """Property: when the game is a quadratic of the coefficients, the fit is exact and so is one batch."""
    est = gtg_shapley(quadratic_game(n, seed), seed=seed, round_tol=0.0, control=True, conv_tol=0.0, max_permutations=n)
    np.testing.assert_allclose(est.values, exact_shapley(quadratic_game(n, seed)), atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 9), seed=st.integers(0, 2**32 - 1))
def test_prefix_marginals_are_the_walks_marginals(n, seed):
    u = quadratic_game(n, seed)
    perms = latin_permutations(n, np.random.default_rng(seed))
    want = walk(u, perms, u.empty(), u.grand(), -1.0)
    np.testing.assert_allclose(prefix_marginals(u._fn, perms), want, atol=1e-9)


def test_sampled_surrogate_shapley_tends_to_the_enumerated_one():
    u = quadratic_game(8, 3)
    g = u._fn
    rng = np.random.default_rng(0)
    sampled = np.mean([prefix_marginals(g, latin_permutations(8, rng)).mean(axis=0) for _ in range(3000)], axis=0)
    np.testing.assert_allclose(surrogate_shapley(g, None), shapley_from_table(g(all_masks(8))))
    np.testing.assert_allclose(sampled, surrogate_shapley(g, None), atol=0.02 * np.abs(sampled).sum())


def test_seen_returns_every_evaluated_coalition():
    u = FunctionUtility(5, lambda M: M @ np.arange(1.0, 6.0))
    assert u.seen()[0].shape == (0, 5)
    m = np.array([[1, 0, 0, 1, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=bool)
    u.values(m)
    masks, vals = u.seen()
    got = {tuple(r): v for r, v in zip(masks.tolist(), vals.tolist())}
    assert got == {tuple(r): float(r @ np.arange(1.0, 6.0)) for r in m.tolist()}


def test_fit_recovers_a_quadratic():
    u = quadratic_game(6, 1)
    M = all_masks(6)
    g = fit(M, u.values(M), u.coefficients, u.empty())
    np.testing.assert_allclose(g(M), u.values(M), atol=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_holds_on_every_seed_of_a_real_round(digits_round, seed):
    """The validators' game (neg_loss on held-out digits): error, ranks and per-provider error on each seed."""
    model, params, U, w, X, y = digits_round
    exact = exact_shapley(AggregationUtility(model, params, U, X, y, w, metric="neg_loss"))
    est = gtg_shapley(AggregationUtility(model, params, U, X, y, w, metric="neg_loss"), seed=seed)
    total = abs(exact.sum())
    assert np.mean(np.abs(est.values - exact)) / total < 0.05
    assert np.median(np.abs(est.values - exact) / np.abs(exact)) < 0.2
    assert np.array_equal(np.argsort(est.values)[-3:], np.argsort(exact)[-3:]) or np.corrcoef(est.values, exact)[0, 1] > 0.95
