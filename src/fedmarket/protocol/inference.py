"""The provable answer of a linear (softmax) model, exactly as `ModelMarket.dispute_answer`
re-executes it: fixed-point input in [0, ONE], integer class scores, the first best class.

The committed vector of a softmax job is its parameters at `fl.quantize.SCALE` (its initial
parameters are zeros, so nothing is added back): ``W`` row-major (features x classes), then
``b``. A class score is ``b[c] * ONE + sum_i x[i] * W[i][c]``; no rounding anywhere, so the
server, the caller and the contract agree bit for bit.
"""

from __future__ import annotations

import eth_abi
import numpy as np
from eth_utils import keccak

from ..fl.quantize import SCALE

ONE = SCALE  # ModelMarket.ONE
MAX_FEATURES = 256  # ModelMarket.MAX_FEATURES
MAX_CLASSES = 16  # ModelMarket.MAX_CLASSES
MAX_MODEL_CHUNKS = 96  # ModelMarket.MAX_MODEL_CHUNKS


def fixed_input(x_normalized: np.ndarray) -> list[int]:
    """A feature vector already scaled to [0, 1] as the contract's fixed-point input."""
    x = np.clip(np.asarray(x_normalized, dtype=np.float64).ravel(), 0.0, 1.0)
    return [int(v) for v in np.rint(x * ONE).astype(np.int64)]


def input_hash(x: list[int]) -> bytes:
    """keccak256(abi.encode(int256[] x)): what an Answer statement names."""
    return keccak(eth_abi.encode(["int256[]"], [list(x)]))


def linear_scores(q: np.ndarray, x: list[int], n_features: int, n_classes: int) -> list[int]:
    """Integer class scores of the linear model `q` at the fixed-point input `x` (Python ints: exact)."""
    q = [int(v) for v in np.asarray(q, dtype=np.int64)]
    if len(q) != (n_features + 1) * n_classes or len(x) != n_features:
        raise ValueError(f"a linear model of {n_features} features and {n_classes} classes has "
                         f"{(n_features + 1) * n_classes} parameters and takes {n_features} inputs")
    if any(v < 0 or v > ONE for v in x):
        raise ValueError("a fixed-point input lies in [0, ONE]")
    k = n_features * n_classes
    return [q[k + c] * ONE + sum(x[i] * q[i * n_classes + c] for i in range(n_features)) for c in range(n_classes)]


def first_best(scores: list[int]) -> int:
    """The answer's class: the first highest score (`ModelMarket._argmax`'s rule, also a proof's)."""
    return max(range(len(scores)), key=lambda c: (scores[c], -c))


def linear_answer(q: np.ndarray, x: list[int], n_features: int, n_classes: int) -> int:
    """The class the contract computes: the first highest score."""
    return first_best(linear_scores(q, x, n_features, n_classes))


def linear_shape(spec) -> tuple[int, int]:
    """(features, classes) a job's model is listed with: a softmax model's shape, (0, 0) otherwise
    (answers of other models are not re-executable on chain)."""
    if spec.model.kind != "softmax":
        return 0, 0
    return spec.data.n_features, spec.data.n_classes


def model_opening(q: np.ndarray, chunk_size: int) -> tuple[list[list[int]], list[list[bytes]]]:
    """Every chunk of a committed vector and its proof in the model root: what a dispute sends."""
    from .encoding import vector_tree

    q = np.asarray(q, dtype=np.int64).ravel()
    tree = vector_tree(q, chunk_size)
    chunks = [[int(v) for v in q[s : s + chunk_size]] for s in range(0, q.size, chunk_size)]
    return chunks, [tree.proof(i) for i in range(len(chunks))]
