"""A reward root posted again after it was discarded (found by the rewards review).

A game is against one posting: its root and its poster. A stranger P (an absent aggregator's
accomplice) posted a wrong root R with its bond; the providers' processes each opened a game on it,
and so did an accomplice, whose game P lost by silence: R was discarded. P at once posted the very
same R again, under the content id of a document it never stored. The honest games were against
(R, P) again, live instead of moot; their challengers read the document by the newest posting's
content id only, could not move, and P took their bonds by timeout. A poster whose root was
discarded now posts no more, and a root posted again by anyone else is challenged from an earlier
posting's document of the same root."""

from __future__ import annotations

from sec_support import FUNDS, revert

from fedmarket.market import JobState
from fedmarket.protocol.encoding import canonical_json
from fedmarket.roles.games import job_games
from fedmarket.roles.settlement import statement_of


def _discarded_root(chain, make, tmp_path, member=False, **kw):
    """P's wrong root (provider 0's pay moved to provider 2), challenged by an accomplice and by the
    honest providers' processes, and discarded when P lets the accomplice's game lapse. P is a
    bonded stranger, or (`member`) provider 2 itself, posting with a bond above its stake."""
    from fedmarket.processes.provider import ProviderProcess

    s = make(providers=3, rounds=2, challenger=False, **kw)
    dep, ra, m = s.dep, s.dep.reward_arbiter, s.dep.market
    P, acc, other = (chain.chain.new_account(name, 0) for name in ("reviver", "accomplice", "second-poster"))
    if member:
        P = s.providers[2].account
    s.open()
    for a in (P, acc, other):  # (after the joins: a provider's permit resets its allowance)
        chain.mint(a, FUNDS)
        s.approve(a, ra.address)
        s.approve(a, m.address)
    s.rounds()
    s.past_round_deadline()
    m.transact("fail", s.job, sender=acc)  # the aggregator posted no root: slashed
    doc = s.honest_document()
    victim, sybil = s.providers[0].address, s.providers[2].address
    moved = next(int(leaf["amount"]) for leaf in doc["leaves"] if leaf["account"] == victim)
    for leaf in doc["leaves"]:
        leaf["amount"] = {victim: "0", sybil: str(int(leaf["amount"]) + moved)}.get(leaf["account"], leaf["amount"])
    root, total, value_total, gate_met = statement_of(doc)

    def post(cid, sender):
        return m.transact("post_rewards", s.job, root, total, value_total, doc["basis"], gate_met, cid,
                          m.call("slashes", s.job), sender=sender)

    post(s.store.put(canonical_json(doc)), P)
    lapsed = ra.transact("challenge_rewards", s.job, sender=acc).event("GameOpened")["game_id"]
    logs: list[str] = []
    procs = [ProviderProcess(dep, p.account, s.store, s.box, p.X, p.y, s.job, tmp_path / f"proc{i}", log=logs.append)
             for i, p in enumerate(s.providers[:2])]
    for proc in procs:
        proc.safe_step()
    honest_games = [g.gid for g in job_games(dep, s.job) if g.gid != lapsed]
    assert len(honest_games) == 2, "\n".join(logs)
    s.past(int(ra.call("games", lapsed)["deadline"]))
    ra.transact("timeout", lapsed, sender=acc)
    assert s.state() == JobState.TRAINING
    withheld = canonical_json({**doc, "note": "stored nowhere"})
    return s, P, other, post, procs, honest_games, withheld, logs


def test_a_poster_whose_root_was_discarded_cannot_post_it_again(chain, make, tmp_path):
    s, P, other, post, procs, honest_games, withheld, logs = _discarded_root(chain, make, tmp_path)
    from fedmarket.storage import cid_of

    revert(post, cid_of(withheld), P, match="market: poster was slashed")


def test_a_root_posted_again_by_another_is_challenged_from_its_first_document(chain, make, tmp_path):
    """Another bonded stranger posts the same wrong root under a document nobody can read: the old
    games are moot (their bonds refunded), and the providers' processes challenge the new posting
    from the first posting's document, and win."""
    s, P, other, post, procs, honest_games, withheld, logs = _discarded_root(chain, make, tmp_path)
    from fedmarket.storage import cid_of

    wrong = s.dep.market.events("RewardRootPosted", job_id=s.job)[0]["reward_root"]
    before = {p.address: s.dep.token.call("balanceOf", p.address) for p in s.providers[:2]}
    post(cid_of(withheld), other)
    ra = s.dep.reward_arbiter
    for _ in range(40):
        for proc in procs:
            proc.safe_step()
        live = job_games(s.dep, s.job)
        if s.state() != JobState.FINALIZING or not live:
            break
        s.past(min(g.deadline for g in live))
    resolved = {e["game_id"]: e for e in ra.events("GameResolved", job_id=s.job)}
    assert all(resolved[g]["moot"] for g in honest_games)
    won = [e for e in resolved.values() if e["challenger_won"] and not e["moot"]]
    assert won, "\n".join(logs[-10:])  # the second posting was proven wrong ...
    assert s.dep.market.call("progress", s.job)["reward_root"] != wrong  # ... and a provider posted the honest root
    assert all(s.dep.token.call("balanceOf", a) >= b for a, b in before.items())


def test_a_bonded_member_whose_root_was_discarded_keeps_its_stake_and_cannot_post_again(chain, make, tmp_path):
    """A provider whose stake is below the dispute bond posts with a bond; its root discarded, it
    loses the bond (not its stake, which no game judged) and posts no more (found by the review of
    the first fix, which marked it slashed: its stake read as a slash stage, locked for good)."""
    from sec_support import PROV_STAKE

    from fedmarket.market import Role
    from fedmarket.storage import cid_of

    s, P, other, post, procs, honest_games, withheld, logs = _discarded_root(chain, make, tmp_path, member=True,
                                                                             bond=2 * PROV_STAKE)
    assert tuple(s.dep.market.call("membership", s.job, P.address)) == (Role.PROVIDER, PROV_STAKE)
    revert(post, cid_of(withheld), P, match="market: poster was slashed")
