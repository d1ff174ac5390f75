"""The in-process job driver: one job from posting to the last claim with every role as an object
in this process, each step named. `runner.run_job` (the demo), the benchmarks and the
end-to-end tests all drive jobs through it, honest or not (any role can be swapped for a
cheating subclass)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .chain import Account, Chain, Receipt
from .errors import ContractRevert, FedMarketError, SecAggAbort
from .market import Deployment, JobState
from .memory import Trimmer
from .protocol import rules as R
from .roles import Aggregator, Provider, Requester, Validator
from .roles.auditor import Auditor
from .roles.challenger import Challenger
from .roles.common import claim_reward, committed_rounds, fail_job
from .roles.games import Defender, job_games
from .roles.sealed import seal_and_reveal, sealed
from .roles.settlement import post_orphaned_root, root_orphaned
from .roles.validator import submit_attestations, submit_misbehaviour, submit_rejections
from .spec import JobSpec
from .storage import BlobStore, Mailbox

Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass
class Cast:
    """Who plays the job: one object per role (any of them may be a cheating subclass)."""

    requester: Requester
    aggregator: Aggregator
    providers: list[Provider]
    validators: list[Validator] = field(default_factory=list)
    challenger: Challenger | None = None

    @property
    def accounts(self) -> list[str]:
        out = [self.requester.account.address, self.aggregator.address, *(p.address for p in self.providers),
               *(v.address for v in self.validators)]
        return out + ([self.challenger.account.address] if self.challenger else [])


@dataclass
class RoundPlan:
    """Which providers vanish in a round, and at which secure-aggregation stage ("keys", "mask", "unmask")."""

    gone: dict[int, str] = field(default_factory=dict)

    def active(self, i: int, stage: str) -> bool:
        order = ("keys", "mask", "unmask")
        return i not in self.gone or order.index(stage) < order.index(self.gone[i])


class JobDriver:
    """Runs one job with a `Cast` on a deployed market: `open`, `round` for each round, `finish`."""

    def __init__(self, dep: Deployment, store: BlobStore, mailbox: Mailbox, cast: Cast, spec: JobSpec,
                 progress: Progress | None = None):
        self.dep = dep
        self.chain: Chain = dep.chain
        self.store = store
        self.mailbox = mailbox
        self.cast = cast
        self.spec = spec
        self.tick = progress or (lambda stage, done, total: None)
        self.job_id = 0
        self.round_gas: list[int] = []
        self.claim_gas: list[int] = []
        self.slashed: list[Receipt] = []
        self.games: list[Receipt] = []
        self.verified: set[int] = set()  # rounds the challenger recomputed and found right
        self._trimmer = Trimmer(interval=0)  # after a round, while releases stay 5% of the time

    # ---- opening ------------------------------------------------------------------------------

    def open(self) -> int:
        """Post the job, the aggregator accepts it, providers and validators join, training starts."""
        c = self.cast
        self.job_id = c.requester.post(self.spec, c.aggregator.address)
        c.aggregator.accept(self.job_id)
        for i, p in enumerate(c.providers):
            p.join(self.job_id)
            self.tick("join", i + 1, len(c.providers))
        for v in c.validators:
            v.join(self.job_id)
        c.aggregator.start(self.job_id)
        return self.job_id

    @property
    def state(self) -> JobState:
        return self.dep.job(self.job_id)["state"]

    @property
    def running(self) -> bool:
        return self.state in (JobState.TRAINING, JobState.FINALIZING)

    # ---- one round ----------------------------------------------------------------------------

    def round(self, r: int, plan: RoundPlan | None = None) -> Receipt | None:
        """Providers train (the secure phases around it in secure modes), the aggregator commits,
        validators review, attest and reveal, and the challenger proves what it can; returns the
        round's commit receipt (None if the job stopped first)."""
        plan = plan or RoundPlan()
        receipt = self._train_and_commit(r, plan)
        self.round_gas.append(receipt.gas_used)
        self._review(r)
        self.challenge()
        self._trimmer.maybe()  # a round's vectors are garbage now: hand their heap back (memory.py)
        self.tick("rounds", r + 1, self.spec.training.rounds)
        return receipt

    def _train_and_commit(self, r: int, plan: RoundPlan) -> Receipt:
        job, c = self.job_id, self.cast
        secure = self.spec.privacy.secure
        if secure:
            for phase in ("advertise", "share"):
                for i, p in enumerate(c.providers):
                    if plan.active(i, "keys"):
                        self._secure_step(getattr(p, phase), r)
        for i, p in enumerate(c.providers):
            if plan.active(i, "mask"):
                self._secure_step(p.train, r)
        if sealed(self.spec):  # the commitments are sealed before any update is revealed
            seal_and_reveal(c.aggregator, c.providers, job, r, self.spec)
        if secure:
            for i, p in enumerate(c.providers):  # who masked, as each provider sees it before the survivor set
                if plan.active(i, "unmask"):
                    self._secure_step(p.watch_uploads, r)
            try:
                c.aggregator.secure_survivors(job, r)
            except SecAggAbort:
                return c.aggregator.run_round(job, r)  # too few masked updates: the round keeps the model
            for phase in ("confirm", "unmask"):  # the consistency check, then the answers
                for i, p in enumerate(c.providers):
                    if plan.active(i, "unmask"):
                        self._secure_step(getattr(p, phase), r)
        return c.aggregator.run_round(job, r)

    def _secure_step(self, step, r: int) -> None:
        """A provider's step of a round; in a secure round a provider that finds too few neighbours
        (SecAggAbort) stays out of the round, as SecAgg+ says, and the others go on."""
        try:
            step(self.job_id, r)
        except SecAggAbort:
            if not self.spec.privacy.secure:
                raise

    def _review(self, r: int) -> None:
        """Validators recompute the round and vote; their scores are revealed once the votes close
        (`_approve`)."""
        if not self.cast.validators or not self.running:
            return
        for v in self.cast.validators:
            v.review(self.job_id, r)
        sender = self.cast.aggregator.account
        submit_attestations(self.dep, self.mailbox, sender, self.job_id, r)
        submit_rejections(self.dep, self.mailbox, sender, self.job_id, r)
        for v in self.cast.validators:  # whatever the aggregator put on chain, each vote gets there
            v.submit_own_vote(self.job_id, r)

    # ---- disputes -----------------------------------------------------------------------------

    def challenge(self) -> None:
        """The challenger (if any) opens games on what it can prove and every game is played to
        its end: honest defenders answer, a silent side loses at its deadline."""
        ch = self.cast.challenger
        if ch is None or not self.running:
            return
        self.slashed += ch.check_equivocation(self.job_id, self.mailbox)
        if ch.check_seals(self.job_id, self.mailbox) is not None:
            return  # the aggregator sealed a round twice: the job failed
        for opened in (ch.check(self.job_id, self.verified, self.mailbox), *ch.check_censorship(self.job_id, self.mailbox), ch.check_rewards(self.job_id)):
            if opened is not None:
                self.games.append(opened)
                self.play_games()

    def play_games(self, max_moves: int = 500) -> None:
        """Alternate the defender's and the challenger's moves until no game of the job is open;
        when nobody can move, time runs to the next deadline and the silent side loses."""
        ch = self.cast.challenger
        for _ in range(max_moves):
            games = job_games(self.dep, self.job_id)
            if not games:
                return
            moved = self._defend()
            if ch is not None:
                moved += ch.play(self.job_id)
            if not moved:
                deadline = min(g.deadline for g in games)
                self.chain.advance_time(max(1, deadline - self.chain.timestamp() + 1))
        raise FedMarketError(f"job {self.job_id}: games still open after {max_moves} moves")

    def _defend(self) -> list[Receipt]:
        """The aggregator answers its games; a provider or validator that posted a replacement
        reward root answers the games on it."""
        out: list[Receipt] = []
        defenders = [self.cast.aggregator.defend]
        defenders += [Defender(self.dep, m.account, self.store).respond for m in (*self.cast.providers, *self.cast.validators)
                      if any(g.defender == m.account.address for g in job_games(self.dep, self.job_id))]
        for respond in defenders:
            try:
                out += respond(self.job_id)
            except (ContractRevert, FedMarketError):
                continue  # a defender that cannot show what it committed stays silent and loses
        return out

    # ---- finishing ----------------------------------------------------------------------------

    def finish(self) -> None:
        """Misbehaving providers are slashed, the reward root is posted (approved scores, or the
        provable weight basis), disputed if wrong, and the job settles; everyone claims and the
        model is minted. A job that failed releases every stake instead."""
        if self.state == JobState.TRAINING and not root_orphaned(self.dep, self.job_id):
            self._judge_and_post()
        if self.state == JobState.FINALIZING:
            self.challenge()
        auditor = Auditor(self.dep, self.store, self.mailbox)  # each round's checked members, or re-derived
        for member in self.cast.providers:  # the aggregator is out: the providers post the root themselves
            if not root_orphaned(self.dep, self.job_id):
                break
            if R.is_slashed(self.dep.market.call("membership", self.job_id, member.address)[0]):
                continue
            self._approve()
            post_orphaned_root(self.dep, self.store, self.mailbox, member.account, self.job_id, self.spec,
                               lambda r: auditor.members(self.job_id, r))
            self.challenge()
        if self.state == JobState.FINALIZING:
            self.chain.advance_time(self.spec.deadlines.challenge_period)
            self.cast.requester.settle(self.job_id)
            self._claim_all()
            self.dep.licence.transact("mint", self.job_id, sender=self.cast.requester.account)
        elif self.state in (JobState.FAILED, JobState.CANCELLED):
            self.release_all()

    def _judge_and_post(self) -> None:
        c = self.cast
        if c.validators:
            for v in c.validators:
                v.report_misbehaviour(self.job_id)
            judge = c.challenger.account if c.challenger else c.aggregator.account
            self.slashed += submit_misbehaviour(self.dep, self.mailbox, judge, self.job_id)
        self._approve()
        c.aggregator.post_rewards(self.job_id)

    def _approve(self) -> None:
        """Validators approve the reward statement they re-derive; with none to approve, time runs
        to the second half of the deadline, where the provable weight basis opens."""
        if not self.cast.validators:
            return
        if not self.dep.disputes.call("votes_closed", self.job_id):  # a vote is missing: they close on time
            self._advance_to(int(self.dep.market.call("votes_close", self.job_id)))
        self.reveal()
        approvals = [v.approve_rewards(self.job_id) for v in self.cast.validators]
        if not any(approvals) and self.spec.rule != R.Rule.SECURE_SUM:
            self._advance_to(int(self.dep.job(self.job_id)["round_deadline"]) - self.spec.deadlines.round_duration // 2)

    def reveal(self) -> None:
        """Validators reveal their scores of every round, once the votes are closed for good (no
        copy of a revealed score can be attested then; `Validator.reveal`)."""
        if self.cast.validators and self.dep.disputes.call("votes_closed", self.job_id):
            for v in self.cast.validators:
                for r in range(len(committed_rounds(self.dep, self.job_id))):
                    v.reveal(self.job_id, r)

    def _advance_to(self, t: int) -> None:
        """Let chain time run so that the next transaction is at `t` or later."""
        now = self.chain.timestamp()
        if now < t:
            self.chain.advance_time(t - now)

    def _claim_all(self) -> None:
        c = self.cast
        for i, p in enumerate(c.providers):
            self.claim_gas.append(p.claim(self.job_id).gas_used)
            self.tick("claims", i + 1, len(c.providers))
        for member in (*c.validators, c.aggregator):
            claim_reward(self.dep, self.store, member.account, self.job_id)

    def release_all(self) -> None:
        """Every stake still locked in a job that failed or was cancelled goes back (anyone may call)."""
        sender = self.cast.requester.account
        for acct in [self.cast.aggregator.address, *(p.address for p in self.cast.providers),
                     *(v.address for v in self.cast.validators)]:
            word, stake = self.dep.market.call("membership", self.job_id, acct)
            if not R.is_slashed(word) and int(stake) > 0:
                self.dep.market.transact("release_stake", self.job_id, acct, sender=sender)

    def run(self, plans: Callable[[int], RoundPlan] | None = None) -> int:
        """The whole job; returns its id."""
        self.open()
        for r in range(self.spec.training.rounds):
            if self.state != JobState.TRAINING or not self.quorum_or_fail():
                break
            self.round(r, plans(r) if plans else None)
        if self.state == JobState.TRAINING:
            self.quorum_or_fail()
        self.finish()
        return self.job_id

    def quorum_or_fail(self) -> bool:
        """True when the job may go on: no validators, or its latest round reached quorum. Otherwise
        the job is failed at the cost of whoever failed (`roles.common.fail_job`): at once if a
        third of the validator stake rejected the round, else at its deadline."""
        job = self.dep.job(self.job_id)
        if not self.cast.validators or job["current_round"] == 0 or job["quorum"]:
            return True
        r = job["current_round"] - 1
        if int(self.dep.disputes.call("rejected_stake", self.job_id, r)) * 3 <= int(job["validator_total_stake"]):
            self.chain.advance_time(max(1, job["round_deadline"] - self.chain.timestamp() + 1))
        caller = self.cast.challenger.account if self.cast.challenger else self.cast.requester.account
        self.slashed.append(fail_job(self.dep, caller, self.job_id))
        return False


def fund(dep: Deployment, deployer: Account, amounts: dict[str, int]) -> None:
    """Mint development tokens to accounts (the embedded chain's FedToken lets its owner mint)."""
    for address, amount in amounts.items():
        if amount:
            dep.token.transact("mint", address, amount, sender=deployer)
