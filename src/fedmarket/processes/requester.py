"""The requester as a long-running process: post once, follow the rounds, settle, mint the licence."""

from __future__ import annotations

import os
import time

import numpy as np

from ..chain import Account
from ..errors import ConfigError, ContractRevert
from ..market import Deployment, JobState
from ..roles import Requester
from ..roles.common import fail_job
from ..spec import JobSpec
from ..storage import BlobStore
from .base import RoleProcess, Stop, job_state


class RequesterProcess(RoleProcess):
    """Drives `roles.Requester`: `post()` exactly once per state directory, then `step()`
    settles the job when its challenge window is over, mints the model token, and (with
    test data) records the accuracy of every committed model. A job whose aggregator
    missed a deadline is failed (full refund)."""

    role = "requester"

    def __init__(self, dep: Deployment, account: Account, store: BlobStore, state_dir: str | os.PathLike,
                 job_id: int | None = None, X_test: np.ndarray | None = None, y_test: np.ndarray | None = None,
                 **kwargs):
        super().__init__(dep, state_dir, **kwargs)
        self.requester = Requester(dep, account, store)
        self.account = account
        self.job_id = job_id if job_id is not None else self.state.load("job", {}).get("job_id")
        self.X_test, self.y_test = X_test, y_test

    @property
    def address(self) -> str:
        return self.account.address

    def post(self, spec: JobSpec, aggregator: str) -> int:
        """Post the job once: a restart after a crash finds the job it already posted (same
        spec hash, from this account, after the recorded block) instead of paying twice."""
        chain = self.dep.chain
        if hasattr(chain, "reconcile"):  # a post_job signed before a crash lands (or is dropped) first
            chain.reconcile()
        known = self.state.load("job", {})
        if known.get("job_id") is not None:
            if known.get("spec_hash") != "0x" + spec.hash().hex():
                raise ConfigError(f"state directory {self.state.root} already holds job {known['job_id']} of another spec")
            posted = self.dep.market.events("JobPosted", job_id=int(known["job_id"]))
            if not posted or posted[0]["requester"] != self.address or posted[0]["spec_hash"] != spec.hash():
                raise ConfigError(f"state directory {self.state.root} holds job {known['job_id']} of another deployment "
                                  f"or chain (market {self.dep.market.address} has no such job of yours): use another --state-dir")
            self.job_id = int(known["job_id"])
            return self.job_id
        if known.get("posting"):
            for ev in self.dep.market.events("JobPosted", from_block=int(known["from_block"]), requester=self.address):
                if ev["spec_hash"] == spec.hash():
                    return self._posted(spec, int(ev["job_id"]))
        self.state.save("job", {"posting": True, "spec_hash": "0x" + spec.hash().hex(),
                                "from_block": self.dep.chain.block_number()})
        return self._posted(spec, self.requester.post(spec, aggregator))

    def _posted(self, spec: JobSpec, job_id: int) -> int:
        self.state.save("job", {"job_id": job_id, "spec_hash": "0x" + spec.hash().hex()})
        self.job_id = job_id
        self.say(f"posted job {job_id} (escrow {spec.reward.escrow})")
        return job_id

    def _evaluate(self, current_round: int) -> None:
        if self.X_test is None:
            return
        acc = self.state.load("accuracy", [])
        if current_round > len(acc):
            acc = self.requester.evaluate(self.job_id, self.X_test, self.y_test)
            self.state.save("accuracy", acc)
            self.say(f"round {len(acc) - 1}: test accuracy {acc[-1]:.4f}")

    def step(self) -> None:
        if self.job_id is None:
            raise ValueError("no job: post one first")
        job_id = self.job_id
        job = job_state(self.dep, job_id)
        state = job["state"]
        if state == JobState.TRAINING:
            self._evaluate(int(job["current_round"]))
            if time.time() > int(job["round_deadline"]) + 1 or self.dep.chain.timestamp() > int(job["round_deadline"]) + 1:
                try:
                    receipt = fail_job(self.dep, self.account, job_id)
                    failed = [e for e in receipt.events if e.name == "JobFailed"]
                    if failed:
                        self.say(f"job failed ({failed[0]['reason']}), escrow refunded (tx {receipt.tx_hash})")
                    else:  # every round was in: the aggregator is out, the providers may post the root
                        self.say(f"the aggregator posted no reward root: slashed, anyone may post it (tx {receipt.tx_hash})")
                except ContractRevert as exc:
                    if "deadline not" not in str(exc):
                        raise
        elif state == JobState.FINALIZING:
            self._evaluate(int(job["current_round"]))
            if time.time() >= int(job["challenge_deadline"]) or self.dep.chain.timestamp() >= int(job["challenge_deadline"]):
                try:
                    receipt = self.requester.settle(job_id)
                except ContractRevert as exc:
                    if "challenge window open" not in str(exc):
                        raise
                    return
                self.say(f"settled job {job_id} (tx {receipt.tx_hash})")
            else:
                self.say_once(f"challenge window open until {int(job['challenge_deadline'])}")
        elif state == JobState.SETTLED:
            if not self.dep.licence.events("ModelMinted", job_id=job_id):
                receipt = self.dep.licence.transact("mint", job_id, sender=self.account)
                self.say(f"model token {job_id} minted (tx {receipt.tx_hash})")
            self._evaluate(int(job["current_round"]))
            raise Stop
        elif state in (JobState.CANCELLED, JobState.FAILED):
            self.say(f"job {job_id} {state.name.lower()}: escrow refunded")
            raise Stop
        else:
            self.say_once(f"job {job_id} open: waiting for the aggregator and providers")
            self.close_join_window(job_id, job, self.account)
