"""Market roles, one per module; they talk only through the chain layer and the blob store.

The role classes load on first use (PEP 562), so a process that runs one role, such as a
provider's Flower ClientApp started afresh for every round, imports only that role's module."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .aggregator import Aggregator
    from .provider import Provider
    from .requester import Requester
    from .validator import Validator

_HOMES = {"Aggregator": "aggregator", "Provider": "provider", "Requester": "requester", "Validator": "validator"}

__all__ = ["Aggregator", "Provider", "Requester", "Validator"]


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
