"""The coalition utility: batched values equal aggregating and evaluating each coalition one by one; the cache."""

from __future__ import annotations

import numpy as np
import pytest

from fedmarket.errors import ConfigError
from fedmarket.fl.models import MLP
from fedmarket.scoring import AggregationUtility, FunctionUtility


def one_by_one(model, params, U, w, X, y, mask, metric):
    if not mask.any():
        p = params
    else:
        p = params + (w[mask] / w[mask].sum()) @ U[mask]
    if metric == "accuracy":
        return model.accuracy(p, X, y)
    return -model.loss_and_grad(p, X, y)[0] + 0.5 * model.l2 * float(np.vdot(p[:-10], p[:-10]))


@pytest.mark.parametrize("metric", ["accuracy", "neg_loss"])
def test_batched_values_equal_the_direct_computation(digits_round, metric):
    model, params, U, w, X, y = digits_round
    u = AggregationUtility(model, params, U, X, y, w, metric=metric, chunk_elems=5000)  # several chunks
    masks = np.random.default_rng(0).random((40, 8)) < 0.5
    masks[0] = False
    masks[1] = True
    got = u.values(masks)
    want = [one_by_one(model, params, U, w, X, y, m, metric) for m in masks]
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert got[1] > got[0]  # the round helps


def test_nonlinear_model_path():
    rng = np.random.default_rng(1)
    model = MLP(6, 3, hidden=(5,), seed=0)
    params = model.init_params()
    U = rng.normal(scale=0.3, size=(4, model.n_params))
    X, y = rng.random((50, 6)), rng.integers(0, 3, 50)
    w = np.array([1.0, 2.0, 3.0, 4.0])
    u = AggregationUtility(model, params, U, X, y, w)
    masks = np.array([[1, 0, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=bool)
    want = [model.accuracy(params + (w[m] / w[m].sum()) @ U[m] if m.any() else params, X, y) for m in masks]
    np.testing.assert_allclose(u.values(masks), want)


def test_cache_counts_only_new_coalitions():
    u = FunctionUtility(3, lambda M: M.sum(axis=1).astype(float))
    m = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 1]], dtype=bool)
    np.testing.assert_array_equal(u.values(m), [1, 1, 2])
    assert u.evaluations == 2
    u.values(m[::-1])
    assert u.evaluations == 2


def test_bad_input(digits_round):
    model, params, U, w, X, y = digits_round
    with pytest.raises(ConfigError):
        AggregationUtility(model, params, U, X, y, w, metric="f1")
    with pytest.raises(ConfigError):
        AggregationUtility(model, params, U[:, :5], X, y, w)
    with pytest.raises(ConfigError):
        AggregationUtility(model, params, U, X, y, w[:3])
    with pytest.raises(ConfigError):
        FunctionUtility(3, lambda M: M.sum(axis=1)).values(np.ones((2, 4), dtype=bool))


def test_incremental_walk_equals_plain_evaluation(digits_round):
    from fedmarket.scoring import gtg_shapley
    from fedmarket.scoring.utility import Utility

    model, params, U, w, X, y = digits_round
    fast = AggregationUtility(model, params, U, X, y, w)
    plain = AggregationUtility(model, params, U, X, y, w)
    plain.new_walk = lambda size: Utility.new_walk(plain, size)  # force the mask-based path
    a = gtg_shapley(fast, seed=0, conv_tol=0.0, max_permutations=24)
    b = gtg_shapley(plain, seed=0, conv_tol=0.0, max_permutations=24)
    assert a.evaluations == b.evaluations > 0
    np.testing.assert_allclose(a.values, b.values, atol=1e-9)
