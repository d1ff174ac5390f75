"""DP-FedAvg strategies for the simulation engine: central (noise at the aggregator), local (noise at each
provider), and distributed discrete noise under secure aggregation (what ``secagg_dp`` market jobs run)."""

from __future__ import annotations

import numpy as np

from fedmarket.errors import ConfigError
from fedmarket.fl.quantize import SCALE_BITS, dequantize, quantize
from fedmarket.fl.strategies.base import Strategy, stack_updates
from fedmarket.privacy.dp import central_gaussian, clip_updates, honest_minimum, skellam_mu, skellam_noise


class DPFedAvg(Strategy):
    """Central DP-FedAvg (McMahan et al. 2018): clip each update to ``C``, sum, add ``N(0, (z C)^2)``, divide by the round size.

    Weights are ignored (a data-size weight would raise the sensitivity); every
    provider counts once. ``mode="local"`` instead adds ``N(0, (2 z C)^2)`` to each
    clipped update, as providers would before sending it, and averages.

    Parameters
    ----------
    clip_norm : float
        ``C > 0``.
    noise_multiplier : float
        ``z >= 0``.
    seed : int
        Seed of the noise generator (reset by :meth:`reset`).
    mode : {"central", "local"}
    """

    name = "dp_fedavg"
    weighted = False

    def __init__(self, clip_norm: float, noise_multiplier: float, seed: int = 0, mode: str = "central"):
        if mode not in ("central", "local"):
            raise ConfigError(f"mode must be 'central' or 'local', got {mode!r}")
        if not clip_norm > 0 or not noise_multiplier >= 0:
            raise ConfigError(f"need clip_norm > 0 and noise_multiplier >= 0, got {clip_norm!r}, {noise_multiplier!r}")
        self.clip_norm, self.noise_multiplier, self.seed, self.mode = (
            float(clip_norm),
            float(noise_multiplier),
            int(seed),
            mode,
        )
        self.reset()

    def reset(self) -> None:
        self._rng = np.random.default_rng(np.random.SeedSequence([self.seed, 0xD1F]))

    def aggregate(self, updates, weights=None, *, server_update=None) -> np.ndarray:
        U = stack_updates(updates)
        if self.mode == "central":
            return central_gaussian(U, self.clip_norm, self.noise_multiplier, self._rng)
        C = clip_updates(U, self.clip_norm)
        C += self._rng.normal(0.0, 2.0 * self.noise_multiplier * self.clip_norm, size=C.shape)
        return C.mean(axis=0)


class DistributedDPFedAvg(Strategy):
    """What a ``secagg_dp`` market round computes, for the simulation engine.

    Each update is clipped to ``C`` and rounded to the fixed-point grid (``fl.quantize``); each
    provider adds a Skellam share of parameter ``mu = skellam_mu(z, C, 20, d, h)`` with ``h =
    honest_minimum(min_survivors, max_dishonest, selected)`` (exactly what `roles.Provider` adds,
    ``selected`` the round's selected providers, by default ``min_survivors``); the round
    takes the exact integer sum, divides it (floor) by the number of updates, as the secure-sum rule
    does, and reads it back as floats. The providers' Skellam shares sum to one Skellam draw of
    parameter ``n mu`` (the family is closed under sums), which is how it is drawn here.
    """

    name = "secagg_dp"
    weighted = False

    def __init__(self, clip_norm: float, noise_multiplier: float, min_survivors: int, max_dishonest: float = 1 / 3,
                 seed: int = 0, selected: int | None = None):
        if not clip_norm > 0 or not noise_multiplier > 0:
            raise ConfigError(f"need clip_norm > 0 and noise_multiplier > 0, got {clip_norm!r}, {noise_multiplier!r}")
        self.clip_norm, self.noise_multiplier, self.seed = float(clip_norm), float(noise_multiplier), int(seed)
        self.honest = honest_minimum(min_survivors, max_dishonest, selected)
        self.reset()

    def reset(self) -> None:
        self._rng = np.random.default_rng(np.random.SeedSequence([self.seed, 0x5E11]))

    def aggregate(self, updates, weights=None, *, server_update=None) -> np.ndarray:
        U = stack_updates(updates)
        n, d = U.shape
        Q = quantize(clip_updates(U, self.clip_norm))
        mu = skellam_mu(self.noise_multiplier, self.clip_norm, SCALE_BITS, d, self.honest)
        total = Q.sum(axis=0) + skellam_noise(n * mu, d, self._rng)
        return dequantize(total // np.int64(n))
