"""A job with every role on a machine of its own: each role process in its own Linux network
namespace and its own private directory, the chain (anvil) and the broker (NATS JetStream) in
namespaces of their own, all joined by one bridge on addresses the harness creates. The job
settles, `fedmarket audit` from yet another namespace finds it correct, and a role's own
127.0.0.1 reaches nothing of the others'."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time

import pytest

from fedmarket.chain.anvil import find_anvil
from fedmarket.testing.localjob import LocalJob
from fedmarket.testing.natsserver import find_nats_server
from fedmarket.testing.netns import LabServices, NetLab, netns_available

pytestmark = pytest.mark.anvil


def _need(what: str | None) -> None:
    if what:
        if os.environ.get("CI"):
            pytest.fail(f"required in CI: {what}")
        pytest.skip(what)


@pytest.fixture
def lab():
    _need(netns_available())
    _need(None if find_anvil() else "anvil not installed (run `npm install`)")
    _need(None if find_nats_server() else "nats-server not installed (apt-get install nats-server)")
    with NetLab() as lab:
        yield lab


def in_ns(lab: NetLab, name: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*lab.exec(name), *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("privacy", ["plain", "secagg_dp"])
def test_a_job_with_every_role_in_its_own_network_namespace(lab, tmp_path, privacy):
    """`plain`: sealed updates over the broker; `secagg_dp`: SecAgg+ with distributed noise, each
    phase's messages over the broker between the namespaces."""
    with LabServices(lab, tmp_path / "broker") as services:
        job = LocalJob.make(tmp_path / "job", services.rpc_url, providers=3, validators=1, rounds=2,
                            broker=services.broker.url, prefix=lab.exec, privacy=privacy)
        for name in ("requester", "aggregator", "validator-0", *(f"provider-{i}" for i in range(3))):
            lab.add(name)
        try:
            job.setup()
            time.sleep(0.05)
            started = time.time()
            job.start_all()
            job.wait_done(timeout=180)
        finally:
            job.stop_all()
        rep = job.report()
        assert rep["state"] == "SETTLED" and rep["minted"] and rep["holdings_conserved"], rep
        assert rep["rounds_committed"] == [0, 1] and rep["round_counts"] == [3, 3], (rep, job.log("aggregator")[-2000:])
        assert rep["claimed"] == rep["participants_claimable"], rep
        assert job.shared_writes(started) == []  # each role wrote only in its own directory
        # a role's 127.0.0.1 is its own: the chain and the broker are only on the bridge
        probe = "import socket,sys; print(socket.socket().connect_ex(('127.0.0.1', int(sys.argv[1]))))"
        codes = [in_ns(lab, "provider-0", sys.executable, "-c", probe, p).stdout.strip() for p in ("8545", "4222")]
        assert codes == [str(errno.ECONNREFUSED)] * 2, codes
        # the audit, from a namespace of its own, with the chain and the broker only
        lab.add("auditor")
        audit = in_ns(lab, "auditor", sys.executable, "-m", "fedmarket", "audit", str(job.job_id), "--rpc",
                      services.rpc_url, "--contracts", str(job.workdir / "contracts.json"), "--store", services.broker.url)
        assert audit.returncode == 0 and "verdict: ok" in audit.stdout, audit.stdout + audit.stderr
