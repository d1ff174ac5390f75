"""Tests for fedmarket.fl.partition: IID and Dirichlet label-skew splits."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmarket.errors import ConfigError
from fedmarket.fl.data import load_dataset
from fedmarket.fl.partition import dirichlet_partition, iid_partition, shard_partition

FAST = settings(max_examples=60, deadline=None, database=None)


@st.composite
def labels_and_clients(draw):
    n = draw(st.integers(1, 300))
    k = draw(st.integers(1, 10))
    seed = draw(st.integers(0, 2**32 - 1))
    y = np.random.default_rng(seed).integers(0, k, n)
    n_clients = draw(st.integers(1, n))
    return y, n_clients, draw(st.integers(0, 2**32 - 1))


def _assert_exact_cover(parts, n, n_clients):
    assert len(parts) == n_clients
    assert all(p.dtype == np.int64 and p.ndim == 1 for p in parts)
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(n))


@FAST
@given(labels_and_clients())
def test_iid_partition_covers_once_balanced_and_deterministic(args):
    y, n_clients, seed = args
    parts = iid_partition(y, n_clients, seed)
    _assert_exact_cover(parts, len(y), n_clients)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    again = iid_partition(y, n_clients, seed)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))


@FAST
@given(labels_and_clients(), st.sampled_from([0.05, 0.5, 5.0, 100.0]))
def test_dirichlet_partition_covers_once_and_is_deterministic(args, alpha):
    y, n_clients, seed = args
    parts = dirichlet_partition(y, n_clients, alpha, seed, min_size=0)
    _assert_exact_cover(parts, len(y), n_clients)
    again = dirichlet_partition(y, n_clients, alpha, seed, min_size=0)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))


def test_partitions_differ_between_seeds():
    y = load_dataset("digits").y
    a = dirichlet_partition(y, 10, 0.5, seed=0)
    b = dirichlet_partition(y, 10, 0.5, seed=1)
    assert any(not np.array_equal(p, q) for p, q in zip(a, b))
    c = iid_partition(y, 10, seed=0)
    d = iid_partition(y, 10, seed=1)
    assert any(not np.array_equal(p, q) for p, q in zip(c, d))


def test_dirichlet_default_min_size_is_two():
    y = load_dataset("digits").y
    parts = dirichlet_partition(y, 50, 0.1, seed=0)
    assert min(len(p) for p in parts) >= 2


def _mean_label_entropy(y, parts):
    ent = []
    for p in parts:
        freq = np.bincount(y[p], minlength=10) / len(p)
        freq = freq[freq > 0]
        ent.append(-(freq * np.log(freq)).sum())
    return float(np.mean(ent))


def test_small_alpha_is_more_skewed_than_large_alpha():
    y = load_dataset("digits").y
    h_small = np.mean([_mean_label_entropy(y, dirichlet_partition(y, 20, 0.1, s)) for s in range(3)])
    h_large = np.mean([_mean_label_entropy(y, dirichlet_partition(y, 20, 100.0, s)) for s in range(3)])
    h_iid = _mean_label_entropy(y, iid_partition(y, 20, 0))
    assert h_small < h_large - 0.5
    assert h_large == pytest.approx(h_iid, abs=0.1)
    assert h_iid > 0.95 * np.log(10)


@pytest.mark.parametrize("n_clients", [0, -1, 11])
def test_bad_client_counts_raise(n_clients):
    y = np.arange(10) % 2
    with pytest.raises(ConfigError, match="n_clients"):
        iid_partition(y, n_clients, 0)
    with pytest.raises(ConfigError, match="n_clients"):
        dirichlet_partition(y, n_clients, 1.0, 0, min_size=0)


@pytest.mark.parametrize("alpha", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_alpha_raises(alpha):
    with pytest.raises(ConfigError, match="alpha"):
        dirichlet_partition(np.arange(10) % 2, 2, alpha, 0)


def test_too_few_samples_raises_immediately():
    with pytest.raises(ConfigError, match="too few samples"):
        dirichlet_partition(np.arange(10) % 2, 6, 1.0, 0, min_size=2)


def test_hopeless_draws_stop_after_bounded_tries():
    # 20 samples of one class over 10 clients, alpha tiny: one client gets almost all.
    with pytest.raises(ConfigError, match="too few samples.*10 clients"):
        dirichlet_partition(np.zeros(20, dtype=int), 10, 1e-3, 0, min_size=2)


# ---------------------------------------------------------------- shards


@FAST
@given(labels_and_clients(), st.integers(1, 4))
def test_shard_partition_covers_once_and_is_deterministic(args, shards):
    y, n_clients, seed = args
    if n_clients * shards > len(y):
        with pytest.raises(ConfigError, match="too few samples"):
            shard_partition(y, n_clients, shards, seed)
        return
    parts = shard_partition(y, n_clients, shards, seed)
    _assert_exact_cover(parts, len(y), n_clients)
    again = shard_partition(y, n_clients, shards, seed)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))


def test_shard_partition_is_pathologically_skewed():
    y = load_dataset("digits").y
    parts = shard_partition(y, 50, 2, seed=0)
    labels_per_client = [len(np.unique(y[p])) for p in parts]
    assert np.mean(labels_per_client) <= 3.0  # McMahan et al.: most clients see about two digits
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 2
    with pytest.raises(ConfigError, match="shards_per_client"):
        shard_partition(y, 5, 0, seed=0)
