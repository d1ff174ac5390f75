"""Leave-one-out contribution: what the grand coalition loses without each player."""

from __future__ import annotations

import numpy as np

from fedmarket.scoring.utility import Utility


def leave_one_out(utility: Utility) -> np.ndarray:
    """Leave-one-out values ``v(N) - v(N minus i)`` (``n + 1`` coalitions, one batch).

    Parameters
    ----------
    utility : Utility
        The game.

    Returns
    -------
    numpy.ndarray
        float64 ``(n,)``; equals the Shapley value on additive games.
    """
    n = utility.n
    masks = np.ones((n + 1, n), dtype=bool)
    masks[np.arange(n), np.arange(n)] = False
    v = utility.values(masks)
    return v[n] - v[:n]
