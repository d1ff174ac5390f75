"""The aggregator's and a provider's processes when the rounds come over Flower's Deployment Engine.

A provider joins, defends and claims like `ProviderProcess`, while its SuperNode's ClientApp
trains each round (`fedmarket.transport.flower.train_on_node`) when the aggregator's ServerApp
asks. The aggregator commits, posts rewards and claims like `AggregatorProcess`, and before each
step keeps its SuperLink and the market's app run up (`flower_nodes.Serving`)."""

from __future__ import annotations

import time

from ..market import JobState
from ..processes.aggregator import AggregatorProcess
from ..processes.base import job_state
from ..processes.provider import ProviderProcess
from ..roles.common import committed_rounds, fetch_metrics
from .flower import check_seals_on_node, sent_marker


class SuperNodeProviderProcess(ProviderProcess):
    """`ProviderProcess` that never trains from the mailbox: during training it only reports the
    rounds its SuperNode answered (its own receipt in its own mailbox)."""

    # while the SuperNode trains this process has nothing to do but notice the end: it looks at the
    # chain at most this often then, not every poll (twenty of them polling took a core's share)
    TRAINING_LOOK_S = 2.0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # the rounds are the SuperNode's: a step that finds the job just started training does not
        # train here too (the ClientApp would then only send this process's update again)
        self.provider.train = self._not_here
        self._quiet_until = 0.0
        self._compared: set[int] = set()  # rounds whose committed seal it compared with its own

    @staticmethod
    def _not_here(job_id: int, round_: int) -> None:
        return None

    def step(self) -> None:
        if time.monotonic() < self._quiet_until:
            return
        job = job_state(self.dep, self.job_id)
        r = int(job["current_round"])
        if job["state"] in (JobState.TRAINING, JobState.FINALIZING):
            # the seals its SuperNode revealed under, against those the rounds committed with, from
            # this provider's store (the aggregator's ServerApp might not bring those documents)
            receipt = check_seals_on_node(self.provider, self.provider.store, self.job_id, self._compared)
            if receipt is not None:
                self.say(f"the aggregator signed two seals of one round: proven on chain (tx {receipt.tx_hash})")
        if job["state"] == JobState.TRAINING and r < int(job["rounds"]):
            self._quiet_until = time.monotonic() + self.TRAINING_LOOK_S
            if self.posted(r):
                self.say_once(f"round {r}: update sent through the SuperNode")
            else:
                self.say_once(f"round {r}: waiting for the aggregator's ServerApp")
            return
        super().step()


class FlowerAggregatorProcess(AggregatorProcess):
    """`AggregatorProcess` that first keeps the SuperLink and the app run up: one that died is
    started again (`serving.keep_up`), its SuperNodes reconnect by themselves, and the ServerApp
    asks again for the open round (a provider that answered it sends the same update again)."""

    def __init__(self, *args, serving, sent_dir, **kwargs):
        super().__init__(*args, **kwargs)
        self.serving = serving
        self.sent_dir = sent_dir  # the run config's sent-dir: where the ServerApp notes each round sent
        self._next_train_restore = 0.0

    def _round(self, job: dict, r: int) -> None:
        """Round `r` as `AggregatorProcess` does it, once the ServerApp has sent it to the SuperNodes:
        `collect_timeout` counts from then, not from a ServerApp still starting."""
        if sent_marker(self.sent_dir, self.job_id, r).exists():
            super()._round(job, r)
            return
        self.say_once(f"round {r}: waiting for the ServerApp to send it to the SuperNodes")
        if time.monotonic() >= self._next_train_restore:
            self._next_train_restore = time.monotonic() + 5.0
            self._keep_train_blobs()

    def _keep_train_blobs(self) -> None:
        """Put back in the shared store what the ServerApp sends with a round's train message (the
        spec, the last committed round's metrics document and the model it names), from this
        process's copy: the ServerApp reads them from the shared store, and a stranger deleting one
        there stopped every train message until the honest aggregator was failed at the deadline."""
        mirror = self.aggregator.store  # a MirroredStore (AggregatorProcess)
        cids = [e["spec_cid"] for e in self.dep.market.events("JobPosted", job_id=self.job_id)[:1]]
        done = committed_rounds(self.dep, self.job_id)
        if done:
            cids.append(fetch_metrics(mirror, done[-1])["model_cid"])  # read through the mirror: the document put back
        if mirror.restore(cids):
            self.say("put the blobs of the train message back in the store for the ServerApp")

    def step(self) -> None:
        state = job_state(self.dep, self.job_id)["state"]
        for event in self.serving.keep_up(training=state in (JobState.OPEN, JobState.TRAINING)):
            self.say(event)
        super().step()
