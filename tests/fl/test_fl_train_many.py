"""Tests for vectorised training of many clients (local_sgd_many) and for the MLP model."""

import numpy as np
import pytest

from fedmarket.errors import ConfigError, SchemaMismatch
from fedmarket.fl.data import load_dataset, train_test_split
from fedmarket.fl.models import MLP, Model, SoftmaxRegression, normalize
from fedmarket.fl.train import centralized_train, local_sgd, local_sgd_many

MODELS = [
    lambda: SoftmaxRegression(6, 3, l2=0.05),
    lambda: MLP(6, 3, hidden=(5, 4), l2=0.05, seed=2),
    lambda: MLP(6, 3, hidden=(7,), l2=0.0, seed=3),
]


def _clients(sizes, d=6, k=3, seed=0):
    rng = np.random.default_rng(seed)
    Xs = [rng.normal(size=(n, d)) for n in sizes]
    ys = [rng.integers(0, k, n) for n in sizes]
    return Xs, ys


@pytest.mark.parametrize("make", MODELS)
@pytest.mark.parametrize("prox_mu", [0.0, 0.3])
def test_many_equals_one_by_one(make, prox_mu):
    model = make()
    Xs, ys = _clients([1, 7, 16, 23, 5, 9])
    start = model.init_params() + np.random.default_rng(1).normal(size=model.n_params) * 0.1
    seeds = [11, 12, 13, 14, 15, 16]
    hp = dict(epochs=3, batch_size=4, lr=0.2, prox_mu=prox_mu)
    many = local_sgd_many(model, start, Xs, ys, seeds=seeds, **hp)
    assert many.shape == (6, model.n_params) and many.dtype == np.float64
    for k in range(6):
        one = local_sgd(model, start, Xs[k], ys[k], seed=seeds[k], **hp)
        np.testing.assert_allclose(many[k], one, rtol=1e-10, atol=1e-12)
    assert not np.array_equal(many[1], many[2])


class Plain(Model):
    """A model without batched steps: exercises the per-client fallback."""

    def __init__(self):
        self.inner = SoftmaxRegression(6, 3, l2=0.0)
        self.n_features, self.n_classes, self.n_params = 6, 3, self.inner.n_params

    def init_params(self):
        return self.inner.init_params()

    def _logits(self, params, X):
        return self.inner._logits(params, X)

    def grad_fn(self, w):
        return self.inner.grad_fn(w)


def test_models_without_batched_steps_fall_back_to_a_loop():
    m = Plain()
    assert not m.supports_batched and SoftmaxRegression(2, 2).supports_batched and MLP(2, 2).supports_batched
    Xs, ys = _clients([5, 8])
    many = local_sgd_many(m, m.init_params(), Xs, ys, epochs=2, batch_size=3, lr=0.5, seeds=[1, 2])
    np.testing.assert_array_equal(many[1], local_sgd(m, m.init_params(), Xs[1], ys[1], epochs=2, batch_size=3, lr=0.5, seed=2))


def test_local_sgd_many_leaves_inputs_alone_and_validates():
    m = SoftmaxRegression(6, 3)
    Xs, ys = _clients([4, 6])
    start = m.init_params()
    start.setflags(write=False)
    local_sgd_many(m, start, Xs, ys, epochs=1, batch_size=2, lr=0.1, seeds=[0, 1])
    assert not start.any()
    with pytest.raises(ConfigError, match="seeds"):
        local_sgd_many(m, start, Xs, ys, epochs=1, batch_size=2, lr=0.1, seeds=[0])
    with pytest.raises(ConfigError, match="no clients"):
        local_sgd_many(m, start, [], [], epochs=1, batch_size=2, lr=0.1, seeds=[])
    with pytest.raises(ConfigError, match="no samples"):
        local_sgd_many(m, start, [Xs[0][:0]], [ys[0][:0]], epochs=1, batch_size=2, lr=0.1, seeds=[0])
    with pytest.raises(ConfigError, match="batch_size"):
        local_sgd_many(m, start, Xs, ys, epochs=1, batch_size=0, lr=0.1, seeds=[0, 1])
    with pytest.raises(SchemaMismatch, match="features"):
        local_sgd_many(m, start, [np.zeros((3, 5))], [np.zeros(3, int)], epochs=1, batch_size=2, lr=0.1, seeds=[0])


# --------------------------------------------------------------------- MLP


def test_mlp_layout_and_init():
    m = MLP(784, 10, hidden=(200, 200))
    assert m.n_params == 784 * 200 + 200 + 200 * 200 + 200 + 200 * 10 + 10 == 199_210
    p = m.init_params()
    np.testing.assert_array_equal(p, MLP(784, 10, hidden=(200, 200)).init_params())
    assert not np.array_equal(p, MLP(784, 10, hidden=(200, 200), seed=1).init_params())
    assert np.abs(p[: 784 * 200]).max() <= np.sqrt(6 / 784) and not p[784 * 200 : 784 * 200 + 200].any()


@pytest.mark.parametrize("seed", [0, 1])
def test_mlp_gradient_matches_finite_differences(seed):
    rng = np.random.default_rng(seed)
    m = MLP(4, 3, hidden=(5, 3), l2=0.1, seed=seed)
    X, y = rng.normal(size=(9, 4)), rng.integers(0, 3, 9)
    params = m.init_params() + rng.normal(size=m.n_params) * 0.3
    loss, grad = m.loss_and_grad(params, X, y)
    eps = 1e-6
    numeric = np.array([
        (m.loss_and_grad(params + e, X, y)[0] - m.loss_and_grad(params - e, X, y)[0]) / (2 * eps)
        for e in np.eye(m.n_params) * eps
    ])
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-7)
    assert loss > 0


def test_mlp_logits_match_a_hand_forward_pass():
    m = MLP(3, 2, hidden=(4,), seed=5)
    p = m.init_params() + 0.1
    W1, b1 = p[:12].reshape(3, 4), p[12:16]
    W2, b2 = p[16:24].reshape(4, 2), p[24:26]
    X = np.random.default_rng(0).normal(size=(5, 3))
    np.testing.assert_allclose(m.logits(p, X), np.maximum(X @ W1 + b1, 0) @ W2 + b2)


def test_mlp_learns_digits():
    train, test = train_test_split(load_dataset("digits"), 0.25, seed=0)
    X = normalize(train.X, train.feature_low, train.feature_high)
    Xt = normalize(test.X, test.feature_low, test.feature_high)
    m = MLP(64, 10, hidden=(32,))
    params = centralized_train(m, X, train.y, epochs=10, batch_size=16, lr=0.1, seed=0)
    assert m.accuracy(params, Xt, test.y) >= 0.94


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_features=0, n_classes=2), "n_features"),
        (dict(n_features=2, n_classes=1), "n_classes"),
        (dict(n_features=2, n_classes=2, hidden=()), "hidden"),
        (dict(n_features=2, n_classes=2, hidden=(3, 0)), "hidden"),
        (dict(n_features=2, n_classes=2, l2=-1.0), "l2"),
    ],
)
def test_mlp_rejects_bad_configs(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        MLP(**kwargs)


def test_mlp_checks_inputs_like_softmax_regression():
    m = MLP(3, 2, hidden=(2,))
    with pytest.raises(ConfigError, match="parameter vector"):
        m.loss_and_grad(np.zeros(3), np.zeros((2, 3)), np.zeros(2, int))
    with pytest.raises(SchemaMismatch, match="expects 3 features"):
        m.predict(m.init_params(), np.zeros((2, 4)))
    with pytest.raises(SchemaMismatch, match="labels must lie"):
        m.accuracy(m.init_params(), np.zeros((2, 3)), np.array([0, 2]))
