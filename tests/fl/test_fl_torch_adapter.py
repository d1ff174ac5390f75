"""Tests for the optional PyTorch adapter: any nn.Module behind the flat-parameter-vector interface."""

import numpy as np
import pytest

from fedmarket.errors import ConfigError, SchemaMismatch
from fedmarket.fl.models import MLP, SoftmaxRegression
from fedmarket.fl.train import local_sgd, local_sgd_many


def _data(n=25, d=5, k=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.integers(0, k, n)


def _torch_to_ours(lin_layers):
    """Our flat layout ((in, out) weights, then bias, per layer) from torch Linear layers ((out, in))."""
    return np.concatenate([np.concatenate([l.weight.detach().numpy().T.ravel(), l.bias.detach().numpy()]) for l in lin_layers])


def test_linear_module_equals_softmax_regression(torch):
    from fedmarket.fl.torch_adapter import TorchModel

    torch.manual_seed(0)
    lin = torch.nn.Linear(5, 3).double()
    tm = TorchModel(lin, 5, 3)
    ours = SoftmaxRegression(5, 3, l2=0.0)
    X, y = _data()
    p = _torch_to_ours([lin])
    l1, g1 = ours.loss_and_grad(p, X, y)
    l2, g2 = tm.loss_and_grad(tm.init_params(), X, y)
    assert l1 == pytest.approx(l2, rel=1e-12)
    np.testing.assert_allclose(np.concatenate([g2[:15].reshape(3, 5).T.ravel(), g2[15:]]), g1, atol=1e-12)
    np.testing.assert_array_equal(tm.predict(tm.init_params(), X), ours.predict(p, X))


def test_mlp_module_equals_our_mlp_after_local_sgd(torch):
    from fedmarket.fl.torch_adapter import TorchModel

    torch.manual_seed(1)
    l1, l2 = torch.nn.Linear(5, 4).double(), torch.nn.Linear(4, 3).double()
    net = torch.nn.Sequential(l1, torch.nn.ReLU(), l2)
    tm = TorchModel(net, 5, 3)
    ours = MLP(5, 3, hidden=(4,))
    X, y = _data(seed=2)
    hp = dict(epochs=2, batch_size=4, lr=0.3, seed=5)
    start = _torch_to_ours([l1, l2])  # before training: the adapter writes into the module
    t_out = local_sgd(tm, tm.init_params(), X, y, **hp)
    o_out = local_sgd(ours, start, X, y, **hp)
    # map the torch result back into our layout and compare
    tm._set(t_out)
    np.testing.assert_allclose(_torch_to_ours([l1, l2]), o_out, rtol=1e-10, atol=1e-12)
    many = local_sgd_many(tm, tm.init_params(), [X, X[:7]], [y, y[:7]], epochs=1, batch_size=4, lr=0.3, seeds=[1, 2])
    assert many.shape == (2, tm.n_params)
    assert tm.accuracy(t_out, X, y) >= tm.accuracy(tm.init_params(), X, y)


def test_float32_modules_and_errors(torch):
    from fedmarket.fl.torch_adapter import TorchModel

    tm = TorchModel(torch.nn.Linear(5, 3), 5, 3, l2=0.1)
    X, y = _data()
    loss, grad = tm.loss_and_grad(tm.init_params(), X, y)
    assert grad.dtype == np.float64 and grad.shape == (18,) and np.isfinite(loss)
    with pytest.raises(ConfigError, match="parameter vector"):
        tm.loss_and_grad(np.zeros(3), X, y)
    with pytest.raises(SchemaMismatch, match="expects 5 features"):
        tm.predict(tm.init_params(), X[:, :4])
    with pytest.raises(SchemaMismatch, match="labels must lie"):
        tm.loss_and_grad(tm.init_params(), X, y + 3)
    with pytest.raises(ConfigError, match="torch.nn.Module"):
        TorchModel(object(), 5, 3)
    with pytest.raises(ConfigError, match="n_classes"):
        TorchModel(torch.nn.Linear(5, 3), 5, 1)
