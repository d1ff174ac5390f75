"""Detection on a real digits round: a free-rider, a Sybil pair and a sign-flipped poisoner are caught, honest providers are not."""

from __future__ import annotations

import numpy as np
import pytest

from fedmarket.errors import ConfigError
from fedmarket.fl.attacks import FreeRider, SignFlip
from fedmarket.scoring import AggregationUtility, detect, exact_shapley, reward_amounts


@pytest.fixture(scope="module")
def attacked(digits_round):
    model, params, U, w, X, y = digits_round
    rng = np.random.default_rng(0)
    A = U.copy()
    A[[0]] = FreeRider().poison_updates(U[[0]], 8, rng)  # sends the global model back
    A[2] = A[1]  # provider 2 is a Sybil copy of provider 1
    A[[3]] = SignFlip(scale=4.0).poison_updates(U[[3]], 8, rng)
    return model, params, A, w, X, y


def test_honest_round_is_clean(digits_round):
    _, _, U, _, _, _ = digits_round
    rep = detect(U)
    assert not rep.flagged.any(), rep.reasons


def test_catches_free_rider_sybils_and_sign_flip(attacked):
    A = attacked[2]
    rep = detect(A)
    assert np.flatnonzero(rep.free_riders).tolist() == [0]
    assert rep.sybil_pairs == [(1, 2)]
    assert np.flatnonzero(rep.sybils).tolist() == [1, 2]
    assert np.flatnonzero(rep.poisoners).tolist() == [3]
    assert np.flatnonzero(rep.flagged).tolist() == [0, 1, 2, 3]
    assert set(rep.reasons) == {0, 1, 2, 3}


def test_shapley_flags_the_poisoner_and_feeds_the_rewards(attacked):
    model, params, A, w, X, y = attacked
    phi = exact_shapley(AggregationUtility(model, params, A, X, y, w))
    assert phi[3] < 0 and phi[3] == phi.min()
    rep = detect(A, values=phi)
    assert rep.poisoners[3]
    amounts = reward_amounts(10**18, phi, exclude=rep.flagged)
    assert sum(amounts) == 10**18
    assert amounts[:4] == [0, 0, 0, 0]
    assert [a > 0 for a in amounts[4:]] == [p > 0 for p in phi[4:]]
    assert sum(p > 0 for p in phi[4:]) >= 2


def test_negative_value_alone_flags():
    rng = np.random.default_rng(0)
    U = rng.normal(size=(5, 20)) + 3.0
    rep = detect(U, values=np.array([0.3, 0.2, -0.4, 0.25, 0.1]))
    assert np.flatnonzero(rep.poisoners).tolist() == [2]
    # a slightly negative value is evaluation noise, not poisoning (a quarter of the total is the bar)
    rep = detect(U, values=np.array([0.3, 0.2, -0.02, 0.25, 0.1]))
    assert not rep.poisoners.any()


def test_bad_input():
    with pytest.raises(ConfigError, match="n >= 1"):
        detect(np.ones((0, 3)))
    with pytest.raises(ConfigError, match="n >= 1"):
        detect(np.ones(3))
    with pytest.raises(ConfigError):
        detect(np.ones((3, 3)), values=np.ones(2))


@pytest.mark.parametrize("method", ["exact", "gtg", "loo"])
def test_score_round_end_to_end(attacked, method):
    from fedmarket.scoring import combine_rounds, score_round

    model, params, A, w, X, y = attacked
    sc = score_round(model, params, A, X, y, w, method=method, seed=0)
    assert sc.method == method and sc.evaluations > 0
    assert sc.report.flagged[:4].all()
    assert (sc.rewardable[:4] == 0).all()
    amounts = reward_amounts(1000, combine_rounds([sc.rewardable, sc.rewardable]))
    assert sum(amounts) == 1000 and amounts[:4] == [0, 0, 0, 0]
    with pytest.raises(ConfigError):
        score_round(model, params, A, X, y, w, method="banzhaf")


def test_jittered_copies_are_caught_relative_to_the_rounds_spread():
    rng = np.random.default_rng(1)
    honest = rng.normal(size=(4, 200)) * 0.2 + 1.0  # independent updates around a common direction
    copy = honest[0] + rng.normal(size=200) * 0.2 * 0.15  # a copy of provider 0 with 15%-of-spread jitter
    rep = detect(np.vstack([honest, copy]))
    assert rep.sybil_pairs == [(0, 4)]
    assert not detect(honest).sybils.any()  # independent updates are never each other's copies


def test_far_outliers_do_not_make_honest_updates_look_like_copies():
    rng = np.random.default_rng(2)
    honest = rng.normal(size=(4, 200)) * 0.2 + 1.0
    flipped = np.repeat(-5.0 * honest[:1], 2, axis=0)  # two identical poisoned updates far from everyone
    rep = detect(np.vstack([honest, flipped]))
    assert rep.sybil_pairs == [(4, 5)] and not rep.sybils[:4].any()


def test_a_lone_update_is_flagged_only_by_the_absolute_tests():
    """One update is its own median: no relative flag applies to it, only all zeros (a free-rider)
    and a negative contribution value (it made the model worse)."""
    assert not detect(np.ones((1, 3)), values=np.array([0.2])).flagged.any()
    assert detect(np.zeros((1, 3))).free_riders.all()
    assert detect(np.ones((1, 3)), values=np.array([-0.2])).poisoners.all()
