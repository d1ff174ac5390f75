"""RDP accountant: published reference values, budget refusal, sampling modes."""

from __future__ import annotations

import math

import pytest

from fedmarket.errors import ConfigError, PrivacyBudgetExceeded
from fedmarket.privacy.accountant import ORDERS, PrivacyAccountant, epsilon_for, noise_multiplier_for


@pytest.mark.parametrize(
    "z, epochs, published",
    [
        # TF Privacy, tutorials/README.md (MNIST DP-SGD): batch 256 of 60,000, delta 1e-5
        (1.1, 60, 3.01),
        (0.7, 45, 7.10),
    ],
)
def test_matches_published_tf_privacy_values(z, epochs, published):
    q = 256 / 60_000
    steps = math.ceil(epochs * 60_000 / 256)
    eps = epsilon_for(z, steps, 1e-5, sampling="poisson", rate=q, conversion="classic")
    assert eps == pytest.approx(published, abs=0.01)
    tight = epsilon_for(z, steps, 1e-5, sampling="poisson", rate=q)
    assert tight <= eps


def test_unsampled_gaussian_matches_closed_form_rdp():
    z, T, delta = 2.0, 50, 1e-5
    expected = min(T * a / (2 * z * z) + math.log(1 / delta) / (a - 1) for a in ORDERS)
    assert epsilon_for(z, T, delta, conversion="classic") == pytest.approx(expected, rel=1e-9)


def test_sampling_amplifies_and_more_noise_spends_less():
    base = epsilon_for(1.0, 100, 1e-5)
    poisson = epsilon_for(1.0, 100, 1e-5, sampling="poisson", rate=0.1)
    fixed = epsilon_for(1.0, 100, 1e-5, sampling="fixed", population=1000, sample_size=100)
    assert poisson < base and fixed < base
    assert epsilon_for(2.0, 100, 1e-5, sampling="poisson", rate=0.1) < poisson


def test_noise_multiplier_for_inverts_epsilon_for():
    z = noise_multiplier_for(4.0, 1e-5, 30, sampling="poisson", rate=0.2)
    assert epsilon_for(z, 30, 1e-5, sampling="poisson", rate=0.2) <= 4.0
    assert epsilon_for(z * 0.99, 30, 1e-5, sampling="poisson", rate=0.2) > 4.0


def test_accountant_refuses_the_round_that_exceeds_the_budget():
    acc = PrivacyAccountant(epsilon=2.0, delta=1e-5, sampling="poisson", population=1000)
    spent = []
    with pytest.raises(PrivacyBudgetExceeded, match="budget 2"):
        for _ in range(10_000):
            spent.append(acc.spend(1.0, 0.05))
    assert len(acc.rounds) == len(spent) > 1
    assert spent == sorted(spent) and spent[-1] <= 2.0
    assert acc.spent() == pytest.approx(spent[-1])
    assert acc.epsilon_after(1.0, 0.05) > 2.0  # the refused round was not accounted
    assert acc.spent() == pytest.approx(spent[-1])


def test_fixed_size_accountant_and_validation():
    acc = PrivacyAccountant(epsilon=8.0, delta=1e-5, sampling="fixed", population=1000)
    e1 = acc.spend(1.5, 100)
    assert 0 < e1 == pytest.approx(epsilon_for(1.5, 1, 1e-5, sampling="fixed", population=1000, sample_size=100))
    with pytest.raises(ConfigError):
        acc.spend(1.5, 5000)
    with pytest.raises(ConfigError):
        PrivacyAccountant(epsilon=0, delta=1e-5)
    with pytest.raises(ConfigError):
        PrivacyAccountant(epsilon=1, delta=1e-5, sampling="poisson")
    with pytest.raises(ConfigError):
        PrivacyAccountant(epsilon=1, delta=1e-5, sampling="bernoulli", population=3)
