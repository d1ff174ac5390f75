"""Retry-safe transactions: a connection that drops mid-send never makes a transaction happen twice.

Between `RpcChain` and anvil sits a small HTTP proxy that can, for chosen requests, forward
them and then cut the connection without answering (the node did it, the client cannot know),
cut it before forwarding (the node never saw it), or answer `null` to a transaction lookup.
Whatever it does, every account's nonce ends equal to the number of transactions it meant
to send, and each distinct signed transaction reaches the chain once.
"""

from __future__ import annotations

import threading

import pytest
from eth_account import Account as EthAccount

from fedmarket.chain.anvil import AnvilNode
from fedmarket.chain.base import Account
from fedmarket.chain.rpc_backend import RpcChain
from fedmarket.market import Deployment
from fedmarket.testing.localjob import RpcProxy

pytestmark = pytest.mark.anvil

TOKEN = 10**18


class FlakyProxy(RpcProxy):
    """JSON-RPC proxy in front of `upstream` that misbehaves on chosen requests.

    `plan[method]` is a list of actions for that method's successive calls:
    "ok", "drop-after" (forward, then close without answering), "drop-before"
    (close without forwarding) or "null" (answer result null without forwarding).
    """

    def __init__(self, upstream: str, plan: dict[str, list[str]]):
        self.plan = {k: list(v) for k, v in plan.items()}
        self.seen: dict[str, int] = {}
        self.raw_txs: list[str] = []  # every eth_sendRawTransaction payload that reached the node
        super().__init__(upstream)

    def decide(self, method: str, doc: dict) -> str:
        self.seen[method] = self.seen.get(method, 0) + 1
        todo = self.plan.get(method)
        return todo.pop(0) if todo else "ok"

    def forwarded(self, method: str, doc: dict) -> None:
        if method == "eth_sendRawTransaction":
            self.raw_txs.append(doc["params"][0])


def mined_nonce(node: AnvilNode, address: str) -> int:
    return int(node.rpc("eth_getTransactionCount", [address, "latest"]), 16)


def fresh_account(node: AnvilNode, tag: str) -> Account:
    acct = Account.derive(f"rpc-retry-{tag}", 0)
    node.rpc("anvil_setBalance", [acct.address, hex(10**21)])
    return acct


def deploy_and_mint(chain: RpcChain, deployer: Account, holder: str) -> tuple[Deployment, int]:
    """The intents of this test: one deployment per contract (the token and the protocol's) and 2
    token transactions; returns (deployment, count)."""
    dep = Deployment.deploy(chain, deployer, deployer.address)
    dep.token.transact("mint", holder, 5 * TOKEN, sender=deployer)
    dep.token.transact("mint", holder, 7 * TOKEN, sender=deployer)
    return dep, len(dep.addresses()) + 2


def test_reply_lost_after_forwarding_is_found_not_resent(node):
    deployer = fresh_account(node, "after")
    plan = {"eth_sendRawTransaction": ["drop-after", "ok", "drop-after", "ok", "ok", "drop-after"]}
    with FlakyProxy(node.url, plan) as proxy:
        chain = RpcChain(proxy.url)
        dep, intents = deploy_and_mint(chain, deployer, deployer.address)
        assert dep.balance(deployer.address) == 12 * TOKEN
    assert mined_nonce(node, deployer.address) == intents
    assert chain.resends == 0  # each time the node had it: found by hash, not sent again
    assert len(proxy.raw_txs) == len(set(proxy.raw_txs)) == intents


def test_request_lost_before_the_node_is_resent_with_the_same_bytes(node):
    deployer = fresh_account(node, "before")
    plan = {"eth_sendRawTransaction": ["ok", "drop-before", "ok", "ok", "drop-before", "drop-before", "ok"]}
    with FlakyProxy(node.url, plan) as proxy:
        chain = RpcChain(proxy.url)
        dep, intents = deploy_and_mint(chain, deployer, deployer.address)
        assert dep.balance(deployer.address) == 12 * TOKEN
        sends = proxy.seen["eth_sendRawTransaction"]
    assert chain.resends == 3
    assert sends == intents + 3  # three resends ...
    assert len(proxy.raw_txs) == len(set(proxy.raw_txs)) == intents  # ... of the same signed bytes, each mined once
    assert mined_nonce(node, deployer.address) == intents


def test_resend_of_a_mined_tx_is_recognised_as_the_first(node):
    """The node did mine it, but a lagging lookup says it does not know it: the resend is refused
    ('nonce too low' / 'already known') and the chain then finds the first copy's receipt."""
    deployer = fresh_account(node, "lagging")
    plan = {"eth_sendRawTransaction": ["drop-after"], "eth_getTransactionByHash": ["null"]}
    with FlakyProxy(node.url, plan) as proxy:
        chain = RpcChain(proxy.url)
        dep, intents = deploy_and_mint(chain, deployer, deployer.address)
        assert dep.balance(deployer.address) == 12 * TOKEN
    assert chain.resends == 1
    assert len(set(proxy.raw_txs)) == intents
    assert mined_nonce(node, deployer.address) == intents


def test_a_multi_account_job_survives_dropped_connections(node):
    """Mid-job, from four accounts in four threads, every few transactions lose their reply, one
    send and one receipt poll are cut before reaching the node; the job ends with the right
    balances and one transaction per intent: every nonce equals the intents of its account."""
    deployer = fresh_account(node, "job")
    holders = [fresh_account(node, f"job-{i}") for i in range(3)]
    plan = {
        "eth_sendRawTransaction": (["ok"] * 3 + ["drop-after"]) * 5 + ["drop-before"],
        "eth_getTransactionReceipt": ["ok"] * 10 + ["drop-before"],
    }
    with FlakyProxy(node.url, plan) as proxy:
        chain = RpcChain(proxy.url)
        dep = Deployment.deploy(chain, deployer, deployer.address)
        intents = {deployer.address: len(dep.addresses()) + len(holders)}  # one deployment per contract, one mint per holder
        for h in holders:
            dep.token.transact("mint", h.address, 100 * TOKEN, sender=deployer)
        errors: list[BaseException] = []

        def work(i: int, me: Account) -> None:
            try:
                nxt = holders[(i + 1) % len(holders)].address
                for _ in range(4):  # four transfers of 10 to the next holder
                    dep.token.transact("transfer", nxt, 10 * TOKEN, sender=me)
                dep.token.transact("approve", deployer.address, 1, sender=me)
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i, h)) for i, h in enumerate(holders)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        for h in holders:
            intents[h.address] = 5
            assert dep.balance(h.address) == 100 * TOKEN  # gave 40, got 40
    distinct = set(proxy.raw_txs)
    assert len(distinct) == len(proxy.raw_txs) == sum(intents.values())  # no signed tx reached the node twice
    senders: dict[str, int] = {}
    for raw in distinct:
        sender = EthAccount.recover_transaction(raw)
        senders[sender] = senders.get(sender, 0) + 1
    assert senders == intents
    for sender, count in intents.items():
        assert mined_nonce(node, sender) == count, sender  # no duplicate, no gap
    assert chain.resends >= 1


def test_a_market_job_survives_dropped_connections(node, tmp_path):
    """The whole protocol (deploy, join, rounds, settle, claims) with replies lost mid-job."""
    from fedmarket.runner import JobConfig, run_job

    plan = {
        "eth_sendRawTransaction": ["ok", "ok", "drop-before"] + (["ok"] * 3 + ["drop-after"]) * 6,
        "eth_getTransactionReceipt": ["ok"] * 10 + ["drop-before"],
    }
    with FlakyProxy(node.url, plan) as proxy:
        chain = RpcChain(proxy.url)
        report = run_job(chain, tmp_path, JobConfig(providers=3, rounds=2, seed=7))
        assert not proxy.plan["eth_sendRawTransaction"]  # every planned cut happened mid-job
    assert report["conserved"] is True
    distinct = set(proxy.raw_txs)
    assert len(distinct) == len(proxy.raw_txs)  # no signed transaction reached the node twice
    senders: dict[str, int] = {}
    for raw in distinct:
        sender = EthAccount.recover_transaction(raw)
        senders[sender] = senders.get(sender, 0) + 1
    for sender, count in senders.items():
        assert mined_nonce(node, sender) == count, sender  # one nonce per intent: no duplicate, no gap
    assert chain.resends >= 1


def test_node_down_for_good_is_a_clear_error(node):
    from fedmarket.chain.rpc_backend import NodeUnreachable

    deployer = fresh_account(node, "down")
    with FlakyProxy(node.url, {"eth_sendRawTransaction": ["drop-before"] * 20}) as proxy:
        chain = RpcChain(proxy.url)
        chain.retry_backoff = 0.001
        with pytest.raises(NodeUnreachable, match="eth_sendRawTransaction"):
            Deployment.deploy(chain, deployer, deployer.address)
    assert mined_nonce(node, deployer.address) == 0
