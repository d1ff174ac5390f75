"""The model market end to end on the embedded chain: a softmax job settles, its owner lists it,
a caller prepays credits, the server's HTTP app answers (each answer checked against the job's
own predictions and signed), refuses what it must, settles the period's usage in one
transaction, a forged answer is slashed by on-chain re-execution, the contributors claim their
share, and every token is accounted for from balances."""

from __future__ import annotations

import numpy as np
import pytest
from starlette.testclient import TestClient
from test_model_jobs import cast_for, make_spec

from fedmarket.errors import FedMarketError
from fedmarket.market import JobState
from fedmarket.processes.serve import server_app
from fedmarket.protocol.inference import fixed_input, input_hash, linear_answer
from fedmarket.protocol.receipts import Answer
from fedmarket.roles.caller import ModelCaller, dispute_answer
from fedmarket.roles.model_owner import Offer, claim_usage_revenue, list_model, model_record
from fedmarket.roles.server import ModelServer

TOKEN = 10**18
PRICE = TOKEN // 100
STAKE = 10 * TOKEN


def query(client, caller, features, receipt=None):
    count, sig = receipt or caller.next_receipt()
    return client.post("/query", json={"features": [float(v) for v in features], "count": count,
                                       "signature": "0x" + sig.hex()})


@pytest.fixture
def settled_softmax(world, tmp_path):
    spec = make_spec({"kind": "softmax"}, 3, rounds=2)
    driver, ds = cast_for(world, tmp_path, spec)
    job = driver.run()
    assert driver.state == JobState.SETTLED
    return driver, ds, job


def test_credits_queries_settlement_slash_and_claims(world, settled_softmax):
    driver, ds, job = settled_softmax
    dep, store = world["dep"], driver.store
    requester, server_acct, buyer = world["requester"], world["providers"][5], world["validators"][3]
    treasury = world["treasury"].address
    providers = [p.account for p in driver.cast.providers]
    watched = [dep.model_market.address, requester.address, server_acct.address, buyer.address, treasury,
               *(p.address for p in providers)]
    start = {a: dep.balance(a) for a in watched}

    list_model(dep, store, requester, job, Offer(query_price=PRICE, owner_bps=1_000, server_bps=2_000, server_stake=STAKE))
    server = ModelServer(dep, server_acct, store, job)
    assert server.ensure_staked().startswith("staked") and server.ensure_staked() is None
    caller = ModelCaller(dep, buyer, job, server_acct.address)
    caller.buy(20)

    X = ds.X[:12]
    expected = server.jm.predict(server.trained.q, X)
    logs: list[str] = []
    with TestClient(server_app(server, period=3_600, say=logs.append)) as client:
        info = client.get("/info").json()
        assert info["model_root"] == "0x" + server.trained.model_root.hex() and info["linear_shape"] == [64, 10]
        answers = []
        for row in X:
            r = query(client, caller, row)
            assert r.status_code == 200, r.text
            answers.append(caller.check(r.json()))
        assert np.mean(np.array(answers) == expected) >= 0.9  # the integer argmax is the float model's but for near-ties
        stale = query(client, caller, X[0], receipt=(5, caller.next_receipt()[1]))
        caller.count -= 1
        assert stale.status_code == 400 and "next count" in stale.json()["error"]
        assert query(client, caller, X[0], receipt=(13, b"\x00" * 65)).status_code == 400
        assert query(client, caller, X[0][:10]).status_code == 400  # wrong feature count
        caller.count = 12
        for _ in range(8):
            assert query(client, caller, X[1]).status_code == 200
        over = query(client, caller, X[1])  # the 21st query: past the 20 credits
        assert over.status_code == 402 and "credit" in over.json()["error"]
    assert any("settled 20 queries of 1 callers" in m for m in logs), logs  # one transaction at shutdown
    rec = model_record(dep, job)
    assert (rec["queries_settled"], rec["gross_revenue"]) == (20, 20 * PRICE)

    # a forged answer: the server signs a class the model does not give; the caller proves it on chain
    x = fixed_input(server.jm.features(X[2:3])[0])
    right = linear_answer(server.trained.q, x, 64, 10)
    mm = dep.model_market.address

    def signed(cls: int) -> dict:
        sig = Answer(job, input_hash(x), cls).sign(server_acct.key, dep.chain_id, mm)
        return {"input": x, "answer": cls, "signature": "0x" + sig.hex()}

    forged = signed((right + 1) % 10)
    with pytest.raises(FedMarketError, match="nothing to dispute"):
        dispute_answer(dep, buyer, store, job, server_acct.address, signed(right))
    ev = dispute_answer(dep, buyer, store, job, server_acct.address, forged).event("AnswerSlashed")
    assert (ev["amount"], ev["challenger"]) == (STAKE, buyer.address)
    assert model_record(dep, job)["disputes_lost"] == 1 and not dep.model_market.call("serving", job, server_acct.address)

    # everyone takes what it is owed; the contributors by their reward leaves
    for acct in (server_acct, requester, buyer, world["treasury"]):
        dep.model_market.transact("withdraw", sender=acct)
    claimed = sum(claim_usage_revenue(dep, store, p, job).event("RevenueClaimed")["amount"] for p in providers)
    contributors = 20 * PRICE - 20 * PRICE // 100 - 20 * PRICE // 10 - 20 * PRICE // 5
    assert contributors - len(providers) <= claimed <= contributors
    delta = {a: dep.balance(a) - start[a] for a in watched}
    assert sum(delta.values()) == 0, "tokens appeared or vanished"
    assert delta[buyer.address] == -20 * PRICE + STAKE // 2
    assert delta[server_acct.address] == -STAKE + 20 * PRICE // 5
    assert delta[dep.model_market.address] == contributors - claimed  # only the rounding dust stays



def test_a_restarted_server_settles_what_it_answered(world, settled_softmax, tmp_path):
    """The journal of answered queries survives the server: a new one on the same journal expects
    each caller's next count and settles the queries the first one answered."""
    driver, ds, job = settled_softmax
    dep, store = world["dep"], driver.store
    list_model(dep, store, world["requester"], job, Offer(query_price=PRICE, server_stake=STAKE))
    journal = tmp_path / "receipts.jsonl"
    first = ModelServer(dep, world["providers"][5], store, job, journal=journal)
    first.ensure_staked()
    caller = ModelCaller(dep, world["validators"][3], job, first.address)
    caller.buy(10)
    for row in ds.X[:4]:
        first.answer(list(row), *caller.next_receipt())
    with open(journal, "a") as fh:
        fh.write('["0xcut short by a cra')  # a crash in the middle of a line
    second = ModelServer(dep, world["providers"][5], store, job, journal=journal)
    from fedmarket.roles.server import QueryRefused

    caller.count = 2
    with pytest.raises(QueryRefused, match="next count at this server is 5, not 3"):
        second.answer(list(ds.X[0]), *caller.next_receipt())
    caller.count = 4
    second.answer(list(ds.X[4]), *caller.next_receipt())
    assert second.settle()[0].event("UsageSettled")["queries"] == 5
    assert second.pending() == []
    assert len(journal.read_text().splitlines()) == 1  # compacted to the caller's latest receipt
    assert ModelServer(dep, world["providers"][5], store, job, journal=journal).latest == second.latest


def test_a_proof_is_made_only_for_a_paid_query_and_once_per_receipt(world, settled_softmax, monkeypatch):
    """The prover is expensive: the caller's credit is checked before it starts, and the same
    receipt sent again while its proof is under way is refused, so one credit buys one proof.
    (The real EZKL prover runs in tests/integration/test_proven_answers_anvil.py; here `_prove`
    is slowed down to hold the race open.)"""
    import threading

    from fedmarket.roles.server import QueryRefused

    driver, ds, job = settled_softmax
    dep, store = world["dep"], driver.store
    list_model(dep, store, world["requester"], job, Offer(query_price=PRICE, server_stake=STAKE))
    server = ModelServer(dep, world["providers"][5], store, job)
    server.ensure_staked()
    caller = ModelCaller(dep, world["validators"][3], job, server.address)
    with pytest.raises(QueryRefused, match="proves no answers"):  # no kit: not a proving server
        server.answer(list(ds.X[0]), *caller.next_receipt(), prove=True)
    caller.count = 0
    started, release, proofs = threading.Event(), threading.Event(), []

    def slow_prove(x, cls):  # proving until the test lets it end
        started.set()
        release.wait(30)
        proofs.append(cls)
        raise QueryRefused("stand-in prover")

    server.kit = object()
    monkeypatch.setattr(server, "_prove", slow_prove)
    monkeypatch.setattr(server, "_check_verifier", lambda: None)  # no circuit here (see test_rival_verifier.py)
    with pytest.raises(QueryRefused, match="has credit for 0"):  # no credit bought yet: no proof made
        server.answer(list(ds.X[0]), *caller.next_receipt(), prove=True)
    assert proofs == [] and not started.is_set()
    caller.buy(1)
    caller.count = 0
    receipt = caller.next_receipt()  # count 1: the caller's first paid query
    errors = []

    def ask():
        try:
            server.answer(list(ds.X[0]), *receipt, prove=True)
        except QueryRefused as exc:
            errors.append(str(exc))

    first = threading.Thread(target=ask)
    first.start()
    assert started.wait(10)
    ask()  # the same receipt again, while the first proof runs
    release.set()
    first.join()
    assert len(proofs) == 1
    assert any("being proven already" in e for e in errors)
    assert server.pending() == []  # the failed proof charged nothing


def tab_query(client, caller, features, receipt=None):
    q, s, sig = receipt or caller.next_tab()
    return client.post("/query", json={"features": [float(v) for v in features], "count": q, "spent": s,
                                       "signature": "0x" + sig.hex()})


def test_tabs_settle_a_period_in_one_root_audited_and_a_forged_root_slashed(world, settled_softmax, tmp_path):
    """Callers pay from tabs: the server answers over HTTP, posts one usage root for all of them,
    an auditor finds nothing to prove, the root goes final and pays the contributors. A forged root
    (usage nobody signed, leaves withheld) is caught by the caller it charges, whose challenge
    the server cannot answer;
    a caller takes its unspent tab back; every token is accounted for from balances."""
    from fedmarket.protocol.usage import Leaf, UsageTree
    from fedmarket.roles.tabs import audit_usage, refund_tab

    driver, ds, job = settled_softmax
    dep, store, ru = world["dep"], driver.store, world["dep"].usage_rollup
    requester, server_acct, auditor = world["requester"], world["providers"][5], world["validators"][2]
    buyers = [world["validators"][3], world["providers"][4]]
    treasury = world["treasury"].address
    providers = [p.account for p in driver.cast.providers]
    watched = [dep.model_market.address, ru.address, requester.address, server_acct.address, auditor.address, treasury,
               *(b.address for b in buyers), *(p.address for p in providers)]
    start = {a: dep.balance(a) for a in watched}
    list_model(dep, store, requester, job, Offer(query_price=PRICE, owner_bps=1_000, server_bps=2_000, server_stake=STAKE))
    server = ModelServer(dep, server_acct, store, job, journal=tmp_path / "receipts.jsonl")
    server.ensure_staked()
    callers = [ModelCaller(dep, b, job, server_acct.address) for b in buyers]
    for c in callers:
        c.fund(10 * PRICE)
    logs: list[str] = []
    with TestClient(server_app(server, period=3_600, say=logs.append)) as client:
        for i, c in enumerate(callers):
            for row in ds.X[: 3 + i]:
                r = tab_query(client, c, row)
                assert r.status_code == 200, r.text
                c.check(r.json())
        q, s, sig = callers[0].next_tab()
        wrong = tab_query(client, callers[0], ds.X[0], receipt=(q, s + 1, sig))
        assert wrong.status_code == 400 and "next tab receipt" in wrong.json()["error"]
        callers[0].tab_queries, callers[0].tab_spent = 3, 3 * PRICE
        for _ in range(7):
            assert tab_query(client, callers[0], ds.X[0]).status_code == 200
        over = tab_query(client, callers[0], ds.X[0])  # the 11th query: past the 10-query tab
        assert over.status_code == 402 and "exceeds its credit" in over.json()["error"]
    posted = [m for m in logs if m.startswith("usage root posted")]
    assert posted and "2 callers, 14 queries" in posted[0], logs
    assert audit_usage(dep, auditor, store, job, server_acct.address) == []
    world["chain"].advance_time(int(ru.call("CHALLENGE_WINDOW")))
    assert any("usage root final: 14 queries" in m for m in server.tabs.step())
    assert model_record(dep, job)["tab_queries_settled"] == 14

    # the server forges a root, 5 more queries for a caller who signed none, and withholds its leaves
    victim = buyers[1]
    cheat = UsageTree([Leaf(buyers[0].address, 10, 10 * PRICE), Leaf(victim.address, 9, 9 * PRICE)])
    ru.transact("post_usage", job, cheat.top.as_tuple(), cheat.n, store.put(b"not the leaves"), sender=server_acct)
    server.tabs.posted = None  # it has nothing to answer a challenge with
    dep.token.transact("approve", ru.address, 2**256 - 1, sender=victim)
    assert audit_usage(dep, victim, store, job, server_acct.address) == [
        "the pending root's leaves are unavailable or do not make the root: challenged to reveal them all"]
    world["chain"].advance_time(int(ru.call("ANSWER_WINDOW")))
    ev = ru.transact("timeout", job, server_acct.address, ru.call("REVEAL_SLOT"), sender=victim).event("UsageRejected")
    assert (ev["slashed"], ev["challenger"]) == (STAKE, victim.address)

    # the second caller takes back what it did not spend (10 - 4 queries)
    ru.transact("request_refund", job, server_acct.address, sender=buyers[1])
    world["chain"].advance_time(int(ru.call("REFUND_DELAY")))
    assert refund_tab(dep, buyers[1], store, job, server_acct.address).event("TabRefunded")["amount"] == 6 * PRICE

    for acct in (server_acct, requester, world["treasury"]):
        dep.model_market.transact("withdraw", sender=acct)
    for acct in (victim, world["treasury"]):
        ru.transact("withdraw", sender=acct)
    claimed = sum(claim_usage_revenue(dep, store, p, job).event("RevenueClaimed")["amount"] for p in providers)
    paid = 14 * PRICE
    contributors = paid - paid // 100 - paid // 10 - paid // 5
    assert contributors - len(providers) <= claimed <= contributors
    delta = {a: dep.balance(a) - start[a] for a in watched}
    assert sum(delta.values()) == 0, "tokens appeared or vanished"
    assert delta[buyers[0].address] == -10 * PRICE and delta[victim.address] == -4 * PRICE + STAKE // 2
    assert delta[auditor.address] == 0
    assert delta[server_acct.address] == -2 * STAKE + paid // 5  # its answer stake is still held, its bond is slashed
    assert delta[ru.address] == 0  # the first caller's 10 queries were all spent


def test_a_restarted_or_late_server_never_posts_what_would_slash_it(world, settled_softmax):
    """A server restarted without its journal reads what it posted back from the roots (no
    rollback); a caller refunded before the server posted its last queries keeps its final leaf
    (no overdraft); an odd signature form, which the contracts refuse, is refused at the door."""
    from fedmarket.roles.server import QueryRefused
    from fedmarket.roles.tabs import TabBook, audit_usage, refund_tab

    driver, ds, job = settled_softmax
    dep, store, ru = world["dep"], driver.store, world["dep"].usage_rollup
    server_acct, auditor = world["providers"][5], world["validators"][2]
    list_model(dep, store, world["requester"], job, Offer(query_price=PRICE, server_stake=STAKE))
    server = ModelServer(dep, server_acct, store, job)  # no journal
    late, steady = (ModelCaller(dep, b, job, server_acct.address) for b in (world["validators"][3], world["providers"][4]))
    for c in (late, steady):
        c.fund(10 * PRICE)
    x = list(ds.X[0])
    for _ in range(3):
        server.answer(x, *late.next_tab()[::2], spent=late.tab_spent)
    server.tabs.step()
    world["chain"].advance_time(int(ru.call("CHALLENGE_WINDOW")))
    server.tabs.step()
    restarted = TabBook(dep, server_acct, store, job)
    assert restarted.latest[late.account.address.lower()][:2] == (3, 3 * PRICE)

    for _ in range(2):  # two more queries the server answers but posts too late
        server.answer(x, *late.next_tab()[::2], spent=late.tab_spent)
    ru.transact("request_refund", job, server_acct.address, sender=late.account)
    world["chain"].advance_time(int(ru.call("REFUND_DELAY")))
    assert refund_tab(dep, late.account, store, job, server_acct.address).event("TabRefunded")["amount"] == 7 * PRICE
    server.answer(x, *steady.next_tab()[::2], spent=steady.tab_spent)
    assert any("usage root posted: 2 callers, 4 queries" in m for m in server.tabs.step())
    assert audit_usage(dep, auditor, store, job, server_acct.address) == []

    q, s, sig = steady.next_tab()
    high_s = sig[:32] + (0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141 - int.from_bytes(sig[32:64], "big")).to_bytes(32, "big") + bytes([55 - sig[64]])
    with pytest.raises(QueryRefused, match="malformed"):
        server.answer(x, q, high_s, spent=s)


def test_time_bound_access_is_answered_by_a_server_that_serves_it(world, settled_softmax):
    """A holder of time-bound access asks with AccessQuery signatures: a server started with
    `access` answers it while the access lasts and never settles it; one without refuses; a
    caller without access, a replayed count and an expired access are refused."""
    from fedmarket.roles.server import QueryRefused

    driver, ds, job = settled_softmax
    dep, store = world["dep"], driver.store
    list_model(dep, store, world["requester"], job, Offer(query_price=PRICE, access_price=5 * PRICE, access_period=3_600,
                                                         server_stake=STAKE))
    server_address = world["providers"][5].address
    holder, stranger = (ModelCaller(dep, a, job, server_address) for a in (world["validators"][3], world["providers"][4]))
    holder.buy_access(1)
    x = list(ds.X[0])
    closed = ModelServer(dep, world["providers"][5], store, job)
    with pytest.raises(QueryRefused, match="does not answer time-bound access"):
        closed.answer(x, *holder.next_access(), access=True)
    server = ModelServer(dep, world["providers"][5], store, job, access=True)
    for _ in range(2):
        assert holder.check(server.answer(x, *holder.next_access(), access=True).doc()) in range(10)
    with pytest.raises(QueryRefused, match="must rise above 3"):
        server.answer(x, 3, access_sig(holder, 3), access=True)  # a replayed query
    with pytest.raises(QueryRefused, match="holds no time-bound access"):
        server.answer(x, *stranger.next_access(), access=True)
    assert server.pending() == [] and server.settle() == []  # nothing to settle: the access was paid for
    world["chain"].advance_time(3_600)
    with pytest.raises(QueryRefused, match="holds no time-bound access"):
        server.answer(x, *holder.next_access(), access=True)


def access_sig(caller, count: int) -> bytes:
    from fedmarket.protocol.receipts import AccessQuery

    return AccessQuery(caller.job_id, caller.server, count).sign(caller.account.key, caller.dep.chain_id, caller.mm.address)
