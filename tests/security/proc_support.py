"""Role processes (the project's own `fedmarket.processes`) stepped in one Python process on the
session chain of tests/security, for attacks on what the processes do between steps (from an
attacker's review of the role processes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from fedmarket.fl.data import subset
from fedmarket.fl.partition import iid_partition
from fedmarket.market import JobState
from fedmarket.processes import AggregatorProcess, ProviderProcess, RequesterProcess, ValidatorProcess
from fedmarket.storage import LocalBlobStore, Mailbox
from sec_support import digits, make_spec


class Procs:
    def __init__(self, c, workdir: Path, *, collect_timeout=0.0, reveal_timeout=0.0, **spec_kw):
        self.c = c
        self.dep = c.dep
        self.workdir = workdir
        self.spec = make_spec(**spec_kw)
        self.store, self.box = LocalBlobStore(workdir / "blobs"), Mailbox(workdir / "box")
        self.logs: list[str] = []
        kw = {"log": self.logs.append}
        self.kw = kw
        _, train, test = digits()
        self.train, self.test = train, test
        n, m = self.spec.participation.max_providers, self.spec.participation.max_validators
        self.requester = RequesterProcess(self.dep, c.requester, self.store, workdir / "req", X_test=test.X, y_test=test.y, **kw)
        self.job = self.requester.post(self.spec, c.aggregator.address)
        self.collect_timeout, self.reveal_timeout = collect_timeout, reveal_timeout
        self.procs = {"requester": self.requester, "aggregator": self.new_aggregator()}
        self.parts = iid_partition(train.y, n, 0)
        for i in range(n):
            self.procs[f"p{i}"] = self.new_provider(i)
        self.held = np.array_split(np.arange(test.n_samples), max(m, 1))
        for i in range(m):
            self.procs[f"v{i}"] = self.new_validator(i)

    def new_aggregator(self):
        return AggregatorProcess(self.dep, self.c.aggregator, self.store, self.box, self.job, self.workdir / "agg",
                                 collect_timeout=self.collect_timeout, reveal_timeout=self.reveal_timeout, **self.kw)

    def new_provider(self, i):
        idx = self.parts[i]
        d = subset(self.train, idx)
        return ProviderProcess(self.dep, self.c.providers[i], self.store, self.box, d.X, d.y, self.job,
                               self.workdir / f"p{i}", **self.kw)

    def new_validator(self, i):
        idx = self.held[i]
        return ValidatorProcess(self.dep, self.c.validators[i], self.store, self.box, self.test.X[idx], self.test.y[idx],
                                self.job, self.workdir / f"v{i}", **self.kw)

    def state(self):
        return self.dep.job(self.job)["state"]

    def paid(self) -> dict[str, int]:
        """What each account's claim paid (its reward; a stake comes back apart)."""
        return {ev["account"]: int(ev["amount"]) for ev in self.dep.market.events("RewardClaimed", job_id=self.job)}

    after_step = None  # hook(name) called after each process's step

    def spoil_after_commit(self, provider, spoil) -> list[str]:
        """Once the aggregator's step committed round 0, `spoil(path)` the file of `provider`'s
        update blob in the shared directory store (anyone can, there). Returns the cids spoiled."""
        from fedmarket.roles.common import committed_rounds, fetch_metrics

        done: list[str] = []

        def after(name):
            if name == "aggregator" and not done and committed_rounds(self.dep, self.job):
                doc = fetch_metrics(self.store, committed_rounds(self.dep, self.job)[0])
                [mine] = [u for u in doc["updates"] if u["provider"] == provider.address]
                spoil(self.store.root / mine["update_cid"])
                done.append(mine["update_cid"])

        self.after_step = after
        return done

    def step(self, names=None):
        for name in (names or list(self.procs)):
            p = self.procs[name]
            if not p.done:
                p.safe_step()
                if self.after_step is not None:
                    self.after_step(name)

    def first_round_at_quorum(self, without: str) -> None:
        """Start the job with every process, then step all but `without` (a slower validator) until
        round 0 is committed and at quorum without it."""
        from fedmarket.market import JobState

        for _ in range(20):
            self.step()
            if self.state() == JobState.TRAINING:
                break
        for _ in range(40):
            self.step([n for n in self.procs if n != without])
            job = self.dep.job(self.job)
            if int(job["current_round"]) >= 1 and job["quorum"]:
                return
        raise AssertionError("round 0 reached no quorum:\n" + "\n".join(self.logs[-20:]))

    def run(self, max_steps=80, on_step=None, advance_finalizing=True, names=None) -> bool:
        """Step every process (or those `names`) until all of them are done (True) or `max_steps`
        passed (False)."""
        for i in range(max_steps):
            if on_step is not None:
                on_step(i)
            self.step(names)
            if all(self.procs[n].done for n in (names or self.procs)):
                return True
            if advance_finalizing and self.state() == JobState.FINALIZING:
                self.c.chain.advance_time(self.spec.deadlines.challenge_period // 4 + 1)
        return False
