"""Griefing: attacks that gain the attacker nothing but try to make an honest party pay. Every
test plays the griefer for real against the roles and the contracts; it passes when the griefer
is the only one that pays (its stake, its bond, its pay) and every honest party keeps at least
what it had."""

from __future__ import annotations

import math

import pytest
from sec_support import BOND, EMPTY_ROUND, VAL_STAKE, ZERO32, digits, revert

from fedmarket.driver import RoundPlan
from fedmarket.errors import ContractRevert, SchemaMismatch
from fedmarket.market import JobState
from fedmarket.processes import ValidatorProcess
from fedmarket.processes.base import Fatal
from fedmarket.protocol import rules as R
from fedmarket.protocol.proofs import EMPTY_CHUNK, chunk_opening
from fedmarket.roles import Provider, Validator
from fedmarket.roles.challenger import Challenger
from fedmarket.roles.common import committed_rounds, fail_job
from fedmarket.roles.games import choose, job_games, last_claims, pending_split
from fedmarket.testing.adversary import (
    BrokenDataValidator,
    FalseChallenger,
    SilentProvider,
    SilentValidator,
)

# ---------------------------------------------------------------- liveness faults


def test_silent_providers_cost_nobody_else(make):
    """Round 0: no provider sends anything (the aggregator commits an empty round, keeping the
    model); round 1: two of five never send. The aggregator is never slashed for their silence,
    the validators attest, the job settles; the silent providers get their stake back and no pay."""
    s = make(providers=5, validators=3, rounds=2, provider_cls=[Provider] * 3 + [SilentProvider] * 2)
    s.run(lambda r: RoundPlan({0: "keys", 1: "keys", 2: "keys"}) if r == 0 else RoundPlan())
    assert s.state() == JobState.SETTLED
    assert [c.count for c in committed_rounds(s.dep, s.job)] == [0, 3]
    d = s.delta()
    assert not s.slashed()
    assert d[s.agg.address] == 0
    assert all(d[v.address] == 0 for v in s.validators)
    active, silent = s.providers[:3], s.providers[3:]
    assert all(d[p.address] > 0 for p in active)
    assert all(d[p.address] == 0 for p in silent)  # stake back, nothing earned


@pytest.mark.parametrize("mode", ["trimmed_mean", "secagg"])
def test_silent_providers_cannot_get_the_aggregator_slashed(make, mode):
    """Half the providers go silent. trimmed_mean (trim 1): two updates are still a round the rule
    defines (trimming what it can, here nothing), so the honest aggregator commits them. secagg:
    two masked updates are below the SecAgg+ threshold, so the round aborts before anyone is
    acknowledged and the aggregator commits it empty (the model is kept). Either way the job goes
    on and settles, and nobody honest is slashed."""
    kw = {"strategy": "trimmed_mean", "trim": 1} if mode == "trimmed_mean" else {"privacy": "secagg", "validators": 3}
    s = make(providers=4, provider_cls=[Provider, Provider, SilentProvider, SilentProvider], **kw)
    s.run()
    assert s.state() == JobState.SETTLED
    assert s.agg.address not in s.slashed(), "an honest aggregator was slashed for providers' silence"
    counts = [int(e["count"]) for e in s.dep.market.events("RoundCommitted", job_id=s.job)]
    assert counts == ([2] * len(counts) if mode == "trimmed_mean" else [0] * len(counts))


def test_absent_validators_pay(make):
    """Two of three validators never vote: the round cannot reach quorum. After its deadline
    anyone fails it; every absent validator is slashed, the aggregator and the validator that voted
    keep their stakes, the providers get theirs back and the requester its escrow."""
    s = make(providers=3, validators=3, validator_cls=[Validator, SilentValidator, SilentValidator])
    s.run()
    assert s.state() == JobState.FAILED
    d = s.delta()
    honest_v, absent = s.validators[0], s.validators[1:]
    assert s.slashed() == {v.address: VAL_STAKE for v in absent}
    assert all(d[v.address] == -VAL_STAKE for v in absent)
    assert d[s.agg.address] == 0 and d[honest_v.address] == 0
    assert all(d[p.address] == 0 for p in s.providers)
    assert d[s.c.requester.address] == 0  # the escrow came back
    s.assert_no_honest_loss([s.agg.address, honest_v.address, s.c.requester.address, *(p.address for p in s.providers)])


def test_present_validators_are_never_slashed_as_absent(make, tmp_path):
    s = make(providers=3, validators=3)
    s.open()
    s.driver._train_and_commit(0, RoundPlan())  # the aggregator commits round 0 honestly
    procs = [ValidatorProcess(s.dep, v.account, s.store, s.box, v.X, v.y, s.job, tmp_path / f"v{i}", log=lambda m: None)
             for i, v in enumerate(s.validators)]
    for _ in range(3):  # the honest validator processes review, sign and post their attestations
        for p in procs:
            p.safe_step()
        s.chain.advance_time(60)
    # the aggregator never submits them; after the round's deadline it fails the round itself
    s.past_round_deadline()
    try:
        fail_job(s.dep, s.agg.account, s.job)
    except ContractRevert:
        return  # the round reached quorum: the validators' votes are on chain
    s.release_all()
    d = s.delta()
    assert all(d[v.address] >= 0 for v in s.validators), {v.address: d[v.address] for v in s.validators}


def test_broken_data_validator_refuses_to_stake(make, tmp_path):
    """A validator whose held-out data does not fit the job's schema (wrong width, values outside the
    feature bounds) checks it before staking and refuses (SchemaMismatch; its process exits with one
    line), so it can never be slashed for failing to vote. One that joins anyway (skipping the
    check) is the only one to pay: it never votes and is slashed, the aggregator keeps its stake."""
    _, _, test = digits()
    X, y = test.X[:60], test.y[:60]
    bad = {"width": (X[:, :10], y), "range": (X * 100.0, y)}
    s = make(providers=3, validators=1, validator_data=[bad["width"]])
    job = s.cast.requester.post(s.spec, s.agg.address)
    s.agg.accept(job)
    holdings = s.holdings()
    for name, (Xb, yb) in bad.items():
        v = Validator(s.dep, s.c.validators[0], s.store, s.box, Xb, yb)
        with pytest.raises(SchemaMismatch):
            v.join(job)
        proc = ValidatorProcess(s.dep, v.account, s.store, s.box, Xb, yb, job, tmp_path / f"p-{name}", log=lambda m: None)
        with pytest.raises(Fatal):
            proc.step()
    assert s.dep.market.call("membership", job, s.c.validators[0].address) == (0, 0)
    assert s.holdings() == holdings  # nothing staked, nothing lost

    # the same validator skipping the check: it joins, can never score, never votes, and pays alone
    s2 = make(providers=3, validators=1, validator_cls=BrokenDataValidator, validator_data=[bad["width"]])
    s2.run()
    assert s2.state() == JobState.FAILED
    d = s2.delta()
    assert d[s2.validators[0].address] == -VAL_STAKE
    assert d[s2.agg.address] == 0 and all(d[p.address] == 0 for p in s2.providers)


# ---------------------------------------------------------------- false and silent challenges


def _false(kind: str):
    return type(f"FalseChallenger_{kind}", (FalseChallenger, Challenger), {"kind": kind})


@pytest.mark.parametrize("kind", ["aggregate", "leaf", "inclusion", "reward_sum", "reward_value"])
def test_false_challenge_pays_defender(make, kind):
    """A challenger disputes what is right (a round's chunk, a leaf, an acknowledged update that is
    there, the reward root, a reward leaf's value) and plays its own moves. The honest aggregator
    shows the truth and takes the bond; the job settles and pays everyone as usual."""
    s = make(providers=3, rounds=2, challenger_cls=_false(kind))
    s.run()
    assert s.state() == JobState.SETTLED
    resolved = [e for a in (s.dep.round_arbiter, s.dep.reward_arbiter) for e in a.events("GameResolved", job_id=s.job)]
    assert len(resolved) == 1 and not resolved[0]["challenger_won"] and not resolved[0]["moot"]
    d = s.delta()
    assert d[s.c.watcher.address] == -BOND
    assert d[s.agg.address] == BOND
    assert not s.slashed()
    assert all(d[p.address] > 0 for p in s.providers)


def _try(fn, *args, **kw) -> None:
    """The attacker's move; refused is fine (the defence)."""
    try:
        fn(*args, **kw)
    except ContractRevert:
        pass


def _bogus_split(g, left):
    """A left half that differs from the true one in its first value (the right then differs too)."""
    return [int(left[0]) + 1, *map(int, left[1:])]


@pytest.mark.parametrize("move", ["claim", "split", "reward_split"])
def test_challenger_cannot_make_the_defenders_moves(make, move):
    s = make(providers=3, rounds=2)
    s.open()
    s.rounds()
    if move == "reward_split":
        s.driver._judge_and_post()
    attacker = s.c.stranger
    truth = s.truth()
    if move == "reward_split":
        s.approve(attacker, s.dep.reward_arbiter.address)
        s.dep.reward_arbiter.transact("challenge_rewards", s.job, sender=attacker)
        g = job_games(s.dep, s.job)[0]
        parent = truth.reward_sum_claim(g.lo, g.hi)
        left = truth.reward_sum_claim(g.lo, (g.lo + g.hi) // 2)
        _try(s.dep.reward_arbiter.transact, "split", g.gid, parent, _bogus_split(g, left), sender=attacker)
    else:
        s.approve(attacker, s.dep.round_arbiter.address)
        data, proof, prev, prev_proof = truth.round_args(0)
        s.dep.round_arbiter.transact("challenge_aggregate", s.job, 0, 0, data, proof, prev, prev_proof, sender=attacker)
        g = job_games(s.dep, s.job)[0]
        ev = truth.evidence(0)
        size = s.spec.quantization.chunk_size
        new = chunk_opening(ev.model, 0, size)
        if move == "claim":  # total weight 1: prev (zeros at round 0) + S // 1 is the new chunk
            _try(s.dep.round_arbiter.transact, "defend_aggregate", g.gid, ev.committed.data, EMPTY_ROUND, EMPTY_CHUNK, new,
                 EMPTY_CHUNK, [*map(int, new[0]), 1], [], [], sender=attacker)
        else:
            s.agg.defend(s.job)  # the aggregator's true claim over every update
            g = job_games(s.dep, s.job)[0]
            claim, lo_h, hi_h = last_claims(g)
            left = truth.aggregate_claim(0, 0, g.lo, (g.lo + g.hi) // 2, lo_h, hi_h)[0]
            _try(s.dep.round_arbiter.transact, "split", g.gid, list(claim), _bogus_split(g, left), sender=attacker)
    # from now on the attacker plays only its own moves (against the truth), the aggregator all of its own
    for _ in range(40):
        if not job_games(s.dep, s.job):
            break
        moved = s.driver._defend()
        for g in job_games(s.dep, s.job):
            if g.turn != R.Turn.CHALLENGER:
                continue
            left, mid = [int(x) for x in pending_split(g)[0]], (g.lo + g.hi) // 2
            if g.kind == R.Game.AGGREGATE:
                _, lo_h, hi_h = last_claims(g)
                true_left = truth.aggregate_claim(g.round, g.target, g.lo, mid, lo_h, hi_h)[0]
            else:
                true_left = truth.reward_sum_claim(g.lo, mid)
            moved.append(g.arbiter.transact("choose", g.gid, left == list(true_left), sender=attacker))
        if not moved:
            s.past(min(g.deadline for g in job_games(s.dep, s.job)))
            for g in job_games(s.dep, s.job):
                g.arbiter.transact("timeout", g.gid, sender=s.c.watcher)
    assert s.agg.address not in s.slashed(), "the honest aggregator was slashed through moves it never made"


def test_silent_challenger_loses_bond(make):
    """A challenger opens games on what is right (a round, then the reward root) and goes silent at
    its first choice: at its deadline anyone ends the game and its bond goes to the defender.
    Nobody can end a game early, and a move after the deadline is refused."""
    s = make(providers=4, rounds=2)
    s.open()
    s.rounds()
    attacker = s.c.stranger
    truth = s.truth()
    s.approve(attacker, s.dep.round_arbiter.address)
    s.approve(attacker, s.dep.reward_arbiter.address)
    data, proof, prev, prev_proof = truth.round_args(1)
    s.dep.round_arbiter.transact("challenge_aggregate", s.job, 1, 2, data, proof, prev, prev_proof, sender=attacker)
    s.driver._judge_and_post()
    s.dep.reward_arbiter.transact("challenge_rewards", s.job, sender=attacker)
    for _ in range(3):  # the aggregator answers until both games wait for the challenger
        s.agg.defend(s.job)
    games = job_games(s.dep, s.job)
    assert len(games) == 2 and all(g.turn == R.Turn.CHALLENGER for g in games)
    for g in games:
        revert(g.arbiter.transact, "timeout", g.gid, sender=s.c.watcher, match="deadline not passed")
    s.past(max(g.deadline for g in games))
    for g in games:
        revert(g.arbiter.transact, "choose", g.gid, True, sender=attacker, match="move too late")
        g.arbiter.transact("timeout", g.gid, sender=s.c.watcher)
    assert not job_games(s.dep, s.job)
    s.settle_and_claim()
    d = s.delta()
    assert d[attacker.address] == -2 * BOND and d[s.agg.address] == 2 * BOND
    assert all(d[p.address] > 0 for p in s.providers) and not s.slashed()


def test_games_end_and_job_settles(make):
    """Right before settlement a griefer opens every game it can on an honest job (the aggregate of
    each round, a leaf of each, the reward root, the value of every reward leaf) and plays as
    slowly as the rules allow. Every game ends within its response periods, one per bisection
    level, and none can be opened once the challenge window is over; then the job settles and pays
    everyone, and the griefer has lost every bond."""
    s = make(providers=5, rounds=3)
    s.open()
    s.rounds()
    s.driver._judge_and_post()
    attacker, truth = s.c.stranger, s.truth()
    s.approve(attacker, s.dep.round_arbiter.address)
    s.approve(attacker, s.dep.reward_arbiter.address)
    opened = 0
    for r in range(3):
        args = truth.round_args(r)
        s.dep.round_arbiter.transact("challenge_aggregate", s.job, r, r, *args, sender=attacker)
        s.dep.round_arbiter.transact("challenge_leaf", s.job, r, r, *args, sender=attacker)
        opened += 2
    s.dep.reward_arbiter.transact("challenge_rewards", s.job, sender=attacker)
    n_leaves = 5 + 0 + 1
    for i in range(n_leaves):
        s.dep.reward_arbiter.transact("challenge_value", s.job, i, sender=attacker)
    opened += 1 + n_leaves
    start = s.chain.timestamp()
    period = s.spec.deadlines.response_period
    levels = math.ceil(math.log2(max(5, n_leaves, 3)))
    # each game: the defender's opening move, then per level one split and one choice, then the last opening
    bound = (2 * levels + 2) * period
    for _ in range(200):
        if not job_games(s.dep, s.job):
            break
        while any(g.turn == R.Turn.DEFENDER for g in job_games(s.dep, s.job)):
            s.agg.defend(s.job)  # the honest defender answers at once
        waiting = [g for g in job_games(s.dep, s.job) if g.turn == R.Turn.CHALLENGER]
        if waiting:  # the griefer waits until the last second of each of its turns
            s.chain.advance_time(max(0, min(g.deadline for g in waiting) - s.chain.timestamp() - len(waiting) - 1))
            truth = s.truth()
            for g in waiting:
                g.arbiter.transact("choose", g.gid, choose(truth, g), sender=attacker)
        assert s.chain.timestamp() - start <= bound
    # and no new game can put settlement off once the challenge window is over
    s.past(int(s.dep.job(s.job)["challenge_deadline"]))
    revert(s.dep.reward_arbiter.transact, "challenge_rewards", s.job, sender=attacker, match="challenge window over")
    revert(s.dep.round_arbiter.transact, "challenge_leaf", s.job, 0, 0, *truth.round_args(0), sender=attacker,
           match="challenge window over")
    s.settle_and_claim()
    assert s.state() == JobState.SETTLED
    d = s.delta()
    assert d[attacker.address] == -opened * BOND and d[s.agg.address] == opened * BOND
    assert all(d[p.address] > 0 for p in s.providers)


def test_one_games_failed_move_does_not_hold_back_the_watchers_others(make, monkeypatch):
    """ATTACK (a cheater with several games against one watcher; found by a review of the watchers):
    make one game's move fail (a timeout someone else landed first reverts; one game's data cannot
    be re-derived right now). `Challenger.play` stopped at the first failure, so the watcher's move
    in its other games waited, and a game whose deadline passed meanwhile was lost by silence. Each
    game's move is its own now."""
    import fedmarket.roles.challenger as ch
    from fedmarket.errors import FedMarketError
    from fedmarket.roles.challenger import Challenger
    from fedmarket.roles.games import GameState

    s = make(providers=3, rounds=1)
    s.open()
    watcher = Challenger(s.dep, s.c.watcher, s.store)
    moved = []

    class Arbiter:
        def transact(self, fn, gid, *args, sender):
            if fn == "timeout" and gid == 1:
                raise ContractRevert("game: over")  # someone else's timeout landed first
            moved.append((fn, gid))
            return (fn, gid)

    def game(gid, deadline):
        return GameState(Arbiter(), gid, s.job, R.Game.AGGREGATE, 0, 0, s.c.watcher.address, s.agg.address, 0, 1,
                         ZERO32, R.Turn.CHALLENGER, deadline)

    now = s.chain.timestamp()
    games = [game(1, now - 1), game(2, now + 100), game(3, now + 100), game(4, now - 1)]
    monkeypatch.setattr(ch, "job_games", lambda dep, job: games)

    def choose(truth, g):
        if g.gid == 2:
            raise FedMarketError("round 0's data is unavailable right now")
        return 0

    monkeypatch.setattr(ch, "choose", choose)
    monkeypatch.setattr(ch, "Truth", lambda *a, **k: object())
    assert watcher.play(s.job, now) == [("choose", 3), ("timeout", 4)]
    assert moved == [("choose", 3), ("timeout", 4)]
    # each failed move is noted, for the process to log
    assert watcher.failed_moves == [(1, "ContractRevert: game: over"),
                                    (2, "FedMarketError: round 0's data is unavailable right now")]
