"""DP-FedAvg strategies for the simulation engine: central (noise at the aggregator) and local (noise at each provider)."""

from __future__ import annotations

import numpy as np

from fedmarket.errors import ConfigError
from fedmarket.fl.strategies.base import Strategy, stack_updates
from fedmarket.privacy.dp import central_gaussian, clip_updates


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
