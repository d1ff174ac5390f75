"""FedAvg (McMahan et al., 2017): the weighted mean of the updates."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedmarket.fl.aggregate import fedavg_int
from fedmarket.fl.strategies.base import Strategy, check_weights, stack_updates


def weighted_mean(U: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Return ``sum_i w_i U_i / sum_i w_i`` for a matrix ``U`` ``(n, d)`` and weights ``w`` ``(n,)``.

    One matrix-vector product (BLAS gemv): it streams ``U`` once, at memory
    bandwidth. Zero-weight rows are excluded first, so a non-finite update
    with weight 0 cannot leak into the result.
    """
    keep = w > 0
    if not keep.all():
        U, w = U[keep], w[keep]
    return (w / w.sum()) @ U


class FedAvg(Strategy):
    """Federated averaging: the new model is ``params + sum_i w_i u_i / sum_i w_i``.

    ``aggregate_int`` is the exact integer rule the contracts check,
    :func:`fedmarket.fl.aggregate.fedavg_int`.
    """

    name = "fedavg"

    def aggregate(self, updates, weights=None, *, server_update=None) -> np.ndarray:
        U = stack_updates(updates)
        return weighted_mean(U, check_weights(weights, U.shape[0]))

    def aggregate_int(self, updates: Sequence[np.ndarray], weights: Sequence[int]) -> np.ndarray:
        return fedavg_int(updates, weights)
