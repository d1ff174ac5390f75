"""Positional Merkle trees and the round accumulator, as `contracts/modules/leaves.vy` checks them.

Leaf ``i`` of a tree of ``n`` leaves sits at position ``i`` of a tree of depth ``ceil(log2(n))``
padded with zero leaves; a parent is ``keccak256(left ++ right)``. A position therefore holds
exactly one leaf and a proof names the position it opens.
"""

from __future__ import annotations

from collections.abc import Sequence

from .keccak import keccak

ZERO = b"\x00" * 32


def depth(n: int) -> int:
    """Depth of a positional tree of ``n`` leaves (0 for one leaf)."""
    if n < 1:
        raise ValueError("a Merkle tree needs at least one leaf")
    return (n - 1).bit_length()


class MerkleTree:
    """A positional tree over already-hashed 32-byte leaves, zero-padded to a power of two."""

    def __init__(self, leaves: Sequence[bytes]):
        if not leaves:
            raise ValueError("a Merkle tree needs at least one leaf")
        for leaf in leaves:
            if len(leaf) != 32:
                raise ValueError("Merkle leaves must be 32-byte hashes")
        self.n = len(leaves)
        level = list(leaves) + [ZERO] * ((1 << depth(self.n)) - self.n)
        self.layers: list[list[bytes]] = [level]
        while len(level) > 1:
            level = [keccak(level[i] + level[i + 1]) for i in range(0, len(level), 2)]
            self.layers.append(level)

    @property
    def root(self) -> bytes:
        return self.layers[-1][0]

    def __len__(self) -> int:
        return self.n

    def proof(self, index: int) -> list[bytes]:
        """Sibling hashes from leaf ``index`` up to the root."""
        if not 0 <= index < self.n:
            raise IndexError(f"leaf index {index} out of range for {self.n} leaves")
        out = []
        for layer in self.layers[:-1]:
            out.append(layer[index ^ 1])
            index //= 2
        return out


def root_from(leaf: bytes, index: int, proof: Sequence[bytes]) -> bytes:
    """The root reached from ``leaf`` at position ``index`` through ``proof``."""
    node = leaf
    for i, sibling in enumerate(proof):
        node = keccak(node + sibling) if (index >> i) & 1 == 0 else keccak(sibling + node)
    return node


def verify(leaf: bytes, index: int, n: int, proof: Sequence[bytes], root: bytes) -> bool:
    """Whether ``leaf`` is leaf ``index`` of the ``n``-leaf positional tree ``root``."""
    return 0 <= index < n and len(proof) == depth(n) and root_from(leaf, index, proof) == root


class RoundAccumulator:
    """A job's round commitments as the market's incremental Merkle tree holds them (fixed depth,
    empty leaves zero): the root after any number of rounds, and each round's proof."""

    def __init__(self, leaves: Sequence[bytes] = (), tree_depth: int = 14):
        self.depth = tree_depth
        self.leaves: list[bytes] = []
        self._zeros = [ZERO]
        for _ in range(tree_depth):
            self._zeros.append(keccak(self._zeros[-1] + self._zeros[-1]))
        for leaf in leaves:
            self.append(leaf)

    def append(self, leaf: bytes) -> None:
        if len(self.leaves) >= 1 << self.depth:
            raise ValueError("round accumulator is full")
        self.leaves.append(leaf)

    def _level(self, nodes: list[bytes], h: int) -> list[bytes]:
        if len(nodes) % 2:
            nodes = nodes + [self._zeros[h]]
        return [keccak(nodes[i] + nodes[i + 1]) for i in range(0, len(nodes), 2)]

    @property
    def root(self) -> bytes:
        nodes = list(self.leaves) or [ZERO]
        for h in range(self.depth):
            nodes = self._level(nodes, h)
        return nodes[0]

    def proof(self, index: int) -> list[bytes]:
        """The ``depth`` siblings of leaf ``index`` in the current tree."""
        if not 0 <= index < len(self.leaves):
            raise IndexError(f"round {index} is not in the accumulator ({len(self.leaves)} rounds)")
        nodes = list(self.leaves)
        out = []
        for h in range(self.depth):
            sibling = index ^ 1
            out.append(nodes[sibling] if sibling < len(nodes) else self._zeros[h])
            nodes = self._level(nodes, h)
            index //= 2
        return out
