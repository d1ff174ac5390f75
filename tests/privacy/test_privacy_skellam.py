"""The distributed discrete mechanism of secagg_dp: the honest minimum, the Skellam share, and its
RDP against the Gaussian bound the chain accounts with."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedmarket.errors import ConfigError
from fedmarket.privacy.dp import honest_minimum, skellam_mu, skellam_noise, skellam_rdp
from fedmarket.privacy.strategy import DistributedDPFedAvg


def test_honest_minimum_is_the_fewest_honest_in_any_acceptable_survivor_set():
    assert honest_minimum(700, 1 / 3) == 467 and honest_minimum(14, 1 / 3) == 10 and honest_minimum(3, 1 / 3) == 2
    assert honest_minimum(9, 1 / 3) == 6  # floor(3) exactly: no float slip to 7
    for m in range(1, 60):
        for f in (0.0, 0.1, 1 / 3, 0.5, 0.9):
            h = honest_minimum(m, f)
            # every larger set leaves at least as many honest survivors
            assert all(s - math.floor(f * s + 1e-12) >= h for s in range(m, m + 40))
    with pytest.raises(ConfigError):
        honest_minimum(10, 1.0)


def test_the_honest_minimum_counts_the_colluders_on_the_whole_round():
    """The attack: 20 selected providers, dropout 0.3 (a round accepts 14 survivors), 6 colluders
    (within a third of the round). The aggregator keeps every colluder in the survivor set and
    leaves 6 honest uploaders out as "dropped": 8 honest survivors. Counted on the survivors, the
    noise was sized for 10 honest shares and the sum carried 8/10 of the promised variance; counted
    on the round, it is sized for 8, and any survivor set the aggregator can pick carries it all."""
    n, m, f = 20, 14, 1 / 3
    h = honest_minimum(m, f, n)
    assert h == 8 and honest_minimum(m, f) == 10
    z, clip, d = 1.0, 1.0, 650
    promised = (z * (2 * clip * 2**20 + math.sqrt(d))) ** 2
    colluders = math.floor(f * n)
    for honest_kept in range(m - colluders, n - colluders + 1):  # every survivor set of at least m
        assert honest_kept * 2 * skellam_mu(z, clip, 20, d, h) >= promised
    assert honest_minimum(700, f, 1000) == 367
    with pytest.raises(ConfigError, match="no honest survivor"):
        honest_minimum(2, 0.5, 4)
    with pytest.raises(ConfigError):
        honest_minimum(20, f, 14)  # more survivors than providers


def test_a_spec_leaving_no_honest_survivor_is_refused():
    from fedmarket.spec import PrivacySpec

    for dropout, f in ((0.7, 0.3), (0.5, 0.5 - 1e-13)):  # a hair below 1: rounds of an even size had none
        with pytest.raises(ValueError, match="leave no honest survivor"):
            PrivacySpec(mode="secagg_dp", epsilon=8, delta=1e-5, clip_norm=1.0, dropout=dropout, max_dishonest=f)
    ok = PrivacySpec(mode="secagg_dp", epsilon=8, delta=1e-5, clip_norm=1.0, dropout=0.5, max_dishonest=0.49)
    assert all(honest_minimum(n - math.floor(ok.dropout * n), ok.max_dishonest, n) >= 1 for n in range(1, 500))


# the last two: a tiny clip_norm and the largest epsilon a spec takes, where a fixed variance margin
# fell short (found by a privacy review: the Skellam excess grows like 1 / (z Delta)^2)
@pytest.mark.parametrize("z,clip,d,h", [(3.45, 0.5, 7850, 467), (1.0, 1.0, 650, 2), (0.5, 0.1, 100_000, 10),
                                        (0.69035, 1e-6, 6, 2), (0.024889, 1e-4, 6, 2)])
def test_skellam_shares_of_the_honest_minimum_are_at_least_as_private_as_the_chain_counts(z, clip, d, h):
    mu = skellam_mu(z, clip, 20, d, h)
    l2 = 2 * clip * 2**20 + math.sqrt(d)
    for alpha in (1.0001, 1.01, 1.5, 2, 4, 8, 16, 64, 256, 1024, 10**6):
        # RDP of the honest shares' sum (Skellam of parameter h mu) for the rounded sum's sensitivity
        assert skellam_rdp(alpha, h * mu, math.sqrt(d) * l2, l2) <= alpha / (2 * z * z)


def test_skellam_noise_has_the_variance_it_promises():
    rng = np.random.default_rng(3)
    x = skellam_noise(1e9, 200_000, rng)
    assert x.dtype == np.int64 and abs(x.mean()) < 4 * math.sqrt(2e9 / 200_000)
    assert abs(x.var() / 2e9 - 1) < 0.02


def test_the_simulated_mechanism_is_the_market_s_arithmetic():
    """DistributedDPFedAvg (benchmarks) draws the providers' Skellam shares as one draw of their
    total; the noise it leaves on the mean has the variance n * 2 mu / n**2 the market's gives."""
    s = DistributedDPFedAvg(0.5, 3.0, min_survivors=14, seed=1)
    assert s.honest == 10
    U = [np.zeros(5000) for _ in range(20)]
    out = s.aggregate(U)
    mu = skellam_mu(3.0, 0.5, 20, 5000, 10)
    expected = math.sqrt(20 * 2 * mu) / 20 / 2**20
    assert abs(out.std() / expected - 1) < 0.05


def test_a_grid_too_coarse_for_the_noise_is_refused_at_the_spec():
    """A secagg_dp spec whose noise is so small against the fixed-point grid (a tiny clip_norm at the
    largest epsilon) that Skellam shares could only match the Gaussian's privacy with over twice
    its variance is refused, naming the fix, rather than paid for in noise or in privacy."""
    from fedmarket.spec import DataSchema, JobSpec, ParticipationSpec, PrivacySpec, RewardSpec, TrainingSpec

    def spec(clip):
        return JobSpec(name="x", data=DataSchema(n_features=2, n_classes=2, feature_low=[0.0] * 2, feature_high=[1.0] * 2),
                       training=TrainingSpec(rounds=1), reward=RewardSpec(escrow=10**20, provider_stake=10**18),
                       participation=ParticipationSpec(min_providers=3, max_providers=3, max_validators=1, min_validators=1),
                       privacy=PrivacySpec(mode="secagg_dp", epsilon=1000, delta=1e-5, clip_norm=clip))

    assert spec(1e-4).privacy.clip_norm == 1e-4  # coarse, but a margin of the variance covers it
    with pytest.raises(ValueError, match="too coarse for the fixed-point grid.*raise clip_norm or lower epsilon"):
        spec(1e-7)
