"""The validator as a long-running process: join, review and attest each round, reveal, claim."""

from __future__ import annotations

import os
import time

import numpy as np

from ..chain import Account
from ..market import Deployment, JobState, Role
from ..protocol import rules as R
from ..roles import Validator
from ..errors import ContractRevert, MissingAfterQuorum
from ..roles.common import REFUSED_BEFORE_STAKING, committed_rounds, topic_round
from ..protocol.encoding import canonical_json, untrusted_json
from ..roles.settlement import statement_key, submit_reward_approvals
from ..roles.validator import submit_rejections
from ..storage import BlobStore, KeptMailbox, Mailbox, MirroredStore
from .base import Fatal, RoleProcess, Stop, job_state


class ValidatorProcess(RoleProcess):
    """Drives `roles.Validator` for one job.

    Each committed round is reviewed once (recomputed, scored, attestation posted); its
    sealed scores document is kept in the state directory (`reviews.json`) so a restarted
    validator can still reveal it once the job's votes are closed (after the last round's
    quorum: no copy of a revealed score can be attested then). Its signed vote is kept there too,
    and goes on chain from there if nobody put it there within its grace; its reveals are posted
    again, and their documents put back, until the job settles. Misbehaviour reports go out with
    the last round's review, before its reveal; once every round is revealed, it signs the reward
    root it re-derives (`Validator.approve_rewards`), which `post_rewards` needs, and puts that
    approval on chain itself if nobody did within a short grace."""

    role = "validator"

    def __init__(self, dep: Deployment, account: Account, store: BlobStore, mailbox: Mailbox, X: np.ndarray,
                 y: np.ndarray, job_id: int, state_dir: str | os.PathLike, **kwargs):
        super().__init__(dep, state_dir, **kwargs)
        # its reveals are kept before they are posted, and posted again (`_keep_reveals`)
        mailbox = KeptMailbox(mailbox, self.state.root / "mailbox",
                              keeps=lambda topic: topic_round(job_id, topic) is not None and topic.endswith("-reveals"))
        self.validator = Validator(dep, account, self.mirrored(store), mailbox, X, y)
        self.job_id = job_id
        self._round_duration = 0  # a term, read at the first step (with `Validator.data_grace`)
        self._idle: tuple | None = None  # (rounds committed, state) after which nothing is left to review
        self._looking_again = False  # set by `_review_and_reveal` while a round it skipped waits for its data
        self._approved_at = float("-inf")
        self._next_keep = 0.0  # when it next posts its reveals again (`_keep_reveals`)
        self.approve_interval = 1.0
        # what the role keeps in memory between review and reveal, restored from the state directory
        reviews, seen = self._reviews()
        self.validator.restore(job_id, {int(r): d for r, d in reviews.items() if d is not None}, seen)

    @property
    def address(self) -> str:
        return self.validator.address

    def step(self) -> None:
        job_id = self.job_id
        job = job_state(self.dep, job_id)
        state = job["state"]
        role, stake = self.dep.market.call("membership", job_id, self.address)
        if role != 0:
            self.keep_job_files(self.validator.store, job_id)
        if state == JobState.OPEN:
            if role == 0:
                if job["n_validators"] >= job["max_validators"]:
                    raise Fatal(f"job {job_id} takes no more validators ({job['n_validators']}/{job['max_validators']})")
                try:  # the terms, our held-out data's schema and our funds are checked before staking
                    self.keep_job_files(self.validator.store, job_id, module=False)  # (the copy every review reads)
                    self.validator.inspect(job_id)
                    self.keep_job_files(self.validator.store, job_id)  # checked: its module too
                    receipt = self.validator.join(job_id)
                except REFUSED_BEFORE_STAKING as exc:
                    raise Fatal(str(exc)) from None
                self.say(f"joined job {job_id} as validator (tx {receipt.tx_hash})")
            else:
                self.say_once(f"joined job {job_id}; waiting for rounds")
                self.close_join_window(job_id, job, self.validator.account)
            return
        if R.role_of(role) != Role.VALIDATOR:
            raise Fatal(f"{self.address} is not a validator of job {job_id} (state {state.name})")
        if not self._round_duration:  # a tenth of a round (at most 2 min) for deleted data to come back
            self._round_duration = int(job["round_duration"])  # a term: it never changes
            self.validator.data_grace = min(120.0, self._round_duration / 10)
        if state in (JobState.TRAINING, JobState.FINALIZING):
            self._keep_reveals()
            # scores are revealed once the votes are closed for good (at the end of training)
            closed = int(job["current_round"]) == int(job["rounds"]) and self.dep.disputes.call("votes_closed", job_id)
            now = (int(job["current_round"]), state, closed)
            if now != self._idle:  # something new on chain, or a reveal or a vote pending
                self._review_and_reveal(int(job["rounds"]))
                self._vote_on_chain(int(job["round_duration"]))
                pending = [k for k, d in self._reviews()[0].items()
                           if closed and d is not None and int(k) not in self.state.load("revealed", [])]
                pending += list(self.state.load("votes", {}))
                self._idle = now if not pending and not self._looking_again else None
            if state == JobState.TRAINING and int(job["current_round"]) == int(job["rounds"]) and self._idle:
                self._approve_rewards()
        elif state == JobState.SETTLED:
            from ..roles.common import reward_leaf

            leaf, _ = reward_leaf(self.dep, self.validator.store, self.address, job_id)
            if not self.dep.market.call("is_claimed", job_id, int(leaf["index"])):
                receipt = self.validator.claim(job_id)
                self.say(f"claimed: stake back, reputation {int(leaf['reputation_delta']):+d} (tx {receipt.tx_hash})")
            raise Stop
        else:
            if stake:
                receipt = self.dep.market.transact("release_stake", job_id, self.address, sender=self.validator.account)
                self.say(f"job {state.name.lower()}: stake released (tx {receipt.tx_hash})")
            raise Stop

    def _vote_on_chain(self, round_duration: int) -> None:
        """Each vote (attestation or rejection) this validator posted goes on chain: the aggregator
        usually batches them, but once `min(60 s, a quarter of the round)` of chain time has passed
        since the vote was posted (at once when the votes close sooner than twice that), the
        validator sends its own (an aggregator that withheld the votes could otherwise have every
        present validator slashed as absent, or leave a late one unpaid)."""
        votes: dict = self.state.load("votes", {})
        if not votes:
            return
        now = max(self.dep.chain.timestamp(), int(time.time()))
        grace = min(60, round_duration // 4)
        # never past the votes' close: a vote of the last round posted late would wait it out
        close = int(self.dep.market.call("votes_close", self.job_id))
        if close - now < 2 * grace:
            grace = 0
        for key, vote in sorted(votes.items(), key=lambda kv: int(kv[0])):
            r = int(key)
            # the signed vote as posted, kept here: anyone on the mailbox can delete the posted copy
            # (a vote kept before this was only its time, and goes from the mailbox)
            posted_at, message = (vote["at"], vote["message"]) if isinstance(vote, dict) else (vote, None)
            if not self._voted(r):
                if now - int(posted_at) < grace:
                    continue  # the aggregator's batch may still bring it
                try:
                    receipts = self.validator.submit_own_vote(self.job_id, r, message)
                except ContractRevert as exc:  # too late for any vote on the round: nothing more to do
                    self.say(f"round {r}: vote could not go on chain: {exc}")
                    receipts = []
                for receipt in receipts:
                    self.say(f"round {r}: vote put on chain by this validator (tx {receipt.tx_hash})")
                if receipts and not self._voted(r):
                    continue  # sent, not seen on chain yet: looked at again at the next step
                # (nothing sent: the chain takes no vote of this validator on the round any more)
            del votes[key]
        self.state.save("votes", votes)

    def _voted(self, r: int) -> bool:
        return (self.dep.disputes.call("attestation_of", self.job_id, r, self.address) != b"\x00" * 32
                or self.dep.disputes.call("rejected", self.job_id, r, self.address))

    def _keep_reveals(self) -> None:
        """Every 5 s until the job settles, each of this validator's reveals is posted again and its
        scores document put back in the store: anyone on the mailbox or the store can delete them,
        and a round without its reveals leaves the job no scores basis (the weight basis then pays
        the quality gate's miss payout, and the validator loses reputation as 'not revealed')."""
        if time.monotonic() < self._next_keep:
            return
        self._next_keep = time.monotonic() + 5.0
        kept = self.validator.mailbox
        kept.repost()
        cids = [untrusted_json(m)["scores_cid"] for topic in kept.topics() for m in kept.posted(topic)]
        if cids and isinstance(self.validator.store, MirroredStore):
            back = self.validator.store.restore(cids)
            if back:
                self.say(f"put {back} deleted scores document(s) back in the store")

    def _approve_rewards(self) -> None:
        """Every round committed and revealed: re-derive the reward root and sign it (at most every
        `approve_interval` seconds until the aggregator posts it). Its inputs (every validator's
        reveals, providers slashed by vote) may still change, so a changed root is signed again;
        the aggregator submits the approvals of the root it posts, and an unchanged one is the
        same mailbox message (same bytes, same CID)."""
        if time.monotonic() - self._approved_at < self.approve_interval:
            return
        self._approved_at = time.monotonic()
        if not self.dep.disputes.call("votes_closed", self.job_id):
            self.say_once("every round committed; waiting for the last votes before approving the rewards")
            return
        msg = self.validator.approve_rewards(self.job_id)
        if msg is None:
            self.say_once("no scores basis to approve (masked updates or missing reveals)")
            return
        approved = self.state.load("approved", {})
        now = max(self.dep.chain.timestamp(), int(time.time()))
        statement = (bytes.fromhex(msg["reward_root"][2:]), int(msg["reward_total"]), int(msg["value_total"]),
                     bool(msg["gate_met"]))
        signed = statement_key(statement)
        key = "0x" + signed.hex()
        since = approved.get("since", {})  # statement -> when it first was this validator's
        if approved.get("message") != msg:
            since.setdefault(key, now)
            approved = {"reward_root": msg["reward_root"], "reward_total": msg["reward_total"], "message": msg,
                        "since": since}
            self.state.save("approved", approved)
            self.say(f"approved reward root {msg['reward_root'][:18]}... (total {msg['reward_total']})")
        # the approval goes on chain with the root, but an aggregator that never posted it could let
        # half the step pass and post the weight basis instead (a met quality gate then pays its
        # miss payout): past a short grace, the validator puts its own approval on chain. The grace
        # runs from when the statement first was its own: someone deleting and re-posting a reveal
        # to flip the statement back and forth cannot restart it
        grace = min(30, self._round_duration // 16)
        if (now - int(since.get(key, now)) >= grace
                and not self.dep.disputes.call("rewards_signed", self.job_id, signed, self.address)):
            try:
                for receipt in submit_reward_approvals(self.dep, self.validator.mailbox, self.validator.account,
                                                       self.job_id, statement, posted=[canonical_json(msg)]):
                    self.say(f"approval of reward root {msg['reward_root'][:18]}... put on chain (tx {receipt.tx_hash})")
            except ContractRevert as exc:  # the job moved on (a root posted): nothing to approve on chain
                self.say_once(f"approval not put on chain: {exc}")

    def _reviews(self) -> tuple[dict, dict]:
        """Its reviews (round -> sealed scores document, or None for a rejection) and what it saw of
        each provider in them (`Validator.sealed`), kept as one document: saved apart, a crash between
        the two saves had a restarted process review a round again and count it twice."""
        kept = self.state.load("reviews", {})
        return kept.get("rounds", {}), kept.get("seen", {})

    def _review_and_reveal(self, n_rounds: int) -> None:
        job_id = self.job_id
        reviews, _ = self._reviews()
        self._looking_again = False  # a round at quorum whose data is missing: reviewed again next step
        for c in committed_rounds(self.dep, job_id):
            key = str(c.round)
            if key in reviews:
                continue
            try:
                msg = self.validator.review(job_id, c.round)
            except MissingAfterQuorum as exc:
                # a round at quorum whose data is missing is looked at again next step; the later
                # rounds are reviewed meanwhile (stopping here had this validator slashed as absent
                # from the next round, whose quorum it was needed for)
                self.say_once(f"round {c.round}: {exc}")
                self._looking_again = True
                continue
            if msg:
                votes = self.state.load("votes", {})
                votes[key] = {"at": self.dep.chain.timestamp(), "message": msg}
                self.state.save("votes", votes)
            docs, seen = self.validator.sealed(job_id)
            reviews[key] = docs.get(c.round) if msg and "scores_root" in msg else None
            self.state.save("reviews", {"rounds": reviews, "seen": seen})
            self.say(f"round {c.round}: {'recomputed, scored and attested' if reviews[key] else 'REJECTED'}")
            if msg and reviews[key] is None:
                submit_rejections(self.dep, self.validator.mailbox, self.validator.account, job_id, c.round)
        if str(n_rounds - 1) in reviews and not self.state.load("reported", False):
            flagged = self.validator.report_misbehaviour(job_id)
            if flagged:
                self.say(f"reported misbehaviour of {', '.join(flagged)}")
            self.state.save("reported", True)
        revealed: list = self.state.load("revealed", [])
        for key, doc in sorted(reviews.items(), key=lambda kv: int(kv[0])):
            if doc is None or int(key) in revealed:
                continue
            if not self.dep.disputes.call("votes_closed", job_id):  # no copy of a revealed score can count then
                break
            cid = self.validator.reveal(job_id, int(key))  # kept (`KeptMailbox`) before it is posted
            revealed.append(int(key))
            self.state.save("revealed", revealed)
            self.say(f"round {key}: scores revealed ({cid})" if cid else f"round {key}: attestation not on chain, nothing to reveal")
