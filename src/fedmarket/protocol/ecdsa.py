"""secp256k1 keys and signatures as the EVM reads them, through libsecp256k1 (coincurve).

Every role signs statements and derives addresses, and eth_account, which does the same, costs
about half a second to import (its keyfile module loads py_ecc's BLS12-381 pairing): a cost every
process pays at start, a provider's Flower ClientApp once per round. Signatures are RFC 6979
deterministic with s in the lower half and v 27 or 28, byte for byte what eth_account's
`unsafe_sign_hash` gives (tests hold the two together)."""

from __future__ import annotations

from coincurve import PrivateKey
from eth_utils import to_checksum_address

from .keccak import keccak

#: order of the secp256k1 group: private keys lie in [1, N), canonical signatures have s <= N / 2
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def _private(key: bytes) -> PrivateKey:
    key = bytes(key)
    if len(key) != 32:
        raise ValueError(f"a private key is 32 bytes, not {len(key)}")
    return PrivateKey(key)  # ValueError for zero or a scalar not below the group order


def address_of(key: bytes) -> str:
    """Checksum address of the private key `key`: the last 20 bytes of keccak of its public key."""
    return to_checksum_address(keccak(_private(key).public_key.format(compressed=False)[1:])[-20:])


def sign_hash(key: bytes, digest: bytes) -> bytes:
    """65-byte signature ``r || s || v`` of the 32-byte `digest` (v 27 or 28, low s)."""
    if len(digest) != 32:
        raise ValueError(f"a signed digest is 32 bytes, not {len(digest)}")
    sig = _private(key).sign_recoverable(bytes(digest), hasher=None)
    return sig[:64] + bytes([sig[64] + 27])
