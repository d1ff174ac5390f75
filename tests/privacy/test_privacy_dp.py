"""DP mechanisms: clipping, calibration, and the empirical noise of central, local and distributed DP."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedmarket.errors import ConfigError
from fedmarket.privacy.dp import (
    central_gaussian,
    clip_update,
    clip_updates,
    distributed_gaussian,
    distributed_noise_std,
    gaussian_sigma,
    local_gaussian,
)


def test_clip_scales_down_only_long_updates():
    rng = np.random.default_rng(0)
    u = rng.normal(size=50) * 10
    c = clip_update(u, 1.5)
    assert np.linalg.norm(c) == pytest.approx(1.5)
    assert np.allclose(c / np.linalg.norm(c), u / np.linalg.norm(u))  # same direction
    small = u / np.linalg.norm(u) * 0.5
    assert np.array_equal(clip_update(small, 1.5), small)
    U = rng.normal(size=(20, 30)) * rng.uniform(0.1, 5, size=(20, 1))
    C = clip_updates(U, 1.0)
    assert np.all(np.linalg.norm(C, axis=1) <= 1.0 + 1e-12)
    for i in range(20):
        assert np.allclose(C[i], clip_update(U[i], 1.0))


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), "x"])
def test_clip_rejects_bad_norm(bad):
    with pytest.raises(ConfigError):
        clip_update(np.ones(3), bad)


def test_classical_calibration_formula_and_domain():
    assert gaussian_sigma(0.5, 1e-5, 2.0) == pytest.approx(math.sqrt(2 * math.log(1.25e5)) * 2.0 / 0.5)
    for eps, delta in [(1.0, 1e-5), (0.5, 0), (0.5, 1), (-1, 1e-5)]:
        with pytest.raises(ConfigError):
            gaussian_sigma(eps, delta, 1.0)


def test_mechanisms_need_an_explicit_generator():
    with pytest.raises(ConfigError):
        central_gaussian(np.ones((2, 3)), 1.0, 1.0, 42)


def test_central_noise_std_matches_calibration():
    rng = np.random.default_rng(1)
    n, d, C, z = 5, 200_000, 0.7, 1.3
    U = np.zeros((n, d))  # zero updates: the output is pure noise / n
    out = central_gaussian(U, C, z, rng)
    assert out.std() * n == pytest.approx(z * C, rel=0.01)
    assert abs(out.mean()) * n < 5 * z * C / math.sqrt(d)


def test_central_mean_of_clipped_updates_without_noise():
    rng = np.random.default_rng(2)
    U = rng.normal(size=(7, 11)) * 3
    assert np.allclose(central_gaussian(U, 1.0, 0.0, rng, denominator=10), clip_updates(U, 1.0).sum(0) / 10)


def test_local_noise_std_matches_calibration():
    rng = np.random.default_rng(3)
    C, z = 2.0, 0.8
    out = local_gaussian(np.zeros(200_000), C, z, rng)
    assert out.std() == pytest.approx(2 * z * C, rel=0.01)  # sensitivity 2C


def test_distributed_noise_sums_to_central():
    rng = np.random.default_rng(4)
    m, C, z, d = 25, 1.0, 1.1, 40_000
    assert distributed_noise_std(C, z, m) == pytest.approx(z * C / 5)
    total = sum(distributed_gaussian(np.zeros(d), C, z, m, rng) for _ in range(m))
    assert total.std() == pytest.approx(z * C, rel=0.02)
