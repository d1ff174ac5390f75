"""`protocol.merkle`: positional Merkle trees (leaf i at position i of a zero-padded tree of depth
ceil(log2 n)), their proofs, and the round accumulator (a fixed-depth tree whose root the market
keeps incrementally). The contracts' side is compared in tests/contracts (test_rules_parity,
test_accumulator); here the Python structures are checked against their definition."""

from __future__ import annotations

import pytest
from eth_utils import keccak
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmarket.protocol.encoding import double_hash
from fedmarket.protocol.merkle import ZERO, MerkleTree, RoundAccumulator, depth, root_from, verify

LEAF = st.binary(min_size=32, max_size=32)


def leaves_of(n: int) -> list[bytes]:
    return [keccak(b"leaf %d" % i) for i in range(n)]


def naive_root(leaves: list[bytes], levels: int) -> bytes:
    """The root of `leaves` padded with zero leaves to 2**levels, level by level."""
    nodes = list(leaves) + [ZERO] * ((1 << levels) - len(leaves))
    while len(nodes) > 1:
        nodes = [keccak(nodes[i] + nodes[i + 1]) for i in range(0, len(nodes), 2)]
    return nodes[0]


class Frontier:
    """The market's incremental accumulator (`JobMarket._accumulate` / `_rounds_root`), in Python."""

    def __init__(self, levels: int = 14):
        self.levels = levels
        self.frontier = [b"\x01" * 32] * levels  # slots pre-allocated with a placeholder, never read as nodes
        self.count = 0

    def append(self, leaf: bytes) -> None:
        node, size = leaf, self.count + 1
        for h in range(self.levels):
            if size & 1:
                self.frontier[h] = node
                break
            node = keccak(self.frontier[h] + node)
            size >>= 1
        self.count += 1

    @property
    def root(self) -> bytes:
        node, zero, size = ZERO, ZERO, self.count
        for h in range(self.levels):
            node = keccak(self.frontier[h] + node) if size & 1 else keccak(node + zero)
            zero = keccak(zero + zero)
            size >>= 1
        return node


# ---------------------------------------------------------------- depth and shapes


@pytest.mark.parametrize("n, d", [(1, 0), (2, 1), (3, 2), (4, 2), (5, 3), (8, 3), (9, 4), (2**20, 20), (2**20 + 1, 21)])
def test_depth(n, d):
    assert depth(n) == d


def test_depth_needs_a_leaf():
    with pytest.raises(ValueError, match="at least one leaf"):
        depth(0)


def test_a_single_leaf_is_its_own_root():
    leaf = keccak(b"x")
    tree = MerkleTree([leaf])
    assert (tree.root, tree.proof(0), len(tree)) == (leaf, [], 1)
    assert verify(leaf, 0, 1, [], leaf)


def test_small_trees_by_hand():
    a, b, c = leaves_of(3)
    assert MerkleTree([a, b]).root == keccak(a + b)
    assert MerkleTree([a, b, c]).root == keccak(keccak(a + b) + keccak(c + ZERO))
    assert MerkleTree([a, b, c]).proof(2) == [ZERO, keccak(a + b)]
    assert MerkleTree([a, b, c]).proof(0) == [b, keccak(c + ZERO)]


def test_bad_trees_and_proofs_are_refused():
    with pytest.raises(ValueError, match="at least one leaf"):
        MerkleTree([])
    with pytest.raises(ValueError, match="32-byte"):
        MerkleTree([b"short"])
    tree = MerkleTree(leaves_of(3))
    for i in (-1, 3):
        with pytest.raises(IndexError):
            tree.proof(i)


# ---------------------------------------------------------------- positional trees


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 70), data=st.data())
def test_every_proof_opens_exactly_its_position(n, data):
    leaves = leaves_of(n)
    tree = MerkleTree(leaves)
    assert tree.root == naive_root(leaves, depth(n))
    i = data.draw(st.integers(0, n - 1))
    proof = tree.proof(i)
    assert len(proof) == depth(n)
    assert root_from(leaves[i], i, proof) == tree.root
    assert verify(leaves[i], i, n, proof, tree.root)
    j = data.draw(st.integers(0, n - 1).filter(lambda k: k != i)) if n > 1 else None
    if j is not None:
        assert not verify(leaves[j], i, n, proof, tree.root)  # another leaf at this position
        assert not verify(leaves[i], j, n, proof, tree.root)  # this leaf at another position
    assert not verify(leaves[i], i, n, proof + [ZERO], tree.root)  # a proof for a deeper tree
    assert not verify(leaves[i], i + n, 2 * n, proof, tree.root)
    assert not verify(leaves[i], -1, n, proof, tree.root)


def test_zero_padding_is_why_a_proof_is_checked_against_the_leaf_count():
    a, b, c = leaves_of(3)
    three, four = MerkleTree([a, b, c]), MerkleTree([a, b, c, ZERO])
    assert three.root == four.root  # the padding leaf is zero
    assert verify(ZERO, 3, 4, four.proof(3), four.root)
    assert not verify(ZERO, 3, 3, four.proof(3), three.root)  # past the tree's n leaves: refused


def test_swapping_leaves_changes_the_root():
    leaves = leaves_of(5)
    swapped = [leaves[1], leaves[0], *leaves[2:]]
    assert MerkleTree(leaves).root != MerkleTree(swapped).root


def test_leaves_are_double_hashed():
    x = b"any encoded leaf"
    assert double_hash(x) == keccak(keccak(x))


# ---------------------------------------------------------------- the round accumulator


def test_an_empty_accumulator_is_the_zero_tree():
    acc = RoundAccumulator()
    assert acc.depth == 14 and acc.leaves == []
    assert acc.root == naive_root([], 14) == Frontier().root
    zero = ZERO
    for _ in range(14):
        zero = keccak(zero + zero)
    assert acc.root == zero


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13, 16])
def test_the_accumulator_is_a_zero_padded_tree_of_fixed_depth(n):
    leaves = leaves_of(n)
    acc = RoundAccumulator(leaves, tree_depth=4)
    assert acc.root == naive_root(leaves, 4) == MerkleTree(leaves + [ZERO] * (16 - n)).root
    for k in range(n):
        proof = acc.proof(k)
        assert len(proof) == 4 and root_from(leaves[k], k, proof) == acc.root


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 40))
def test_the_markets_frontier_gives_the_same_roots(n):
    """After every append, the market's incremental root (one frontier slot written) equals the
    Python accumulator's, and every earlier round's proof reaches it."""
    acc, frontier = RoundAccumulator(), Frontier()
    for leaf in leaves_of(n):
        acc.append(leaf)
        frontier.append(leaf)
        assert frontier.root == acc.root
    for k in (0, n // 2, n - 1):
        assert root_from(acc.leaves[k], k, acc.proof(k)) == frontier.root


def test_appending_moves_the_root_and_old_proofs_go_stale():
    acc = RoundAccumulator(leaves_of(3))
    before, proof = acc.root, acc.proof(2)
    acc.append(keccak(b"next"))
    assert acc.root != before
    assert root_from(acc.leaves[2], 2, proof) == before != acc.root
    assert root_from(acc.leaves[2], 2, acc.proof(2)) == acc.root


def test_accumulator_bounds():
    acc = RoundAccumulator(leaves_of(4), tree_depth=2)
    with pytest.raises(ValueError, match="full"):
        acc.append(keccak(b"fifth"))
    for k in (-1, 4):
        with pytest.raises(IndexError):
            acc.proof(k)
    with pytest.raises(IndexError):
        RoundAccumulator().proof(0)
