"""A whole job across role processes that share no directory: every role has a private
directory of its own (working directory, state, logs) and reaches the others only through the
chain and one NATS JetStream server (`--store` and `--mailbox nats://...`), as on machines of
their own."""

from __future__ import annotations

import time

import pytest

from fedmarket.roles.auditor import Auditor
from fedmarket.roles.common import round_topic
from fedmarket.storage import open_mailbox, open_store
from fedmarket.testing.localjob import LocalJob

pytestmark = pytest.mark.anvil


@pytest.fixture(scope="module")
def node(wallclock_node):
    return wallclock_node


@pytest.fixture
def broker_job(node, nats_server, tmp_path):
    job = LocalJob.make(tmp_path, node.url, providers=3, validators=1, rounds=2, broker=nats_server.url)
    job.setup()
    yield job
    job.stop_all()


def test_a_job_with_no_shared_directory(broker_job, nats_server):
    job = broker_job
    time.sleep(0.05)  # file times come from a coarse clock: keep the harness's own writes (setup) before `started`
    started = time.time()
    t0 = time.monotonic()
    job.start_all()
    job.wait_done(timeout=150)
    rep = job.report()
    assert rep["state"] == "SETTLED" and rep["minted"] and rep["holdings_conserved"], rep
    assert rep["rounds_committed"] == [0, 1] and rep["round_counts"] == [3, 3], rep
    assert rep["claimed"] == rep["participants_claimable"], rep
    assert rep["escrow"] == rep["paid"] + rep["fee"] + rep["refunded"] and rep["job_funds_left_in_market"] == 0, rep
    # no directory was written by more than one role: each wrote only in its own home, and
    # nothing else in the work directory changed (no blobs/, no mailbox/, no shared state)
    assert job.shared_writes(started) == []
    for name, proc in job.procs.items():
        homes = {a.split("/roles/")[1].split("/")[0] for a in map(str, proc.args) if "/roles/" in a}
        assert homes == {name}, (name, proc.args)
        assert (job.home(name) / "state").is_dir()
    assert not (job.workdir / "blobs").exists() and not (job.workdir / "mailbox").exists()
    # what the roles exchanged is on the broker, and checks out from there alone
    box = open_mailbox(nats_server.url)
    store = open_store(nats_server.url)
    try:
        receipts = box.read(round_topic(job.job_id, 1))
        assert len(receipts) == 3
        assert box.read(round_topic(job.job_id, 1) + "-attestations")
        assert Auditor(job.dep, store).audit(job.job_id).ok
    finally:
        box.close()
        store.close()
    print(f"job across {len(job.procs)} processes on NATS {nats_server.url}: {time.monotonic() - t0:.1f}s")


def test_the_broker_restarts_and_a_provider_moves_to_a_new_machine_mid_job(broker_job, nats_server):
    """Faults across hosts: the NATS server goes away for two seconds after round 0 (JetStream
    keeps its files), and a provider is killed and started again from an empty directory (a new
    machine with the same key), which resumes from the chain and the broker alone."""
    job = broker_job
    job.collect_timeout = 4.0
    job.start_all()
    job.wait(lambda: job.committed() >= 1, 90, "round 0 to be committed")
    job.kill("provider-1")
    nats_server.stop()
    time.sleep(2.0)
    nats_server.start()  # same port, same store
    old = job.home("provider-1")
    old.rename(old.with_name("provider-1-old-machine"))
    job.start_provider(1)
    job.wait_done(timeout=150)
    rep = job.report()
    assert rep["state"] == "SETTLED" and rep["holdings_conserved"] and rep["rounds_committed"] == [0, 1], rep
    assert rep["claimed"] == rep["participants_claimable"], rep  # the moved provider claimed too
    assert rep["escrow"] == rep["paid"] + rep["fee"] + rep["refunded"] and rep["job_funds_left_in_market"] == 0, rep
    assert "done" in job.log("provider-1")
