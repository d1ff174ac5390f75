"""Merkle trees, leaves and typed receipts: properties in Python, and agreement with the contract."""

from __future__ import annotations

import numpy as np
from eth_account import Account as EthAccount
from eth_account.messages import _hash_eip191_message, encode_typed_data
from eth_utils import to_checksum_address
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
from fedmarket.protocol import receipts
from fedmarket.protocol.receipts import UpdateReceipt

leaves32 = st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=40)


@settings(max_examples=80, deadline=None, database=None)
@given(leaves32, st.data())
def test_every_leaf_has_a_valid_proof_and_others_fail(leaves, data):
    tree = MerkleTree(leaves)
    i = data.draw(st.integers(0, len(leaves) - 1))
    assert verify(leaves[i], i, len(leaves), tree.proof(i), tree.root)
    stranger = data.draw(st.binary(min_size=32, max_size=32).filter(lambda b: b not in leaves))
    assert not verify(stranger, i, len(leaves), tree.proof(i), tree.root)


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


@pytest.mark.parametrize("n", [0, 1, 3, 4, 5, 64])
def test_chunk_leaf_is_the_abi_encoding_of_packed_int64_words(n):
    import eth_abi
    from eth_utils import keccak

    chunk = (np.array([0, 1, -1, 2**40, -(2**47), 2**63 - 1, -(2**63)] * 10, dtype=np.int64))[:n]
    words, word = [], 0
    for i, v in enumerate(int(x) for x in chunk):  # four two's-complement int64 to a word, in order
        word = (word << 64) | (v & (2**64 - 1))
        if i % 4 == 3:
            words.append(word)
            word = 0
    if n % 4:
        words.append(word << (64 * (4 - n % 4)))
    expected = keccak(keccak(eth_abi.encode(["uint256", "uint256", "uint256[]"], [7, n, words])))
    assert chunk_leaf(7, chunk) == expected


def test_chunk_leaf_tells_a_trailing_zero_from_none():
    assert chunk_leaf(0, np.array([5, 0, 0], dtype=np.int64)) != chunk_leaf(0, np.array([5, 0], dtype=np.int64))


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
    raw = eth_abi.encode(["address", "uint256", "uint256", "int256", "uint256", "uint256"], [who, 1, 13, -3, 40, 2])
    assert reward_leaf(who, 1, 13, -3, 40, 2) == keccak(keccak(raw))


def test_receipt_signature_recovers_the_signer():
    acct = Account.derive("receipts", 1)
    market = Account.derive("receipts", 2).address
    r = UpdateReceipt(5, 2, b"\x11" * 32, 120)
    sig = r.sign(acct.key, 31337, market)
    assert r.signer(sig, 31337, market) == acct.address
    # any change of field, chain or contract changes the signer
    assert UpdateReceipt(5, 2, b"\x11" * 32, 121).signer(sig, 31337, market) != acct.address
    assert r.signer(sig, 1, market) != acct.address


STATEMENTS = sorted(receipts._Typed.__subclasses__(), key=lambda cls: cls.__name__)
_VALUES = {
    "uint256": st.integers(0, 2**256 - 1),
    "bytes32": st.binary(max_size=32),
    "address": st.binary(min_size=20, max_size=20).flatmap(
        lambda raw: st.sampled_from([to_checksum_address(raw), "0x" + raw.hex()])),
    "bool": st.booleans(),
}
_INVALID = {"uint256": [-1, 2**256, True, "7"], "bytes32": [b"\x01" * 33, 5],
            "address": ["0x" + "ab" * 19, "0xAbCdEf" + "00" * 17, 7], "bool": [1, "true"]}


@pytest.mark.parametrize("cls", STATEMENTS, ids=lambda c: c.__name__)
@settings(max_examples=25, deadline=None, database=None)
@given(data=st.data(), chain_id=st.integers(1, 2**64), contract=st.binary(min_size=20, max_size=20))
def test_every_statement_hashes_signs_and_recovers_as_eth_account_does(cls, data, chain_id, contract):
    """The direct EIP-712 digest of every typed statement is eth_account's, for any values."""
    kinds = [f["type"] for f in cls.eip712_fields()]
    stmt = cls(*(data.draw(_VALUES[k]) for k in kinds))
    verifier = to_checksum_address(contract)
    theirs = encode_typed_data(receipts.domain(chain_id, verifier), {cls.TYPE: cls.eip712_fields()}, stmt.message())
    assert stmt.eip712_digest(chain_id, verifier) == bytes(_hash_eip191_message(theirs))
    acct = Account.derive("statements", len(kinds))
    sig = stmt.sign(acct.key, chain_id, verifier)
    assert sig == bytes(EthAccount.sign_message(theirs, acct.key).signature)
    assert stmt.signer(sig, chain_id, verifier) == acct.address == EthAccount.recover_message(theirs, signature=sig)


@pytest.mark.parametrize("cls", STATEMENTS, ids=lambda c: c.__name__)
def test_a_statement_field_its_type_cannot_hold_is_refused(cls):
    """Refused with the type named, including what eth_account would coerce ("7" as a uint256, 5 as
    bytes32, 1 as a bool, an address with a wrong checksum): a statement holds typed values only."""
    kinds = [f["type"] for f in cls.eip712_fields()]
    valid = {"uint256": 1, "bytes32": b"\x01" * 32, "address": "0x" + "ab" * 20, "bool": True}
    for i, kind in enumerate(kinds):
        for bad in _INVALID[kind]:
            values = [valid[k] for k in kinds]
            values[i] = bad
            stmt = cls(*values)
            with pytest.raises(ValueError, match=f"not a valid {kind}"):
                stmt.eip712_digest(1, "0x" + "cd" * 20)
            with pytest.raises(ValueError, match=f"not a valid {kind}"):
                stmt.sign(Account.derive("statements", 0).key, 1, "0x" + "cd" * 20)


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


@pytest.mark.parametrize(
    "values, width",
    [
        ([], 1),
        ([0], 1),
        ([127, -128], 1),
        ([128], 2),
        ([-129], 2),
        ([2**15 - 1, -(2**15)], 2),
        ([2**15], 4),
        ([-(2**15) - 1], 4),
        ([2**31 - 1, -(2**31)], 4),
        ([2**31], 8),
        ([-(2**31) - 1], 8),
        ([INT64_MAX, INT64_MIN, 0], 8),
    ],
)
def test_vector_blob_uses_the_narrowest_width_that_holds_every_value(values, width):
    q = np.array(values, dtype=np.int64)
    blob = encode_vector(q)
    assert blob[:4] == b"FMV2" and blob[4] == width and len(blob) == 13 + width * len(values)
    out = decode_vector(blob, expected_size=len(values))
    assert out.dtype == np.int64 and out.tolist() == values


def test_vector_blob_layout_is_big_endian_twos_complement():
    assert encode_vector(np.array([1, -2])) == b"FMV2\x01" + (2).to_bytes(8, "big") + b"\x01\xfe"
    assert encode_vector(np.array([258, -1])) == b"FMV2\x02" + (2).to_bytes(8, "big") + b"\x01\x02\xff\xff"
    # the dtype handed in does not matter, only the values
    assert encode_vector(np.array([[5, -6]], dtype=np.int16)) == encode_vector(np.array([5, -6]))


def test_vector_blob_reads_the_old_fmv1_format():
    q = np.array([0, -1, 2**40, INT64_MIN, INT64_MAX], dtype=np.int64)
    old = b"FMV1" + len(q).to_bytes(8, "big") + q.astype(">i8").tobytes()
    assert decode_vector(old, expected_size=5).tolist() == q.tolist()
    with pytest.raises(StorageError, match="does not match its header"):
        decode_vector(old + b"\x00")
    with pytest.raises(StorageError, match="expected 4"):
        decode_vector(old, expected_size=4)


@pytest.mark.parametrize(
    "blob, match",
    [
        (b"", "bad magic"),
        (b"FMV3\x01" + bytes(8), "bad magic"),
        (b"FMV2\x01\x00", "shorter than its 13-byte header"),
        (b"FMV1" + bytes(7), "shorter than its 12-byte header"),
        (b"FMV2\x03" + (1).to_bytes(8, "big") + b"\x00\x00\x00", "width byte 3"),
        (b"FMV2\x00" + bytes(8), "width byte 0"),
        (b"FMV2\x10" + (1).to_bytes(8, "big") + bytes(16), "width byte 16"),
        (b"FMV2\x02" + (3).to_bytes(8, "big") + bytes(5), "does not match its header"),
        (b"FMV2\x04" + (2**64 - 1).to_bytes(8, "big"), "does not match its header"),
    ],
)
def test_malformed_vector_blobs_give_one_line_storage_errors(blob, match):
    with pytest.raises(StorageError, match=match) as err:
        decode_vector(blob)
    assert "\n" not in str(err.value)


int64s = st.one_of(
    st.integers(-128, 127),
    st.integers(-(2**15), 2**15 - 1),
    st.integers(-(2**31), 2**31 - 1),
    st.integers(INT64_MIN, INT64_MAX),
)


@settings(max_examples=100, deadline=None, database=None)
@given(st.lists(int64s, max_size=300))
def test_vector_blob_round_trip_at_every_width_is_canonical(values):
    q = np.array(values, dtype=np.int64)
    blob = encode_vector(q)
    width = blob[4]
    assert all(-(2 ** (8 * width - 1)) <= v < 2 ** (8 * width - 1) for v in values)
    if width > 1:  # no narrower width would do
        assert not all(-(2 ** (4 * width - 1)) <= v < 2 ** (4 * width - 1) for v in values)
    out = decode_vector(blob, expected_size=len(values))
    assert out.dtype == np.int64 and out.tolist() == values
    assert encode_vector(out) == blob


def test_keccak_binding_matches_eth_utils():
    from eth_utils import keccak as reference

    from fedmarket.protocol.keccak import keccak

    for data in (b"", b"abc", bytes(range(256)) * 9):
        assert keccak(data) == reference(data)


@pytest.mark.parametrize("n", [1, 63, 64, 65, 129, 7850])
def test_chunk_leaves_match_one_chunk_at_a_time(n):
    from fedmarket.protocol.encoding import chunk_leaf, chunk_leaves

    q = np.random.default_rng(n).integers(-(2**63), 2**63 - 1, n, endpoint=True)
    assert chunk_leaves(q) == [chunk_leaf(i, q[s : s + 64]) for i, s in enumerate(range(0, n, 64))]


@settings(max_examples=50, deadline=None, database=None)
@given(key=st.binary(min_size=32, max_size=32), digest=st.binary(min_size=32, max_size=32))
def test_direct_signatures_and_addresses_are_eth_accounts(key, digest):
    """`protocol.ecdsa` (libsecp256k1 through coincurve, what roles sign with) gives eth_account's
    address and, byte for byte, its signature of a digest: low s, v 27 or 28."""
    from fedmarket.protocol.ecdsa import address_of, sign_hash

    n = receipts.SECP256K1_N
    if not 0 < int.from_bytes(key, "big") < n:
        with pytest.raises(ValueError):
            sign_hash(key, digest)
        return
    assert address_of(key) == EthAccount.from_key(key).address
    sig = sign_hash(key, digest)
    assert sig == bytes(EthAccount.unsafe_sign_hash(digest, key).signature)
    receipts.check_canonical(sig)


@pytest.mark.parametrize(("key", "digest", "problem"), [
    (b"\x01" * 31, b"\x00" * 32, "a private key is 32 bytes, not 31"),
    (b"\x01" * 32, b"\x00" * 31, "a signed digest is 32 bytes, not 31"),
])
def test_a_wrong_size_key_or_digest_is_named(key, digest, problem):
    from fedmarket.protocol.ecdsa import sign_hash

    with pytest.raises(ValueError, match=problem):
        sign_hash(key, digest)


def test_a_provider_clientapp_signs_without_loading_eth_account():
    """A provider's Flower ClientApp starts afresh every round: its imports (the app, the provider
    role, a development account, the JSON-RPC chain) leave out eth_account, about 0.5 s of them."""
    import subprocess
    import sys
    from pathlib import Path

    import fedmarket

    app_dir = Path(fedmarket.__file__).parent / "transport" / "flower_app"
    code = (f"import sys; sys.path.insert(0, {str(app_dir)!r}); import fedmarket_flower_app.client_app; "
            "from fedmarket.roles import Provider; from fedmarket.keys import dev_account; "
            "import fedmarket.chain.rpc_backend; from fedmarket.protocol.receipts import UpdateReceipt; "
            "a = dev_account(3); UpdateReceipt(1, 0, b'\\x01' * 32, 5).sign(a.key, 1, a.address); "
            "print(sorted(m for m in sys.modules if m.startswith('eth_account')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.text(alphabet='[]{}"\\ab,:\n\u00e9', max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(alphabet='[]{}"\\ab', max_size=6), inner, max_size=4),
    max_leaves=40,
)


def _depth(doc) -> int:
    if isinstance(doc, list):
        return 1 + max((_depth(x) for x in doc), default=0)
    if isinstance(doc, dict):
        return 1 + max((_depth(x) for x in doc.values()), default=0)
    return 0


@settings(max_examples=300, deadline=None, database=None)
@given(doc=_JSON, spaced=st.booleans())
def test_json_depth_counts_nesting_past_brackets_in_strings(doc, spaced):
    """`untrusted_json` refuses a document by its depth before parsing it: the count must be the
    parser's, whatever brackets, quotes and escapes its strings hold."""
    import json

    from fedmarket.protocol.encoding import json_depth

    raw = json.dumps(doc, ensure_ascii=False, indent=1 if spaced else None).encode()
    assert json_depth(raw) >= _depth(doc) and (json_depth(raw) == _depth(doc) or json_depth(raw) <= 64)


def test_untrusted_json_refuses_what_could_crash_or_mislead_a_reader():
    from fedmarket.errors import MalformedMessage
    from fedmarket.protocol.encoding import MAX_UNTRUSTED_DEPTH, untrusted_json

    assert untrusted_json(b"[" * MAX_UNTRUSTED_DEPTH + b"]" * MAX_UNTRUSTED_DEPTH) is not None
    for raw, why in [(b"[" * 90_000 + b"]" * 90_000, "nests deeper"), (b'["]"' + b',["]"' * 80 + b"]" * 81, "nests deeper"),
                     (b'{"w": Infinity}', "not a JSON number"), (b'{"w": NaN}', "not a JSON number"),
                     (b'{"w": 1e400}', "out of range"), (b"\xff", "not JSON"), (b"", "not JSON")]:
        with pytest.raises(MalformedMessage, match=why):
            untrusted_json(raw)
    assert isinstance(MalformedMessage("x"), ValueError)  # every reader's handler takes it
