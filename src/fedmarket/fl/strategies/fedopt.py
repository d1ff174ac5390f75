"""FedOpt (Reddi et al., 2021): the averaged update as a pseudo-gradient for an adaptive server optimiser."""

from __future__ import annotations

from abc import abstractmethod

import numpy as np

from fedmarket.errors import ConfigError
from fedmarket.fl.strategies.fedavg import FedAvg


class FedOpt(FedAvg):
    """Base of the adaptive server optimisers (FedAdam, FedYogi).

    With ``delta`` the weighted mean update: ``m <- beta_1 m + (1 - beta_1) delta``;
    ``v <- second_moment(v, delta**2)``; ``params <- params + eta * m / (sqrt(v) + tau)``.
    ``m`` starts at 0 and ``v`` at ``tau**2`` (Reddi et al., Algorithm 2).

    Parameters
    ----------
    eta : float, optional
        Server learning rate, ``> 0``.
    beta_1 : float, optional
        First-moment decay in ``[0, 1)``.
    beta_2 : float, optional
        Second-moment decay in ``[0, 1)``.
    tau : float, optional
        Adaptivity (numerical floor of the denominator), ``> 0``.
    """

    def __init__(self, eta: float = 1e-2, beta_1: float = 0.9, beta_2: float = 0.99, tau: float = 1e-3) -> None:
        if not np.isfinite(eta) or eta <= 0:
            raise ConfigError(f"eta must be a positive number, got {eta!r}")
        for label, beta in (("beta_1", beta_1), ("beta_2", beta_2)):
            if not 0.0 <= beta < 1.0:
                raise ConfigError(f"{label} must lie in [0, 1), got {beta!r}")
        if not np.isfinite(tau) or tau <= 0:
            raise ConfigError(f"tau must be a positive number, got {tau!r}")
        self.eta = float(eta)
        self.beta_1 = float(beta_1)
        self.beta_2 = float(beta_2)
        self.tau = float(tau)
        self._m: np.ndarray | None = None
        self._v: np.ndarray | None = None

    @abstractmethod
    def _second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        """Return the next second-moment estimate."""

    def reset(self) -> None:
        self._m = self._v = None

    def step(self, params, updates, weights=None, *, server_update=None) -> np.ndarray:
        params = np.asarray(params, dtype=np.float64)
        delta = self.aggregate(updates, weights)
        if delta.shape != params.shape:
            raise ConfigError(f"updates have {delta.size} entries but the model has {params.size}")
        if self._m is None or self._m.shape != delta.shape:
            self._m = np.zeros_like(delta)
            self._v = np.full_like(delta, self.tau**2)
        self._m = self.beta_1 * self._m + (1.0 - self.beta_1) * delta
        self._v = self._second_moment(self._v, delta * delta)
        return params + self.eta * self._m / (np.sqrt(self._v) + self.tau)
