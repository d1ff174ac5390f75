"""ModelMarket: pay-per-use access to a settled job's model, written as the attacker of every
function that moves or locks value (who calls it, with what, when), with the contract's token
balance checked against what it owes after every test."""

from __future__ import annotations

import json
from pathlib import Path

import eth_abi
import numpy as np
import pytest
from contract_kit import MAX, TOKEN, Kit, index_leaves, reverts
from eth_utils import keccak

from fedmarket.market import Role
from fedmarket.protocol.inference import fixed_input, input_hash, linear_answer, model_opening
from fedmarket.protocol.proofs import reward_struct
from fedmarket.protocol.receipts import Answer, Usage

QPRICE = 2 * TOKEN // 100  # 0.02 tokens a query
APRICE = 5 * TOKEN
PERIOD = 1_000
SSTAKE = 20 * TOKEN
F, C = 4, 2  # the kit's 10-parameter model as a linear model: (4 + 1) * 2
MODEL = np.array([3, -2, 1, 4, -5, 2, 0, 1, 7, -7], dtype=np.int64) * 100_000
FEE_BPS = 100
NO_BOUND = 2**256 - 1  # a purchase's max_cost when the test is not about the buyer's bounds
OWNER_CAP = 5_000  # the jobs' terms: the model owner's and its servers' share of revenue together, at most


def offer(**over) -> tuple:
    base = {"query_price": QPRICE, "access_price": APRICE, "access_period": PERIOD, "owner_bps": 1_000,
            "server_bps": 2_000, "server_stake": SSTAKE}
    base.update(over)
    return tuple(base.values())


class Shop:
    """Settled, minted and listed jobs on the session deployment; every account that touches the
    model market is remembered so conservation can be checked from balances."""

    def __init__(self, kit: Kit):
        self.kit = kit
        self.mm = kit.dep.model_market
        self.lic = kit.dep.licence
        self.token = kit.token
        self.buyers = [*kit.validators, kit.outsider]
        self.server, self.rival = kit.providers[5], kit.providers[4]
        self.jobs: list = []
        for acct in (*self.buyers, self.server, self.rival):
            self.token.transact("approve", self.mm.address, MAX, sender=acct)

    def settled(self, amounts=(400 * TOKEN, 500 * TOKEN), model=MODEL, rounds=1):
        kit = self.kit
        job = kit.job(n=len(amounts), rounds=rounds, claim_period=10_000, licence_requester_bps=OWNER_CAP)
        job.commit_all(model=model)
        leaves = [{"account": p.address, "role": Role.PROVIDER, "amount": a, "reputation_delta": 1, "value": a,
                   "activity": 1} for p, a in zip(job.providers, amounts)]
        leaves.append({"account": kit.aggregator.address, "role": Role.AGGREGATOR, "amount": 0, "reputation_delta": 1,
                       "value": 0, "activity": 1})
        job.post_rewards(index_leaves(leaves), value_total=0)
        job.settle()
        self.lic.transact("mint", job.id, sender=kit.outsider)
        return job

    def list(self, job, shape=(F, C), terms=None, round_=None, sender=None):
        r = len(job.rounds) - 1 if round_ is None else round_
        return self.mm.transact("list_model", job.id, r, job.rounds[r].data, job.acc.proof(r), *shape,
                                terms or offer(), sender=sender or self.kit.requester)

    def listed(self, **kw):
        terms = kw.pop("terms", None)
        job = self.settled(**kw)
        self.list(job, terms=terms)
        self.jobs.append(job)
        return job

    def staked(self, job, server=None, amount=SSTAKE):
        self.mm.transact("stake_server", job.id, amount, sender=server or self.server)

    def usage(self, job, caller, count, server=None) -> tuple:
        server = server or self.server
        sig = Usage(job.id, server.address, count).sign(caller.key, self.kit.chain_id, self.mm.address)
        return (count, sig)

    def settle(self, job, receipts, server=None):
        return self.mm.transact("settle_usage", job.id, receipts, sender=server or self.server)

    def answer_sig(self, job, x, answer, server=None) -> bytes:
        server = server or self.server
        return Answer(job.id, input_hash(x), answer).sign(server.key, self.kit.chain_id, self.mm.address)

    def dispute(self, job, x, answer, sig=None, server=None, opening=None, sender=None):
        server = server or self.server
        chunks, proofs = opening or model_opening(job.model, job.size)
        sig = self.answer_sig(job, x, answer, server) if sig is None else sig
        return self.mm.transact("dispute_answer", job.id, server.address, x, answer, sig, chunks, proofs,
                                sender=sender or self.kit.outsider)

    def claim(self, job, i, leaf=None, proof=None, sender=None):
        leaf = reward_struct(job.leaves[i]) if leaf is None else leaf
        return self.mm.transact("claim", job.id, i, leaf, job.tree.proof(i) if proof is None else proof,
                                sender=sender or self.kit.outsider)

    def bal(self, a) -> int:
        return self.kit.balance(a)

    def held(self) -> int:
        """What the contract owes: pull balances, escrowed credits, stakes and unclaimed revenue."""
        kit, mm = self.kit, self.mm
        accounts = {kit.treasury, kit.requester.address, kit.outsider.address, self.server.address, self.rival.address,
                    *(b.address for b in self.buyers), *(p.address for p in kit.providers)}
        total = sum(mm.call("owed", a) for a in accounts)
        for job in self.jobs:
            total += sum(mm.call("credit", job.id, b.address)[1] for b in self.buyers)
            total += sum(mm.call("stake", job.id, s.address) for s in (self.server, self.rival))
            total += mm.call("revenue", job.id) - mm.call("paid_out", job.id)
        return total


@pytest.fixture
def shop(kit):
    s = Shop(kit)
    yield s
    assert s.bal(s.mm.address) == s.held(), "the model market's balance is not what it owes"


# ---------------------------------------------------------------- listing


def test_deployed_with_the_market_licence_and_fee(shop):
    mm, dep = shop.mm, shop.kit.dep
    assert (mm.call("MARKET"), mm.call("LICENCE"), mm.call("TOKEN")) == (dep.market.address, dep.licence.address,
                                                                          dep.token.address)
    assert (mm.call("TREASURY"), mm.call("FEE_BPS")) == (shop.kit.treasury, FEE_BPS)


def test_only_the_model_owner_lists_once_with_the_final_round(shop):
    kit = shop.kit
    job = shop.settled(rounds=2)
    with reverts("model: not the model owner"):
        shop.list(job, sender=kit.outsider)
    with reverts("model: not the final round"):
        shop.list(job, round_=0)
    forged = (keccak(b"another model"), *job.rounds[1].data[1:])
    with reverts("model: round not committed"):
        shop.mm.transact("list_model", job.id, 1, forged, job.acc.proof(1), F, C, offer(), sender=kit.requester)
    r = shop.list(job)
    ev = r.event("ModelListed")
    assert (ev["job_id"], ev["owner"], ev["model_root"]) == (job.id, kit.requester.address, job.rounds[1].data[0])
    assert shop.mm.call("model_root", job.id) == job.rounds[1].data[0]
    with reverts("model: already listed"):
        shop.list(job)
    shop.jobs.append(job)


def test_unsettled_or_unminted_jobs_cannot_be_listed(shop):
    kit = shop.kit
    job = kit.job(n=2, rounds=1)
    job.commit_all()
    with reverts("erc721: invalid token ID"):  # no model token exists before settlement
        shop.mm.transact("list_model", job.id, 0, job.rounds[0].data, job.acc.proof(0), F, C, offer(),
                         sender=kit.requester)


@pytest.mark.parametrize("shape, reason", [((3, 2), "model: shape does not fit"),
                                           ((4, 0), "model: shape out of bounds"),
                                           ((0, 2), "model: shape out of bounds"),
                                           ((9, 1), "model: shape out of bounds")])
def test_a_shape_that_does_not_fit_is_refused(shop, shape, reason):
    job = shop.settled()
    with reverts(reason):
        shop.list(job, shape=shape)


@pytest.mark.parametrize("over, reason", [
    ({"owner_bps": 5_000, "server_bps": 5_000}, "model: shares above job terms"),  # beyond the whole, too
    ({"owner_bps": 7_901}, "model: shares above job terms"),
    ({"owner_bps": OWNER_CAP - 2_000 + 1}, "model: shares above job terms"),  # what contributors agreed to
    # the owner serving its own model cannot take the contributors' part as a server share
    ({"owner_bps": 0, "server_bps": OWNER_CAP + 1}, "model: shares above job terms"),
    ({"access_price": 0}, "model: access needs both"),
    ({"access_period": 0}, "model: access needs both"),
    ({"access_period": 3_650 * 86_400 + 1}, "model: access period too long"),
    ({"query_price": 2**128 + 1}, "model: price too high"),
    ({"server_stake": 2**128 + 1}, "model: stake too high"),
])
def test_offers_out_of_bounds_are_refused(shop, over, reason):
    job = shop.settled()
    with reverts(reason):
        shop.list(job, terms=offer(**over))
    shop.list(job)
    with reverts(reason):
        shop.mm.transact("set_offer", job.id, offer(**over), sender=shop.kit.requester)
    with reverts("model: not the model owner"):
        shop.mm.transact("set_offer", job.id, offer(query_price=1), sender=shop.kit.outsider)
    shop.jobs.append(job)


# ---------------------------------------------------------------- credits and usage


def test_credits_settle_by_signed_cumulative_usage_and_split(shop):
    kit, mm = shop.kit, shop.mm
    job = shop.listed()
    a, b = shop.buyers[0], shop.buyers[1]
    mm.transact("buy_credits", job.id, 100, NO_BOUND, sender=a)
    mm.transact("buy_credits", job.id, 10, NO_BOUND, sender=b)
    assert mm.call("credit", job.id, a.address) == (100, 100 * QPRICE)
    shop.staked(job)
    before = shop.bal(mm.address)
    r = shop.settle(job, [shop.usage(job, a, 60), shop.usage(job, b, 10)])
    amount = 70 * QPRICE
    ev = r.event("UsageSettled")
    assert (ev["callers"], ev["queries"], ev["amount"]) == (2, 70, amount)
    fee, owner, server = amount * FEE_BPS // 10_000, amount // 10, amount // 5
    assert mm.call("owed", kit.treasury) == fee and mm.call("owed", kit.requester.address) == owner
    assert mm.call("owed", shop.server.address) == server
    assert mm.call("revenue", job.id) == amount - fee - owner - server
    assert mm.call("credit", job.id, a.address) == (40, 40 * QPRICE) and mm.call("credit", job.id, b.address) == (0, 0)
    assert (mm.call("queries_settled", job.id), mm.call("gross_revenue", job.id)) == (70, amount)
    assert shop.bal(mm.address) == before  # settlement moves no tokens, it credits pull balances
    with reverts("model: receipt already settled"):  # a replayed receipt
        shop.settle(job, [shop.usage(job, a, 60)])
    with reverts("model: receipt already settled"):  # an older one
        shop.settle(job, [shop.usage(job, a, 59)])
    assert shop.settle(job, [shop.usage(job, a, 61)]).event("UsageSettled")["queries"] == 1
    s0 = shop.bal(shop.server.address)
    assert mm.transact("withdraw", sender=shop.server).event("Withdrawn")["amount"] == server + QPRICE // 5
    assert shop.bal(shop.server.address) == s0 + server + QPRICE // 5
    with reverts("model: nothing owed"):
        mm.transact("withdraw", sender=shop.server)


def test_a_server_is_never_paid_more_than_was_bought(shop):
    mm = shop.mm
    job = shop.listed()
    a, never, b = shop.buyers[0], shop.buyers[1], shop.buyers[2]
    mm.transact("buy_credits", job.id, 5, NO_BOUND, sender=a)
    mm.transact("buy_credits", job.id, 3, NO_BOUND, sender=b)
    shop.staked(job)
    with reverts("model: receipt already settled"):  # the same caller twice in one batch
        shop.settle(job, [shop.usage(job, a, 2), shop.usage(job, a, 3)][::-1])
    # a caller that never bought, one past its credits and an honest one in one batch: the batch
    # settles, the first pays nothing, the second its 5 credits only
    r = shop.settle(job, [shop.usage(job, never, 7), shop.usage(job, a, 9), shop.usage(job, b, 2)])
    ev = r.event("UsageSettled")
    assert (ev["queries"], ev["amount"]) == (7, 7 * QPRICE)
    assert mm.call("credit", job.id, a.address) == (0, 0) and mm.call("credit", job.id, never.address) == (0, 0)
    assert mm.call("used", job.id, a.address, shop.server.address) == 9  # the receipt is consumed
    with reverts("model: receipt already settled"):
        shop.settle(job, [shop.usage(job, a, 9)])
    assert shop.settle(job, [shop.usage(job, a, 12)]).event("UsageSettled")["amount"] == 0  # nothing left to pay
    assert mm.call("queries_settled", job.id) == 7 and mm.call("gross_revenue", job.id) == 7 * QPRICE


def test_receipts_are_bound_to_their_server_and_job(shop):
    mm, kit = shop.mm, shop.kit
    job, other = shop.listed(), shop.listed()
    a = shop.buyers[0]
    mm.transact("buy_credits", job.id, 5, NO_BOUND, sender=a)
    shop.staked(job)
    shop.staked(job, server=shop.rival)
    stolen = shop.usage(job, a, 5)  # signed for shop.server
    # settled by another server, or in another job's domain, it recovers some other account: no credits, nothing paid
    assert shop.settle(job, [stolen], server=shop.rival).event("UsageSettled")["amount"] == 0
    shop.staked(other)
    assert shop.settle(other, [stolen]).event("UsageSettled")["amount"] == 0
    assert mm.call("credit", job.id, a.address) == (5, 5 * QPRICE)
    with reverts("ecdsa: invalid signature"):
        shop.settle(job, [(5, b"\x01" * 65)])
    assert shop.settle(job, [stolen]).event("UsageSettled")["queries"] == 5
    assert mm.call("used", job.id, a.address, shop.server.address) == 5
    assert mm.call("used", job.id, a.address, shop.rival.address) == 0
    assert kit.chain  # both servers' stakes stay held (fixture checks)


@pytest.mark.parametrize("case", ["unstaked", "unstaking", "slashed", "unlisted", "empty"])
def test_only_a_serving_server_settles(shop, case):
    mm = shop.mm
    job = shop.listed()
    a = shop.buyers[0]
    mm.transact("buy_credits", job.id, 5, NO_BOUND, sender=a)
    receipts, job_id, reason = [shop.usage(job, a, 1)], job.id, "model: not serving"
    if case == "unstaking":
        shop.staked(job)
        mm.transact("request_unstake", job.id, sender=shop.server)
    elif case == "slashed":
        shop.staked(job)
        x = [0, 0, 0, 0]
        shop.dispute(job, x, 1 - linear_answer(job.model, x, F, C))
    elif case == "unlisted":
        job_id, reason = 4242, "model: not listed"
    elif case == "empty":
        shop.staked(job)
        receipts, reason = [], "model: no receipts"
    with reverts(reason):
        mm.transact("settle_usage", job_id, receipts, sender=shop.server)


def test_the_owner_cannot_take_a_servers_share_or_stop_it_settling_what_it_answered(shop):
    """A server keeps the share of the offer it staked under: the owner may lower the share for
    servers that stake later, and raising the stake new servers need does not stop a staked
    server settling what it answered."""
    mm, kit = shop.mm, shop.kit
    job = shop.listed()
    shop.staked(job)
    a = shop.buyers[0]
    mm.transact("buy_credits", job.id, 5, NO_BOUND, sender=a)
    mm.transact("set_offer", job.id, offer(server_bps=1_999), sender=kit.requester)
    mm.transact("set_offer", job.id, offer(server_bps=0, server_stake=2 * SSTAKE), sender=kit.requester)
    assert mm.call("server_share", job.id, shop.server.address) == 2_000
    assert not mm.call("serving", job.id, shop.server.address)  # new queries: not as the offer asks now
    before = mm.call("owed", shop.server.address)
    shop.settle(job, [shop.usage(job, a, 3)])  # but what it answered settles, at the share it staked under
    assert mm.call("owed", shop.server.address) - before == 3 * QPRICE * 2_000 // 10_000


def test_a_server_staking_after_a_lower_offer_gets_the_lower_share(shop):
    mm, kit = shop.mm, shop.kit
    job = shop.listed()
    mm.transact("set_offer", job.id, offer(server_bps=500), sender=kit.requester)
    shop.staked(job)
    assert mm.call("server_share", job.id, shop.server.address) == 500
    a = shop.buyers[0]
    mm.transact("buy_credits", job.id, 4, NO_BOUND, sender=a)
    owed = {x: mm.call("owed", x) for x in (shop.server.address, kit.requester.address)}
    shop.settle(job, [shop.usage(job, a, 4)])
    assert mm.call("owed", shop.server.address) - owed[shop.server.address] == 4 * QPRICE * 500 // 10_000
    assert mm.call("owed", kit.requester.address) - owed[kit.requester.address] == 4 * QPRICE * 1_000 // 10_000


@pytest.mark.parametrize("owner_bps", [OWNER_CAP, OWNER_CAP - 2_000, 1_000])
def test_the_owner_cannot_raise_its_share_into_the_contributors_part_beside_a_staked_server(shop, owner_bps):
    """The owner lowers the server share and raises its own to all the job's terms allow: a server
    staked under the old offer keeps its share, so the owner's share of that server's usage is only
    what the terms leave beside it, and the contributors get their part."""
    mm, kit = shop.mm, shop.kit
    job = shop.listed()
    shop.staked(job)  # at 2,000
    a = shop.buyers[0]
    mm.transact("buy_credits", job.id, 10, NO_BOUND, sender=a)
    mm.transact("set_offer", job.id, offer(owner_bps=owner_bps, server_bps=OWNER_CAP - owner_bps), sender=kit.requester)
    owed = {x: mm.call("owed", x) for x in (shop.server.address, kit.requester.address)}
    revenue = mm.call("revenue", job.id)
    shop.settle(job, [shop.usage(job, a, 10)])
    amount = 10 * QPRICE
    assert mm.call("owed", shop.server.address) - owed[shop.server.address] == amount * 2_000 // 10_000
    assert mm.call("owed", kit.requester.address) - owed[kit.requester.address] == amount * min(owner_bps, OWNER_CAP - 2_000) // 10_000
    assert mm.call("revenue", job.id) - revenue >= amount * (10_000 - FEE_BPS - OWNER_CAP) // 10_000


def test_credits_keep_the_price_they_were_bought_at(shop):
    mm, kit = shop.mm, shop.kit
    job = shop.listed()
    a = shop.buyers[0]
    mm.transact("buy_credits", job.id, 10, NO_BOUND, sender=a)
    mm.transact("set_offer", job.id, offer(query_price=QPRICE * 50), sender=kit.requester)  # the owner raises it
    mm.transact("buy_credits", job.id, 10, NO_BOUND, sender=a)
    assert mm.call("credit", job.id, a.address) == (20, 10 * QPRICE + 10 * QPRICE * 50)
    shop.staked(job)
    assert shop.settle(job, [shop.usage(job, a, 20)]).event("UsageSettled")["amount"] == 510 * QPRICE


@pytest.mark.parametrize("queries, reason", [(0, "model: no queries"), (2**64, "model: too many credits")])
def test_bad_purchases_are_refused(shop, queries, reason):
    job = shop.listed()
    with reverts(reason):
        shop.mm.transact("buy_credits", job.id, queries, NO_BOUND, sender=shop.buyers[0])


def test_credit_value_is_bounded_and_unlisted_or_unpriced_credits_refused(shop):
    mm, kit = shop.mm, shop.kit
    job = shop.listed(terms=offer(query_price=2**128))
    with reverts("model: credit value too large"):
        mm.transact("buy_credits", job.id, 2, NO_BOUND, sender=shop.buyers[0])
    with reverts("model: not listed"):
        mm.transact("buy_credits", 4242, 1, NO_BOUND, sender=shop.buyers[0])
    mm.transact("set_offer", job.id, offer(query_price=0), sender=kit.requester)
    with reverts("model: credits not offered"):
        mm.transact("buy_credits", job.id, 1, NO_BOUND, sender=shop.buyers[0])
    mm.transact("set_offer", job.id, offer(), sender=kit.requester)
    shop.token.transact("approve", mm.address, QPRICE - 1, sender=shop.buyers[1])
    with reverts("erc20: insufficient allowance"):
        mm.transact("buy_credits", job.id, 1, NO_BOUND, sender=shop.buyers[1])
    assert mm.call("credit", job.id, shop.buyers[1].address) == (0, 0)


def test_purchases_past_the_buyers_bounds_are_refused(shop):
    """A buyer bounds what it pays and the access it gets, so terms changed after it looked (the
    owner front-running it) cannot charge it more or sell it less; at its bounds exactly it buys."""
    mm, kit, a = shop.mm, shop.kit, shop.buyers[0]
    job = shop.listed()
    with reverts("model: past buyer bounds"):
        mm.transact("buy_credits", job.id, 3, 3 * QPRICE - 1, sender=a)
    assert mm.transact("buy_credits", job.id, 3, 3 * QPRICE, sender=a).event("CreditsBought")["cost"] == 3 * QPRICE
    later = kit.now() + 10  # the block's time, at least
    with reverts("model: past buyer bounds"):
        mm.transact("buy_access", job.id, 2, 2 * APRICE - 1, 0, sender=a)
    with reverts("model: past buyer bounds"):
        mm.transact("buy_access", job.id, 2, 2 * APRICE, later + 2 * PERIOD, sender=a)
    assert mm.call("access_until", job.id, a.address) == 0
    got = mm.transact("buy_access", job.id, 2, 2 * APRICE, kit.now() + 2 * PERIOD, sender=a).event("AccessBought")
    assert got["cost"] == 2 * APRICE and got["until"] >= kit.now() + 2 * PERIOD


def test_refunds_wait_for_servers_to_settle(shop):
    mm, kit = shop.mm, shop.kit
    job = shop.listed()
    a = shop.buyers[0]
    with reverts("model: no credits"):
        mm.transact("request_refund", job.id, sender=a)
    with reverts("model: no refund requested"):
        mm.transact("refund", job.id, sender=a)
    mm.transact("buy_credits", job.id, 10, NO_BOUND, sender=a)
    shop.staked(job)
    receipt = shop.usage(job, a, 4)  # queries answered, not settled yet
    mm.transact("request_refund", job.id, sender=a)
    with reverts("model: refund not due yet"):
        mm.transact("refund", job.id, sender=a)
    shop.settle(job, [receipt])  # the server settles within the delay
    kit.advance(86_400)
    before = shop.bal(a.address)
    ev = mm.transact("refund", job.id, sender=a).event("CreditsRefunded")
    assert (ev["queries"], ev["amount"]) == (6, 6 * QPRICE) and shop.bal(a.address) == before + 6 * QPRICE
    with reverts("model: no refund requested"):
        mm.transact("refund", job.id, sender=a)
    assert shop.settle(job, [shop.usage(job, a, 5)]).event("UsageSettled")["amount"] == 0  # refunded: nothing to pay


def test_buying_again_cancels_a_refund_request(shop):
    mm, kit = shop.mm, shop.kit
    job = shop.listed()
    a = shop.buyers[0]
    mm.transact("buy_credits", job.id, 1, NO_BOUND, sender=a)
    mm.transact("request_refund", job.id, sender=a)
    mm.transact("buy_credits", job.id, 1, NO_BOUND, sender=a)
    kit.advance(86_400)
    with reverts("model: no refund requested"):
        mm.transact("refund", job.id, sender=a)


# ---------------------------------------------------------------- time-bound access


def test_access_extends_from_its_end_and_pays_no_server_share(shop):
    mm, kit = shop.mm, shop.kit
    job = shop.listed()
    a = shop.buyers[0]
    now = kit.now()
    r = mm.transact("buy_access", job.id, 2, NO_BOUND, 0, sender=a)
    until = r.event("AccessBought")["until"]
    assert now + 2 * PERIOD <= until <= now + 2 * PERIOD + 2 and mm.call("has_access", job.id, a.address)
    assert mm.transact("buy_access", job.id, 1, NO_BOUND, 0, sender=a).event("AccessBought")["until"] == until + PERIOD
    split = r.event("RevenueSplit")
    assert (split["server_share"], split["fee"], split["owner_share"]) == (0, 2 * APRICE // 100, 2 * APRICE // 10)
    assert mm.call("revenue", job.id) == 3 * APRICE - 3 * APRICE // 100 - 3 * APRICE // 10
    kit.advance(3 * PERIOD + 10)
    assert not mm.call("has_access", job.id, a.address)
    with reverts("model: bad periods"):
        mm.transact("buy_access", job.id, 0, NO_BOUND, 0, sender=a)
    with reverts("model: access too long"):
        mm.transact("buy_access", job.id, 3_650 * 86_400 // PERIOD + 1, NO_BOUND, 0, sender=a)
    mm.transact("set_offer", job.id, offer(access_price=0, access_period=0), sender=kit.requester)
    with reverts("model: access not offered"):
        mm.transact("buy_access", job.id, 1, NO_BOUND, 0, sender=a)


# ---------------------------------------------------------------- contributors' revenue


def test_contributors_claim_their_share_once_and_only_their_own(shop):
    mm, kit = shop.mm, shop.kit
    job = shop.listed()
    a = shop.buyers[0]
    mm.transact("buy_credits", job.id, 1_000, NO_BOUND, sender=a)
    shop.staked(job)
    shop.settle(job, [shop.usage(job, a, 1_000)])
    revenue = mm.call("revenue", job.id)
    p0, p1 = job.leaves[0]["account"], job.leaves[1]["account"]
    before = shop.bal(p0)
    due0 = revenue * 400 // 900
    assert shop.claim(job, 0, sender=shop.rival).event("RevenueClaimed")["amount"] == due0  # paid to the leaf's account
    assert shop.bal(p0) == before + due0
    with reverts("model: nothing to claim"):
        shop.claim(job, 0)
    mine = dict(job.leaves[0], account=shop.rival.address)  # the attacker's address in p0's leaf
    with reverts("model: invalid proof"):
        shop.claim(job, 0, leaf=reward_struct(mine), sender=shop.rival)
    inflated = dict(job.leaves[1], amount=900 * TOKEN)
    with reverts("model: invalid proof"):
        shop.claim(job, 1, leaf=reward_struct(inflated))
    with reverts("model: invalid proof"):  # p1's leaf at p0's index
        shop.claim(job, 0, leaf=reward_struct(job.leaves[1]), proof=job.tree.proof(1))
    with reverts("model: nothing to claim"):  # the aggregator's zero leaf
        shop.claim(job, 2)
    assert shop.claim(job, 1).event("RevenueClaimed")["amount"] == revenue * 500 // 900
    assert shop.bal(p1) > 0 and revenue - 2 <= mm.call("paid_out", job.id) <= revenue
    with reverts("model: not listed"):
        shop.mm.transact("claim", 4242, 0, reward_struct(job.leaves[0]), job.tree.proof(0), sender=kit.outsider)


def test_one_job_cannot_take_another_jobs_revenue(shop):
    mm, kit = shop.mm, shop.kit
    honest = shop.listed()
    a = shop.buyers[0]
    mm.transact("buy_access", honest.id, 4, NO_BOUND, 0, sender=a)  # revenue of the honest job sits in the contract
    # a job whose root pays 20 while declaring a reward total of 10 (unchallenged, it settled)
    job = kit.job(n=2, rounds=1, claim_period=10_000, licence_requester_bps=OWNER_CAP)
    job.commit_all(model=MODEL)
    leaves = [{"account": shop.rival.address, "role": Role.PROVIDER, "amount": 20, "reputation_delta": 1, "value": 20,
               "activity": 1},
              {"account": kit.providers[1].address, "role": Role.PROVIDER, "amount": 0, "reputation_delta": 1,
               "value": 0, "activity": 1},
              {"account": kit.aggregator.address, "role": Role.AGGREGATOR, "amount": 0, "reputation_delta": 1,
               "value": 0, "activity": 1}]
    job.post_rewards(index_leaves(leaves), total=10, value_total=0)
    job.settle()
    shop.lic.transact("mint", job.id, sender=kit.outsider)
    shop.list(job)
    shop.jobs.append(job)
    mm.transact("buy_access", job.id, 1, NO_BOUND, 0, sender=a)
    with reverts("model: claims exceed revenue"):
        shop.claim(job, 0)


# ---------------------------------------------------------------- staking and disputes


def test_stake_and_unstake_after_the_delay(shop):
    mm, kit = shop.mm, shop.kit
    job = shop.listed()
    with reverts("model: no amount"):
        mm.transact("stake_server", job.id, 0, sender=shop.server)
    with reverts("model: not listed"):
        mm.transact("stake_server", 4242, 1, sender=shop.server)
    with reverts("model: not staked"):
        mm.transact("request_unstake", job.id, sender=shop.server)
    shop.staked(job)
    assert mm.call("serving", job.id, shop.server.address)
    with reverts("model: no unstake requested"):
        mm.transact("unstake", job.id, sender=shop.server)
    mm.transact("request_unstake", job.id, sender=shop.server)
    assert not mm.call("serving", job.id, shop.server.address)
    with reverts("model: still unstaking"):
        mm.transact("unstake", job.id, sender=shop.server)
    kit.advance(7 * 86_400)
    before = shop.bal(shop.server.address)
    mm.transact("unstake", job.id, sender=shop.server)
    assert shop.bal(shop.server.address) == before + SSTAKE and mm.call("stake", job.id, shop.server.address) == 0


def test_a_right_answer_cannot_be_slashed_and_a_wrong_one_is(shop):
    mm, kit = shop.mm, shop.kit
    job = shop.listed()
    shop.staked(job)
    x = fixed_input(np.array([0.1, 0.9, 0.3, 0.5]))
    right = linear_answer(job.model, x, F, C)
    with reverts("model: answer is right"):
        shop.dispute(job, x, right)
    with reverts("model: not the server's answer"):  # signed by someone else
        shop.dispute(job, x, 1 - right, sig=shop.answer_sig(job, x, 1 - right, server=shop.rival))
    chunks, proofs = model_opening(job.model, job.size)
    lie = [list(c) for c in chunks]
    lie[0][0] += 1
    with reverts("model: chunk not in the model"):
        shop.dispute(job, x, right, opening=(lie, proofs))
    with reverts("model: wrong number of chunks"):
        shop.dispute(job, x, 1 - right, opening=(chunks[:-1], proofs[:-1]))
    with reverts("model: input out of range"):
        shop.dispute(job, [2**20 + 1, 0, 0, 0], 0)
    with reverts("model: bad input length"):
        shop.dispute(job, x[:3], 0)
    r = shop.dispute(job, x, 1 - right, sender=shop.rival)
    ev = r.event("AnswerSlashed")
    assert (ev["server"], ev["challenger"], ev["amount"], ev["challenger_share"]) == (
        shop.server.address, shop.rival.address, SSTAKE, SSTAKE // 2)
    assert mm.call("owed", shop.rival.address) == SSTAKE // 2 and mm.call("owed", kit.treasury) == SSTAKE // 2
    assert mm.call("disputes_lost", job.id) == 1 and mm.call("stake", job.id, shop.server.address) == 0
    with reverts("model: nothing to slash"):
        shop.dispute(job, x, 1 - right)
    with reverts("model: answer is right"):  # an out-of-range class is wrong too, but the stake is gone first
        shop.staked(job) or shop.dispute(job, x, right)
    assert shop.dispute(job, x, 7).event("AnswerSlashed")["amount"] == SSTAKE


def test_a_server_is_slashable_while_unstaking(shop):
    mm, kit = shop.mm, shop.kit
    job = shop.listed()
    shop.staked(job)
    mm.transact("request_unstake", job.id, sender=shop.server)
    kit.advance(86_400)
    x = [0, 2**20, 0, 2**19]
    shop.dispute(job, x, 1 - linear_answer(job.model, x, F, C))
    kit.advance(7 * 86_400)
    before = shop.bal(shop.server.address)
    mm.transact("unstake", job.id, sender=shop.server)
    assert shop.bal(shop.server.address) == before


def test_models_listed_as_not_linear_are_not_disputable(shop):
    job = shop.settled()
    shop.list(job, shape=(0, 0))
    shop.jobs.append(job)
    shop.staked(job)
    with reverts("model: answers not provable"):
        shop.dispute(job, [0, 0, 0, 0], 1)


# ---------------------------------------------------------------- stateful invariants

from hypothesis import HealthCheck, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test  # noqa: E402

OUTCOMES: dict[str, int] = {}


class Ledger(RuleBasedStateMachine):
    """Random histories on one listed job: purchases, refunds, access, stakes, new offers (the
    owner's and the server share moved within the job's terms), settlements (honest, replayed,
    inflated), disputes, withdrawals and claims, against a ghost ledger of what the contract owes;
    tokens only move between the tracked accounts and the contract."""

    shop: Shop = None
    job = None

    def __init__(self):
        super().__init__()
        s = self.s = self.shop
        self._snap = s.kit.chain.snapshot()
        self._snap.__enter__()
        self.mm, self.j = s.mm, self.job.id
        self.servers = [s.server, s.rival]
        self.tracked = sorted({s.kit.treasury, s.kit.requester.address, *(b.address for b in s.buyers),
                               *(x.address for x in self.servers), *(lf["account"] for lf in self.job.leaves), s.mm.address})
        self.total = sum(s.bal(a) for a in self.tracked)
        self.credit = {b.address: [0, 0] for b in s.buyers}  # queries, value
        self.signed = {(b.address, v.address): 0 for b in s.buyers for v in self.servers}  # counts signed so far
        self.used = dict.fromkeys(self.signed, 0)
        self.stake = {v.address: 0 for v in self.servers}
        self.owed: dict[str, int] = {}
        self.revenue = 0
        self.shares = (1_000, 2_000)  # the offer's owner and server shares
        self.server_bps = {v.address: 2_000 for v in self.servers}  # each server's: the offer's when it staked
        for v in self.servers:  # both serve from the start; a slash takes one out until it stakes again
            self.s.staked(self.job, server=v)
            self.stake[v.address] = SSTAKE
        for b in s.buyers:  # and every caller starts with credits
            self._buy(b, 100)

    def _buy(self, buyer, n):
        self.mm.transact("buy_credits", self.j, n, NO_BOUND, sender=buyer)
        c = self.credit[buyer.address]
        c[0], c[1] = c[0] + n, c[1] + n * QPRICE

    def teardown(self):
        self._snap.__exit__(None, None, None)

    def hit(self, key: str) -> None:
        OUTCOMES[key] = OUTCOMES.get(key, 0) + 1

    def split(self, amount: int, server: str | None) -> None:
        server_bps = self.server_bps[server] if server else 0
        owner_bps = min(self.shares[0], OWNER_CAP - server_bps)  # what the job's terms leave beside the server
        fee, owner, srv = (amount * bps // 10_000 for bps in (FEE_BPS, owner_bps, server_bps))
        for a, v in ((self.s.kit.treasury, fee), (self.s.kit.requester.address, owner), (server, srv)):
            if v:
                self.owed[a] = self.owed.get(a, 0) + v
        self.revenue += amount - fee - owner - srv

    @rule(b=st.integers(0, 4), n=st.integers(1, 50))
    def buy(self, b, n):
        self._buy(self.s.buyers[b], n)
        self.hit("buy")

    @rule(v=st.integers(0, 1))
    def stake(self, v):
        self.s.staked(self.job, server=self.servers[v])
        self.stake[self.servers[v].address] += SSTAKE
        self.server_bps[self.servers[v].address] = self.shares[1]

    @rule(owner_bps=st.sampled_from([0, 1_000, 3_000, OWNER_CAP]), server_bps=st.sampled_from([0, 500, 2_000, OWNER_CAP]))
    def reprice(self, owner_bps, server_bps):
        terms = offer(owner_bps=owner_bps, server_bps=server_bps)
        if owner_bps + server_bps > OWNER_CAP:
            with reverts("model: shares above job terms"):
                self.mm.transact("set_offer", self.j, terms, sender=self.s.kit.requester)
            return
        self.mm.transact("set_offer", self.j, terms, sender=self.s.kit.requester)
        self.shares = (owner_bps, server_bps)
        self.hit("repriced")

    @rule(v=st.integers(0, 1), b=st.integers(0, 4), n=st.integers(1, 60),
          mode=st.sampled_from(["honest", "honest", "replay", "inflate"]))
    def settle(self, v, b, n, mode):
        server, buyer = self.servers[v], self.s.buyers[b]
        key = (buyer.address, server.address)
        left = self.credit[buyer.address][0]
        step = {"honest": min(n, left), "replay": 0, "inflate": left + n}[mode]
        count = self.used[key] + step
        serving = self.mm.call("serving", self.j, server.address)
        due = count - self.used[key]
        c = self.credit[buyer.address]
        receipt = self.s.usage(self.job, buyer, count, server=server)
        if not serving or due <= 0:
            reason = "model: not serving" if not serving else "model: receipt already settled"
            with reverts(reason):
                self.s.settle(self.job, [receipt], server=server)
            self.hit("refused " + reason)
            return
        self.s.settle(self.job, [receipt], server=server)
        paid = min(due, c[0])  # usage past the credits is not paid
        value = c[1] * paid // c[0] if c[0] else 0
        c[0], c[1] = c[0] - paid, c[1] - value
        self.used[key] = count
        self.split(value, server.address)
        if paid < due:
            self.hit("capped")
        self.hit("settled")

    @rule(b=st.integers(0, 4))
    def refund(self, b):
        buyer = self.s.buyers[b]
        if self.credit[buyer.address][0] == 0:
            return
        self.mm.transact("request_refund", self.j, sender=buyer)
        self.s.kit.advance(86_400)
        self.mm.transact("refund", self.j, sender=buyer)
        self.credit[buyer.address] = [0, 0]
        self.hit("refunded")

    @rule(b=st.integers(0, 4), periods=st.integers(1, 3))
    def access(self, b, periods):
        self.mm.transact("buy_access", self.j, periods, NO_BOUND, 0, sender=self.s.buyers[b])
        self.split(periods * APRICE, None)
        self.hit("access")

    @rule(v=st.integers(0, 1))
    def dispute(self, v):
        server = self.servers[v]
        x = [0, 2**20, 2**19, 0]
        wrong = 1 - linear_answer(self.job.model, x, F, C)
        if self.stake[server.address] == 0:
            with reverts("model: nothing to slash"):
                self.s.dispute(self.job, x, wrong, server=server)
            return
        self.s.dispute(self.job, x, wrong, server=server)
        amount, self.stake[server.address] = self.stake[server.address], 0
        for a, share in ((self.s.kit.outsider.address, amount // 2), (self.s.kit.treasury, amount - amount // 2)):
            self.owed[a] = self.owed.get(a, 0) + share
        self.hit("slashed")

    @rule(i=st.integers(0, 2))
    def claim(self, i):
        leaf = self.job.leaves[i]
        entitled = self.revenue * leaf["amount"] // (900 * TOKEN)
        if entitled <= self.mm.call("withdrawn", self.j, i):
            with reverts("model: nothing to claim"):
                self.s.claim(self.job, i)
            return
        self.s.claim(self.job, i)
        self.hit("claimed")

    @rule(k=st.integers(0, 6))
    def withdraw(self, k):
        accts = [self.s.kit.treasury, self.s.kit.requester.address, *(x.address for x in self.servers),
                 self.s.kit.outsider.address]
        who = accts[k % len(accts)]
        sender = next((a for a in (self.s.kit.requester, *self.servers, self.s.kit.outsider, self.s.kit.w["treasury"])
                       if a.address == who))
        if not self.owed.get(who):
            with reverts("model: nothing owed"):
                self.mm.transact("withdraw", sender=sender)
            return
        self.mm.transact("withdraw", sender=sender)
        self.owed[who] = 0
        self.hit("withdrawn")

    @invariant()
    def books(self):
        mm, j = self.mm, self.j
        for b, (q, v) in self.credit.items():
            assert mm.call("credit", j, b) == (q, v)
        for a, v in self.owed.items():
            assert mm.call("owed", a) == v
        assert mm.call("revenue", j) == self.revenue
        for v, bps in self.server_bps.items():
            assert mm.call("server_share", j, v) == bps
        held = sum(self.owed.values()) + sum(v for _, v in self.credit.values()) + sum(self.stake.values())
        assert self.s.bal(mm.address) == held + self.revenue - mm.call("paid_out", j)
        assert sum(self.s.bal(a) for a in self.tracked) == self.total, "tokens left the tracked accounts"


def test_ledger_state_machine(kit):
    shop = Shop(kit)
    job = shop.listed()
    Ledger.shop, Ledger.job = shop, job
    OUTCOMES.clear()
    run_state_machine_as_test(Ledger, settings=settings(
        max_examples=30, stateful_step_count=30, deadline=None, database=None, derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]))
    missing = [k for k in ("buy", "settled", "refunded", "access", "slashed", "claimed", "withdrawn", "repriced",
                           "refused model: receipt already settled", "capped")
               if not OUTCOMES.get(k)]
    assert not missing, f"the run never exercised: {missing} ({OUTCOMES})"


# ---------------------------------------------------------------- re-entrancy


def test_no_reentry_from_the_token_into_the_model_market(world):
    """On a token that calls back from inside every transfer: a withdrawal, a claim, a refund and a
    purchase each try to re-enter `claim` (valid on its own, shown after) and fail; the books hold."""
    from fedmarket.chain import artifacts
    from fedmarket.market import Deployment

    chain = world["chain"]
    deployer, treasury = chain.new_account("mm-reentry", 0), chain.new_account("mm-reentry", 1)
    art = artifacts.load("mocks/ReentrantToken")
    token = chain.deploy(deployer, "ReentrantToken", art.abi, art.bytecode)
    dep = Deployment.deploy(chain, deployer, treasury.address, fee_bps=FEE_BPS, unbonding_delay=1_000, token=token)
    people = [world["requester"], world["aggregator"], world["outsider"], *world["providers"], *world["validators"]]
    for acct in people:
        token.transact("mint", acct.address, 10_000 * TOKEN, sender=deployer)
        token.transact("approve", dep.market.address, MAX, sender=acct)
    shop = Shop(Kit({**world, "dep": dep, "deployer": deployer, "treasury": treasury}))
    job = shop.listed()
    mm, a = shop.mm, shop.buyers[0]
    mm.transact("buy_credits", job.id, 100, NO_BOUND, sender=a)
    shop.staked(job)
    shop.settle(job, [shop.usage(job, a, 100)])
    payload = mm.abi.function("claim").encode((job.id, 0, reward_struct(job.leaves[0]), job.tree.proof(0)))
    token.transact("arm", mm.address, payload, sender=deployer)
    attempts, successes = int(token.call("attempts")), int(token.call("successes"))
    mm.transact("withdraw", sender=shop.server)
    shop.claim(job, 1)
    mm.transact("buy_credits", job.id, 5, NO_BOUND, sender=a)
    mm.transact("request_refund", job.id, sender=a)
    shop.kit.advance(86_400)
    mm.transact("refund", job.id, sender=a)
    assert int(token.call("attempts")) == attempts + 4 and int(token.call("successes")) == successes
    assert mm.call("withdrawn", job.id, 0) == 0  # no re-entered claim got through
    token.transact("arm", "0x" + "00" * 20, b"", sender=deployer)
    assert shop.claim(job, 0).event("RevenueClaimed")["amount"] > 0  # the payload is valid on its own


# ---------------------------------------------------------------- verifiable inference (EZKL)

EZKL = Path(__file__).parent / "data" / "ezkl_softmax_64x10.json"


class Proven:
    """A validated softmax job (64 features, 10 classes) whose final model is the one an EZKL
    verifier was generated for, listed and served. `data/ezkl_softmax_64x10.json` holds that real
    verifier (bytecode), a real proof of one inference of the model, and a real proof of another
    model (an MLP), all from `benchmarks/ezkl_inference.py` with its test-only SRS."""

    def __init__(self, shop: Shop):
        from fedmarket.chain.abi import ContractABI
        from fedmarket.fl.quantize import quantize

        self.shop, kit = shop, shop.kit
        self.doc = json.loads(EZKL.read_text())
        W, b = np.asarray(self.doc["weight"]).T, np.asarray(self.doc["bias"])  # torch's (out, in) -> features x classes
        q = quantize(np.concatenate([W.ravel(), b]))
        job = kit.job(n=2, validators=3, rounds=1, n_params=650, chunk_size=64, claim_period=10_000,
                      licence_requester_bps=OWNER_CAP)
        job.commit_all(model=q)
        leaves = [{"account": a, "role": r, "amount": amt, "reputation_delta": 1, "value": amt, "activity": 1}
                  for a, r, amt in sorted([(p.address, Role.PROVIDER, 400 * TOKEN) for p in job.providers]
                                          + [(v.address, Role.VALIDATOR, 0) for v in job.validators]
                                          + [(kit.aggregator.address, Role.AGGREGATOR, 0)], key=lambda m: int(m[0], 16))]
        job.finalize(index_leaves(leaves), value_total=0)
        job.settle()
        shop.lic.transact("mint", job.id, sender=kit.outsider)
        shop.list(job, shape=(64, 10))
        shop.jobs.append(job)
        self.job = job
        self.verifier = kit.chain.deploy(kit.deployer, "Halo2Verifier", ContractABI(self.doc["abi"]),
                                         bytes.fromhex(self.doc["bytecode"]))

    def proof(self, which: str = "proof") -> tuple[bytes, list[int]]:
        p = self.doc[which]
        return bytes.fromhex(p["hex_proof"][2:]), [int(v) for v in p["instances"]]

    def attest(self, signers, verifier=None) -> list[bytes]:
        from fedmarket.protocol.receipts import VerifierAttestation

        kit, verifier = self.shop.kit, verifier or self.verifier.address
        codehash = keccak(kit.chain.code(verifier))
        root = self.shop.mm.call("model_root", self.job.id)
        return [VerifierAttestation(self.job.id, root, verifier, codehash).sign(v.key, kit.chain_id, self.shop.mm.address)
                for v in signers]

    def register(self, signers=None, verifier=None, sigs=None):
        signers = self.job.validators[:2] if signers is None else signers
        sigs = self.attest(signers, verifier) if sigs is None else sigs
        return self.shop.mm.transact("register_verifier", self.job.id, verifier or self.verifier.address, sigs,
                                     sender=self.shop.kit.outsider)

    def sign_proof(self, proof: bytes, instances: list[int], server=None) -> bytes:
        from fedmarket.protocol.receipts import ProvenAnswer

        server = server or self.shop.server
        ihash = keccak(eth_abi.encode(["uint256[]"], [instances]))
        return ProvenAnswer(self.job.id, keccak(proof), ihash).sign(server.key, self.shop.kit.chain_id, self.shop.mm.address)


@pytest.fixture
def proven(shop):
    return Proven(shop)


def test_a_majority_of_the_jobs_validators_registers_the_verifier_once(proven):
    shop, job, v = proven.shop, proven.job, proven.job.validators
    with reverts("model: not a validator majority"):
        proven.register(signers=v[:1])
    with reverts("model: attester counted twice"):
        proven.register(sigs=proven.attest(v[:1]) * 2)
    with reverts("model: attester not a validator"):
        proven.register(signers=[v[0], shop.rival])
    with reverts("model: attester not a validator"):  # another verifier's attestation
        proven.register(sigs=proven.attest(v[:2], verifier=shop.mm.address))
    with reverts("model: verifier has no code"):
        proven.register(verifier=shop.rival.address)
    with reverts("model: no verifier registered"):
        shop.mm.transact("prove_answer", job.id, *proven.proof(), sender=shop.kit.outsider)
    ev = proven.register().event("VerifierRegistered")
    assert (ev["verifier"], ev["attesters"]) == (proven.verifier.address, 2)
    with reverts("model: verifier registered"):
        proven.register(signers=v)


def test_a_proof_of_the_model_verifies_on_chain_and_one_of_another_model_is_slashed(proven):
    shop, job = proven.shop, proven.job
    proven.register()
    shop.staked(job)
    proof, instances = proven.proof()
    r = shop.mm.transact("prove_answer", job.id, proof, instances, sender=shop.kit.outsider)
    assert r.event("AnswerProven") and shop.mm.call("answers_proven", job.id) == 1
    forged = [*instances[:-1], instances[-1] + 1]  # another answer for the same proof
    with reverts("model: proof rejected"):
        shop.mm.transact("prove_answer", job.id, proof, forged, sender=shop.kit.outsider)
    other, other_instances = proven.proof("other_model_proof")
    with reverts("model: proof rejected"):
        shop.mm.transact("prove_answer", job.id, other, other_instances, sender=shop.kit.outsider)
    with reverts("model: proof is valid"):  # an honest server's proof cannot be disputed
        shop.mm.transact("dispute_proof", job.id, shop.server.address, proof, instances,
                         proven.sign_proof(proof, instances), sender=shop.rival)
    with reverts("model: not the server's proof"):
        shop.mm.transact("dispute_proof", job.id, shop.server.address, other, other_instances,
                         proven.sign_proof(other, other_instances, server=shop.rival), sender=shop.rival)
    r = shop.mm.transact("dispute_proof", job.id, shop.server.address, other, other_instances,
                         proven.sign_proof(other, other_instances), sender=shop.rival)
    assert r.event("AnswerSlashed")["amount"] == SSTAKE and shop.mm.call("disputes_lost", job.id) == 1
    assert shop.mm.call("owed", shop.rival.address) == SSTAKE // 2


# A verifier whose verification costs millions of gas (a bigger circuit than the test's): the same
# EZKL verifier behind a gas-heavy front, as validators could attest for a large model.
HEAVY_VERIFIER = """
# pragma version 0.4.3
REAL: immutable(address)


@deploy
def __init__(real: address):
    REAL = real


@external
def verifyProof(proof: Bytes[16384], instances: DynArray[uint256, 512]) -> bool:
    x: bytes32 = empty(bytes32)
    for i: uint256 in range(60_000):
        x = keccak256(x)
    out: Bytes[32] = raw_call(REAL, msg.data, max_outsize=32, is_static_call=True)
    return convert(out, uint256) == 1
"""


def test_a_dispute_sent_with_too_little_gas_for_the_verifier_slashes_nobody(proven):
    """A stranger disputes an honest server's valid proof with a gas limit that starves the verifier
    (the call gets 63/64 of what is left, and the 1/64 kept back pays for the slash), or starves the
    call the verifier makes in turn (EZKL's calls the pairing precompile with all its gas; found by
    the review of the first fix, which looked only at the outer call): neither failure counts as a
    rejection of the proof."""
    import vyper
    from fedmarket.chain.abi import ContractABI

    shop, job, kit = proven.shop, proven.job, proven.shop.kit
    out = vyper.compile_code(HEAVY_VERIFIER, output_formats=["abi", "bytecode"])
    heavy = kit.chain.deploy(kit.deployer, "HeavyVerifier", ContractABI(out["abi"]),
                             bytes.fromhex(out["bytecode"][2:]), proven.verifier.address)
    proven.register(verifier=heavy.address)
    shop.staked(job)
    proof, instances = proven.proof()
    sig = proven.sign_proof(proof, instances)
    with reverts("model: proof is valid"):  # with the gas it needs, the proof verifies
        shop.mm.transact("dispute_proof", job.id, shop.server.address, proof, instances, sig, sender=shop.rival)
    data = shop.mm.abi.function("dispute_proof").encode((job.id, shop.server.address, proof, instances, sig))
    env = kit.chain.env
    slashed_at, reasons = [], set()
    # the verifier needs about 5.6M: below, its loop runs out (the 1/64 kept back pays for a slash);
    # just above, the call it makes to the real verifier runs out, and it reverts with gas to spare
    for gas in (4_600_000, 5_400_000, 5_950_000, 6_000_000):
        with env.anchor():
            comp = env.execute_code(to_address=shop.mm.address, sender=shop.rival.address, data=data, gas=gas)
            if not comp.is_error:
                slashed_at.append(gas)
            reasons.add(b"model: verifier out of gas" in bytes(comp.output or b""))
    assert not slashed_at, f"a starved verifier call slashed the honest server (gas limits {slashed_at})"
    assert reasons == {True}  # the sender is told why
    assert shop.mm.call("stake", job.id, shop.server.address) == SSTAKE
