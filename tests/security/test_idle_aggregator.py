"""An aggregator that accepts a job and then never starts it (found while sizing round 0's seed
grinding): before the join deadline only it or the requester may start the job, after it anyone
may, but no role's process did, and no command did either. Every member's stake and the escrow
stayed locked in the open job for as long as the aggregator liked, and it could time round 0's seed
(the block hash at the start) at will. Members' and the requester's processes now close the join
window once it is `LATE_START_GRACE` seconds over: they start a job that can start (the aggregator
then misses round 0, and the job fails with a full refund) and cancel one that cannot."""

from __future__ import annotations

from proc_support import Procs
from sec_support import AGG_STAKE, ESCROW

from fedmarket.market import JobState
from fedmarket.roles.common import LATE_START_GRACE


def _past_join_window(P) -> None:
    job = P.dep.job(P.job)
    P.c.chain.advance_time(int(job["join_deadline"]) - P.c.chain.timestamp() + 3 * LATE_START_GRACE)


def _run_members(P, names, max_steps=80) -> bool:
    def on_step(_):  # the chain's clock past whichever deadline is running, as the wall clock would be
        job = P.dep.job(P.job)
        if job["state"] == JobState.TRAINING and P.c.chain.timestamp() <= int(job["round_deadline"]) + 1:
            P.c.chain.advance_time(int(job["round_deadline"]) - P.c.chain.timestamp() + 2)
    return P.run(max_steps=max_steps, names=names, on_step=on_step)


def test_an_aggregator_that_never_starts_cannot_keep_the_stakes_locked(chain, tmp_path):
    P = Procs(chain, tmp_path, providers=3, validators=1, rounds=1)
    members = [n for n in P.procs if n != "aggregator"]
    wallets = {a.address: P.dep.balance(a.address) for a in (*chain.providers[:3], chain.requester)}
    P.step(["aggregator"])  # it accepts, its stake locked, and never steps again
    for _ in range(3):
        P.step(members)
    job = P.dep.job(P.job)
    assert job["state"] == JobState.OPEN and job["n_providers"] == 3 and job["n_validators"] == 1
    _past_join_window(P)
    assert _run_members(P, members), "\n".join(P.logs[-20:])
    assert P.state() == JobState.FAILED  # started by a member; the aggregator missed round 0
    assert P.dep.market.events("TrainingStarted", job_id=P.job)
    # every provider's stake back; the escrow back to the requester, with half the aggregator's
    # stake for failing the job (the wallets were read after the escrow went in)
    assert [P.dep.balance(p.address) - wallets[p.address] for p in chain.providers[:3]] == [0, 0, 0]
    assert P.dep.balance(chain.requester.address) - wallets[chain.requester.address] == ESCROW + AGG_STAKE // 2


def test_a_job_that_cannot_start_is_cancelled_by_its_members(chain, tmp_path):
    P = Procs(chain, tmp_path, providers=3, validators=1, rounds=1)
    members = ["p0", "p1", "v0"]  # p2 never joins: the job cannot start; the requester is away
    wallets = {a.address: P.dep.balance(a.address) for a in (*chain.providers[:2], chain.requester)}
    P.step(["aggregator"])
    for _ in range(3):
        P.step(members)
    assert P.dep.job(P.job)["n_providers"] == 2
    _past_join_window(P)
    assert _run_members(P, members), "\n".join(P.logs[-20:])
    assert P.state() == JobState.CANCELLED
    assert [P.dep.balance(p.address) - wallets[p.address] for p in chain.providers[:2]] == [0, 0]
    assert any("cancelled it" in line for line in P.logs if "[requester" not in line)
    assert P.dep.balance(chain.requester.address) - wallets[chain.requester.address] == ESCROW
