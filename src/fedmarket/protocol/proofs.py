"""Build the arguments of the disputes contract's proofs from off-chain data (byte for byte)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .encoding import address_key, update_leaf, vector_tree
from .merkle import MerkleTree
from .receipts import LAST_PROVIDER

RULE_WEIGHTED_MEAN, RULE_MEDIAN, RULE_TRIMMED_MEAN, RULE_SECURE_SUM = 0, 1, 2, 3


@dataclass(frozen=True)
class RoundUpdate:
    """One aggregated update as the round's updates tree lists it."""

    provider: str
    q: np.ndarray
    weight: int
    chunk_size: int

    @property
    def root(self) -> bytes:
        return vector_tree(self.q, self.chunk_size).root


def sort_updates(updates: list[RoundUpdate]) -> list[RoundUpdate]:
    """Updates in the order the contracts expect: ascending provider address."""
    return sorted(updates, key=lambda u: address_key(u.provider))


ZERO_ADDRESS = "0x" + "00" * 20


def updates_leaves(updates: list, correction_root: bytes | None = None) -> list[tuple]:
    """(index, provider, update_root, weight, next) of each leaf, in order.

    `updates` are any objects with `provider`, `root` and `weight`, sorted by provider. A
    secure-aggregation round appends one more leaf, the mask correction's:
    `(count, 0x0, correction_root, 0, 0x0)`.
    """
    out = []
    for i, u in enumerate(updates):
        nxt = updates[i + 1].provider if i + 1 < len(updates) else LAST_PROVIDER
        out.append((i, u.provider, u.root, u.weight, nxt))
    if correction_root is not None:
        out.append((len(updates), ZERO_ADDRESS, correction_root, 0, ZERO_ADDRESS))
    return out


def updates_tree(updates: list, correction_root: bytes | None = None) -> MerkleTree:
    """The round's updates tree: leaves sorted by provider, each naming the next provider
    (and, for a secure-aggregation round, the mask correction's leaf last)."""
    return MerkleTree([update_leaf(*leaf) for leaf in updates_leaves(updates, correction_root)])


def round_data(model_q: np.ndarray, updates: list[RoundUpdate], metrics_hash: bytes, chunk_size: int) -> tuple:
    """The RoundData tuple (model_root, updates_root, count, metrics_hash) of a round."""
    return (vector_tree(model_q, chunk_size).root, updates_tree(updates).root, len(updates), metrics_hash)


def _chunk(q: np.ndarray, index: int, size: int) -> list[int]:
    return [int(v) for v in np.asarray(q, dtype=np.int64).ravel()[index * size : (index + 1) * size]]


def rank_hints(values: np.ndarray, rule: int, trim: int) -> tuple[list[int], list[int]]:
    """Order statistics at the kept ranks of each coordinate (rows = updates, columns = coordinates)."""
    if rule == RULE_WEIGHTED_MEAN:
        return [], []
    n = values.shape[0]
    lo_rank, hi_rank = ((n - 1) // 2, n // 2) if rule == RULE_MEDIAN else (trim, n - 1 - trim)
    s = np.sort(values, axis=0)
    return [int(v) for v in s[lo_rank]], [int(v) for v in s[hi_rank]]


def fraud_proof(
    *,
    job_id: int,
    round_: int,
    chunk_index: int,
    chunk_size: int,
    rule: int,
    trim: int,
    prev_model_q: np.ndarray | None,
    prev_data: tuple | None,
    new_model_q: np.ndarray,
    data: tuple,
    updates: list[RoundUpdate],
    correction: np.ndarray | None = None,
) -> tuple:
    """Positional arguments of `Disputes.prove_fraud` for one chunk of one round.

    `updates` must be the round's updates in leaf order; `prev_*` are None at round 0;
    `correction` is the mask correction of a secure-aggregation round (its last leaf).
    """
    vectors = [u.q for u in updates] + ([] if correction is None else [np.asarray(correction, dtype=np.int64)])
    leaves = updates_leaves(updates, None if correction is None else vector_tree(correction, chunk_size).root)
    utree = MerkleTree([update_leaf(*leaf) for leaf in leaves])
    openings = []
    for i, (leaf, q) in enumerate(zip(leaves, vectors)):
        vt = vector_tree(q, chunk_size)
        openings.append((leaf[1], leaf[2], leaf[3], leaf[4], utree.proof(i), _chunk(q, chunk_index, chunk_size),
                         vt.proof(chunk_index)))
    new_tree = vector_tree(new_model_q, chunk_size)
    if prev_model_q is None:
        prev_chunk, prev_proof, prev = [], [], (b"\x00" * 32, b"\x00" * 32, 0, b"\x00" * 32)
    else:
        prev_chunk = _chunk(prev_model_q, chunk_index, chunk_size)
        prev_proof = vector_tree(prev_model_q, chunk_size).proof(chunk_index)
        prev = prev_data
    values = np.array([o[5] for o in openings], dtype=object).astype(np.int64) if openings else np.zeros((0, 0))
    lo, hi = rank_hints(values, rule, trim) if rule != RULE_SECURE_SUM else ([], [])
    return (
        job_id, round_, chunk_index, data, prev, prev_chunk, prev_proof,
        _chunk(new_model_q, chunk_index, chunk_size), new_tree.proof(chunk_index), openings, lo, hi,
    )


def censorship_leaf(updates: list, provider: str, correction_root: bytes | None = None) -> tuple[tuple, list[bytes]]:
    """The leaf (and its proof) that shows `provider` is missing or altered in a round.

    `updates` are the round's updates in leaf order (any objects with `provider`, `root` and
    `weight`); a secure round's tree also has its correction leaf (`correction_root`), which is
    never the proving leaf (the contract refuses it). ValueError if no leaf covers `provider`.
    """
    leaves = updates_leaves(updates, correction_root)
    tree = MerkleTree([update_leaf(*leaf) for leaf in leaves])
    key = address_key(provider)
    for leaf in leaves[: len(updates)]:
        lp, nxt = address_key(leaf[1]), address_key(leaf[4])
        if (leaf[0] == 0 and key < lp) or lp < key < nxt or lp == key:
            return leaf, tree.proof(leaf[0])
    raise ValueError("no leaf covers that provider")


def reward_tree(leaves: list[dict]) -> MerkleTree:
    """The reward tree of a rewards document's leaves ({index, account, amount, reputation_delta})."""
    from .encoding import reward_leaf

    return MerkleTree(
        [reward_leaf(int(l["index"]), l["account"], int(l["amount"]), int(l["reputation_delta"])) for l in leaves]
    )
