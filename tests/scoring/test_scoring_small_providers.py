"""Small honest providers are paid: from a real round's updates through the validators' scores to the
reward leaf amounts, the same functions the market's reward document uses."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedmarket.fl.data import load_dataset, train_test_split
from fedmarket.fl.models import SoftmaxRegression, normalize
from fedmarket.fl.train import local_sgd_many
from fedmarket.protocol import rules as R
from fedmarket.roles.settlement import SCORE_SCALE, score_units, weighted_median
from fedmarket.scoring import score_round

SIZES = [300, 300, 300, 200, 40, 20, 10]  # the last three: small honest providers
POOL = 99 * 10**18


def pay(seed: int, share: str, bound: bool = True) -> tuple[list[int], np.ndarray]:
    """Three FedAvg rounds; each scored by three validators (disjoint thirds of the held-out data) as
    `Validator.review` does; the leaf amounts `reward_document` derives; and the last round's values."""
    train, test = train_test_split(load_dataset("digits"), 0.25, seed=0)
    X = normalize(train.X, train.feature_low, train.feature_high)
    Xv = normalize(test.X, test.feature_low, test.feature_high)
    order = np.random.default_rng(seed).permutation(len(train.y))
    parts = np.split(order[: sum(SIZES)], np.cumsum(SIZES)[:-1])
    model, w = SoftmaxRegression(64, 10), np.array(SIZES, dtype=float)
    thirds = np.array_split(np.arange(len(test.y)), 3)
    params, value = model.init_params(), np.zeros(len(SIZES), dtype=np.int64)
    for r in range(3):
        U = local_sgd_many(model, params, [X[p] for p in parts], [train.y[p] for p in parts],
                           seeds=[seed * 100 + r * 10 + k for k in range(len(SIZES))], epochs=1, batch_size=16, lr=0.1) - params
        scores = []
        for t in thirds:
            sc = score_round(model, params, U, Xv[t], test.y[t], w, metric="neg_loss", seed=r, share=share, bound=bound)
            scores.append([score_units(v) for v in sc.rewardable])
        cons = [weighted_median([s[i] for s in scores], [1, 1, 1]) for i in range(len(SIZES))]
        value += np.maximum(cons, 0)
        last = sc.values
        params = params + (w / w.sum()) @ U
    total = int(value.sum())
    leaves = [R.leaf_due(R.Role.PROVIDER, int(v), 3, 3, R.Basis.SCORES, POOL, total, False)[0] for v in value]
    return leaves, last


@pytest.mark.parametrize("seed", range(3))
def test_small_honest_providers_are_paid(seed):
    amounts, values = pay(seed, "round")
    assert all(a > 0 for a in amounts), amounts
    assert np.all(values > 0)  # each adds value to the round's aggregate
    assert sum(amounts) <= POOL
    assert amounts[-1] < amounts[-2] < amounts[-3] < min(amounts[:4])  # and less than the large ones


def test_weighed_against_the_coalition_they_were_not():
    """The rule before: a short honest update dilutes the longer ones in every coalition's average,
    so its Shapley value is negative and its pay clipped to 0."""
    amounts, _ = pay(0, "coalition", bound=False)
    assert amounts[-3:] == [0, 0, 0] and min(amounts[:4]) > 0


@given(st.floats(-1e3, 1e3, allow_nan=False))
def test_a_positive_value_is_never_committed_as_zero(v):
    """Property: the committed score keeps the value's sign, is within one unit of it, and a positive
    value (however small) scores at least 1."""
    units = score_units(v)
    assert abs(units - v * SCORE_SCALE) <= 1
    assert units >= 1 if v > 0 else units <= 0
