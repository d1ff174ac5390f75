"""The role processes' `step()` logic on the embedded chain, all in one Python process: every
role stepped in turn until the job is over, with restarts from the state directory mid-job."""

from __future__ import annotations

import json

from eth_account import Account as EthAccount

from fedmarket.fl.data import load_dataset, train_test_split
from fedmarket.fl.partition import iid_partition
from fedmarket.market import JobState
from fedmarket.processes import (
    AggregatorProcess,
    ProviderProcess,
    RequesterProcess,
    StateDir,
    TxJournal,
    ValidatorProcess,
)
from fedmarket.spec import DataSchema, DeadlineSpec, JobSpec, ParticipationSpec, RewardSpec, TrainingSpec
from fedmarket.storage import LocalBlobStore, Mailbox

TOKEN = 10**18


def test_state_dir_and_journal(tmp_path):
    state = StateDir(tmp_path / "s")
    assert state.load("x", {"d": 1}) == {"d": 1}
    state.save("x", {"a": [1, 2]})
    assert state.load("x") == {"a": [1, 2]} and not list((tmp_path / "s").glob(".*tmp"))
    acct = EthAccount.create()
    signed = acct.sign_transaction({"type": 2, "chainId": 31337, "nonce": 7, "gas": 21000, "maxFeePerGas": 10**9,
                                    "maxPriorityFeePerGas": 1, "to": acct.address, "value": 0, "data": b""})
    journal = TxJournal(tmp_path / "j")
    raw, h = "0x" + bytes(signed.raw_transaction).hex(), "0x" + bytes(signed.hash).hex()
    entry = journal.record(raw, h)
    assert (entry["nonce"], entry["sender"]) == (7, acct.address)
    assert [e["hash"] for e in journal.entries("pending")] == [h]
    journal.mined(h)
    assert journal.entries("pending") == [] and journal.entries("mined")[0]["raw"] == raw


def test_every_role_stepped_to_the_end_with_restarts(world, tmp_path):
    dep = world["dep"]
    store, mailbox = LocalBlobStore(tmp_path / "blobs"), Mailbox(tmp_path / "mail")
    ds = load_dataset("digits")
    train, test = train_test_split(ds, 0.25, 0)
    parts = iid_partition(train.y, 3, 0)
    spec = JobSpec(
        name="steps", data=DataSchema(n_features=ds.n_features, n_classes=ds.num_classes,
                                      feature_low=[float(v) for v in ds.feature_low],
                                      feature_high=[float(v) for v in ds.feature_high]),
        training=TrainingSpec(rounds=2, local_epochs=1, batch_size=16, learning_rate=1.0),
        reward=RewardSpec(escrow=100 * TOKEN, provider_stake=TOKEN, aggregator_stake=10 * TOKEN, validator_stake=5 * TOKEN),
        participation=ParticipationSpec(min_providers=3, max_providers=3, max_validators=1),
        deadlines=DeadlineSpec(challenge_period=1),
    )
    logs: list[str] = []
    kw = {"log": logs.append}
    agg_acct, val_acct = world["aggregator"], world["validators"][0]
    requester = RequesterProcess(dep, world["requester"], store, tmp_path / "req", X_test=test.X, y_test=test.y, **kw)
    job_id = requester.post(spec, agg_acct.address)
    assert requester.post(spec, agg_acct.address) == job_id  # once per state directory
    # a new process on the same state directory finds the job instead of posting another
    assert RequesterProcess(dep, world["requester"], store, tmp_path / "req", **kw).post(spec, agg_acct.address) == job_id

    def aggregator():
        return AggregatorProcess(dep, agg_acct, store, mailbox, job_id, tmp_path / "agg", collect_timeout=60, **kw)

    def validator():
        return ValidatorProcess(dep, val_acct, store, mailbox, test.X, test.y, job_id, tmp_path / "val", **kw)

    procs = {"requester": requester, "aggregator": aggregator(), "validator": validator()}
    for i, (acct, idx) in enumerate(zip(world["providers"], parts)):
        procs[f"p{i}"] = ProviderProcess(dep, acct, store, mailbox, train.X[idx], train.y[idx], job_id, tmp_path / f"p{i}", **kw)
    restarted = False
    for _ in range(60):
        for name, proc in list(procs.items()):
            if not proc.done:
                assert proc.safe_step(), logs[-1]
        if not restarted and dep.job(job_id)["current_round"] == 1:
            # both restarted between rounds: the chain and their state directories say where they were
            procs["aggregator"], procs["validator"] = aggregator(), validator()
            restarted = True
        if all(p.done for p in procs.values()):
            break
        if dep.job(job_id)["state"] == JobState.FINALIZING:
            world["chain"].advance_time(1)  # the challenge window passes
    assert restarted and all(p.done for p in procs.values()), "\n".join(logs)
    assert dep.job(job_id)["state"] == JobState.SETTLED
    assert [int(e["round"]) for e in dep.market.events("RoundCommitted", job_id=job_id)] == [0, 1]
    claimed = {e["account"] for e in dep.market.events("RewardClaimed", job_id=job_id)}
    # every member claims its leaf: providers, the validator and the aggregator (its stake back)
    assert claimed == {*(a.address for a in world["providers"][:3]), val_acct.address, agg_acct.address}
    assert dep.licence.events("ModelMinted", job_id=job_id)
    for r in (0, 1):  # the restarted validator still revealed the scores it sealed before
        assert mailbox.read(f"job-{job_id}-round-{r}-reveals")
    assert len(json.loads((tmp_path / "req" / "accuracy.json").read_text())) == 2
    assert not any("step failed" in line for line in logs), "\n".join(logs)


def test_run_loops_until_done_or_a_signal(tmp_path):
    import os
    import signal
    import threading

    from fedmarket.processes.base import RoleProcess, Stop

    class Counter(RoleProcess):
        role = "counter"

        def __init__(self, last: int | None):
            super().__init__(None, tmp_path / "c", log=lines.append)
            self.last = last

        def step(self):
            if self.steps == self.last:
                raise Stop
            if self.steps == 2:
                raise ValueError("a passing problem")  # logged once, retried next step

    lines: list[str] = []
    done = Counter(last=5)
    done.run(poll_interval=0.001)
    assert done.done and done.steps == 5
    assert sum("step failed, will retry: ValueError: a passing problem" in line for line in lines) == 1

    before = signal.getsignal(signal.SIGTERM)
    forever = Counter(last=None)
    threading.Timer(0.2, lambda: os.kill(os.getpid(), signal.SIGTERM)).start()
    forever.run(poll_interval=0.01)  # returns once SIGTERM arrives, after the current step
    assert not forever.done and forever.steps > 3 and "stopped by signal" in lines[-1]
    assert signal.getsignal(signal.SIGTERM) is before
    assert Counter(last=None).run(poll_interval=0.001, until=lambda: True) is None
