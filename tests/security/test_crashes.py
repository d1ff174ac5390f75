"""A role process killed between two of its lines, or an attacker deleting what it posted, at the
worst moment (found by an attacker's review of crashes and restarts). A provider's process posts its
kept commitment again until the round is sealed, and its revealed receipt and blob again until the
round is committed; a validator keeps its reveal before it counts the round as revealed."""
from __future__ import annotations

import time

import pytest

from proc_support import Procs

from fedmarket.market import JobState
from fedmarket.roles.common import committed_rounds
from fedmarket.roles.sealed import commit_topic


class Killed(BaseException):
    """SIGKILL stand-in: nothing in the process catches it."""


def _run_with_kills(P, max_steps, restart):
    for _ in range(max_steps):
        try:
            P.step()
        except Killed as k:
            restart(k.args[0])
            continue
        if all(p.done for p in P.procs.values()):
            return True
        if P.state() == JobState.FINALIZING:
            P.c.chain.advance_time(P.spec.deadlines.challenge_period // 4 + 1)
        time.sleep(0.05)
    return False


def _kill_after(obj, attr: str, name: str, when) -> list:
    """Wrap ``obj.attr`` so that the first call for which ``when(result, *args)`` holds completes and
    then kills process ``name`` (raises `Killed`). Returns the list that records that call, as
    ``(args, result)``, once it happened."""
    orig, killed = getattr(obj, attr), []

    def wrapper(*args):
        result = orig(*args)
        if not killed and when(result, *args):
            killed.append((args, result))
            raise Killed(name)
        return result
    setattr(obj, attr, wrapper)
    return killed


def _deleted_once_yet_all_counted(P, victim: str, topic: str, after: str | None = None) -> None:
    """Delete the victim's message on `topic` once (after process `after`'s step, if given), run the
    job to its end, and check the round took all three providers and the victim was paid."""
    deleted = []

    def delete(name):
        if deleted or (after is not None and name != after):
            return
        d = P.box.root / topic
        for f in (d.iterdir() if d.is_dir() else ()):
            if not f.name.startswith(".") and victim in f.read_text():
                f.unlink()
                deleted.append(f.name)

    P.after_step = delete
    assert _run_with_kills(P, 200, lambda n: None), "\n".join(P.logs[-30:])
    assert deleted
    assert committed_rounds(P.dep, P.job)[0].count == 3, "the deleted message was never posted again"
    assert P.paid().get(victim, 0) > 0


def test_provider_killed_after_keeping_its_commitment_before_posting_it_still_takes_part(chain, tmp_path):
    """CRASH: p0's process is killed after `Pending.keep` wrote its committed update to its state dir and
    before the commitment went on the mailbox. Restarted, it loads the kept update and waits for a
    seal, but never posts the kept commitment message: the aggregator seals without it, the round
    goes on without p0 after the others waited out the collect timeout, and p0 is unpaid. It now
    posts the kept commitment again while the round is unsealed."""
    P = Procs(chain, tmp_path, collect_timeout=4.0, providers=3, rounds=1)
    victim = chain.providers[0].address
    killed = _kill_after(P.procs["p0"].provider, "keep_sealed", "p0", lambda *_: True)

    def restart(name):
        P.procs[name] = P.new_provider(0)

    assert _run_with_kills(P, 200, restart), "\n".join(P.logs[-30:])
    assert killed
    assert committed_rounds(P.dep, P.job)[0].count == 3, "the restarted provider's kept commitment never reached the mailbox"
    assert P.paid().get(victim, 0) > 0


def test_a_deleted_commitment_is_posted_again_by_its_provider(chain, tmp_path):
    """ATTACK: a competing provider (anyone on the shared mailbox) deletes p0's signed commitment once, right
    after p0 posted it, before the seal. p0 keeps the commitment message in its state directory
    (`Pending`) but never posts it again: the seal leaves it out and its share of the round goes to
    the others. It is posted again now."""
    P = Procs(chain, tmp_path, collect_timeout=4.0, providers=3, rounds=1)
    _deleted_once_yet_all_counted(P, chain.providers[0].address, commit_topic(P.job, 0))


def test_a_validator_killed_between_recording_its_reveal_and_keeping_it_keeps_its_reveal(chain, tmp_path):
    """CRASH and ATTACK: v0's process is killed in `_review_and_reveal` after `revealed` was saved and before `reveals`
    (the list `_keep_reveals` posts again) was. Anyone on the mailbox then deletes v0's reveal
    message. The restarted v0 thinks the round revealed but has no record to post again: its scores
    count as never revealed (reputation -1 instead of +1, its scores out of the basis). The reveal is
    kept before the round counts as revealed now."""
    from fedmarket.roles.common import reward_leaf, round_topic

    P = Procs(chain, tmp_path, collect_timeout=2.0, reveal_timeout=3.0, providers=3, validators=3, rounds=1)
    victim = chain.validators[0].address
    killed = _kill_after(P.procs["v0"].state, "save", "v0", lambda _, name, value: name == "revealed" and bool(value))

    def restart(name):
        d = P.box.root / (round_topic(P.job, 0) + "-reveals")
        for f in d.iterdir():  # the attacker, on the shared mailbox
            if not f.name.startswith(".") and victim in f.read_text():
                f.unlink()
        P.procs[name] = P.new_validator(0)

    assert _run_with_kills(P, 300, restart), "\n".join(P.logs[-30:])
    assert killed
    leaf, _ = reward_leaf(P.dep, P.store, victim, P.job)
    others = [reward_leaf(P.dep, P.store, v.address, P.job)[0]["reputation_delta"] for v in chain.validators[1:3]]
    assert any(victim in m.decode() for m in P.box.read(round_topic(P.job, 0) + "-reveals")), "v0's reveal is gone for good"
    assert int(leaf["reputation_delta"]) == int(others[0])


def test_a_deleted_reveal_is_posted_again_by_its_provider(chain, tmp_path):
    """ATTACK: anyone on the shared mailbox deletes p0's revealed receipt (its round-topic message) right
    after p0 posted it, before the aggregator collected. p0 (its process marked the round done)
    never posts it again although the receipt is still in its state directory: the round commits
    without it after the collect timeout and its pay goes to the others. It is posted again now."""
    from fedmarket.roles.common import round_topic

    P = Procs(chain, tmp_path, collect_timeout=4.0, providers=3, rounds=1)
    _deleted_once_yet_all_counted(P, chain.providers[0].address, round_topic(P.job, 0), after="p0")


def test_a_provider_restarted_after_its_reveal_still_puts_its_deleted_blob_back(chain, tmp_path):
    """CRASH and ATTACK: p0's process is killed right after it revealed its sealed update (receipt
    posted), and restarted; then a competitor on the shared store deletes p0's update blob before the
    aggregator collected. The restarted process had only an in-memory record of having revealed, so
    it never put the blob back: the aggregator refused p0's update, and the round went on without it
    after the collect timeout. What the provider posted in the round is kept on disk now
    (`KeptMailbox`), and its revealed receipt names the blob it puts back."""
    P = Procs(chain, tmp_path, collect_timeout=6.0, providers=3, rounds=1)
    victim = chain.providers[0].address
    revealed = _kill_after(P.procs["p0"].provider, "reveal", "p0", lambda msg, *_: msg is not None)

    def restart(name):
        P.procs[name] = P.new_provider(0)
        (P.workdir / "blobs" / revealed[0][1]["update_cid"]).unlink()  # the competitor, on the shared store

    assert _run_with_kills(P, 300, restart), "\n".join(P.logs[-30:])
    assert revealed
    assert committed_rounds(P.dep, P.job)[0].count == 3, "the restarted provider never put its deleted blob back"
    assert P.paid().get(victim, 0) > 0


@pytest.mark.parametrize("nth", [1, 2, 3])
def test_a_validator_killed_after_any_save_of_its_review_counts_each_round_once(chain, tmp_path, nth):
    """CRASH: v0's process is killed right after the `nth` state file it saves once it reviewed round
    0. It kept what it saw of each provider (rounds seen, rounds flagged: the basis of its
    misbehaviour reports, where a majority of flagged rounds gets a provider reported) apart from its
    reviews: killed between the two saves, the restarted process reviewed round 0 again and counted
    it twice. Both are one document now."""
    P = Procs(chain, tmp_path, collect_timeout=2.0, reveal_timeout=3.0, providers=3, validators=1, rounds=1)
    proc, saves = P.procs["v0"], []

    def nth_save_after_review(_, name, value):
        if proc.validator.sealed(P.job)[0]:  # round 0 reviewed
            saves.append(name)
        return len(saves) == nth
    killed = _kill_after(proc.state, "save", "v0", nth_save_after_review)

    def restart(name):
        P.procs[name] = P.new_validator(0)

    assert _run_with_kills(P, 300, restart), "\n".join(P.logs[-30:])
    assert killed
    _, seen = P.procs["v0"].validator.sealed(P.job)
    took_part = committed_rounds(P.dep, P.job)[0].count
    assert took_part == 3 and seen and all(v == [1, 0] for v in seen.values()), (killed, seen)
