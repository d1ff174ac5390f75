"""FedYogi (Reddi et al., 2021): FedOpt with Yogi's additive second moment."""

from __future__ import annotations

import numpy as np

from fedmarket.fl.strategies.fedopt import FedOpt


class FedYogi(FedOpt):
    """FedOpt with ``v <- v - (1 - beta_2) delta**2 sign(v - delta**2)`` (see :class:`FedOpt`)."""

    name = "fedyogi"

    def _second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        return v - (1.0 - self.beta_2) * delta_sq * np.sign(v - delta_sq)
