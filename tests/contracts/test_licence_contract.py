"""ModelLicence: a settled job's model as an ERC-721 owned by its requester, licence sales at the
job's price, and the revenue shared over the job's own reward root (the market's leaf struct and
positional proof). No admin, no mint path but a settled job."""

from __future__ import annotations

import eth_abi
import pytest
from contract_kit import FEE_BPS, TOKEN, ZERO_ADDR, Kit, index_leaves, pool_of, reverts
from eth_utils import keccak
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedmarket.market import JobState, Role
from fedmarket.protocol.proofs import reward_struct

PRICE = 30 * TOKEN


def net(price: int, requester_bps: int = 0) -> int:
    """What a sale leaves the contributors: the price less the protocol fee and the owner's share."""
    return price - price * FEE_BPS // 10_000 - price * requester_bps // 10_000


NET = net(PRICE)
ERC721_ID = bytes.fromhex("80ac58cd")


class Licensing:
    """Jobs settled on the session deployment with chosen reward leaves, and the licence around them."""

    def __init__(self, kit: Kit):
        self.kit = kit
        self.lic = kit.dep.licence
        self.token = kit.token
        self.buyers = [*kit.validators, kit.outsider]

    def finalizing(self, amounts=(400 * TOKEN, 500 * TOKEN), price=PRICE, accounts=None, total=None, requester_bps=0):
        """A job of len(amounts) providers whose root pays `amounts` to `accounts` (its providers by
        default) plus a zero leaf for the aggregator, declaring `total` (their sum by default)."""
        kit = self.kit
        job = kit.job(n=len(amounts), rounds=1, licence_price=price, claim_period=10_000,
                      licence_requester_bps=requester_bps)
        job.commit_all()
        accounts = accounts or [p.address for p in job.providers]
        leaves = [{"account": a, "role": Role.PROVIDER, "amount": amt, "reputation_delta": 1, "value": amt, "activity": 1}
                  for a, amt in zip(accounts, amounts)]
        leaves.append({"account": kit.aggregator.address, "role": Role.AGGREGATOR, "amount": 0, "reputation_delta": 1,
                           "value": 0, "activity": 1})
        job.post_rewards(index_leaves(leaves), total=total, value_total=0)
        return job

    def settled(self, **kw):
        job = self.finalizing(**kw)
        job.settle()
        assert job.status()[0] == JobState.SETTLED
        return job

    def minted(self, **kw):
        job = self.settled(**kw)
        self.lic.transact("mint", job.id, sender=self.kit.outsider)
        return job

    def buy(self, job, buyer, approve=True):
        if approve:
            self.token.transact("approve", self.lic.address, 2**256 - 1, sender=buyer)
        return self.lic.transact("buy", job.id, sender=buyer)

    def claim(self, job, i, sender=None, leaf=None, proof=None, job_id=None):
        leaf = reward_struct(job.leaves[i]) if leaf is None else leaf
        proof = job.tree.proof(i) if proof is None else proof
        return self.lic.transact("claim_revenue", job.id if job_id is None else job_id, i, leaf, proof,
                                 sender=sender or self.kit.outsider)

    def balance(self, address) -> int:
        return self.kit.balance(address)


@pytest.fixture
def lw(kit):
    return Licensing(kit)


def transfers(receipt, contract):
    return [(e["sender"], e["receiver"], e.args.get("value", e.args.get("token_id")))
            for e in receipt.events if e.name == "Transfer" and e.address == contract.address]


# ---------------------------------------------------------------- deployment and minting


def test_deployment_wires_the_market_and_keeps_no_admin(lw):
    lic, kit = lw.lic, lw.kit
    assert lic.call("MARKET") == kit.m.address and lic.call("TOKEN") == kit.token.address
    assert (lic.call("name"), lic.call("symbol"), lic.call("totalSupply")) == ("fedmarket model", "FMM", 0)
    assert lic.call("supportsInterface", ERC721_ID)
    owners = [(e["previous_owner"], e["new_owner"]) for e in lic.events("OwnershipTransferred")]
    assert owners[-1] == (kit.deployer.address, ZERO_ADDR), "ownership must end renounced"


def test_event_log_shows_the_minter_role_revoked(lw):
    changes = [(e["minter"], e["status"]) for e in lw.lic.events("RoleMinterChanged")]
    assert changes and changes[-1] == (lw.kit.deployer.address, False)


@pytest.mark.parametrize("stage", ["unknown", "open", "training", "finalizing", "cancelled", "failed"])
def test_mint_before_settlement_reverts(lw, stage):
    kit = lw.kit
    if stage == "unknown":
        job_id = 999
    elif stage == "open":
        job_id = kit.post()
    elif stage == "training":
        job_id = kit.job().id
    elif stage == "finalizing":
        job_id = lw.finalizing().id
    elif stage == "cancelled":
        job_id = kit.post()
        kit.m.transact("cancel", job_id, sender=kit.requester)
    else:
        job_id = kit.job().id
        kit.advance(501)
        kit.m.transact("fail", job_id, sender=kit.outsider)
    with reverts("licence: job not settled"):
        lw.lic.transact("mint", job_id, sender=kit.outsider)
    assert lw.lic.call("totalSupply") == 0


def test_mint_after_settlement_once_to_the_requester(lw):
    kit = lw.kit
    job = lw.settled()
    r = lw.lic.transact("mint", job.id, sender=kit.outsider)  # anyone may mint; the token goes to the requester
    ev = r.event("ModelMinted")
    assert (ev["job_id"], ev["owner"]) == (job.id, kit.requester.address)
    assert transfers(r, lw.lic) == [(ZERO_ADDR, kit.requester.address, job.id)]
    assert lw.lic.call("ownerOf", job.id) == kit.requester.address
    assert lw.lic.call("balanceOf", kit.requester.address) == 1 and lw.lic.call("totalSupply") == 1
    with reverts("licence: already minted"):
        lw.lic.transact("mint", job.id, sender=kit.requester)
    assert lw.lic.call("totalSupply") == 1


@pytest.mark.parametrize("signature, types, values", [
    ("safe_mint(address,string)", ("address", "string"), lambda k: (k.deployer.address, "ipfs://x")),
    ("set_minter(address,bool)", ("address", "bool"), lambda k: (k.outsider.address, True)),
    ("burn(uint256)", ("uint256",), lambda k: (1,)),
    ("transfer_ownership(address)", ("address",), lambda k: (k.deployer.address,)),
])
def test_no_mint_or_admin_path_exists(lw, signature, types, values):
    """snekmate's minter and owner functions are not exported: even the deployer cannot mint a model."""
    kit = lw.kit
    assert signature.split("(")[0] not in lw.lic.abi.functions
    data = keccak(text=signature)[:4] + eth_abi.encode(list(types), list(values(kit)))
    for sender in (kit.deployer, kit.outsider):
        with reverts("reverted without a reason"):
            kit.chain._send(sender, lw.lic.address, data)
    assert lw.lic.call("totalSupply") == 0


# ---------------------------------------------------------------- licence sales


def test_buy_needs_a_minted_model(lw):
    job = lw.settled()
    buyer = lw.buyers[0]
    with reverts("licence: model not minted"):
        lw.buy(job, buyer)
    with reverts("licence: model not minted"):
        lw.lic.transact("buy", 12345, sender=buyer)
    assert lw.lic.call("revenue", job.id) == 0 and not lw.lic.call("licensed", job.id, buyer.address)


def test_buy_pays_the_job_price_once_per_buyer(lw):
    job = lw.minted(price=PRICE)
    b0, b1 = lw.buyers[0], lw.buyers[1]
    before = lw.balance(b0.address), lw.balance(lw.lic.address)
    r = lw.buy(job, b0)
    ev = r.event("LicencePurchased")
    assert (ev["job_id"], ev["buyer"], ev["price"]) == (job.id, b0.address, PRICE)
    assert transfers(r, lw.token) == [(b0.address, lw.lic.address, PRICE)]
    assert (lw.balance(b0.address), lw.balance(lw.lic.address)) == (before[0] - PRICE, before[1] + PRICE)
    assert lw.lic.call("licensed", job.id, b0.address) and lw.lic.call("revenue", job.id) == NET
    with reverts("licence: already licensed"):
        lw.buy(job, b0)
    lw.buy(job, b1)
    assert lw.lic.call("revenue", job.id) == 2 * NET and lw.balance(lw.lic.address) == before[1] + 2 * PRICE


def test_buy_without_allowance_reverts_and_records_nothing(lw):
    job = lw.minted(price=PRICE)
    buyer = lw.buyers[2]
    lw.token.transact("approve", lw.lic.address, PRICE - 1, sender=buyer)
    with reverts("erc20: insufficient allowance"):
        lw.buy(job, buyer, approve=False)
    assert not lw.lic.call("licensed", job.id, buyer.address) and lw.lic.call("revenue", job.id) == 0


def test_free_licence_moves_no_tokens(lw):
    job = lw.minted(price=0)
    buyer = lw.buyers[0]
    before = lw.balance(buyer.address)
    r = lw.lic.transact("buy", job.id, sender=buyer)  # no approval needed
    assert r.event("LicencePurchased")["price"] == 0
    assert transfers(r, lw.token) == [] and lw.balance(buyer.address) == before
    assert lw.lic.call("licensed", job.id, buyer.address) and lw.lic.call("revenue", job.id) == 0
    with reverts("licence: already licensed"):
        lw.lic.transact("buy", job.id, sender=buyer)
    with reverts("licence: nothing to claim"):
        lw.claim(job, 0)


def test_each_job_sells_at_its_own_price(lw):
    cheap, dear = lw.minted(price=3 * TOKEN), lw.minted(price=70 * TOKEN)
    buyer = lw.buyers[0]
    assert lw.buy(cheap, buyer).event("LicencePurchased")["price"] == 3 * TOKEN
    assert lw.buy(dear, buyer).event("LicencePurchased")["price"] == 70 * TOKEN
    assert (lw.lic.call("revenue", cheap.id), lw.lic.call("revenue", dear.id)) == (net(3 * TOKEN), net(70 * TOKEN))


def test_a_job_without_rewards_sells_no_licence(lw):
    job = lw.minted(amounts=(0, 0), price=PRICE)
    buyer = lw.buyers[0]
    lw.token.transact("approve", lw.lic.address, PRICE, sender=buyer)
    with reverts("licence: job has no rewards"):  # nobody could ever claim its revenue
        lw.lic.transact("buy", job.id, sender=buyer)


# ---------------------------------------------------------------- revenue


def test_claim_revenue_pays_pro_rata_and_only_increments(lw):
    amounts = (400 * TOKEN, 500 * TOKEN)
    job = lw.minted(amounts=amounts)
    total = sum(amounts)
    p0, p1 = job.leaves[0]["account"], job.leaves[1]["account"]
    lw.buy(job, lw.buyers[0])
    before = lw.balance(p0)
    r = lw.claim(job, 0)  # anyone may submit; the account is paid
    due0 = NET * amounts[0] // total
    ev = r.event("RevenueClaimed")
    assert (ev["job_id"], ev["account"], ev["amount"]) == (job.id, p0, due0)
    assert transfers(r, lw.token) == [(lw.lic.address, p0, due0)]
    assert lw.balance(p0) == before + due0
    assert (lw.lic.call("withdrawn", job.id, 0), lw.lic.call("paid_out", job.id)) == (due0, due0)
    with reverts("licence: nothing to claim"):
        lw.claim(job, 0)
    lw.buy(job, lw.buyers[1])
    lw.buy(job, lw.buyers[2])
    revenue = 3 * NET
    assert lw.lic.call("revenue", job.id) == revenue
    assert lw.claim(job, 0).event("RevenueClaimed")["amount"] == revenue * amounts[0] // total - due0
    assert lw.claim(job, 1, sender=lw.kit.providers[1]).event("RevenueClaimed")["amount"] == revenue * amounts[1] // total
    with reverts("licence: nothing to claim"):  # the aggregator's leaf pays nothing
        lw.claim(job, 2)
    paid = lw.lic.call("paid_out", job.id)
    assert paid == revenue * amounts[0] // total + revenue * amounts[1] // total and revenue - 2 <= paid <= revenue
    assert lw.balance(lw.lic.address) == 3 * PRICE - paid  # the treasury's fees wait to be withdrawn
    assert lw.balance(p1) > 0


def test_claim_revenue_uses_the_market_reward_leaf_and_proof(lw):
    """The same leaf and proof as the market's claim work here, before or after the market claim."""
    job = lw.minted()
    lw.buy(job, lw.buyers[0])
    job.claim(1)
    assert lw.claim(job, 1).event("RevenueClaimed")["account"] == job.leaves[1]["account"]
    assert lw.claim(job, 0).event("RevenueClaimed")["account"] == job.leaves[0]["account"]


@pytest.mark.parametrize("forgery", ["amount", "account", "index", "delta", "value", "proof", "empty proof",
                                     "other job"])
def test_claim_revenue_rejects_forged_proofs(lw, forgery):
    job = lw.minted()
    other = lw.minted(amounts=(300 * TOKEN, 600 * TOKEN))
    lw.buy(job, lw.buyers[0])
    leaf, index, proof = dict(job.leaves[0]), 0, job.tree.proof(0)
    if forgery in ("amount", "value"):
        leaf[forgery] *= 2
    elif forgery == "account":
        leaf["account"] = lw.kit.outsider.address
    elif forgery == "index":
        index = 1
    elif forgery == "delta":
        leaf["reputation_delta"] = -leaf["reputation_delta"]
    elif forgery == "proof":
        proof = [keccak(b"forged"), proof[1]]
    elif forgery == "empty proof":
        proof = []
    else:  # a genuine leaf and proof, but of another job
        leaf, proof = dict(other.leaves[0]), other.tree.proof(0)
    with reverts("licence: invalid proof"):
        lw.lic.transact("claim_revenue", job.id, index, reward_struct(leaf), proof, sender=lw.kit.outsider)
    assert lw.lic.call("withdrawn", job.id, index) == 0 and lw.balance(lw.lic.address) == PRICE


def test_claim_revenue_needs_a_settled_job_with_rewards(lw):
    job = lw.finalizing()
    with reverts("licence: job not settled"):
        lw.claim(job, 0)
    zero = lw.settled(amounts=(0, 0))
    with reverts("licence: job has no rewards"):
        lw.claim(zero, 0)
    with reverts("licence: job not settled"):
        lw.claim(job, 0, job_id=4242)


def test_claim_revenue_with_nothing_sold_reverts(lw):
    job = lw.minted()
    with reverts("licence: nothing to claim"):
        lw.claim(job, 0)


def test_revenue_stays_with_contributors_when_the_model_changes_hands(lw):
    kit = lw.kit
    job = lw.minted()
    new_owner = kit.outsider.address
    lw.lic.transact("transferFrom", kit.requester.address, new_owner, job.id, sender=kit.requester)
    lw.buy(job, lw.buyers[0])
    owner_before = lw.balance(new_owner)
    due = lw.claim(job, 0, sender=kit.validators[0]).event("RevenueClaimed")["amount"]
    assert due == NET * job.leaves[0]["amount"] // (job.leaves[0]["amount"] + job.leaves[1]["amount"])
    assert lw.balance(new_owner) == owner_before  # terms without an owner's share: the owner earns nothing
    assert lw.lic.call("owed", new_owner) == 0


def test_a_sale_pays_the_fee_and_the_owner_share_as_pull_balances(lw):
    """Terms with an owner's share: each sale credits the treasury's fee and the share to whoever
    holds the model token at that sale; nobody else can withdraw them, nothing is paid twice."""
    kit = lw.kit
    job = lw.minted(requester_bps=1_500)
    fee, share = PRICE * FEE_BPS // 10_000, PRICE * 1_500 // 10_000
    lw.buy(job, lw.buyers[0])
    assert lw.lic.call("revenue", job.id) == net(PRICE, 1_500) == PRICE - fee - share
    assert (lw.lic.call("owed", kit.treasury), lw.lic.call("owed", kit.requester.address)) == (fee, share)
    with reverts("licence: nothing owed"):  # a stranger has no balance to take
        lw.lic.transact("withdraw", sender=kit.outsider)
    before = lw.balance(kit.requester.address)
    r = lw.lic.transact("withdraw", sender=kit.requester)
    assert r.event("Withdrawn")["amount"] == share and lw.balance(kit.requester.address) == before + share
    with reverts("licence: nothing owed"):
        lw.lic.transact("withdraw", sender=kit.requester)
    # the token changes hands: the next sale's share is the new owner's, not the requester's
    lw.lic.transact("transferFrom", kit.requester.address, kit.outsider.address, job.id, sender=kit.requester)
    lw.buy(job, lw.buyers[1])
    assert (lw.lic.call("owed", kit.requester.address), lw.lic.call("owed", kit.outsider.address)) == (0, share)
    assert lw.lic.call("owed", kit.treasury) == 2 * fee
    # contributors still get exactly the rest
    due = lw.claim(job, 0).event("RevenueClaimed")["amount"]
    assert due == 2 * net(PRICE, 1_500) * job.leaves[0]["amount"] // (job.leaves[0]["amount"] + job.leaves[1]["amount"])


def test_one_job_cannot_take_another_jobs_revenue(lw):
    kit = lw.kit
    honest = lw.minted(price=PRICE)
    lw.buy(honest, lw.buyers[0])  # PRICE of the honest job's revenue sits in the licence contract
    accomplice = kit.outsider.address
    # a root whose leaves pay 20 + 0 while it declares a reward total of 10 (unchallenged, it settled)
    bad = lw.minted(amounts=(20, 0), accounts=[accomplice, kit.providers[1].address], total=10, price=TOKEN)
    lw.buy(bad, lw.buyers[1])  # the bad job's own revenue: 1 TOKEN
    before = lw.balance(accomplice)
    with reverts("licence: claims exceed revenue"):  # its leaf would be owed twice its job's revenue
        lw.claim(bad, 0)
    assert lw.balance(accomplice) == before
    assert lw.balance(lw.lic.address) == PRICE + TOKEN


def test_an_account_with_two_leaves_gets_both_shares(lw):
    kit = lw.kit
    p0 = kit.providers[0].address
    job = lw.minted(amounts=(300 * TOKEN, 300 * TOKEN, 300 * TOKEN), accounts=[p0, kit.providers[1].address, p0])
    lw.buy(job, lw.buyers[0])
    job.claim(0)
    job.claim(2)  # the market honours both leaves of p0
    assert lw.claim(job, 0).event("RevenueClaimed")["amount"] == NET // 3
    assert lw.claim(job, 2).event("RevenueClaimed")["amount"] == NET // 3


@settings(max_examples=12, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(
    amounts=st.lists(st.integers(0, pool_of() // 6), min_size=2, max_size=5).filter(lambda a: sum(a) > 0),
    price=st.one_of(st.integers(1, 1_000), st.integers(1, 100 * TOKEN)),
    sales=st.lists(st.integers(1, 2), min_size=1, max_size=2),  # at most the 5 funded buyers
)
def test_revenue_shares_never_exceed_revenue(world, amounts, price, sales):
    """Claims after each batch of sales: each leaf holds floor(revenue * amount / total), the sum
    never exceeds the revenue, and the dust left is below one unit per claimant."""
    with world["chain"].snapshot():
        lw = Licensing(Kit(world))
        job = lw.minted(amounts=tuple(amounts), price=price)
        total, buyers, revenue, paid_in = sum(amounts), iter(lw.buyers), 0, 0
        for batch in sales:
            for _ in range(batch):
                lw.buy(job, next(buyers))
                revenue += net(price)
                paid_in += price
            for i, leaf in enumerate(job.leaves):
                entitled = revenue * leaf["amount"] // total
                if entitled > lw.lic.call("withdrawn", job.id, i):
                    lw.claim(job, i)
                else:
                    with reverts("licence: nothing to claim"):
                        lw.claim(job, i)
                assert lw.lic.call("withdrawn", job.id, i) == entitled
            paid = lw.lic.call("paid_out", job.id)
            assert paid == sum(lw.lic.call("withdrawn", job.id, j) for j in range(len(job.leaves)))
            assert revenue - len(job.leaves) < paid <= revenue
            assert lw.balance(lw.lic.address) == paid_in - paid
            assert lw.lic.call("owed", lw.kit.treasury) == paid_in - revenue


# ---------------------------------------------------------------- ERC-721


def test_model_token_transfers_and_approvals(lw):
    kit = lw.kit
    job = lw.minted()
    lic, req, out, other = lw.lic, kit.requester.address, kit.outsider.address, lw.buyers[0].address
    with reverts("erc721: caller is not token owner or approved"):
        lic.transact("transferFrom", req, out, job.id, sender=kit.outsider)
    r = lic.transact("approve", out, job.id, sender=kit.requester)
    assert (r.event("Approval")["approved"], lic.call("getApproved", job.id)) == (out, out)
    r = lic.transact("transferFrom", req, out, job.id, sender=kit.outsider)
    assert transfers(r, lic) == [(req, out, job.id)]
    assert lic.call("ownerOf", job.id) == out and lic.call("getApproved", job.id) == ZERO_ADDR
    assert (lic.call("balanceOf", req), lic.call("balanceOf", out)) == (0, 1)
    with reverts("erc721: caller is not token owner or approved"):
        lic.transact("transferFrom", out, req, job.id, sender=kit.requester)
    with reverts("erc721: transfer to the zero address"):
        lic.transact("transferFrom", out, ZERO_ADDR, job.id, sender=kit.outsider)
    r = lic.transact("setApprovalForAll", other, True, sender=kit.outsider)
    assert r.event("ApprovalForAll")["approved"] and lic.call("isApprovedForAll", out, other)
    r = lic.transact("safeTransferFrom", out, req, job.id, b"", sender=lw.buyers[0])
    assert transfers(r, lic) == [(out, req, job.id)] and lic.call("ownerOf", job.id) == req
    with reverts("erc721: invalid token ID"):
        lic.call("ownerOf", job.id + 1)
