"""ModelLicence: the settled job's model as an ERC-721, licence sales, revenue shared by reward root."""

from __future__ import annotations

import pytest
from conftest import TOKEN

from fedmarket.errors import ContractRevert

PRICE = 30 * TOKEN


def test_mint_only_after_settlement_and_only_once(mk):
    lic = mk.dep.licence
    job = mk.training(licence_price=PRICE)
    with pytest.raises(ContractRevert, match="licence: job not settled"):
        lic.transact("mint", job, sender=mk.w["outsider"])
    mk.commit_all(job)
    mk.rewards(job, [400 * TOKEN, 500 * TOKEN])
    mk.chain.advance_time(100)
    mk.m.transact("settle", job, sender=mk.w["outsider"])
    ev = lic.transact("mint", job, sender=mk.w["outsider"]).event("ModelMinted")
    assert ev["owner"] == mk.w["requester"].address
    assert lic.call("ownerOf", job) == mk.w["requester"].address and lic.call("balanceOf", mk.w["requester"].address) == 1
    with pytest.raises(ContractRevert, match="licence: already minted"):
        lic.transact("mint", job, sender=mk.w["outsider"])


def test_nobody_can_mint_outside_a_settled_job(mk):
    """snekmate's minting and role functions are not exported: `mint(job)` is the only way in."""
    from eth_utils import keccak

    lic = mk.dep.licence
    for fn in ("safe_mint", "set_minter", "transfer_ownership", "renounce_ownership", "burn"):
        assert fn not in lic.abi.functions
    # and calling the selector anyway hits no function
    selector = keccak(text="safe_mint(address,string)")[:4]
    with pytest.raises(ContractRevert):
        mk.chain._send(mk.w["outsider"], lic.address, selector + b"\x00" * 96)


def test_buy_pays_the_price_once_per_buyer(mk):
    lic, t = mk.dep.licence, mk.dep.token
    job, leaves, tree = mk.settled(licence_price=PRICE)
    buyer = mk.w["validators"][0]
    t.transact("approve", lic.address, 10 * PRICE, sender=buyer)
    with pytest.raises(ContractRevert, match="licence: model not minted"):
        lic.transact("buy", job, sender=buyer)
    lic.transact("mint", job, sender=buyer)
    before = mk.dep.balance(buyer.address)
    ev = lic.transact("buy", job, sender=buyer).event("LicencePurchased")
    assert ev["price"] == PRICE and mk.dep.balance(buyer.address) == before - PRICE
    assert lic.call("licensed", job, buyer.address) and lic.call("revenue", job) == PRICE
    with pytest.raises(ContractRevert, match="licence: already licensed"):
        lic.transact("buy", job, sender=buyer)


def test_revenue_is_shared_pro_rata_to_rewards(mk):
    lic, t = mk.dep.licence, mk.dep.token
    job, leaves, tree = mk.settled(amounts=(300 * TOKEN, 600 * TOKEN), licence_price=PRICE)
    lic.transact("mint", job, sender=mk.w["outsider"])
    buyers = mk.w["validators"][:2]
    for b in buyers:
        t.transact("approve", lic.address, PRICE, sender=b)
    lic.transact("buy", job, sender=buyers[0])
    p0 = mk.w["providers"][0]
    before = mk.dep.balance(p0.address)
    r = lic.transact("claim_revenue", job, *leaves[0], tree.proof(0), sender=mk.w["outsider"])
    assert r.event("RevenueClaimed")["amount"] == PRICE * 300 // 900
    assert mk.dep.balance(p0.address) - before == PRICE // 3
    with pytest.raises(ContractRevert, match="licence: nothing to claim"):
        lic.transact("claim_revenue", job, *leaves[0], tree.proof(0), sender=mk.w["outsider"])
    lic.transact("buy", job, sender=buyers[1])  # a second sale: only the increment is paid
    assert lic.transact("claim_revenue", job, *leaves[0], tree.proof(0), sender=p0).event("RevenueClaimed")["amount"] == PRICE // 3
    paid1 = lic.transact("claim_revenue", job, *leaves[1], tree.proof(1), sender=p0).event("RevenueClaimed")["amount"]
    assert paid1 == 2 * PRICE * 600 // 900
    assert lic.call("withdrawn", job, p0.address) + paid1 <= lic.call("revenue", job)
    assert mk.dep.balance(lic.address) == 2 * PRICE - 2 * (PRICE // 3) - paid1


def test_revenue_claims_need_a_valid_leaf(mk):
    lic, t = mk.dep.licence, mk.dep.token
    job, leaves, tree = mk.settled(licence_price=PRICE)
    lic.transact("mint", job, sender=mk.w["outsider"])
    t.transact("approve", lic.address, PRICE, sender=mk.w["outsider"])
    lic.transact("buy", job, sender=mk.w["outsider"])
    idx, acct, amount, rep = leaves[0]
    with pytest.raises(ContractRevert, match="licence: invalid proof"):
        lic.transact("claim_revenue", job, idx, acct, amount * 2, rep, tree.proof(0), sender=mk.w["outsider"])
    with pytest.raises(ContractRevert, match="licence: job has no rewards"):
        lic.transact("claim_revenue", job + 1, *leaves[0], tree.proof(0), sender=mk.w["outsider"])


def test_model_token_transfers_like_any_erc721(mk):
    lic = mk.dep.licence
    job, _, _ = mk.settled()
    lic.transact("mint", job, sender=mk.w["outsider"])
    req, new_owner = mk.w["requester"], mk.w["outsider"]
    ev = lic.transact("transferFrom", req.address, new_owner.address, job, sender=req).event("Transfer")
    assert list(ev.args.values()) == [req.address, new_owner.address, job]
    assert lic.call("ownerOf", job) == new_owner.address
    with pytest.raises(ContractRevert):
        lic.transact("transferFrom", new_owner.address, req.address, job, sender=req)
