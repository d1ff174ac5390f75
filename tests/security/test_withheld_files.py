"""Attacks that delete, from the shared store, a file an honest staker must read again later: the
job's own spec (its requester's), or the rewards document an honest provider posted in the
aggregator's place. Each role process now keeps a copy of the job's files and of what it posted
in its state directory, reads through it, and puts a deleted file back (found by attacker
reviews of the requester against the stakers, and of the dispute game)."""

from __future__ import annotations

import pytest
from proc_support import Procs
from sec_support import FUNDS

from fedmarket.market import JobState
from fedmarket.protocol import rules as R
from fedmarket.roles.common import committed_rounds
from fedmarket.roles.games import job_games


def _spec_cid(P: Procs) -> str:
    return P.dep.market.events("JobPosted", job_id=P.job)[0]["spec_cid"]


def _delete_spec_after_round_0(P: Procs, restart_aggregator: bool = False) -> list[bool]:
    done: list[bool] = []

    def after(name):
        if name == "aggregator" and not done and committed_rounds(P.dep, P.job):
            (P.store.root / _spec_cid(P)).unlink()  # the requester withholds its spec from now on
            if restart_aggregator:
                P.procs["aggregator"] = P.new_aggregator()  # an ordinary restart, same state directory
            done.append(True)

    P.after_step = after
    return done


def test_a_requester_deleting_its_spec_cannot_get_the_validators_slashed(chain, tmp_path):
    """ATTACK: once everyone staked and round 0 committed, the requester deletes its own spec from
    the shared store. Every validator review loaded the spec from the store again, failed, and was
    retried without a vote, so at the round's deadline the requester failed the job on the absent
    validators: each slashed, half to the requester, its escrow back and round 0's model public.
    Validators (and providers) now keep the spec they checked before staking and read it through
    their copy, which puts it back: the job runs to the end and nobody is slashed."""
    P = Procs(chain, tmp_path, collect_timeout=60.0, providers=3, validators=3, rounds=2)
    done = _delete_spec_after_round_0(P)
    assert P.run(80), "\n".join(P.logs[-30:])
    assert done and P.state() == JobState.SETTLED
    assert not P.dep.market.events("StakeSlashed", job_id=P.job)
    assert [c.count for c in committed_rounds(P.dep, P.job)] == [3, 3]
    assert P.store.has(_spec_cid(P))  # put back for everyone else


def test_a_requester_deleting_its_spec_cannot_stop_a_restarted_aggregator(chain, tmp_path):
    """ATTACK: the same in a job without validators, with an ordinary restart of the aggregator's
    process after the deletion. The aggregator's role kept a copy of the spec, but its process read
    the spec from the shared store: after the restart it could commit no round (not even an empty
    one), and the requester failed the job on the missed deadline and took half its stake. The
    process reads through the role's copy now."""
    P = Procs(chain, tmp_path, collect_timeout=0.0, providers=3, validators=0, rounds=3)
    done = _delete_spec_after_round_0(P, restart_aggregator=True)
    assert P.run(80), "\n".join(P.logs[-30:])
    assert done and P.state() == JobState.SETTLED
    assert not P.dep.market.events("StakeSlashed", job_id=P.job)
    assert [c.count for c in committed_rounds(P.dep, P.job)] == [3, 3, 3]


def test_deleting_the_rewards_document_an_honest_provider_posted_cannot_get_it_slashed(chain, tmp_path):
    """ATTACK: the aggregator posts no reward root and is failed for it; an honest provider's
    process posts the root in its place, with its rewards document. Someone deletes that document
    from the shared store and challenges the root: the provider's defence read the document from
    the shared store, could not answer, and at the game's deadline its whole stake went, half to the
    challenger (a process that had read the document before a restart still held it in memory).
    The provider now keeps what it posts and defends from its copy (putting it back)."""
    P = Procs(chain, tmp_path, providers=3, validators=0, rounds=2)
    dep, ra = P.dep, P.dep.reward_arbiter
    attacker = chain.chain.new_account("document-deleter", 0)
    chain.mint(attacker, FUNDS)
    dep.token.transact("approve", ra.address, FUNDS, sender=attacker)
    providers = [n for n in P.procs if n.startswith("p")]
    for _ in range(40):  # the rounds; the aggregator then goes silent, before its reward root
        P.step()
        if len(committed_rounds(dep, P.job)) == 2:
            break
    assert len(committed_rounds(dep, P.job)) == 2, "\n".join(P.logs[-20:])
    chain.chain.advance_time(P.spec.deadlines.round_duration + 1)
    dep.market.transact("fail", P.job, sender=attacker)  # the aggregator is out (half its stake to the caller)
    P.step(providers)
    assert P.state() == JobState.FINALIZING, "\n".join(P.logs[-20:])
    posted = dep.market.events("RewardRootPosted", job_id=P.job)[-1]
    (P.store.root / posted["rewards_cid"]).unlink()
    # the providers' processes restart (a fresh process has read nothing yet)
    dep.memo.clear()
    for i, name in enumerate(providers):
        P.procs[name] = P.new_provider(i)
    ra.transact("challenge_rewards", P.job, sender=attacker)
    for _ in range(20):
        P.step(providers)
        games = job_games(dep, P.job)
        if not games:
            break
        chain.chain.advance_time(int(games[0].deadline) - chain.chain.timestamp() + 1)
        ra.transact("timeout", games[0].gid, sender=attacker)  # whoever is due to move and did not
    slashed = {ev["account"] for ev in dep.market.events("StakeSlashed", job_id=P.job)}
    assert slashed == {chain.aggregator.address}, (slashed, "\n".join(P.logs[-20:]))
    P.run(60, names=providers + ["requester"])
    assert P.state() == JobState.SETTLED
    # every provider claimed its leaf, whose proof is in the document (put back by its poster)
    assert {chain.providers[i].address for i in range(3)} <= set(P.paid()), "\n".join(P.logs[-20:])


@pytest.mark.parametrize("n_params, lying_terms", [(R.MAX_PARAMS, False), (10**6, True)])
def test_a_refused_torch_jobs_module_is_neither_downloaded_nor_kept(make, tmp_path, n_params, lying_terms):
    """ATTACK (found by a review of the fix above): a torch job whose spec states a parameter count
    no machine holds (or whose terms do not match its spec), naming a large junk "module". Keeping
    the job's files before the checks downloaded the module first: a buffer of the reader's limit
    (about 64 GiB at MAX_PARAMS) killed the process with MemoryError instead of a one-line refusal,
    and every role that looked at such a job kept its junk on disk. A role now keeps the spec before
    its checks and the module only once they pass; a directory store reads no more than a file
    holds."""
    import dataclasses
    import json
    import os

    from fedmarket.processes import ProviderProcess, ValidatorProcess
    from fedmarket.processes.base import Fatal
    from fedmarket.roles.common import terms_of
    from fedmarket.spec import JobSpec

    s = make(providers=3, validators=1)
    module_cid = s.store.put(os.urandom(32 * 2**20))
    doc = json.loads(s.spec.canonical())
    doc["model"] = {"kind": "torch", "module_cid": module_cid, "n_params": n_params}
    spec = JobSpec.parse(doc)
    terms = terms_of(spec, s.agg.address, s.chain.timestamp())
    if lying_terms:
        terms = dataclasses.replace(terms, rounds=terms.rounds + 1)
    s.approve(s.c.requester, s.dep.market.address)
    job = s.dep.market.transact("post_job", terms.abi(), s.store.put(spec.canonical()),
                                sender=s.c.requester).event("JobPosted")["job_id"]
    read: list[str] = []
    get_capped = type(s.store).get_capped

    def counting(store, cid, limit):
        read.append(cid)
        return get_capped(store, cid, limit)

    for name, cls, who in (("p", ProviderProcess, s.providers[0]), ("v", ValidatorProcess, s.validators[0])):
        proc = cls(s.dep, who.account, s.store, s.box, who.X, who.y, job, tmp_path / name, log=lambda m: None)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(type(s.store), "get_capped", counting)
            with pytest.raises(Fatal):  # the one-line refusal before staking
                proc.step()
        assert s.dep.market.call("membership", job, who.address) == (0, 0)
        assert module_cid not in read
        kept = sum(f.stat().st_size for f in (tmp_path / name / "blobs").rglob("*") if f.is_file())
        assert kept < 2**20
