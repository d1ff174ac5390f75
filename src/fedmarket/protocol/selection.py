"""Provider selection per round from a public seed: anyone re-derives who was picked.

The seed of round r is a block hash the market fixed on chain before the round could start
(`TrainingStarted.seed` for round 0, `RoundCommitted.next_seed` of round r - 1 after that), so
neither the aggregator nor a provider chooses it once providers have joined. Each joined
provider gets the ticket ``keccak256(seed || job || round || address)``; the round takes the
``k`` lowest tickets (a uniform sample without replacement, the same on every machine).
"""

from __future__ import annotations

import eth_abi
from eth_utils import keccak

from .encoding import address_key


def ticket(seed: bytes, job_id: int, round_: int, provider: str) -> int:
    return int.from_bytes(
        keccak(eth_abi.encode(["bytes32", "uint256", "uint256", "address"], [seed, job_id, round_, provider])), "big"
    )


def select(seed: bytes, job_id: int, round_: int, members: list[str], k: int) -> list[str]:
    """The ``k`` providers of ``members`` picked for the round (all of them when ``k`` is 0 or
    at least their number), in address order."""
    members = sorted(set(members), key=address_key)
    if k <= 0 or k >= len(members):
        return members
    picked = sorted(members, key=lambda p: (ticket(seed, job_id, round_, p), address_key(p)))[:k]
    return sorted(picked, key=address_key)
