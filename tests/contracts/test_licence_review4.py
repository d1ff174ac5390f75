"""Fourth review of the licence and its revenue, written as the attacker: `ModelLicence` (sales,
the owner's share, contributors' claims) and the functions of `ModelMarket` that read the licence
token or split revenue (`list_model`, `set_offer`, `buy_credits`, `buy_access`, `settle_usage`,
`claim`, `withdraw`). Each test asserts the safe behaviour; an attack that works is a strict xfail
whose reason names the fix. Every test ends with the contract's token balance equal to what it owes.
Of the five attacks this review found working, four are fixed (a server share routing the
contributors' part to the owner, claims overflowing at the largest amounts, and front-running of
buy_access and buy_credits); a seller locking the buyer of the model token out of the owner share
stays a strict xfail."""

from __future__ import annotations

import pytest
from contract_kit import FEE_BPS, MAX, TOKEN, index_leaves, pool_of, reverts
from test_licence_contract import Licensing, net
from test_model_market import APRICE, OWNER_CAP, PERIOD, QPRICE, SSTAKE, Shop, offer

from fedmarket.errors import ContractRevert
from fedmarket.market import Role
from fedmarket.protocol.proofs import reward_struct

BPS = 10_000


# ---------------------------------------------------------------- books


class LicenceBooks(Licensing):
    """`Licensing` that remembers its jobs, so the licence's balance can be checked against what it
    owes: every pull balance plus each job's unpaid revenue (rounding dust included)."""

    def __init__(self, kit):
        super().__init__(kit)
        self.jobs: list = []

    def minted(self, **kw):
        job = super().minted(**kw)
        self.jobs.append(job)
        return job

    def owes(self) -> int:
        kit, lic = self.kit, self.lic
        accounts = {kit.treasury, kit.requester.address, kit.outsider.address, kit.aggregator.address,
                    *(p.address for p in kit.providers), *(v.address for v in kit.validators)}
        total = sum(lic.call("owed", a) for a in accounts)
        return total + sum(lic.call("revenue", j.id) - lic.call("paid_out", j.id) for j in self.jobs)


@pytest.fixture
def books(kit):
    b = LicenceBooks(kit)
    yield b
    assert b.balance(b.lic.address) == b.owes(), "the licence's balance is not what it owes"


class MarketBooks(Shop):
    """`Shop` whose books also count the stake of the model owner serving its own model."""

    def held(self) -> int:
        return super().held() + sum(self.mm.call("stake", j.id, self.kit.requester.address) for j in self.jobs)


@pytest.fixture
def shop(kit):
    s = MarketBooks(kit)
    kit.token.transact("approve", s.mm.address, MAX, sender=kit.requester)
    yield s
    assert s.bal(s.mm.address) == s.held(), "the model market's balance is not what it owes"


def usage_as(shop, job, caller, count, server):
    from fedmarket.protocol.receipts import Usage

    return (count, Usage(job.id, server.address, count).sign(caller.key, shop.kit.chain_id, shop.mm.address))


# ---------------------------------------------------------------- ModelLicence


@pytest.mark.parametrize("index_of", ["n_leaves", "index + 2**depth", "huge"])
def test_licence_claim_cannot_be_repeated_under_another_index(books, index_of):
    """A claimed leaf shown again at an index outside the tree (or aliasing its bits) is refused:
    `withdrawn` is keyed by index, so any alias would pay the leaf twice."""
    job = books.minted()
    books.buy(job, books.buyers[0])
    paid = books.claim(job, 0).event("RevenueClaimed")["amount"]
    assert paid > 0
    n, depth = len(job.leaves), len(job.tree.proof(0))
    index = {"n_leaves": n, "index + 2**depth": 2**depth, "huge": 2**255}[index_of]
    before = books.balance(job.leaves[0]["account"])
    for proof in (job.tree.proof(0), [*job.tree.proof(0), job.tree.proof(0)[0]]):
        with reverts("licence: invalid proof"):
            books.lic.transact("claim_revenue", job.id, index, reward_struct(job.leaves[0]), proof,
                               sender=books.kit.outsider)
    assert books.balance(job.leaves[0]["account"]) == before and books.lic.call("paid_out", job.id) == paid


def test_licence_revenue_outlives_the_claim_period_and_the_sweep(books):
    """The market's claim period ends and its unclaimed rewards are swept to the requester: the
    job stays Settled, so licences still sell and contributors still claim (nothing stranded)."""
    kit = books.kit
    job = books.minted()
    books.buy(job, books.buyers[0])
    kit.advance(kit.m.call("progress", job.id)["claim_deadline"] - kit.now() + 1)
    kit.m.transact("sweep", job.id, sender=kit.outsider)
    books.buy(job, books.buyers[1])
    total = sum(leaf["amount"] for leaf in job.leaves)
    for i in (0, 1):
        assert books.claim(job, i).event("RevenueClaimed")["amount"] == 2 * net(30 * TOKEN) * job.leaves[i]["amount"] // total


@pytest.mark.parametrize("requester_bps", [0, BPS - 1_000])  # 9,000: the largest share the terms allow
def test_licence_split_at_the_largest_price_and_the_bps_bounds(books, requester_bps):
    """A sale at MAX_AMOUNT (2**128) with the owner's share at 0 and at its bound: exact shares, no
    overflow, and claims never above the revenue."""
    kit = books.kit
    price = 2**128
    job = books.minted(price=price, requester_bps=requester_bps)
    buyer = books.buyers[0]
    kit.token.transact("mint", buyer.address, price, sender=kit.deployer)
    books.buy(job, buyer)
    fee, share = price * FEE_BPS // BPS, price * requester_bps // BPS
    assert books.lic.call("revenue", job.id) == price - fee - share
    assert books.lic.call("owed", kit.treasury) == fee and books.lic.call("owed", kit.requester.address) == share
    paid = sum(books.claim(job, i).event("RevenueClaimed")["amount"] for i in (0, 1))
    assert price - fee - share - 2 < paid <= price - fee - share
    if share:
        assert books.lic.transact("withdraw", sender=kit.requester).event("Withdrawn")["amount"] == share


def test_licence_one_unit_sales_leave_only_dust(books):
    """Sales of 1 unit each (the fee and the owner's share round to 0): what stays unclaimable is
    below one unit per leaf, however many sales (the claims are cumulative, not per sale)."""
    job = books.minted(price=1, requester_bps=OWNER_CAP)
    for b in books.buyers:
        books.buy(job, b)
    revenue = books.lic.call("revenue", job.id)
    assert revenue == len(books.buyers)
    for i in (0, 1):
        try:
            books.claim(job, i)
        except ContractRevert as e:
            assert e.reason == "licence: nothing to claim"
    assert revenue - books.lic.call("paid_out", job.id) < len(job.leaves)


def test_licence_a_token_transfer_before_a_sale_changes_neither_price_nor_contributors_part(books):
    """The model token's owner cannot reprice a sale it sees coming (the price is the job's terms),
    and moving the token only moves the next owner's share, never the contributors' part."""
    kit = books.kit
    job = books.minted(requester_bps=OWNER_CAP)
    buyer = books.buyers[0]
    books.token.transact("approve", books.lic.address, MAX, sender=buyer)  # a standing allowance
    books.lic.transact("transferFrom", kit.requester.address, kit.outsider.address, job.id, sender=kit.requester)
    before = books.balance(buyer.address)
    books.lic.transact("buy", job.id, sender=buyer)
    assert before - books.balance(buyer.address) == 30 * TOKEN
    assert books.lic.call("revenue", job.id) == net(30 * TOKEN, OWNER_CAP)
    assert books.lic.call("owed", kit.outsider.address) == 30 * TOKEN * OWNER_CAP // BPS
    assert books.lic.call("owed", kit.requester.address) == 0


def test_licence_claims_survive_revenue_at_the_largest_amounts(books):
    kit = books.kit
    escrow = 2**128
    kit.token.transact("mint", kit.requester.address, escrow, sender=kit.deployer)
    kit.token.transact("approve", kit.m.address, MAX, sender=kit.requester)
    half = pool_of(escrow) // 2
    job = kit.job(n=2, rounds=1, licence_price=2**128, claim_period=10_000, escrow=escrow)
    job.commit_all()
    leaves = [{"account": p.address, "role": Role.PROVIDER, "amount": half, "reputation_delta": 1, "value": half,
               "activity": 1} for p in job.providers]
    leaves.append({"account": kit.aggregator.address, "role": Role.AGGREGATOR, "amount": 0, "reputation_delta": 1,
                   "value": 0, "activity": 1})
    job.post_rewards(index_leaves(leaves), value_total=0)
    job.settle()
    books.lic.transact("mint", job.id, sender=kit.outsider)
    books.jobs.append(job)
    for k, b in enumerate(books.buyers[:3]):
        kit.token.transact("mint", b.address, 2**128, sender=kit.deployer)
        books.buy(job, b)
        if k == 1:
            assert books.claim(job, 1).event("RevenueClaimed")["amount"] > 0  # two sales: claims work
    revenue = books.lic.call("revenue", job.id)
    try:
        paid = books.claim(job, 0).event("RevenueClaimed")["amount"]
    except ContractRevert as e:
        pytest.fail(f"a contributor's claim reverts for ever ({e.reason or 'overflow'})")
    assert paid == revenue * half // (2 * half)


# ---------------------------------------------------------------- ModelMarket: claims and ownership


@pytest.mark.parametrize("index_of", ["n_leaves", "index + 2**depth"])
def test_market_claim_cannot_be_repeated_under_another_index(shop, index_of):
    mm = shop.mm
    job = shop.listed()
    a = shop.buyers[0]
    mm.transact("buy_access", job.id, 1, 2**256 - 1, 0, sender=a)
    assert shop.claim(job, 0).event("RevenueClaimed")["amount"] > 0
    index = {"n_leaves": len(job.leaves), "index + 2**depth": 2 ** len(job.tree.proof(0))}[index_of]
    with reverts("model: invalid proof"):
        mm.transact("claim", job.id, index, reward_struct(job.leaves[0]), job.tree.proof(0), sender=shop.kit.outsider)


def test_market_revenue_outlives_the_claim_period_and_the_sweep(shop):
    kit, mm = shop.kit, shop.mm
    job = shop.listed()
    kit.advance(kit.m.call("progress", job.id)["claim_deadline"] - kit.now() + 1)
    kit.m.transact("sweep", job.id, sender=kit.outsider)
    mm.transact("buy_access", job.id, 1, 2**256 - 1, 0, sender=shop.buyers[0])
    assert shop.claim(job, 1).event("RevenueClaimed")["amount"] > 0


def test_market_only_the_current_token_owner_sets_terms_and_takes_later_shares(shop):
    """After the model token changes hands: the seller and an operator it approved before cannot
    change the offer; the seller keeps what it was owed; later owner shares go to the buyer."""
    kit, mm, lic = shop.kit, shop.mm, shop.lic
    job = shop.listed()
    a = shop.buyers[0]
    mm.transact("buy_access", job.id, 1, 2**256 - 1, 0, sender=a)
    seller_owed = mm.call("owed", kit.requester.address)
    assert seller_owed == APRICE * 1_000 // BPS
    lic.transact("setApprovalForAll", kit.aggregator.address, True, sender=kit.requester)
    lic.transact("transferFrom", kit.requester.address, kit.outsider.address, job.id, sender=kit.requester)
    for who in (kit.requester, kit.aggregator):
        with reverts("model: not the model owner"):
            mm.transact("set_offer", job.id, offer(query_price=1), sender=who)
    mm.transact("buy_access", job.id, 1, 2**256 - 1, 0, sender=a)
    assert mm.call("owed", kit.requester.address) == seller_owed
    assert mm.call("owed", kit.outsider.address) == APRICE * 1_000 // BPS
    assert mm.transact("withdraw", sender=kit.requester).event("Withdrawn")["amount"] == seller_owed


# ---------------------------------------------------------------- ModelMarket: the offer as a weapon


def test_the_owner_cannot_route_the_contributors_share_through_its_own_server(shop):
    kit, mm = shop.kit, shop.mm
    owner = kit.requester
    job = shop.listed()  # owner_bps 1,000, server_bps 2,000: contributors 69%
    try:
        mm.transact("set_offer", job.id, offer(owner_bps=0, server_bps=BPS - FEE_BPS), sender=owner)
        mm.transact("stake_server", job.id, SSTAKE, sender=owner)
    except ContractRevert:
        return  # refused: safe
    a = shop.buyers[0]
    mm.transact("buy_credits", job.id, 100, 2**256 - 1, sender=a)
    amount = mm.transact("settle_usage", job.id, [usage_as(shop, job, a, 100, owner)],
                         sender=owner).event("UsageSettled")["amount"]
    assert amount == 100 * QPRICE
    floor = amount * (BPS - FEE_BPS - OWNER_CAP) // BPS  # what the contributors agreed to leave at most
    assert mm.call("revenue", job.id) >= floor, "contributors got less than the job's terms promise"


def test_a_seller_cannot_lock_the_buyer_of_the_model_token_out_of_the_owner_share(shop):
    """The seller of the model token raises the server share to all the job's terms allow and stakes
    as a server before the sale. The buyer can still set the whole owner share for servers that stake
    from now on; the seller's server keeps the share it staked under, the buyer takes what the terms
    leave beside it (nothing), and the contributors keep their part."""
    kit, mm, lic = shop.kit, shop.mm, shop.lic
    seller, buyer = kit.requester, kit.outsider
    job = shop.listed()
    mm.transact("set_offer", job.id, offer(owner_bps=0, server_bps=OWNER_CAP), sender=seller)
    mm.transact("stake_server", job.id, SSTAKE, sender=seller)
    lic.transact("transferFrom", seller.address, buyer.address, job.id, sender=seller)
    # the new owner takes the share the job's terms give the owner, for servers that stake from now on
    mm.transact("set_offer", job.id, offer(owner_bps=OWNER_CAP, server_bps=0), sender=buyer)
    assert mm.call("offer", job.id)["owner_bps"] == OWNER_CAP
    a, b, server = shop.buyers[0], shop.buyers[1], shop.server
    mm.transact("stake_server", job.id, SSTAKE, sender=server)
    for caller in (a, b):
        mm.transact("buy_credits", job.id, 100, 2**256 - 1, sender=caller)
    owed = {x.address: mm.call("owed", x.address) for x in (seller, buyer, server)}
    revenue = mm.call("revenue", job.id)
    mm.transact("settle_usage", job.id, [usage_as(shop, job, a, 100, seller)], sender=seller)
    mm.transact("settle_usage", job.id, [usage_as(shop, job, b, 100, server)], sender=server)
    amount = 100 * QPRICE
    assert mm.call("owed", seller.address) - owed[seller.address] == amount * OWNER_CAP // BPS  # its staked share
    assert mm.call("owed", server.address) - owed[server.address] == 0  # staked under the buyer's offer
    assert mm.call("owed", buyer.address) - owed[buyer.address] == amount * OWNER_CAP // BPS  # from the new server
    assert mm.call("revenue", job.id) - revenue == 2 * (amount - amount * FEE_BPS // BPS - amount * OWNER_CAP // BPS)


def test_an_access_buyer_gets_the_period_it_paid_for(shop):
    kit, mm = shop.kit, shop.mm
    job = shop.listed()
    a = shop.buyers[0]
    seen = mm.call("offer", job.id)
    shop.token.transact("approve", mm.address, seen["access_price"], sender=a)  # exactly, like ModelCaller.buy_access
    bounds = (seen["access_price"], kit.now() + seen["access_period"])  # what ModelCaller.buy_access passes
    mm.transact("set_offer", job.id, offer(access_period=1), sender=kit.requester)  # the front-run
    before, now = shop.bal(a.address), kit.now()
    try:
        until = mm.transact("buy_access", job.id, 1, *bounds, sender=a).event("AccessBought")["until"]
    except ContractRevert as e:
        assert "past buyer bounds" in str(e)
        return  # refused: safe
    assert before - shop.bal(a.address) == APRICE
    assert until - now >= PERIOD, f"paid {APRICE} for {until - now} s of access instead of {PERIOD} s"


def test_a_credit_buyer_pays_no_more_than_the_price_it_saw(shop):
    kit, mm = shop.kit, shop.mm
    owner = kit.requester
    job = shop.listed()
    a = shop.buyers[0]  # approved MAX (Shop): a standing allowance
    mm.transact("stake_server", job.id, SSTAKE, sender=owner)
    mm.transact("buy_credits", job.id, 10, 10 * QPRICE, sender=a)
    used = usage_as(shop, job, a, 10, owner)  # 10 queries answered, not settled yet
    mm.transact("set_offer", job.id, offer(query_price=100 * QPRICE), sender=owner)  # the front-run
    before = shop.bal(a.address)
    try:
        mm.transact("buy_credits", job.id, 10, 10 * QPRICE, sender=a)  # bounded by the price it saw, QPRICE
    except ContractRevert as e:
        assert "past buyer bounds" in str(e)
        return  # refused: safe
    paid = before - shop.bal(a.address)
    charged = mm.transact("settle_usage", job.id, [used], sender=owner).event("UsageSettled")["amount"]
    mm.transact("request_refund", job.id, sender=a)
    kit.advance(86_400)
    mm.transact("refund", job.id, sender=a)
    assert charged <= 10 * QPRICE, f"10 used queries charged {charged // QPRICE} query prices"
    assert paid <= 10 * QPRICE, f"paid {paid // QPRICE} query prices for 10 queries"
