"""Fixtures of the attack tests: the session chain (`sec_support.new_chain`), rolled back after
every test, and `make(**options)`, a job of real roles on it (`sec_support.build`)."""

from __future__ import annotations

import pytest
from sec_support import Chain, Sim, build, new_chain


@pytest.fixture(scope="session")
def sec_chain() -> Chain:
    return new_chain()


@pytest.fixture
def chain(sec_chain):
    """The session chain, rolled back after the test."""
    with sec_chain.chain.snapshot():
        yield sec_chain


@pytest.fixture
def make(chain, tmp_path):
    """`make(**options)`: a `Sim` on the test's snapshot of the session chain (see `build`)."""
    count = [0]

    def factory(**kw) -> Sim:
        count[0] += 1
        return build(chain, tmp_path / f"job{count[0]}", **kw)

    return factory
