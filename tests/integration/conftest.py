"""The standalone node for integration tests: anvil from npm (required in CI, skipped locally without it)."""

from __future__ import annotations

import os

import pytest

from fedmarket.chain.anvil import AnvilNode, find_anvil


def _require_anvil() -> None:
    if find_anvil() is None:
        if os.environ.get("CI"):
            pytest.fail("anvil is required in CI: `npm install` must install @foundry-rs/anvil")
        pytest.skip("anvil not installed (run `npm install`)")


@pytest.fixture(scope="module")
def node():
    """An anvil whose blocks are one second apart (timestamps match the embedded chain)."""
    _require_anvil()
    with AnvilNode() as n:
        yield n


@pytest.fixture(scope="module")
def wallclock_node():
    """An anvil on wall-clock timestamps, as `fedmarket node` runs it (deadlines pass by themselves)."""
    _require_anvil()
    with AnvilNode(fixed_interval=False) as n:
        yield n


@pytest.fixture(scope="module")
def need_anvil():
    _require_anvil()
