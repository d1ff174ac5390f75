"""EIP-712 typed update receipts: a provider's signed claim that it submitted an update."""

from __future__ import annotations

from dataclasses import dataclass

from eth_account import Account as EthAccount
from eth_account.messages import encode_typed_data

DOMAIN_NAME = "fedmarket"
DOMAIN_VERSION = "1"

RECEIPT_TYPES = {
    "UpdateReceipt": [
        {"name": "jobId", "type": "uint256"},
        {"name": "round", "type": "uint256"},
        {"name": "updateRoot", "type": "bytes32"},
        {"name": "weight", "type": "uint256"},
    ]
}


def domain(chain_id: int, market: str) -> dict:
    return {"name": DOMAIN_NAME, "version": DOMAIN_VERSION, "chainId": chain_id, "verifyingContract": market}


@dataclass(frozen=True)
class UpdateReceipt:
    """(job, round, updateRoot, weight), signed by the provider."""

    job_id: int
    round: int
    update_root: bytes
    weight: int

    def message(self) -> dict:
        return {"jobId": self.job_id, "round": self.round, "updateRoot": self.update_root, "weight": self.weight}

    def sign(self, key: bytes, chain_id: int, market: str) -> bytes:
        signed = EthAccount.sign_typed_data(key, domain(chain_id, market), RECEIPT_TYPES, self.message())
        return bytes(signed.signature)

    def signer(self, signature: bytes, chain_id: int, market: str) -> str:
        """Address that produced `signature` over this receipt."""
        msg = encode_typed_data(domain(chain_id, market), RECEIPT_TYPES, self.message())
        return EthAccount.recover_message(msg, signature=signature)
