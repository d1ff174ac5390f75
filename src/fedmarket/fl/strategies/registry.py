"""Strategies by name, so a job spec can name its aggregation rule as a string."""

from __future__ import annotations

from typing import Any

from fedmarket.errors import ConfigError
from fedmarket.fl.strategies.base import Strategy
from fedmarket.fl.strategies.fedadam import FedAdam
from fedmarket.fl.strategies.fedavg import FedAvg
from fedmarket.fl.strategies.fedavgm import FedAvgM
from fedmarket.fl.strategies.fedyogi import FedYogi
from fedmarket.fl.strategies.fltrust import FLTrust
from fedmarket.fl.strategies.krum import Krum, MultiKrum
from fedmarket.fl.strategies.median import FedMedian
from fedmarket.fl.strategies.norm_bounding import NormBounding
from fedmarket.fl.strategies.trimmed_mean import FedTrimmedMean

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (FedAvg, FedAvgM, FedAdam, FedYogi, FedMedian, FedTrimmedMean, MultiKrum, Krum, FLTrust, NormBounding)
}


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    """Add a Strategy subclass to the registry under its ``name`` (usable as a class decorator).

    Raises
    ------
    ConfigError
        If ``cls`` is not a Strategy subclass, has no name, or the name is taken.
    """
    if not (isinstance(cls, type) and issubclass(cls, Strategy)) or not cls.name:
        raise ConfigError(f"can only register named Strategy subclasses, got {cls!r}")
    if cls.name in STRATEGIES and STRATEGIES[cls.name] is not cls:
        raise ConfigError(f"a strategy named '{cls.name}' is already registered")
    STRATEGIES[cls.name] = cls
    return cls


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
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy '{name}'; choose one of: {', '.join(sorted(STRATEGIES))}")
    if isinstance(params.get("inner"), str):
        params["inner"] = make_strategy(params["inner"])
    try:
        return STRATEGIES[name](**params)
    except TypeError as exc:
        raise ConfigError(f"bad parameters for strategy '{name}': {exc}") from None
