"""Shared fixtures: an embedded chain with the protocol deployed, funded accounts, a blob store."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

TOKEN = 10**18


@pytest.fixture(scope="session")
def boa_world():
    """One embedded chain for the session with token + market deployed and accounts funded."""
    from fedmarket.chain.boa_backend import BoaChain
    from fedmarket.market import Deployment

    chain = BoaChain()
    deployer, treasury, requester, aggregator = (chain.new_account("tests", i) for i in range(4))
    providers = [chain.new_account("tests", 100 + i) for i in range(6)]
    validators = [chain.new_account("tests", 200 + i) for i in range(4)]
    outsider = chain.new_account("tests", 999)
    dep = Deployment.deploy(chain, deployer, treasury.address, fee_bps=100, unbonding_delay=1_000)
    for acct in [requester, aggregator, outsider, *providers, *validators]:
        dep.token.transact("mint", acct.address, 10_000 * TOKEN, sender=deployer)
        dep.token.transact("approve", dep.market.address, 2**256 - 1, sender=acct)
    return {
        "chain": chain,
        "dep": dep,
        "deployer": deployer,
        "treasury": treasury,
        "requester": requester,
        "aggregator": aggregator,
        "providers": providers,
        "validators": validators,
        "outsider": outsider,
    }


@pytest.fixture
def world(boa_world):
    """The session world, rolled back after each test."""
    with boa_world["chain"].snapshot():
        yield boa_world


@pytest.fixture
def nats_server(tmp_path_factory):
    """A real `nats-server -js` on 127.0.0.1 (a port of its choosing, JetStream file storage in a
    fresh directory), terminated when the test ends. Required in CI, skipped locally without it."""
    from fedmarket.testing.natsserver import NatsServer, find_nats_server

    if find_nats_server() is None:
        if os.environ.get("CI"):
            pytest.fail("nats-server is required in CI: README line 2 installs it (apt-get install nats-server)")
        pytest.skip("nats-server not installed (apt-get install nats-server)")
    server = NatsServer(tmp_path_factory.mktemp("nats"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def anvil():
    """A private anvil (npm's, as the README installs it) whose blocks are one second apart; tests
    move its clock (nobody else uses it). Required in CI, skipped locally without it."""
    from fedmarket.chain.anvil import AnvilNode, anvil_missing, find_anvil

    if find_anvil() is None:
        if os.environ.get("CI"):
            pytest.fail(f"anvil is required in CI: {anvil_missing()}")
        pytest.skip(anvil_missing())
    with AnvilNode() as n:
        yield n


@pytest.fixture(scope="module")
def advance(anvil):
    """`advance(seconds)`: move the private node's clock (the test's own chain: nobody else's
    deadlines move) and mine a block."""

    def move(seconds: int) -> None:
        latest = int(anvil.rpc("eth_getBlockByNumber", ["latest", False])["timestamp"], 16)
        anvil.rpc("evm_setNextBlockTimestamp", [latest + int(seconds)])
        anvil.rpc("evm_mine", [])

    return move
