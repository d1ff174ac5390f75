"""The challenger as a long-running process: watch a job, prove every fault that can be proven,
play each dispute game it opened to its end, and end the games whose mover went silent."""

from __future__ import annotations

import os
import time

from ..chain import Account
from ..errors import ContractRevert
from ..market import Deployment, JobState
from ..roles.challenger import Challenger
from ..roles.common import InsufficientFunds, check_funds
from ..roles.games import job_games
from ..storage import BlobStore, Mailbox
from .base import Fatal, RoleProcess, Stop, job_state

LIVE = (JobState.TRAINING, JobState.FINALIZING)


class ChallengerProcess(RoleProcess):
    """Drives `roles.Challenger` on one job.

    Every step first moves in the games waiting for it (and times out any game whose mover let
    its deadline pass: anyone may), then looks for something new to prove: an equivocating
    validator, an aggregator that sealed a round twice, a wrong round (each committed round is recomputed once; `verified.json` keeps
    the ones found right across restarts), a censored update, a reward root that breaks the
    rule. It checks that it can cover the job's dispute bond before it opens a game. It stops
    once the job is over and none of its games is open; with `until_quiet` it stops as soon as
    nothing is open and nothing more can be proven (what `fedmarket audit --challenge` wants)."""

    role = "challenger"

    def __init__(self, dep: Deployment, account: Account, store: BlobStore, mailbox: Mailbox | None, job_id: int,
                 state_dir: str | os.PathLike, *, until_quiet: bool = False, **kwargs):
        super().__init__(dep, state_dir, **kwargs)
        # the job's spec, kept once it is read (every move re-derives the round from it: a requester
        # deleting it mid-game would have the challenger lose its bond by silence)
        store = self.mirrored(store)
        self.store = store
        self.challenger = Challenger(dep, account, store, mailbox)
        self.account = account
        self.mailbox = mailbox
        self.job_id = job_id
        self.until_quiet = until_quiet
        self.verified: set[int] = set(self.state.load("verified", []))
        self.opened = 0

    @property
    def address(self) -> str:
        return self.account.address

    def step(self) -> None:
        job = job_state(self.dep, self.job_id)
        if job["state"] == JobState.OPEN:
            self.say_once(f"job {self.job_id} is open; watching for its rounds")
            return
        self.keep_job_files(self.store, self.job_id)
        now = max(self.dep.chain.timestamp(), int(time.time()))  # the next block's time on a live chain
        for receipt in self.challenger.play(self.job_id, now):
            self.say(f"game move (tx {receipt.tx_hash})")
        for gid, why in self.challenger.failed_moves:
            self.say_once(f"game {gid}: move failed, will retry: {why}")
        if job["state"] in LIVE and not self._mine_open():
            self._prove(job)
        games = job_games(self.dep, self.job_id)
        if not games and (job["state"] not in LIVE or self.until_quiet):
            self.say(f"job {self.job_id} {job['state'].name.lower()}: nothing left to prove")
            raise Stop

    def _mine_open(self) -> bool:
        return any(g.challenger == self.address for g in job_games(self.dep, self.job_id))

    def _prove(self, job: dict) -> None:
        job_id = self.job_id
        try:  # a game locks the job's dispute bond: check it is there before looking for one to open
            check_funds(self.dep, self.address, int(job["dispute_bond"]), "a dispute bond")
        except InsufficientFunds as exc:
            raise Fatal(str(exc)) from None
        if self.mailbox is not None:  # (someone proving the same equivocation first is no error)
            for receipt in self._guarded(lambda: self.challenger.check_equivocation(job_id, self.mailbox)) or []:
                self.say(f"proved a validator equivocated: slashed (tx {receipt.tx_hash})")
            sealed_twice = self._guarded(lambda: self.challenger.check_seals(job_id, self.mailbox))
            if sealed_twice is not None:
                ev = sealed_twice.event("SealEquivocationProven")
                self.say(f"proved the aggregator sealed round {ev['round']} twice: job failed, aggregator slashed "
                         f"(tx {sealed_twice.tx_hash})")
                return
        opened = self._guarded(lambda: self.challenger.check(job_id, self.verified, self.mailbox))
        self.state.save("verified", sorted(self.verified))
        if opened is None and self.mailbox is not None:
            opened = next(iter(self._guarded(lambda: self.challenger.check_censorship(job_id, self.mailbox)) or []), None)
        if opened is None:
            opened = self._guarded(lambda: self.challenger.check_rewards(job_id))
        if opened is not None:
            self.opened += 1
            self.say(f"opened a dispute game on job {job_id} (tx {opened.tx_hash})")
        for receipt in self.challenger.close_moot(job_id):
            self.say(f"closed a moot game, bond refunded (tx {receipt.tx_hash})")

    def _guarded(self, open_game):
        """`open_game()`; a game that opened in the meantime (another challenger was quicker) is a
        revert to shrug off, not an error."""
        try:
            return open_game()
        except ContractRevert as exc:
            self.say(f"could not open a game: {exc}")
            return None
