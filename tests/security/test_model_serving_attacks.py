"""The model market after training, attacked through the real roles on the session chain: a
stranger paying itself a server's share, a model owner taking a server's share or stranding what
it answered, a server colluding with a Sybil caller to charge an honest caller's tab through
a usage root whose leaves it withholds, and a server withholding a final root's leaves so that
no caller can refund, beside a caller lying about what it spent. Tokens are conserved in every case."""

from __future__ import annotations

import pytest
from sec_support import revert

from fedmarket.errors import FedMarketError
from fedmarket.protocol.receipts import Tab
from fedmarket.protocol.usage import Leaf, UsageTree
from fedmarket.roles.caller import ModelCaller
from fedmarket.roles.model_owner import Offer, list_model
from fedmarket.roles.server import ModelServer, QueryRefused
from fedmarket.roles.tabs import audit_usage, declare_spent, refund_tab
from fedmarket.storage import open_store

TOKEN = 10**18
PRICE = TOKEN // 100
STAKE = 5 * TOKEN


@pytest.fixture
def listed(make):
    """A settled digits job whose model is listed, and a staked server for it (the job's terms leave
    30% of the model's revenue to its owner and servers together)."""
    sim = make(licence_requester_bps=3_000)
    sim.driver.run()
    list_model(sim.dep, sim.store, sim.c.requester, sim.job, Offer(query_price=PRICE, owner_bps=0, server_bps=2_000,
                                                                  server_stake=STAKE))
    server = ModelServer(sim.dep, sim.c.validators[-1], sim.store, sim.job)
    server.ensure_staked()
    return sim, server


def contracts_total(sim) -> int:
    dep = sim.dep
    return sim.total() + dep.balance(dep.model_market.address) + dep.balance(dep.usage_rollup.address)


def funded_callers(sim, server, funds: dict) -> list[ModelCaller]:
    """A caller of `server` for each account, its tab funded with the amount given."""
    callers = [ModelCaller(sim.dep, account, sim.job, server.address) for account in funds]
    for caller, amount in zip(callers, funds.values()):
        caller.fund(amount)
    return callers


def test_nobody_but_the_rollup_pays_a_model_with_shares_of_its_choosing(listed):
    sim, _ = listed
    mm, stranger = sim.dep.model_market, sim.c.stranger
    sim.dep.token.transact("approve", mm.address, 10 * PRICE, sender=stranger)
    revert(mm.transact, "pay", sim.job, stranger.address, 10 * PRICE, 0, 9_000, sender=stranger,
           match="model: not the usage rollup")


def test_the_owner_cannot_take_the_share_of_usage_a_server_answered(listed):
    sim, server = listed
    mm, owner = sim.dep.model_market, sim.c.requester
    caller = ModelCaller(sim.dep, sim.c.stranger, sim.job, server.address)
    caller.buy(5)
    for row in sim.driver.cast.providers[0].X[:3]:
        server.answer(list(row), *caller.next_receipt())
    # the owner cuts the server share (for servers that stake later) and raises the stake new servers
    # need: neither takes what this one answered, nor its share
    mm.transact("set_offer", sim.job, Offer(query_price=PRICE, owner_bps=0, server_bps=0, server_stake=2 * STAKE).abi(),
                sender=owner)
    before = int(mm.call("owed", server.address))
    server.settle()
    assert int(mm.call("owed", server.address)) - before == 3 * PRICE * 2_000 // 10_000


def test_a_server_and_its_sybil_cannot_charge_an_honest_tab_through_withheld_leaves(listed):
    sim, server = listed
    dep, ru, store = sim.dep, sim.dep.usage_rollup, sim.store
    honest, sybil = sim.c.stranger, sim.c.providers[-1]
    total = contracts_total(sim)
    honest_c, sybil_c = funded_callers(sim, server, {honest: 10 * PRICE, sybil: PRICE})
    row = list(sim.driver.cast.providers[0].X[0])
    server.answer(row, *honest_c.next_tab()[::2], spent=honest_c.tab_spent)
    # the sybil's one-query tab: its second query is refused at the server's own door
    server.answer(row, *sybil_c.next_tab()[::2], spent=sybil_c.tab_spent)
    with pytest.raises(QueryRefused, match="exceeds its credit"):
        server.answer(row, *sybil_c.next_tab()[::2], spent=sybil_c.tab_spent)
    # so the server posts the inflated root by hand, its leaves published nowhere
    server.tabs.ensure_bonded(60 * PRICE)
    cheat = UsageTree([Leaf(honest.address, 1, PRICE), Leaf(sybil.address, 50, 50 * PRICE)])
    revert(ru.transact, "post_usage", sim.job, cheat.top.as_tuple(), cheat.n, "withheld", sender=server.account,
           match="rollup: more than the tabs hold")  # the pool of this server's tabs is 11 queries
    cheat = UsageTree([Leaf(honest.address, 1, PRICE), Leaf(sybil.address, 10, 10 * PRICE)])  # all of the honest tab
    ru.transact("post_usage", sim.job, cheat.top.as_tuple(), cheat.n, "withheld", sender=server.account)
    # the honest caller audits: the leaves are missing, so the server must reveal them on chain, and cannot
    found = audit_usage(dep, honest, store, sim.job, server.address)
    assert found == ["the pending root's leaves are unavailable or do not make the root: challenged to reveal them all"]
    leaves, siblings = cheat.chunk(0)
    sigs = [Tab(sim.job, server.address, q, s).sign(a.key, dep.chain_id, ru.address)
            for a, (_, q, s) in zip(sorted((honest, sybil), key=lambda x: int(x.address, 16)), leaves)]
    revert(ru.transact, "reveal_leaves", sim.job, 0, leaves, sigs, siblings, sender=server.account, match="past its tab")
    sim.chain.advance_time(int(ru.call("ANSWER_WINDOW")))
    bond = int(ru.call("bond", sim.job, server.address))
    ev = ru.transact("timeout", sim.job, server.address, ru.call("REVEAL_SLOT"), sender=honest).event("UsageRejected")
    assert (ev["challenger"], ev["slashed"]) == (honest.address, bond)
    # nothing left the tabs: the honest caller takes back all it did not spend (one query was never posted)
    ru.transact("request_refund", sim.job, server.address, sender=honest)
    sim.chain.advance_time(int(ru.call("REFUND_DELAY")))
    assert refund_tab(dep, honest, store, sim.job, server.address).event("TabRefunded")["amount"] == 10 * PRICE
    assert contracts_total(sim) == total


def test_a_server_withholding_its_final_leaves_cannot_lock_tabs_nor_a_caller_lie_its_way_out(listed, tmp_path):
    """Two attackers at once. The server publishes its usage leaves only to a store of its own, and
    its period goes final with nobody having audited it in the hour: no caller can open its place
    to refund. A caller that spent 4 queries then declares it spent nothing. The honest caller
    declares what it signed and is refunded exactly its unspent tab; the server's own TabBook, at
    its next step, raises the lie with the liar's signed Tab, so the liar gets back only what it did
    not spend. The server's bond is untouched and tokens are conserved."""
    sim, server = listed
    dep, ru, store = sim.dep, sim.dep.usage_rollup, sim.store
    honest, liar = sim.c.stranger, sim.c.providers[-1]
    total = contracts_total(sim)
    honest_c, liar_c = funded_callers(sim, server, {honest: 10 * PRICE, liar: 10 * PRICE})
    row = list(sim.driver.cast.providers[0].X[0])
    for c, n in ((honest_c, 3), (liar_c, 4)):
        for _ in range(n):
            server.answer(row, *c.next_tab()[::2], spent=c.tab_spent)
    server.tabs.store = open_store(tmp_path / "server-only")  # the leaves go where no caller reads
    assert any("usage root posted" in m for m in server.tabs.step())
    sim.chain.advance_time(int(ru.call("CHALLENGE_WINDOW")))
    assert any("usage root final" in m for m in server.tabs.step())
    assert audit_usage(dep, honest, store, sim.job, server.address) == []  # nothing pending, nothing to raise
    ru.transact("request_refund", sim.job, server.address, sender=honest)
    sim.chain.advance_time(int(ru.call("REFUND_DELAY")))
    with pytest.raises(FedMarketError, match="final usage root's leaves are unavailable: ask for the refund with declare_spent"):
        refund_tab(dep, honest, store, sim.job, server.address)
    declare_spent(dep, honest, sim.job, server.address, honest_c.tab_spent)
    declare_spent(dep, liar, sim.job, server.address, 0)
    raised = [m for m in server.tabs.step() if m.startswith("raised")]
    assert raised and raised[0].startswith(f"raised {liar.address}'s refund declaration from 0 to {4 * PRICE}"), raised
    bond = int(ru.call("bond", sim.job, server.address))
    sim.chain.advance_time(int(ru.call("REFUND_DELAY")))
    assert refund_tab(dep, honest, store, sim.job, server.address).event("TabRefunded")["amount"] == 7 * PRICE
    assert refund_tab(dep, liar, store, sim.job, server.address).event("TabRefunded")["amount"] == 6 * PRICE
    assert int(ru.call("bond", sim.job, server.address)) == bond
    assert contracts_total(sim) == total
