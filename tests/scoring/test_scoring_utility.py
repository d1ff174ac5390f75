"""The coalition utility: batched values equal aggregating and evaluating each coalition one by one; the cache."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmarket.errors import ConfigError
from fedmarket.fl.models import MLP
from fedmarket.scoring import AggregationUtility, FunctionUtility, all_masks


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


@pytest.mark.parametrize("share", ["coalition", "round"])
def test_incremental_walk_equals_plain_evaluation(digits_round, share):
    from fedmarket.scoring import gtg_shapley
    from fedmarket.scoring.utility import Utility

    model, params, U, w, X, y = digits_round
    fast = AggregationUtility(model, params, U, X, y, w, share=share)
    plain = AggregationUtility(model, params, U, X, y, w, share=share)
    plain.new_walk = lambda size: Utility.new_walk(plain, size)  # force the mask-based path
    a = gtg_shapley(fast, seed=0, conv_tol=0.0, max_permutations=24)
    b = gtg_shapley(plain, seed=0, conv_tol=0.0, max_permutations=24)
    assert a.evaluations == b.evaluations > 0
    np.testing.assert_allclose(a.values, b.values, atol=1e-9)


def test_a_tie_is_one_guess_not_a_hit(digits_round):
    """From the all-zero initial model every class ties: the empty coalition scores what that model
    really predicts (class 0 everywhere), not 1.0, and walks, batches and the model agree."""
    from fedmarket.scoring import exact_shapley

    model, _, U, w, X, y = digits_round
    zero = np.zeros(model.n_params)
    u = AggregationUtility(model, zero, U, X, y, w, metric="accuracy")
    assert u.empty() == pytest.approx(model.accuracy(zero, X, y)) == pytest.approx(float(np.mean(y == 0)))
    assert u.empty() < 0.2 < u.grand()
    phi = exact_shapley(u)
    assert np.all(phi > 0)  # every honest provider helps the untrained model
    from fedmarket.scoring import detect

    assert not detect(U, values=phi).flagged.any()


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), c=st.integers(2, 5), ties=st.booleans())
def test_accuracy_is_the_models_accuracy_on_any_coalition(seed, c, ties):
    """Property: on random games, with or without tied logits, the batched accuracy equals
    `Model.accuracy` of the coalition's aggregated model, through the cache and along walks."""
    from fedmarket.fl.models import SoftmaxRegression
    from fedmarket.scoring._permutations import walk

    rng = np.random.default_rng(seed)
    n, d, m = 4, 3, 40
    model = SoftmaxRegression(d, c)
    params = rng.normal(size=model.n_params)
    U = rng.normal(size=(n, model.n_params))
    if ties:  # classes 0 and 1 get the same weights and bias: their logits tie exactly on every coalition
        for A in (params[None, :], U):
            W = A[:, : d * c].reshape(-1, d, c)
            W[:, :, 1] = W[:, :, 0]
            A[:, d * c + 1] = A[:, d * c]
    X = rng.normal(size=(m, d))
    y = rng.integers(0, c, m)
    w = rng.integers(1, 4, n).astype(float)
    u = AggregationUtility(model, params, U, X, y, w, metric="accuracy")
    masks = all_masks(n)
    want = [model.accuracy(params + (w[k] / w[k].sum()) @ U[k] if k.any() else params, X, y) for k in masks]
    np.testing.assert_allclose(u.evaluate(masks), want)
    perm = rng.permutation(n)[None, :]
    marg = walk(AggregationUtility(model, params, U, X, y, w, metric="accuracy"), perm, want[0], want[-1], 0.0)
    np.testing.assert_allclose(marg.sum(), want[-1] - want[0], atol=1e-12)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), metric=st.sampled_from(["accuracy", "neg_loss"]))
def test_round_share_adds_each_members_own_term(digits_round, seed, metric):
    """Property: with share="round" a coalition's model is the start plus its members' terms of the
    round's aggregate (sum_S w_i u_i / sum_N w); the grand coalition is the same model either way."""
    model, params, U, w, X, y = digits_round
    u = AggregationUtility(model, params, U, X, y, w, metric=metric, share="round")
    masks = np.random.default_rng(seed).random((12, U.shape[0])) < 0.5
    masks[0] = True
    want = [one_by_one(model, params, (w[m].sum() / w.sum()) * U, w, X, y, m, metric) for m in masks]
    np.testing.assert_allclose(u.values(masks), want, atol=1e-5)
    grand = AggregationUtility(model, params, U, X, y, w, metric=metric).grand()
    assert u.grand() == pytest.approx(grand, abs=1e-9)
    with pytest.raises(ConfigError):
        AggregationUtility(model, params, U, X, y, w, share="everyone")
