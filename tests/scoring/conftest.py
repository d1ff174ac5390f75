"""A small real federated round on scikit-learn's digits, shared by the scoring tests."""

from __future__ import annotations

import numpy as np
import pytest

from fedmarket.fl.data import load_dataset, train_test_split
from fedmarket.fl.models import SoftmaxRegression, normalize
from fedmarket.fl.partition import iid_partition
from fedmarket.fl.train import local_sgd_many


@pytest.fixture(scope="session")
def digits_round():
    """(model, start params, honest deltas (8, p), sample weights, X_val, y_val) after one warm-up FedAvg round."""
    train, test = train_test_split(load_dataset("digits"), 0.25, seed=0)
    X = normalize(train.X, train.feature_low, train.feature_high)
    Xv = normalize(test.X, test.feature_low, test.feature_high)
    parts = iid_partition(train.y, 8, seed=0)
    Xs, ys = [X[p] for p in parts], [train.y[p] for p in parts]
    model = SoftmaxRegression(X.shape[1], 10)
    w = np.array([len(p) for p in parts], dtype=np.float64)
    hp = {"epochs": 1, "batch_size": 16, "lr": 0.1}
    params = model.init_params()
    P = local_sgd_many(model, params, Xs, ys, seeds=list(range(8)), **hp)
    params = params + (w / w.sum()) @ (P - params)
    U = local_sgd_many(model, params, Xs, ys, seeds=list(range(8, 16)), **hp) - params
    return model, params, U, w, Xv, test.y
