"""TMC and GTG-Shapley: close to exact on small games, seeded, truncating as specified."""

from __future__ import annotations

import numpy as np
import pytest

from fedmarket.scoring import FunctionUtility, exact_shapley, gtg_shapley, guided_permutations, tmc_shapley

W = np.array([5.0, 4.0, 3.0, 2.5, 2.0, 1.0, 0.5, 0.0])


def concave_game() -> FunctionUtility:
    """Diminishing returns, like accuracy as providers join: v(S) = 1 - exp(-sum_S w / 4)."""
    return FunctionUtility(len(W), lambda M: 1.0 - np.exp(-(M @ W) / 4.0))


@pytest.mark.parametrize("method", [tmc_shapley, gtg_shapley])
def test_close_to_exact_on_a_small_game(method):
    exact = exact_shapley(concave_game())
    est = method(concave_game(), seed=0, eps=0.001, conv_tol=0.01)
    total = exact.sum()
    assert np.mean(np.abs(est.values - exact)) / total < 0.02
    assert np.argsort(est.values)[-3:].tolist() == np.argsort(exact)[-3:].tolist() == [2, 1, 0]
    assert abs(est.values[-1]) < 0.01 * total  # the null player


@pytest.mark.parametrize("method", [tmc_shapley, gtg_shapley])
def test_seeded(method):
    a = method(concave_game(), seed=7)
    b = method(concave_game(), seed=7)
    c = method(concave_game(), seed=8)
    np.testing.assert_array_equal(a.values, b.values)
    assert not np.array_equal(a.values, c.values)


def test_within_round_truncation_saves_evaluations():
    loose = gtg_shapley(concave_game(), seed=0, eps=0.05, conv_tol=0.0, max_permutations=64)
    none = gtg_shapley(concave_game(), seed=0, eps=0.0, conv_tol=0.0, max_permutations=64)
    assert loose.permutations == none.permutations == 64
    assert loose.evaluations < none.evaluations


def test_between_round_truncation_skips_a_flat_round():
    u = FunctionUtility(6, lambda M: 0.5 + 1e-4 * M.sum(axis=1))
    est = gtg_shapley(u, seed=0, round_tol=1e-3)
    assert est.round_truncated and est.permutations == 0
    assert u.evaluations == 2
    np.testing.assert_array_equal(est.values, np.zeros(6))
    assert not gtg_shapley(u, seed=0, round_tol=1e-5).round_truncated


def test_guided_permutations_start_with_each_player_in_turn():
    P = guided_permutations(7, np.random.default_rng(0))
    assert P[:, 0].tolist() == list(range(7))
    assert all(sorted(row) == list(range(7)) for row in P.tolist())


def test_truncated_walk_keeps_efficiency_within_eps():
    est = gtg_shapley(concave_game(), seed=3, eps=0.02, conv_tol=0.0, max_permutations=32)
    u = concave_game()
    total = u.grand() - u.empty()
    assert abs(est.values.sum() - total) <= 0.02 * total + 1e-12
