"""A receipt signature listed in its high-s twin (found by an attacker's review).

The committed leaf does not hold a receipt's signature, so an aggregator that committed every round
right could list one update's signature as its high-s twin: it recovers the same key, but the
canonical-form check refuses it. The watcher then found "no receipt signed by" the provider and
opened a leaf game, which the aggregator won with the real signature, taking the watcher's bond,
again at every look (the same harm as the lower-case address, through another field). A listed
signature is now read in its canonical form, which anyone can derive: the watcher opens nothing."""

from __future__ import annotations

import dataclasses

from fedmarket.market import JobState
from fedmarket.protocol import rules as R
from fedmarket.protocol.proofs import update_opening
from fedmarket.roles import Aggregator
from fedmarket.roles.games import Defender

N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def high_s_twin(sig: bytes) -> bytes:
    r, s, v = sig[:32], int.from_bytes(sig[32:64], "big"), sig[64]
    return bytes(r) + (N - s).to_bytes(32, "big") + bytes([55 - v])


class _RealSigDefender(Defender):
    """Defends from the signatures the aggregator kept (the real ones), not the listed twins."""

    real: dict = {}

    def move(self, truth, g):
        if g.kind == R.Game.LEAF:
            ev = truth.evidence(g.round)
            opening = list(update_opening(ev.updates, g.lo, ev.tree))
            opening[5] = self.real[(g.round, opening[1])]
            return g.arbiter.transact("defend_update", g.gid, ev.committed.data, tuple(opening),
                                      ([], []), [], [], [], sender=self.account)
        return super().move(truth, g)


class TwinLister(Aggregator):
    def collect(self, job_id, round_, spec):
        updates, rejected = super().collect(job_id, round_, spec)
        if not updates:
            return updates, rejected
        u = updates[0]
        _RealSigDefender.real[(round_, u.provider)] = bytes(u.signature)
        return [dataclasses.replace(u, signature=high_s_twin(bytes(u.signature))), *updates[1:]], rejected

    def defend(self, job_id):
        return _RealSigDefender(self.dep, self.account, self.store).respond(job_id)


def test_a_listed_signature_twin_opens_no_game(make):
    s = make(providers=3, rounds=2, aggregator_cls=TwinLister)
    s.run()
    assert s.dep.round_arbiter.events("GameOpened", job_id=s.job) == []
    assert s.state() == JobState.SETTLED and s.slashed() == {}
    assert s.delta()[s.c.watcher.address] == 0
