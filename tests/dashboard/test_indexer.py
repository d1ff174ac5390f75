"""The dashboard's event indexer on a real anvil: it reads only from the deployment block, keeps
its state in SQLite, resumes where it stopped after a restart (no event twice, none missed), and
starts again when the node is not the chain it indexed; the job page's figures come from it."""

from __future__ import annotations

import json

import pytest

from fedmarket.chain.anvil import AnvilNode
from fedmarket.chain.rpc_backend import RpcChain
from fedmarket.dashboard import views
from fedmarket.dashboard.indexer import Indexer
from fedmarket.errors import ConfigError
from fedmarket.keys import dev_account
from fedmarket.market import Deployment
from fedmarket.roles import Requester
from fedmarket.spec import JobSpec
from fedmarket.storage import LocalBlobStore
from fedmarket.testing.localjob import RpcProxy

pytestmark = pytest.mark.anvil

DEPLOYER, REQ, AGG = (dev_account(i) for i in (0, 2, 3))


class LogsSpy(RpcProxy):
    """A pass-through to the node that records the block range of every eth_getLogs."""

    def __init__(self, upstream: str):
        self.ranges: list[tuple[int, int]] = []
        super().__init__(upstream)

    def decide(self, method: str, doc: dict) -> str:
        if method == "eth_getLogs":
            flt = doc["params"][0]
            self.ranges.append((int(flt["fromBlock"], 16), int(flt["toBlock"], 16)))
        return "ok"


def deploy(url: str, tmp_path) -> tuple[Deployment, dict]:
    chain = RpcChain(url)
    for acct in (DEPLOYER, REQ, AGG):
        chain.fund(acct.address, 10**21)
    dep = Deployment.deploy(chain, DEPLOYER, DEPLOYER.address, 100, 60)
    dep.token.transact("mint", REQ.address, 10**21, sender=DEPLOYER)
    return dep, {**dep.addresses(), "chain_id": chain.chain_id, "block": dep.token.from_block}


def post(dep: Deployment, tmp_path) -> int:
    from pathlib import Path

    spec = JobSpec.parse((Path(__file__).resolve().parents[2] / "examples" / "spec.json").read_bytes())
    return Requester(dep, REQ, LocalBlobStore(tmp_path / "blobs")).post(spec, AGG.address)


def test_reads_from_the_deployment_block_and_resumes_after_a_restart(anvil, tmp_path):
    # blocks before the deployment (someone else's activity) are never read
    chain = RpcChain(anvil.url)
    for _ in range(5):
        chain.fund(REQ.address, 10**21)
        anvil.rpc("evm_mine", [])
    dep, addresses = deploy(anvil.url, tmp_path)
    first = post(dep, tmp_path)
    db = tmp_path / "index.sqlite"
    with LogsSpy(anvil.url) as spy:
        idx = Indexer(RpcChain(spy.url), addresses, db, span=7)
        stored = idx.sync()  # the licence's constructor events (ownership, minter role) and the job's
        assert stored >= 2 and idx.next_block == dep.chain.block_number() + 1
        assert spy.ranges[0][0] == addresses["block"] > 5 and all(a >= addresses["block"] for a, _ in spy.ranges)
        assert all(b - a < 7 for a, b in spy.ranges)  # ranges of at most `span` blocks, contiguous
        assert all(spy.ranges[i + 1][0] == spy.ranges[i][1] + 1 for i in range(len(spy.ranges) - 1))
        assert idx.sync() == 0  # nothing new: nothing stored twice
        idx.close()
        second = post(dep, tmp_path)
        resumed_from = dep.chain.block_number()
        spy.ranges.clear()
        idx = Indexer(RpcChain(spy.url), addresses, db)
        assert idx.sync() == 1
        assert spy.ranges[0][0] <= resumed_from and spy.ranges[0][0] > addresses["block"]  # from where it stopped
    jobs = views.jobs(idx.db)
    assert [j["job_id"] for j in jobs] == [second, first] and all(j["escrow"] == 100 * 10**18 for j in jobs)
    total = idx.db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    assert total == stored + 1  # each event once
    terms = json.loads(idx.db.execute("SELECT doc FROM terms WHERE job_id = ?", (first,)).fetchone()[0])
    assert terms["max_providers"] == 3 and terms["aggregator"] == AGG.address
    idx.close()
    # an index belongs to one market: another deployment refuses it
    other = dict(addresses, market="0x" + "11" * 20)
    with pytest.raises(ConfigError, match="belongs to the market at"):
        Indexer(RpcChain(anvil.url), other, db)


def test_a_replaced_chain_is_indexed_again_from_the_start(tmp_path):
    """anvil restarted from scratch redeploys at the same addresses (same deployer nonces): the kept
    block hashes tell the chains apart, and the stale events are dropped (those of blocks the new
    chain holds too, the same by their hash, stay)."""
    from fedmarket.chain.anvil import find_anvil

    if find_anvil() is None:
        pytest.skip("anvil not installed")
    db = tmp_path / "index.sqlite"
    with AnvilNode() as one:
        dep, addresses = deploy(one.url, tmp_path)
        post(dep, tmp_path)
        post(dep, tmp_path)
        idx = Indexer(RpcChain(one.url), addresses, db)
        assert idx.sync() >= 2 and len(views.jobs(idx.db)) == 2
        idx.close()
    with AnvilNode() as two:
        dep2, addresses2 = deploy(two.url, tmp_path)
        assert addresses2["market"] == addresses["market"]
        post(dep2, tmp_path)
        idx = Indexer(RpcChain(two.url), addresses2, db)
        assert len(views.jobs(idx.db)) <= 1  # the old chain's second job is gone at once
        idx.sync()  # (nothing new when the new chain's job is in a block identical to the old one's)
        assert len(views.jobs(idx.db)) == 1
        fresh = Indexer(RpcChain(two.url), addresses2, tmp_path / "fresh.sqlite")
        fresh.sync()
        rows = "SELECT * FROM events ORDER BY block, log_index"
        assert idx.db.execute(rows).fetchall() == fresh.db.execute(rows).fetchall()  # as if read from scratch
        fresh.close()
        idx.close()


def test_the_fast_word_decoder_agrees_with_the_abi_codec_on_every_event():
    """Every indexed event whose fields are static words is decoded by slicing; on random values
    (negative ints, any address, flags) it gives exactly what eth_abi gives."""
    import random

    import eth_abi

    from fedmarket.chain import artifacts
    from fedmarket.dashboard.indexer import INDEXED, fast_decoder

    rng = random.Random(7)

    def value(typ: str):
        if typ == "address":
            return "0x" + rng.randbytes(20).hex()
        if typ == "bool":
            return rng.random() < 0.5
        if typ.startswith("uint"):
            return rng.choice([0, 1, rng.getrandbits(int(typ[4:]))])
        if typ.startswith("int"):
            bits = int(typ[3:])
            return rng.choice([-1, -(2 ** (bits - 1)), rng.getrandbits(bits - 1), -rng.getrandbits(bits - 2)])
        return rng.randbytes(int(typ[5:]))

    checked = 0
    for _, name in INDEXED:
        for spec in artifacts.load(name).abi.events_by_name.values():
            decode = fast_decoder(spec)
            if decode is None:
                continue
            for _ in range(20):
                vals = {n: value(t) for n, t, _ in spec.fields}
                topics = [spec.topic0] + [eth_abi.encode([t], [vals[n]]) for n, t, i in spec.fields if i]
                data = eth_abi.encode([t for _, t, i in spec.fields if not i], [vals[n] for n, _, i in spec.fields if not i])
                assert decode(topics, data) == spec.decode(topics, data), spec.name
                checked += 1
    assert checked >= 20 * 15  # most of the market's events take the fast path
