"""JobMarket, Disputes and both arbiters driven together at random, against a ghost ledger.

Several jobs live at once on one embedded chain (each hypothesis example in its own snapshot):
plain jobs and jobs with validators, each with its own aggregator. Providers, validators and
aggregators join and stake, from their wallets or from free stake they deposit, unbond and
withdraw. Rounds are committed right or wrong (a value three steps off) on small synthetic
updates signed by their providers; validators attest, reject, equivocate (and are slashed
mid-job), stay away (and are slashed when the round fails), approve reward statements;
providers are slashed by a validator judgement; dispute games over rounds (aggregate) and reward
roots (sum) are opened by an honest watcher on real faults and by a griefer on anything, and
played to the end move by move or timed out; reward roots are posted right and wrong, by the
aggregator or, once it is slashed, by a volunteer or the griefer with a bond; jobs fail on missed
deadlines, rejections, absences and proven faults, are cancelled, settle; every leaf is claimed,
leftovers swept, stakes released.

Every transaction's effect on every token is computed from the ghost alone, and after every rule:

1. no token is created or lost: the token's supply is constant, every tracked wallet holds what
   the ghost says, and the market and each arbiter hold exactly the escrows, stakes, free and
   unbonding stake, poster bonds, unclaimed rewards and game bonds the ghost says they owe;
2. no honest party ends with less than it put in: for each job that is over, every provider,
   validator, aggregator, challenger or reward poster that did nothing wrong in it (ghost flags:
   a wrong round or root, an equivocation, an absence, a false challenge, a missed deadline, a
   judged provider) and whose stake and games in it are closed got back at least its stakes and
   bonds.

Honest parties act within every period (trust assumption 1): honest validators vote (and reject a
round they find wrong, provable or not, as the validator role does; see
test_validators.py::test_refusing_a_wrong_round_costs_validators_nothing) as soon as it is
committed, the live watcher disputes every fault it sees before time moves on (assumption 2),
honest defenders and challengers answer every turn before then, and time never passes an honest
aggregator's deadline. Dishonest validators hold at most a third of a job's
validator stake (assumption 3). Anyone else's move in a game (a stranger choosing for the watcher,
the griefer splitting for a defender) must be refused. At the end every
job is driven to its end and every claim and release made, and both properties are checked once
more for every account. A last check makes sure the run exercised every transition.
"""

from __future__ import annotations

import contextlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np
import pytest
from eth_utils import keccak
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from fedmarket.chain.boa_backend import BoaChain
from fedmarket.errors import ContractRevert
from fedmarket.market import Deployment, JobState, JobTerms
from fedmarket.protocol import rules as R
from fedmarket.protocol.encoding import address_key, round_commitment, vector_root
from fedmarket.protocol.merkle import RoundAccumulator
from fedmarket.protocol.proofs import (
    EMPTY_CHUNK,
    RoundUpdate,
    chunk_opening,
    chunk_values,
    reward_struct,
    reward_tree,
    update_opening,
    updates_root,
    updates_tree,
)
from fedmarket.protocol.receipts import Attestation, Misbehaviour, Rejection, RewardsApproval, UpdateReceipt

TOKEN = 10**18
FEE_BPS, UNBONDING = 100, 1_000
N_PARAMS, CHUNK = 4, 2  # two chunks: chunk 0 holds the value a wrong round shifts
JOIN, RD, CHAL, CLAIM, RESP = 400, 2_000, 1_000, 2_000, 100
MARGIN = 500  # time never comes closer than this to an honest aggregator's deadline (transactions take 1 s each)
PROV_STAKE, AGG_STAKE, VAL_STAKE, BOND = 10 * TOKEN, 50 * TOKEN, 10 * TOKEN, 3 * TOKEN
SCORES = keccak(b"scores")
ZERO32 = b"\x00" * 32
EMPTY_ROUND = (ZERO32, ZERO32, 0, ZERO32, 0, ZERO32, ZERO32)
OPEN, TRAINING, FINALIZING = JobState.OPEN, JobState.TRAINING, JobState.FINALIZING
SETTLED, CANCELLED, FAILED = JobState.SETTLED, JobState.CANCELLED, JobState.FAILED
OVER = (SETTLED, CANCELLED, FAILED)
MAX_JOBS = 9

OUTCOMES: Counter = Counter()  # what the whole run did: checked by the guard after it
# A slash made while a reward root stands records STAGE_FINAL plus that root's challenge deadline
# (so it counts as a cut once that root is discarded) where `protocol.rules` has `final_stage`; before
# that change it recorded STAGE_FINAL. The ghost follows whichever the checkout implements.
PER_ROOT_STAGE = hasattr(R, "final_stage")


def final_of(challenge_deadline: int) -> int:
    """The stage of a slash made under the standing root (whose challenge deadline is given; 0: none)."""
    return R.STAGE_FINAL + challenge_deadline if PER_ROOT_STAGE else R.STAGE_FINAL


def cut(word: int, stage: int, final: int) -> bool:
    return R.cut_before_root(word, stage, final) if PER_ROOT_STAGE else R.cut_before_root(word, stage)


# ---------------------------------------------------------------- the world


@dataclass
class World:
    chain: BoaChain
    dep: Deployment
    deployer: object
    treasury: object
    requesters: list
    aggregators: list
    providers: list
    validators: list
    watcher: object  # honest challenger: disputes only real faults, plays them right
    griefer: object  # disputes anything, plays at random, posts wrong roots when it can
    volunteer: object  # posts the right replacement root once an aggregator is slashed

    @property
    def people(self) -> list:
        return [*self.requesters, *self.aggregators, *self.providers, *self.validators, self.watcher, self.griefer,
                self.volunteer]


@pytest.fixture(scope="module")
def fuzz_world() -> World:
    return make_world()


def make_world() -> World:
    chain = BoaChain()
    acct = lambda i: chain.new_account("fuzz", i)
    deployer, treasury = acct(0), acct(1)
    w = World(chain, None, deployer, treasury, [acct(10), acct(11)], [acct(20), acct(21)],
              [acct(30 + i) for i in range(5)], [acct(40 + i) for i in range(4)], acct(50), acct(51), acct(52))
    w.dep = Deployment.deploy(chain, deployer, treasury.address, fee_bps=FEE_BPS, unbonding_delay=UNBONDING)
    for a in w.people:
        w.dep.token.transact("mint", a.address, 10_000 * TOKEN, sender=deployer)
        for spender in (w.dep.market, w.dep.round_arbiter, w.dep.reward_arbiter):
            w.dep.token.transact("approve", spender.address, 2**256 - 1, sender=a)
    return w


# ---------------------------------------------------------------- ghost


@dataclass
class Member:
    role: int
    amount: int
    slashed: bool = False
    stage: int = 0

    def word(self) -> tuple[int, int]:
        """(role word, stake or stage) as `JobMarket.membership` returns it."""
        return (self.role | R.SLASHED, self.stage) if self.slashed else (self.role, self.amount)


@dataclass
class Round:
    updates: list
    model: np.ndarray
    prev: np.ndarray
    wrong: bool
    data: tuple = ()
    weights: list = field(default_factory=list)

    @property
    def tree(self):
        return updates_tree(self.updates)

    def claim(self, chunk: int, lo: int, hi: int) -> list[int]:
        rows = np.array([chunk_values(u.q, chunk, CHUNK) for u in self.updates[lo:hi]], dtype=np.int64)
        if rows.size == 0:
            rows = np.zeros((0, len(chunk_values(self.model, chunk, CHUNK))), dtype=np.int64)
        return R.range_claim(R.Rule.WEIGHTED_MEAN, rows, [u.weight for u in self.updates[lo:hi]])


@dataclass
class Reward:
    leaves: list[dict]
    total: int
    value_total: int
    basis: int
    pool: int
    poster: str
    bond: int
    right: bool
    challenge_deadline: int

    @property
    def tree(self):
        return reward_tree(self.leaves)

    @property
    def root(self) -> bytes:
        return self.tree.root


@dataclass
class Job:
    id: int
    requester: object
    aggregator: object
    terms: JobTerms
    validated: bool
    agg_honest: bool
    state: JobState = OPEN
    accepted: bool = False
    providers: list = field(default_factory=list)
    validators: list = field(default_factory=list)
    vtotal: int = 0
    member: dict = field(default_factory=dict)
    byzantine: set = field(default_factory=set)
    lazy: bool = False
    absent: set = field(default_factory=set)  # validators that never vote
    judged: set = field(default_factory=set)  # providers the validators judged (slashed)
    current: int = 0
    deadline: int = 0
    quorum: bool = False
    rounds: list = field(default_factory=list)
    acc: RoundAccumulator = field(default_factory=RoundAccumulator)
    votes: dict = field(default_factory=dict)  # round -> {validator: "attest" | "reject"}
    attested: Counter = field(default_factory=Counter)
    rejected: Counter = field(default_factory=Counter)
    approvals: Counter = field(default_factory=Counter)  # statement -> stake that approved it
    approvers: set = field(default_factory=set)
    reward: Reward | None = None
    claimed: set = field(default_factory=set)
    claimed_total: int = 0
    claim_deadline: int = 0
    silent_until: dict = field(default_factory=dict)

    @property
    def escrow(self) -> int:
        return self.terms.escrow

    def locked(self) -> int:
        return sum(m.amount for m in self.member.values() if not m.slashed)

    def voted(self, r: int) -> dict:
        return self.votes.setdefault(r, {})


@dataclass
class Game:
    gid: int
    arbiter: str  # "round" | "reward"
    job: int
    kind: int
    round: int
    target: int
    challenger: str
    defender: str
    bond: int
    honest: bool  # the challenged thing is wrong
    root: bytes = ZERO32  # reward games: the disputed root
    lo: int = 0
    hi: int = 0
    claim: list | None = None
    left: list | None = None
    right: list | None = None
    lie: tuple | None = None  # (lo, hi) of the range a cheating defender's claims carry its lie in
    turn: int = R.Turn.DEFENDER
    deadline: int = 0
    open: bool = True
    dragged: bool = False


# ---------------------------------------------------------------- the machine


class Fuzz(RuleBasedStateMachine):
    world: World = None

    def __init__(self):
        super().__init__()
        w = self.w = self.world
        self.chain, self.dep = w.chain, w.dep
        self.m, self.d, self.ra, self.wa = self.dep.market, self.dep.disputes, self.dep.round_arbiter, self.dep.reward_arbiter
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(self.chain.snapshot())
        self.acct = {a.address: a for a in w.people}
        self.contracts = {"market": self.m.address, "round": self.ra.address, "reward": self.wa.address}
        tracked = [*self.acct, w.treasury.address, *self.contracts.values(), self.d.address, self.dep.licence.address]
        self.bal = {a: self.dep.balance(a) for a in tracked}
        self.supply = int(self.dep.token.call("totalSupply"))
        assert self.bal[self.m.address] == 0 and self.bal[self.ra.address] == 0 and self.bal[self.wa.address] == 0
        self.free: Counter = Counter()
        self.unbonding: dict = {}
        self.jobs: dict[int, Job] = {}
        self.games: dict[tuple[str, int], Game] = {}
        self.flow = defaultdict(lambda: defaultdict(lambda: [0, 0]))  # job -> account -> [put in, got back]
        self.faulty = defaultdict(set)  # job -> accounts that did something wrong in it
        self.first_job = int(self.m.call("job_count")) + 1
        self.checked_done = False

    def teardown(self):
        try:
            if not self.checked_done:
                self.finish_everything()
                self.check_all()
        finally:
            self._stack.close()

    # ------------------------------------------------------------------ chain helpers
    def now(self) -> int:
        return self.chain.timestamp()

    def send(self, label: str, contract, fn: str, *args, sender):
        OUTCOMES[label] += 1
        return contract.transact(fn, *args, sender=sender)

    def refused(self, label: str, contract, fn: str, *args, sender, match: str) -> None:
        """A call the protocol must refuse, changing nothing."""
        OUTCOMES["refused " + label] += 1
        with pytest.raises(ContractRevert, match=match):
            contract.transact(fn, *args, sender=sender)

    def advance(self, seconds: int) -> None:
        if seconds > 0:
            self.chain.advance_time(seconds)

    def past(self, deadline: int) -> None:
        """The next transaction runs after `deadline` (never after an honest aggregator's own deadline)."""
        if deadline > self.now():
            assert deadline < self.time_cap(), "time would pass an honest aggregator's deadline"
        self.advance(deadline - self.now())

    # ------------------------------------------------------------------ ghost money
    def move(self, src: str, dst: str, amount: int) -> None:
        if amount:
            self.bal[src] -= amount
            self.bal[dst] += amount

    def lock(self, job: Job, who: str, role: int, amount: int) -> None:
        free = self.free[(who, role)]
        used = min(free, amount)
        if used:
            OUTCOMES["stake locked from free stake"] += 1
        self.free[(who, role)] = free - used
        self.move(who, self.m.address, amount - used)
        job.member[who] = Member(role, amount)
        self.flow[job.id][who][0] += amount

    def unlock(self, job: Job, who: str) -> int:
        m = job.member.get(who)
        if m is None or m.slashed or m.amount == 0:
            return 0
        amount, m.amount = m.amount, 0
        if m.role == R.Role.PROVIDER:
            self.move(self.m.address, who, amount)
        else:
            self.free[(who, m.role)] += amount
        self.flow[job.id][who][1] += amount
        return amount

    def split_slash(self, job: Job, amount: int, challenger: str) -> None:
        share = amount * 5_000 // 10_000
        self.move(self.m.address, challenger, share)
        self.move(self.m.address, self.w.treasury.address, amount - share)
        self.flow[job.id][challenger][1] += share

    def slash(self, job: Job, who: str, stage: int, challenger: str) -> None:
        m = job.member[who]
        assert not m.slashed
        amount = m.amount
        m.slashed, m.stage, m.amount = True, stage, 0
        self.split_slash(job, amount, challenger)

    def stage(self, job: Job) -> int:
        return final_of(job.reward.challenge_deadline) if job.state == FINALIZING else job.current

    def final(self, job: Job) -> int:
        """The stage of a slash made under the job's standing root (if any)."""
        return final_of(job.reward.challenge_deadline if job.state == FINALIZING and job.reward else 0)

    def fail(self, job: Job, reason: str) -> None:
        """`JobMarket._fail`: the escrow and any poster bond go back."""
        job.state = FAILED
        if job.reward is not None and job.reward.bond:
            self.move(self.m.address, job.reward.poster, job.reward.bond)
            self.flow[job.id][job.reward.poster][1] += job.reward.bond
        job.reward = None
        self.move(self.m.address, job.requester.address, job.escrow)
        OUTCOMES["failed: " + reason] += 1

    def slash_aggregator(self, job: Job, challenger: str) -> None:
        agg = job.aggregator.address
        if not job.member[agg].slashed:
            self.slash(job, agg, self.stage(job), challenger)

    # ------------------------------------------------------------------ picking
    def pick(self, data, jobs: list[Job], label="job") -> Job:
        return data.draw(st.sampled_from(sorted(jobs, key=lambda j: j.id)), label=label)

    def in_state(self, *states) -> list[Job]:
        return [j for j in self.jobs.values() if j.state in states]

    # ------------------------------------------------------------------ setup
    @initialize(data=st.data())
    def setup(self, data):
        """Five jobs already training (a plain one; one with three validators, one of them dishonest;
        a plain one whose aggregator may cheat; one whose validators are half absent; one with three
        validators whose aggregator may cheat) so that deep states are reached quickly."""
        for validated, honest, lazy in ((False, None, False), (True, True, False), (False, False, False), (True, True, True),
                                        (True, False, False)):
            job = self.do_post(data, validated, honest=honest, lazy=lazy)
            self.do_accept(job)
            for p in self.w.providers[: job.terms.min_providers]:
                self.do_join(job, p)
            for v in self.w.validators[: job.terms.min_validators]:
                self.do_join_validator(job, v, VAL_STAKE)
            self.do_start(job)

    # ------------------------------------------------------------------ jobs
    def do_post(self, data, validated: bool, honest: bool | None = None, lazy: bool | None = None) -> Job:
        req = data.draw(st.sampled_from(self.w.requesters), label="requester")
        busy = {j.aggregator.address for j in self.jobs.values() if j.state not in OVER}
        aggs = [a for a in self.w.aggregators if a.address not in busy] or self.w.aggregators
        agg = data.draw(st.sampled_from(aggs), label="aggregator")
        n = data.draw(st.integers(2, 3), label="providers")
        nv = (data.draw(st.sampled_from([3, 2, 3]), label="validators") if lazy is None else 3 - bool(lazy)) if validated else 0
        escrow = data.draw(st.sampled_from([1_000 * TOKEN + 7, 999 * TOKEN + 1, 77, 10**6 + 3]), label="escrow")
        terms = JobTerms(
            spec_hash=keccak(b"fuzz spec"), aggregator=agg.address, escrow=escrow, provider_stake=PROV_STAKE,
            aggregator_stake=AGG_STAKE, validator_stake=VAL_STAKE if validated else 0, min_providers=n, max_providers=n,
            min_validators=nv, max_validators=nv, rounds=data.draw(st.integers(1, 2), label="rounds"), per_round=0,
            join_deadline=self.now() + 1 + JOIN, round_duration=RD, challenge_period=CHAL, claim_period=CLAIM,
            response_period=RESP, dispute_bond=BOND, rule=0, trim=0, chunk_size=CHUNK, n_params=N_PARAMS,
            licence_price=0, privacy_budget=0, miss_payout_bps=R.BPS,
        )
        r = self.send("post_job", self.m, "post_job", terms.abi(), "bafkfuzz", sender=req)
        job_id = r.event("JobPosted")["job_id"]
        if honest is None:
            honest = data.draw(st.booleans(), label="honest aggregator")
        job = Job(job_id, req, agg, terms, validated, honest)
        job.lazy = validated and (lazy if lazy is not None else data.draw(st.integers(0, 2), label="lazy validators") == 0)
        self.jobs[job_id] = job
        self.move(req.address, self.m.address, escrow)
        return job

    def do_accept(self, job: Job) -> None:
        self.send("accept", self.m, "accept", job.id, sender=job.aggregator)
        self.lock(job, job.aggregator.address, R.Role.AGGREGATOR, AGG_STAKE)
        job.accepted = True

    def do_join(self, job: Job, p) -> None:
        used_free = self.free[(p.address, R.Role.PROVIDER)] >= PROV_STAKE
        self.send("join from free stake" if used_free else "join", self.m, "join", job.id, sender=p)
        self.lock(job, p.address, R.Role.PROVIDER, PROV_STAKE)
        job.providers.append(p.address)

    def do_join_validator(self, job: Job, v, stake: int) -> None:
        self.send("join_validator", self.m, "join_validator", job.id, stake, sender=v)
        self.lock(job, v.address, R.Role.VALIDATOR, stake)
        job.validators.append(v.address)
        job.vtotal += stake

    def do_start(self, job: Job, sender=None) -> None:
        self.send("start", self.m, "start", job.id, sender=sender or job.aggregator)
        job.state = TRAINING
        job.deadline = self.now() + RD
        ordered = sorted(job.validators, key=lambda a: (job.member[a].amount, address_key(a)))
        if job.lazy:  # validators that never vote (a liveness fault: they pay if the round fails)
            job.absent.update(ordered[len(ordered) // 2:])
        elif len(ordered) >= 3 and job.member[ordered[0]].amount * 3 <= job.vtotal:
            job.byzantine.add(ordered[0])  # one dishonest validator, with at most a third of the stake

    @precondition(lambda self: len(self.jobs) < MAX_JOBS)
    @rule(data=st.data())
    def post_job(self, data):
        self.do_post(data, data.draw(st.booleans(), label="validated"))

    @precondition(lambda self: self.in_state(OPEN))
    @rule(data=st.data())
    def join_open_job(self, data):
        """The aggregator accepts, providers and validators join (from free stake if they deposited
        some), and the job starts; or the requester cancels instead."""
        job = self.pick(data, self.in_state(OPEN))
        ready = (job.accepted and len(job.providers) >= job.terms.min_providers
                 and len(job.validators) >= job.terms.min_validators)
        if self.now() + 1 >= job.terms.join_deadline:  # joining is over: anyone starts or cancels
            if ready:
                self.refused("cancel a job that can start", self.m, "cancel", job.id, sender=self.w.griefer,
                             match="job can start")
                self.do_start(job, sender=self.w.griefer)
            else:
                self.do_cancel(job, self.w.griefer, "cancel (deadline)")
            return
        if data.draw(st.integers(0, 5), label="cancel?") == 0:
            if not job.providers and not job.validators:
                self.do_cancel(job, job.requester, "cancel (requester, nobody joined)")
            else:
                self.refused("cancel once joined", self.m, "cancel", job.id, sender=job.requester,
                             match="join window still open")
            return
        if not job.accepted:
            self.do_accept(job)
        members = {*job.providers, *job.validators, job.aggregator.address, job.requester.address}
        # those with free stake of the role join first (their join locks it instead of pulling tokens)
        by_free = lambda role: lambda a: (-self.free[(a.address, role)], address_key(a.address))
        providers = sorted((p for p in self.w.providers if p.address not in members), key=by_free(R.Role.PROVIDER))
        for p in providers[: job.terms.min_providers - len(job.providers)]:
            self.do_join(job, p)
        validators = sorted((v for v in self.w.validators if v.address not in members), key=by_free(R.Role.VALIDATOR))
        for v in validators[: job.terms.min_validators - len(job.validators)]:
            self.do_join_validator(job, v, data.draw(st.sampled_from([VAL_STAKE, VAL_STAKE, 2 * VAL_STAKE]), label="stake"))
        if len(job.providers) == job.terms.min_providers and len(job.validators) == job.terms.min_validators:
            self.do_start(job)

    def do_cancel(self, job: Job, caller, label: str) -> None:
        self.send(label, self.m, "cancel", job.id, sender=caller)
        job.state = CANCELLED
        self.move(self.m.address, job.requester.address, job.escrow)

    # ------------------------------------------------------------------ free stake
    @rule(data=st.data())
    def move_free_stake(self, data):
        """Deposit free stake (later joins lock it), unbond some, withdraw after the delay."""
        what = data.draw(st.sampled_from(["deposit", "unbond", "withdraw", "unbond too much"]), label="what")
        freed = sorted(k for k, v in self.free.items() if v)
        pending = sorted(k for k, (v, _) in self.unbonding.items() if v)
        if what == "unbond" and freed:
            who, role = data.draw(st.sampled_from(freed), label="free stake")
            key = (who, role)
            amount = data.draw(st.sampled_from([self.free[key], max(1, self.free[key] // 2)]), label="amount")
            self.send("request_unbond", self.m, "request_unbond", role, amount, sender=self.acct[who])
            self.free[key] -= amount
            prev = self.unbonding.get(key, [0, 0])[0]
            self.unbonding[key] = [prev + amount, self.now() + UNBONDING]
            return
        if what == "withdraw" and pending:
            who, role = data.draw(st.sampled_from(pending), label="unbonding")
            amount, release = self.unbonding[(who, role)]
            if self.now() + 1 < release:
                self.refused("withdraw early", self.m, "withdraw", role, sender=self.acct[who], match="still unbonding")
                if not self.wait_to(release - 1):
                    return
            self.send("withdraw", self.m, "withdraw", role, sender=self.acct[who])
            self.move(self.m.address, who, amount)
            del self.unbonding[(who, role)]
            return
        who = data.draw(st.sampled_from([*self.w.providers, *self.w.validators, *self.w.aggregators]), label="staker")
        natural = (R.Role.PROVIDER if who in self.w.providers else
                   R.Role.VALIDATOR if who in self.w.validators else R.Role.AGGREGATOR)
        role = data.draw(st.sampled_from([natural, natural, R.Role.PROVIDER, R.Role.VALIDATOR, R.Role.AGGREGATOR]),
                         label="role")
        key = (who.address, role)
        if what == "deposit":
            amount = data.draw(st.sampled_from([PROV_STAKE, 3 * TOKEN + 1, AGG_STAKE]), label="amount")
            self.send("deposit", self.m, "deposit", role, amount, sender=who)
            self.move(who.address, self.m.address, amount)
            self.free[key] += amount
        else:
            locked = sum(j.member[who.address].amount for j in self.jobs.values() if who.address in j.member)
            self.refused("unbond more than free", self.m, "request_unbond", role, self.free[key] + locked + 1, sender=who,
                         match="not enough free stake")

    # ------------------------------------------------------------------ rounds
    def update_of(self, job: Job, r: int, p: str) -> RoundUpdate:
        seed = keccak(f"{job.id}:{r}:{p}".encode())
        q = np.array([int(b) % 81 - 40 for b in seed[:N_PARAMS]], dtype=np.int64)
        weight = 1 + seed[N_PARAMS] % 5
        root = vector_root(q, CHUNK)
        sig = UpdateReceipt(job.id, r, root, weight).sign(self.acct[p].key, self.dep.chain_id, self.d.address)
        return RoundUpdate(p, q, weight, CHUNK, sig)

    def aggregator_turn(self, job: Job) -> bool:
        return (job.state == TRAINING and job.current < job.terms.rounds and not job.member[job.aggregator.address].slashed
                and (job.current == 0 or not job.validated or job.quorum) and self.now() + 1 <= job.deadline)

    @precondition(lambda self: any(self.aggregator_turn(j) for j in self.jobs.values()))
    @rule(data=st.data())
    def commit_round(self, data):
        """The aggregator commits the next round: right, or (if dishonest) a value three steps off;
        some providers may stay silent (even all of them). Honest validators vote at once."""
        job = self.pick(data, [j for j in self.jobs.values() if self.aggregator_turn(j)])
        r = job.current
        wrong = not job.agg_honest and data.draw(st.sampled_from([True, True, False]), label="wrong round")
        live = [p for p in sorted(job.providers, key=address_key)
                if not (job.member[p].slashed and job.member[p].stage < r)]
        silent = data.draw(st.sets(st.sampled_from(live)), label="silent providers") if live else set()
        updates = [self.update_of(job, r, p) for p in live if p not in silent]
        prev = job.rounds[-1].model if job.rounds else np.zeros(N_PARAMS, dtype=np.int64)
        model = prev + R.aggregate(0, [u.q for u in updates], [u.weight for u in updates]) if updates else prev.copy()
        if wrong:
            model = model.copy()
            model[0] += 3
            self.faulty[job.id].add(job.aggregator.address)
        metrics = keccak(f"metrics {job.id} {r} {wrong}".encode())
        rc = self.send("commit wrong round" if wrong else "commit round", self.m, "submit_round", job.id, r,
                       vector_root(model, CHUNK), updates_root(updates), len(updates), metrics, 0, ZERO32,
                       sender=job.aggregator)
        seed = rc.event("RoundCommitted")["next_seed"]
        rnd = Round(updates, model, prev, wrong)
        rnd.data = (vector_root(model, CHUNK), updates_root(updates), len(updates), metrics, 0, ZERO32, seed)
        job.rounds.append(rnd)
        job.acc.append(round_commitment(job.id, r, rnd.data))
        job.current += 1
        job.deadline = self.now() + RD
        job.quorum = False
        if not updates:
            OUTCOMES["empty round"] += 1
        if job.validated:
            honest = [v for v in job.validators
                      if v not in job.byzantine and v not in job.absent and not job.member[v].slashed]
            (self.do_reject if wrong else self.do_attest)(job, r, honest)
            if honest and r == 0:  # a second vote on the round counts nothing
                v = honest[0]
                sig = (Rejection(job.id, r, rnd.data[0]).sign(self.acct[v].key, self.dep.chain_id, self.d.address)
                       if not wrong else self.sign_attestation(job, r, v))
                fn = "reject" if not wrong else "attest"
                args = (job.id, r, rnd.data, job.acc.proof(r), [v], [sig]) if fn == "reject" else (
                    job.id, r, rnd.data, job.acc.proof(r), SCORES, [v], [sig])
                self.refused("vote twice", self.d, fn, *args, sender=self.w.griefer, match="already voted")

    def sign_attestation(self, job: Job, r: int, v: str, scores=SCORES, model_root=None) -> bytes:
        root = model_root or job.rounds[r].data[0]
        return Attestation(job.id, r, root, scores).sign(self.acct[v].key, self.dep.chain_id, self.d.address)

    def votes_closed(self, job: Job) -> bool:
        """`Disputes.votes_closed` for the next transaction: the last round at quorum, and every
        validator voted on every round or a quarter of the step's time has passed since."""
        if not (job.validated and job.quorum and job.current == job.terms.rounds):
            return False
        cast = sum(len(job.voted(r)) for r in range(job.current))
        return self.now() + 1 >= self.votes_close(job) or cast >= len(job.validators) * job.current

    @staticmethod
    def votes_close(job: Job) -> int:
        """`JobMarket.votes_close` once the last round has quorum: a quarter of the step after it."""
        return job.deadline - RD + RD // 4

    def do_attest(self, job: Job, r: int, vs: list[str], scores=SCORES) -> None:
        vs = sorted(vs, key=address_key)
        if not vs:
            return
        sigs = [self.sign_attestation(job, r, v, scores) for v in vs]
        if self.votes_closed(job):  # no attestation of any round lands after the votes closed
            self.refused("attest after the votes closed", self.d, "attest", job.id, r, job.rounds[r].data,
                         job.acc.proof(r), scores, vs, sigs, sender=self.w.watcher, match="votes closed")
            return
        self.send("attest", self.d, "attest", job.id, r, job.rounds[r].data, job.acc.proof(r), scores, vs, sigs,
                  sender=self.w.watcher)
        before = job.attested[r]
        for v in vs:
            job.voted(r)[v] = "attest"
            job.attested[r] += job.member[v].amount
        if before * 3 < job.vtotal * 2 <= job.attested[r] * 3 and r + 1 == job.current and job.state == TRAINING:
            job.quorum = True
            job.deadline = self.now() + RD
            OUTCOMES["quorum"] += 1

    def do_reject(self, job: Job, r: int, vs: list[str]) -> None:
        vs = sorted(vs, key=address_key)
        if not vs:
            return
        root = job.rounds[r].data[0]
        sigs = [Rejection(job.id, r, root).sign(self.acct[v].key, self.dep.chain_id, self.d.address) for v in vs]
        self.send("reject", self.d, "reject", job.id, r, job.rounds[r].data, job.acc.proof(r), vs, sigs,
                  sender=self.w.watcher)
        for v in vs:
            job.voted(r)[v] = "reject"
            job.rejected[r] += job.member[v].amount

    @precondition(lambda self: any(j.byzantine and j.state == TRAINING and j.current for j in self.jobs.values()))
    @rule(data=st.data())
    def dishonest_validator(self, data):
        """The job's dishonest validator (at most a third of the stake) attests whatever, rejects a
        right round, equivocates (and is proven, mid-job), or votes twice."""
        jobs = [j for j in self.jobs.values() if j.byzantine and j.state == TRAINING and j.current]
        job = self.pick(data, jobs)
        (v,) = job.byzantine
        r = job.current - 1
        if job.member[v].slashed:
            sig = self.sign_attestation(job, r, v)
            self.refused("slashed validator votes", self.d, "attest", job.id, r, job.rounds[r].data, job.acc.proof(r),
                         SCORES, [v], [sig], sender=self.w.griefer,
                         match="votes closed" if self.votes_closed(job) else "not a validator of the job")
            return
        what = data.draw(st.sampled_from(["equivocate", "attest", "reject", "equivocate", "twice"]), label="misbehaviour")
        if v in job.voted(r):
            what = "twice" if what != "equivocate" else what
        if what == "attest":
            self.do_attest(job, r, [v])
        elif what == "reject":
            self.do_reject(job, r, [v])
        elif what == "twice":
            sig = Rejection(job.id, r, job.rounds[r].data[0]).sign(self.acct[v].key, self.dep.chain_id, self.d.address)
            if v in job.voted(r):
                self.refused("vote twice", self.d, "reject", job.id, r, job.rounds[r].data, job.acc.proof(r), [v], [sig],
                             sender=self.w.griefer, match="already voted")
            else:
                self.do_attest(job, r, [v])
        else:
            if v not in job.voted(r):
                self.do_attest(job, r, [v])
            a = self.sign_attestation(job, r, v, SCORES)
            b = self.sign_attestation(job, r, v, keccak(b"other scores"))
            root = job.rounds[r].data[0]
            self.send("prove_equivocation", self.d, "prove_equivocation", job.id, r, v, root, SCORES, a, root,
                      keccak(b"other scores"), b, sender=self.w.watcher)
            self.slash(job, v, self.stage(job), self.w.watcher.address)
            self.faulty[job.id].add(v)

    @precondition(lambda self: any(j.validated and j.state == TRAINING and j.current for j in self.jobs.values()))
    @rule(data=st.data())
    def judge_provider(self, data):
        """The validators' supermajority judges a provider (poisoning, free-riding): slashed mid-job;
        its later updates are invalid and its leaf pays nothing."""
        jobs = [j for j in self.jobs.values() if j.validated and j.state == TRAINING and j.current]
        job = self.pick(data, jobs)
        cands = [p for p in job.providers if not job.member[p].slashed]
        if not cands:
            return
        p = data.draw(st.sampled_from(sorted(cands)), label="provider")
        honest = sorted((v for v in job.validators if v not in job.byzantine and v not in job.absent
                         and not job.member[v].slashed), key=address_key)
        sigs = [Misbehaviour(job.id, p).sign(self.acct[v].key, self.dep.chain_id, self.d.address) for v in honest]
        if sum(job.member[v].amount for v in honest) * 3 < job.vtotal * 2:
            return
        self.send("slash_provider", self.d, "slash_provider", job.id, p, honest, sigs, sender=self.w.watcher)
        self.slash(job, p, self.stage(job), self.w.watcher.address)
        job.judged.add(p)
        self.faulty[job.id].add(p)

    # ------------------------------------------------------------------ failing
    @precondition(lambda self: self.in_state(TRAINING))
    @rule(data=st.data())
    def fail_job(self, data):
        """Anyone fails a training job: at once if more than a third of the validator stake rejected its
        latest round, else after its deadline (the aggregator pays for a missed step, absent
        validators for a round without quorum). Before that, every attempt is refused."""
        job = self.pick(data, self.in_state(TRAINING))
        caller = data.draw(st.sampled_from([self.w.griefer, self.w.watcher, job.requester]), label="caller")
        in_doubt = job.validated and job.current > 0 and not job.quorum
        r = job.current - 1
        if in_doubt and job.rejected[r] * 3 > job.vtotal:
            self.send("fail_round (rejected)", self.d, "fail_round", job.id, [], sender=caller)
            self.fail(job, "round rejected")
            self.slash_aggregator(job, caller.address)
            self.faulty[job.id].add(job.aggregator.address)
            return
        if self.now() + 1 <= job.deadline:
            fn, args = ("fail_round", (job.id, [])) if in_doubt else ("fail", (job.id,))
            self.refused("fail early", self.d if in_doubt else self.m, fn, *args, sender=caller,
                         match="deadline not" if not in_doubt else "deadline not passed")
            if not self.wait_to(job.deadline) or job.state != TRAINING:
                return
            if in_doubt != (job.validated and job.current > 0 and not job.quorum):
                return
        if in_doubt:
            absent = sorted((v for v in job.validators if v not in job.voted(r)), key=address_key)
            if len(absent) > 1:
                self.refused("fail_round naming too few", self.d, "fail_round", job.id, absent[1:], sender=caller,
                             match="absent list incomplete")
            self.send("fail_round (absent)", self.d, "fail_round", job.id, absent, sender=caller)
            for v in absent:
                if not job.member[v].slashed:
                    self.slash(job, v, job.current, caller.address)
                self.faulty[job.id].add(v)
            self.fail(job, "validators absent")
        else:
            self.fail_deadline(job, caller)

    def fail_deadline(self, job: Job, caller) -> None:
        """`JobMarket.fail` past the deadline: the aggregator that missed its step is slashed (half to the
        caller). With every round in and only the reward root missing, the job does not fail at first
        where the checkout implements it (the providers are owed): anyone may post the root for one
        more round duration. Otherwise, or once the aggregator is already slashed, the job fails."""
        agg = job.aggregator.address
        was_slashed = job.member[agg].slashed
        self.send("fail (deadline)", self.m, "fail", job.id, sender=caller)
        if not was_slashed:
            self.faulty[job.id].add(agg)
        if JobState(self.m.call("job_status", job.id)[0]) == TRAINING:
            assert job.current == job.terms.rounds and not was_slashed
            self.slash_aggregator(job, caller.address)
            job.deadline = self.now() + RD
            OUTCOMES["aggregator slashed for a missing root"] += 1
            return
        self.fail(job, "deadline missed")
        self.slash_aggregator(job, caller.address)

    def wait_to(self, deadline: int) -> bool:
        """Let time run until just after `deadline`, unless an honest party would have to act first
        (honest moves are made now; an honest aggregator's own deadline is never passed)."""
        self.honest_moves()
        cap = self.time_cap()
        if deadline >= cap:
            return False
        self.past(deadline)
        return True

    def time_cap(self) -> int:
        """The first deadline time may not pass: an honest aggregator's next commit or post."""
        caps = [2**63]
        for job in self.jobs.values():
            if job.state != TRAINING or not job.agg_honest or job.member[job.aggregator.address].slashed:
                continue
            if self.aggregator_turn(job) or (job.current == job.terms.rounds and (not job.validated or job.quorum)):
                caps.append(job.deadline - MARGIN)
        return min(caps)

    @rule(data=st.data())
    def wait(self, data):
        seconds = data.draw(st.sampled_from([1, 1, RESP + 1, RD // 2 + 1, CHAL + 1, UNBONDING, CLAIM + 1]), label="seconds")
        self.honest_moves()
        target = min(self.now() + seconds, self.time_cap() - 1)
        self.past(target - 1)

    # ------------------------------------------------------------------ rewards
    def right_leaves(self, job: Job) -> tuple[list[dict], int, int]:
        rounds = job.terms.rounds
        pool = job.escrow - job.escrow * FEE_BPS // R.BPS
        members = sorted([*job.providers, *job.validators, job.aggregator.address], key=address_key)
        value, activity = Counter(), Counter()
        for r, rnd in enumerate(job.rounds):
            for u in rnd.updates:
                value[u.provider] += u.weight
                activity[u.provider] += 1
            for v, how in job.voted(r).items():
                activity[v] += how == "attest"
        leaves, vt = [], 0
        final = self.final(job)
        gone = {a for a in members if cut(*job.member[a].word(), final)}
        vt = sum(value[a] for a in job.providers if a not in gone)
        for i, a in enumerate(members):
            role = job.member[a].role
            act = rounds if role == R.Role.AGGREGATOR else activity[a]
            amount, delta = R.leaf_due(role, value[a], act, rounds, R.Basis.WEIGHT, pool, vt, a in gone)
            leaves.append({"index": i, "account": a, "role": int(role), "amount": str(amount), "reputation_delta": delta,
                           "value": value[a] if role == R.Role.PROVIDER else 0, "activity": act})
        return leaves, vt, pool

    def can_post(self, job: Job) -> bool:
        return (job.state == TRAINING and job.current == job.terms.rounds and self.now() + 1 <= job.deadline
                and (not job.validated or job.quorum))

    @precondition(lambda self: any(self.can_post(j) for j in self.jobs.values()))
    @rule(data=st.data())
    def post_rewards(self, data):
        """The reward root: the aggregator's (right, or wrong if dishonest), or once it is slashed a
        volunteer's (right) or the griefer's (wrong), with a bond. A validated job's scores basis
        needs the honest two thirds' approval of exactly that statement; its weight basis waits
        for half the window."""
        job = self.pick(data, [j for j in self.jobs.values() if self.can_post(j)])
        agg = job.aggregator.address
        slashed = job.member[agg].slashed
        if slashed:
            poster = data.draw(st.sampled_from([self.w.volunteer, self.w.griefer]), label="replacement poster")
            if not job.validated or self.now() + 1 + RD // 2 >= job.deadline:  # the weight basis is open
                self.refused("slashed aggregator posts", self.m, "post_rewards", job.id, b"\x01" * 32, 0, 0, 0, True,
                             "bafk", self.m.call("slashes", job.id), sender=job.aggregator, match="aggregator was slashed")
            right = poster is self.w.volunteer
        else:
            poster = job.aggregator
            right = job.agg_honest or data.draw(st.sampled_from([False, False, True]), label="right root")
        leaves, vt, pool = self.right_leaves(job)
        if not right:
            self.make_wrong(leaves)
        total = sum(int(x["amount"]) for x in leaves)
        tree = reward_tree(leaves)
        statement = (tree.root, total, vt, True)
        basis = R.Basis.WEIGHT
        if job.validated and not self.votes_closed(job):  # the root waits for the last votes
            self.refused("root before the votes close", self.m, "post_rewards", job.id, tree.root, total, vt,
                         R.Basis.WEIGHT, True, "bafk", self.m.call("slashes", job.id), sender=poster, match="votes open")
            if not self.wait_to(self.votes_close(job) - 1) or not self.can_post(job):
                return
            if job.member[agg].slashed != slashed:
                return
        if job.validated:
            if right and data.draw(st.booleans(), label="approve first"):
                self.approve(job, statement)
            if job.approvals[statement] * 3 >= job.vtotal * 2:
                basis = R.Basis.SCORES
            else:
                if self.now() + 1 + RD // 2 < job.deadline:
                    self.refused("weight basis early", self.m, "post_rewards", job.id, tree.root, total, vt,
                                 R.Basis.WEIGHT, True, "bafk", self.m.call("slashes", job.id), sender=poster,
                                 match="approval window open")
                    if not self.wait_to(job.deadline - RD // 2 - 1) or not self.can_post(job):
                        return
                    if job.member[agg].slashed != slashed:
                        return
        bond = max(AGG_STAKE, BOND) if slashed else 0
        self.send(f"post {'right' if right else 'wrong'} root" + (" (replacement)" if slashed else "")
                  + (" scores" if basis == R.Basis.SCORES else ""), self.m, "post_rewards", job.id, tree.root, total, vt,
                  basis, True, "bafkrewards", self.m.call("slashes", job.id), sender=poster)
        if bond:
            self.move(poster.address, self.m.address, bond)
            self.flow[job.id][poster.address][0] += bond
        if not right:
            self.faulty[job.id].add(poster.address)
        job.reward = Reward(leaves, total, vt, basis, pool, poster.address, bond, right, self.now() + CHAL)
        job.state = FINALIZING

    def make_wrong(self, leaves: list[dict]) -> None:
        """A root that pays the aggregator: every provider's amount moved to its leaf (totals and values
        unchanged, only the reward rule broken); with nothing to move, a wrong reputation."""
        agg = next(x for x in leaves if x["role"] == R.Role.AGGREGATOR)
        moved = sum(int(x["amount"]) for x in leaves if x["role"] == R.Role.PROVIDER)
        for x in leaves:
            if x["role"] == R.Role.PROVIDER:
                x["amount"] = "0"
        agg["amount"] = str(int(agg["amount"]) + moved)
        if not moved:
            agg["reputation_delta"] = int(agg["reputation_delta"]) + 1

    def approve(self, job: Job, statement) -> None:
        vs = sorted((v for v in job.validators if v not in job.byzantine and v not in job.absent
                     and v not in job.approvers and not job.member[v].slashed), key=address_key)
        if not vs:
            return
        root, total, vt, gate = statement
        sigs = [RewardsApproval(job.id, root, total, vt, gate).sign(self.acct[v].key, self.dep.chain_id, self.d.address)
                for v in vs]
        if not self.votes_closed(job):
            self.refused("approve before the votes close", self.d, "approve_rewards", job.id, root, total, vt, gate, vs,
                         sigs, sender=self.w.watcher, match="votes open")
            return
        self.send("approve_rewards", self.d, "approve_rewards", job.id, root, total, vt, gate, vs, sigs,
                  sender=self.w.watcher)
        job.approvers.update(vs)
        job.approvals[statement] += sum(job.member[v].amount for v in vs)

    @precondition(lambda self: self.in_state(FINALIZING))
    @rule(data=st.data())
    def settle(self, data):
        job = self.pick(data, self.in_state(FINALIZING))
        if any(g.open and g.job == job.id for g in self.games.values()):
            if self.now() + 1 >= job.reward.challenge_deadline:
                self.refused("settle with games open", self.m, "settle", job.id, sender=self.w.griefer, match="disputes open")
            return
        if self.now() + 1 < job.reward.challenge_deadline:  # time passes with `wait`, games may open meanwhile
            self.refused("settle early", self.m, "settle", job.id, sender=self.w.griefer, match="challenge window open")
            return
        self.do_settle(job)

    def do_settle(self, job: Job) -> None:
        self.send("settle", self.m, "settle", job.id, sender=self.w.griefer)
        fee = job.escrow * FEE_BPS // R.BPS
        self.move(self.m.address, self.w.treasury.address, fee)
        self.move(self.m.address, job.requester.address, job.escrow - fee - job.reward.total)
        if job.reward.bond:
            self.move(self.m.address, job.reward.poster, job.reward.bond)
            self.flow[job.id][job.reward.poster][1] += job.reward.bond
        job.state = SETTLED
        job.claim_deadline = self.now() + CLAIM
        OUTCOMES["settled with a wrong root" if not job.reward.right else "settled"] += 1

    @precondition(lambda self: self.in_state(SETTLED))
    @rule(data=st.data())
    def claim(self, data):
        """Anyone claims leaves for their accounts; a second claim, or one after the period, is refused;
        after the period the rest is swept back to the requester."""
        job = self.pick(data, self.in_state(SETTLED))
        leaves = job.reward.leaves
        i = data.draw(st.integers(0, len(leaves) - 1), label="leaf")
        if job.claimed and data.draw(st.booleans(), label="a claimed one"):
            i = data.draw(st.sampled_from(sorted(job.claimed)), label="claimed leaf")
        if self.now() + 1 >= job.claim_deadline:
            if i not in job.claimed:
                self.refused("claim late", self.m, "claim", job.id, i, reward_struct(leaves[i]), job.reward.tree.proof(i),
                             sender=self.w.griefer, match="claim period over")
            self.do_sweep(job)
            return
        if i in job.claimed:
            self.refused("claim twice", self.m, "claim", job.id, i, reward_struct(leaves[i]), job.reward.tree.proof(i),
                         sender=self.w.griefer, match="already claimed")
            return
        self.do_claim(job, i)

    def do_claim(self, job: Job, i: int) -> None:
        leaf = job.reward.leaves[i]
        amount = int(leaf["amount"])
        if job.claimed_total + amount > job.reward.total:
            self.refused("claim beyond the total", self.m, "claim", job.id, i, reward_struct(leaf), job.reward.tree.proof(i),
                         sender=self.w.griefer, match="claims exceed rewards")
            return
        self.send("claim", self.m, "claim", job.id, i, reward_struct(leaf), job.reward.tree.proof(i), sender=self.w.griefer)
        job.claimed.add(i)
        job.claimed_total += amount
        self.move(self.m.address, leaf["account"], amount)
        self.flow[job.id][leaf["account"]][1] += amount
        self.unlock(job, leaf["account"])

    def do_sweep(self, job: Job) -> None:
        left = job.reward.total - job.claimed_total
        if left == 0:
            return
        self.past(job.claim_deadline - 1)
        self.send("sweep", self.m, "sweep", job.id, sender=self.w.griefer)
        job.claimed_total = job.reward.total
        self.move(self.m.address, job.requester.address, left)

    @precondition(lambda self: any(j.locked() for j in self.jobs.values()))
    @rule(data=st.data())
    def release_stake(self, data):
        """Anyone releases a stake of a job that is over; one of a running job stays locked."""
        jobs = [j for j in self.jobs.values() if j.locked()]
        job = self.pick(data, jobs)
        who = data.draw(st.sampled_from(sorted(a for a, m in job.member.items() if m.amount and not m.slashed)), label="member")
        if job.state not in OVER:
            self.refused("release while running", self.m, "release_stake", job.id, who, sender=self.acct[who],
                         match="job still running")
            return
        self.send("release_stake", self.m, "release_stake", job.id, who, sender=self.w.griefer)
        self.unlock(job, who)

    # ------------------------------------------------------------------ games
    def open_bond(self, job: Job, challenger: str, arbiter: str) -> None:
        self.move(challenger, self.contracts[arbiter], BOND)
        self.flow[job.id][challenger][0] += BOND

    def watchable(self) -> list[tuple[Job, str]]:
        """What the honest watcher would dispute now: a wrong round (its wrong chunk) or a wrong root,
        in a job still open to disputes, not already under one of its games."""
        mine = {(g.job, g.arbiter) for g in self.games.values() if g.open and g.challenger == self.w.watcher.address}
        out = []
        for job in sorted(self.jobs.values(), key=lambda j: j.id):
            if job.state not in (TRAINING, FINALIZING):
                continue
            if job.state == FINALIZING and self.now() + 1 >= job.reward.challenge_deadline:
                continue
            if any(r.wrong for r in job.rounds) and (job.id, "round") not in mine:
                out.append((job, "round"))
            elif job.state == FINALIZING and not job.reward.right and (job.id, "reward") not in mine:
                out.append((job, "reward"))
        return out

    @precondition(lambda self: self.watchable())
    @rule(data=st.data())
    def watcher_disputes(self, data):
        """The honest watcher disputes a real fault: the wrong chunk of a wrong round, or a wrong root."""
        job, what = data.draw(st.sampled_from(self.watchable()), label="fault")
        if what == "round":
            r = next(i for i, rnd in enumerate(job.rounds) if rnd.wrong)
            self.open_round_game(job, r, 0, self.w.watcher)
        else:
            self.open_reward_game(job, self.w.watcher)

    @precondition(lambda self: any(j.state in (TRAINING, FINALIZING) and j.rounds for j in self.jobs.values()))
    @rule(data=st.data())
    def griefer_disputes_round(self, data):
        """The griefer disputes any chunk of any round (right or wrong)."""
        jobs = [j for j in self.jobs.values() if j.state in (TRAINING, FINALIZING) and j.rounds]
        job = self.pick(data, jobs)
        if job.state == FINALIZING and self.now() + 1 >= job.reward.challenge_deadline:
            return
        r = data.draw(st.integers(0, len(job.rounds) - 1), label="round")
        chunk = data.draw(st.integers(0, N_PARAMS // CHUNK - 1), label="chunk")
        self.open_round_game(job, r, chunk, self.w.griefer)

    def open_round_game(self, job: Job, r: int, chunk: int, who) -> None:
        rnd = job.rounds[r]
        prev = job.rounds[r - 1].data if r else EMPTY_ROUND
        prev_proof = job.acc.proof(r - 1) if r else []
        rc = self.send("challenge round", self.ra, "challenge_aggregate", job.id, r, chunk, rnd.data, job.acc.proof(r),
                       prev, prev_proof, sender=who)
        gid = rc.event("GameOpened")["game_id"]
        honest = rnd.wrong and chunk == 0
        OUTCOMES["round game: " + ("true" if honest else "false")] += 1
        self.games[("round", gid)] = Game(gid, "round", job.id, R.Game.AGGREGATE, r, chunk, who.address,
                                          job.aggregator.address, BOND, honest, hi=rnd.data[2], deadline=self.now() + RESP)
        self.open_bond(job, who.address, "round")
        if not honest or who is self.w.griefer:  # the griefer plays at random: never counted as honest
            self.faulty[job.id].add(who.address)

    @precondition(lambda self: self.in_state(FINALIZING))
    @rule(data=st.data())
    def griefer_disputes_root(self, data):
        """The griefer disputes any root (right or wrong); after the challenge window nobody can."""
        job = self.pick(data, self.in_state(FINALIZING))
        if self.now() + 1 >= job.reward.challenge_deadline:
            self.refused("game after the window", self.wa, "challenge_rewards", job.id, sender=self.w.griefer,
                         match="challenge window over")
            return
        self.open_reward_game(job, self.w.griefer)

    def open_reward_game(self, job: Job, who) -> None:
        rc = self.send("challenge root", self.wa, "challenge_rewards", job.id, sender=who)
        gid = rc.event("GameOpened")["game_id"]
        honest = not job.reward.right
        OUTCOMES["reward game: " + ("true" if honest else "false")] += 1
        n = len(job.reward.leaves)
        g = Game(gid, "reward", job.id, R.Game.REWARD_SUM, 0, 0, who.address, job.reward.poster, BOND, honest,
                 root=job.reward.root, hi=n, claim=[job.reward.value_total, job.reward.total], deadline=self.now() + RESP)
        self.games[("reward", gid)] = g
        self.open_bond(job, who.address, "reward")
        if not honest or who is self.w.griefer:  # the griefer plays at random: never counted as honest
            self.faulty[job.id].add(who.address)

    def moot(self, g: Game) -> bool:
        job = self.jobs[g.job]
        if g.arbiter == "reward":
            return job.state != FINALIZING or job.reward is None or job.reward.root != g.root
        return job.state not in (TRAINING, FINALIZING) or g.round >= job.current

    def honest_side(self, g: Game) -> str | None:
        """Which side of the game moves now and is live ("defender", "challenger"): a defender that can
        move truthfully, the watcher, and the griefer (it wants its game; it stalls only in `play`)."""
        if g.turn == R.Turn.DEFENDER and self.defender_can(g):
            return "defender"
        if g.turn == R.Turn.CHALLENGER:
            return "challenger"
        return None

    def defender_can(self, g: Game) -> bool:
        """Whether the defender can make its next move truthfully."""
        job = self.jobs[g.job]
        if g.arbiter == "round":
            rnd = job.rounds[g.round]
            return not (rnd.wrong and g.target == 0)
        if g.hi - g.lo >= 2:
            return True
        return self.leaf_ok(job, g.lo)

    def leaf_ok(self, job: Job, i: int) -> bool:
        leaves = job.reward.leaves
        leaf = leaves[i]
        word, stage = job.member[leaf["account"]].word() if leaf["account"] in job.member else (0, 0)
        order = i == 0 or address_key(leaves[i - 1]["account"]) < address_key(leaf["account"])
        extra = (self.final(job),) if PER_ROOT_STAGE else ()
        return order and R.leaf_ok(leaf, word, stage, job.reward.basis, job.reward.pool, job.reward.value_total,
                                   job.terms.rounds, *extra)

    def reward_claim(self, job: Job, lo: int, hi: int) -> list[int]:
        value = amount = 0
        for leaf in job.reward.leaves[lo:hi]:
            word, stage = job.member[leaf["account"]].word()
            value += R.counted_value(leaf, word, stage, *((self.final(job),) if PER_ROOT_STAGE else ()))
            amount += int(leaf["amount"])
        return [value, amount]

    def honest_moves(self) -> None:
        """Every move an honest party owes now, made before time moves on (assumption 1), and the
        live honest watcher's disputes of every fault it can see (assumption 2)."""
        for job, what in self.watchable():
            if what == "round":
                self.open_round_game(job, next(i for i, rnd in enumerate(job.rounds) if rnd.wrong), 0, self.w.watcher)
            else:
                self.open_reward_game(job, self.w.watcher)
        for _ in range(100):
            movable = [g for g in self.games.values() if g.open and not self.moot(g) and self.honest_side(g)]
            if not movable:
                return
            for g in movable:
                if g.open and self.honest_side(g):
                    self.move_in(g, self.honest_side(g), None)

    @precondition(lambda self: any(g.open for g in self.games.values()))
    @rule(data=st.data())
    def play(self, data):
        """One move in an open game, by whichever side's turn it is (honest or not), or a timeout once
        the mover let its deadline pass, or closing a game the job outgrew."""
        g = data.draw(st.sampled_from(sorted((g for g in self.games.values() if g.open), key=lambda g: (g.arbiter, g.gid))),
                      label="game")
        arb = self.ra if g.arbiter == "round" else self.wa
        if self.moot(g):
            if data.draw(st.booleans(), label="close"):
                self.send("close_moot", arb, "close_moot", g.gid, sender=self.w.griefer)
                self.close(g, g.challenger, moot=True)
            return
        side = "defender" if g.turn == R.Turn.DEFENDER else "challenger"
        if self.now() + 1 > g.deadline:  # the mover let its deadline pass: anyone ends the game
            self.send("timeout", arb, "timeout", g.gid, sender=self.w.griefer)
            self.resolve(g, challenger_won=side == "defender", reason="timeout")
            return
        if data.draw(st.integers(0, 3), label="stall?") == 0:
            # the mover stays silent: once its deadline passes, anyone ends the game
            if self.now() + 1 <= g.deadline:
                self.refused("timeout early", arb, "timeout", g.gid, sender=self.w.griefer, match="deadline not passed")
            if side == "defender" and self.defender_can(g):
                # an honest defender answers in time; the intruder cannot choose for the challenger
                self.move_in(g, "defender", data)
                return
            if side == "challenger" and g.challenger == self.w.watcher.address:
                if self.now() + 1 <= g.deadline:
                    self.refused("choose by a stranger", arb, "choose", g.gid, True, sender=self.w.griefer,
                                 match="not this side")
                self.move_in(g, "challenger", data)
                return
            turn = g.turn
            if not self.wait_to(g.deadline):
                return
            if not g.open or g.turn != turn:
                return
            self.send("timeout", arb, "timeout", g.gid, sender=self.w.griefer)
            self.resolve(g, challenger_won=side == "defender", reason="timeout")
            return
        if side == "defender" and not self.defender_can(g):
            if g.arbiter == "round" and g.claim is None and data.draw(st.sampled_from([True, True, False]), label="drag"):
                self.drag(g)  # the cheat stands by a claim consistent with its lie, to win time
                return
            if g.arbiter == "round" and g.claim is not None and g.hi - g.lo >= 2:
                self.drag(g)
            return
        self.move_in(g, side, data)

    def move_in(self, g: Game, side: str, data) -> None:
        job = self.jobs[g.job]
        arb = self.ra if g.arbiter == "round" else self.wa
        defender = self.acct[g.defender]
        if side == "challenger":
            mid = (g.lo + g.hi) // 2
            if g.challenger == self.w.watcher.address:
                go_right = self.watcher_choice(g, job, mid)
                if self.now() + 1 <= g.deadline:  # someone else chooses for the watcher first (the wrong half)
                    self.refused("choose by a stranger", arb, "choose", g.gid, not go_right, sender=self.acct[g.defender],
                                 match="not this side")
            else:  # the griefer: any half (drawn, or by the parity of the range when it plays on its own)
                go_right = data.draw(st.booleans(), label="griefer's half") if data is not None else bool((g.gid + g.lo) % 2)
            self.send("choose", arb, "choose", g.gid, go_right, sender=self.acct[g.challenger])
            if go_right:
                g.lo, g.claim = mid, g.right
            else:
                g.hi, g.claim = mid, g.left
            g.left = g.right = None
            g.turn, g.deadline = R.Turn.DEFENDER, self.now() + RESP
            return
        if g.arbiter == "round":
            rnd = job.rounds[g.round]
            if g.claim is None:  # the first move: a claim over every update, consistent with the model
                claim = rnd.claim(g.target, 0, rnd.data[2])
                prev = job.rounds[g.round - 1] if g.round else None
                self.send("defend_aggregate", arb, "defend_aggregate", g.gid, rnd.data, prev.data if prev else EMPTY_ROUND,
                          chunk_opening(rnd.prev, g.target, CHUNK) if prev else EMPTY_CHUNK,
                          chunk_opening(rnd.model, g.target, CHUNK), EMPTY_CHUNK, claim, [], [], sender=defender)
                g.claim = claim
                if rnd.data[2] == 0:
                    self.resolve(g, challenger_won=False, reason="empty round")
                    return
                g.deadline = self.now() + RESP
                return
            if g.hi - g.lo >= 2:
                mid = (g.lo + g.hi) // 2
                left = rnd.claim(g.target, g.lo, mid)
                self.intrude(g, arb, g.claim, left)
                self.send("split", arb, "split", g.gid, g.claim, left, sender=defender)
                g.left, g.right = left, R.right(0, g.claim, left)
                g.turn, g.deadline = R.Turn.CHALLENGER, self.now() + RESP
                return
            u = rnd.updates[g.lo]
            self.send("defend_update", arb, "defend_update", g.gid, rnd.data, update_opening(rnd.updates, g.lo, rnd.tree),
                      chunk_opening(u.q, g.target, CHUNK), g.claim, [], [], sender=defender)
            self.resolve(g, challenger_won=False, reason="shown")
            return
        if g.hi - g.lo >= 2:
            mid = (g.lo + g.hi) // 2
            left = self.reward_claim(job, g.lo, mid)
            self.intrude(g, arb, g.claim, left)
            self.send("split", arb, "split", g.gid, g.claim, left, sender=defender)
            g.left, g.right = left, [a - b for a, b in zip(g.claim, left)]
            g.turn, g.deadline = R.Turn.CHALLENGER, self.now() + RESP
            return
        leaves, tree = job.reward.leaves, job.reward.tree
        prev = leaves[g.lo - 1] if g.lo else leaves[0]
        self.send("defend_reward_leaf", arb, "defend_reward_leaf", g.gid, g.claim, reward_struct(leaves[g.lo]),
                  tree.proof(g.lo), reward_struct(prev), tree.proof(g.lo - 1) if g.lo else [], sender=defender)
        self.resolve(g, challenger_won=False, reason="shown")

    def intrude(self, g: Game, arb, parent: list, left: list) -> None:
        """The griefer splits for the defender first, with a left half off by one (which would bind
        the defender to a claim it cannot open): only the defender moves for itself."""
        if g.defender != self.w.griefer.address and self.now() + 1 <= g.deadline:
            self.refused("move for the defender", arb, "split", g.gid, parent, [left[0] + 1, *left[1:]],
                         sender=self.w.griefer, match="not this side")

    def watcher_choice(self, g: Game, job: Job, mid: int) -> bool:
        """The honest challenger disputes the half that is wrong (its claim not the truth, or holding
        a leaf that breaks the rule)."""
        if g.arbiter == "round":
            rnd = job.rounds[g.round]
            return list(g.left) == rnd.claim(g.target, g.lo, mid)
        return not any(not self.leaf_ok(job, i) for i in range(g.lo, mid))

    def drag(self, g: Game) -> None:
        """A cheating defender's moves in the game over its wrong chunk: a claim that gives its model
        (the lie: three times the total weight added to the first value's sum), split so that the lie
        always rides in one half. It wins time, never the game: the last update cannot give the lie."""
        job = self.jobs[g.job]
        rnd = job.rounds[g.round]
        arb, defender = self.ra, self.acct[g.defender]
        count = rnd.data[2]
        if count == 0:
            return  # an empty round keeps the model: no claim gives a changed one
        lie = [0] * len(rnd.claim(g.target, 0, count))
        lie[0] = 3 * sum(u.weight for u in rnd.updates)
        if g.claim is None:
            claim = [a + b for a, b in zip(rnd.claim(g.target, 0, count), lie)]
            prev = job.rounds[g.round - 1] if g.round else None
            self.send("drag: false claim", arb, "defend_aggregate", g.gid, rnd.data, prev.data if prev else EMPTY_ROUND,
                      chunk_opening(rnd.prev, g.target, CHUNK) if prev else EMPTY_CHUNK,
                      chunk_opening(rnd.model, g.target, CHUNK), EMPTY_CHUNK, claim, [], [], sender=defender)
            g.claim, g.deadline = claim, self.now() + RESP
        if g.turn != R.Turn.DEFENDER or g.hi - g.lo < 2:
            return
        mid = (g.lo + g.hi) // 2
        left = rnd.claim(g.target, g.lo, mid)  # true left: the lie rides right
        self.send("drag: split", arb, "split", g.gid, g.claim, left, sender=defender)
        g.left, g.right = left, R.right(0, g.claim, left)
        g.turn, g.deadline = R.Turn.CHALLENGER, self.now() + RESP

    def resolve(self, g: Game, challenger_won: bool, reason: str) -> None:
        """`game._resolve`: a moot game refunds the challenger; else the loser's side pays."""
        job = self.jobs[g.job]
        if self.moot(g):
            self.close(g, g.challenger, moot=True)
            return
        if not challenger_won:
            self.close(g, g.defender)
            OUTCOMES[f"{g.arbiter} game: defender won ({reason})"] += 1
            return
        self.close(g, g.challenger)
        OUTCOMES[f"{g.arbiter} game: challenger won ({reason})"] += 1
        if g.arbiter == "reward":
            rw = job.reward
            if rw.bond:
                self.split_slash(job, rw.bond, g.challenger)
            else:
                self.slash(job, rw.poster, self.stage(job), g.challenger)
            self.faulty[job.id].add(rw.poster)
            job.reward = None
            job.state = TRAINING
            job.deadline = self.now() + RD
            OUTCOMES["root rejected"] += 1
        else:
            job.current = g.round
            self.fail(job, "round fault proven")
            self.slash_aggregator(job, g.challenger)

    def close(self, g: Game, payee: str, moot: bool = False) -> None:
        g.open = False
        self.move(self.contracts[g.arbiter], payee, g.bond)
        self.flow[g.job][payee][1] += g.bond
        if moot:
            OUTCOMES[f"{g.arbiter} game: moot"] += 1

    # ------------------------------------------------------------------ the end of every job
    def finish_everything(self) -> None:
        """Drive every job to its end (honest parties finishing what is theirs), claim every leaf and
        release every stake, so that property 2 can be checked for everyone."""
        for _ in range(500):
            self.honest_moves()
            # the duty that can be done first: a root waits for its job's votes to close
            duty = sorted((j for j in self.jobs.values() if self.honest_duty(j)), key=lambda j: (self.duty_time(j), j.id))
            if duty:  # an honest aggregator's next commit or post comes before anything else
                self.drive(duty[0])
                continue
            rejected = [j for j in sorted(self.jobs.values(), key=lambda j: j.id)
                        if j.state == TRAINING and j.validated and j.current and not j.quorum
                        and j.rejected[j.current - 1] * 3 > j.vtotal]
            if rejected:  # a round more than a third of the stake rejected fails at once, whoever calls
                self.drive(rejected[0])
                continue
            games = sorted((g for g in self.games.values() if g.open), key=lambda g: (g.arbiter, g.gid))
            if games:
                g = games[0]
                arb = self.ra if g.arbiter == "round" else self.wa
                if self.moot(g):
                    self.send("close_moot", arb, "close_moot", g.gid, sender=self.w.griefer)
                    self.close(g, g.challenger, moot=True)
                elif (g.turn == R.Turn.CHALLENGER and g.challenger != self.w.watcher.address
                      and self.now() + 1 <= g.deadline):
                    self.move_in(g, "challenger", None)  # the griefer plays on
                elif (g.arbiter == "round" and g.turn == R.Turn.DEFENDER and self.now() + 1 <= g.deadline
                      and (g.claim is None or g.hi - g.lo >= 2) and self.jobs[g.job].rounds[g.round].data[2]
                      and not g.dragged):
                    g.dragged = True
                    self.drag(g)  # the cheat plays for time before it loses
                else:  # a mover that cannot (or will not) move: its deadline passes
                    self.past(g.deadline)
                    self.send("timeout", arb, "timeout", g.gid, sender=self.w.griefer)
                    self.resolve(g, challenger_won=g.turn == R.Turn.DEFENDER, reason="timeout")
                continue
            todo = [j for j in sorted(self.jobs.values(), key=lambda j: j.id) if j.state not in OVER]
            if not todo:
                break
            self.drive(todo[0])
        for job in sorted(self.jobs.values(), key=lambda j: j.id):
            if job.state == SETTLED:
                for i in range(len(job.reward.leaves)):
                    if i not in job.claimed and self.now() + 1 < job.claim_deadline:
                        self.do_claim(job, i)
                if job.claimed and self.now() + 1 < job.claim_deadline:
                    i = min(job.claimed)
                    self.refused("claim twice", self.m, "claim", job.id, i, reward_struct(job.reward.leaves[i]),
                                 job.reward.tree.proof(i), sender=self.w.griefer, match="already claimed")
                if self.now() + 1 >= job.claim_deadline:
                    self.do_sweep(job)
            for who, m in sorted(job.member.items()):
                if m.amount and not m.slashed:
                    self.send("release_stake", self.m, "release_stake", job.id, who, sender=self.w.griefer)
                    self.unlock(job, who)
        # every free stake unbonds and is withdrawn: the market ends holding nothing
        for (who, role), amount in sorted(self.free.items()):
            if amount:
                self.send("request_unbond", self.m, "request_unbond", role, amount, sender=self.acct[who])
                self.free[(who, role)] = 0
                prev = self.unbonding.get((who, role), [0, 0])[0]
                self.unbonding[(who, role)] = [prev + amount, self.now() + UNBONDING]
        if self.unbonding:
            self.past(max(release for _, release in self.unbonding.values()) - 1)
        for (who, role), (amount, _) in sorted(self.unbonding.items()):
            self.send("withdraw", self.m, "withdraw", role, sender=self.acct[who])
            self.move(self.m.address, who, amount)
        self.unbonding.clear()

    def honest_duty(self, job: Job) -> bool:
        """Whether an honest aggregator has to commit or post now (its deadline is not passed)."""
        if job.state != TRAINING or not job.agg_honest or job.member[job.aggregator.address].slashed:
            return False
        if self.now() + 1 > job.deadline:
            return False
        return self.aggregator_turn(job) or (job.current == job.terms.rounds and (not job.validated or job.quorum))

    def duty_time(self, job: Job) -> int:
        """When an honest aggregator's duty can be done: now, or for a root, when its votes close."""
        if job.current == job.terms.rounds and job.validated and not self.votes_closed(job):
            return self.votes_close(job)
        return 0

    def drive(self, job: Job) -> None:
        """One step of an unfinished job towards its end."""
        if job.state == OPEN:
            if not job.accepted:
                self.do_accept(job)
            if len(job.providers) < job.terms.min_providers or len(job.validators) < job.terms.min_validators:
                self.past(job.terms.join_deadline)
                self.send("cancel (deadline)", self.m, "cancel", job.id, sender=self.w.griefer)
                job.state = CANCELLED
                self.move(self.m.address, job.requester.address, job.escrow)
            else:
                self.do_start(job)
            return
        if job.state == FINALIZING:  # a wrong root nobody disputed settles too (assumption 2 not met)
            self.past(job.reward.challenge_deadline - 1)
            self.do_settle(job)
            return
        # training
        agg_slashed = job.member[job.aggregator.address].slashed
        in_doubt = job.validated and job.current > 0 and not job.quorum
        if in_doubt:
            r = job.current - 1
            if job.rejected[r] * 3 > job.vtotal:
                self.send("fail_round (rejected)", self.d, "fail_round", job.id, [], sender=self.w.watcher)
                self.fail(job, "round rejected")
                self.slash_aggregator(job, self.w.watcher.address)
                self.faulty[job.id].add(job.aggregator.address)
                return
            byz = [v for v in job.byzantine if v not in job.voted(r) and not job.member[v].slashed]
            if byz:  # the dishonest validator comes round: an honest-enough vote
                self.do_attest(job, r, byz)
                if job.quorum:
                    return
            self.past(job.deadline)
            absent = sorted((v for v in job.validators if v not in job.voted(r)), key=address_key)
            self.send("fail_round (absent)", self.d, "fail_round", job.id, absent, sender=self.w.watcher)
            for v in absent:
                if not job.member[v].slashed:
                    self.slash(job, v, job.current, self.w.watcher.address)
                self.faulty[job.id].add(v)
            self.fail(job, "validators absent")
            return
        honest_agg = job.agg_honest and not agg_slashed
        if honest_agg and job.current < job.terms.rounds:
            self.commit_round_drive(job)
            return
        if job.current == job.terms.rounds and (honest_agg or agg_slashed) and self.now() + 1 <= job.deadline:
            self.post_drive(job, agg_slashed)
            return
        self.past(job.deadline)
        self.fail_deadline(job, self.w.watcher)

    def commit_round_drive(self, job: Job) -> None:
        class _Data:  # a fixed draw: right round, nobody silent
            def draw(self_, strategy, label=None):
                if label == "job":
                    return job
                if label == "silent providers":
                    return set()
                return False

        self.commit_round(_Data())

    def post_drive(self, job: Job, agg_slashed: bool) -> None:
        class _Data:
            def draw(self_, strategy, label=None):
                if label == "job":
                    return job
                if label == "replacement poster":
                    return self.w.volunteer
                return True

        self.post_rewards(_Data())

    # ------------------------------------------------------------------ invariants
    def market_owes(self) -> int:
        owed = sum(self.free.values()) + sum(a for a, _ in self.unbonding.values())
        for job in self.jobs.values():
            owed += job.locked()
            if job.state in (OPEN, TRAINING, FINALIZING):
                owed += job.escrow
            if job.state == FINALIZING and job.reward is not None:
                owed += job.reward.bond
            if job.state == SETTLED:
                owed += job.reward.total - job.claimed_total
        return owed

    @invariant()
    def tokens_conserved(self):
        # (1) nothing created or lost: the supply, every wallet, and what each contract owes
        assert int(self.dep.token.call("totalSupply")) == self.supply
        assert sum(self.bal.values()) == self.supply  # every holder is tracked: nothing minted, burnt or lost
        for addr, want in self.bal.items():
            assert self.dep.balance(addr) == want, (addr, self.dep.balance(addr), want)
        assert self.bal[self.m.address] == self.market_owes()
        for name in ("round", "reward"):
            owed = sum(g.bond for g in self.games.values() if g.open and g.arbiter == name)
            assert self.bal[self.contracts[name]] == owed, (name, owed)
            assert self.bal[self.contracts[name]] == sum(
                1 for g in self.games.values() if g.open and g.arbiter == name) * BOND
        assert sum(int(self.dep.round_arbiter.call("open_games", j)) for j in self.jobs) == sum(
            1 for g in self.games.values() if g.open and g.arbiter == "round")

    @invariant()
    def ledger_matches_chain(self):
        for (who, role), amount in self.free.items():
            assert int(self.m.call("free_stake", who, role)) == amount, (who, role)
        for (who, role), (amount, release) in self.unbonding.items():
            u = self.m.call("unbonding", who, role)
            assert (u["amount"], u["release_time"]) == (amount, release)
        for job in self.jobs.values():
            state, current, deadline, quorum, _ = self.m.call("job_status", job.id)
            assert JobState(state) == job.state, (job.id, JobState(state), job.state)
            if job.state in (TRAINING, FINALIZING):
                assert (current, quorum) == (job.current, job.quorum), job.id
                if job.state == TRAINING:
                    assert deadline == job.deadline, job.id
            for who, m in job.member.items():
                chain_word = tuple(self.m.call("membership", job.id, who))
                assert chain_word == m.word(), (job.id, who, chain_word, m.word(), job.state)
            if job.state == SETTLED:
                assert int(self.m.call("progress", job.id)["claimed_total"]) == job.claimed_total

    @invariant()
    def honest_parties_keep_their_stake(self):
        # (2) for every job that is over: an honest party whose stake and games in it are closed
        for job in self.jobs.values():
            if job.state not in OVER:
                continue
            self.check_job_flows(job)

    def check_job_flows(self, job: Job, final: bool = False) -> None:
        open_by = {g.challenger for g in self.games.values() if g.open and g.job == job.id}
        for who, (put_in, got_back) in self.flow[job.id].items():
            if who in self.faulty[job.id] or who in open_by:
                continue
            m = job.member.get(who)
            if m is not None and m.amount and not m.slashed:
                assert not final, f"job {job.id}: {who} still has stake locked at the end"
                continue  # not released yet
            if m is not None:
                assert not m.slashed, f"job {job.id}: honest {who} was slashed"
            assert got_back >= put_in, f"job {job.id}: honest {who} put in {put_in}, got back {got_back}"
            OUTCOMES["honest party checked"] += 1

    def check_all(self) -> None:
        self.tokens_conserved()
        self.ledger_matches_chain()
        for job in self.jobs.values():
            assert job.state in OVER, f"job {job.id} not finished: {job.state!r}"
            self.check_job_flows(job, final=True)
        assert not any(g.open for g in self.games.values())
        for contract in self.contracts.values():  # every escrow, stake, bond and reward paid out
            assert self.dep.balance(contract) == 0, contract
        self.checked_done = True


MUST = [
    "post_job", "accept", "join", "stake locked from free stake", "join_validator", "start", "commit round", "commit wrong round",
    "empty round", "attest", "reject", "quorum", "prove_equivocation", "slash_provider", "approve_rewards",
    "post right root", "post wrong root", "post right root scores", "settle", "claim", "release_stake", "deposit",
    "request_unbond", "withdraw", "round game: true", "round game: false", "reward game: true", "reward game: false",
    "round game: defender won (shown)", "round game: challenger won (timeout)", "reward game: defender won (shown)",
    "reward game: challenger won (timeout)", "root rejected", "drag: false claim", "drag: split", "choose", "timeout",
    "failed: round fault proven", "failed: deadline missed", "failed: round rejected", "failed: validators absent",
    "honest party checked", "refused release while running", "refused claim twice", "refused unbond more than free",
    "refused fail early", "refused timeout early", "refused choose by a stranger", "refused slashed aggregator posts",
    "refused settle early", "refused vote twice", "refused move for the defender",
]


@settings(max_examples=60, stateful_step_count=40, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
class FuzzRun(Fuzz):
    """The machine with the run's settings: derandomized, so CI replays the same histories."""


def test_fuzz(fuzz_world):
    Fuzz.world = fuzz_world
    OUTCOMES.clear()
    run_state_machine_as_test(FuzzRun)
    missing = [k for k in MUST if OUTCOMES[k] == 0]
    assert not missing, f"the run never exercised: {missing}\n{sorted(OUTCOMES.items())}"
