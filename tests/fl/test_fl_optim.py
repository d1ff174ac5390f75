"""Local training settings: validation, learning-rate schedules, the flat optimizers (checked against
PyTorch's), and local training that is deterministic given its seed."""

import numpy as np
import pytest

from fedmarket.errors import ConfigError
from fedmarket.fl.models import MLP, SoftmaxRegression
from fedmarket.fl.optim import FlatOptimizer, LocalTraining
from fedmarket.fl.train import local_sgd, local_train, local_train_many


def _data(n=60, d=6, k=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.integers(0, k, n)


@pytest.mark.parametrize("kwargs, words", [
    ({"epochs": 0}, "epochs"),
    ({"lr": -1.0}, "learning rate"),
    ({"optimizer": "rmsprop"}, "unknown optimizer"),
    ({"schedule": "linear"}, "unknown learning-rate schedule"),
    ({"momentum": 1.0}, "momentum"),
    ({"weight_decay": -0.1}, "weight_decay"),
    ({"gamma": 0.0}, "gamma"),
])
def test_bad_settings_are_refused(kwargs, words):
    with pytest.raises(ConfigError, match=words):
        LocalTraining(**{"epochs": 1, "batch_size": 8, "lr": 0.1, **kwargs})


def test_schedules_are_pure_functions_of_the_round():
    base = {"epochs": 1, "batch_size": 8, "lr": 0.8}
    assert LocalTraining(**base).lr_at(7) == 0.8
    step = LocalTraining(**base, schedule="step", gamma=0.5, step_rounds=3)
    assert [step.lr_at(r) for r in (0, 2, 3, 6)] == [0.8, 0.8, 0.4, 0.2]
    exp = LocalTraining(**base, schedule="exponential", gamma=0.5)
    assert exp.lr_at(3) == 0.1
    cos = LocalTraining(**base, schedule="cosine", min_lr=0.2, total_rounds=5)
    assert cos.lr_at(0) == 0.8 and cos.lr_at(4) == pytest.approx(0.2) and cos.lr_at(99) == pytest.approx(0.2)
    assert 0.2 < cos.lr_at(2) < 0.8


@pytest.mark.parametrize("opt, extra", [
    ("sgd", {"momentum": 0.9, "weight_decay": 0.01}),
    ("adam", {"weight_decay": 0.01}),
    ("adamw", {"weight_decay": 0.01}),
])
def test_flat_optimizers_take_pytorchs_steps(opt, extra):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    w0 = rng.normal(size=20)
    grads = [rng.normal(size=20) for _ in range(6)]
    cfg = LocalTraining(epochs=1, batch_size=1, lr=0.05, optimizer=opt, **extra)
    w = w0.copy()
    ours = FlatOptimizer(cfg, w, 0.05)
    p = torch.nn.Parameter(torch.from_numpy(w0.copy()))
    theirs = {"sgd": lambda: torch.optim.SGD([p], lr=0.05, **extra),
              "adam": lambda: torch.optim.Adam([p], lr=0.05, **extra),
              "adamw": lambda: torch.optim.AdamW([p], lr=0.05, **extra)}[opt]()
    for g in grads:
        ours.step(g.copy())
        p.grad = torch.from_numpy(g.copy())
        theirs.step()
    np.testing.assert_allclose(w, p.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_plain_sgd_is_local_sgd_and_other_settings_change_the_result():
    X, y = _data()
    m = SoftmaxRegression(6, 3)
    w0 = m.init_params()
    plain = LocalTraining(epochs=2, batch_size=8, lr=0.3, prox_mu=0.1)
    np.testing.assert_array_equal(local_train(m, w0, X, y, plain, seed=4),
                                  local_sgd(m, w0, X, y, epochs=2, batch_size=8, lr=0.3, seed=4, prox_mu=0.1))
    mom = LocalTraining(epochs=2, batch_size=8, lr=0.3, momentum=0.9)
    assert not np.allclose(local_train(m, w0, X, y, mom, seed=4), local_train(m, w0, X, y, plain, seed=4))


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_local_training_is_deterministic_given_the_seed(opt):
    X, y = _data(seed=2)
    m = MLP(6, 3, hidden=(5,), seed=3, activation="tanh")
    cfg = LocalTraining(epochs=2, batch_size=7, lr=0.05, optimizer=opt, schedule="exponential", gamma=0.9,
                        **({"momentum": 0.5} if opt == "sgd" else {}))
    a = local_train(m, m.init_params(), X, y, cfg, seed=9, round_=3)
    assert np.array_equal(a, local_train(m, m.init_params(), X, y, cfg, seed=9, round_=3))
    assert not np.array_equal(a, local_train(m, m.init_params(), X, y, cfg, seed=10, round_=3))
    assert not np.array_equal(a, local_train(m, m.init_params(), X, y, cfg, seed=9, round_=0))  # another learning rate


def test_many_clients_match_one_by_one():
    X, y = _data(seed=5)
    m = SoftmaxRegression(6, 3)
    parts = [(X[:20], y[:20]), (X[20:], y[20:])]
    for cfg in (LocalTraining(epochs=1, batch_size=5, lr=0.2), LocalTraining(epochs=1, batch_size=5, lr=0.2, momentum=0.5)):
        many = local_train_many(m, m.init_params(), [p[0] for p in parts], [p[1] for p in parts], cfg, seeds=[1, 2])
        one = np.stack([local_train(m, m.init_params(), Xp, yp, cfg, seed=s) for (Xp, yp), s in zip(parts, [1, 2])])
        np.testing.assert_allclose(many, one, atol=1e-12)


def test_tanh_mlp_gradient_matches_finite_differences():
    X, y = _data(n=10, seed=6)
    m = MLP(6, 3, hidden=(4,), activation="tanh", seed=1)
    w = m.init_params()
    _, g = m.loss_and_grad(w, X, y)
    eps = 1e-6
    for i in (0, 7, 30, len(w) - 1):
        e = np.zeros_like(w)
        e[i] = eps
        num = (m.loss_and_grad(w + e, X, y)[0] - m.loss_and_grad(w - e, X, y)[0]) / (2 * eps)
        assert g[i] == pytest.approx(num, rel=1e-5, abs=1e-8)
    with pytest.raises(ConfigError, match="unknown activation"):
        MLP(6, 3, activation="gelu")
