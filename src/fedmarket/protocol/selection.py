"""Provider selection per round from a public seed: anyone re-derives who was picked, and the
round arbiter checks one provider in O(1).

The seed of round r is a block hash the market fixed on chain before the round could start
(`TrainingStarted.seed` for round 0, `RoundCommitted.next_seed` of round r - 1 after that), so
neither the aggregator nor a provider chooses it once providers have joined. Each joined
provider gets the ticket ``keccak256(seed, job, round, address)``; with ``k`` of ``n``
providers wanted per round, a provider is selected when the low 64 bits of its ticket, as a
fraction of 2**64, fall below ``k / n``: each is picked with probability ``k / n``,
independently, so a round takes ``k`` providers on average.
"""

from __future__ import annotations

import eth_abi

from .encoding import address_key
from .keccak import keccak

_MASK64 = 2**64 - 1


def ticket(seed: bytes, job_id: int, round_: int, provider: str) -> int:
    return int.from_bytes(
        keccak(eth_abi.encode(["bytes32", "uint256", "uint256", "address"], [seed, job_id, round_, provider])), "big"
    )


def is_selected(seed: bytes, job_id: int, round_: int, provider: str, k: int, n: int) -> bool:
    """Whether ``provider`` is picked in the round (`RoundArbiter._check_update`); always when k is 0."""
    if k <= 0:
        return True
    return (ticket(seed, job_id, round_, provider) & _MASK64) * n < k << 64


def select(seed: bytes, job_id: int, round_: int, members: list[str], k: int) -> list[str]:
    """The providers of ``members`` picked for the round (every one when ``k`` is 0), in address order."""
    members = sorted(set(members), key=address_key)
    return [p for p in members if is_selected(seed, job_id, round_, p, k, len(members))]
