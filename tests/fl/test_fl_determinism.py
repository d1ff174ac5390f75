"""Determinism of the integer path: bit-identical aggregates (compared by chunked Merkle root) across runs and machines."""

import numpy as np
import pytest

from fedmarket.fl.aggregate import fedavg_int, median_int, trimmed_mean_int
from fedmarket.fl.data import load_dataset, train_test_split
from fedmarket.fl.models import SoftmaxRegression, normalize
from fedmarket.fl.partition import dirichlet_partition
from fedmarket.fl.quantize import SCALE, dequantize, quantize
from fedmarket.fl.simulation import client_seed, federate
from fedmarket.fl.strategies import FedAvg, FedMedian, FedTrimmedMean
from fedmarket.fl.train import local_sgd_many
from fedmarket.protocol.encoding import decode_vector, encode_vector, vector_root

N_CLIENTS = 12


@pytest.fixture(scope="module")
def job():
    train, _ = train_test_split(load_dataset("digits"), 0.25, seed=0)
    X = normalize(train.X, train.feature_low, train.feature_high)
    parts = dirichlet_partition(train.y, N_CLIENTS, 1.0, seed=4)
    return SoftmaxRegression(64, 10), [X[p] for p in parts], [train.y[p] for p in parts]


def _round_updates(model, Xs, ys, seed=7):
    """One seeded round: every client's quantized delta from the zero model."""
    params = model.init_params()
    seeds = [client_seed(seed, 0, k) for k in range(len(Xs))]
    P = local_sgd_many(model, params, Xs, ys, epochs=2, batch_size=16, lr=0.5, seeds=seeds)
    return quantize(P - params), [len(y) for y in ys]


def test_pinned_roots_of_integer_rules_on_seeded_integers():
    # Integer inputs from a seeded PCG64 are the same everywhere, so these roots must be too: any
    # machine, any numpy build. They are what a contract recomputing the rules would commit (positional
    # chunk trees with int64-packed leaves; the aggregates themselves are the ones pinned before the
    # trees became positional, and before the leaves were packed: their old roots were checked equal).
    rng = np.random.Generator(np.random.PCG64(2026))
    Q = rng.integers(-(2**40), 2**40, size=(7, 1000), dtype=np.int64)
    w = [3, 1, 4, 1, 5, 9, 2]
    assert vector_root(fedavg_int(list(Q), w)).hex() == "a50ecea27041433aa925c8470764df0c59ca0db17086bd39b55488c2307dc40a"
    assert vector_root(median_int(Q)).hex() == "2eb7ae2ee4e1f7c99aca6ddaa5de3d704302500f2bf5a1b16f26a5daa372767d"
    assert vector_root(trimmed_mean_int(Q, 2)).hex() == "e376432745990e57a6dcf1d49a7c63ba6210662b8714c99e93025685943a178c"


@pytest.mark.parametrize("strategy", [FedAvg(), FedMedian(), FedTrimmedMean(0.25)], ids=lambda s: s.name)
def test_integer_aggregate_of_a_seeded_round_is_bit_identical_and_near_the_float_path(job, strategy):
    model, Xs, ys = job
    Q1, w = _round_updates(model, Xs, ys)
    Q2, _ = _round_updates(model, Xs, ys)
    # every update travels as canonical bytes and is committed by its chunked Merkle root
    blobs = [encode_vector(q) for q in Q1]
    assert blobs == [encode_vector(q) for q in Q2]
    assert [vector_root(q) for q in Q1] == [vector_root(q) for q in Q2]
    received = [decode_vector(b, model.n_params) for b in blobs]
    a1 = strategy.aggregate_int(received, w)
    a2 = strategy.aggregate_int(list(Q2), w)
    assert vector_root(a1) == vector_root(a2)
    # the float rule on the dequantized updates, quantized, is at most one step (2**-20) away
    via_float = quantize(strategy.aggregate(dequantize(Q1), np.asarray(w, dtype=float)))
    assert np.abs(a1 - via_float).max() <= 1
    assert np.abs(a1).max() > 1000  # a real, non-trivial aggregate


def test_a_whole_quantized_job_is_bit_identical_and_tracks_the_float_job(job):
    model, Xs, ys = job
    hp = dict(rounds=3, epochs=1, batch_size=16, lr=0.5, seed=3, fraction=0.5)
    r1 = federate(model, Xs, ys, FedAvg(), quantized=True, **hp)
    r2 = federate(model, Xs, ys, FedAvg(), quantized=True, **hp)
    q1, q2 = quantize(r1.params), quantize(r2.params)
    np.testing.assert_array_equal(dequantize(q1), r1.params)  # the quantized job's model is on the grid
    assert vector_root(q1) == vector_root(q2)
    flt = federate(model, Xs, ys, FedAvg(), quantized=False, **hp)
    # three rounds of quantization error (half a step per update and per round, then floor) stay a few steps
    assert np.abs(r1.params - flt.params).max() < 16 / SCALE
