"""A model server lying to its caller about the usage the caller signed there (found by the usage
review). Receipts are cumulative, and `fedmarket model query` signed the next one on top of the
figures the server reported at `GET /usage`: a server saying the caller had signed a count of 10**9
got a genuine `Usage(job, server, 10**9 + 1)`, and `settle_usage` took every credit the caller held
for the job; a server saying its tab was spent but for one query got the whole tab signed, a leaf
no challenge can undo. And the owner raising the query price to the whole tab had the next query
sign it all away. A caller now signs one query past its own figures (its record, the chain's
settled count, what it signed in this run), refuses a server's figure above them, and refuses a
tab price above its bound (by default its last tab query's price)."""

from __future__ import annotations

import json

import httpx
import pytest
from test_model_market import Shop, offer
from test_usage_rollup import PRICE

from fedmarket.errors import FedMarketError
from fedmarket.roles.caller import ModelCaller, ask

URL = "http://evil-server.test"
REAL_CLIENT = httpx.Client


def _evil_server(monkeypatch, shop, job, usage_doc: dict, seen: list):
    """A model server that lies in GET /usage and answers POST /query with a properly signed answer."""
    x = [0, 0, 0, 0]

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/usage":
            return httpx.Response(200, json=usage_doc | {"caller": request.url.params["caller"]})
        doc = json.loads(request.content)
        seen.append(doc)
        return httpx.Response(200, json={"answer": 0, "label": "0", "input": x, "count": doc["count"],
                                         "signature": "0x" + shop.answer_sig(job, x, 0).hex()})

    monkeypatch.setattr(httpx, "Client", lambda **kw: REAL_CLIENT(transport=httpx.MockTransport(handler), **kw))


def test_a_server_cannot_make_a_caller_sign_away_all_its_credits_for_one_query(kit, monkeypatch, tmp_path):
    shop = Shop(kit)
    job = shop.listed()
    shop.staked(job)
    victim = shop.buyers[0]
    caller = ModelCaller(kit.dep, victim, job.id, shop.server.address, count=0, record=tmp_path / "usage.json")
    caller.buy(100)
    seen: list = []
    _evil_server(monkeypatch, shop, job, {"count": 10**9, "tab_queries": 0, "tab_spent": 0, "access_count": 0}, seen)
    with pytest.raises(FedMarketError, match="the server says .* signed 1000000000 queries on credits"):
        ask(URL, caller, [0.1, 0.2, 0.3, 0.4], pay="credits")
    assert not seen  # nothing signed
    _evil_server(monkeypatch, shop, job, {"count": 0, "tab_queries": 0, "tab_spent": 0, "access_count": 0}, seen)
    ask(URL, caller, [0.1, 0.2, 0.3, 0.4], pay="credits")
    again = ModelCaller(kit.dep, victim, job.id, shop.server.address, count=0, record=tmp_path / "usage.json")
    _evil_server(monkeypatch, shop, job, {"count": 2, "tab_queries": 0, "tab_spent": 0, "access_count": 0}, seen)
    with pytest.raises(FedMarketError, match="signed 2 queries on credits"):  # a later run has the record
        ask(URL, again, [0.1, 0.2, 0.3, 0.4], pay="credits")
    _evil_server(monkeypatch, shop, job, {"count": 1, "tab_queries": 0, "tab_spent": 0, "access_count": 0}, seen)
    ask(URL, again, [0.1, 0.2, 0.3, 0.4], pay="credits")
    assert [d["count"] for d in seen] == [1, 2]
    q0 = shop.mm.call("credit", job.id, victim.address)[0]
    shop.settle(job, [(seen[-1]["count"], bytes.fromhex(seen[-1]["signature"][2:]))])
    assert shop.mm.call("credit", job.id, victim.address)[0] == q0 - 2


def _tab_caller(kit, tmp_path):
    """A listed job with a staked server, and a caller with a 100-query tab there (and a record)."""
    shop = Shop(kit)
    job = shop.listed()
    shop.staked(job)
    victim = shop.buyers[0]
    caller = ModelCaller(kit.dep, victim, job.id, shop.server.address, count=0, record=tmp_path / "usage.json")
    caller.fund(100 * PRICE)
    return shop, job, victim, caller


def test_a_server_cannot_make_a_caller_sign_away_its_whole_tab_for_one_query(kit, monkeypatch, tmp_path):
    shop, job, victim, caller = _tab_caller(kit, tmp_path)
    tab = 100 * PRICE
    price = int(shop.mm.call("offer", job.id)["query_price"])
    seen: list = []
    _evil_server(monkeypatch, shop, job, {"count": 0, "tab_queries": 0, "tab_spent": tab - price, "access_count": 0},
                 seen)
    with pytest.raises(FedMarketError, match="base units of its tab"):
        ask(URL, caller, [0.1, 0.2, 0.3, 0.4], pay="tab")
    assert not seen


def test_the_model_owner_cannot_raise_the_query_price_into_a_callers_whole_tab(kit, monkeypatch, tmp_path):
    shop, job, victim, caller = _tab_caller(kit, tmp_path)
    tab = 100 * PRICE
    seen: list = []
    _evil_server(monkeypatch, shop, job, {"count": 0, "tab_queries": 0, "tab_spent": 0, "access_count": 0}, seen)
    ask(URL, caller, [0.1, 0.2, 0.3, 0.4], pay="tab")
    price = seen[0]["spent"]
    shop.mm.transact("set_offer", job.id, offer(query_price=tab), sender=kit.requester)  # the owner
    again = ModelCaller(kit.dep, victim, job.id, shop.server.address, count=0, record=tmp_path / "usage.json")
    _evil_server(monkeypatch, shop, job, {"count": 0, "tab_queries": 1, "tab_spent": price, "access_count": 0}, seen)
    with pytest.raises(FedMarketError, match="above the .* this caller accepts"):
        ask(URL, again, [0.1, 0.2, 0.3, 0.4], pay="tab")
    assert len(seen) == 1
    ask(URL, again, [0.1, 0.2, 0.3, 0.4], pay="tab", max_price=tab)  # paid knowingly
    assert seen[-1]["spent"] == price + tab


def _honest_server(monkeypatch, shop, job, price, state):
    """A server admitting tab receipts as TabBook.admit does (exactly one query past the last
    admitted), whose first query is refused with TabBook's transient bond message."""
    x = [0, 0, 0, 0]

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/usage":
            return httpx.Response(200, json={"caller": request.url.params["caller"], "count": 0,
                                             "tab_queries": state["q"], "tab_spent": state["s"], "access_count": 0})
        doc = json.loads(request.content)
        if state["busy"]:
            state["busy"] -= 1
            return httpx.Response(403, json={"error": "the server cannot bond more usage this period; try later "
                                                      "(or pay with credits)"})
        if doc["count"] != state["q"] + 1 or doc["spent"] != state["s"] + price:
            return httpx.Response(403, json={"error": f"next tab receipt here is queries {state['q'] + 1}, "
                                                      f"spent {state['s'] + price}; got {doc['count']}, {doc['spent']}"})
        state["q"], state["s"] = doc["count"], doc["spent"]
        return httpx.Response(200, json={"answer": 0, "label": "0", "input": x, "count": doc["count"],
                                         "signature": "0x" + shop.answer_sig(job, x, 0).hex()})

    monkeypatch.setattr(httpx, "Client", lambda **kw: REAL_CLIENT(transport=httpx.MockTransport(handler), **kw))


def test_a_refused_query_does_not_lock_the_caller_out_of_its_tab(kit, monkeypatch, tmp_path):
    """The caller's record is written before its signature leaves, so a query the server refused
    (an honest server's "try later") left it one query ahead of what the server admitted, and the
    server admits exactly one query past its last: every later query was refused (found by the
    review of this fix). The next receipt builds on the server's figure, below the record."""
    shop, job, victim, caller = _tab_caller(kit, tmp_path)
    price = int(shop.mm.call("offer", job.id)["query_price"])
    state = {"q": 0, "s": 0, "busy": 0}
    _honest_server(monkeypatch, shop, job, price, state)
    ask(URL, caller, [0.1, 0.2, 0.3, 0.4], pay="tab")
    state["busy"] = 1
    with pytest.raises(FedMarketError, match="try later"):
        ask(URL, caller, [0.1, 0.2, 0.3, 0.4], pay="tab")
    ask(URL, caller, [0.1, 0.2, 0.3, 0.4], pay="tab")  # in this run ...
    again = ModelCaller(kit.dep, victim, job.id, shop.server.address, count=0, record=tmp_path / "usage.json")
    ask(URL, again, [0.1, 0.2, 0.3, 0.4], pay="tab")  # ... and in the next
    assert (state["q"], state["s"]) == (3, 3 * price)
