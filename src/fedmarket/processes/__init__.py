"""Every market role as a long-running OS process, driven by chain events, the blob store and
the mailbox, and resumable from chain state (plus a small per-role state directory) after a
restart. One module per role loop; `fedmarket <role> run` (cli/roles.py) starts them."""

from .aggregator import AggregatorProcess
from .base import Fatal, JournaledRpcChain, RoleProcess, StateDir, TxJournal
from .challenger import ChallengerProcess
from .provider import ProviderProcess
from .requester import RequesterProcess
from .validator import ValidatorProcess

__all__ = ["AggregatorProcess", "ChallengerProcess", "Fatal", "JournaledRpcChain", "ProviderProcess", "RequesterProcess", "RoleProcess",
           "StateDir", "TxJournal", "ValidatorProcess"]
