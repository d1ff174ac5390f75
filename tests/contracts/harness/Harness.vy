# pragma version 0.4.3
# pragma evm-version cancun
"""
@title Test harness: the internal functions of fedmarket's shared modules as external calls
@notice Compiled by the tests only (tests/contracts/test_rules_parity.py), never deployed:
        it lets the Python encoders be compared byte for byte with the modules every contract
        uses (positional trees, leaves, the rules' arithmetic, the EIP-712 statements).
@license AGPL-3.0-only
"""

from modules import constants as C
from modules import leaves
from modules import rules
from modules import statements as S
from modules import terms as T


@pure
@external
def depth(n: uint256) -> uint256:
    return leaves._depth(n)


@pure
@external
def root(leaf: bytes32, index: uint256, proof: DynArray[bytes32, C.MAX_CHUNK_PROOF]) -> bytes32:
    return leaves._root(leaf, index, proof)


@pure
@external
def verify(leaf: bytes32, index: uint256, n: uint256, proof: DynArray[bytes32, C.MAX_CHUNK_PROOF], root: bytes32) -> bool:
    return leaves._verify(leaf, index, n, proof, root)


@pure
@external
def chunk_leaf(index: uint256, chunk: DynArray[int256, C.MAX_CHUNK]) -> bytes32:
    return leaves._chunk_leaf(index, chunk)


@pure
@external
def pro_rata(revenue: uint256, amount: uint256, total: uint256) -> uint256:
    return leaves._pro_rata(revenue, amount, total)


@pure
@external
def update_leaf(provider: address, update_root: bytes32, weight: uint256) -> bytes32:
    return leaves._update_leaf(provider, update_root, weight)


@pure
@external
def reward_leaf(leaf: leaves.RewardLeaf) -> bytes32:
    return leaves._reward_leaf(leaf)


@pure
@external
def round_commitment(job_id: uint256, round: uint256, data: leaves.RoundData) -> bytes32:
    return leaves._round_commitment(job_id, round, data)


@pure
@external
def chunk_width(index: uint256, n_params: uint256, chunk_size: uint256) -> uint256:
    return leaves._chunk_width(index, n_params, chunk_size)


@pure
@external
def n_chunks(n_params: uint256, chunk_size: uint256) -> uint256:
    return leaves._n_chunks(n_params, chunk_size)


@pure
@external
def right(width: uint256, parent: DynArray[int256, rules.MAX_CLAIM], left: DynArray[int256, rules.MAX_CLAIM]) -> DynArray[int256, rules.MAX_CLAIM]:
    return rules._right(width, parent, left)


@pure
@external
def floor_div(a: int256, b: int256) -> int256:
    return rules._floor_div(a, b)


@pure
@external
def ranks(rule: uint256, count: uint256, trim: uint256) -> (uint256, uint256):
    return rules._ranks(rule, count, trim)


@pure
@external
def in_int64(values: DynArray[int256, C.MAX_CHUNK]) -> bool:
    return rules._in_int64(values)


@pure
@external
def separator(chain_id: uint256, verifier: address) -> bytes32:
    return S._separator(chain_id, verifier)


@pure
@external
def receipt_digest(sep: bytes32, job_id: uint256, round: uint256, update_root: bytes32, weight: uint256) -> bytes32:
    return S._receipt(sep, job_id, round, update_root, weight)


@pure
@external
def ack_digest(sep: bytes32, job_id: uint256, round: uint256, provider: address, update_root: bytes32, weight: uint256) -> bytes32:
    return S._ack(sep, job_id, round, provider, update_root, weight)


@pure
@external
def attestation_digest(sep: bytes32, job_id: uint256, round: uint256, model_root: bytes32, scores_root: bytes32) -> bytes32:
    return S._attestation(sep, job_id, round, model_root, scores_root)


@pure
@external
def rejection_digest(sep: bytes32, job_id: uint256, round: uint256, model_root: bytes32) -> bytes32:
    return S._rejection(sep, job_id, round, model_root)


@pure
@external
def misbehaviour_digest(sep: bytes32, job_id: uint256, provider: address) -> bytes32:
    return S._misbehaviour(sep, job_id, provider)


@pure
@external
def rewards_digest(sep: bytes32, job_id: uint256, reward_root: bytes32, reward_total: uint256, value_total: uint256, gate_met: bool) -> bytes32:
    return S._rewards(sep, job_id, reward_root, reward_total, value_total, gate_met)


@pure
@external
def epsilon(noise: uint256, delta_log: uint256, rounds: uint256) -> uint256:
    return T._epsilon(noise, delta_log, rounds)
