"""End-to-end check: federated averaging of softmax regression on digits matches expectations."""

import numpy as np
import pytest

from fedmarket.fl.aggregate import fedavg_int
from fedmarket.fl.data import load_dataset, train_test_split
from fedmarket.fl.models import SoftmaxRegression, normalize
from fedmarket.fl.partition import dirichlet_partition, iid_partition
from fedmarket.fl.quantize import dequantize, quantize
from fedmarket.fl.train import centralized_train, local_sgd

N_CLIENTS, ROUNDS = 20, 10
LOCAL = dict(epochs=5, batch_size=16, lr=1.0)


@pytest.fixture(scope="module")
def digits():
    train, test = train_test_split(load_dataset("digits"), 0.25, seed=0)
    X_train = normalize(train.X, train.feature_low, train.feature_high)
    X_test = normalize(test.X, test.feature_low, test.feature_high)
    model = SoftmaxRegression(train.n_features, train.num_classes)
    return model, X_train, train.y, X_test, test.y


def _federate(model, X, y, parts):
    """Rounds of FedAvg through the on-chain path: quantize, exact integer mean, dequantize."""
    params = model.init_params()
    sizes = [len(p) for p in parts]
    for r in range(ROUNDS):
        updates = [
            quantize(local_sgd(model, params, X[p], y[p], seed=r * N_CLIENTS + i, **LOCAL))
            for i, p in enumerate(parts)
        ]
        params = dequantize(fedavg_int(updates, sizes))
    return params


def test_fedavg_iid_digits_reaches_92_percent(digits):
    model, X, y, X_test, y_test = digits
    params = _federate(model, X, y, iid_partition(y, N_CLIENTS, seed=0))
    assert model.accuracy(params, X_test, y_test) >= 0.92


def test_fedavg_dirichlet_digits_still_learns(digits):
    model, X, y, X_test, y_test = digits
    params = _federate(model, X, y, dirichlet_partition(y, N_CLIENTS, 0.5, seed=0))
    assert model.accuracy(params, X_test, y_test) >= 0.90


def test_federation_is_deterministic(digits):
    model, X, y, _, _ = digits
    parts = iid_partition(y, N_CLIENTS, seed=0)[:3]
    np.testing.assert_array_equal(_federate(model, X, y, parts), _federate(model, X, y, parts))


def test_centralized_digits_reaches_94_percent(digits):
    model, X, y, X_test, y_test = digits
    params = centralized_train(model, X, y, epochs=20, batch_size=16, lr=0.5, seed=0)
    assert model.accuracy(params, X_test, y_test) >= 0.94
