# pragma version 0.4.3
"""
@title fedmarket leaves and positional Merkle trees
@notice Every tree the protocol commits to is positional: leaf `i` of a tree of `n` leaves
        sits at position `i` of a tree of depth `ceil(log2(n))` padded with zero leaves, and
        a parent is `keccak256(left ++ right)`. A position therefore holds exactly one leaf,
        so a commitment cannot hold two values for one slot, and a proof names the slot it
        opens. Leaves are double-hashed, so no leaf can pass for an inner node.
        Shared by JobMarket (round accumulator, reward claims), Arbiter (disputes) and
        ModelLicence (revenue claims); `fedmarket.protocol` builds the same bytes.
@license AGPL-3.0-only
"""

from modules import constants as C


# @dev A committed round in the clear: what the market's round accumulator commits.
struct RoundData:
    model_root: bytes32
    updates_root: bytes32
    count: uint256
    metrics_hash: bytes32
    epsilon_spent: uint256
    aux_root: bytes32
    next_seed: bytes32


# @dev One reward leaf: an account's payout, reputation change and the value it was derived from.
struct RewardLeaf:
    account: address
    role: uint256
    amount: uint256
    reputation_delta: int256
    value: uint256
    activity: uint256


@pure
@internal
def _depth(n: uint256) -> uint256:
    """Depth of a positional tree of `n` leaves (0 for one leaf)."""
    d: uint256 = 0
    for i: uint256 in range(C.MAX_CHUNK_PROOF):
        if (1 << d) >= n:
            break
        d += 1
    return d


@pure
@internal
def _root(leaf: bytes32, index: uint256, proof: DynArray[bytes32, C.MAX_CHUNK_PROOF]) -> bytes32:
    """Root reached from `leaf` at position `index` through `proof` (siblings from the bottom)."""
    node: bytes32 = leaf
    for i: uint256 in range(len(proof), bound=C.MAX_CHUNK_PROOF):
        if (index >> i) & 1 == 0:
            node = keccak256(concat(node, proof[i]))
        else:
            node = keccak256(concat(proof[i], node))
    return node


@pure
@internal
def _verify(leaf: bytes32, index: uint256, n: uint256, proof: DynArray[bytes32, C.MAX_CHUNK_PROOF], root: bytes32) -> bool:
    """Whether `leaf` is leaf `index` of the `n`-leaf positional tree `root`."""
    if index >= n or len(proof) != self._depth(n):
        return False
    return self._root(leaf, index, proof) == root


@pure
@internal
def _chunk_leaf(index: uint256, chunk: DynArray[int256, C.MAX_CHUNK]) -> bytes32:
    """Leaf of chunk `index` of a model or update vector: `abi_encode(index, count, words)` with the
    values as int64, packed four to a big-endian word (the last one zero-padded). A quarter of the
    bytes of the plain int256 array to hash, for every role that commits or checks a vector."""
    words: DynArray[uint256, C.MAX_CHUNK // 4] = []
    word: uint256 = 0
    n: uint256 = len(chunk)
    for i: uint256 in range(n, bound=C.MAX_CHUNK):
        v: int256 = chunk[i]
        assert v >= convert(min_value(int64), int256) and v <= convert(max_value(int64), int256), "leaves: value out of range"
        word = (word << 64) | (convert(convert(v, bytes32), uint256) & convert(max_value(uint64), uint256))
        if i % 4 == 3:
            words.append(word)
            word = 0
    if n % 4 != 0:
        words.append(word << (64 * (4 - n % 4)))
    return keccak256(keccak256(abi_encode(index, n, words)))


@pure
@internal
def _update_leaf(provider: address, update_root: bytes32, weight: uint256) -> bytes32:
    """Leaf of a round's updates tree (leaves sorted by provider, strictly ascending)."""
    return keccak256(keccak256(abi_encode(provider, update_root, weight)))


@pure
@internal
def _reward_leaf(leaf: RewardLeaf) -> bytes32:
    """Leaf of a job's reward tree (leaves sorted by account, strictly ascending)."""
    return keccak256(keccak256(abi_encode(
        leaf.account, leaf.role, leaf.amount, leaf.reputation_delta, leaf.value, leaf.activity
    )))


@pure
@internal
def _pro_rata(revenue: uint256, amount: uint256, total: uint256) -> uint256:
    """`revenue * amount // total` (a reward leaf's part of revenue) without that product:
    revenue only grows, and an overflowing product would stop every claim for ever. Exact for
    `amount <= total <= C.MAX_AMOUNT` (escrows are bounded so): the remainder's product stays
    below 2**256."""
    return revenue // total * amount + revenue % total * amount // total


@pure
@internal
def _round_commitment(job_id: uint256, round: uint256, data: RoundData) -> bytes32:
    """Leaf `round` of a job's round accumulator."""
    return keccak256(abi_encode(
        job_id, round, data.model_root, data.updates_root, data.count, data.metrics_hash,
        data.epsilon_spent, data.aux_root, data.next_seed
    ))


@pure
@internal
def _chunk_width(index: uint256, n_params: uint256, chunk_size: uint256) -> uint256:
    """Number of values in chunk `index` of a vector of `n_params` values (0 past the end)."""
    start: uint256 = index * chunk_size
    if start >= n_params:
        return 0
    return min(chunk_size, n_params - start)


@pure
@internal
def _n_chunks(n_params: uint256, chunk_size: uint256) -> uint256:
    return (n_params + chunk_size - 1) // chunk_size
