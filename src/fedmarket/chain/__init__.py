"""Chain layer: one interface (`Chain`), two backends (in-process titanoboa, JSON-RPC)."""

from .abi import ContractABI, Event
from .base import Account, Chain, Contract, Receipt


def connect(rpc: str | None = None) -> Chain:
    """The embedded in-process chain when `rpc` is None, else a JSON-RPC node at that URL."""
    if rpc is None:
        from .boa_backend import BoaChain

        return BoaChain()
    from .rpc_backend import RpcChain

    return RpcChain(rpc)


__all__ = ["Account", "Chain", "Contract", "ContractABI", "Event", "Receipt", "connect"]
