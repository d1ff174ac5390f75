"""Tests for fedmarket.fl.data: bundled datasets, stratified split and subsets."""

import numpy as np
import pytest

from fedmarket.errors import ConfigError, SchemaMismatch, UnknownDatasetError
from fedmarket.fl.data import DATASETS, Dataset, load_dataset, subset, train_test_split

EXPECTED = {
    "digits": (1797, 64, 10),
    "iris": (150, 4, 3),
    "wine": (178, 13, 3),
    "breast_cancer": (569, 30, 2),
}


def _toy(n: int = 60, k: int = 3) -> Dataset:
    """A dataset whose first feature is the row id, labels cycling over k classes."""
    X = np.column_stack([np.arange(n, dtype=float), np.ones(n)])
    y = np.arange(n) % k
    return Dataset("toy", X, y, k, np.zeros(2), np.array([n - 1.0, 1.0]))


@pytest.mark.parametrize("name", DATASETS)
def test_load_dataset_shapes_types_and_bounds(name):
    ds = load_dataset(name)
    n, d, k = EXPECTED[name]
    assert (ds.n_samples, ds.n_features, ds.num_classes) == (n, d, k)
    assert ds.X.dtype == np.float64 and ds.y.dtype == np.int64
    assert ds.feature_low.shape == ds.feature_high.shape == (d,)
    assert set(np.unique(ds.y)) == set(range(k))
    assert np.all(ds.X >= ds.feature_low) and np.all(ds.X <= ds.feature_high)
    if name == "digits":
        assert np.all(ds.feature_low == 0) and np.all(ds.feature_high == 16)
    else:
        np.testing.assert_array_equal(ds.feature_low, ds.X.min(axis=0))
        np.testing.assert_array_equal(ds.feature_high, ds.X.max(axis=0))


def test_dataset_arrays_are_read_only():
    ds = load_dataset("iris")
    with pytest.raises(ValueError):
        ds.X[0, 0] = 1.0
    with pytest.raises(ValueError):
        ds.y[0] = 1


def test_unknown_dataset_message():
    with pytest.raises(UnknownDatasetError) as exc:
        load_dataset("foo")
    assert str(exc.value) == (
        "unknown dataset 'foo'; choose one of: digits, iris, wine, breast_cancer"
    )
    assert isinstance(exc.value, ConfigError) and isinstance(exc.value, ValueError)


def test_dataset_rejects_inconsistent_data():
    with pytest.raises(SchemaMismatch, match="labels must lie"):
        Dataset("bad", np.zeros((3, 2)), np.array([0, 1, 5]), 3, np.zeros(2), np.ones(2))
    with pytest.raises(SchemaMismatch, match="feature bounds"):
        Dataset("bad", np.zeros((3, 2)), np.array([0, 1, 2]), 3, np.zeros(3), np.ones(3))
    with pytest.raises(SchemaMismatch, match="y must be 1-D"):
        Dataset("bad", np.zeros((3, 2)), np.array([0, 1]), 3, np.zeros(2), np.ones(2))


def test_train_test_split_partitions_rows_and_is_stratified():
    ds = _toy(n=61, k=3)
    train, test = train_test_split(ds, 0.25, seed=3)
    ids = np.concatenate([train.X[:, 0], test.X[:, 0]])
    np.testing.assert_array_equal(np.sort(ids), np.arange(61))
    # labels travel with their rows
    np.testing.assert_array_equal(train.y, train.X[:, 0].astype(int) % 3)
    np.testing.assert_array_equal(test.y, test.X[:, 0].astype(int) % 3)
    per_class = np.bincount(ds.y)
    np.testing.assert_array_equal(np.bincount(test.y), np.rint(per_class * 0.25))
    for part in (train, test):
        assert part.num_classes == 3 and part.name == "toy"
        np.testing.assert_array_equal(part.feature_high, ds.feature_high)


def test_train_test_split_digits_is_deterministic_per_seed():
    ds = load_dataset("digits")
    a_train, a_test = train_test_split(ds, 0.25, seed=0)
    b_train, b_test = train_test_split(ds, 0.25, seed=0)
    _, c_test = train_test_split(ds, 0.25, seed=1)
    np.testing.assert_array_equal(a_test.X, b_test.X)
    np.testing.assert_array_equal(a_train.y, b_train.y)
    assert not np.array_equal(a_test.X, c_test.X)
    assert a_train.n_samples + a_test.n_samples == ds.n_samples
    assert abs(a_test.n_samples - 0.25 * ds.n_samples) <= ds.num_classes


@pytest.mark.parametrize("frac", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_train_test_split_rejects_bad_fraction(frac):
    with pytest.raises(ConfigError, match="test_fraction"):
        train_test_split(_toy(), frac, seed=0)


def test_subset_selects_rows_and_keeps_metadata():
    ds = _toy()
    sub = subset(ds, np.array([5, 0, 7]))
    np.testing.assert_array_equal(sub.X[:, 0], [5, 0, 7])
    np.testing.assert_array_equal(sub.y, [2, 0, 1])
    assert sub.num_classes == ds.num_classes and sub.n_features == ds.n_features
    np.testing.assert_array_equal(sub.feature_low, ds.feature_low)
    mask = ds.y == 1
    assert subset(ds, mask).n_samples == int(mask.sum())
