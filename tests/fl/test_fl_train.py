"""Tests for fedmarket.fl.train: local SGD (with FedProx) and the centralised baseline."""

import numpy as np
import pytest

from fedmarket.errors import ConfigError
from fedmarket.fl.data import load_dataset
from fedmarket.fl.models import SoftmaxRegression, normalize
from fedmarket.fl.train import centralized_train, local_sgd

HP = dict(epochs=3, batch_size=16, lr=0.5)


@pytest.fixture(scope="module")
def iris():
    ds = load_dataset("iris")
    X = normalize(ds.X, ds.feature_low, ds.feature_high)
    return X, ds.y, SoftmaxRegression(ds.n_features, ds.num_classes)


def test_local_sgd_reduces_loss_and_leaves_input_untouched(iris):
    X, y, m = iris
    start = np.random.default_rng(0).normal(size=m.n_params)
    before = start.copy()
    X_before, y_before = X.copy(), y.copy()
    new = local_sgd(m, start, X, y, seed=0, **HP)
    np.testing.assert_array_equal(start, before)
    np.testing.assert_array_equal(X, X_before)
    np.testing.assert_array_equal(y, y_before)
    assert new is not start and new.shape == start.shape and new.dtype == np.float64
    assert m.loss_and_grad(new, X, y)[0] < m.loss_and_grad(start, X, y)[0] - 0.1


def test_local_sgd_works_on_read_only_input(iris):
    X, y, m = iris
    start = m.init_params()
    start.setflags(write=False)
    new = local_sgd(m, start, X, y, seed=0, **HP)
    assert np.any(new != 0)


def test_local_sgd_is_deterministic_per_seed(iris):
    X, y, m = iris
    a = local_sgd(m, m.init_params(), X, y, seed=7, **HP)
    b = local_sgd(m, m.init_params(), X, y, seed=7, **HP)
    c = local_sgd(m, m.init_params(), X, y, seed=8, **HP)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_full_batch_single_epoch_is_one_gradient_step(iris):
    X, y, m = iris
    start = np.random.default_rng(1).normal(size=m.n_params)
    new = local_sgd(m, start, X, y, epochs=1, batch_size=len(y), lr=0.3, seed=0)
    _, g = m.loss_and_grad(start, X, y)
    np.testing.assert_allclose(new, start - 0.3 * g, rtol=1e-12, atol=1e-12)


def test_prox_term_keeps_params_near_global(iris):
    X, y, m = iris
    start = np.random.default_rng(2).normal(size=m.n_params)
    free = local_sgd(m, start, X, y, seed=0, **HP)
    prox = local_sgd(m, start, X, y, seed=0, prox_mu=1.0, **HP)
    assert np.linalg.norm(prox - start) < 0.8 * np.linalg.norm(free - start)
    # the proximal gradient mu * (w - w_global) is zero at the first step only
    one = local_sgd(m, start, X, y, epochs=1, batch_size=len(y), lr=0.3, seed=0, prox_mu=5.0)
    np.testing.assert_allclose(one, start - 0.3 * m.loss_and_grad(start, X, y)[1])


def test_centralized_train_fits_iris(iris):
    X, y, m = iris
    params = centralized_train(m, X, y, epochs=30, batch_size=16, lr=0.5, seed=0)
    assert m.accuracy(params, X, y) > 0.9


@pytest.mark.parametrize(
    "bad",
    [
        dict(epochs=0),
        dict(epochs=1.5),
        dict(batch_size=0),
        dict(lr=0.0),
        dict(lr=float("nan")),
        dict(prox_mu=-1.0),
    ],
)
def test_bad_hyper_parameters_raise(iris, bad):
    X, y, m = iris
    kwargs = {**HP, "seed": 0, **bad}
    with pytest.raises(ConfigError):
        local_sgd(m, m.init_params(), X, y, **kwargs)


def test_empty_data_raises(iris):
    X, y, m = iris
    with pytest.raises(ConfigError, match="no samples"):
        local_sgd(m, m.init_params(), X[:0], y[:0], seed=0, **HP)
