"""Merkle trees with sorted-pair keccak256 hashing, as snekmate's merkle_proof_verification checks them."""

from __future__ import annotations

from collections.abc import Sequence

from eth_utils import keccak


def hash_pair(a: bytes, b: bytes) -> bytes:
    """Parent of two nodes: keccak256 of the pair in ascending byte order."""
    return keccak(a + b) if a <= b else keccak(b + a)


class MerkleTree:
    """A binary tree built bottom-up; a node without a sibling moves up unchanged.

    Leaves must already be hashed (32 bytes, never 64-byte preimages), which the
    leaf encoders in `fedmarket.protocol.encoding` guarantee by double hashing.
    """

    def __init__(self, leaves: Sequence[bytes]):
        if not leaves:
            raise ValueError("a Merkle tree needs at least one leaf")
        for leaf in leaves:
            if len(leaf) != 32:
                raise ValueError("Merkle leaves must be 32-byte hashes")
        self.layers: list[list[bytes]] = [list(leaves)]
        while len(self.layers[-1]) > 1:
            prev = self.layers[-1]
            nxt = [hash_pair(prev[i], prev[i + 1]) for i in range(0, len(prev) - 1, 2)]
            if len(prev) % 2:
                nxt.append(prev[-1])
            self.layers.append(nxt)

    @property
    def root(self) -> bytes:
        return self.layers[-1][0]

    def __len__(self) -> int:
        return len(self.layers[0])

    def proof(self, index: int) -> list[bytes]:
        """Sibling hashes from leaf `index` up to the root."""
        if not 0 <= index < len(self):
            raise IndexError(f"leaf index {index} out of range for {len(self)} leaves")
        out = []
        for layer in self.layers[:-1]:
            sibling = index ^ 1
            if sibling < len(layer):
                out.append(layer[sibling])
            index //= 2
        return out


def verify(proof: Sequence[bytes], root: bytes, leaf: bytes) -> bool:
    """True if `proof` leads from `leaf` to `root`."""
    node = leaf
    for sibling in proof:
        node = hash_pair(node, sibling)
    return node == root
