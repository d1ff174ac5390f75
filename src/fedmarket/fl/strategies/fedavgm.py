"""FedAvgM (Hsu et al., 2019): FedAvg with server momentum."""

from __future__ import annotations

import numpy as np

from fedmarket.errors import ConfigError
from fedmarket.fl.strategies.fedavg import FedAvg


class FedAvgM(FedAvg):
    """FedAvg whose averaged update drives a heavy-ball server optimiser.

    ``v <- momentum * v + mean_update``; ``params <- params + server_lr * v``.
    With ``momentum = 0`` and ``server_lr = 1`` it is FedAvg.

    Parameters
    ----------
    server_lr : float, optional
        Server step size, ``> 0`` (default 1).
    momentum : float, optional
        Momentum coefficient in ``[0, 1)`` (default 0.9).
    """

    name = "fedavgm"

    def __init__(self, server_lr: float = 1.0, momentum: float = 0.9) -> None:
        if not np.isfinite(server_lr) or server_lr <= 0:
            raise ConfigError(f"server_lr must be a positive number, got {server_lr!r}")
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(f"momentum must lie in [0, 1), got {momentum!r}")
        self.server_lr = float(server_lr)
        self.momentum = float(momentum)
        self._velocity: np.ndarray | None = None

    def reset(self) -> None:
        self._velocity = None

    def step(self, params, updates, weights=None, *, server_update=None) -> np.ndarray:
        params = np.asarray(params, dtype=np.float64)
        delta = self.aggregate(updates, weights)
        if delta.shape != params.shape:
            raise ConfigError(f"updates have {delta.size} entries but the model has {params.size}")
        if self._velocity is None or self._velocity.shape != delta.shape:
            self._velocity = np.zeros_like(delta)
        self._velocity = self.momentum * self._velocity + delta
        return params + self.server_lr * self._velocity
