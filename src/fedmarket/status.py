"""Where a job stands: its phase, round and deadlines, who is late, what each role does next,
and whether it is stuck (a deadline passed and the job waits on an action nobody took).

`read_facts` reads everything from the chain (calls and events, nothing else); `assess` is a
pure function of those facts and the time, so the rules of what is due can be tested on any
facts, and `fedmarket status` and the dashboard say the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .market import Deployment, JobState
from .protocol import rules as R


@dataclass
class JobFacts:
    """What the chain says about one job, read once."""

    job_id: int
    job: dict  # Deployment.job(): terms + progress + live status
    providers: dict[str, int]  # joined provider -> stake locked at joining
    validators: dict[str, int]  # joined validator -> stake
    slashed: set[str] = field(default_factory=set)
    claimed: set[str] = field(default_factory=set)
    released: set[str] = field(default_factory=set)
    voted: set[str] = field(default_factory=set)  # validators who attested or rejected the last committed round
    open_games: int = 0
    minted: bool = False
    swept: bool = False

    @property
    def state(self) -> JobState:
        return self.job["state"]


@dataclass
class Assessment:
    """The reading of a job at one moment (`now`, Unix seconds)."""

    job_id: int
    state: JobState
    now: int
    round: int
    rounds: int
    deadlines: dict[str, int]  # name -> Unix seconds (0: not set yet)
    late: list[tuple[str, str]]  # (who, what they missed)
    next: dict[str, str]  # role -> its next action
    stuck: str | None  # why the job is stuck, None when it is not
    stakes: dict[str, int]  # what is locked, per role, in base units
    members: dict[str, str] = field(default_factory=dict)  # account -> "provider"/"validator"/"aggregator"

    def to_json(self) -> dict:
        return {
            "job_id": self.job_id, "state": self.state.name, "state_id": int(self.state), "now": self.now,
            "round": self.round, "rounds": self.rounds, "deadlines": self.deadlines,
            "late": [{"who": w, "what": m} for w, m in self.late], "next": self.next,
            "stuck": self.stuck is not None, "stuck_reason": self.stuck, "stakes": self.stakes,
        }


def read_facts(dep: Deployment, job_id: int) -> JobFacts:
    """Every fact `assess` needs, from calls and events of the job's deployment. The events are read
    before the job's storage, so a job that moves meanwhile is never behind its events (its totals
    then count every claim the events show)."""
    m = dep.market
    providers = {e["provider"]: int(e["stake"]) for e in m.events("ProviderJoined", job_id=job_id)}
    validators = {e["validator"]: int(e["stake"]) for e in m.events("ValidatorJoined", job_id=job_id)}
    slashed = {e["account"] for e in m.events("StakeSlashed", job_id=job_id)}
    claimed = {e["account"] for e in m.events("RewardClaimed", job_id=job_id)}
    released = {e["account"] for e in m.events("StakeReleased", job_id=job_id)}
    job = dep.job(job_id)
    facts = JobFacts(job_id, job, providers, validators, slashed, claimed, released)
    if job["state"] == JobState.NONE:
        return facts
    r = int(job["current_round"])
    if validators and r > 0:
        d = dep.disputes
        facts.voted = {e["validator"] for e in d.events("RoundAttested", job_id=job_id, round=r - 1)}
        facts.voted |= {e["validator"] for e in d.events("RoundRejected", job_id=job_id, round=r - 1)}
    if job["state"] in (JobState.TRAINING, JobState.FINALIZING):
        facts.open_games = int(dep.round_arbiter.call("open_games", job_id)) + int(dep.reward_arbiter.call("open_games", job_id))
    if job["state"] == JobState.SETTLED:
        facts.minted = bool(dep.licence.events("ModelMinted", job_id=job_id))
        facts.swept = bool(m.events("UnclaimedSwept", job_id=job_id))
    return facts


def _stakes(f: JobFacts) -> dict[str, int]:
    """Stake still locked in the job, per role (slashed, claimed and released stakes are gone)."""
    gone = f.slashed | f.claimed | f.released
    j = f.job
    aggregator_locked = int(j["aggregator_stake"]) if j["accepted"] and j["aggregator"] not in gone else 0
    return {
        "aggregator": aggregator_locked,
        "providers": sum(s for a, s in f.providers.items() if a not in gone),
        "validators": sum(s for a, s in f.validators.items() if a not in gone),
        "slashed_accounts": len(f.slashed),
    }


#: seconds past a deadline before a job counts as stuck: the parties poll, the action may be a block away
STUCK_GRACE = 30


def assess(f: JobFacts, now: int, grace: int = STUCK_GRACE) -> Assessment:
    """What is due in job `f` at time `now`: deadlines, late parties, next actions, and whether it is
    stuck (a deadline passed more than `grace` seconds ago and the action it calls for is not taken)."""
    j, state = f.job, f.state
    deadlines = {  # the ones that still matter in this state (0: not set or past its use)
        "join": int(j["join_deadline"]) if state == JobState.OPEN else 0,
        "round": int(j["round_deadline"]) if state == JobState.TRAINING else 0,
        "challenge": int(j["challenge_deadline"]) if state == JobState.FINALIZING else 0,
        "claim": int(j["claim_deadline"]) if state == JobState.SETTLED else 0,
    }
    a = Assessment(f.job_id, state, now, int(j["current_round"]), int(j["rounds"]), deadlines, [], {}, None,
                   _stakes(f))
    a.members = {**{p: "provider" for p in f.providers}, **{v: "validator" for v in f.validators}}
    if j["accepted"]:
        a.members[j["aggregator"]] = "aggregator"
    rule = {JobState.OPEN: _open, JobState.TRAINING: _training, JobState.FINALIZING: _finalizing,
            JobState.SETTLED: _settled, JobState.CANCELLED: _over, JobState.FAILED: _over}.get(state)
    if rule is None:
        a.stuck = f"job {f.job_id} does not exist"
        return a
    rule(f, a, now)
    due = {JobState.OPEN: a.deadlines["join"], JobState.TRAINING: a.deadlines["round"],
           JobState.FINALIZING: a.deadlines["challenge"]}.get(state, 0)
    if a.stuck and now <= due + grace:
        a.stuck = None  # just past the deadline: give whoever acts next a moment
    return a


def _open(f: JobFacts, a: Assessment, now: int) -> None:
    j = f.job
    passed = now >= int(j["join_deadline"])
    need = f"{j['n_providers']}/{j['min_providers']} providers, {j['n_validators']}/{j['min_validators']} validators"
    a.next["aggregator"] = ("accept the job (locks its stake)" if not j["accepted"]
                            else "start the job" if R.startable(j) else f"wait for joiners ({need})")
    a.next["providers"] = ("join before the join deadline" if not passed and j["n_providers"] < j["max_providers"]
                           else "wait for the start")
    if j["max_validators"]:
        a.next["validators"] = ("join before the join deadline" if not passed and j["n_validators"] < j["max_validators"]
                                else "wait for the start")
    alone = j["n_providers"] == 0 and j["n_validators"] == 0
    if passed:
        if not j["accepted"]:
            a.late.append((j["aggregator"], "did not accept the job by the join deadline"))
        if R.startable(j):
            a.next["anyone"] = "start the job (the join window is over: `fedmarket start`)"
            a.stuck = "the join window is over and nobody started the job"
        else:
            a.next["requester"] = a.next["anyone"] = f"cancel the job for a full refund ({need})"
            a.stuck = f"the join window closed without what the job needs ({need})"
    else:
        a.next["requester"] = "may cancel now (nobody joined yet)" if alone else "wait for the start"


def _training(f: JobFacts, a: Assessment, now: int) -> None:
    j = f.job
    r, rounds, deadline = a.round, a.rounds, int(j["round_deadline"])
    passed = now > deadline
    validated = bool(f.validators)
    a.next["requester"] = "wait (test each committed model)"
    if validated and r > 0 and not j["quorum"]:
        missing = [v for v in f.validators if v not in f.voted and v not in f.slashed]
        a.next["validators"] = f"attest or reject round {r - 1} ({len(missing)} of {len(f.validators)} have not voted)"
        a.next["aggregator"] = f"put the validators' attestations of round {r - 1} on chain"
        a.next["providers"] = "wait for quorum"
        if passed:
            a.late += [(v, f"did not vote on round {r - 1}") for v in missing]
            a.next["anyone"] = "fail the job: the round lacks quorum past its deadline (`fedmarket requester withdraw`)"
            a.stuck = f"round {r - 1} lacks quorum and its deadline passed"
        return
    if r < rounds:
        a.next["aggregator"] = f"commit round {r} by the round deadline"
        a.next["providers"] = f"train round {r} and send the update"
        what = f"did not commit round {r} by its deadline"
    else:
        a.next["aggregator"] = "post the reward root by the round deadline"
        a.next["providers"] = "wait for the reward root"
        what = "did not post the reward root by its deadline"
    if validated:
        a.next["validators"] = (f"review round {r - 1}" if 0 < r < rounds else
                                "reveal scores and approve the reward root" if r else "wait for round 0")
    if passed:
        a.late.append((j["aggregator"], what))
        a.next["anyone"] = "fail the job: escrow refunded, aggregator slashed (`fedmarket requester withdraw`)"
        a.stuck = f"the aggregator {what}"


def _finalizing(f: JobFacts, a: Assessment, now: int) -> None:
    deadline = int(f.job["challenge_deadline"])
    a.next["providers"] = a.next["aggregator"] = "wait for settlement"
    if f.validators:
        a.next["validators"] = "wait for settlement"
    if f.open_games:
        a.next["anyone"] = f"play the {f.open_games} open dispute game(s) to their end"
        a.next["requester"] = "wait for the disputes to close, then settle"
    elif now < deadline:
        a.next["anyone"] = "check the reward root; challenge it before the challenge deadline if wrong"
        a.next["requester"] = "settle after the challenge deadline"
    else:
        a.next["requester"] = a.next["anyone"] = "settle the job (`fedmarket requester withdraw`)"
        a.stuck = "the challenge window is over and nobody settled the job"


def _settled(f: JobFacts, a: Assessment, now: int) -> None:
    j = f.job
    deadline = int(j["claim_deadline"])
    unclaimed = [m for m in a.members if m not in f.claimed and m not in f.slashed]
    open_claims = now < deadline
    for role in ("providers", "validators", "aggregator"):
        mine = [m for m in unclaimed if a.members[m] == role.rstrip("s")]
        if mine:
            a.next[role] = (f"claim reward and stake ({len(mine)} not claimed yet)" if open_claims
                            else f"claim period over ({len(mine)} never claimed)")
        elif role != "validators" or f.validators:
            a.next[role] = "done"
    todo = []
    if not f.minted:
        todo.append("mint the model token")
    left = int(j["reward_total"]) - int(j["claimed_total"])
    if not open_claims and left > 0 and not f.swept:
        todo.append("sweep unclaimed rewards (`fedmarket requester withdraw`)")
    a.next["requester"] = "; ".join(todo) or "done"


def _over(f: JobFacts, a: Assessment, now: int) -> None:
    gone = f.slashed | f.released | f.claimed
    locked = [m for m in a.members if m not in gone]
    a.next["requester"] = "done: the escrow was refunded"
    a.next["anyone"] = (f"release the {len(locked)} stake(s) still locked (`fedmarket stake release`)" if locked
                        else "nothing left to do")

