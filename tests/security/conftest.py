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


@pytest.fixture
def largest_read(monkeypatch) -> list[int]:
    """`[n]`: the most bytes any role read at once from a directory blob store during the test."""
    from fedmarket.storage.blobstore import LocalBlobStore

    largest = [0]
    read = LocalBlobStore._read

    def counting(self, cid):
        data = read(self, cid)
        largest[0] = max(largest[0], len(data))
        return data

    monkeypatch.setattr(LocalBlobStore, "_read", counting)
    return largest
