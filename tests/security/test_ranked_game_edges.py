"""Two edges of the aggregate game under the ranked rules (median, trimmed mean), found by an
attacker's review.

- **An empty round.** An honest aggregator commits a round nobody sent to empty (it keeps the
  model). A stranger opened the aggregate game on it; the honest defender computed its claim over
  zero rows with numpy, which raised before any transaction: the aggregator never answered, its
  process retried the same error (holding back its other games too), and the stranger timed the
  game out, the job failed and took half the aggregator's stake. Zero rows now claim zeros, and one
  game's failed move never holds back the defender's others.
- **A hint past int64.** A cheating aggregator answered the watcher's game on its wrong median round
  with an order-statistic hint of -2**63 - 1 (the chain takes int256 hints and checks only counts
  and totals). The watcher's claims under it raised an OverflowError out of every move: it lost
  its bond by silence, again at every look, and the wrong round stood. Hints past int64 are now
  compared as Python integers: the watcher plays the game to the end and wins it."""

from __future__ import annotations

import numpy as np
import pytest
from sec_support import AGG_STAKE, ZERO32

from fedmarket.driver import RoundPlan
from fedmarket.market import JobState
from fedmarket.processes.challenger import ChallengerProcess
from fedmarket.protocol import rules as R
from fedmarket.protocol.proofs import EMPTY_CHUNK, chunk_opening
from fedmarket.roles import Aggregator
from fedmarket.roles.common import committed_rounds
from fedmarket.roles.games import Defender, job_games

HUGE = -(2**63) - 1


@pytest.mark.parametrize("kw", [{"strategy": "median"}, {"strategy": "trimmed_mean", "trim": 1}])
def test_an_empty_ranked_round_is_defended(make, kw):
    s = make(providers=3, rounds=2, challenger=False, **kw)
    s.open()
    s.driver.round(0, RoundPlan({0: "keys", 1: "keys", 2: "keys"}))  # nobody sends: round 0 is empty
    assert [c.count for c in committed_rounds(s.dep, s.job)] == [0]
    griefer = s.c.stranger
    s.approve(griefer, s.dep.round_arbiter.address)
    s.dep.round_arbiter.transact("challenge_aggregate", s.job, 0, 0, *s.truth().round_args(0), sender=griefer)
    assert len(s.agg.defend(s.job)) == 1 and s.agg.defender.failed_moves == []
    (won,) = s.dep.round_arbiter.events("GameResolved", job_id=s.job)
    assert not won["challenger_won"] and not job_games(s.dep, s.job)
    assert s.state() == JobState.TRAINING and s.slashed() == {}


class _HugeHints(Defender):
    """Answers the first move of an aggregate game with a root claim whose first low hint is
    -2**63 - 1 and whose total is made to fit through the `between` value."""

    def _aggregate(self, truth, g, send):
        if g.claim != ZERO32:
            return super()._aggregate(truth, g, send)
        ev = truth.evidence(g.round)
        size = truth.spec.quantization.chunk_size
        claim, lo_h, hi_h = truth.aggregate_claim(g.round, g.target, 0, ev.committed.count)
        lr, hr = R.ranks(truth.spec.rule, ev.committed.count, truth.spec.trim)
        new = int(np.asarray(ev.model).ravel()[g.target * size])
        prev = 0 if ev.prev is None else int(np.asarray(ev.prev_model).ravel()[g.target * size])
        claim = list(claim)
        claim[0], claim[1] = lr, 1  # "lr values below, one equal to" a hint below every int64
        claim[4] = (hr - lr + 1) * (new - prev) - HUGE - hi_h[0] * (hr - claim[2] + 1)
        return send("defend_aggregate", ev.committed.data, (ZERO32, ZERO32, 0, ZERO32, 0, ZERO32, ZERO32),
                    EMPTY_CHUNK, chunk_opening(ev.model, g.target, size), EMPTY_CHUNK, claim, [HUGE, *lo_h[1:]], hi_h)


class HugeHintAggregator(Aggregator):
    """Commits a median one unit off in the first value, and defends it with a hint past int64."""

    def aggregate(self, spec, q_global, updates, correction):
        q = super().aggregate(spec, q_global, updates, correction).copy()
        q[0] += 1
        return q

    def defend(self, job_id):
        return _HugeHints(self.dep, self.account, self.store).respond(job_id)


def test_a_hint_outside_int64_does_not_silence_the_watcher(make, tmp_path):
    s = make(providers=3, rounds=1, strategy="median", aggregator_cls=HugeHintAggregator, challenger=False)
    s.open()
    s.rounds(1)
    watcher = ChallengerProcess(s.dep, s.c.watcher, s.store, s.box, s.job, tmp_path / "watcher")
    period = s.spec.deadlines.response_period
    for _ in range(60):
        watcher.safe_step()
        if s.state() != JobState.TRAINING:
            break
        s.agg.defend(s.job)
        s.chain.advance_time(max(1, period // 5))
    resolved = s.dep.round_arbiter.events("GameResolved", job_id=s.job)
    assert resolved and resolved[0]["challenger_won"], [(e["challenger_won"], e["reason"]) for e in resolved]
    assert s.state() == JobState.FAILED and s.slashed() == {s.agg.address: AGG_STAKE}
    assert s.delta()[s.c.watcher.address] > 0
