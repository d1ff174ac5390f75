"""What the dashboard's pages show, read from the index (SQLite) and, for documents, the blob
store: the jobs, a job's rounds, members, disputes and licence sales, a provider across jobs.

Every figure carries where it comes from: the transaction that emitted it (`tx`) or the blob
(`cid`) it was read from, so the page can link it.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from functools import lru_cache

from eth_utils import is_address, to_checksum_address

from ..protocol.encoding import BAD_INPUT
from ..protocol.rules import JobState
from ..roles.common import metrics_cid
from ..storage.cid import sha256_of_cid

#: a round's metrics CID from its hash (multiformats validates types on every call: slow, and never changes)
_metrics_cid = lru_cache(maxsize=16_384)(metrics_cid)

#: the event that moves a job into each state
STATE_EVENTS = {"JobPosted": JobState.OPEN, "TrainingStarted": JobState.TRAINING, "RewardRootPosted": JobState.FINALIZING,
                "RewardRootRejected": JobState.TRAINING, "JobSettled": JobState.SETTLED,
                "JobCancelled": JobState.CANCELLED, "JobFailed": JobState.FAILED}
DISPUTE_EVENTS = ("GameOpened", "GameResolved", "EquivocationProven", "RoundRejected", "ProviderSlashed",
                  "RewardRootRejected", "StakeSlashed", "JobFailed")
LICENCE_EVENTS = ("ModelMinted", "LicencePurchased", "RevenueClaimed")


@dataclass
class Ev:
    """One indexed event."""

    block: int
    log_index: int
    time: int
    tx: str
    contract: str
    name: str
    job_id: int | None
    account: str | None
    round: int | None
    args: dict


def _events(db: sqlite3.Connection, where: str, params: tuple) -> list[Ev]:
    rows = db.execute(f"SELECT block, log_index, time, tx, contract, name, job_id, account, round, args FROM events "
                      f"WHERE {where} ORDER BY block, log_index", params).fetchall()
    return [Ev(*r[:9], json.loads(r[9])) for r in rows]


def head(db: sqlite3.Connection) -> dict:
    """Where the index stands: the next block it will read and how many events it holds."""
    meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    count = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    return {"next_block": int(meta.get("next_block", 0)), "start_block": int(meta.get("start_block", 0)),
            "chain_id": meta.get("chain_id"), "market": meta.get("market"), "events": count}


def jobs(db: sqlite3.Connection) -> list[dict]:
    """Every job: id, state, requester, aggregator, escrow, members, rounds committed, last activity."""
    names = ("JobPosted", *STATE_EVENTS, "ProviderJoined", "ValidatorJoined", "RoundCommitted")
    marks = ",".join("?" * len(set(names)))
    out: dict[int, dict] = {}
    for e in _events(db, f"name IN ({marks}) AND job_id IS NOT NULL", tuple(set(names))):
        if e.name == "JobPosted":
            out[e.job_id] = {"job_id": e.job_id, "requester": e.args["requester"], "aggregator": e.args["aggregator"],
                             "escrow": int(e.args["escrow"]), "tx": e.tx, "time": e.time, "state": JobState.OPEN,
                             "providers": 0, "validators": 0, "rounds": 0, "last": e.time}
        job = out.get(e.job_id)
        if job is None:
            continue
        job["last"] = e.time
        if e.name in STATE_EVENTS:
            job["state"] = STATE_EVENTS[e.name]
        job["providers"] += e.name == "ProviderJoined"
        job["validators"] += e.name == "ValidatorJoined"
        job["rounds"] += e.name == "RoundCommitted"
    for job_id, doc in db.execute("SELECT job_id, doc FROM terms").fetchall():
        if job_id in out:
            out[job_id]["total_rounds"] = json.loads(doc)["rounds"]
    return sorted(out.values(), key=lambda j: -j["job_id"])


@dataclass
class Member:
    """A job's member as its events tell: joined, claimed, slashed, reputation."""

    account: str
    role: str
    stake: int = 0
    joined_tx: str = ""
    reward: int | None = None  # claimed reward (base units)
    stake_back: int | None = None
    claim_tx: str = ""
    reputation: int | None = None
    reputation_delta: int | None = None
    slashed: int | None = None
    slash_tx: str = ""
    score: int | None = None  # the value its reward leaf carries (weight or validator score)
    rounds: int = 0  # rounds whose aggregate included its update (from the metrics documents)


@dataclass
class JobView:
    """Everything the job page shows."""

    job_id: int
    summary: dict
    terms: dict
    rounds: list[dict]
    members: list[Member]
    disputes: list[Ev]
    licence: list[Ev]
    states: list[Ev]
    rewards: dict | None = None  # the latest RewardRootPosted's fields (+ rewards_cid)
    totals: dict = field(default_factory=dict)


def job_view(db: sqlite3.Connection, job_id: int, documents=None) -> JobView | None:
    """The job page's data; `documents(cid)` returns a parsed JSON blob or None (no store)."""
    evs = _events(db, "job_id = ?", (job_id,))
    posted = next((e for e in evs if e.name == "JobPosted"), None)
    if posted is None:
        return None
    row = db.execute("SELECT doc FROM terms WHERE job_id = ?", (job_id,)).fetchone()
    terms = json.loads(row[0]) if row else {}
    states = [e for e in evs if e.name in STATE_EVENTS]
    started = next((e for e in evs if e.name == "TrainingStarted"), None)
    summary = {"state": STATE_EVENTS[states[-1].name], "requester": posted.args["requester"],
               "aggregator": posted.args["aggregator"], "escrow": int(posted.args["escrow"]), "tx": posted.tx,
               "time": posted.time, "spec_cid": posted.args["spec_cid"],
               "n_providers": started.args["n_providers"] if started else None}
    rewards = next((dict(e.args, tx=e.tx) for e in reversed(evs) if e.name == "RewardRootPosted"), None)
    view = JobView(job_id, summary, terms, _rounds(db, evs, terms, documents), _members(db, evs, rewards, documents),
                   [e for e in evs if e.name in DISPUTE_EVENTS], [e for e in evs if e.name in LICENCE_EVENTS], states,
                   rewards)
    providers = [m for m in view.members if m.role == "provider"]
    view.totals = {
        "paid": sum(m.reward or 0 for m in providers),
        "claimed": sum(1 for m in view.members if m.claim_tx),
        "slashed": sum(m.slashed or 0 for m in view.members),
        "revenue": sum(int(e.args.get("price", 0)) for e in view.licence if e.name == "LicencePurchased"),
        "gas": sum(r["gas"] or 0 for r in view.rounds),
    }
    return view


def _cid_or_none(value) -> str | None:
    """`value` if it is a well-formed content id (what a document may link to), else None."""
    if not isinstance(value, str) or len(value) > 128:
        return None
    try:
        sha256_of_cid(value)
    except Exception:  # noqa: BLE001  anything a malformed id raises: not a link
        return None
    return value


def _included(doc) -> list[str] | None:
    """The providers a metrics document says the round aggregated, or None when the document is
    missing or not of that shape (it is the aggregator's, checked on chain only by its hash)."""
    updates = doc.get("updates") if isinstance(doc, dict) else None
    if not isinstance(updates, list):
        return None
    out = [u.get("provider") for u in updates if isinstance(u, dict)]
    if len(out) != len(updates) or not all(isinstance(p, str) for p in out):
        return None
    return out


def _score(value) -> int | None:
    """A reward leaf's value as an integer, or None if the document holds something else there."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return None
    try:
        return int(value)
    except BAD_INPUT:
        return None


def _rounds(db: sqlite3.Connection, evs: list[Ev], terms: dict, documents) -> list[dict]:
    job_id = evs[0].job_id
    gas = dict(db.execute("SELECT e.tx, g.gas FROM events e JOIN gas g ON g.tx = e.tx WHERE e.job_id = ? AND "
                          "e.name = 'RoundCommitted'", (job_id,)).fetchall())
    acc = dict(db.execute("SELECT round, accuracy FROM accuracy WHERE job_id = ?", (job_id,)).fetchall())
    quorum = {e.round: e for e in evs if e.name == "QuorumReached"}
    votes: dict[int, list[int]] = {}
    for e in evs:
        if e.name in ("RoundAttested", "RoundRejected"):
            votes.setdefault(e.round, [0, 0])[e.name == "RoundRejected"] += 1
    started = next((e for e in evs if e.name == "TrainingStarted"), None)
    n = int(started.args["n_providers"]) if started else 0
    per_round = int(terms.get("per_round", 0)) or n
    out = []
    for e in (e for e in evs if e.name == "RoundCommitted"):
        q = quorum.get(e.round)
        cid = _metrics_cid(bytes.fromhex(e.args["metrics_hash"][2:]))
        doc = documents(cid) if documents else None
        out.append({
            "round": e.round, "block": e.block, "time": e.time, "tx": e.tx, "gas": gas.get(e.tx),
            "count": int(e.args["count"]), "selected": min(per_round, n) if n else None, "providers": n,
            "epsilon": int(e.args["epsilon_spent"]) / 1_000_000, "model_root": e.args["model_root"],
            "metrics_cid": cid, "model_cid": _cid_or_none(doc.get("model_cid")) if isinstance(doc, dict) else None,
            "seed": e.args["next_seed"], "accuracy": acc.get(e.round),
            "quorum": None if q is None else {"attested": int(q.args["attested_stake"]), "total": int(q.args["total_stake"]),
                                              "tx": q.tx},
            "votes": votes.get(e.round, [0, 0]),
            "included": _included(doc),
        })
    return out


def _members(db: sqlite3.Connection, evs: list[Ev], rewards: dict | None, documents) -> list[Member]:
    members: dict[str, Member] = {}
    for e in evs:
        if e.name in ("ProviderJoined", "ValidatorJoined", "JobAccepted"):
            role = {"ProviderJoined": "provider", "ValidatorJoined": "validator", "JobAccepted": "aggregator"}[e.name]
            members[e.account] = Member(e.account, role, int(e.args["stake"]), e.tx)
    claims = {}
    for e in evs:
        m = members.get(e.account)
        if m is None:
            continue
        if e.name == "RewardClaimed":
            m.reward, m.stake_back, m.claim_tx = int(e.args["amount"]), int(e.args["stake_released"]), e.tx
            claims[e.tx] = m
        elif e.name == "StakeSlashed":
            m.slashed, m.slash_tx = int(e.args["amount"]), e.tx
    if claims:  # reputation moves in the claim transaction (its event names no job)
        marks = ",".join("?" * len(claims))
        for e in _events(db, f"name = 'ReputationChanged' AND tx IN ({marks})", tuple(claims)):
            if e.account in members:
                members[e.account].reputation = int(e.args["reputation"])
                members[e.account].reputation_delta = int(e.args["delta"])
    doc = documents(rewards["rewards_cid"]) if rewards and documents else None
    leaves = doc.get("leaves") if isinstance(doc, dict) else None
    for leaf in leaves if isinstance(leaves, list) else []:
        account = leaf.get("account") if isinstance(leaf, dict) else None
        if is_address(account) and to_checksum_address(account) in members:  # the chain reads any case
            members[to_checksum_address(account)].score = _score(leaf.get("value", 0))
    order = {"aggregator": 0, "validator": 1, "provider": 2}
    return sorted(members.values(), key=lambda m: (order[m.role], m.account.lower()))


def provider_view(db: sqlite3.Connection, address: str, documents=None) -> dict | None:
    """A provider (or any member) across jobs: jobs joined, payouts, licence revenue, slashes, reputation."""
    if not is_address(address):
        return None
    evs = _events(db, "account = ?", (to_checksum_address(address),))
    if not evs:
        return None
    jobs_of = sorted({e.job_id for e in evs if e.job_id is not None})
    per_job = []
    for job in jobs_of:
        # one job's documents are its aggregator's: whatever they hold, they cost that job's row its
        # document figures (scores, rounds included), never the page of everyone who joined it
        row, view = None, None
        for docs in (documents, None) if documents is not None else (None,):
            try:
                view = job_view(db, job, docs)
                me = next((m for m in view.members if m.account.lower() == address.lower()), None) if view else None
                row = None if me is None else {
                    "job_id": job, "state": view.summary["state"], "member": me,
                    "rounds": sum(1 for r in view.rounds if r["included"] and me.account in r["included"]),
                    "committed": len(view.rounds), "documents": docs is not None or documents is None}
                break
            except Exception:  # noqa: BLE001  shown as unavailable below, not a 500
                view = row = None
        if row is not None:
            per_job.append(row)
        elif view is None:
            per_job.append({"job_id": job, "unavailable": True})
    rep = [e for e in evs if e.name == "ReputationChanged"]
    revenue = [e for e in evs if e.name == "RevenueClaimed"]
    return {
        "address": evs[0].account, "jobs": per_job,
        "reputation": int(rep[-1].args["reputation"]) if rep else 0, "reputation_tx": rep[-1].tx if rep else None,
        "paid": sum(j["member"].reward or 0 for j in per_job if "member" in j), "revenue": sum(int(e.args["amount"]) for e in revenue),
        "revenue_events": revenue, "slashes": [e for e in evs if e.name == "StakeSlashed"],
    }


def tx_events(db: sqlite3.Connection, tx: str) -> list[Ev]:
    return _events(db, "tx = ?", (tx.lower(),))
