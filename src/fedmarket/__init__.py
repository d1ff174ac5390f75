"""fedmarket: a decentralized marketplace for federated learning on EVM chains."""

__version__ = "0.1.0"
