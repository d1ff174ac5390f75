"""The provider as a long-running process: join, train each round once, watch the reward root, claim."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from ..chain import Account
from ..errors import ContractRevert, FedMarketError, SecAggAbort
from ..market import Deployment, JobState, Role
from ..privacy.releases import ReleaseLog
from ..protocol import rules as R
from ..roles import Provider
from ..roles import secure_round as sr
from ..roles.challenger import Challenger
from ..roles.common import (
    REFUSED_BEFORE_STAKING,
    InsufficientFunds,
    check_funds,
    load_spec,
    posted_rewards,
    round_topic,
    topic_round,
)
from ..roles.senders import signed_on
from ..roles import sealed as sl
from ..roles.games import Defender, job_games
from ..roles.settlement import post_orphaned_root, root_orphaned
from ..storage import BlobStore, KeptMailbox, Mailbox, MirroredStore
from .base import Fatal, RoleProcess, Stop, job_state


class ProviderProcess(RoleProcess):
    """Drives `roles.Provider` for one job from chain state and the mailbox.

    What it did is read back from the chain (membership, committed rounds, claims) and the
    mailbox (its own signed receipt or commitment of the current round): a restarted provider
    trains the current round only if neither is there yet. Its state directory keeps what the
    mailbox must not show before the seal (a committed update, for its reveal), the rounds it
    released (`privacy.releases`), and what it posted in the open round (`KeptMailbox`): anyone on
    the mailbox can delete a message, and a restarted provider must post the same one again, never
    make it anew."""

    role = "provider"

    def __init__(self, dep: Deployment, account: Account, store: BlobStore, mailbox: Mailbox, X: np.ndarray,
                 y: np.ndarray, job_id: int, state_dir: str | os.PathLike, *, phase_timeout: float | None = None, **kwargs):
        super().__init__(dep, state_dir, **kwargs)
        # what it posts on its job's round topics (receipts, commitments, a secure round's phase
        # messages) is kept before it is posted, read back and posted again (`_keep_posted`)
        self.mailbox = KeptMailbox(mailbox, self.state.root / "mailbox",
                                   keeps=lambda topic: topic_round(job_id, topic) is not None)
        # the rounds it released, journaled so that a restart never releases one twice (privacy.releases)
        self.provider = Provider(dep, account, self.mirrored(store), self.mailbox, X, y,
                                 releases=ReleaseLog(Path(state_dir) / f"releases-{account.address}.jsonl"))
        self._watched_root: tuple | None = None  # the posting (root, poster, deadline) last checked against the rule
        self._challenger: Challenger | None = None  # made at the first reward root it watches
        # how long a secure phase waits for late members (default: a tenth of the round, 5 s to 2 min)
        self._phase_timeout = phase_timeout
        self._phase_opened: dict[tuple[int, str], float] = {}  # (round, phase) -> when it could first start
        self.job_id = job_id
        self._posted_round: int | None = None  # the round this process knows it is done with
        self._verified: dict = {}  # the open round's messages -> who signed them (`signed_on`)
        # a committed update is kept on disk before its commitment is posted: a restart before the
        # reveal still reveals it (the commitment could not be opened otherwise)
        self._committed = sl.Pending(Path(state_dir) / "committed")
        self.provider.keep_sealed = self._committed.keep
        self._verified_round: int | None = None
        self._next_keep = 0.0  # when it next looks at its own messages (`_keep_posted`)

    @property
    def address(self) -> str:
        return self.provider.address

    def posted(self, round_: int) -> bool:
        """Whether this provider's signed receipt for `round_` (or, in a sealed round, its signed
        commitment) is in the mailbox, or kept as posted: it never commits or posts a round twice."""
        return any(self._mine(round_, kind) for kind in ("update", "commit"))

    def _round_step(self, job_id: int, r: int) -> None:
        """This provider's next step in round `r`: a secure round's phase; a sealed round's reveal,
        once sealed; else train and post (or commit) its update, once."""
        if self._secure(job_id):
            if self._secure_step(job_id, r):
                self._posted_round = r
            return
        kept = None if self.provider.sealed_pending(job_id, r) else self._committed.load(job_id, r)
        if kept is not None and not self._mine(r, "update"):  # committed before a restart, not revealed
            self.provider.restore_sealed(job_id, r, kept[0], kept[1])
        self._keep_posted(job_id, r)
        if self.provider.sealed_pending(job_id, r):  # committed: reveal once the aggregator sealed
            try:
                msg = self.provider.reveal(job_id, r)
            except FedMarketError as exc:
                self.say(f"round {r}: {exc}")
                self._posted_round = r
                return
            if msg is None:
                self.say_once(f"round {r}: update committed; waiting for the aggregator's seal")
            else:
                self._posted_round = r
                self.say(f"round {r}: update {msg['update_cid']} revealed (weight {msg['weight']})")
            return
        if self.posted(r):
            self._posted_round = r
            return
        if not self.provider.selected(job_id, r):
            self.say_once(f"round {r}: not selected")
            self._posted_round = r
            return
        if self.provider.releases.released(job_id, r):  # released before a restart; its post was lost
            self.say_once(f"round {r}: already released, not again")
            self._posted_round = r
            return
        msg = self.provider.train(job_id, r)
        if (job_id, r) in self.provider.zeroed:
            self.say(f"round {r}: {self.provider.zeroed[(job_id, r)]}; sent a zero update, so that sending says nothing "
                     "about the data")
        if self.provider.sealed_pending(job_id, r):
            self.say(f"round {r}: update {msg['update_cid']} committed (weight {msg['weight']})")
            return  # revealed in a later step, once sealed
        self._posted_round = r
        if msg is not None:
            self.say(f"round {r}: update {msg['update_cid']} posted (weight {msg['weight']})")
        elif (job_id, r) in self.provider.sat_out:
            self.say(f"round {r}: sat out, {self.provider.sat_out[(job_id, r)]}")

    def _keep_posted(self, job_id: int, r: int) -> None:
        """Every second while round `r` is open, this provider's messages of the round are still
        there (anyone on the mailbox or the store can delete them, and a crash can come between
        keeping a sealed round's commitment and posting it): what it posted, the same bytes again
        (`KeptMailbox.repost`: a secure round's phase messages, a sealed round's commitment and
        revealed receipt); a commitment kept but never posted, posted now; once it revealed under
        the aggregator's seal, its update blob put back. Nothing is released twice, and the
        messages of rounds done with are no longer kept."""
        if time.monotonic() < self._next_keep:
            return
        self._next_keep = time.monotonic() + 1.0  # well within the aggregator's wait for late messages
        self.mailbox.forget(lambda topic: (n := topic_round(job_id, topic)) is not None and n < r)
        self.mailbox.repost(lambda topic: topic_round(job_id, topic) == r)
        kept = self._committed.load(job_id, r)
        if kept is None:
            return
        message, _blob, committed = kept
        if self.provider.sealed_pending(job_id, r):
            if not self.mailbox.posted(sl.commit_topic(job_id, r)):  # kept, then a crash before the post
                self.mailbox.post(sl.commit_topic(job_id, r), committed)
        elif self.mailbox.posted(round_topic(job_id, r)):  # revealed (before a restart, too)
            if isinstance(self.provider.store, MirroredStore) and self.provider.store.restore([message["update_cid"]]):
                self.say(f"round {r}: put its deleted update blob back")

    def _secure(self, job_id: int) -> bool:
        return load_spec(self.dep, self.provider.store, job_id).privacy.secure

    def _mine(self, r: int, kind: str) -> bool:
        """Whether this provider's own signed message of `kind` is on the round's topic, or kept as
        posted (someone may have deleted it since: it is posted again, never made anew); a claim in
        its name that it did not sign is not (anyone can post one)."""
        return self.address in self._senders(r, kind)

    def _senders(self, r: int, kind: str) -> set[str]:
        if self._verified_round != r:
            self._verified, self._verified_round = {}, r
        return signed_on(self.dep, self.mailbox, self.job_id, r, kind, self._verified)

    def _ready(self, r: int, phase: str, waiting_for: str, members: list[str]) -> bool:
        """A secure phase may start once every selected member posted the previous phase's message,
        or `phase_timeout` after it first could (the missing ones dropped out: SecAgg+ goes on
        without them)."""
        opened = self._phase_opened.setdefault((r, phase), time.monotonic())
        if self._phase_timeout is None:
            self._phase_timeout = sr.phase_timeout(self.dep.job(self.job_id)["round_duration"])
        return self._senders(r, waiting_for).issuperset(members) or time.monotonic() - opened >= self._phase_timeout

    def _secure_step(self, job_id: int, r: int) -> bool:
        """One step of a secure round (privacy modes secagg, secagg_dp), each phase once, in the
        order SecAgg+ needs: keys, shares, the masked update, the consistency check, the unmask
        answer. True once this provider is done with the round (or sits it out). The round's
        secrets live only in this process: after a restart mid-round it sits the round out rather
        than post a second set of keys, which would have it dropped anyway. That holds for a crash
        between keeping its keys message and posting it as well: the kept keys are posted (they may
        have been read, then deleted) and the round is sat out."""
        p = self.provider
        if not p.selected(job_id, r):
            self.say_once(f"round {r}: not selected")
            return True
        members = p.members(job_id, r)
        self._keep_posted(job_id, r)
        try:
            if not self._mine(r, "keys"):
                if p.releases.released(job_id, r):
                    self.say_once(f"round {r}: already released, not again")
                    return True
                why = p.frozen(job_id, r)
                if why:
                    self.say_once(f"round {r}: sitting out: {why}")
                    return True
                p.advertise(job_id, r)
                self.say(f"round {r}: keys advertised")
                return False
            if not p.holds_round_secrets(job_id, r):
                self.say_once(f"round {r}: restarted mid-round; sitting it out")
                return True
            if not self._mine(r, "shares"):
                if self._ready(r, "shares", "keys", members):
                    p.share(job_id, r)
                    self.say(f"round {r}: shares posted")
                return False
            if not self._mine(r, "update"):
                if self._ready(r, "mask", "shares", members):
                    msg = p.train(job_id, r)
                    self.say(f"round {r}: masked update {msg['update_cid']} posted")
                return False
            if not self._mine(r, "confirm"):
                p.watch_uploads(job_id, r)  # who masked before the set: it must not leave a neighbour of them out
                if self._senders(r, "survivors"):  # the job's aggregator's set
                    p.confirm(job_id, r)
                    self.say(f"round {r}: survivor set confirmed")
                return False
            if not self._mine(r, "unmask"):
                survivors = len(p.survivor_set(job_id, r))
                if len(self._senders(r, "confirm")) >= survivors or self._ready(r, "unmask", "confirm", members):
                    p.unmask(job_id, r)
                    self.say(f"round {r}: unmasking answered")
                return False
        except SecAggAbort as exc:
            self.say(f"round {r}: out of the secure round: {exc}")
            return True
        return True

    def _post_if_orphaned(self) -> None:
        """Every round is in and the aggregator was slashed (a wrong reward root, or none in time):
        post the root the rule gives, this provider's job stake behind it, so the providers are
        paid. Another provider may have been quicker: then there is nothing to do."""
        if not root_orphaned(self.dep, self.job_id):
            return
        if int(self.dep.job(self.job_id)["n_validators"]) and not self.dep.disputes.call("votes_closed", self.job_id):
            return  # the root is computed once no vote can land
        auditor = self._watcher().auditor  # each round's members checked against its root, or re-derived
        try:
            receipt = post_orphaned_root(self.dep, self.provider.store, self.mailbox, self.provider.account, self.job_id,
                                         load_spec(self.dep, self.provider.store, self.job_id),
                                         lambda r: auditor.members(self.job_id, r))
        except ContractRevert as exc:
            self.say_once(f"reward root not posted: {exc}")
            return
        self.say(f"the aggregator is out: posted the reward root (tx {receipt.tx_hash})")

    def _watcher(self) -> Challenger:
        """The provider's own watcher of its job (reward games, and the auditor whose checked
        members it pays by)."""
        if self._challenger is None:
            self._challenger = Challenger(self.dep, self.provider.account, self.provider.store, self.mailbox)
        return self._challenger

    def _watch_rewards(self, job_id: int, job: dict) -> None:
        """A provider is the party a wrong reward root hurts first (its own leaf), so it watches the
        posted root itself rather than rely on someone else (docs/security.md, assumption 2): it
        plays its reward games to their end, and checks each posted root once against the rule,
        opening a game only where it can win (`Challenger.check_rewards`) and only with the job's
        dispute bond in hand. A root proven wrong slashes its poster; the providers then post the
        right one (`_post_if_orphaned`)."""
        challenger = self._watcher()
        for receipt in challenger.play(job_id, max(self.dep.chain.timestamp(), int(time.time()))):
            self.say(f"reward game move (tx {receipt.tx_hash})")
        mine_open = any(g.challenger == self.address for g in job_games(self.dep, job_id))
        if mine_open:
            for receipt in challenger.close_moot(job_id):  # another's game replaced the root: bond back
                self.say(f"closed a moot game, bond refunded (tx {receipt.tx_hash})")
            mine_open = any(g.challenger == self.address for g in job_games(self.dep, job_id))
        # one posting of a root: the same root posted again (by another poster, or later) is checked
        # again, since the games on the first posting are moot now
        root = (bytes(job["reward_root"]), job["poster"], int(job["challenge_deadline"]))
        # a game of someone else's proves nothing while it is open: its challenger may stall it past
        # the challenge window, so each provider checks the root and plays a game of its own
        if root == self._watched_root or mine_open:
            return
        try:
            check_funds(self.dep, self.address, int(job["dispute_bond"]), "a dispute bond")
        except InsufficientFunds as exc:
            self.say_once(f"cannot watch the reward root: {exc}")
            return
        try:
            posted_rewards(self.dep, self.provider.store, job_id)
        except FedMarketError as exc:  # withheld: look again every step (never marked as checked)
            self.say_once(f"the posted reward root cannot be checked yet: {exc}")
            return
        try:
            opened = challenger.check_rewards(job_id)
        except (ContractRevert, FedMarketError) as exc:
            self.say(f"could not check the reward root: {exc}")
            return
        self._watched_root = root
        if opened is not None:
            self.say(f"the reward root breaks the rule: opened a dispute game (tx {opened.tx_hash})")

    def step(self) -> None:
        job_id = self.job_id
        job = job_state(self.dep, job_id)
        state = job["state"]
        if state == JobState.TRAINING and self._posted_round == int(job["current_round"]) < int(job["rounds"]):
            self._keep_posted(job_id, int(job["current_round"]))
            return  # the common idle step: one call to the node (and a look at its own messages)
        role, stake = self.dep.market.call("membership", job_id, self.address)
        if role != 0:
            self.keep_job_files(self.provider.store, job_id)
        if state == JobState.OPEN:
            if role == 0:
                try:  # the spec's hash, the terms, our data's schema and our funds are checked first
                    self.keep_job_files(self.provider.store, job_id, module=False)  # (the copy every round reads)
                    spec = self.provider.inspect(job_id)
                    self.keep_job_files(self.provider.store, job_id)  # checked: its module too
                except REFUSED_BEFORE_STAKING as exc:
                    raise Fatal(str(exc)) from None
                if job["n_providers"] >= job["max_providers"]:
                    raise Fatal(f"job {job_id} is full ({job['n_providers']} providers)")
                try:
                    receipt = self.provider.join(job_id)
                except InsufficientFunds as exc:
                    raise Fatal(str(exc)) from None
                self.say(f"joined job {job_id} with stake {spec.reward.provider_stake} (tx {receipt.tx_hash})")
            else:
                self.say_once(f"joined job {job_id}; waiting for training to start")
                self.close_join_window(job_id, job, self.provider.account)
            return
        if R.role_of(role) != Role.PROVIDER:
            raise Fatal(f"{self.address} is not a provider of job {job_id} (state {state.name})")
        if state == JobState.TRAINING:
            r = int(job["current_round"])
            if r >= int(job["rounds"]):
                self._post_if_orphaned()
                return
            self._round_step(job_id, r)
        elif state == JobState.FINALIZING:
            for receipt in Defender(self.dep, self.provider.account, self.provider.store).respond(job_id):
                self.say(f"defended the reward root it posted (tx {receipt.tx_hash})")
            self._watch_rewards(job_id, job)
            self.say_once("all rounds committed; waiting for settlement")
        elif state == JobState.SETTLED:
            leaf, _ = self.provider.reward_leaf(job_id)
            if not self.dep.market.call("is_claimed", job_id, int(leaf["index"])):
                receipt = self.provider.claim(job_id)
                self.say(f"claimed reward {leaf['amount']} and stake, reputation {int(leaf['reputation_delta']):+d} "
                         f"(tx {receipt.tx_hash})")
            raise Stop
        elif state in (JobState.CANCELLED, JobState.FAILED):
            if stake:
                receipt = self.dep.market.transact("release_stake", job_id, self.address, sender=self.provider.account)
                self.say(f"job {state.name.lower()}: stake released (tx {receipt.tx_hash})")
            raise Stop
