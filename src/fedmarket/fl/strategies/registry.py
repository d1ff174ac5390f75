"""Strategies by name, so a job spec can name its aggregation rule as a string."""

from __future__ import annotations

from typing import Any

from fedmarket.fl.registry import Registry
from fedmarket.fl.strategies.base import Strategy
from fedmarket.fl.strategies.centered_clip import CenteredClip
from fedmarket.fl.strategies.fedadam import FedAdam
from fedmarket.fl.strategies.fedavg import FedAvg
from fedmarket.fl.strategies.fedavgm import FedAvgM
from fedmarket.fl.strategies.fedyogi import FedYogi
from fedmarket.fl.strategies.fltrust import FLTrust
from fedmarket.fl.strategies.krum import Krum, MultiKrum
from fedmarket.fl.strategies.median import FedMedian
from fedmarket.fl.strategies.norm_bounding import NormBounding
from fedmarket.fl.strategies.trimmed_mean import FedTrimmedMean

_REGISTRY: Registry[Strategy] = Registry(
    "strategy",
    Strategy,
    (FedAvg, FedAvgM, FedAdam, FedYogi, FedMedian, FedTrimmedMean, MultiKrum, Krum, FLTrust, NormBounding, CenteredClip),
    nested="inner",
)
#: the catalogue, name to class (the registry's own dict)
STRATEGIES: dict[str, type[Strategy]] = _REGISTRY.classes


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    """Add a Strategy subclass to the registry under its ``name`` (usable as a class decorator).

    Raises
    ------
    ConfigError
        If ``cls`` is not a Strategy subclass, has no name, or the name is taken.
    """
    return _REGISTRY.register(cls)


def make_strategy(name: str, **params: Any) -> Strategy:
    """Build the strategy registered as ``name`` with its keyword parameters.

    Parameters
    ----------
    name : str
        A key of ``STRATEGIES`` (e.g. ``"fedavg"``, ``"trimmed_mean"``).
    **params
        Passed to the strategy's constructor; for ``norm_bounding``, ``inner``
        may itself be a name.

    Raises
    ------
    ConfigError
        On an unknown name or parameters the strategy does not take.
    """
    return _REGISTRY.make(name, **params)
