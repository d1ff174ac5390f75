"""RoundArbiter and the game module (`modules/game.vy`): the aggregate, leaf and inclusion games
over committed rounds. An honest defender wins the challenger's bond at every kind and rule; a
defender of a wrong aggregate, an invalid leaf or a censored update cannot make its move, loses
at its deadline, and the job fails with the aggregator slashed. Every move's revert, the bond's
way, moot games and settlement waiting for games."""

from __future__ import annotations

import numpy as np
import pytest
from contract_kit import (
    AGG_STAKE,
    BOND,
    EMPTY_CHUNK,
    EMPTY_DATA,
    ESCROW,
    ZERO32,
    ZERO_ADDR,
    RoundPlayer,
    Upd,
    big_chunk_tree,
    chunk_list,
    events,
    game,
    open_aggregate,
    open_inclusion,
    open_leaf,
    resolved,
    reverts,
)
from eth_utils import keccak

from fedmarket.market import JobState, Role
from fedmarket.protocol import rules as R
from fedmarket.protocol.encoding import address_key, round_commitment, vector_tree

CONFIGS = {
    "weighted mean": {"n": 3},
    "private weighted mean": {"n": 3, "privacy_budget": 5 * R.EPSILON_SCALE},
    "median": {"n": 3, "rule": R.Rule.MEDIAN},
    "median of four": {"n": 4, "rule": R.Rule.MEDIAN},
    "trimmed mean": {"n": 5, "rule": R.Rule.TRIMMED_MEAN, "trim": 1},
    "secure sum": {"n": 3, "validators": 3, "rule": R.Rule.SECURE_SUM},
}


def params_of(terms, n_providers: int) -> int:
    """The job parameters a round game packs at opening (`game._round_params`)."""
    dp = 1 if terms.privacy_budget else 0
    return (terms.rule | terms.chunk_size << 8 | dp << 16 | terms.trim << 24 | terms.per_round << 48
            | n_providers << 72 | terms.n_params << 96 | terms.response_period << 136 | terms.rounds << 168)


def assert_round_fault(kit, job, receipt, r: int, reason: str = "round fault proven", challenger=None):
    """The challenger won a round game: the job failed back at round `r`, its escrow refunded and
    the aggregator's stake slashed (half to the challenger, with its bond back)."""
    challenger = challenger or kit.outsider
    res = resolved(receipt)
    assert (res["challenger_won"], res["moot"], res["reason"]) == (True, False, "defender silent")
    failed = receipt.event("JobFailed")
    assert (failed["round"], failed["refund"], failed["reason"]) == (r, ESCROW, reason)
    slashed = receipt.event("StakeSlashed")
    assert (slashed["account"], slashed["amount"], slashed["challenger"]) == (kit.aggregator.address, AGG_STAKE,
                                                                              challenger.address)
    assert job.status()[:2] == (JobState.FAILED, r)
    assert job.membership(kit.aggregator) == (Role.AGGREGATOR | R.SLASHED, r)
    assert kit.ra.call("open_games", job.id) == 0


# ---------------------------------------------------------------- opening


def test_challenge_aggregate_opens_a_game_with_the_jobs_bond(kit):
    job = kit.job(per_round=2, rounds=3)
    job.commit()
    job.commit()
    out, arbiter = kit.balance(kit.outsider), kit.balance(kit.ra.address)
    receipt = kit.ra.transact("challenge_aggregate", job.id, 1, 2, *job.round_args(1), sender=kit.outsider)
    ev = receipt.event("GameOpened")
    deadline = kit.now() + 100
    assert (ev["game_id"], ev["job_id"], ev["kind"], ev["round"], ev["target"], ev["challenger"], ev["defender"],
            ev["bond"], ev["deadline"]) == (1, job.id, R.Game.AGGREGATE, 1, 2, kit.outsider.address,
                                            kit.aggregator.address, BOND, deadline)
    g = game(kit.ra, 1)
    rd = job.rounds[1]
    assert g == {"job_id": job.id, "kind": R.Game.AGGREGATE, "round": 1, "target": 2, "challenger": kit.outsider.address,
                     "defender": kit.aggregator.address, "bond": BOND, "lo": 0, "hi": rd.count, "claim": ZERO32, "left": ZERO32,
                     "right": ZERO32, "subject": round_commitment(job.id, 1, rd.data),
                     "context": round_commitment(job.id, 0, job.rounds[0].data), "seed": job.rounds[0].data[6],
                     "params": params_of(job.terms, 3), "turn": R.Turn.DEFENDER, "deadline": deadline}
    assert (kit.ra.call("game_count"), kit.ra.call("open_games", job.id)) == (1, 1)
    assert kit.balance(kit.outsider) == out - BOND and kit.balance(kit.ra.address) == arbiter + BOND


def test_a_round_zero_game_is_seeded_by_the_start(kit):
    job = kit.job()
    job.commit()
    gid = open_leaf(job, 0, 1)
    g = game(kit.ra, gid)
    assert (g["kind"], g["lo"], g["hi"], g["target"], g["seed"], g["context"]) == (
        R.Game.LEAF, 1, 2, 1, job.start_seed, ZERO32)


def test_challenge_rules(kit):
    job = kit.job()
    challenge = lambda fn, *a, sender=kit.outsider: kit.ra.transact(fn, job.id, *a, sender=sender)
    with reverts("arbiter: round data not committed"):  # nothing committed yet
        challenge("challenge_aggregate", 0, 0, EMPTY_DATA, [ZERO32] * 14, EMPTY_DATA, [])
    job.commit()
    job.commit()
    data, proof, prev, prev_proof = job.round_args(1)
    with reverts("arbiter: round data not committed"):
        challenge("challenge_aggregate", 1, 0, (keccak(b"x"), *data[1:]), proof, prev, prev_proof)
    with reverts("arbiter: round data not committed"):
        challenge("challenge_aggregate", 0, 0, data, proof, prev, prev_proof)  # round 1's data as round 0's
    with reverts("arbiter: previous round not committed"):
        challenge("challenge_aggregate", 1, 0, data, proof, data, proof)
    with reverts("arbiter: no such chunk"):
        challenge("challenge_aggregate", 1, job.n_chunks, data, proof, prev, prev_proof)
    with reverts("arbiter: no such leaf"):
        challenge("challenge_leaf", 1, data[2], data, proof, prev, prev_proof)
    with reverts("arbiter: previous round not committed"):
        challenge("challenge_leaf", 1, 0, data, proof, EMPTY_DATA, [])
    broke = kit.providers[5]  # never approved the arbiter for a bond
    with reverts("erc20: insufficient allowance"):
        challenge("challenge_aggregate", 1, 0, data, proof, prev, prev_proof, sender=broke)
    assert kit.ra.call("game_count") == 0
    opened = kit.job(start=False)
    with reverts("arbiter: job not disputable"):
        kit.ra.transact("challenge_aggregate", opened.id, 0, 0, data, proof, prev, prev_proof, sender=kit.outsider)
    kit.advance(500)
    kit.m.transact("fail", job.id, sender=kit.outsider)  # every round is in: the aggregator is out first
    kit.advance(500)
    kit.m.transact("fail", job.id, sender=kit.outsider)  # and nobody posted the root: the job fails
    with reverts("arbiter: job not disputable"):
        challenge("challenge_aggregate", 1, 0, data, proof, prev, prev_proof)
    with reverts("arbiter: job not disputable"):
        challenge("challenge_leaf", 1, 0, data, proof, prev, prev_proof)


def test_challenge_inclusion_needs_both_signatures(kit):
    job = kit.job()
    job.commit()
    p = kit.providers[0]
    u = job.rounds[0].updates[0]
    provider = next(a for a in kit.providers if a.address == u.provider)
    with reverts("arbiter: bad provider signature"):
        open_inclusion(job, 0, provider, u.root, u.weight, psig=job.sign_receipt(kit.providers[4], 0, u.root, u.weight))
    with reverts("arbiter: bad provider signature"):
        open_inclusion(job, 0, provider, u.root, u.weight, psig=job.sign_receipt(provider, 0, u.root, u.weight + 1))
    with reverts("arbiter: bad aggregator signature"):
        open_inclusion(job, 0, provider, u.root, u.weight, asig=job.sign_ack(0, u.provider, u.root, u.weight,
                                                                              signer=kit.outsider))
    with reverts("arbiter: bad aggregator signature"):  # the acknowledgement names the provider
        open_inclusion(job, 0, provider, u.root, u.weight, asig=job.sign_ack(0, p.address if p != provider
                                                                              else kit.providers[1].address,
                                                                              u.root, u.weight))
    gid = open_inclusion(job, 0, provider, u.root, u.weight)
    g = game(kit.ra, gid)
    assert (g["kind"], g["target"], g["hi"]) == (R.Game.INCLUSION, int(u.provider, 16), job.rounds[0].count)


# ---------------------------------------------------------------- aggregate games


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("r", [0, 1])
def test_an_honest_aggregate_wins_the_bond(kit, name, r):
    cfg = dict(CONFIGS[name])
    job = kit.job(**cfg)
    job.commit_all()
    for chunk in (0, job.n_chunks - 1):  # a full chunk and the short last one
        agg, out = kit.balance(kit.aggregator), kit.balance(kit.outsider)
        gid = open_aggregate(job, r, chunk)
        receipt = RoundPlayer(job, gid).play()
        res = resolved(receipt)
        assert (res["game_id"], res["job_id"], res["challenger_won"], res["moot"], res["reason"]) == (
            gid, job.id, False, False, "update shown")
        assert kit.balance(kit.aggregator) == agg + BOND and kit.balance(kit.outsider) == out - BOND
        g = game(kit.ra, gid)
        assert (g["turn"], g["bond"]) == (R.Turn.NONE, 0)
    assert kit.ra.call("open_games", job.id) == 0
    assert job.status()[0] == JobState.TRAINING


def test_the_challenger_may_go_down_to_any_update(kit):
    job = kit.job(**CONFIGS["trimmed mean"])
    job.commit()
    for target in range(5):
        gid = open_aggregate(job, 0, 1)
        p = RoundPlayer(job, gid)
        p.defend_aggregate()
        while p.g["hi"] - p.g["lo"] >= 2:
            p.split()
            p.choose(target >= (p.g["lo"] + p.g["hi"]) // 2)
        assert p.g["lo"] == target
        assert resolved(p.defend_update())["challenger_won"] is False


def test_nobody_moves_for_the_defender(kit):
    """A challenger (or anyone) making the defender's move first would bind it to a claim it never
    made: every defender move is the defender's own, every challenger move the challenger's."""
    job = kit.job()
    job.commit()
    gid = open_aggregate(job, 0, 1)
    for intruder in (kit.outsider, kit.requester):
        with reverts("arbiter: not this side's move"):
            RoundPlayer(job, gid, defender=intruder).defend_aggregate()
    agg = kit.balance(kit.aggregator)
    RoundPlayer(job, gid).play()
    assert kit.balance(kit.aggregator) == agg + BOND


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("side", ["left", "right"])
def test_a_wrong_aggregate_cannot_be_defended(kit, name, side):
    cfg = dict(CONFIGS[name])
    job = kit.job(**cfg)
    job.commit()
    job.commit(shift={5: 3})  # three steps off at coordinate 5: chunk 1 of round 1
    # the chunks the aggregator got right are still defended
    assert resolved(RoundPlayer(job, open_aggregate(job, 1, 0)).play())["challenger_won"] is False
    p = RoundPlayer(job, open_aggregate(job, 1, 1))
    with reverts("arbiter: claim does not give the model"):
        p.defend_aggregate()
    p.defend_aggregate(lie=True, side=side)  # a claim that gives the wrong model...
    p.bisect()
    with reverts("arbiter: update does not give the claim"):  # ... is wrong about some update
        p.defend_update()
    out, req = kit.balance(kit.outsider), kit.balance(kit.requester)
    receipt = p.timeout()
    assert_round_fault(kit, job, receipt, 1)
    assert kit.balance(kit.outsider) == out + BOND + AGG_STAKE // 2
    assert kit.balance(kit.requester) == req + ESCROW


def test_a_silent_defender_loses(kit):
    job = kit.job()
    job.commit()
    p = RoundPlayer(job, open_aggregate(job, 0, 0))
    with reverts("arbiter: deadline not passed"):
        kit.ra.transact("timeout", p.gid, sender=kit.outsider)
    assert_round_fault(kit, job, p.timeout(sender=kit.requester), 0)  # anyone may call the timeout


def test_a_silent_challenger_loses_its_bond(kit):
    job = kit.job()
    job.commit()
    p = RoundPlayer(job, open_aggregate(job, 0, 0))
    p.defend_aggregate()
    p.split()
    agg = kit.balance(kit.aggregator)
    receipt = p.timeout()
    res = resolved(receipt)
    assert (res["challenger_won"], res["moot"], res["reason"]) == (False, False, "challenger silent")
    assert kit.balance(kit.aggregator) == agg + BOND and job.status()[0] == JobState.TRAINING
    with reverts("arbiter: game over"):
        kit.ra.transact("timeout", p.gid, sender=kit.outsider)


@pytest.mark.parametrize("rule", [R.Rule.WEIGHTED_MEAN, R.Rule.MEDIAN])
def test_an_empty_round_keeps_the_model(kit, rule):
    job = kit.job(rule=rule)
    job.commit()
    job.commit(updates=[])
    p = RoundPlayer(job, open_aggregate(job, 1, 2))
    agg = kit.balance(kit.aggregator)
    receipt = p.defend_aggregate()
    assert resolved(receipt)["reason"] == "empty round keeps the model"
    assert receipt.event("ClaimMade")["hi"] == 0
    assert kit.balance(kit.aggregator) == agg + BOND


def test_an_empty_round_that_moves_the_model_is_a_fault(kit):
    job = kit.job()
    job.commit()
    job.commit(updates=[], shift={9: 1})
    p = RoundPlayer(job, open_aggregate(job, 1, 2))
    with reverts("arbiter: claim does not give the model"):
        p.defend_aggregate()
    with reverts("arbiter: claim does not give the model"):
        p.defend_aggregate(claim=[0, 0, 1])  # no claim over no update gives a step
    assert_round_fault(kit, job, p.timeout(), 1)


def test_a_round_counting_updates_it_does_not_hold_is_a_fault(kit):
    job = kit.job()
    job.commit(updates=[], count=2)  # claims two updates, commits none
    p = RoundPlayer(job, open_leaf(job, 0, 1))
    with pytest.raises(IndexError):  # there is no leaf to open: the defender cannot even build its move
        p.defend_update()
    assert_round_fault(kit, job, p.timeout(), 0)


# ---------------------------------------------------------------- the moves' rules


def test_defend_aggregate_rules(kit):
    job = kit.job(**CONFIGS["secure sum"])
    job.commit()
    job.commit()
    p = RoundPlayer(job, open_aggregate(job, 1, 1))
    rd, prev = job.rounds[1], job.rounds[0]
    s = job.size
    tree_new, tree_prev = vector_tree(rd.model, s), vector_tree(prev.model, s)
    new = chunk_list(rd.model, 1, s)
    old = chunk_list(prev.model, 1, s)
    corr = chunk_list(rd.correction, 1, s)
    with reverts("arbiter: not the disputed round"):
        p.defend_aggregate(data=prev.data)
    with reverts("arbiter: model chunk not committed"):  # a chunk of the wrong width
        p.defend_aggregate(new_chunk=(new[:-1], tree_new.proof(1)))
    with reverts("arbiter: model chunk not committed"):
        p.defend_aggregate(new_chunk=([new[0] + 1, *new[1:]], tree_new.proof(1)))
    with reverts("arbiter: model chunk not committed"):
        p.defend_aggregate(new_chunk=(chunk_list(rd.model, 0, s), tree_new.proof(0)))  # another chunk
    with reverts("arbiter: not the previous round"):
        p.defend_aggregate(prev=rd.data)
    with reverts("arbiter: previous chunk not committed"):
        p.defend_aggregate(prev_chunk=(old + [0], tree_prev.proof(1)))
    with reverts("arbiter: previous chunk not committed"):
        p.defend_aggregate(prev_chunk=([old[0] - 1, *old[1:]], tree_prev.proof(1)))
    with reverts("arbiter: correction uncommitted"):
        p.defend_aggregate(correction=EMPTY_CHUNK)
    with reverts("arbiter: correction uncommitted"):
        p.defend_aggregate(correction=([corr[0] ^ 1, *corr[1:]], vector_tree(rd.correction, s).proof(1)))
    with reverts("arbiter: claim does not give the model"):
        p.defend_aggregate(claim=p.truth(0, rd.count)[:-1])
    with reverts("arbiter: wrong game kind"):
        kit.ra.transact("defend_aggregate", open_leaf(job, 1, 0), rd.data, prev.data, EMPTY_CHUNK,
                        EMPTY_CHUNK, EMPTY_CHUNK, [], [], [], sender=kit.aggregator)
    receipt = p.defend_aggregate()
    made = receipt.event("ClaimMade")
    assert (made["game_id"], made["lo"], made["hi"], made["claim"]) == (p.gid, 0, rd.count, p.truth(0, rd.count))
    assert game(kit.ra, p.gid)["turn"] == R.Turn.DEFENDER  # the defender splits next
    with reverts("arbiter: claim already made"):
        p.defend_aggregate()


def test_split_and_choose_rules(kit):
    job = kit.job(n=4)
    job.commit()
    p = RoundPlayer(job, open_aggregate(job, 0, 0))
    with reverts("arbiter: range cannot be split"):  # no claim yet
        p.send("split", [0] * 5, [0] * 5)
    with reverts("arbiter: not this move's turn"):
        p.choose(True)
    p.defend_aggregate()
    parent, left = p.truth(0, 4), p.truth(0, 2)
    with reverts("arbiter: not the claimed range"):
        p.send("split", [parent[0] + 1, *parent[1:]], left)
    with reverts("arbiter: bad claim length"):
        p.send("split", parent, left[:-1])
    with reverts("arbiter: not this side's move"):
        p.send("split", parent, left, sender=kit.validators[3])
    receipt = p.send("split", parent, left)
    ev = receipt.event("RangeSplit")
    assert (ev["lo"], ev["hi"], ev["left"], ev["right"], ev["deadline"]) == (0, 4, left, p.truth(2, 4), kit.now() + 100)
    g = game(kit.ra, p.gid)
    assert (g["turn"], g["claim"] != ZERO32, g["left"] != ZERO32, g["right"] != ZERO32) == (R.Turn.CHALLENGER, True,
                                                                                            True, True)
    with reverts("arbiter: not this move's turn"):
        p.send("split", parent, left)
    with reverts("arbiter: not this side's move"):
        p.choose(True, sender=kit.aggregator)
    with reverts("arbiter: not this side's move"):
        p.choose(True, sender=kit.requester)
    receipt = p.choose(True)
    ev = receipt.event("RangeChosen")
    assert (ev["lo"], ev["hi"], ev["deadline"]) == (2, 4, kit.now() + 100)
    g = game(kit.ra, p.gid)
    assert (g["lo"], g["hi"], g["left"], g["right"], g["turn"]) == (2, 4, ZERO32, ZERO32, R.Turn.DEFENDER)
    p.split()
    kit.advance(100)  # the next move comes one second after the deadline
    with reverts("arbiter: move too late"):
        p.choose(False)
    with reverts("arbiter: not this move's turn"):
        p.split()
    assert resolved(p.timeout())["reason"] == "challenger silent"


def test_moves_at_the_deadline_are_in_time(kit):
    job = kit.job(n=2)
    job.commit()
    p = RoundPlayer(job, open_aggregate(job, 0, 0))
    kit.advance(p.g["deadline"] - kit.now() - 1)
    p.defend_aggregate()
    kit.advance(p.g["deadline"] - kit.now() - 1)
    p.split()
    kit.advance(p.g["deadline"] - kit.now() - 1)
    p.choose()
    kit.advance(p.g["deadline"] - kit.now())
    with reverts("arbiter: move too late"):
        p.defend_update()
    assert_round_fault(kit, job, kit.ra.transact("timeout", p.gid, sender=kit.outsider), 0)


def test_only_aggregate_and_reward_games_split(kit):
    job = kit.job()
    job.commit()
    u = job.rounds[0].updates[0]
    provider = next(a for a in kit.providers if a.address == u.provider)
    for gid in (open_leaf(job, 0, 0), open_inclusion(job, 0, provider, u.root, u.weight)):
        with reverts("arbiter: nothing to split"):
            kit.ra.transact("split", gid, [1], [1], sender=kit.aggregator)
    p = RoundPlayer(job, open_aggregate(job, 0, 0))
    p.defend_aggregate()
    p.bisect()
    with reverts("arbiter: range cannot be split"):
        p.split()


def test_defend_update_rules(kit):
    job = kit.job(n=4, rule=R.Rule.MEDIAN)
    job.commit()
    job.commit()
    p = RoundPlayer(job, open_aggregate(job, 1, 0))
    p.defend_aggregate()
    with reverts("arbiter: not the disputed leaf"):  # still a range
        p.defend_update()
    p.bisect()
    i = p.g["lo"]
    rd = job.rounds[1]
    u = rd.updates[i]
    opening = p.opening()
    with reverts("arbiter: not the disputed leaf"):
        p.defend_update(opening=p.opening(i - 1))
    with reverts("arbiter: not the disputed round"):
        kit.ra.transact("defend_update", p.gid, job.rounds[0].data, opening, EMPTY_CHUNK, [], [], [],
                        sender=kit.aggregator)
    with reverts("arbiter: leaf not committed"):
        p.defend_update(opening=(*opening[:3], u.weight + 1, *opening[4:]))
    with reverts("arbiter: leaf not committed"):
        p.defend_update(opening=(*opening[:4], opening[4][::-1], *opening[5:]))
    with reverts("arbiter: previous leaf not committed"):
        p.defend_update(opening=(*opening[:8], opening[8] + 1, opening[9]))
    with reverts("arbiter: not the claimed update"):
        claim = p.claimed(i, i + 1)
        p.defend_update(claim=[claim[0] + 1, *claim[1:]])
    with reverts("arbiter: not the round's hints"):
        p.defend_update(hints=(p.hints[1], p.hints[0]))
    c = chunk_list(u.q, 0, job.size)
    tree = vector_tree(u.q, job.size)
    with reverts("arbiter: chunk not in update"):  # of the wrong width
        p.defend_update(chunk=(c[:-1], tree.proof(0)))
    with reverts("arbiter: chunk not in update"):
        p.defend_update(chunk=([c[0] + 1, *c[1:]], tree.proof(0)))
    with reverts("arbiter: chunk not in update"):
        p.defend_update(chunk=(chunk_list(u.q, 1, job.size), tree.proof(1)))
    assert resolved(p.defend_update())["reason"] == "update shown"


def test_a_single_update_round_is_opened_after_the_claim(kit):
    job = kit.job()
    job.commit(updates=job.updates(job.providers[:1]))
    p = RoundPlayer(job, open_aggregate(job, 0, 0))
    with reverts("arbiter: no claim made"):
        p.defend_update(claim=[], hints=([], []))
    p.defend_aggregate()
    with reverts("arbiter: range cannot be split"):
        p.split()
    assert resolved(p.defend_update())["challenger_won"] is False


def test_an_update_value_outside_int64_cannot_be_shown(kit):
    job = kit.job()
    q = [2**63] + [1] * 9  # one value past the int64 range
    tree = big_chunk_tree(q, job.size)
    p0 = job.providers[0]
    sig = job.sign_receipt(p0, 0, tree.root, 1)
    upd = Upd(p0.address, np.zeros(10, dtype=np.int64), 1, sig, tree.root)
    job.commit(updates=[upd], model=np.array([7] * 10))
    gid = open_aggregate(job, 0, 0)
    rd = job.rounds[0]
    model_tree = vector_tree(rd.model, job.size)
    kit.ra.transact("defend_aggregate", gid, rd.data, EMPTY_DATA, EMPTY_CHUNK, ([7] * 4, model_tree.proof(0)),
                    EMPTY_CHUNK, [7, 7, 7, 7, 1], [], [], sender=kit.aggregator)
    opening = (0, p0.address, tree.root, 1, rd.tree.proof(0), sig, ZERO_ADDR, ZERO32, 0, [])
    with reverts("leaves: value out of range"):  # no chunk leaf holds a value past int64
        kit.ra.transact("defend_update", gid, rd.data, opening, (q[:4], tree.proof(0)), [7, 7, 7, 7, 1], [], [],
                        sender=kit.aggregator)


# ---------------------------------------------------------------- leaf games


def _position(job, r, address) -> int:
    return [u.provider for u in job.rounds[r].updates].index(address)


def _with(job, updates, i, upd):
    """The honest updates with the one of `job.providers[i]` replaced by `upd`."""
    out = [u for u in updates if u.provider != job.providers[i].address]
    return out + [upd]


def _bad_leaf(kit, case):
    """(job, round, leaf index, reason) of a round holding one invalid leaf."""
    if case == "out of order":
        job = kit.job()
        ups = sorted(job.updates(), key=lambda u: address_key(u.provider), reverse=True)
        job.commit(updates=ups, sort=False)
        return job, 0, 1, "arbiter: leaves out of order"
    if case == "a provider twice":
        job = kit.job()
        ups = job.updates(job.providers[:2])
        job.commit(updates=ups + [job.update(job.providers[0], weight=9)])
        i = next(k for k in range(1, 3) if job.rounds[0].updates[k].provider == job.rounds[0].updates[k - 1].provider)
        return job, 0, i, "arbiter: leaves out of order"
    if case in ("weight zero", "weight too large"):
        job = kit.job()
        w = 0 if case == "weight zero" else R.MAX_WEIGHT + 1
        job.commit(updates=_with(job, job.updates(), 1, job.update(job.providers[1], weight=w)), model=job.model + 1)
        return job, 0, _position(job, 0, job.providers[1].address), "arbiter: weight out of bounds"
    if case == "private weight":
        job = kit.job(privacy_budget=R.EPSILON_SCALE)
        job.commit(updates=_with(job, job.updates(), 2, job.update(job.providers[2], weight=2)))
        return job, 0, _position(job, 0, job.providers[2].address), "arbiter: private update weight not 1"
    if case in ("unsigned", "signed by another", "signed for another round"):
        job = kit.job()
        p = job.providers[0]
        bad = {"unsigned": {"signed": False}, "signed by another": {"signer": job.providers[1]},
               "signed for another round": {"r": 1}}[case]
        u = job.update(p, weight=2, **bad)
        job.commit(updates=_with(job, job.updates(), 0, u))
        return job, 0, _position(job, 0, p.address), "arbiter: no signed receipt"
    if case in ("an outsider", "the aggregator", "a validator"):
        job = kit.job(validators=1)
        who = {"an outsider": kit.outsider, "the aggregator": kit.aggregator, "a validator": job.validators[0]}[case]
        job.commit(updates=job.updates(job.providers[:2]) + [job.update(who, weight=5)])
        return job, 0, _position(job, 0, who.address), "arbiter: not a provider of the job"
    if case == "slashed before the round":
        job = kit.job(validators=3, rounds=3)
        job.commit()
        p = job.providers[1]
        job.slash_provider(p)  # slashed while round 1 trains: its round-1 update still counts
        job.commit()
        job.commit()
        return job, 2, _position(job, 2, p.address), "arbiter: slashed before round"
    if case == "not selected":
        job, r = _per_round_job(kit)
        out = next(p for p in job.providers if p not in job.selected(r))
        job.commit(updates=job.updates() + [job.update(out, weight=4)])
        return job, r, _position(job, r, out.address), "arbiter: provider not selected"
    raise AssertionError(case)


def _per_round_job(kit):
    """A job selecting 3 of its 6 providers a round, at its first round whose seed selects some but not all."""
    job = kit.job(n=6, per_round=3, rounds=6)
    r = 0
    while not 0 < len(job.selected(r)) < 6:
        job.commit(updates=[])
        r += 1
    return job, r


BAD_LEAVES = ["out of order", "a provider twice", "weight zero", "weight too large", "private weight", "unsigned",
              "signed by another", "signed for another round", "an outsider", "the aggregator", "a validator",
              "slashed before the round", "not selected"]


@pytest.mark.parametrize("case", BAD_LEAVES)
def test_an_invalid_leaf_cannot_be_defended(kit, case):
    job, r, index, reason = _bad_leaf(kit, case)
    p = RoundPlayer(job, open_leaf(job, r, index))
    with reverts(reason):
        p.defend_update()
    assert_round_fault(kit, job, p.timeout(), r)


def _good_leaf(kit, case):
    if case == "first leaf":
        job = kit.job()
        job.commit()
        return job, 0, 0
    if case == "last leaf":
        job = kit.job()
        job.commit()
        return job, 0, 2
    if case == "largest weight":
        job = kit.job()
        job.commit(updates=_with(job, job.updates(), 1, job.update(job.providers[1], weight=R.MAX_WEIGHT)))
        return job, 0, _position(job, 0, job.providers[1].address)
    if case == "private weight one":
        job = kit.job(privacy_budget=R.EPSILON_SCALE)
        job.commit()
        return job, 0, 1
    if case == "slashed in the round itself":
        job = kit.job(validators=3, rounds=3)
        job.commit()
        p = job.providers[1]
        job.slash_provider(p)
        job.commit()
        return job, 1, _position(job, 1, p.address)
    if case == "selected":
        job, r = _per_round_job(kit)
        job.commit()
        return job, r, job.rounds[r].count - 1
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["first leaf", "last leaf", "largest weight", "private weight one",
                                  "slashed in the round itself", "selected"])
def test_a_valid_leaf_wins_the_bond(kit, case):
    job, r, index = _good_leaf(kit, case)
    agg = kit.balance(kit.aggregator)
    receipt = RoundPlayer(job, open_leaf(job, r, index)).defend_update()
    assert resolved(receipt) == {"game_id": resolved(receipt)["game_id"], "job_id": job.id, "challenger_won": False,
                                     "moot": False, "reason": "update shown"}
    assert kit.balance(kit.aggregator) == agg + BOND


def test_a_leaf_game_takes_no_aggregate_move(kit):
    job = kit.job()
    job.commit()
    p = RoundPlayer(job, open_leaf(job, 0, 1))
    with reverts("arbiter: wrong game kind"):
        p.send("defend_inclusion", job.rounds[0].data, 1, job.rounds[0].tree.proof(1))
    with reverts("arbiter: not the disputed leaf"):
        p.defend_update(opening=p.opening(0))


# ---------------------------------------------------------------- inclusion games


def test_an_included_update_wins_the_bond(kit):
    job = kit.job()
    job.commit()
    u = job.rounds[0].updates[1]
    provider = next(a for a in kit.providers if a.address == u.provider)
    p = RoundPlayer(job, open_inclusion(job, 0, provider, u.root, u.weight))
    with reverts("arbiter: update not in the round"):
        p.defend_inclusion(index=0)
    with reverts("arbiter: not the disputed round"):
        p.send("defend_inclusion", EMPTY_DATA, 1, job.rounds[0].tree.proof(1))
    with reverts("arbiter: no update to open"):
        p.send("defend_update", job.rounds[0].data, p.opening(1), EMPTY_CHUNK, [], [], [])
    agg = kit.balance(kit.aggregator)
    assert resolved(p.defend_inclusion())["reason"] == "update included"
    assert kit.balance(kit.aggregator) == agg + BOND


@pytest.mark.parametrize("how", ["left out", "weight changed", "empty round"])
def test_an_acknowledged_update_left_out_is_censorship(kit, how):
    job = kit.job()
    job.commit()
    victim = job.providers[2]
    acked = job.update(victim, weight=5)
    honest = [u for u in job.updates() if u.provider != victim.address]
    if how == "left out":
        job.commit(updates=honest)
    elif how == "weight changed":
        job.commit(updates=honest + [job.update(victim, q=acked.q, weight=4)])
    else:
        job.commit(updates=[])
    p = RoundPlayer(job, open_inclusion(job, 1, victim, acked.root, acked.weight))
    if job.rounds[1].count:
        index = next((i for i, u in enumerate(job.rounds[1].updates) if u.provider == victim.address), 0)
        with reverts("arbiter: update not in the round"):
            p.defend_inclusion(index=index)
    out = kit.balance(kit.outsider)
    assert_round_fault(kit, job, p.timeout(), 1, reason="censored update")
    assert kit.balance(kit.outsider) == out + BOND + AGG_STAKE // 2


# ---------------------------------------------------------------- moot games and settlement


def test_games_on_a_round_the_job_reverted_are_moot(kit):
    job = kit.job(rounds=3)
    job.commit(shift={0: 1})  # round 0 is wrong
    job.commit()
    job.commit()
    live = RoundPlayer(job, open_aggregate(job, 2, 0, challenger=kit.validators[0]), challenger=kit.validators[0])
    silent = RoundPlayer(job, open_leaf(job, 1, 0, challenger=kit.requester), challenger=kit.requester)
    with reverts("arbiter: game still live"):
        kit.ra.transact("close_moot", live.gid, sender=kit.outsider)
    live.defend_aggregate()
    live.split()  # now the challenger's turn
    wrong = RoundPlayer(job, open_aggregate(job, 0, 0))
    wrong.defend_aggregate(lie=True)
    wrong.bisect()
    assert kit.ra.call("open_games", job.id) == 3
    receipt = wrong.timeout()
    assert resolved(receipt)["challenger_won"] and job.status()[:2] == (JobState.FAILED, 0)
    assert kit.ra.call("open_games", job.id) == 2
    v0 = kit.balance(kit.validators[0])
    ev = resolved(kit.ra.transact("close_moot", live.gid, sender=kit.outsider))
    assert (ev["challenger_won"], ev["moot"], ev["reason"]) == (False, True, "moot")
    assert kit.balance(kit.validators[0]) == v0 + BOND  # refunded, although it was its turn
    with reverts("arbiter: game over"):
        kit.ra.transact("close_moot", live.gid, sender=kit.outsider)
    # a moot game that times out refunds its challenger too, whoever was silent
    req, agg = kit.balance(kit.requester), kit.balance(kit.aggregator)
    ev = resolved(silent.timeout())
    assert (ev["challenger_won"], ev["moot"], ev["reason"]) == (True, True, "defender silent")
    assert kit.balance(kit.requester) == req + BOND and kit.balance(kit.aggregator) == agg
    assert kit.ra.call("open_games", job.id) == 0


def test_a_second_game_proving_the_same_fault_is_refunded(kit):
    job = kit.job()
    job.commit(shift={1: 2})
    first = RoundPlayer(job, open_aggregate(job, 0, 0))
    second = RoundPlayer(job, open_aggregate(job, 0, 0, challenger=kit.requester), challenger=kit.requester)
    first.timeout()
    req = kit.balance(kit.requester)
    ev = resolved(kit.ra.transact("close_moot", second.gid, sender=kit.outsider))
    assert ev["moot"] and kit.balance(kit.requester) == req + BOND


def test_a_game_is_moot_once_the_job_failed_otherwise(kit):
    job = kit.job()
    job.commit()
    p = RoundPlayer(job, open_aggregate(job, 0, 0))
    kit.advance(500)
    kit.m.transact("fail", job.id, sender=kit.outsider)
    out = kit.balance(kit.outsider)
    assert resolved(kit.ra.transact("close_moot", p.gid, sender=kit.requester))["moot"]
    assert kit.balance(kit.outsider) == out + BOND


def test_settlement_waits_for_every_round_game(kit):
    job = kit.job()
    job.finalize()
    p = RoundPlayer(job, open_aggregate(job, 1, 0))  # rounds stay disputable while the reward root waits
    kit.advance(98)  # the next transaction runs at the end of the challenge window
    with reverts("market: disputes open"):
        kit.m.transact("settle", job.id, sender=kit.outsider)
    p.play()
    kit.m.transact("settle", job.id, sender=kit.outsider)
    assert job.status()[0] == JobState.SETTLED


def test_a_round_proven_wrong_after_the_reward_root_fails_the_job(kit):
    job = kit.job()
    job.commit()
    job.commit(shift={3: -4})
    job.finalize()
    p = RoundPlayer(job, open_aggregate(job, 1, 0))
    p.defend_aggregate(lie=True)
    p.bisect()
    req = kit.balance(kit.requester)
    receipt = p.timeout()
    assert_round_fault(kit, job, receipt, 1)
    assert job.info()["reward_root"] == ZERO32 and kit.balance(kit.requester) == req + ESCROW
    with reverts("market: job not finalizing"):
        kit.m.transact("settle", job.id, sender=kit.outsider)
    for acct in (*job.providers, kit.aggregator):
        word, stake = job.membership(acct)
        if stake and not R.is_slashed(word):
            kit.m.transact("release_stake", job.id, acct.address, sender=kit.outsider)
    assert not events(receipt, "RewardRootRejected")


def test_a_game_that_does_not_exist_takes_no_move(kit):
    with reverts("arbiter: nothing to split"):
        kit.ra.transact("split", 99, [1], [1], sender=kit.aggregator)
    with reverts("arbiter: not this move's turn"):
        kit.ra.transact("choose", 99, True, sender=kit.outsider)
    with reverts("arbiter: game over"):
        kit.ra.transact("timeout", 99, sender=kit.outsider)
    with reverts("arbiter: game over"):
        kit.wa.transact("close_moot", 99, sender=kit.outsider)
    with reverts("arbiter: wrong game kind"):
        kit.ra.transact("defend_inclusion", 99, EMPTY_DATA, 0, [], sender=kit.aggregator)
    with reverts("arbiter: no update to open"):
        kit.ra.transact("defend_update", 99, EMPTY_DATA, (0, ZERO_ADDR, ZERO32, 0, [], b"", ZERO_ADDR, ZERO32, 0, []),
                        EMPTY_CHUNK, [], [], [], sender=kit.aggregator)
