"""A private anvil for the dashboard tests (required in CI, skipped locally without it)."""

from __future__ import annotations

import json
import os
import urllib.request

import pytest

from fedmarket.chain.anvil import AnvilNode, anvil_missing, find_anvil


@pytest.fixture(scope="module")
def anvil():
    """An anvil whose blocks are one second apart; tests move its clock (nobody else uses it)."""
    if find_anvil() is None:
        if os.environ.get("CI"):
            pytest.fail(f"anvil is required in CI: {anvil_missing()}")
        pytest.skip(anvil_missing())
    with AnvilNode() as n:
        yield n


@pytest.fixture(scope="module")
def advance(anvil):
    """`advance(seconds)`: move this private node's clock (the test's own chain: nobody else's
    deadlines move) and mine a block."""

    def move(seconds: int) -> None:
        latest = int(node_rpc(anvil.url, "eth_getBlockByNumber", ["latest", False])["timestamp"], 16)
        node_rpc(anvil.url, "evm_setNextBlockTimestamp", [latest + int(seconds)])
        node_rpc(anvil.url, "evm_mine", [])

    return move


def node_rpc(url: str, method: str, params: list):
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())["result"]

