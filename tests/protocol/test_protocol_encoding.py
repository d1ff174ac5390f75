"""Merkle trees, leaves and typed receipts: properties in Python, and agreement with the contract."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmarket.chain.base import Account
from fedmarket.errors import StorageError
from fedmarket.protocol.encoding import (
    chunk_leaf,
    decode_vector,
    encode_vector,
    reward_leaf,
    vector_root,
)
from fedmarket.protocol.merkle import MerkleTree, verify
from fedmarket.protocol.receipts import UpdateReceipt

leaves32 = st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=40)


@settings(max_examples=80, deadline=None, database=None)
@given(leaves32, st.data())
def test_every_leaf_has_a_valid_proof_and_others_fail(leaves, data):
    tree = MerkleTree(leaves)
    i = data.draw(st.integers(0, len(leaves) - 1))
    assert verify(tree.proof(i), tree.root, leaves[i])
    stranger = data.draw(st.binary(min_size=32, max_size=32).filter(lambda b: b not in leaves))
    assert not verify(tree.proof(i), tree.root, stranger)


def test_single_leaf_tree_is_its_leaf():
    leaf = bytes(range(32))
    assert MerkleTree([leaf]).root == leaf and MerkleTree([leaf]).proof(0) == []


@settings(max_examples=50, deadline=None, database=None)
@given(st.lists(st.integers(-(2**47), 2**47), min_size=1, max_size=700))
def test_vector_blob_round_trip(values):
    q = np.array(values, dtype=np.int64)
    assert np.array_equal(decode_vector(encode_vector(q)), q)


def test_vector_blob_rejects_garbage():
    with pytest.raises(StorageError, match="bad magic"):
        decode_vector(b"nope" + b"\x00" * 20)
    blob = encode_vector(np.arange(5))
    with pytest.raises(StorageError, match="does not match its header"):
        decode_vector(blob[:-1])
    with pytest.raises(StorageError, match="expected 6"):
        decode_vector(blob, expected_size=6)


def test_chunk_leaf_matches_abi_encoding_of_int256_array():
    import eth_abi
    from eth_utils import keccak

    chunk = np.array([0, 1, -1, 2**40, -(2**47)], dtype=np.int64)
    expected = keccak(keccak(eth_abi.encode(["uint256", "int256[]"], [7, [int(v) for v in chunk]])))
    assert chunk_leaf(7, chunk) == expected


def test_vector_root_depends_on_every_entry():
    q = np.arange(1000, dtype=np.int64)
    base = vector_root(q)
    for i in (0, 255, 256, 999):
        q2 = q.copy()
        q2[i] += 1
        assert vector_root(q2) != base


def test_reward_leaf_is_double_hashed_abi_encoding():
    """Byte layout of the leaf JobMarket.claim rebuilds (the contract tests claim with these proofs)."""
    import eth_abi
    from eth_utils import keccak

    who = Account.derive("leaf", 0).address
    raw = eth_abi.encode(["uint256", "address", "uint256", "int256"], [3, who, 13, -3])
    assert reward_leaf(3, who, 13, -3) == keccak(keccak(raw))


def test_receipt_signature_recovers_the_signer():
    acct = Account.derive("receipts", 1)
    market = Account.derive("receipts", 2).address
    r = UpdateReceipt(5, 2, b"\x11" * 32, 120)
    sig = r.sign(acct.key, 31337, market)
    assert r.signer(sig, 31337, market) == acct.address
    # any change of field, chain or contract changes the signer
    assert UpdateReceipt(5, 2, b"\x11" * 32, 121).signer(sig, 31337, market) != acct.address
    assert r.signer(sig, 1, market) != acct.address
