"""EIP-712 typed statements the protocol verifies (`contracts/modules/statements.vy`): update
receipts, their acknowledgements by the aggregator, validator attestations, misbehaviour
reports and reward approvals. Every one is signed in the Disputes contract's domain."""

from __future__ import annotations

from dataclasses import dataclass

from eth_account import Account as EthAccount
from eth_account.messages import encode_typed_data

DOMAIN_NAME = "fedmarket"
DOMAIN_VERSION = "1"

_TYPES = {
    "UpdateReceipt": [
        {"name": "jobId", "type": "uint256"},
        {"name": "round", "type": "uint256"},
        {"name": "updateRoot", "type": "bytes32"},
        {"name": "weight", "type": "uint256"},
    ],
    "ReceiptAck": [
        {"name": "jobId", "type": "uint256"},
        {"name": "round", "type": "uint256"},
        {"name": "provider", "type": "address"},
        {"name": "updateRoot", "type": "bytes32"},
        {"name": "weight", "type": "uint256"},
    ],
    "Attestation": [
        {"name": "jobId", "type": "uint256"},
        {"name": "round", "type": "uint256"},
        {"name": "modelRoot", "type": "bytes32"},
        {"name": "scoresRoot", "type": "bytes32"},
    ],
    "Rejection": [
        {"name": "jobId", "type": "uint256"},
        {"name": "round", "type": "uint256"},
        {"name": "modelRoot", "type": "bytes32"},
    ],
    "Misbehaviour": [
        {"name": "jobId", "type": "uint256"},
        {"name": "provider", "type": "address"},
    ],
    "Rewards": [
        {"name": "jobId", "type": "uint256"},
        {"name": "rewardRoot", "type": "bytes32"},
        {"name": "rewardTotal", "type": "uint256"},
        {"name": "valueTotal", "type": "uint256"},
        {"name": "gateMet", "type": "bool"},
    ],
}


def domain(chain_id: int, verifying_contract: str) -> dict:
    """The EIP-712 domain: name, version, chain, and the disputes contract that verifies."""
    return {"name": DOMAIN_NAME, "version": DOMAIN_VERSION, "chainId": chain_id, "verifyingContract": verifying_contract}


class _Typed:
    """Signing and recovery shared by every typed statement."""

    TYPE = ""

    def message(self) -> dict:
        raise NotImplementedError

    def _encoded(self, chain_id: int, verifier: str):
        return encode_typed_data(domain(chain_id, verifier), {self.TYPE: _TYPES[self.TYPE]}, self.message())

    def digest(self, chain_id: int, verifier: str) -> bytes:
        """The 32-byte EIP-712 digest (what the contract recomputes)."""
        from eth_account.messages import _hash_eip191_message

        return bytes(_hash_eip191_message(self._encoded(chain_id, verifier)))

    def sign(self, key: bytes, chain_id: int, verifier: str) -> bytes:
        return bytes(EthAccount.sign_message(self._encoded(chain_id, verifier), key).signature)

    def signer(self, signature: bytes, chain_id: int, verifier: str) -> str:
        """Address that produced `signature` over this statement."""
        return EthAccount.recover_message(self._encoded(chain_id, verifier), signature=signature)


@dataclass(frozen=True)
class UpdateReceipt(_Typed):
    """(job, round, updateRoot, weight), signed by the provider."""

    TYPE = "UpdateReceipt"
    job_id: int
    round: int
    update_root: bytes
    weight: int

    def message(self) -> dict:
        return {"jobId": self.job_id, "round": self.round, "updateRoot": self.update_root, "weight": self.weight}


@dataclass(frozen=True)
class ReceiptAck(_Typed):
    """The aggregator's countersignature of a provider's receipt: it received that update."""

    TYPE = "ReceiptAck"
    job_id: int
    round: int
    provider: str
    update_root: bytes
    weight: int

    def message(self) -> dict:
        return {
            "jobId": self.job_id,
            "round": self.round,
            "provider": self.provider,
            "updateRoot": self.update_root,
            "weight": self.weight,
        }


@dataclass(frozen=True)
class Attestation(_Typed):
    """A validator's statement that a round's model is right, with its scores' root."""

    TYPE = "Attestation"
    job_id: int
    round: int
    model_root: bytes
    scores_root: bytes

    def message(self) -> dict:
        return {"jobId": self.job_id, "round": self.round, "modelRoot": self.model_root, "scoresRoot": self.scores_root}


@dataclass(frozen=True)
class Rejection(_Typed):
    """A validator's statement that a round is wrong in a way only validators judge (Disputes.reject)."""

    TYPE = "Rejection"
    job_id: int
    round: int
    model_root: bytes

    def message(self) -> dict:
        return {"jobId": self.job_id, "round": self.round, "modelRoot": self.model_root}


@dataclass(frozen=True)
class Misbehaviour(_Typed):
    """A validator's report that a provider's updates were poisoned or free-riding (Disputes.slash_provider)."""

    TYPE = "Misbehaviour"
    job_id: int
    provider: str

    def message(self) -> dict:
        return {"jobId": self.job_id, "provider": self.provider}


@dataclass(frozen=True)
class RewardsApproval(_Typed):
    """A validator's approval of the scores-basis reward statement it re-derived (Disputes.approve_rewards)."""

    TYPE = "Rewards"
    job_id: int
    reward_root: bytes
    reward_total: int
    value_total: int
    gate_met: bool

    def message(self) -> dict:
        return {"jobId": self.job_id, "rewardRoot": self.reward_root, "rewardTotal": self.reward_total,
                "valueTotal": self.value_total, "gateMet": self.gate_met}


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
    signed = EthAccount.sign_message(encode_typed_data(dom, _PERMIT_TYPES, message), owner.key)
    return signed.v, signed.r.to_bytes(32, "big"), signed.s.to_bytes(32, "big")
