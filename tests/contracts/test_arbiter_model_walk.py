"""The model walk (`RoundArbiter.challenge_model`, `open_node`): an aggregate game for a challenger
that cannot see the committed model. The aggregator opens the committed model tree node by node
down the path the challenger picks, to one chunk, and the game goes on there as an aggregate game.
An honest defender wins the bond wherever the walk goes (padding included); a wrong model is
found at the chunk that differs; a model root that is no tree of chunks, or has anything but
zeros past the last chunk, cannot be walked and loses. Every revert of the new moves."""

from __future__ import annotations

import pytest
from contract_kit import (
    AGG_STAKE,
    BOND,
    EMPTY_CHUNK,
    EMPTY_DATA,
    ZERO32,
    RoundPlayer,
    game,
    open_aggregate,
    open_walk,
    resolved,
    reverts,
)
from eth_utils import keccak
from test_arbiter_round import CONFIGS, assert_round_fault, params_of

from fedmarket.market import JobState
from fedmarket.protocol import rules as R
from fedmarket.protocol.encoding import chunk_leaf, round_commitment, vector_tree
from fedmarket.protocol.merkle import MerkleTree


def honest_tree(job, r: int) -> MerkleTree:
    """The chunk tree of the model round `r`'s updates give (what a challenger re-derives)."""
    rd = job.rounds[r]
    model = rd.prev_model + R.aggregate(job.rule, [u.q for u in rd.updates], [u.weight for u in rd.updates],
                                        job.terms.trim, rd.correction)
    return vector_tree(model, job.size)


def test_challenge_model_opens_a_walk_over_the_padded_model_tree(kit):
    job = kit.job()  # 10 values in chunks of 4: 3 chunks, a tree of 4 positions
    job.commit()
    job.commit()
    out = kit.balance(kit.outsider)
    receipt = kit.ra.transact("challenge_model", job.id, 1, *job.round_args(1), sender=kit.outsider)
    ev = receipt.event("GameOpened")
    deadline = kit.now() + 100
    assert (ev["kind"], ev["round"], ev["target"], ev["challenger"], ev["defender"], ev["bond"], ev["deadline"]) == (
        R.Game.MODEL, 1, 0, kit.outsider.address, kit.aggregator.address, BOND, deadline)
    rd = job.rounds[1]
    assert game(kit.ra, ev["game_id"]) == {
        "job_id": job.id, "kind": R.Game.MODEL, "round": 1, "target": 0, "challenger": kit.outsider.address,
        "defender": kit.aggregator.address, "bond": BOND, "lo": 0, "hi": 4, "claim": rd.data[0], "left": ZERO32,
        "right": ZERO32, "subject": round_commitment(job.id, 1, rd.data),
        "context": round_commitment(job.id, 0, job.rounds[0].data), "seed": job.rounds[0].data[6],
        "params": params_of(job.terms, 3), "turn": R.Turn.DEFENDER, "deadline": deadline}
    assert kit.balance(kit.outsider) == out - BOND and kit.ra.call("open_games", job.id) == 1


def test_challenge_model_rules(kit):
    job = kit.job()
    job.commit()
    job.commit()
    data, proof, prev, prev_proof = job.round_args(1)
    walk = lambda *a: kit.ra.transact("challenge_model", job.id, *a, sender=kit.outsider)
    with reverts("arbiter: round data not committed"):
        walk(1, (keccak(b"x"), *data[1:]), proof, prev, prev_proof)
    with reverts("arbiter: previous round not committed"):
        walk(1, data, proof, data, proof)
    with reverts("arbiter: round data not committed"):
        walk(2, data, proof, prev, prev_proof)


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("r", [0, 1])
def test_an_honest_model_walk_wins_the_bond(kit, name, r):
    """Wherever the challenger walks (a full chunk, the short last one), the honest aggregator
    opens every node and then defends the chunk: the bond is its."""
    job = kit.job(**CONFIGS[name])
    job.commit_all()
    for chunk in (0, job.n_chunks - 1):
        agg = kit.balance(kit.aggregator)
        p = RoundPlayer(job, open_walk(job, r))
        p.walk_to(chunk)
        receipt = p.play()
        assert game(kit.ra, p.gid)["target"] == chunk
        assert (resolved(receipt)["challenger_won"], resolved(receipt)["reason"]) == (False, "update shown")
        assert kit.balance(kit.aggregator) == agg + BOND
    assert kit.ra.call("open_games", job.id) == 0 and job.status()[0] == JobState.TRAINING


def test_the_walk_finds_the_chunk_a_wrong_model_shifted(kit):
    """The challenger follows the tree of the model the updates give: at every node one child
    differs from the committed one, down to the shifted chunk, where no claim over the updates
    can be defended."""
    job = kit.job()
    job.commit()
    job.commit(shift={5: 3})  # coordinate 5: chunk 1
    p = RoundPlayer(job, open_walk(job, 1))
    truth = honest_tree(job, 1)
    while p.g["hi"] - p.g["lo"] >= 2:
        receipt = p.open_node()
        opened = receipt.event("NodeOpened")
        assert (opened["lo"], opened["hi"], opened["deadline"]) == (p.g["lo"], p.g["hi"], kit.now() + 100)
        mine = p.node(truth)
        assert (opened["left"], opened["right"]) == tuple(p.node()) and mine != tuple(p.node())
        p.choose(mine[0] == opened["left"])
    assert p.g["lo"] == 1 and p.g["turn"] == R.Turn.DEFENDER
    with reverts("arbiter: claim does not give the model"):
        p.defend_aggregate()
    p.defend_aggregate(lie=True)
    p.bisect()
    with reverts("arbiter: update does not give the claim"):
        p.defend_update()
    out = kit.balance(kit.outsider)
    assert_round_fault(kit, job, p.timeout(), 1)
    assert kit.balance(kit.outsider) == out + BOND + AGG_STAKE // 2


def test_a_walk_into_the_padding_is_the_challengers_loss(kit):
    """Past the last chunk an honest tree holds zero leaves: a challenger that walks there is
    shown one and loses its bond."""
    job = kit.job()
    job.commit()
    p = RoundPlayer(job, open_walk(job, 0))
    p.walk_to(3)  # position 3 of 4: no chunk
    with reverts("arbiter: model chunk not committed"):  # nothing to defend there as a chunk
        p.send("defend_aggregate", job.rounds[0].data, EMPTY_DATA, EMPTY_CHUNK, ([], []), EMPTY_CHUNK, [0], [], [])
    agg = kit.balance(kit.aggregator)
    receipt = p.open_node((ZERO32, ZERO32))
    assert (resolved(receipt)["challenger_won"], resolved(receipt)["reason"]) == (False, "padding is zero")
    assert kit.balance(kit.aggregator) == agg + BOND and job.status()[0] == JobState.TRAINING


def test_a_model_root_with_anything_past_the_last_chunk_loses(kit):
    """A committed model tree whose padding is not zero is malformed: walked there, the defender
    cannot show a zero leaf."""
    job = kit.job()
    job.commit()
    model = job.honest_model(job.updates())
    leaves = [chunk_leaf(c, model[c * 4:(c + 1) * 4]) for c in range(3)] + [keccak(b"junk")]
    bad = MerkleTree(leaves)
    job.commit(model=model, model_root=bad.root)
    p = RoundPlayer(job, open_walk(job, 1))
    p.walk_to(3, tree=bad)
    with reverts("arbiter: a chunk, not padding"):
        p.open_node((ZERO32, ZERO32))
    assert_round_fault(kit, job, p.timeout(), 1)


def test_a_model_root_that_is_no_tree_loses(kit):
    """A model root nobody can open (here a random word) is the aggregator's loss at its first node."""
    job = kit.job()
    job.commit(model_root=keccak(b"no tree"))
    p = RoundPlayer(job, open_walk(job, 0))
    with reverts("arbiter: not the disputed node"):
        p.open_node()
    assert_round_fault(kit, job, p.timeout(), 0)


def test_a_one_chunk_model_is_walked_at_once(kit):
    """A model of one chunk is a tree of one leaf: the walk starts at the chunk."""
    job = kit.job(n_params=4)
    job.commit()
    p = RoundPlayer(job, open_walk(job, 0))
    assert (p.g["lo"], p.g["hi"]) == (0, 1)
    with reverts("arbiter: a chunk, not padding"):
        p.open_node((ZERO32, ZERO32))
    assert resolved(p.play())["challenger_won"] is False


def test_open_node_rules(kit):
    job = kit.job()
    job.commit()
    p = RoundPlayer(job, open_walk(job, 0))
    for intruder in (kit.outsider, kit.requester):
        with reverts("arbiter: not this side's move"):
            p.open_node(sender=intruder)
    left, right = p.node()
    with reverts("arbiter: not the disputed node"):
        p.open_node((right, left))
    with reverts("arbiter: wrong game kind"):  # a walk above a chunk is no aggregate game yet
        p.defend_aggregate()
    with reverts("arbiter: nothing to split"):
        p.send("split", [0], [0])
    p.open_node()
    with reverts("arbiter: not this move's turn"):
        p.open_node()
    with reverts("arbiter: not this side's move"):
        p.choose(False, sender=kit.aggregator)
    p.choose(False)
    kit.advance(p.g["deadline"] - kit.now() + 1)
    with reverts("arbiter: move too late"):
        p.open_node()
    agg_game = RoundPlayer(job, open_aggregate(job, 0, 0))
    with reverts("arbiter: wrong game kind"):
        agg_game.open_node((ZERO32, ZERO32))


def test_a_silent_challenger_loses_its_walk(kit):
    job = kit.job()
    job.commit()
    p = RoundPlayer(job, open_walk(job, 0))
    p.open_node()
    agg = kit.balance(kit.aggregator)
    res = resolved(p.timeout())
    assert (res["challenger_won"], res["reason"]) == (False, "challenger silent")
    assert kit.balance(kit.aggregator) == agg + BOND


def test_a_walk_on_a_reverted_round_is_moot(kit):
    job = kit.job()
    job.commit()
    job.commit(shift={0: 1})
    walk = RoundPlayer(job, open_walk(job, 1))
    walk.open_node()
    proof = RoundPlayer(job, open_aggregate(job, 1, 0))
    proof.defend_aggregate(lie=True)
    proof.bisect()
    assert resolved(proof.timeout())["challenger_won"] and job.status()[:2] == (JobState.FAILED, 1)
    assert kit.ra.call("open_games", job.id) == 1  # the walk, which the job has outgrown
    out = kit.balance(kit.outsider)
    receipt = kit.ra.transact("close_moot", walk.gid, sender=kit.requester)
    assert (resolved(receipt)["moot"], kit.balance(kit.outsider)) == (True, out + BOND)
    assert kit.ra.call("open_games", job.id) == 0
