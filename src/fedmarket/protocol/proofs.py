"""Trees a round and a reward root commit to, and the arguments of the arbiters' moves that
open them (byte for byte what `contracts/RoundArbiter.vy` and `RewardArbiter.vy` check)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from eth_utils import is_address, to_checksum_address

from .encoding import address_key, reward_leaf, update_leaf, vector_tree
from .merkle import MerkleTree


@dataclass(frozen=True)
class RoundUpdate:
    """One aggregated update as the round's updates tree lists it."""

    provider: str
    q: np.ndarray
    weight: int
    chunk_size: int
    signature: bytes = b""

    @functools.cached_property
    def root(self) -> bytes:
        """The update's chunk root (computed once: building the round's tree and checking a blob
        both need it, and hashing a large model's chunks takes seconds)."""
        return vector_tree(self.q, self.chunk_size).root


def sort_updates(updates: list) -> list:
    """Updates in the order the contracts expect: strictly ascending provider address."""
    return sorted(updates, key=lambda u: address_key(u.provider))


def updates_tree(updates: Sequence) -> MerkleTree | None:
    """The round's positional updates tree over objects with `provider`, `root` and `weight`,
    sorted by provider; None for an empty round (its updates root is zero)."""
    if not updates:
        return None
    return MerkleTree([update_leaf(u.provider, u.root, u.weight) for u in updates])


def updates_root(updates: Sequence) -> bytes:
    tree = updates_tree(updates)
    return b"\x00" * 32 if tree is None else tree.root


def reward_tree(leaves: list[dict]) -> MerkleTree:
    """The positional reward tree of a rewards document's leaves, in index order."""
    return MerkleTree([reward_leaf_of(leaf) for leaf in sorted(leaves, key=lambda l: int(l["index"]))])


def positional_leaves(leaves: list[dict]) -> list[dict]:
    """A posted rewards document's leaves as the tree holds them: in index order, each ``index``
    its position in the tree (what a claim and a value game name; the document's own numbers may
    skip or repeat, and the root is the same), each ``account`` in checksum form (the chain takes
    any case; a reader comparing strings would miss a leaf). ValueError/KeyError/TypeError on a
    malformed leaf."""
    ordered = sorted(leaves, key=lambda l: int(l["index"]))
    out = []
    for i, leaf in enumerate(ordered):
        if not isinstance(leaf, dict) or not is_address(leaf["account"]):
            raise ValueError(f"reward leaf {i} names no account")
        out.append({**leaf, "index": i, "account": to_checksum_address(leaf["account"])})
    return out


def reward_leaf_of(leaf: dict) -> bytes:
    return reward_leaf(leaf["account"], int(leaf["role"]), int(leaf["amount"]), int(leaf["reputation_delta"]),
                       int(leaf["value"]), int(leaf["activity"]))


def reward_struct(leaf: dict) -> tuple:
    """A rewards document's leaf as the contracts' RewardLeaf struct."""
    return (leaf["account"], int(leaf["role"]), int(leaf["amount"]), int(leaf["reputation_delta"]),
            int(leaf["value"]), int(leaf["activity"]))


def chunk_values(q: np.ndarray, index: int, size: int) -> list[int]:
    return [int(v) for v in np.asarray(q, dtype=np.int64).ravel()[index * size : (index + 1) * size]]


def chunk_opening(q: np.ndarray, index: int, size: int, tree: MerkleTree | None = None) -> tuple:
    """A ChunkOpening: chunk ``index`` of a committed vector and its proof."""
    tree = tree or vector_tree(q, size)
    return (chunk_values(q, index, size), tree.proof(index))


EMPTY_CHUNK = ([], [])


def update_opening(updates: Sequence, index: int, tree: MerkleTree) -> tuple:
    """An UpdateOpening: leaf ``index`` (with its provider's receipt signature) and the leaf before it."""
    u = updates[index]
    if index > 0:
        p = updates[index - 1]
        before = (p.provider, p.root, p.weight, tree.proof(index - 1))
    else:
        before = ("0x" + "00" * 20, b"\x00" * 32, 0, [])
    return (index, u.provider, u.root, u.weight, tree.proof(index), bytes(u.signature), *before)


def presence(updates: Sequence, provider: str, tree: MerkleTree | None) -> tuple:
    """A Presence: ``provider``'s leaf in a round, or the two leaves around the gap where it would sit."""
    zero_addr, zero = "0x" + "00" * 20, b"\x00" * 32
    key = address_key(provider)
    for i, u in enumerate(updates):
        if address_key(u.provider) == key:
            return (True, i, u.root, u.weight, tree.proof(i), zero_addr, zero, 0, [], zero_addr, zero, 0, [])
    gap = sum(1 for u in updates if address_key(u.provider) < key)
    below = (zero_addr, zero, 0, [])
    above = (zero_addr, zero, 0, [])
    if updates and gap > 0:
        b = updates[gap - 1]
        below = (b.provider, b.root, b.weight, tree.proof(gap - 1))
    if updates and gap < len(updates):
        a = updates[gap]
        above = (a.provider, a.root, a.weight, tree.proof(gap))
    return (False, gap, zero, 0, [], *below, *above)
