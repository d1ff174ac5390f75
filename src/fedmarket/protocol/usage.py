"""The usage sum tree a server posts to `UsageRollup.post_usage`, exactly as the contract checks it.

A leaf is a caller's cumulative usage at one server, ``(caller, queries, spent)``, hashed as
``keccak(abi.encode(caller, queries, spent))``; leaves are sorted by caller, each caller once. A
node is its hash with the sums below it, and a parent is
``keccak(abi.encode(l.h, l.queries, l.spent, r.h, r.queries, r.spent))`` with the summed totals.
Each level pairs nodes from the left and carries an odd last node up unchanged, so no node
holds anything but real leaves. The posted root is ``keccak(abi.encode(top.h, queries, spent, n))``.

An *opening* shows where a caller stands in a root: its leaf, or, for a caller absent, the
leaf just below it and the one just above (one of them at either end), which a sorted tree
makes a proof of absence.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

from eth_abi import encode

from .keccak import keccak


@dataclass(frozen=True)
class Leaf:
    caller: str
    queries: int
    spent: int

    @property
    def key(self) -> int:
        return int(self.caller, 16)

    def as_tuple(self) -> tuple:
        return (self.caller, self.queries, self.spent)


@dataclass(frozen=True)
class Node:
    h: bytes
    queries: int
    spent: int

    def as_tuple(self) -> tuple:
        return (self.h, self.queries, self.spent)


def leaf_node(leaf: Leaf) -> Node:
    return Node(keccak(encode(["address", "uint256", "uint256"], list(leaf.as_tuple()))), leaf.queries, leaf.spent)


def parent(left: Node, right: Node) -> Node:
    h = keccak(encode(["bytes32", "uint256", "uint256"] * 2, [*left.as_tuple(), *right.as_tuple()]))
    return Node(h, left.queries + right.queries, left.spent + right.spent)


def commit(top: Node, n: int) -> bytes:
    """The posted root: the top node with the number of leaves."""
    return keccak(encode(["bytes32", "uint256", "uint256", "uint256"], [top.h, top.queries, top.spent, n]))


EMPTY_LEAF = Leaf("0x" + "00" * 20, 0, 0)
CHUNK, CHUNK_LEVELS = 256, 8  # UsageRollup.CHUNK leaves per revealed chunk (2**CHUNK_LEVELS)


class UsageTree:
    """The sum tree of callers' latest usage (sorted here; a caller may appear once)."""

    def __init__(self, leaves: Sequence[Leaf], as_given: bool = False):
        """The tree of `leaves` sorted by caller; `as_given` keeps their order and repeats, to
        rebuild exactly what a server published (an auditor then checks the order)."""
        if not leaves:
            raise ValueError("a usage tree needs at least one leaf")
        self.leaves = list(leaves) if as_given else sorted(leaves, key=lambda leaf: leaf.key)
        self.keys = [leaf.key for leaf in self.leaves]
        if not as_given and len(set(self.keys)) != len(self.keys):
            raise ValueError("a caller appears twice in the usage")
        level = [leaf_node(leaf) for leaf in self.leaves]
        self.layers: list[list[Node]] = [level]
        while len(level) > 1:
            nxt = [parent(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
            if len(level) % 2:
                nxt.append(level[-1])
            level = nxt
            self.layers.append(level)
        self.index: dict[str, int] = {}
        for i, leaf in enumerate(self.leaves):
            self.index.setdefault(leaf.caller.lower(), i)

    @property
    def n(self) -> int:
        return len(self.leaves)

    @property
    def top(self) -> Node:
        return self.layers[-1][0]

    @property
    def root(self) -> bytes:
        return commit(self.top, self.n)

    def siblings(self, index: int, level: int = 0) -> list[Node]:
        """Siblings of node `index` of layer `level` (a leaf by default) up to the top."""
        if not 0 <= index < self.n:
            raise IndexError(f"leaf index {index} out of range for {self.n} leaves")
        out = []
        for layer in self.layers[level:-1]:
            if index != len(layer) - 1 or len(layer) % 2 == 0:
                out.append(layer[index ^ 1])
            index //= 2
        return out

    def chunk(self, k: int) -> tuple[list[tuple], list[tuple]]:
        """`UsageRollup.reveal_leaves`'s leaves of chunk `k` and its subtree's siblings to the top."""
        leaves = [x.as_tuple() for x in self.leaves[k * CHUNK:(k + 1) * CHUNK]]
        if not leaves:
            raise IndexError(f"chunk {k} out of range for {self.n} leaves")
        if len(self.layers) <= CHUNK_LEVELS:
            return leaves, []
        return leaves, [s.as_tuple() for s in self.siblings(k, CHUNK_LEVELS)]

    @property
    def chunks(self) -> int:
        return -(-self.n // CHUNK)

    def position(self, index: int) -> tuple:
        """`UsageRollup.Position` of leaf `index`: (index, leaf, siblings)."""
        return (index, self.leaves[index].as_tuple(), [s.as_tuple() for s in self.siblings(index)])

    def opening(self, caller: str) -> tuple:
        """`UsageRollup.Opening` of `caller`: its leaf, or the neighbours that show it absent."""
        none = (0, EMPTY_LEAF.as_tuple(), [])
        i = self.index.get(caller.lower())
        if i is not None:
            return (self.n, self.position(i), none)
        j = bisect.bisect_left(self.keys, int(caller, 16)) - 1  # the last leaf below the caller
        if j < 0:
            return (self.n, self.position(0), none)
        if j == self.n - 1:
            return (self.n, self.position(j), none)
        return (self.n, self.position(j), self.position(j + 1))

    def usage(self, caller: str) -> Leaf | None:
        i = self.index.get(caller.lower())
        return None if i is None else self.leaves[i]

    def disorder(self) -> int | None:
        """The first index whose next leaf is not above it (a tree as given), or None if sorted."""
        return next((i for i in range(self.n - 1) if self.keys[i] >= self.keys[i + 1]), None)


EMPTY_OPENING = (0, (0, EMPTY_LEAF.as_tuple(), []), (0, EMPTY_LEAF.as_tuple(), []))


def opening(tree: UsageTree | None, caller: str) -> tuple:
    """The opening of `caller` in `tree`, or an empty one where there is no root (the contract ignores it)."""
    return EMPTY_OPENING if tree is None else tree.opening(caller)


def verify(root: bytes, n: int, position: tuple) -> bool:
    """`UsageRollup._at` in Python: whether the position is leaf `index` of the `n`-leaf root."""
    index, (caller, queries, spent), siblings = position
    if not 0 <= index < n:
        return False
    node = leaf_node(Leaf(caller, queries, spent))
    width, used = n, 0
    while width > 1:
        if index != width - 1 or width % 2 == 0:
            if used >= len(siblings):
                return False
            s = Node(*siblings[used])
            used += 1
            node = parent(node, s) if index % 2 == 0 else parent(s, node)
        index //= 2
        width = (width + 1) // 2
    return used == len(siblings) and commit(node, n) == root
