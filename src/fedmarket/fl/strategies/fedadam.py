"""FedAdam (Reddi et al., 2021): FedOpt with Adam's second moment."""

from __future__ import annotations

import numpy as np

from fedmarket.fl.strategies.fedopt import FedOpt


class FedAdam(FedOpt):
    """FedOpt with ``v <- beta_2 v + (1 - beta_2) delta**2`` (see :class:`FedOpt` for the parameters)."""

    name = "fedadam"

    def _second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        return self.beta_2 * v + (1.0 - self.beta_2) * delta_sq
