"""RewardArbiter: the reward-sum game (the root's totals bisected down to one leaf, which must be
a member's, in account order, and follow the reward rule) and the value game (one leaf's value
and activity bisected over the job's rounds down to what the member did in one round). An honest
poster wins every game; a root that pays the aggregator, pays the wrong amount, lists leaves out
of order or names a stranger, whose totals are not its leaves' sums, or whose values are not
what the rounds show, loses: the root is rejected, its poster slashed, and anyone may post a new
one with a bond."""

from __future__ import annotations

import eth_abi
import pytest
from contract_kit import (
    AGG_STAKE,
    BOND,
    VAL_STAKE,
    ZERO32,
    ZERO_ADDR,
    RewardPlayer,
    RoundPlayer,
    events,
    game,
    index_leaves,
    open_aggregate,
    open_rewards,
    open_value,
    resolved,
    reverts,
    with_leaf,
)
from eth_utils import keccak

from fedmarket.errors import ContractRevert
from fedmarket.market import JobState, Role
from fedmarket.protocol import rules as R
from fedmarket.protocol.encoding import address_key
from fedmarket.protocol.proofs import reward_struct

ROUNDS = 3


def _trained(kit, slash: int | None = None, **over):
    """4 providers, 2 validators (the first holds two thirds of the stake), 3 rounds: provider 3
    sits round 1 out, validator 1 attests rounds 0 and 2 only, weights change in round 2."""
    job = kit.job(n=4, validators=2, stakes={0: 2 * VAL_STAKE}, rounds=ROUNDS, **over)
    v0 = job.validators[0]
    p = job.providers
    job.commit()
    job.commit(updates=job.updates(p[:3]), attest=False)
    job.attest(1, [v0])
    if slash is not None:
        job.slash_provider(p[slash], [v0])
    job.commit(updates=job.updates(p, weights=[7, 1, 2, 3]))
    return job


def _finalizing(kit, tamper=None, **over):
    """A trained job with its weight-basis root posted: the rule's leaves, or `tamper(job, leaves)`'s."""
    job = _trained(kit, **over)
    leaves = job.weight_leaves()
    if tamper is not None:
        leaves = tamper(job, leaves)
    job.finalize(leaves)
    return job


def _at(job, account) -> int:
    account = account if isinstance(account, str) else account.address
    return next(i for i, leaf in enumerate(job.leaves) if leaf["account"] == account)


def assert_root_rejected(kit, job, receipt, poster=None, bond=AGG_STAKE):
    """The challenger won a reward game: the root is gone, its poster slashed (the aggregator's
    stake at STAGE_FINAL, or a later poster's bond) and the job awaits a new root."""
    poster = poster or kit.aggregator
    res = resolved(receipt)
    assert (res["challenger_won"], res["moot"], res["reason"]) == (True, False, "defender silent")
    slashed = receipt.event("StakeSlashed")
    assert (slashed["account"], slashed["amount"], slashed["challenger"], slashed["challenger_share"]) == (
        poster.address, bond, kit.outsider.address, bond // 2)
    assert receipt.event("RewardRootRejected")["round_deadline"] == kit.now() + job.terms.round_duration
    state, current, deadline, quorum, _ = job.status()
    assert (state, current, deadline, quorum) == (JobState.TRAINING, ROUNDS, kit.now() + job.terms.round_duration, True)
    p = job.info()
    assert (p["reward_root"], p["poster"], p["poster_bond"]) == (ZERO32, ZERO_ADDR, 0)
    assert p["challenge_deadline"] == 0  # no root stands: every slash is a cut in the next one
    if poster == kit.aggregator:
        word, stage = job.membership(kit.aggregator)
        assert word == Role.AGGREGATOR | R.SLASHED and stage > R.STAGE_FINAL
        assert R.cut_before_root(word, stage, R.final_stage(0))
    assert kit.wa.call("open_games", job.id) == 0


# ---------------------------------------------------------------- opening


def test_challenge_rewards_opens_a_sum_game_over_every_leaf(kit):
    job = _finalizing(kit)
    out = kit.balance(kit.outsider)
    receipt = kit.wa.transact("challenge_rewards", job.id, sender=kit.outsider)
    ev = receipt.event("GameOpened")
    assert (ev["kind"], ev["round"], ev["target"], ev["challenger"], ev["defender"], ev["bond"]) == (
        R.Game.REWARD_SUM, 0, 0, kit.outsider.address, kit.aggregator.address, BOND)
    g = game(kit.wa, ev["game_id"])
    info = job.info()
    totals = eth_abi.encode(["int256[]"], [[info["value_total"], info["reward_total"]]])
    assert (g["lo"], g["hi"], g["subject"], g["claim"], g["turn"]) == (0, 7, job.tree.root, keccak(totals),
                                                                       R.Turn.DEFENDER)
    assert kit.balance(kit.outsider) == out - BOND and kit.wa.call("open_games", job.id) == 1


def test_challenge_value_opens_a_game_on_one_leaf(kit):
    job = _finalizing(kit)
    gid = open_value(job, 3)
    g = game(kit.wa, gid)
    assert (g["kind"], g["round"], g["target"], g["lo"], g["hi"], g["claim"], g["subject"]) == (
        R.Game.REWARD_VALUE, 3, 3, 0, 0, ZERO32, job.tree.root)
    with reverts("arbiter: no such leaf"):
        open_value(job, 7)


def test_reward_challenges_need_a_posted_root(kit):
    job = _trained(kit)
    with reverts("arbiter: no reward root to dispute"):
        open_rewards(job)
    with reverts("arbiter: no reward root to dispute"):
        open_value(job, 0)
    job.finalize()
    job.settle()
    with reverts("arbiter: no reward root to dispute"):
        open_rewards(job)


def test_a_scores_root_has_no_value_game(kit):
    job = _trained(kit)
    leaves = job.weight_leaves()
    from contract_kit import reward_leaf_bytes

    from fedmarket.protocol.merkle import MerkleTree

    root = MerkleTree([reward_leaf_bytes(leaf) for leaf in leaves]).root
    st = (root, sum(x["amount"] for x in leaves), sum(x["value"] for x in leaves if x["role"] == Role.PROVIDER), True)
    with reverts("disputes: votes open"):  # validator 1 never voted on round 1: the votes close on time
        job.approve(st)
    kit.advance(int(kit.m.call("votes_close", job.id)) - kit.now())
    job.approve(st)
    job.post_rewards(leaves, basis=R.Basis.SCORES)
    with reverts("arbiter: scores basis is approved by validators"):
        open_value(job, 0)
    open_rewards(job)  # the sum game is open to every root


# ---------------------------------------------------------------- honest roots win


@pytest.mark.parametrize("target", range(7))
def test_an_honest_root_wins_the_sum_game_at_every_leaf(kit, target):
    job = _finalizing(kit)
    agg = kit.balance(kit.aggregator)
    p = RewardPlayer(job, open_rewards(job))
    p.down_to(target)
    assert p.g["lo"] == target
    receipt = p.defend_leaf()
    assert resolved(receipt)["reason"] == "reward leaf shown" and not resolved(receipt)["challenger_won"]
    assert kit.balance(kit.aggregator) == agg + BOND
    assert job.status()[0] == JobState.FINALIZING


@pytest.mark.parametrize("target", range(7))
def test_an_honest_root_wins_the_value_game_at_every_leaf_and_round(kit, target):
    job = _finalizing(kit)
    for r in range(ROUNDS):
        p = RewardPlayer(job, open_value(job, target))
        receipt = p.open_value()
        made = receipt.event("ClaimMade")
        leaf = job.leaves[target]
        assert (made["lo"], made["hi"], made["claim"]) == (0, ROUNDS, [leaf["value"], leaf["activity"]])
        p.down_to_round(r)
        assert p.g["lo"] == r
        receipt = p.defend_round()
        assert resolved(receipt)["reason"] == "round shown" and not resolved(receipt)["challenger_won"]


def test_a_provider_slashed_in_training_is_cut_from_the_rewards(kit):
    job = _finalizing(kit, slash=1)
    leaf = job.leaves[_at(job, job.providers[1])]
    assert (leaf["amount"], leaf["reputation_delta"], leaf["activity"]) == (0, -3, 3)
    assert job.info()["value_total"] == sum(x["value"] for x in job.leaves if x["role"] == Role.PROVIDER
                                            and x["account"] != job.providers[1].address)
    p = RewardPlayer(job, open_rewards(job))
    p.down_to(_at(job, job.providers[1]))
    assert p.sum_truth(p.g["lo"], p.g["hi"]) == [0, 0]  # its value does not count
    assert not resolved(p.defend_leaf())["challenger_won"]


def test_a_validator_slashed_after_the_root_keeps_its_leaf(kit):
    job = _finalizing(kit)
    v = job.validators[1]
    root = job.rounds[0].data[0]
    sigs = [job.sign_attestation(v, 0, keccak(x)) for x in (b"a", b"b")]
    kit.disputes.transact("prove_equivocation", job.id, 0, v.address, root, keccak(b"a"), sigs[0], root, keccak(b"b"),
                          sigs[1], sender=kit.outsider)
    final = R.final_stage(job.info()["challenge_deadline"])
    assert final > R.STAGE_FINAL and job.membership(v) == (Role.VALIDATOR | R.SLASHED, final)
    p = RewardPlayer(job, open_rewards(job))
    p.down_to(_at(job, v))
    assert not resolved(p.defend_leaf())["challenger_won"]


# ---------------------------------------------------------------- roots breaking the rule


def _move(leaves, frm, to, amount=1):
    out = [dict(x) for x in leaves]
    out[frm]["amount"] -= amount
    out[to]["amount"] += amount
    return out


def _provider_ix(job, leaves, k):
    return next(i for i, x in enumerate(leaves) if x["account"] == job.providers[k].address)


def _agg_ix(job, leaves):
    return next(i for i, x in enumerate(leaves) if x["role"] == Role.AGGREGATOR)


def _val_ix(job, leaves, k=0):
    return next(i for i, x in enumerate(leaves) if x["account"] == job.validators[k].address)


def _swap(job, leaves):
    out = [dict(x) for x in leaves]
    out[2], out[3] = out[3], out[2]
    return index_leaves(out)


def _stranger(job, leaves):
    """The aggregator's leaf replaced by an outsider's (at its place in account order)."""
    out = [x for x in leaves if x["role"] != Role.AGGREGATOR]
    out.append({"account": job.kit.outsider.address, "role": Role.AGGREGATOR, "amount": 0, "reputation_delta": ROUNDS,
                    "value": 0, "activity": ROUNDS})
    return index_leaves(sorted(out, key=lambda x: address_key(x["account"])))


CHEATS = {
    # (tamper the rule's leaves, which leaf the challenger goes to, the reason the poster cannot defend it)
    "the aggregator pays itself": (lambda j, ls: _move(ls, _provider_ix(j, ls, 0), _agg_ix(j, ls)),
                                   lambda j, ls: _agg_ix(j, ls), "arbiter: leaf breaks the reward rule"),
    "a provider overpaid": (lambda j, ls: _move(ls, _provider_ix(j, ls, 0), _provider_ix(j, ls, 1)),
                            lambda j, ls: _provider_ix(j, ls, 1), "arbiter: leaf breaks the reward rule"),
    "a validator paid": (lambda j, ls: _move(ls, _provider_ix(j, ls, 2), _val_ix(j, ls)),
                         lambda j, ls: _val_ix(j, ls), "arbiter: leaf breaks the reward rule"),
    "a provider's reputation": (lambda j, ls: with_leaf(ls, _provider_ix(j, ls, 3), reputation_delta=3),
                                lambda j, ls: _provider_ix(j, ls, 3), "arbiter: leaf breaks the reward rule"),
    "a validator's reputation": (lambda j, ls: with_leaf(ls, _val_ix(j, ls, 1), reputation_delta=3),
                                 lambda j, ls: _val_ix(j, ls, 1), "arbiter: leaf breaks the reward rule"),
    "the aggregator's activity": (lambda j, ls: with_leaf(ls, _agg_ix(j, ls), activity=ROUNDS - 1),
                                  lambda j, ls: _agg_ix(j, ls), "arbiter: leaf breaks the reward rule"),
    "activity past the rounds": (lambda j, ls: with_leaf(ls, _provider_ix(j, ls, 3), activity=ROUNDS + 1,
                                                         reputation_delta=ROUNDS + 1),
                                 lambda j, ls: _provider_ix(j, ls, 3), "arbiter: leaf breaks the reward rule"),
    "a provider in another role": (lambda j, ls: with_leaf(ls, _provider_ix(j, ls, 1), role=Role.VALIDATOR,
                                                           amount=0, value=0, reputation_delta=2 * 3 - ROUNDS),
                                   lambda j, ls: _provider_ix(j, ls, 1), "arbiter: leaf breaks the reward rule"),
    "a stranger's leaf": (_stranger, lambda j, ls: next(i for i, x in enumerate(ls)
                                                        if x["account"] == j.kit.outsider.address),
                          "arbiter: leaf breaks the reward rule"),
    "leaves out of order": (_swap, lambda j, ls: 3, "arbiter: leaves out of order"),
}


@pytest.mark.parametrize("cheat", CHEATS)
def test_a_root_breaking_the_rule_is_rejected(kit, cheat):
    tamper, target, reason = CHEATS[cheat]
    job = _finalizing(kit, tamper=tamper)
    i = target(job, job.leaves)
    p = RewardPlayer(job, open_rewards(job))
    p.down_to(i)
    with reverts(reason):
        p.defend_leaf()
    out = kit.balance(kit.outsider)
    assert_root_rejected(kit, job, p.timeout())
    assert kit.balance(kit.outsider) == out + BOND + AGG_STAKE // 2


def test_a_cut_provider_paid_is_rejected(kit):
    def pay_the_cut(job, leaves):
        i, j = _provider_ix(job, leaves, 1), _provider_ix(job, leaves, 0)
        return _move(leaves, j, i, 5)

    job = _finalizing(kit, tamper=pay_the_cut, slash=1)
    p = RewardPlayer(job, open_rewards(job))
    p.down_to(_at(job, job.providers[1]))
    with reverts("arbiter: leaf breaks the reward rule"):
        p.defend_leaf()
    assert_root_rejected(kit, job, p.timeout())


@pytest.mark.parametrize("totals", [(0, -1), (0, 1), (5, 0), (-1, 0)])
@pytest.mark.parametrize("side", ["left", "right"])
def test_totals_that_are_not_the_leaves_sums_are_rejected(kit, totals, side):
    job = _trained(kit)
    leaves = job.weight_leaves()
    total = sum(x["amount"] for x in leaves) + totals[1]
    value_total = sum(x["value"] for x in leaves if x["role"] == Role.PROVIDER) + totals[0]
    job.finalize(leaves, total=total, value_total=value_total)
    p = RewardPlayer(job, open_rewards(job))
    p.side = side
    p.down_to()
    leaf = job.leaves[p.g["lo"]]
    info = job.info()
    # a wrong value total also breaks every provider's leaf (its amount is its share of that total)
    keeps_rule = R.leaf_ok(leaf, *job.membership(leaf["account"]), R.Basis.WEIGHT, info["pool"], value_total, ROUNDS)
    with reverts("arbiter: leaf does not give the claim" if keeps_rule else "arbiter: leaf breaks the reward rule"):
        p.defend_leaf()
    assert_root_rejected(kit, job, p.timeout())


# ---------------------------------------------------------------- values the rounds do not show


def _inflate(k, value=0, activity=0, role="provider"):
    def tamper(job, leaves):
        i = _provider_ix(job, leaves, k) if role == "provider" else _val_ix(job, leaves, k)
        out = [dict(x) for x in leaves]
        out[i]["value"] += value
        out[i]["activity"] += activity
        if role == "provider":
            out[i]["reputation_delta"] += activity
            vt = sum(x["value"] for x in out if x["role"] == Role.PROVIDER)
            pool = job.info()["escrow"] - job.info()["escrow"] * 100 // R.BPS
            for x in out:  # amounts follow the inflated values: every leaf keeps the reward rule
                if x["role"] == Role.PROVIDER:
                    x["amount"] = pool * x["value"] // vt
        else:
            out[i]["reputation_delta"] += 2 * activity
        return out

    return tamper


VALUE_CHEATS = {
    "a provider's weight": (_inflate(0, value=4), 0, "provider"),
    "an absent provider's round": (_inflate(3, value=1, activity=1), 3, "provider"),
    "a validator's missing attestation": (_inflate(1, activity=1, role="validator"), 1, "validator"),
}


@pytest.mark.parametrize("cheat", VALUE_CHEATS)
@pytest.mark.parametrize("side", ["left", "right"])
def test_a_value_the_rounds_do_not_show_is_rejected(kit, cheat, side):
    tamper, k, role = VALUE_CHEATS[cheat]
    job = _finalizing(kit, tamper=tamper)
    member = job.providers[k] if role == "provider" else job.validators[k]
    # every leaf keeps the reward rule: the sum game cannot see the lie ...
    p = RewardPlayer(job, open_rewards(job))
    p.down_to(_at(job, member))
    assert not resolved(p.defend_leaf())["challenger_won"]
    # ... the value game can
    p = RewardPlayer(job, open_value(job, _at(job, member)))
    p.side = side
    p.open_value()
    p.down_to_round()
    with reverts("arbiter: round does not give the claim"):
        p.defend_round()
    assert_root_rejected(kit, job, p.timeout())


# ---------------------------------------------------------------- the roles' fees

FEES = {"aggregator_fee": 2 * 10**18, "validator_fee": 10**18}  # per committed round, per attested round


def test_an_honest_root_with_fees_defends_every_fee_leaf(kit):
    """Each role's fee as the terms set it: the aggregator's for every round, validator 0's for its
    three attestations, validator 1's for the two it made; each leaf stands a sum game."""
    job = _finalizing(kit, **FEES)
    ls = job.leaves
    assert ls[_agg_ix(job, ls)]["amount"] == ROUNDS * FEES["aggregator_fee"]
    assert [ls[_val_ix(job, ls, k)]["amount"] for k in (0, 1)] == [3 * FEES["validator_fee"], 2 * FEES["validator_fee"]]
    for i in (_agg_ix(job, ls), _val_ix(job, ls, 0), _val_ix(job, ls, 1)):
        p = RewardPlayer(job, open_rewards(job))
        p.down_to(i)
        assert not resolved(p.defend_leaf())["challenger_won"]


FEE_CHEATS = {
    "the aggregator's fee raised": (lambda j, ls: _move(ls, _provider_ix(j, ls, 0), _agg_ix(j, ls), 10**18),
                                    lambda j, ls: _agg_ix(j, ls)),
    "a validator paid past its attestations": (lambda j, ls: _move(ls, _provider_ix(j, ls, 0), _val_ix(j, ls, 1), 10**18),
                                               lambda j, ls: _val_ix(j, ls, 1)),
    "a validator's fee withheld": (lambda j, ls: _move(ls, _val_ix(j, ls, 0), _provider_ix(j, ls, 0), 10**18),
                                   lambda j, ls: _val_ix(j, ls, 0)),
}


@pytest.mark.parametrize("cheat", FEE_CHEATS)
def test_a_fee_off_the_terms_is_rejected(kit, cheat):
    tamper, target = FEE_CHEATS[cheat]
    job = _finalizing(kit, tamper=tamper, **FEES)
    p = RewardPlayer(job, open_rewards(job))
    p.down_to(target(job, job.leaves))
    with reverts("arbiter: leaf breaks the reward rule"):
        p.defend_leaf()
    assert_root_rejected(kit, job, p.timeout())


def test_a_fee_for_an_attestation_never_made_loses_the_value_game(kit):
    """Validator 1 paid for three attestations with its activity and reputation to match: its leaf
    keeps the rule (the unearned fee is still in the pool), so only the value game, down at round 1
    where no attestation of it exists, shows the lie."""
    def tamper(job, leaves):
        out = [dict(x) for x in leaves]
        i = _val_ix(job, out, 1)
        out[i]["activity"] += 1
        out[i]["reputation_delta"] += 2
        out[i]["amount"] += FEES["validator_fee"]
        return out

    job = _finalizing(kit, tamper=tamper, **FEES)
    i = _at(job, job.validators[1])
    p = RewardPlayer(job, open_rewards(job))
    p.down_to(i)
    assert not resolved(p.defend_leaf())["challenger_won"]
    p = RewardPlayer(job, open_value(job, i))
    p.open_value()
    p.down_to_round()
    with reverts("arbiter: round does not give the claim"):
        p.defend_round()
    assert_root_rejected(kit, job, p.timeout())


# ---------------------------------------------------------------- the moves' rules


def test_defend_reward_leaf_rules(kit):
    job = _finalizing(kit)
    p = RewardPlayer(job, open_rewards(job))
    with reverts("arbiter: not down to one leaf"):
        p.defend_leaf(index=0)
    with reverts("arbiter: wrong game kind"):
        p.send("defend_value_root", reward_struct(job.leaves[0]), job.tree.proof(0))
    p.down_to(4)
    leaf, prev = job.leaves[4], job.leaves[3]
    with reverts("arbiter: not the claimed leaf"):
        p.defend_leaf(claim=[leaf["value"], leaf["amount"] + 1])
    with reverts("arbiter: leaf not in the root"):
        p.defend_leaf(leaf=reward_struct(dict(leaf, amount=leaf["amount"] + 1)))
    with reverts("arbiter: leaf not in the root"):
        p.defend_leaf(proof=job.tree.proof(3))
    with reverts("arbiter: previous leaf not in the root"):
        p.defend_leaf(prev=reward_struct(dict(prev, activity=0)))
    with reverts("arbiter: previous leaf not in the root"):
        p.defend_leaf(prev=reward_struct(job.leaves[2]), prev_proof=job.tree.proof(2))
    with reverts("arbiter: not this side's move"):  # only the poster moves for the poster
        p.defend_leaf(sender=kit.requester)
    assert not resolved(p.defend_leaf())["challenger_won"]


def test_split_and_choose_in_a_reward_game(kit):
    job = _finalizing(kit)
    p = RewardPlayer(job, open_rewards(job))
    info = job.info()
    parent = [info["value_total"], info["reward_total"]]
    with reverts("arbiter: not the claimed range"):
        p.send("split", [parent[0], parent[1] + 1], [0, 0])
    with reverts("arbiter: bad claim length"):
        p.send("split", parent, [0])
    receipt = p.split_sum()
    ev = receipt.event("RangeSplit")
    assert [a + b for a, b in zip(ev["left"], ev["right"])] == parent and (ev["lo"], ev["hi"]) == (0, 7)
    with reverts("arbiter: not this side's move"):
        p.choose_leaf(0, sender=kit.aggregator)
    p.choose_leaf(0)
    assert (p.g["lo"], p.g["hi"]) == (0, 3)


def test_value_game_rules(kit):
    job = _finalizing(kit)
    i = _at(job, job.providers[3])  # absent in round 1
    p = RewardPlayer(job, open_value(job, i))
    with reverts("arbiter: range cannot be split"):
        p.send("split", [0, 0], [0, 0])
    with reverts("arbiter: wrong game kind"):
        p.send("defend_reward_leaf", [0, 0], reward_struct(job.leaves[i]), job.tree.proof(i),
               reward_struct(job.leaves[i]), [])
    with reverts("arbiter: leaf not in the root"):
        p.open_value(leaf=reward_struct(job.leaves[i - 1]))
    with reverts("arbiter: leaf not in the root"):
        p.open_value(leaf=reward_struct(dict(job.leaves[i], value=0)))
    p.open_value()
    with reverts("arbiter: leaf already opened"):
        p.open_value()
    with reverts("arbiter: not down to one round"):
        p.defend_round()
    p.down_to_round(1)
    claim = p.value_claimed(1, 2)
    assert claim == [0, 0]
    with reverts("arbiter: not the claimed round"):
        p.defend_round(claim=[0, 1])
    with reverts("arbiter: not the opened leaf"):
        p.defend_round(account=job.providers[0].address)
    with reverts("arbiter: round data not committed"):
        p.defend_round(data=job.rounds[0].data)
    with reverts("arbiter: round data not committed"):
        p.defend_round(proof=job.acc.proof(0))
    ev = p.evidence(1)
    assert ev[0] is False  # a gap: (included, index, root, weight, proof, below..., above...)
    if ev[1] > 0:
        forged = (*ev[:6], keccak(b"x"), *ev[7:])  # the leaf below the gap, with another root
    else:
        forged = (*ev[:10], keccak(b"x"), *ev[11:])  # the leaf above it
    with reverts("arbiter: gap not committed"):
        p.defend_round(evidence=forged)
    with reverts("arbiter: bad gap"):
        p.defend_round(evidence=(*ev[:1], job.rounds[1].count + 1, *ev[2:]))
    with reverts("arbiter: update not in the round"):
        p.defend_round(evidence=(True, 0, job.rounds[1].updates[0].root, 7, job.rounds[1].tree.proof(0), *ev[5:]))
    assert resolved(p.defend_round())["reason"] == "round shown"


def test_a_present_provider_cannot_be_shown_as_a_gap(kit):
    def absent_in_round_2(job, leaves):
        w = next(u.weight for u in job.rounds[2].updates if u.provider == job.providers[0].address)
        return _inflate(0, value=-w, activity=-1)(job, leaves)

    job = _finalizing(kit, tamper=absent_in_round_2)
    p = RewardPlayer(job, open_value(job, _at(job, job.providers[0])))
    p.open_value()
    p.down_to_round(2)
    rd = job.rounds[2]
    pos = [u.provider for u in rd.updates].index(job.providers[0].address)
    gap = lambda index: (False, index, ZERO32, 0, [],
                         *((rd.updates[index - 1].provider, rd.updates[index - 1].root, rd.updates[index - 1].weight,
                            rd.tree.proof(index - 1)) if index > 0 else (ZERO_ADDR, ZERO32, 0, [])),
                         *((rd.updates[index].provider, rd.updates[index].root, rd.updates[index].weight,
                            rd.tree.proof(index)) if index < rd.count else (ZERO_ADDR, ZERO32, 0, [])))
    with reverts("arbiter: not a gap"):  # the leaf above the "gap" is its own
        p.defend_round(claim=p.value_claimed(2, 3), evidence=gap(pos))
    with reverts("arbiter: not a gap"):  # the leaf below it is its own
        p.defend_round(claim=p.value_claimed(2, 3), evidence=gap(pos + 1))
    assert_root_rejected(kit, job, p.timeout())


# ---------------------------------------------------------------- after a rejected root


def test_anyone_reposts_a_rejected_root_with_a_bond(kit):
    job = _finalizing(kit, tamper=CHEATS["the aggregator pays itself"][0])
    p = RewardPlayer(job, open_rewards(job))
    p.down_to(_agg_ix(job, job.leaves))
    p.timeout()
    leaves = job.weight_leaves()
    with reverts("disputes: votes open"):  # the discarded root gave the job a new step: its votes close again
        job.post_rewards(leaves, sender=kit.outsider)
    kit.advance(job.terms.round_duration // 4)
    with reverts("disputes: approval window open"):  # validators may still approve scores for half the period
        job.post_rewards(leaves, sender=kit.outsider)
    kit.advance(job.terms.round_duration // 4)
    with reverts("market: rewards exceed pool"):  # the new root is judged like any other
        job.post_rewards(leaves, total=job.info()["pool"] + 1, sender=kit.outsider)
    out = kit.balance(kit.outsider)
    _, receipt = job.post_rewards(leaves, sender=kit.outsider)
    ev = receipt.event("RewardRootPosted")
    assert (ev["poster"], ev["challenge_deadline"]) == (kit.outsider.address, kit.now() + 100)
    info = job.info()
    assert (info["poster"], info["poster_bond"]) == (kit.outsider.address, AGG_STAKE)  # max(aggregator stake, bond)
    assert kit.balance(kit.outsider) == out - AGG_STAKE
    job.settle()
    assert kit.balance(kit.outsider) == out  # the bond comes back at settlement
    for i in range(len(leaves)):
        job.claim(i)
    assert job.info()["claimed_total"] == job.info()["reward_total"]


def test_the_aggregator_slashed_for_its_root_is_cut_in_the_next(kit):
    """Slashed under a root that was then discarded, the aggregator gets the cut leaf (no pay,
    reputation down) in the replacement root, not the +rounds an honest aggregator gets: a
    replacement root giving it that is itself rejected."""
    job = _finalizing(kit, tamper=CHEATS["the aggregator pays itself"][0])
    p = RewardPlayer(job, open_rewards(job))
    p.down_to(_agg_ix(job, job.leaves))
    p.timeout()
    kit.advance(job.terms.round_duration // 2)
    leaves = job.weight_leaves()
    agg = leaves[_agg_ix(job, leaves)]
    assert (agg["amount"], agg["reputation_delta"]) == (0, -ROUNDS)
    honest = [dict(x, reputation_delta=ROUNDS) if x["account"] == agg["account"] else x for x in leaves]
    job.post_rewards(honest, sender=kit.outsider)
    p = RewardPlayer(job, open_rewards(job, challenger=kit.requester), challenger=kit.requester, defender=kit.outsider)
    p.down_to(_agg_ix(job, honest))
    with reverts("arbiter: leaf breaks the reward rule"):
        p.defend_leaf()


def test_a_provider_posting_a_wrong_root_loses_its_job_stake(kit):
    """A provider posts the replacement root with no bond; it pays itself more than its due: a
    challenger proves it, the provider's job stake is slashed (it was behind the root), and the
    next root (another provider's) cuts it."""
    job = _finalizing(kit, tamper=CHEATS["the aggregator pays itself"][0])
    p = RewardPlayer(job, open_rewards(job))
    p.down_to(_agg_ix(job, job.leaves))
    p.timeout()
    kit.advance(job.terms.round_duration // 2)
    cheat, honest = job.providers[0], job.providers[1]
    greedy = _move(job.weight_leaves(), _provider_ix(job, job.weight_leaves(), 1), _provider_ix(job, job.weight_leaves(), 0))
    job.post_rewards(greedy, sender=cheat)
    p = RewardPlayer(job, open_rewards(job), defender=cheat)
    p.down_to(_provider_ix(job, greedy, 0))
    with reverts("arbiter: leaf breaks the reward rule"):
        p.defend_leaf()
    receipt = p.timeout()
    slashed = receipt.event("StakeSlashed")
    assert (slashed["account"], slashed["role"]) == (cheat.address, Role.PROVIDER) and slashed["amount"] > 0
    kit.advance(job.terms.round_duration // 2)
    leaves = job.weight_leaves()
    assert leaves[_provider_ix(job, leaves, 0)]["amount"] == 0  # cut: slashed under a discarded root
    job.post_rewards(leaves, sender=honest)
    job.settle()


def test_a_reposter_gets_its_bond_back_when_the_job_fails(kit):
    job = kit.job(n=3, rounds=2)
    job.commit()
    job.commit(shift={0: 1})
    job.finalize(_swap(job, job.weight_leaves()))
    p = RewardPlayer(job, open_rewards(job))
    p.down_to(3)
    p.timeout()
    out = kit.balance(kit.outsider)
    job.post_rewards(job.weight_leaves(), sender=kit.outsider)
    assert kit.balance(kit.outsider) == out - AGG_STAKE
    rp = RoundPlayer(job, open_aggregate(job, 1, 0, challenger=kit.requester), challenger=kit.requester)
    rp.defend_aggregate(lie=True)
    rp.bisect()
    receipt = rp.timeout()
    assert receipt.event("JobFailed")["round"] == 1
    assert not events(receipt, "StakeSlashed")  # the aggregator was slashed already, for its root
    assert kit.balance(kit.outsider) == out  # the reposter's bond is returned
    assert job.info()["poster_bond"] == 0


def test_a_rejected_root_not_reposted_in_time_fails_the_job(kit):
    job = _finalizing(kit, tamper=_swap)
    p = RewardPlayer(job, open_rewards(job))
    p.down_to(3)
    p.timeout()
    kit.advance(job.terms.round_duration)
    with reverts("market: round deadline passed"):
        job.post_rewards(job.weight_leaves(), sender=kit.outsider)
    receipt = kit.m.transact("fail", job.id, sender=kit.outsider)
    assert receipt.event("JobFailed")["reason"] == "deadline missed"
    assert not events(receipt, "StakeSlashed")  # the aggregator was slashed once, for its root


def test_a_wrong_reposted_root_costs_its_poster_the_bond(kit):
    job = _finalizing(kit, tamper=_swap)
    p = RewardPlayer(job, open_rewards(job))
    p.down_to(3)
    p.timeout()
    kit.advance(job.terms.round_duration // 2)
    job.post_rewards(_swap(job, job.weight_leaves()), sender=kit.requester)
    p = RewardPlayer(job, open_rewards(job), defender=kit.requester)
    p.down_to(3)
    with reverts("arbiter: leaves out of order"):
        p.defend_leaf()
    out, treasury = kit.balance(kit.outsider), kit.balance(kit.treasury)
    receipt = p.timeout()
    assert_root_rejected(kit, job, receipt, poster=kit.requester, bond=AGG_STAKE)
    assert receipt.event("StakeSlashed")["role"] == 0
    assert kit.balance(kit.outsider) == out + BOND + AGG_STAKE // 2
    assert kit.balance(kit.treasury) == treasury + AGG_STAKE // 2
    kit.advance(job.terms.round_duration // 2)
    job.post_rewards(job.weight_leaves(), sender=kit.outsider)  # and yet another poster may try
    assert job.status()[0] == JobState.FINALIZING


def test_the_rejection_event_names_the_rejected_root_and_poster(kit):
    job = _finalizing(kit, tamper=_swap)
    root = job.tree.root
    p = RewardPlayer(job, open_rewards(job))
    p.down_to(3)
    ev = p.timeout().event("RewardRootRejected")
    assert (ev["reward_root"], ev["poster"], ev["challenger"]) == (root, kit.aggregator.address, kit.outsider.address)


def test_a_slashed_aggregator_reposting_a_wrong_root_loses_its_bond(kit):
    job = _finalizing(kit, tamper=_swap)
    p = RewardPlayer(job, open_rewards(job))
    p.down_to(3)
    p.timeout()
    kit.advance(job.terms.round_duration // 2)
    agg = kit.balance(kit.aggregator)
    try:
        job.post_rewards(_swap(job, job.weight_leaves()), sender=kit.aggregator)
    except ContractRevert:  # refused: one fix
        return
    assert kit.balance(kit.aggregator) == agg - AGG_STAKE
    p = RewardPlayer(job, open_rewards(job))
    p.down_to(3)
    receipt = p.timeout()  # reverts today: "market: not slashable"
    assert resolved(receipt)["challenger_won"] and job.status()[0] == JobState.TRAINING


# ---------------------------------------------------------------- moot games and settlement


def test_a_game_on_a_rejected_root_is_moot_even_once_another_root_stands(kit):
    job = _finalizing(kit, tamper=_swap)
    first = RewardPlayer(job, open_rewards(job))
    second = RewardPlayer(job, open_value(job, 0, challenger=kit.requester), challenger=kit.requester)
    with reverts("arbiter: game still live"):
        kit.wa.transact("close_moot", second.gid, sender=kit.outsider)
    first.down_to(3)
    first.timeout()
    kit.advance(job.terms.round_duration // 2)
    job.post_rewards(job.weight_leaves(), sender=kit.outsider)  # FINALIZING again, with another root
    assert job.status()[0] == JobState.FINALIZING
    req = kit.balance(kit.requester)
    ev = resolved(kit.wa.transact("close_moot", second.gid, sender=kit.outsider))
    assert (ev["moot"], ev["challenger_won"], ev["reason"]) == (True, False, "moot")
    assert kit.balance(kit.requester) == req + BOND
    with reverts("arbiter: game over"):
        kit.wa.transact("close_moot", second.gid, sender=kit.outsider)
    assert kit.wa.call("open_games", job.id) == 0


def test_a_reward_game_is_moot_once_a_round_is_proven_wrong(kit):
    job = kit.job(n=3, rounds=2)
    job.commit()
    job.commit(shift={2: 5})
    job.finalize()
    rewards = RewardPlayer(job, open_rewards(job, challenger=kit.requester), challenger=kit.requester)
    rp = RoundPlayer(job, open_aggregate(job, 1, 0))
    rp.defend_aggregate(lie=True)
    rp.bisect()
    rp.timeout()
    assert job.status()[0] == JobState.FAILED
    req = kit.balance(kit.requester)
    assert resolved(kit.wa.transact("close_moot", rewards.gid, sender=kit.outsider))["moot"]
    assert kit.balance(kit.requester) == req + BOND


def test_settlement_waits_for_reward_games(kit):
    job = _finalizing(kit)
    p = RewardPlayer(job, open_rewards(job))
    kit.advance(98)
    with reverts("market: disputes open"):
        kit.m.transact("settle", job.id, sender=kit.outsider)
    p.down_to(0)
    p.defend_leaf()
    kit.m.transact("settle", job.id, sender=kit.outsider)
    assert job.status()[0] == JobState.SETTLED


def test_a_validator_poster_slashed_for_its_own_equivocation_cannot_lock_the_job(kit):
    """ATTACK (found by a review of the contracts' value flows): the aggregator is slashed for
    posting no root, so a member may post one with no bond, its job stake behind it. A validator
    posts a root that pays itself, then, once a watcher challenges it, signs two attestations of a
    round that does not exist and has an accomplice prove the "equivocation", which takes its
    stake. Had the lost game slashed the poster again it would revert ("not slashable"), no call
    could end the game, and the escrow, every stake and the watcher's bond would stay locked in a
    finalizing job. The root is discarded all the same; an honest member posts and the job settles."""
    job = kit.job(n=3, validators=2, rounds=2)
    job.commit_all()
    kit.advance(job.terms.round_duration + 1)
    kit.m.transact("fail", job.id, sender=kit.outsider)  # no root by the deadline: the aggregator is slashed
    assert job.status()[0] == JobState.TRAINING
    kit.advance(job.terms.round_duration // 2)
    v, accomplice = job.validators[0], kit.providers[5]
    honest = job.weight_leaves()
    leaves = [dict(x) for x in honest]
    ix = {x["account"]: i for i, x in enumerate(leaves)}
    leaves[ix[job.providers[0].address]]["amount"] -= 100 * 10**18
    leaves[ix[v.address]]["amount"] += 100 * 10**18
    job.post_rewards(leaves, sender=v)
    assert job.info()["poster"] == v.address and job.info()["poster_bond"] == 0
    gid = open_rewards(job)
    p = RewardPlayer(job, gid, defender=v)
    sigs = [job.sign_attestation(v, 777, keccak(x), model_root=b"\x11" * 32) for x in (b"a", b"b")]
    kit.disputes.transact("prove_equivocation", job.id, 777, v.address, b"\x11" * 32, keccak(b"a"), sigs[0],
                          b"\x11" * 32, keccak(b"b"), sigs[1], sender=accomplice)
    watcher_before = kit.balance(kit.outsider)
    p.timeout()  # the silent poster loses: its root is discarded (its stake is gone already)
    assert job.status()[0] == JobState.TRAINING and kit.wa.call("open_games", job.id) == 0
    assert job.info()["reward_root"] == b"\x00" * 32
    assert kit.balance(kit.outsider) >= watcher_before  # the watcher's bond came back
    kit.advance(job.terms.round_duration // 2)  # the weight basis opens in the step's second half
    job.post_rewards(honest, sender=job.providers[1])  # an honest member's root, the job settles
    job.settle()
    assert job.status()[0] == JobState.SETTLED
