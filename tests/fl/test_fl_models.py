"""Tests for fedmarket.fl.models: softmax regression and schema-bound normalisation."""

import numpy as np
import pytest

from fedmarket.errors import ConfigError, SchemaMismatch
from fedmarket.fl.models import SoftmaxRegression, normalize


def _problem(seed=0, n=30, d=5, k=4):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.integers(0, k, n), SoftmaxRegression(d, k, l2=0.1)


def test_parameter_layout_and_init():
    m = SoftmaxRegression(64, 10)
    assert m.n_params == 64 * 10 + 10
    p = m.init_params()
    assert p.shape == (650,) and p.dtype == np.float64 and not p.any()


def test_zero_params_give_uniform_loss():
    X, y, m = _problem()
    loss, _ = m.loss_and_grad(m.init_params(), X, y)
    assert loss == pytest.approx(np.log(4))


def test_logits_match_layout():
    X, _, m = _problem()
    rng = np.random.default_rng(1)
    W, b = rng.normal(size=(5, 4)), rng.normal(size=4)
    params = np.concatenate([W.ravel(), b])
    np.testing.assert_allclose(m.logits(params, X), X @ W + b)
    np.testing.assert_array_equal(m.predict(params, X), np.argmax(X @ W + b, axis=1))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradient_matches_finite_differences(seed):
    X, y, m = _problem(seed)
    params = np.random.default_rng(seed + 10).normal(size=m.n_params)
    _, grad = m.loss_and_grad(params, X, y)
    eps = 1e-6
    eye = np.eye(m.n_params) * eps
    numeric = np.array(
        [(m.loss_and_grad(params + e, X, y)[0] - m.loss_and_grad(params - e, X, y)[0]) / (2 * eps) for e in eye]
    )
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-7)


def test_loss_is_stable_for_huge_logits():
    X, y, m = _problem()
    params = np.random.default_rng(3).normal(size=m.n_params) * 1e6
    loss, grad = m.loss_and_grad(params, X, y)
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    assert loss > 1e3  # confidently wrong on some samples, and no overflow


def test_l2_penalty_only_on_weights():
    X, y, m0 = _problem()
    m1 = SoftmaxRegression(5, 4, l2=2.0)
    params = np.zeros(m0.n_params)
    params[-4:] = [1.0, 2.0, 3.0, 4.0]  # bias only
    params[0] = 3.0
    l_plain, _ = SoftmaxRegression(5, 4, l2=0.0).loss_and_grad(params, X, y)
    l_pen, _ = m1.loss_and_grad(params, X, y)
    assert l_pen - l_plain == pytest.approx(0.5 * 2.0 * 9.0)


def test_accuracy():
    m = SoftmaxRegression(2, 2, l2=0.0)
    params = np.array([1.0, -1.0, 0.0, 0.0, 0.0, 0.0])  # class 0 iff x0 > 0
    X = np.array([[1.0, 0], [-1.0, 0], [2.0, 0], [-3.0, 0]])
    assert m.accuracy(params, X, np.array([0, 1, 0, 0])) == 0.75


def test_shape_and_label_errors():
    X, y, m = _problem()
    with pytest.raises(SchemaMismatch, match="expects 5 features"):
        m.loss_and_grad(m.init_params(), X[:, :3], y)
    with pytest.raises(ConfigError, match="parameter vector"):
        m.logits(np.zeros(3), X)
    with pytest.raises(SchemaMismatch, match="labels must lie"):
        m.loss_and_grad(m.init_params(), X, y + 4)
    with pytest.raises(ConfigError):
        SoftmaxRegression(5, 1)
    with pytest.raises(ConfigError):
        SoftmaxRegression(0, 3)
    with pytest.raises(ConfigError):
        SoftmaxRegression(5, 3, l2=-1.0)


def test_normalize_maps_to_unit_interval_with_clipping_and_constants():
    low = np.array([0.0, -2.0, 5.0])
    high = np.array([16.0, 2.0, 5.0])
    X = np.array([[0.0, -2.0, 5.0], [16.0, 2.0, 7.0], [8.0, 0.0, 1.0], [20.0, -5.0, 5.0]])
    out = normalize(X, low, high)
    expected = np.array([[0, 0, 0], [1, 1, 0], [0.5, 0.5, 0], [1, 0, 0]], dtype=float)
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.float64


def test_normalize_errors():
    with pytest.raises(SchemaMismatch, match="3 features"):
        normalize(np.zeros((2, 2)), np.zeros(3), np.ones(3))
    with pytest.raises(ConfigError, match="exceeds upper"):
        normalize(np.zeros((2, 2)), np.array([0.0, 2.0]), np.array([1.0, 1.0]))
    with pytest.raises(ConfigError, match="finite"):
        normalize(np.zeros((2, 2)), np.array([0.0, np.nan]), np.ones(2))
