"""EIP-712 typed statements the protocol verifies (`contracts/modules/statements.vy`): update
receipts, their acknowledgements by the aggregator, validator attestations, misbehaviour
reports and reward approvals. Every one is signed in the Disputes contract's domain."""

from __future__ import annotations

import functools
from dataclasses import fields, make_dataclass

from eth_keys.datatypes import Signature as KeySignature
from eth_utils import to_checksum_address

from ..errors import MalformedMessage
from .ecdsa import SECP256K1_N, sign_hash
from .keccak import keccak

DOMAIN_NAME = "fedmarket"
DOMAIN_VERSION = "1"

_SOLIDITY = {"int": "uint256", "bytes": "bytes32", "str": "address", "bool": "bool"}


def domain(chain_id: int, verifying_contract: str) -> dict:
    """The EIP-712 domain: name, version, chain, and the disputes contract that verifies."""
    return {"name": DOMAIN_NAME, "version": DOMAIN_VERSION, "chainId": chain_id, "verifyingContract": verifying_contract}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w.title() for w in rest)


_DOMAIN_TYPEHASH = keccak(b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)")


@functools.lru_cache(maxsize=64)
def _domain_separator(chain_id: int, verifying_contract: str) -> bytes:
    return keccak(_DOMAIN_TYPEHASH + keccak(DOMAIN_NAME.encode()) + keccak(DOMAIN_VERSION.encode())
                  + _word("uint256", chain_id) + _word("address", verifying_contract))


_HEX = frozenset("0123456789abcdefABCDEF")


def _word(kind: str, value) -> bytes:
    """One field of a struct as EIP-712 hashes it (every field here is a static 32-byte word);
    ValueError, naming the field's type, for a value that type cannot hold."""
    if kind == "uint256":
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 256:
            return value.to_bytes(32, "big")
    elif kind == "bytes32":
        if isinstance(value, str) and value.startswith("0x"):
            value = bytes.fromhex(value[2:])
        if isinstance(value, (bytes, bytearray)) and len(value) <= 32:
            return bytes(value).ljust(32, b"\0")
    elif kind == "address":  # 0x and 40 hex digits, all one case or rightly checksummed (EIP-55)
        if isinstance(value, str) and len(value) == 42 and value[:2] == "0x" and all(c in _HEX for c in value[2:]):
            digits = value[2:]
            if digits.islower() or digits.isupper() or digits.isdigit() or to_checksum_address(value) == value:
                return bytes(12) + bytes.fromhex(digits)
    elif kind == "bool":
        if isinstance(value, bool):
            return bytes(31) + bytes([value])
    raise ValueError(f"not a valid {kind}: {value!r}")


class _Typed:
    """Signing and recovery shared by every typed statement. A statement is a frozen dataclass
    whose fields, in order, are the EIP-712 struct's (snake_case here, camelCase there; `int` is
    uint256, `bytes` bytes32, `str` address, `bool` bool).

    The digest is hashed here directly (every field is one static word): a role checks a dozen
    statements per update at scale, and eth_account's general encoder took 0.4 ms for each. A
    test holds every statement to eth_account's `encode_typed_data`, signing and recovery."""

    TYPE = ""
    TYPEHASH = b""  # keccak of the struct's type string, e.g. "UpdateReceipt(uint256 jobId,...)"
    WORDS: tuple[tuple[str, str], ...] = ()  # (field, EIP-712 type) in the struct's order

    @classmethod
    def eip712_fields(cls) -> list[dict]:
        return [{"name": _camel(f.name), "type": _SOLIDITY[getattr(f.type, "__name__", f.type)]} for f in fields(cls)]

    def message(self) -> dict:
        return {_camel(f.name): getattr(self, f.name) for f in fields(self)}

    def struct_hash(self) -> bytes:
        return keccak(self.TYPEHASH + b"".join(_word(kind, getattr(self, name)) for name, kind in self.WORDS))

    def eip712_digest(self, chain_id: int, verifier: str) -> bytes:
        """The 32-byte EIP-712 digest (what the contract recomputes). Not `digest`: a statement may
        have a field of that name (`CommitmentSeal`)."""
        return keccak(b"\x19\x01" + _domain_separator(chain_id, verifier) + self.struct_hash())

    def sign(self, key: bytes, chain_id: int, verifier: str) -> bytes:
        return sign_hash(key, self.eip712_digest(chain_id, verifier))

    def signer(self, signature: bytes, chain_id: int, verifier: str) -> str:
        """Address that produced `signature` over this statement. Only the canonical form the
        contracts accept (65 bytes, v 27 or 28, s in the lower half) is read: a v of 0/1 or a
        high-s twin recovers the same key off chain but reverts on chain, so a party that took one
        could be made to fail (or be slashed) when it shows the statement there."""
        check_canonical(signature)
        try:
            sig = KeySignature(signature_bytes=bytes(signature[:64]) + bytes([signature[64] - 27]))
            return sig.recover_public_key_from_msg_hash(self.eip712_digest(chain_id, verifier)).to_checksum_address()
        except Exception:  # noqa: BLE001 - eth_keys raises BadSignature (no ValueError) for r, s that recover no key
            raise MalformedMessage("the signature recovers no key") from None


def check_canonical(signature: bytes) -> None:
    """Raise ValueError unless `signature` is a 65-byte signature in the canonical form that
    `statements._signer` (snekmate's ecdsa) accepts: v 27 or 28, s at most n/2."""
    if len(signature) != 65 or signature[64] not in (27, 28) or int.from_bytes(signature[32:64], "big") > SECP256K1_N // 2:
        raise ValueError("not a canonical 65-byte signature (v 27/28, low s)")


def canonical_twin(signature: bytes) -> bytes:
    """The canonical form of a 65-byte recoverable signature that anyone can derive from it: v 0/1
    read as 27/28, and a high s as its low twin ``n - s`` with v flipped. Both recover the same key;
    only the canonical one passes on chain. (Any other input comes back unchanged.)"""
    sig = bytes(signature)
    if len(sig) != 65 or sig[64] not in (0, 1, 27, 28):
        return sig
    v, s = 27 + sig[64] % 27, int.from_bytes(sig[32:64], "big")
    if s > SECP256K1_N // 2:
        s, v = SECP256K1_N - s, 55 - v
    return sig[:32] + s.to_bytes(32, "big") + bytes([v])


def _statement(name: str, eip712_type: str, doc: str, *fields_: tuple[str, type]) -> type:
    """A typed statement class: a frozen dataclass of `fields_` (in the struct's order) signed as `eip712_type`."""
    cls = make_dataclass(name, list(fields_), bases=(_Typed,), frozen=True,
                         namespace={"TYPE": eip712_type, "__doc__": doc, "__module__": __name__})
    typed = cls.eip712_fields()
    cls.WORDS = tuple((f.name, t["type"]) for f, t in zip(fields(cls), typed))
    members = ",".join(f"{t['type']} {t['name']}" for t in typed)
    cls.TYPEHASH = keccak(f"{eip712_type}({members})".encode())
    return cls


UpdateReceipt = _statement(
    "UpdateReceipt", "UpdateReceipt", "UpdateReceipt(jobId, round, updateRoot, weight), signed by the provider.",
    ("job_id", int), ("round", int), ("update_root", bytes), ("weight", int))
UpdateCommitment = _statement(
    "UpdateCommitment", "UpdateCommitment", "A provider's commitment to its update before any update of the round is "
    "revealed: keccak(abi.encode(provider, updateRoot, weight, salt)) (roles.sealed).",
    ("job_id", int), ("round", int), ("commitment", bytes))
CommitmentSeal = _statement(
    "CommitmentSeal", "CommitmentSeal", "The aggregator's seal of a round's commitments (keccak of their canonical list): "
    "no later commitment counts, and providers reveal only once they see theirs in it (roles.sealed).",
    ("job_id", int), ("round", int), ("digest", bytes))
ReceiptAck = _statement(
    "ReceiptAck", "ReceiptAck", "The aggregator's countersignature of a provider's receipt: it received that update.",
    ("job_id", int), ("round", int), ("provider", str), ("update_root", bytes), ("weight", int))
Attestation = _statement(
    "Attestation", "Attestation", "A validator's statement that a round is right, with its scores' root (Disputes.attest).",
    ("job_id", int), ("round", int), ("model_root", bytes), ("scores_root", bytes))
Rejection = _statement(
    "Rejection", "Rejection", "A validator's statement that a round is wrong in a way only validators judge (Disputes.reject).",
    ("job_id", int), ("round", int), ("model_root", bytes))
Misbehaviour = _statement(
    "Misbehaviour", "Misbehaviour", "A validator's report that a provider poisons or free-rides (Disputes.slash_provider).",
    ("job_id", int), ("provider", str))
RewardsApproval = _statement(
    "RewardsApproval", "Rewards", "A validator's approval of the scores-basis reward statement it re-derived (Disputes.approve_rewards).",
    ("job_id", int), ("reward_root", bytes), ("reward_total", int), ("value_total", int), ("gate_met", bool))
ScoresReveal = _statement(
    "ScoresReveal", "ScoresReveal", "A validator's reveal of a round's scores document: keccak of the document without its "
    "signature. Its scores are bound by the root the validator attested; its accuracy and flags by this signature alone "
    "(checked off chain, settlement.verified_reveals), so nobody else can reveal in its name.",
    ("job_id", int), ("round", int), ("document", bytes))

Usage = _statement(
    "Usage", "Usage", "A caller's cumulative count of queries at one server, signed per query (ModelMarket.settle_usage); "
    "signed in the ModelMarket's domain.",
    ("job_id", int), ("server", str), ("count", int))
Tab = _statement(
    "Tab", "Tab", "A caller's cumulative queries and tokens spent on its tab at one server, signed per query "
    "(UsageRollup.answer checks it for a challenged leaf); signed in the UsageRollup's domain.",
    ("job_id", int), ("server", str), ("queries", int), ("spent", int))
AccessQuery = _statement(
    "AccessQuery", "AccessQuery", "A holder of time-bound access asking one query of a server (its count there, rising): "
    "checked off chain against ModelMarket.has_access, never settled; signed in the ModelMarket's domain.",
    ("job_id", int), ("server", str), ("count", int))
Answer = _statement(
    "Answer", "Answer", "A server's answer to a fixed-point input (ModelMarket.dispute_answer); signed in the ModelMarket's domain.",
    ("job_id", int), ("input_hash", bytes), ("answer", int))
VerifierAttestation = _statement(
    "VerifierAttestation", "VerifierAttestation", "A validator's statement that a proof verifier's circuit is the job's model "
    "(ModelMarket.register_verifier); signed in the ModelMarket's domain.",
    ("job_id", int), ("model_root", bytes), ("verifier", str), ("codehash", bytes))
ProvenAnswer = _statement(
    "ProvenAnswer", "ProvenAnswer", "A server's statement that a proof (keccak of its bytes and of abi.encode(instances)) "
    "is its answer (ModelMarket.dispute_proof); signed in the ModelMarket's domain.",
    ("job_id", int), ("proof_hash", bytes), ("instances_hash", bytes))


_PERMIT_TYPES = {
    "Permit": [
        {"name": "owner", "type": "address"},
        {"name": "spender", "type": "address"},
        {"name": "value", "type": "uint256"},
        {"name": "nonce", "type": "uint256"},
        {"name": "deadline", "type": "uint256"},
    ]
}


def permit_signature(token, owner, spender: str, value: int, deadline: int) -> tuple[int, bytes, bytes]:
    """(v, r, s) of an EIP-2612 permit letting `spender` take `value` of `owner`'s tokens.

    The domain (name, version, chain id, address) is read from the token's EIP-5267 `eip712Domain()`.
    """
    _, name, version, chain_id, verifying, _, _ = token.call("eip712Domain")
    nonce = int(token.call("nonces", owner.address))
    message = {"owner": owner.address, "spender": spender, "value": value, "nonce": nonce, "deadline": deadline}
    dom = {"name": name, "version": version, "chainId": chain_id, "verifyingContract": verifying}
    from eth_account import Account as EthAccount  # a permit is rare: the import (0.5 s) waits for it
    from eth_account.messages import encode_typed_data

    signed = EthAccount.sign_message(encode_typed_data(dom, _PERMIT_TYPES, message), owner.key)
    return signed.v, signed.r.to_bytes(32, "big"), signed.s.to_bytes(32, "big")
