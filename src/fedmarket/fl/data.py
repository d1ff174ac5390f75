"""Bundled scikit-learn datasets with their feature domains, stratified splits and subsets."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from sklearn import datasets as _skd

from fedmarket.errors import ConfigError, SchemaMismatch, UnknownDatasetError

DATASETS: tuple[str, ...] = ("digits", "iris", "wine", "breast_cancer")

_LOADERS = {
    "digits": _skd.load_digits,
    "iris": _skd.load_iris,
    "wine": _skd.load_wine,
    "breast_cancer": _skd.load_breast_cancer,
}


def _frozen(a: np.ndarray, dtype: type) -> np.ndarray:
    """Return a read-only copy of ``a`` with the given dtype."""
    out = np.array(a, dtype=dtype, copy=True)
    out.setflags(write=False)
    return out


@dataclass(frozen=True, eq=False)
class Dataset:
    """A labelled dataset with the domain bounds of its features.

    Attributes
    ----------
    name : str
        Name of the dataset (one of ``DATASETS`` for bundled sets).
    X : numpy.ndarray
        Raw features, float64, shape ``(n, d)``. Stored read-only.
    y : numpy.ndarray
        Integer labels in ``[0, num_classes)``, int64, shape ``(n,)``. Stored read-only.
    num_classes : int
        Number of classes of the full dataset (subsets keep it).
    feature_low, feature_high : numpy.ndarray
        Per-feature lower and upper bound of the domain, float64, shape ``(d,)``.
    """

    name: str
    X: np.ndarray
    y: np.ndarray
    num_classes: int
    feature_low: np.ndarray
    feature_high: np.ndarray

    def __post_init__(self) -> None:
        X = np.asarray(self.X)
        y = np.asarray(self.y)
        if X.ndim != 2:
            raise SchemaMismatch(f"dataset '{self.name}': X must be 2-D, got shape {X.shape}")
        if y.ndim != 1 or y.shape[0] != X.shape[0]:
            raise SchemaMismatch(
                f"dataset '{self.name}': y must be 1-D with {X.shape[0]} labels, got shape {y.shape}"
            )
        if y.size and not np.issubdtype(y.dtype, np.integer):
            if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
                raise SchemaMismatch(f"dataset '{self.name}': labels must be integers")
        if int(self.num_classes) < 1:
            raise SchemaMismatch(f"dataset '{self.name}': num_classes must be >= 1")
        if y.size and (y.min() < 0 or y.max() >= self.num_classes):
            raise SchemaMismatch(
                f"dataset '{self.name}': labels must lie in [0, {self.num_classes}), "
                f"got range [{y.min()}, {y.max()}]"
            )
        d = X.shape[1]
        low = np.asarray(self.feature_low)
        high = np.asarray(self.feature_high)
        if low.shape != (d,) or high.shape != (d,):
            raise SchemaMismatch(
                f"dataset '{self.name}': feature bounds must have shape ({d},), "
                f"got {low.shape} and {high.shape}"
            )
        object.__setattr__(self, "X", _frozen(X, np.float64))
        object.__setattr__(self, "y", _frozen(y, np.int64))
        object.__setattr__(self, "num_classes", int(self.num_classes))
        object.__setattr__(self, "feature_low", _frozen(low, np.float64))
        object.__setattr__(self, "feature_high", _frozen(high, np.float64))

    @property
    def n_samples(self) -> int:
        """Number of samples (rows of ``X``)."""
        return int(self.X.shape[0])

    @property
    def n_features(self) -> int:
        """Number of features (columns of ``X``)."""
        return int(self.X.shape[1])


@lru_cache(maxsize=None)
def load_dataset(name: str) -> Dataset:
    """Load one of scikit-learn's bundled datasets.

    Parameters
    ----------
    name : str
        One of ``DATASETS``.

    Returns
    -------
    Dataset
        The whole bundled set. For ``digits`` every pixel's domain is [0, 16];
        for the others the bounds are the per-feature min and max of the set.

    Raises
    ------
    UnknownDatasetError
        If ``name`` is not one of ``DATASETS``.
    """
    if name not in _LOADERS:
        raise UnknownDatasetError(
            f"unknown dataset '{name}'; choose one of: {', '.join(DATASETS)}"
        )
    bunch = _LOADERS[name]()
    X = np.asarray(bunch.data, dtype=np.float64)
    y = np.asarray(bunch.target, dtype=np.int64)
    if name == "digits":
        low = np.zeros(X.shape[1])
        high = np.full(X.shape[1], 16.0)
    else:
        low = X.min(axis=0)
        high = X.max(axis=0)
    return Dataset(
        name=name,
        X=X,
        y=y,
        num_classes=len(bunch.target_names),
        feature_low=low,
        feature_high=high,
    )


def subset(ds: Dataset, idx: np.ndarray) -> Dataset:
    """Return the rows ``idx`` of ``ds`` (same name, classes and feature bounds).

    Parameters
    ----------
    ds : Dataset
        Source dataset.
    idx : array_like of int or bool
        Row indices or a boolean mask of length ``ds.n_samples``.

    Returns
    -------
    Dataset
        A new dataset holding copies of the selected rows.
    """
    idx = np.asarray(idx)
    if idx.dtype != bool:
        idx = idx.astype(np.int64, copy=False)
    return Dataset(
        name=ds.name,
        X=ds.X[idx],
        y=ds.y[idx],
        num_classes=ds.num_classes,
        feature_low=ds.feature_low,
        feature_high=ds.feature_high,
    )


def train_test_split(ds: Dataset, test_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Split a dataset into train and test parts, stratified by class.

    Each class contributes ``round(test_fraction * n_class)`` of its samples,
    chosen at random, to the test part. Row order is preserved in both parts.

    Parameters
    ----------
    ds : Dataset
        Dataset to split.
    test_fraction : float
        Fraction of each class that goes to the test part, in (0, 1).
    seed : int
        Seed of the random choice.

    Returns
    -------
    tuple of Dataset
        ``(train, test)``.

    Raises
    ------
    ConfigError
        If ``test_fraction`` is not in (0, 1) or either part would be empty.
    """
    if not (0.0 < float(test_fraction) < 1.0):
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(ds.n_samples)
    y_perm = ds.y[perm]
    order = np.argsort(y_perm, kind="stable")  # grouped by class, random within class
    grouped = perm[order]
    counts = np.bincount(ds.y, minlength=ds.num_classes)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.arange(ds.n_samples) - np.repeat(starts, counts)
    n_test = np.rint(counts * float(test_fraction)).astype(np.int64)
    is_test = rank < np.repeat(n_test, counts)
    test_idx = np.sort(grouped[is_test])
    train_idx = np.sort(grouped[~is_test])
    if test_idx.size == 0 or train_idx.size == 0:
        raise ConfigError(
            f"test_fraction {test_fraction} leaves an empty train or test part "
            f"for {ds.n_samples} samples"
        )
    return subset(ds, train_idx), subset(ds, test_idx)
