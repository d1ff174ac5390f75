# pragma version 0.4.3
"""
@title fedmarket signed statements
@notice EIP-712 type hashes and digests of every statement the protocol verifies. The domain
        is `("fedmarket", "1", chain id, Disputes)` for all of them, whichever contract checks
        the signature; `fedmarket.protocol.receipts` signs exactly these.
@license AGPL-3.0-only
"""

from snekmate.utils import ecdsa

UPDATE_RECEIPT_TYPEHASH: constant(bytes32) = keccak256(
    "UpdateReceipt(uint256 jobId,uint256 round,bytes32 updateRoot,uint256 weight)"
)
RECEIPT_ACK_TYPEHASH: constant(bytes32) = keccak256(
    "ReceiptAck(uint256 jobId,uint256 round,address provider,bytes32 updateRoot,uint256 weight)"
)
ATTESTATION_TYPEHASH: constant(bytes32) = keccak256(
    "Attestation(uint256 jobId,uint256 round,bytes32 modelRoot,bytes32 scoresRoot)"
)
REJECTION_TYPEHASH: constant(bytes32) = keccak256(
    "Rejection(uint256 jobId,uint256 round,bytes32 modelRoot)"
)
MISBEHAVIOUR_TYPEHASH: constant(bytes32) = keccak256(
    "Misbehaviour(uint256 jobId,address provider)"
)
REWARDS_TYPEHASH: constant(bytes32) = keccak256(
    "Rewards(uint256 jobId,bytes32 rewardRoot,uint256 rewardTotal,uint256 valueTotal,bool gateMet)"
)
SEAL_TYPEHASH: constant(bytes32) = keccak256(
    "CommitmentSeal(uint256 jobId,uint256 round,bytes32 digest)"
)
DOMAIN_TYPEHASH: constant(bytes32) = keccak256(
    "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
)


@pure
@internal
def _separator(chain_id: uint256, verifier: address) -> bytes32:
    """The protocol's EIP-712 domain separator for `verifier` (the Disputes contract)."""
    return keccak256(abi_encode(DOMAIN_TYPEHASH, keccak256("fedmarket"), keccak256("1"), chain_id, verifier))


@pure
@internal
def _digest(separator: bytes32, struct_hash: bytes32) -> bytes32:
    return keccak256(concat(b"\x19\x01", separator, struct_hash))


@pure
@internal
def _signer(digest: bytes32, signature: Bytes[65]) -> address:
    """Recovered signer of a 65-byte (or 64-byte compact) signature; snekmate reverts on a
    malformed or malleable one, so a bad signature never recovers anyone."""
    return ecdsa._recover_sig(digest, signature)


@pure
@internal
def _receipt(separator: bytes32, job_id: uint256, round: uint256, update_root: bytes32, weight: uint256) -> bytes32:
    return self._digest(separator, keccak256(abi_encode(UPDATE_RECEIPT_TYPEHASH, job_id, round, update_root, weight)))


@pure
@internal
def _ack(separator: bytes32, job_id: uint256, round: uint256, provider: address, update_root: bytes32, weight: uint256) -> bytes32:
    return self._digest(separator, keccak256(abi_encode(RECEIPT_ACK_TYPEHASH, job_id, round, provider, update_root, weight)))


@pure
@internal
def _attestation(separator: bytes32, job_id: uint256, round: uint256, model_root: bytes32, scores_root: bytes32) -> bytes32:
    return self._digest(separator, keccak256(abi_encode(ATTESTATION_TYPEHASH, job_id, round, model_root, scores_root)))


@pure
@internal
def _rejection(separator: bytes32, job_id: uint256, round: uint256, model_root: bytes32) -> bytes32:
    return self._digest(separator, keccak256(abi_encode(REJECTION_TYPEHASH, job_id, round, model_root)))


@pure
@internal
def _misbehaviour(separator: bytes32, job_id: uint256, provider: address) -> bytes32:
    return self._digest(separator, keccak256(abi_encode(MISBEHAVIOUR_TYPEHASH, job_id, provider)))


@pure
@internal
def _rewards(separator: bytes32, job_id: uint256, reward_root: bytes32, reward_total: uint256, value_total: uint256, gate_met: bool) -> bytes32:
    return self._digest(separator, keccak256(abi_encode(REWARDS_TYPEHASH, job_id, reward_root, reward_total, value_total, gate_met)))


@pure
@internal
def _seal(separator: bytes32, job_id: uint256, round: uint256, digest: bytes32) -> bytes32:
    return self._digest(separator, keccak256(abi_encode(SEAL_TYPEHASH, job_id, round, digest)))
