"""A token that reports a failed transfer by returning false (instead of reverting): every
contract refuses it with its own reason, and nothing is recorded. (`harness/FalseToken.vy`.)"""

from __future__ import annotations

import pytest
from contract_kit import MAX, TOKEN, Kit, RoundPlayer, deploy_test_contract, open_aggregate, reverts

from fedmarket.market import Deployment, JobState, Role
from fedmarket.protocol.proofs import reward_struct


@pytest.fixture
def fk(world):
    """The protocol deployed on the false-returning token, with the world's accounts funded."""
    chain = world["chain"]
    deployer = chain.new_account("false-token", 0)
    token = deploy_test_contract(chain, deployer, "FalseToken")
    dep = Deployment.deploy(chain, deployer, world["treasury"].address, fee_bps=100, unbonding_delay=1_000, token=token)
    for acct in (world["requester"], world["aggregator"], world["outsider"], *world["providers"], *world["validators"]):
        token.transact("mint", acct.address, 10_000 * TOKEN, sender=deployer)
        token.transact("approve", dep.market.address, MAX, sender=acct)
    kit = Kit({**world, "dep": dep, "deployer": deployer})
    kit.fail = lambda transfer=False, transfer_from=False: token.transact("set_failing", transfer, transfer_from,
                                                                          sender=deployer)
    return kit


def test_the_market_refuses_a_failed_transfer_in(fk):
    fk.fail(transfer_from=True)
    with reverts("market: transfer in failed"):
        fk.m.transact("deposit", Role.PROVIDER, TOKEN, sender=fk.providers[0])
    with reverts("market: transfer in failed"):
        fk.post()
    assert fk.m.call("job_count") == 0 and fk.m.call("free_stake", fk.providers[0].address, Role.PROVIDER) == 0


def test_the_market_refuses_a_failed_transfer_out(fk):
    p = fk.providers[0]
    fk.m.transact("deposit", Role.PROVIDER, TOKEN, sender=p)
    fk.m.transact("request_unbond", Role.PROVIDER, TOKEN, sender=p)
    fk.advance(1_000)
    fk.fail(transfer=True)
    with reverts("market: transfer out failed"):
        fk.m.transact("withdraw", Role.PROVIDER, sender=p)
    assert fk.m.call("unbonding", p.address, Role.PROVIDER)["amount"] == TOKEN
    job = fk.post()
    with reverts("market: transfer out failed"):
        fk.m.transact("cancel", job, sender=fk.requester)
    assert fk.m.call("job_status", job)[0] == JobState.OPEN


def test_the_arbiters_refuse_a_failed_bond_transfer(fk):
    job = fk.job()
    job.commit()
    fk.fail(transfer_from=True)
    with reverts("arbiter: bond transfer failed"):
        open_aggregate(job, 0, 0)
    fk.fail()
    p = RoundPlayer(job, open_aggregate(job, 0, 0))
    p.defend_aggregate()
    p.bisect()
    fk.fail(transfer=True)
    with reverts("arbiter: bond transfer failed"):  # paying the bond out to the defender
        p.defend_update()
    assert p.g["turn"] == 1 and fk.ra.call("open_games", job.id) == 1
    fk.fail()
    p.defend_update()
    assert fk.ra.call("open_games", job.id) == 0


def test_the_licence_refuses_a_failed_payment(fk):
    job = fk.job(n=2, rounds=1, licence_price=TOKEN)
    job.finalize()
    job.settle()
    fk.dep.licence.transact("mint", job.id, sender=fk.outsider)
    buyer = fk.validators[0]
    fk.token.transact("approve", fk.dep.licence.address, MAX, sender=buyer)
    fk.fail(transfer_from=True)
    with reverts("licence: payment failed"):
        fk.dep.licence.transact("buy", job.id, sender=buyer)
    fk.fail()
    fk.dep.licence.transact("buy", job.id, sender=buyer)
    i = next(i for i, leaf in enumerate(job.leaves) if leaf["amount"] > 0)
    fk.fail(transfer=True)
    with reverts("licence: transfer failed"):
        fk.dep.licence.transact("claim_revenue", job.id, i, reward_struct(job.leaves[i]), job.tree.proof(i),
                                sender=fk.outsider)
    assert fk.dep.licence.call("paid_out", job.id) == 0
