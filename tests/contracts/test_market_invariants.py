"""JobMarket as a hypothesis state machine: a Python ghost ledger checked against the real contract.

Several jobs live at once on the embedded chain. Every rule computes, from the ghost alone,
whether the call must succeed or which revert string it must produce (mirroring the order of
the contract's checks), sends the real transaction, and on success updates the ghost. After
every step the invariants compare the ghost with the chain:

* the market's token balance equals open escrows + unclaimed settled rewards + stakes locked
  in jobs + free stakes + unbonding stakes, each term summed from the ghost;
* claimed bitmaps, claimed totals and the ghost agree, and a second claim reverts;
* a stake locked in a running job never moves (``release_stake`` reverts and nothing changes);
* job states only move along the allowed edges (read from the chain after every step);
* the token's total supply never changes.

Rules that are invalid in the current state (wrong caller, wrong state, deadline not reached,
forged leaf, over-committed reward root...) must revert with the exact reason and change nothing.
Each example starts from a settled and a failed job plus a few more at random stages, so that
every transition is reachable in 40 steps; a final check makes sure the run exercised them all.
Each hypothesis example runs inside its own snapshot of the session deployment.
"""

from __future__ import annotations

import contextlib
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import ClassVar

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

from fedmarket.errors import ContractRevert
from fedmarket.market import JobState, JobTerms, Role
from fedmarket.protocol.encoding import reward_leaf
from fedmarket.protocol.merkle import MerkleTree
from fedmarket.protocol.receipts import Attestation

TOKEN = 10**18
BPS = 10_000
CHALLENGER_BPS = 5_000
ZERO32 = b"\x00" * 32
ZERO_ADDRESS = "0x" + "00" * 20
SCORES = keccak(b"scores")

OPEN, TRAINING, FINALIZING = JobState.OPEN, JobState.TRAINING, JobState.FINALIZING
SETTLED, CANCELLED, FAILED = JobState.SETTLED, JobState.CANCELLED, JobState.FAILED
RUNNING = (OPEN, TRAINING, FINALIZING)
OVER = (SETTLED, CANCELLED, FAILED)
ALLOWED_EDGES = {
    (OPEN, TRAINING),
    (OPEN, CANCELLED),
    (TRAINING, FINALIZING),
    (TRAINING, FAILED),
    (FINALIZING, SETTLED),
    (FINALIZING, FAILED),
}
MAX_JOBS = 5
STAGES = ("open", "accepted", "ready", "training", "finalizing", "settled")
# stages of the jobs each example starts with besides a settled and a failed one (deep ones take many steps)
SETUP_STAGES = ("open", "training", "finalizing", "failed", "accepted", "ready", "training", "cancelled", "settled",
                "swept")
SETUP_ORDER = ("swept", "cancelled", "failed", "settled", "finalizing", "training", "ready", "accepted", "open")

# outcomes seen over the whole run: (rule, "ok" | revert reason); checked after the run
OUTCOMES: Counter = Counter()


@dataclass
class GhostJob:
    """What the test believes one job looks like."""

    id: int
    requester: str
    terms: JobTerms
    state: JobState = OPEN
    accepted: bool = False
    providers: list = field(default_factory=list)
    validators: list = field(default_factory=list)
    validator_total: int = 0
    # address -> [role (| 128 once slashed), stake still locked]
    member: dict = field(default_factory=dict)
    # address -> stake locked when it joined (what must stay while the job runs)
    staked: dict = field(default_factory=dict)
    current_round: int = 0
    round_deadline: int = 0
    rounds_data: dict = field(default_factory=dict)
    attested: dict = field(default_factory=dict)  # round -> set of validators
    attested_stake: Counter = field(default_factory=Counter)  # round -> stake counted by disputes
    approved: Counter = field(default_factory=Counter)  # (reward root, total) -> validator stake that signed it
    approvers: set = field(default_factory=set)  # validators that signed a reward root (once each)
    leaves: list = field(default_factory=list)
    tree: MerkleTree | None = None
    reward_root: bytes = ZERO32
    reward_total: int = 0
    claimed: set = field(default_factory=set)
    claimed_total: int = 0
    challenge_deadline: int = 0
    claim_deadline: int = 0

    @property
    def aggregator(self) -> str:
        return self.terms.aggregator

    def locked(self) -> int:
        return sum(amount for _, amount in self.member.values())


@st.composite
def job_terms(draw, aggregator: str, now: int) -> JobTerms:
    """Valid job terms; small, odd escrows too, so that fee rounding is exercised."""
    min_p = draw(st.integers(1, 3), label="min_providers")
    return JobTerms(
        spec_hash=keccak(b"spec"),
        aggregator=aggregator,
        escrow=draw(st.one_of(st.integers(1, 10_000), st.integers(1, 400 * TOKEN)), label="escrow"),
        provider_stake=draw(st.sampled_from([0, 1, 5 * TOKEN, 10 * TOKEN]), label="provider_stake"),
        aggregator_stake=draw(st.sampled_from([0, 7, 100 * TOKEN]), label="aggregator_stake"),
        validator_stake=draw(st.sampled_from([0, 3 * TOKEN, 50 * TOKEN]), label="validator_stake"),
        min_providers=min_p,
        max_providers=min_p + draw(st.integers(0, 2), label="extra_providers"),
        max_validators=draw(st.integers(0, 2), label="max_validators"),
        rounds=draw(st.integers(1, 3), label="rounds"),
        join_deadline=now + draw(st.sampled_from([50, 400, 1500]), label="join_window"),
        round_duration=draw(st.sampled_from([100, 700]), label="round_duration"),
        challenge_period=draw(st.sampled_from([0, 100, 300]), label="challenge_period"),
        claim_period=draw(st.sampled_from([20, 5_000, 50_000]), label="claim_period"),
        rule=0,
        trim=0,
        chunk_size=64,
        licence_price=0,
    )


INVALID_TERMS = [
    ({"escrow": 0}, "market: escrow is zero"),
    ({"spec_hash": ZERO32}, "market: empty spec hash"),
    ({"aggregator": ZERO_ADDRESS}, "market: aggregator is zero"),
    ({"aggregator": "requester"}, "market: requester cannot aggregate"),
    ({"rounds": 0}, "market: bad round count"),
    ({"rounds": 10_001}, "market: bad round count"),
    ({"min_providers": 0}, "market: min providers is zero"),
    ({"min_providers": 3, "max_providers": 2}, "market: min above max providers"),
    ({"max_providers": 1_000_001}, "market: too many providers"),
    ({"max_validators": 33}, "market: too many validators"),
    ({"join_deadline": "now"}, "market: join deadline passed"),
    ({"round_duration": 0}, "market: round duration is zero"),
    ({"claim_period": 0}, "market: claim period is zero"),
    ({"rule": 4}, "market: unknown rule"),
    ({"rule": 0, "trim": 1}, "market: trim without trimmed mean"),
    ({"chunk_size": 0}, "market: bad chunk size"),
    ({"chunk_size": 65}, "market: bad chunk size"),
    ({"rule": 2, "trim": 0}, "market: trim is zero"),
    ({"cid": ""}, "market: empty spec cid"),
]


class MarketMachine(RuleBasedStateMachine):
    """Random interleavings of every JobMarket entry point over several jobs."""

    world: ClassVar[dict] = {}  # the session deployment, set by the test below

    def __init__(self):
        super().__init__()
        w = self.world
        self.w = w
        self.chain = w["chain"]
        self.dep = w["dep"]
        self.m = self.dep.market
        self.token = self.dep.token
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(self.chain.snapshot())
        self.fee_bps = int(self.m.call("FEE_BPS"))
        self.unbonding_delay = int(self.m.call("UNBONDING_DELAY"))
        self.treasury = w["treasury"].address
        self.requesters = [w["requester"], w["outsider"]]
        self.aggregator = w["aggregator"]
        self.providers = list(w["providers"])
        self.validators = list(w["validators"])
        self.stakers = [self.aggregator, *self.providers, *self.validators]
        self.staker_addresses = {a.address for a in self.stakers}
        self.everyone = [w["requester"], w["outsider"], self.aggregator, *self.providers, *self.validators]
        self.acct = {a.address: a for a in self.everyone}
        tracked = [a.address for a in self.everyone] + [self.treasury]
        self.wallet = {a: int(self.token.call("balanceOf", a)) for a in tracked}
        self.free: Counter = Counter()  # (address, role) -> amount
        self.unbonding: dict = {}  # (address, role) -> [amount, release_time]
        self.reputation = {a: int(self.m.call("reputation", a)) for a in tracked}
        self.jobs: dict[int, GhostJob] = {}
        self.first_job = int(self.m.call("job_count")) + 1
        self.supply = int(self.token.call("totalSupply"))
        assert int(self.token.call("balanceOf", self.m.address)) == 0, "the session market must start empty"
        # how far ahead of the latest block the next transaction runs (0 or 1 s, per backend)
        before = self.now()
        self.token.transact("approve", self.m.address, 2**256 - 1, sender=w["outsider"])
        self.block_gap = self.now() - before
        assert self.block_gap in (0, 1)
        self.seen_state: dict[int, JobState] = {}
        # what the last transactions may have changed (sent or reverted): checked after the step
        self.dirty_jobs: set[int] = set()
        self.dirty_accounts: set[str] = set()
        self.dirty_stakes: set[tuple[str, int]] = set()
        self.dirty_members: set[tuple[int, str]] = set()
        self.dirty_leaves: set[tuple[int, int]] = set()
        self.dirty_reputation: set[str] = set()
        self.involved: set[str] = set()  # every account that sent, or was named in, a transaction
        self.healthy = True
        self.last_sent = False

    def teardown(self):
        try:
            if self.healthy:  # the run ended cleanly: compare everything once more
                self.dirty_jobs = set(self.jobs)
                self.dirty_accounts = set(self.wallet)
                self.dirty_reputation = set(self.wallet)
                # every role of every staker that took part in anything (the others were never addressed)
                self.dirty_stakes = {(a, role) for a in self.involved & self.staker_addresses for role in Role}
                self.dirty_members = {(j.id, a) for j in self.jobs.values() for a in [*j.member, self.treasury]}
                self.dirty_leaves = {(j.id, i) for j in self.jobs.values() for i in range(len(j.leaves) + 1)}
                self.check_ledger(rounds=True)
                # closure: every token is in a tracked wallet or in the market
                held = sum(int(self.token.call("balanceOf", a)) for a in self.wallet)
                assert held + int(self.token.call("balanceOf", self.m.address)) == self.supply
        finally:
            self._stack.close()

    # ------------------------------------------------------------------ ghost helpers
    def now(self) -> int:
        """Timestamp of the latest block (after a transaction: the time it ran at)."""
        return self.chain.timestamp()

    def tx_time(self) -> int:
        """Timestamp the next transaction will run at."""
        return self.chain.timestamp() + self.block_gap

    def fee(self, job: GhostJob) -> int:
        return job.terms.escrow * self.fee_bps // BPS

    def ghost_market_balance(self) -> int:
        total = 0
        for job in self.jobs.values():
            if job.state in RUNNING:
                total += job.terms.escrow
            elif job.state == SETTLED:
                total += job.reward_total - job.claimed_total
            total += job.locked()
        total += sum(self.free.values())
        total += sum(amount for amount, _ in self.unbonding.values())
        return total

    def touch(self, job: GhostJob | None = None, *addresses: str):
        """Mark what a transaction (sent or reverted) may have changed, for the next check."""
        if job is not None:
            if self.last_sent:  # a reverted call cannot have changed the job: its fields are compared later
                self.dirty_jobs.add(job.id)
            self.dirty_members.update((job.id, a) for a in addresses)
            if job.state != self.seen_state[job.id]:  # a transition: see it on chain right away
                self.observe(job)
        self.dirty_accounts.update(a for a in addresses if a in self.wallet)
        self.involved.update(addresses)

    def touch_stake(self, address: str, role: int):
        if address in self.staker_addresses and 1 <= role <= 3:
            self.dirty_stakes.add((address, role))

    def observe(self, job: GhostJob):
        """Read the job's state from the chain: it must be the ghost's, reached by an allowed edge."""
        state = JobState(self.m.call("reward_terms", job.id)[0])
        prev = self.seen_state[job.id]
        assert state == prev or (prev, state) in ALLOWED_EDGES, f"job {job.id}: {prev!r} -> {state!r}"
        self.seen_state[job.id] = state
        assert state == job.state, f"job {job.id}: chain {state!r}, ghost {job.state!r}"

    def pay(self, address: str, amount: int):
        self.wallet[address] += amount
        self.touch(None, address)

    def lock(self, job: GhostJob, address: str, role: int, amount: int):
        free = self.free[(address, role)]
        if free >= amount:
            self.free[(address, role)] = free - amount
        else:
            self.free[(address, role)] = 0
            self.wallet[address] -= amount - free
        job.member[address] = [role, amount]
        job.staked[address] = amount
        self.dirty_stakes.add((address, role))

    def release(self, job: GhostJob, address: str) -> tuple[int, int]:
        role, amount = job.member.get(address, [0, 0])
        if amount == 0:
            return role, 0
        job.member[address] = [role, 0]
        if role != Role.PROVIDER:
            self.free[(address, role)] += amount
            self.dirty_stakes.add((address, role))
        return role, amount

    def has_quorum(self, job: GhostJob, round_: int) -> bool:
        return job.attested_stake[round_] * 3 >= job.validator_total * 2

    def send(self, label: str, contract, fn: str, *args, sender, expect: str | None):
        """Send a transaction that must succeed (expect None) or revert with exactly `expect`."""
        self.healthy = False
        self.involved.add(sender.address)
        self.involved.update(a for a in args if isinstance(a, str) and a in self.wallet)
        OUTCOMES[(label, expect or "ok")] += 1
        self.last_sent = expect is None
        if expect is None:
            return contract.transact(fn, *args, sender=sender)
        with pytest.raises(ContractRevert, match=re.escape(expect)):
            contract.transact(fn, *args, sender=sender)
        return None

    def some(self, state: JobState) -> bool:
        """Whether a job is in `state` (rules for that state run only then; they still pick any job at times)."""
        return any(j.state == state for j in self.jobs.values())

    def pick(self, data, valid, label="job") -> GhostJob:
        """A job, usually one where `valid(job)` holds, sometimes any (to hit revert paths)."""
        jobs = list(self.jobs.values())
        good = [j for j in jobs if valid(j)]
        if good and data.draw(st.integers(0, 4), label=f"{label}: any state?") != 4:
            return data.draw(st.sampled_from(good), label=label)
        return data.draw(st.sampled_from(jobs), label=label)

    # ------------------------------------------------------------------ actions
    def do_post(self, requester, terms: JobTerms, expect: str | None = None, cid: str = "bafkreispec"):
        r = self.send("post_job", self.m, "post_job", terms.abi(), cid, sender=requester, expect=expect)
        self.touch(None, requester.address)
        if r is None:
            return None
        job_id = self.first_job + len(self.jobs)
        assert self.m.call("job_count") == job_id
        ev = r.event("JobPosted")
        assert (ev["job_id"], ev["requester"], ev["aggregator"], ev["escrow"]) == (
            job_id, requester.address, terms.aggregator, terms.escrow)
        job = GhostJob(job_id, requester.address, terms)
        self.jobs[job_id] = job
        self.seen_state[job_id] = OPEN
        self.wallet[requester.address] -= terms.escrow
        self.touch(job)
        return job

    def why_accept(self, job, caller) -> str | None:
        if job.state != OPEN:
            return "market: job not open"
        if caller.address != job.aggregator:
            return "market: caller is not the aggregator"
        if caller.address in job.member:
            return "market: already a participant"
        return None

    def do_accept(self, job, caller):
        expect = self.why_accept(job, caller)
        r = self.send("accept", self.m, "accept", job.id, sender=caller, expect=expect)
        if r is not None:
            assert r.event("JobAccepted")["stake"] == job.terms.aggregator_stake
            self.lock(job, caller.address, Role.AGGREGATOR, job.terms.aggregator_stake)
            job.accepted = True
        self.touch(job, caller.address)
        self.touch_stake(caller.address, Role.AGGREGATOR)

    def why_join(self, job, account) -> str | None:
        if job.state != OPEN:
            return "market: job not open"
        if self.tx_time() >= job.terms.join_deadline:
            return "market: join deadline passed"
        if len(job.providers) + 1 > job.terms.max_providers:
            return "market: job is full"
        if account.address in job.member:
            return "market: already a participant"
        return None

    def do_join(self, job, account):
        expect = self.why_join(job, account)
        r = self.send("join", self.m, "join", job.id, sender=account, expect=expect)
        if r is not None:
            ev = r.event("ProviderJoined")
            assert (ev["provider"], ev["stake"], ev["n_providers"]) == (
                account.address, job.terms.provider_stake, len(job.providers) + 1)
            job.providers.append(account.address)
            self.lock(job, account.address, Role.PROVIDER, job.terms.provider_stake)
        self.touch(job, account.address)
        self.touch_stake(account.address, Role.PROVIDER)

    def why_join_validator(self, job, account, stake) -> str | None:
        if job.state != OPEN:
            return "market: job not open"
        if self.tx_time() >= job.terms.join_deadline:
            return "market: join deadline passed"
        if account.address == job.requester:
            return "market: requester cannot validate"
        if stake == 0 or stake < job.terms.validator_stake:
            return "market: stake below minimum"
        if len(job.validators) + 1 > job.terms.max_validators:
            return "market: validator set full"
        if account.address in job.member:
            return "market: already a participant"
        return None

    def do_join_validator(self, job, account, stake):
        expect = self.why_join_validator(job, account, stake)
        r = self.send("join_validator", self.m, "join_validator", job.id, stake, sender=account, expect=expect)
        if r is not None:
            ev = r.event("ValidatorJoined")
            assert (ev["validator"], ev["stake"], ev["n_validators"]) == (account.address, stake, len(job.validators) + 1)
            job.validators.append(account.address)
            job.validator_total += stake
            self.lock(job, account.address, Role.VALIDATOR, stake)
        self.touch(job, account.address)
        self.touch_stake(account.address, Role.VALIDATOR)

    def why_start(self, job, caller) -> str | None:
        if job.state != OPEN:
            return "market: job not open"
        if not job.accepted:
            return "market: aggregator has not accepted"
        if len(job.providers) < job.terms.min_providers:
            return "market: too few providers"
        if self.tx_time() < job.terms.join_deadline and caller.address not in (job.aggregator, job.requester):
            return "market: join window still open"
        return None

    def do_start(self, job, caller):
        expect = self.why_start(job, caller)
        r = self.send("start", self.m, "start", job.id, sender=caller, expect=expect)
        if r is not None:
            job.state = TRAINING
            job.round_deadline = self.now() + job.terms.round_duration
            ev = r.event("TrainingStarted")
            assert (ev["n_providers"], ev["round_deadline"]) == (len(job.providers), job.round_deadline)
        self.touch(job)

    def why_submit(self, job, caller, round_, count) -> str | None:
        if caller.address != job.aggregator:
            return "market: caller is not the aggregator"
        if job.state != TRAINING:
            return "market: job not training"
        if job.current_round >= job.terms.rounds:
            return "market: all rounds committed"
        if round_ != job.current_round:
            return "market: wrong round"
        if self.tx_time() > job.round_deadline:
            return "market: round deadline passed"
        if not 1 <= count <= 128 or count > len(job.providers):
            return "market: bad update count"
        if round_ > 0 and job.terms.max_validators > 0 and not self.has_quorum(job, round_ - 1):
            return "market: previous round lacks quorum"
        return None

    def do_submit(self, job, caller, round_, count):
        expect = self.why_submit(job, caller, round_, count)
        data = (keccak(f"model-{job.id}-{round_}".encode()), keccak(f"upd-{job.id}-{round_}".encode()), count, ZERO32)
        r = self.send("submit_round", self.m, "submit_round", job.id, round_, data[0], "bafkreimodel", data[1], count,
                      data[3], 0, sender=caller, expect=expect)
        if r is not None:
            ev = r.event("RoundCommitted")
            assert (ev["round"], ev["model_root"], ev["count"]) == (round_, data[0], count)
            job.rounds_data[round_] = data
            job.current_round += 1
            job.round_deadline = self.now() + job.terms.round_duration
            assert self.m.call("round_commitment", job.id, round_) == keccak(
                b"".join([data[0], data[1], count.to_bytes(32, "big"), data[3]]))
        self.touch(job)

    def do_attest(self, job, round_, signers):
        signers = sorted(signers, key=lambda a: int(a.address, 16))
        expect = None
        for s in signers:
            if job.member.get(s.address, [0, 0])[0] != Role.VALIDATOR:
                expect = "disputes: not a validator of the job"
                break
            if s.address in job.attested.get(round_, ()):
                expect = "disputes: already attested"
                break
        data = job.rounds_data[round_]
        verifier = self.dep.disputes.address
        sigs = [Attestation(job.id, round_, data[0], SCORES).sign(s.key, self.chain.chain_id, verifier) for s in signers]
        r = self.send("attest", self.dep.disputes, "attest", job.id, round_, data, SCORES,
                      [s.address for s in signers], sigs, sender=self.w["outsider"], expect=expect)
        if r is not None:
            job.attested.setdefault(round_, set()).update(s.address for s in signers)
            job.attested_stake[round_] += sum(job.member[s.address][1] for s in signers)
            assert len([e for e in r.events if e.name == "RoundAttested"]) == len(signers)
            assert self.dep.disputes.call("attested_stake", job.id, round_) == job.attested_stake[round_]
            assert self.dep.disputes.call("has_quorum", job.id, round_) == self.has_quorum(job, round_)

    def why_post_rewards(self, job, caller, total, root=None, approvals=True) -> str | None:
        if caller.address != job.aggregator:
            return "market: caller is not the aggregator"
        if job.state != TRAINING:
            return "market: job not training"
        if job.current_round != job.terms.rounds:
            return "market: rounds not finished"
        if self.tx_time() > job.round_deadline:
            return "market: round deadline passed"
        if job.terms.max_validators > 0 and not self.has_quorum(job, job.terms.rounds - 1):
            return "market: last round lacks quorum"
        if approvals and job.terms.max_validators > 0 and job.approved[(root, total)] * 3 < job.validator_total * 2:
            return "market: rewards not approved by validators"
        if total > job.terms.escrow - self.fee(job):
            return "market: rewards exceed escrow"
        return None

    def do_approve_rewards(self, job, root, total):
        """The job's validators that have not signed a reward root yet sign this one (honest validators
        that re-derived it)."""
        from fedmarket.protocol.receipts import RewardsApproval

        signers = sorted((self.acct[v] for v in job.validators if job.member.get(v, [0, 0])[0] == Role.VALIDATOR
                          and v not in job.approvers), key=lambda a: int(a.address, 16))
        if not signers:
            return
        verifier = self.dep.disputes.address
        sigs = [RewardsApproval(job.id, root, total).sign(a.key, self.chain.chain_id, verifier) for a in signers]
        r = self.send("approve_rewards", self.dep.disputes, "approve_rewards", job.id, root, total,
                      [a.address for a in signers], sigs, sender=self.w["outsider"], expect=None)
        if r is not None:
            job.approvers.update(a.address for a in signers)
            job.approved[(root, total)] += sum(job.member[a.address][1] for a in signers)
            key = keccak(root + total.to_bytes(32, "big"))
            assert self.dep.disputes.call("rewards_stake", job.id, key) == job.approved[(root, total)]

    def do_post_rewards(self, job, caller, accounts, amounts, deltas, excess=0):
        leaves = [(i, a, amt, d) for i, (a, amt, d) in enumerate(zip(accounts, amounts, deltas))]
        tree = MerkleTree([reward_leaf(*leaf) for leaf in leaves])
        total = sum(amounts) + excess
        if job.terms.max_validators > 0 and self.why_post_rewards(job, caller, total, tree.root, approvals=False) is None:
            self.do_approve_rewards(job, tree.root, total)  # only a root that would otherwise be accepted
        expect = self.why_post_rewards(job, caller, total, tree.root)
        r = self.send("post_rewards", self.m, "post_rewards", job.id, tree.root, total, "bafkreirewards",
                      sender=caller, expect=expect)
        if r is not None:
            job.state = FINALIZING
            job.leaves, job.tree, job.reward_root, job.reward_total = leaves, tree, tree.root, total
            job.challenge_deadline = self.now() + job.terms.challenge_period
            ev = r.event("RewardRootPosted")
            assert (ev["reward_root"], ev["reward_total"], ev["challenge_deadline"]) == (
                tree.root, total, job.challenge_deadline)
        self.touch(job)

    def why_settle(self, job) -> str | None:
        if job.state != FINALIZING:
            return "market: job not finalizing"
        if self.tx_time() < job.challenge_deadline:
            return "market: challenge window open"
        return None

    def do_settle(self, job, caller):
        expect = self.why_settle(job)
        r = self.send("settle", self.m, "settle", job.id, sender=caller, expect=expect)
        if r is not None:
            fee = self.fee(job)
            refund = job.terms.escrow - fee - job.reward_total
            job.state = SETTLED
            job.claim_deadline = self.now() + job.terms.claim_period
            self.pay(self.treasury, fee)
            self.pay(job.requester, refund)
            ev = r.event("JobSettled")
            assert (ev["fee"], ev["refund"], ev["claim_deadline"]) == (fee, refund, job.claim_deadline)
        self.touch(job, self.treasury, job.requester)

    def why_claim(self, job, index, genuine) -> str | None:
        if job.state != SETTLED:
            return "market: job not settled"
        if self.tx_time() >= job.claim_deadline:
            return "market: claim period over"
        if index in job.claimed:
            return "market: already claimed"
        if not genuine:
            return "market: invalid proof"
        if job.claimed_total + job.leaves[index][2] > job.reward_total:
            return "market: claims exceed rewards"
        return None

    def do_claim(self, job, index, leaf, proof, caller, label="claim"):
        genuine = (bool(job.leaves) and index < len(job.leaves) and tuple(leaf) == tuple(job.leaves[index])
                   and list(proof) == job.tree.proof(index))
        expect = self.why_claim(job, index, genuine)
        r = self.send(label, self.m, "claim", job.id, *leaf, proof, sender=caller, expect=expect)
        if r is not None:
            _, account, amount, delta = leaf
            job.claimed.add(index)
            job.claimed_total += amount
            role, released = self.release(job, account)
            if delta:
                self.reputation[account] += delta
            self.pay(account, amount + released if role == Role.PROVIDER else amount)
            ev = r.event("RewardClaimed")
            assert (ev["account"], ev["index"], ev["amount"], ev["stake_released"]) == (account, index, amount, released)
            # the payment: exactly one Transfer out of the market, to `account`
            transfers = [e for e in r.events if e.name == "Transfer"]
            paid = amount + released if role == Role.PROVIDER else amount
            assert [(e["sender"], e["receiver"], e["value"]) for e in transfers] == (
                [(self.m.address, account, paid)] if paid else [])
        self.dirty_leaves.update({(job.id, index), (job.id, len(job.leaves))})
        self.dirty_reputation.add(leaf[1])
        self.touch(job, leaf[1])
        self.touch_stake(leaf[1], job.member.get(leaf[1], [0, 0])[0])

    def why_sweep(self, job) -> str | None:
        if job.state != SETTLED:
            return "market: job not settled"
        if self.tx_time() < job.claim_deadline:
            return "market: claim period open"
        if job.reward_total == job.claimed_total:
            return "market: nothing to sweep"
        return None

    def do_sweep(self, job, caller):
        expect = self.why_sweep(job)
        r = self.send("sweep", self.m, "sweep", job.id, sender=caller, expect=expect)
        if r is not None:
            left = job.reward_total - job.claimed_total
            job.claimed_total = job.reward_total
            self.pay(job.requester, left)
            assert r.event("UnclaimedSwept")["amount"] == left
        self.touch(job, job.requester)

    def why_cancel(self, job, caller) -> str | None:
        if job.state != OPEN:
            return "market: job not open"
        if caller.address != job.requester or job.providers:
            if self.tx_time() < job.terms.join_deadline:
                return "market: join window still open"
            if not (len(job.providers) < job.terms.min_providers or not job.accepted):
                return "market: enough providers joined"
        return None

    def do_cancel(self, job, caller):
        expect = self.why_cancel(job, caller)
        r = self.send("cancel", self.m, "cancel", job.id, sender=caller, expect=expect)
        if r is not None:
            job.state = CANCELLED
            self.pay(job.requester, job.terms.escrow)
            assert r.event("JobCancelled")["refund"] == job.terms.escrow
        self.touch(job, job.requester)

    def why_fail(self, job) -> str | None:
        if job.state != TRAINING:
            return "market: job not training"
        if self.tx_time() <= job.round_deadline:
            return "market: deadline not missed"
        return None

    def do_fail(self, job, caller):
        expect = self.why_fail(job)
        r = self.send("fail", self.m, "fail", job.id, sender=caller, expect=expect)
        if r is not None:
            job.state = FAILED
            job.reward_root = ZERO32
            self.pay(job.requester, job.terms.escrow)
            ev = r.event("JobFailed")
            assert (ev["round"], ev["refund"], ev["reason"]) == (job.current_round, job.terms.escrow, "deadline missed")
            amount = job.member[job.aggregator][1]
            job.member[job.aggregator] = [Role.AGGREGATOR | 128, 0]
            slashes = [e for e in r.events if e.name == "StakeSlashed"]
            if amount:
                share = amount * CHALLENGER_BPS // BPS
                self.pay(caller.address, share)
                self.pay(job.requester, amount - share)
                assert [(e["amount"], e["challenger"], e["challenger_share"]) for e in slashes] == [
                    (amount, caller.address, share)]
            else:
                assert slashes == []
        self.touch(job, job.requester, caller.address, job.aggregator)
        self.touch_stake(job.aggregator, Role.AGGREGATOR)

    def why_release(self, job, account) -> str | None:
        if job.state not in OVER:
            return "market: job still running"
        if job.member.get(account, [0, 0])[1] == 0:
            return "market: no stake locked"
        return None

    def do_release(self, job, account, caller):
        expect = self.why_release(job, account)
        r = self.send("release_stake", self.m, "release_stake", job.id, account, sender=caller, expect=expect)
        if r is not None:
            role, amount = self.release(job, account)
            if role == Role.PROVIDER:
                self.pay(account, amount)
            ev = r.event("StakeReleased")
            assert (ev["account"], ev["role"], ev["amount"]) == (account, role, amount)
        self.touch(job, account)
        self.touch_stake(account, job.member.get(account, [0, 0])[0])

    def do_deposit(self, account, role, amount):
        expect = None
        if not 1 <= role <= 3:
            expect = "market: bad role"
        elif amount == 0:
            expect = "market: amount is zero"
        r = self.send("deposit", self.m, "deposit", role, amount, sender=account, expect=expect)
        if r is not None:
            self.free[(account.address, role)] += amount
            self.wallet[account.address] -= amount
            ev = r.event("StakeDeposited")
            assert (ev["account"], ev["role"], ev["amount"]) == (account.address, role, amount)
        self.touch(None, account.address)
        self.touch_stake(account.address, role)

    def do_unbond(self, account, role, amount):
        expect = None
        if amount == 0:
            expect = "market: amount is zero"
        elif self.free[(account.address, role)] < amount:
            expect = "market: not enough free stake"
        r = self.send("request_unbond", self.m, "request_unbond", role, amount, sender=account, expect=expect)
        if r is not None:
            self.free[(account.address, role)] -= amount
            entry = self.unbonding.setdefault((account.address, role), [0, 0])
            entry[0] += amount
            entry[1] = self.now() + self.unbonding_delay
            ev = r.event("UnbondRequested")
            assert (ev["amount"], ev["release_time"]) == (amount, entry[1])
        self.touch(None, account.address)
        self.touch_stake(account.address, role)

    def do_withdraw(self, account, role):
        amount, release = self.unbonding.get((account.address, role), [0, 0])
        expect = None
        if amount == 0:
            expect = "market: nothing unbonding"
        elif self.tx_time() < release:
            expect = "market: still unbonding"
        r = self.send("withdraw", self.m, "withdraw", role, sender=account, expect=expect)
        if r is not None:
            del self.unbonding[(account.address, role)]
            self.pay(account.address, amount)
            assert r.event("StakeWithdrawn")["amount"] == amount
        self.touch(None, account.address)
        self.touch_stake(account.address, role)

    # ------------------------------------------------------------------ setup
    def draw_rewards(self, data, job):
        """Leaves for the job's providers (and maybe its aggregator and validators), within budget."""
        accounts = list(job.providers)
        if data.draw(st.booleans(), label="leaves for aggregator and validators"):
            accounts += [job.aggregator, *job.validators]
        budget = job.terms.escrow - self.fee(job)
        share = budget // len(accounts)
        mode = data.draw(st.sampled_from(["random", "whole budget", "whole budget", "zero", "over-committed"]),
                         label="reward mode")
        if mode == "random":
            amounts = [data.draw(st.integers(0, share), label="amount") for _ in accounts]
        elif mode in ("whole budget", "over-committed"):
            amounts = [share] * len(accounts)
            amounts[-1] += budget - sum(amounts)
        else:
            amounts = [0] * len(accounts)
        deltas = [data.draw(st.integers(-3, 3), label="reputation delta") for _ in accounts]
        excess = 0
        if mode == "over-committed":  # the root promises more than the total it declares
            declared = data.draw(st.sampled_from([0, share, max(budget - 1, 0)]), label="declared total")
            excess = min(declared, budget) - budget
        return accounts, amounts, deltas, excess

    def attest_all(self, job, round_):
        if job.validators:
            self.do_attest(job, round_, [self.acct[v] for v in job.validators])

    def drive(self, data, stage):
        """Post a job and move it, with valid calls only, to `stage`, probing a few guarantees on the way."""
        requester = data.draw(st.sampled_from(self.requesters), label="requester")
        terms = data.draw(job_terms(self.aggregator.address, self.now()), label="terms")
        job = self.do_post(requester, terms)
        if stage == "cancelled":
            if data.draw(st.booleans(), label="cancelled by its requester before anyone joined"):
                self.do_cancel(job, self.acct[job.requester])
            else:  # accepted, too few providers by the join deadline: anyone cancels
                self.do_accept(job, self.aggregator)
                for p in self.providers[: terms.min_providers - 1]:
                    self.do_join(job, p)
                self.advance(terms.join_deadline - self.tx_time())
                self.do_cancel(job, self.w["outsider"])
            assert job.state == CANCELLED
            return
        depth = STAGES.index({"failed": "training", "swept": "settled"}.get(stage, stage))
        if depth >= STAGES.index("accepted"):
            self.do_accept(job, self.aggregator)
        if depth >= STAGES.index("ready"):
            n = data.draw(st.integers(terms.min_providers, terms.max_providers), label="providers")
            for p in data.draw(st.permutations(self.providers), label="who joins")[:n]:
                self.do_join(job, p)
            n_v = data.draw(st.integers(0, terms.max_validators), label="validators")
            for v in self.validators[:n_v]:
                self.do_join_validator(job, v, max(terms.validator_stake, 1) + data.draw(st.sampled_from([0, 5 * TOKEN])))
        if depth >= STAGES.index("training"):
            self.do_start(job, self.aggregator)
            done = terms.rounds
            if depth < STAGES.index("finalizing"):  # often ready for its reward root, sometimes mid-way
                done = data.draw(st.sampled_from([terms.rounds, terms.rounds, *range(terms.rounds)]), label="rounds done")
            for r in range(done):
                self.do_submit(job, self.aggregator, r, len(job.providers))
                self.attest_all(job, r)
        if stage == "failed":  # the aggregator goes silent; anyone fails the job after the deadline
            self.do_release(job, data.draw(st.sampled_from(sorted(job.member)), label="stake"), self.w["outsider"])
            self.advance(job.round_deadline + 1 - self.tx_time())
            self.do_fail(job, data.draw(st.sampled_from(self.everyone), label="caller"))
            assert job.state == FAILED
            return
        if depth >= STAGES.index("finalizing"):
            self.do_post_rewards(job, self.aggregator, *self.draw_rewards(data, job))
            # a stake locked in a running job stays locked, whoever asks
            self.do_release(job, data.draw(st.sampled_from(sorted(job.member)), label="stake"), self.w["outsider"])
        if depth >= STAGES.index("settled"):
            self.advance(job.challenge_deadline - self.tx_time())
            self.do_settle(job, self.w["outsider"])
            i = data.draw(st.integers(0, len(job.leaves) - 1), label="leaf")
            account = job.leaves[i][1]
            self.do_claim(job, i, job.leaves[i], job.tree.proof(i), self.w["outsider"])
            self.do_claim(job, i, job.leaves[i], job.tree.proof(i), self.acct.get(account, self.w["outsider"]),
                          label="claim again")
            j = (i + 1) % len(job.leaves)
            forged = (j, job.leaves[j][1], job.leaves[j][2] + 1, job.leaves[j][3])
            self.do_claim(job, j, forged, job.tree.proof(j), self.w["outsider"], label="claim forged")
        if stage == "swept":  # the claim period ends; what is left goes back to the requester
            self.advance(job.claim_deadline - self.tx_time())
            self.do_sweep(job, self.w["outsider"])
            assert job.claimed_total == job.reward_total
            return
        assert job.state == {"open": OPEN, "accepted": OPEN, "ready": OPEN, "training": TRAINING,
                             "finalizing": FINALIZING, "settled": SETTLED}[stage]

    def advance(self, seconds):
        self.healthy = False
        if seconds:
            self.chain.advance_time(seconds)

    def wait(self, data, deadline: int, label: str):
        """Sometimes let time pass until the next transaction runs at `deadline` (or later)."""
        if deadline > self.tx_time() and data.draw(st.integers(0, 3), label=f"wait for {label}") > 0:
            self.advance(deadline - self.tx_time())

    @initialize(
        stakes=st.lists(st.tuples(st.integers(0, 10), st.sampled_from([1, 2, 3]), st.sampled_from([1, 40 * TOKEN]),
                                  st.sampled_from([0, 1, 2])), max_size=3),
        matured=st.booleans(),
        stages=st.lists(st.sampled_from(SETUP_STAGES), max_size=2).map(lambda more: ["settled", "failed", *more]),
        data=st.data(),
    )
    def setup(self, stakes, matured, stages, data):
        """Some free and unbonding stake, then a few jobs already at various stages."""
        for who, role, amount, unbond in stakes:
            account = self.stakers[who]
            self.do_deposit(account, role, amount)
            if unbond:
                self.do_unbond(account, role, amount // unbond)
        if matured and self.unbonding:
            self.advance(self.unbonding_delay)
            (address, role), _ = next(iter(self.unbonding.items()))
            self.do_withdraw(self.acct[address], role)
        # the stages that move time go first, so that the jobs posted later keep their windows
        for stage in sorted(stages, key=SETUP_ORDER.index):
            self.drive(data, stage)

    # ------------------------------------------------------------------ rules
    @precondition(lambda self: len(self.jobs) < MAX_JOBS)
    @rule(data=st.data())
    def post_job(self, data):
        requester = data.draw(st.sampled_from(self.requesters), label="requester")
        terms = data.draw(job_terms(self.aggregator.address, self.now()), label="terms")
        self.do_post(requester, terms)

    @rule(data=st.data(), case=st.sampled_from(INVALID_TERMS))
    def post_job_invalid(self, data, case):
        over, reason = case
        requester = data.draw(st.sampled_from(self.requesters), label="requester")
        terms = data.draw(job_terms(self.aggregator.address, self.now()), label="terms")
        over = {k: requester.address if v == "requester" else self.tx_time() if v == "now" else v for k, v in over.items()}
        cid = over.pop("cid", "bafkreispec")
        self.do_post(requester, JobTerms(**{**terms.__dict__, **over}), expect=reason, cid=cid)

    @precondition(lambda self: self.some(OPEN))
    @rule(data=st.data())
    def accept(self, data):
        job = self.pick(data, lambda j: self.why_accept(j, self.aggregator) is None)
        caller = data.draw(st.sampled_from([self.aggregator, self.aggregator, self.providers[0]]), label="caller")
        self.do_accept(job, caller)

    @precondition(lambda self: self.some(OPEN))
    @rule(data=st.data())
    def join(self, data):
        job = self.pick(data, lambda j: j.state == OPEN and len(j.providers) < j.terms.max_providers)
        account = data.draw(st.sampled_from([*self.providers, self.aggregator]), label="provider")
        self.do_join(job, account)

    @precondition(lambda self: self.some(OPEN))
    @rule(data=st.data())
    def join_validator(self, data):
        job = self.pick(data, lambda j: j.state == OPEN and len(j.validators) < j.terms.max_validators)
        account = data.draw(st.sampled_from([*self.validators, *self.requesters]), label="validator")
        stake = data.draw(st.sampled_from([0, job.terms.validator_stake - 1, job.terms.validator_stake,
                                           job.terms.validator_stake + 2 * TOKEN]), label="stake")
        self.do_join_validator(job, account, max(stake, 0))

    @precondition(lambda self: self.some(OPEN))
    @rule(data=st.data())
    def start(self, data):
        job = self.pick(data, lambda j: self.why_start(j, self.aggregator) is None)
        caller = data.draw(st.sampled_from([self.aggregator, self.acct[job.requester], self.w["outsider"],
                                            self.providers[1]]), label="caller")
        if job.state == OPEN and caller.address not in (job.aggregator, job.requester):
            self.wait(data, job.terms.join_deadline, "the join deadline")
        self.do_start(job, caller)

    @precondition(lambda self: self.some(TRAINING))
    @rule(data=st.data())
    def submit_round(self, data):
        job = self.pick(data, lambda j: j.state == TRAINING and j.current_round < j.terms.rounds)
        caller = data.draw(st.sampled_from([self.aggregator] * 4 + [self.providers[0]]), label="caller")
        round_ = job.current_round + data.draw(st.sampled_from([0, 0, 0, 1]), label="round offset")
        n = len(job.providers)
        count = data.draw(st.sampled_from([max(n, 1), 1, n + 1]), label="count")
        if data.draw(st.booleans(), label="validators attest first") and job.current_round > 0:
            self.attest_all_missing(job, job.current_round - 1)
        if self.why_submit(job, caller, round_, count) is None and data.draw(st.booleans(), label="probe"):
            self.do_submit(job, caller, round_ + 1, count)  # a round ahead: must revert, change nothing
        self.do_submit(job, caller, round_, count)

    def attest_all_missing(self, job, round_):
        missing = [self.acct[v] for v in job.validators if v not in job.attested.get(round_, ())]
        if missing and round_ in job.rounds_data:
            self.do_attest(job, round_, missing)

    @precondition(lambda self: any(j.rounds_data for j in self.jobs.values()))
    @rule(data=st.data())
    def attest(self, data):
        job = data.draw(st.sampled_from([j for j in self.jobs.values() if j.rounds_data]), label="job")
        round_ = data.draw(st.sampled_from(sorted(job.rounds_data)), label="round")
        pool = [self.acct[v] for v in job.validators] + [self.providers[0]]
        signers = data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3, unique=True), label="signers")
        self.do_attest(job, round_, signers)

    @precondition(lambda self: self.some(TRAINING))
    @rule(data=st.data())
    def post_rewards(self, data):
        job = self.pick(data, lambda j: j.state == TRAINING and j.current_round == j.terms.rounds)
        caller = data.draw(st.sampled_from([self.aggregator] * 4 + [self.w["outsider"]]), label="caller")
        if data.draw(st.booleans(), label="validators attest first") and job.current_round > 0:
            self.attest_all_missing(job, job.current_round - 1)
        accounts, amounts, deltas, excess = (self.draw_rewards(data, job) if job.providers
                                             else ([job.aggregator], [0], [0], 0))
        if data.draw(st.booleans(), label="probe: one wei over the budget first"):
            over = job.terms.escrow - self.fee(job) - sum(amounts) + 1
            self.do_post_rewards(job, caller, accounts, amounts, deltas, over)
        self.do_post_rewards(job, caller, accounts, amounts, deltas, excess)

    @rule(seconds=st.sampled_from([1, 60, 150, 400, 800, 1600]))
    def advance_time(self, seconds):
        self.advance(seconds)

    @precondition(lambda self: self.some(FINALIZING))
    @rule(data=st.data())
    def settle(self, data):
        job = self.pick(data, lambda j: j.state == FINALIZING)
        if job.state == FINALIZING:
            self.wait(data, job.challenge_deadline, "the end of the challenge window")
        self.do_settle(job, data.draw(st.sampled_from(self.everyone), label="caller"))

    @precondition(lambda self: self.some(SETTLED))
    @rule(data=st.data())
    def claim(self, data):
        job = self.pick(data, lambda j: j.state == SETTLED and len(j.claimed) < len(j.leaves))
        caller = data.draw(st.sampled_from(self.everyone), label="caller")
        if not job.leaves:  # not finalized yet: any leaf must be refused
            self.do_claim(job, 0, (0, self.providers[0].address, 1, 0), [], caller)
            return
        unclaimed = [i for i in range(len(job.leaves)) if i not in job.claimed] or list(range(len(job.leaves)))
        leaves = data.draw(st.lists(st.sampled_from(unclaimed), min_size=1, max_size=3, unique=True), label="leaves")
        for i in leaves:
            self.do_claim(job, i, job.leaves[i], job.tree.proof(i), caller)
        if data.draw(st.booleans(), label="claim one again"):
            i = leaves[0]
            self.do_claim(job, i, job.leaves[i], job.tree.proof(i), self.w["outsider"], label="claim again")

    @precondition(lambda self: any(j.leaves for j in self.jobs.values()))
    @rule(data=st.data(), kind=st.sampled_from(["again", "amount", "account", "delta", "index", "proof"]))
    def claim_bad(self, data, kind):
        """A second claim of a paid leaf, or a claim of a forged leaf or proof: reverts, changes nothing."""
        claimed = [j for j in self.jobs.values() if j.claimed]
        if kind == "again" and claimed:
            job = data.draw(st.sampled_from(claimed), label="job")
            i = data.draw(st.sampled_from(sorted(job.claimed)), label="leaf")
            assert self.m.call("is_claimed", job.id, i)
            caller = data.draw(st.sampled_from(self.everyone), label="caller")
            self.do_claim(job, i, job.leaves[i], job.tree.proof(i), caller, label="claim again")
            return
        job = data.draw(st.sampled_from([j for j in self.jobs.values() if j.leaves]), label="job")
        i = data.draw(st.integers(0, len(job.leaves) - 1), label="leaf")
        index, account, amount, delta = job.leaves[i]
        proof = job.tree.proof(i)
        if kind == "account":
            account = self.w["outsider"].address
        elif kind == "delta":
            delta += 1
        elif kind == "index":
            index = len(job.leaves) + 3
        elif kind == "proof":
            proof = [keccak(b"forged")] + proof
        else:
            amount += 1
        self.do_claim(job, index, (index, account, amount, delta), proof, self.w["outsider"], label="claim forged")

    @precondition(lambda self: self.some(SETTLED))
    @rule(data=st.data())
    def sweep(self, data):
        job = self.pick(data, lambda j: j.state == SETTLED and j.claimed_total < j.reward_total)
        if job.state == SETTLED:
            self.wait(data, job.claim_deadline, "the end of the claim period")
        self.do_sweep(job, data.draw(st.sampled_from(self.everyone), label="caller"))

    @precondition(lambda self: self.some(OPEN))
    @rule(data=st.data())
    def cancel(self, data):
        job = self.pick(data, lambda j: j.state == OPEN)
        caller = data.draw(st.sampled_from([self.acct[job.requester], self.w["outsider"], self.providers[2]]),
                           label="caller")
        if job.state == OPEN:
            self.wait(data, job.terms.join_deadline, "the join deadline")
        self.do_cancel(job, caller)

    @precondition(lambda self: self.some(TRAINING))
    @rule(data=st.data())
    def fail(self, data):
        job = self.pick(data, lambda j: j.state == TRAINING)
        if job.state == TRAINING:
            self.wait(data, job.round_deadline + 1, "a missed deadline")
        self.do_fail(job, data.draw(st.sampled_from(self.everyone), label="caller"))

    @precondition(lambda self: any(j.member for j in self.jobs.values()))
    @rule(data=st.data())
    def release_stake(self, data):
        """Releases a stake: one of a finished job, or one still locked in a running job (which must stay)."""
        running = [j for j in self.jobs.values() if j.state in RUNNING and j.locked()]
        releasable = [(j, a) for j in self.jobs.values() if j.state in OVER for a, (_, amt) in j.member.items() if amt]
        which = data.draw(st.sampled_from(["releasable", "releasable", "running", "any"]), label="which stake")
        if which == "releasable" and releasable:
            job, account = data.draw(st.sampled_from(releasable), label="stake")
            caller = data.draw(st.sampled_from(self.everyone), label="caller")
        elif which == "running" and running:
            job = data.draw(st.sampled_from(running), label="job")
            account = data.draw(st.sampled_from([a for a, (_, amt) in job.member.items() if amt]), label="account")
            caller = data.draw(st.sampled_from([self.acct[account], self.w["outsider"]]), label="caller")
        else:
            job = data.draw(st.sampled_from([j for j in self.jobs.values() if j.member]), label="job")
            account = data.draw(st.sampled_from([*job.member, self.w["outsider"].address]), label="account")
            caller = data.draw(st.sampled_from(self.everyone), label="caller")
        self.do_release(job, account, caller)

    @rule(data=st.data())
    def deposit(self, data):
        account = data.draw(st.sampled_from(self.stakers), label="account")
        role = data.draw(st.sampled_from([1, 2, 3, 1, 2, 3, 0, 4]), label="role")
        amount = data.draw(st.sampled_from([0, 1, 3 * TOKEN, 60 * TOKEN]), label="amount")
        self.do_deposit(account, role, amount)

    @rule(data=st.data())
    def request_unbond(self, data):
        funded = sorted(k for k, v in self.free.items() if v)
        if funded and data.draw(st.booleans(), label="funded one"):
            address, role = data.draw(st.sampled_from(funded), label="free stake")
            account = self.acct[address]
        else:
            account = data.draw(st.sampled_from(self.stakers), label="account")
            role = data.draw(st.sampled_from([1, 2, 3]), label="role")
        free = self.free[(account.address, role)]
        amount = data.draw(st.sampled_from([free, free // 2, 1, free + 1, 0]), label="amount")
        self.do_unbond(account, role, amount)

    @rule(data=st.data())
    def withdraw(self, data):
        pending = [k for k, (amount, _) in self.unbonding.items() if amount]
        if pending and data.draw(st.integers(0, 3), label="pending one") > 0:
            address, role = data.draw(st.sampled_from(pending), label="unbonding")
            account = self.acct[address]
        else:
            account = data.draw(st.sampled_from(self.stakers), label="account")
            role = data.draw(st.sampled_from([1, 2, 3]), label="role")
        if (account.address, role) in self.unbonding:
            self.wait(data, self.unbonding[(account.address, role)][1], "the unbonding delay")
        self.do_withdraw(account, role)

    # ------------------------------------------------------------------ invariants
    @invariant()
    def ledger_matches_chain(self):
        self.check_ledger()
        self.healthy = True

    def check_ledger(self, rounds: bool = False):
        m, token = self.m, self.token
        # nothing minted or burnt
        assert int(token.call("totalSupply")) == self.supply
        # the ghost conserves tokens on its own ...
        owed = self.ghost_market_balance()
        assert sum(self.wallet.values()) + owed == self.supply
        # ... and the market holds exactly what the ghost says it owes
        assert int(token.call("balanceOf", m.address)) == owed
        for job in self.jobs.values():
            self.observe(job)
            if job.state in RUNNING:  # locked stakes stay untouched while the job runs
                assert {a: amt for a, (_, amt) in job.member.items()} == job.staked
            assert job.claimed_total <= job.reward_total
        for job_id in sorted(self.dirty_jobs):
            self.check_job(self.jobs[job_id], rounds)
        for job_id, address in sorted(self.dirty_members):
            role, amount = self.jobs[job_id].member.get(address, [0, 0])
            assert m.call("membership", job_id, address) == (role, amount), (job_id, address)
        for job_id, i in sorted(self.dirty_leaves):
            assert m.call("is_claimed", job_id, i) == (i in self.jobs[job_id].claimed), (job_id, i)
        for address in sorted(self.dirty_accounts):
            assert int(token.call("balanceOf", address)) == self.wallet[address], address
        for address in sorted(self.dirty_reputation):
            assert int(m.call("reputation", address)) == self.reputation[address], address
        for address, role in sorted(self.dirty_stakes):
            assert int(m.call("free_stake", address, role)) == self.free[(address, role)], (address, role)
            amount, release = self.unbonding.get((address, role), [0, 0])
            u = m.call("unbonding", address, role)
            assert (u["amount"], u["release_time"]) == (amount, release), (address, role)
        for dirty in (self.dirty_jobs, self.dirty_accounts, self.dirty_stakes, self.dirty_members, self.dirty_leaves,
                      self.dirty_reputation):
            dirty.clear()

    def check_job(self, job: GhostJob, rounds: bool):
        c = self.m.call("jobs", job.id)
        expected = {
            "requester": job.requester,
            "aggregator": job.aggregator,
            "state": int(job.state),
            "escrow": job.terms.escrow,
            "n_providers": len(job.providers),
            "n_validators": len(job.validators),
            "validator_total_stake": job.validator_total,
            "accepted": job.accepted,
            "current_round": job.current_round,
            "round_deadline": job.round_deadline,
            "reward_root": job.reward_root,
            "reward_total": job.reward_total,
            "claimed_total": job.claimed_total,
            "challenge_deadline": job.challenge_deadline,
            "claim_deadline": job.claim_deadline,
        }
        assert {k: c[k] for k in expected} == expected
        if rounds:
            for r, data in job.rounds_data.items():
                assert self.m.call("round_commitment", job.id, r) == keccak(
                    b"".join([data[0], data[1], data[2].to_bytes(32, "big"), data[3]]))
                assert self.dep.disputes.call("attested_stake", job.id, r) == job.attested_stake[r]


MUST_SUCCEED = [
    "post_job", "accept", "join", "join_validator", "start", "submit_round", "attest", "post_rewards",
    "settle", "claim", "sweep", "cancel", "fail", "release_stake", "deposit", "request_unbond", "withdraw",
]
MUST_REVERT = [
    ("claim again|claim", "market: already claimed"),
    ("release_stake", "market: job still running"),
    ("claim forged", "market: invalid proof"),
    ("request_unbond", "market: not enough free stake"),
]


def test_market_invariants(boa_world):
    MarketMachine.world = boa_world
    OUTCOMES.clear()
    run_state_machine_as_test(
        MarketMachine,
        settings=settings(
            max_examples=30,
            stateful_step_count=40,
            deadline=None,
            database=None,
            derandomize=True,  # the same histories every run: the coverage check below cannot flake
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
        ),
    )
    # the machine must actually have reached every transition (no vacuous run)
    missing = [fn for fn in MUST_SUCCEED if OUTCOMES[(fn, "ok")] == 0]
    missing += [(fn, why) for fn, why in MUST_REVERT if not any(OUTCOMES[(f, why)] for f in fn.split("|"))]
    assert not missing, f"never exercised: {missing}"


def test_claims_of_one_job_never_reach_other_jobs_funds(world):
    """A reward root whose leaves are worth more than the reward_total it declares (the aggregator's word,
    unchecked when posted) pays its leaves only up to that total: never out of other jobs' escrow."""
    chain, dep, m = world["chain"], world["dep"], world["dep"].market
    requester, aggregator, outsider = world["requester"], world["aggregator"], world["outsider"]
    accomplice, other = world["providers"][0], world["providers"][1]

    def post(escrow):
        terms = JobTerms(
            spec_hash=keccak(b"spec"), aggregator=aggregator.address, escrow=escrow, provider_stake=0,
            aggregator_stake=0, validator_stake=0, min_providers=2, max_providers=2, max_validators=0, rounds=1,
            join_deadline=chain.timestamp() + 1_000, round_duration=500, challenge_period=0, claim_period=1_000,
            rule=0, trim=0, chunk_size=64, licence_price=0,
        )
        return m.transact("post_job", terms.abi(), "bafkreispec", sender=requester).event("JobPosted")["job_id"]

    victim = post(1_000 * TOKEN)  # an honest job, open, its escrow held by the market
    bad = post(500 * TOKEN)
    m.transact("accept", bad, sender=aggregator)
    m.transact("join", bad, sender=accomplice)
    m.transact("join", bad, sender=other)
    m.transact("start", bad, sender=aggregator)
    m.transact("submit_round", bad, 0, keccak(b"m"), "bafkreimodel", keccak(b"u"), 2, ZERO32, 0, sender=aggregator)
    leaves = [(0, accomplice.address, 200 * TOKEN, 0), (1, other.address, 200 * TOKEN, 0)]
    tree = MerkleTree([reward_leaf(*leaf) for leaf in leaves])
    m.transact("post_rewards", bad, tree.root, 300 * TOKEN, "bafkreirewards", sender=aggregator)  # declares 300
    m.transact("settle", bad, sender=outsider)
    assert dep.balance(m.address) == 1_000 * TOKEN + 300 * TOKEN
    m.transact("claim", bad, *leaves[0], tree.proof(0), sender=outsider)
    with pytest.raises(ContractRevert, match="market: claims exceed rewards"):
        m.transact("claim", bad, *leaves[1], tree.proof(1), sender=outsider)
    assert not m.call("is_claimed", bad, 1) and dep.job(bad)["claimed_total"] == 200 * TOKEN
    assert dep.balance(m.address) == 1_000 * TOKEN + 100 * TOKEN
    chain.advance_time(1_000)
    assert m.transact("sweep", bad, sender=outsider).event("UnclaimedSwept")["amount"] == 100 * TOKEN
    assert dep.balance(m.address) == 1_000 * TOKEN  # exactly the victim's escrow is left
    assert m.transact("cancel", victim, sender=requester).event("JobCancelled")["refund"] == 1_000 * TOKEN
    assert dep.balance(m.address) == 0
