"""Market roles, one per module; they talk only through the chain layer and the blob store."""

from .aggregator import Aggregator
from .provider import Provider
from .requester import Requester
from .validator import Validator

__all__ = ["Aggregator", "Provider", "Requester", "Validator"]
