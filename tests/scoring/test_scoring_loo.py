"""Leave-one-out values: exact on additive games, and the known gap to Shapley on complementary games."""

from __future__ import annotations

import numpy as np

from fedmarket.scoring import FunctionUtility, exact_shapley, leave_one_out


def test_loo_equals_shapley_on_an_additive_game():
    c = np.array([0.5, -0.25, 2.0, 0.0, 1.25])
    u = FunctionUtility(5, lambda M: 3.0 + M @ c)
    np.testing.assert_allclose(leave_one_out(u), c, atol=1e-12)
    np.testing.assert_allclose(exact_shapley(u), c, atol=1e-12)


def test_loo_on_a_unanimity_game_gives_everyone_the_whole_value():
    u = FunctionUtility(4, lambda M: M.all(axis=1).astype(float))
    np.testing.assert_allclose(leave_one_out(u), np.ones(4))


def test_loo_uses_n_plus_one_evaluations():
    u = FunctionUtility(6, lambda M: M.sum(axis=1) ** 2)
    leave_one_out(u)
    assert u.evaluations == 7
    leave_one_out(u)
    assert u.evaluations == 7  # cached
