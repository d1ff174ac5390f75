"""A whole job on Flower's Deployment Engine from the command line, as docs/deployment.md runs it:
`fedmarket aggregator serve-flower` (SuperLink + the market's Flower app + the aggregator's
process) and one `fedmarket provider supernode` per provider, each with its own store, state
and data, on anvil. One provider's host vanishes mid-round (its process and SuperNode killed
after the round's message reached it): the round is committed without it, the job settles,
every live participant claims, and no Flower process is left. And the aggregator killed
(SIGKILL) after round 0 and started again with its state directory finishes the job."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("flwr", reason="the Flower transport is the optional `flower` extra")

from fedmarket.chain.anvil import AnvilNode, find_anvil
from fedmarket.chain.rpc_backend import RpcChain
from fedmarket.fl.data import load_dataset, subset
from fedmarket.fl.partition import iid_partition
from fedmarket.keys import dev_account
from fedmarket.market import JobState
from fedmarket.roles import Requester
from fedmarket.roles.common import committed_rounds
from fedmarket.spec import DataSchema, DeadlineSpec, JobSpec, ParticipationSpec, RewardSpec, TrainingSpec, TransportSpec
from fedmarket.storage import LocalBlobStore
from fedmarket.testing.localjob import deploy_dev
from fedmarket.transport.flower import app_hash
from fedmarket.transport.flower_nodes import descendants, free_port

pytestmark = [pytest.mark.skipif(find_anvil() is None, reason="needs anvil (npm install)"), pytest.mark.slow]

N, ROUNDS, GONE = 3, 2, 2  # provider GONE vanishes in round 1


@pytest.fixture
def procs():
    """Every process the test starts (each in its own session), ended with all it started."""
    started: list[subprocess.Popen] = []
    yield started
    family = [pid for p in started if p.poll() is None for pid in descendants(p.pid)]
    for p in started:
        if p.poll() is None:
            p.terminate()
    for p in started:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    for pid in family:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _spawn(procs, tmp, name: str, args: list[str]) -> subprocess.Popen:
    log = open(tmp / f"{name}.log", "wb")  # noqa: SIM115 - closed when the process is reaped
    p = subprocess.Popen([sys.executable, "-m", "fedmarket", *args], stdout=log, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, start_new_session=True,
                         env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"})
    log.close()
    procs.append(p)
    return p


def _wait(pred, timeout: float, what: str, logs) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n" + "\n".join(f"--- {p.name}\n{p.read_text()[-2500:]}"
                                                                                for p in logs))
        time.sleep(0.2)


def _posted_job(chain, node, tmp_path, n: int, name: str) -> tuple:
    """Deploy, fund and mint on `node`, write each provider's digits shard and the spec (naming this
    installation's Flower app), post the job; returns (dep, requester, provider accounts, job)."""
    deployer, treasury, requester, agg = (dev_account(i) for i in range(4))
    provs = [dev_account(40 + i) for i in range(n)]
    dep = deploy_dev(chain, deployer, treasury.address, tmp_path, [requester, agg, *provs], mint=10**21)
    ds = load_dataset("digits")
    for i, idx in enumerate(iid_partition(ds.y, n, 0)):
        np.savez(tmp_path / f"p{i}.npz", X=subset(ds, idx).X, y=subset(ds, idx).y)
    spec = JobSpec(
        name=name, data=DataSchema(n_features=64, n_classes=10, feature_low=[0.0] * 64, feature_high=[16.0] * 64),
        training=TrainingSpec(rounds=ROUNDS, local_epochs=1), reward=RewardSpec(escrow=10**20, provider_stake=10**18),
        participation=ParticipationSpec(min_providers=n, max_providers=n),
        deadlines=DeadlineSpec(join_window=3_600, round_duration=600, challenge_period=1, claim_period=86_400,
                               response_period=5),
        transport=TransportSpec(flower_app_hash=app_hash()))
    (tmp_path / "spec.json").write_bytes(spec.canonical())
    job = Requester(dep, requester, LocalBlobStore(tmp_path / "agg-blobs")).post(spec, agg.address)
    return dep, requester, provs, job


def test_a_job_over_flower_from_the_cli_survives_a_vanishing_provider(tmp_path, procs):
    with AnvilNode() as node:
        chain = RpcChain(node.url)
        dep, requester, provs, job = _posted_job(chain, node, tmp_path, N, "flower-cli")

        common = ["--rpc", node.url, "--contracts", str(tmp_path / "contracts.json"), "--job", str(job), "--poll", "0.2"]
        port = free_port()
        _spawn(procs, tmp_path, "aggregator", ["aggregator", "serve-flower", *common, "--dev-account", "3",
                                               "--store", str(tmp_path / "agg-blobs"), "--mailbox", str(tmp_path / "agg-box"),
                                               "--state-dir", str(tmp_path / "agg-state"), "--flower-port", str(port),
                                               "--collect-timeout", "60"])
        providers = [_spawn(procs, tmp_path, f"provider-{i}", [
            "provider", "supernode", *common, "--dev-account", str(40 + i), "--data", str(tmp_path / f"p{i}.npz"),
            "--superlink", f"127.0.0.1:{port}", "--spec", str(tmp_path / "spec.json"),
            "--store", str(tmp_path / f"p{i}-blobs"), "--state-dir", str(tmp_path / f"p{i}-state")]) for i in range(N)]
        logs = [tmp_path / "aggregator.log", *(tmp_path / f"provider-{i}.log" for i in range(N))]
        gone_node_log = tmp_path / f"p{GONE}-state" / "supernode" / "supernode.log"

        _wait(lambda: len(committed_rounds(dep, job)) >= 1, 240, "round 0", logs)
        # provider GONE's host vanishes once round 1's message reached its SuperNode
        _wait(lambda: len(re.findall("Receiving: train message", gone_node_log.read_text())) >= 2, 120,
              "round 1 at the vanishing provider", logs + [gone_node_log])
        family = descendants(providers[GONE].pid)
        for pid in [providers[GONE].pid, *family]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        providers[GONE].wait()

        def settled() -> bool:
            state = dep.job(job)["state"]
            if state == JobState.FINALIZING:
                node.rpc("evm_mine", [])  # the node's clock moves a second a block
            if state == JobState.FINALIZING and chain.timestamp() >= int(dep.job(job)["challenge_deadline"]):
                Requester(dep, requester, LocalBlobStore(tmp_path / "agg-blobs")).settle(job)
            return dep.job(job)["state"] in (JobState.SETTLED, JobState.FAILED, JobState.CANCELLED)

        _wait(settled, 240, "settlement", logs)
        family = [pid for p in procs if p.poll() is None for pid in descendants(p.pid)]
        for p in [procs[0], *(p for i, p in enumerate(providers) if i != GONE)]:
            assert p.wait(timeout=120) == 0, (tmp_path / "aggregator.log").read_text()[-3000:]

        assert dep.job(job)["state"] == JobState.SETTLED
        assert [c.count for c in committed_rounds(dep, job)] == [N, N - 1]
        claimed = [dep.market.events("RewardClaimed", job_id=job, account=a.address) for a in provs]
        assert all(claimed[i] for i in range(N) if i != GONE) and not claimed[GONE]
        time.sleep(1.0)  # SuperExec and app processes notice their parents are gone within 0.2 s
        assert not [pid for pid in family if _alive(pid)]  # every Flower process ended with its role's
        relay = (tmp_path / "agg-state" / "flower" / "run.log").read_text()
        assert f"round 0: {N} SuperNodes, {N} commitments, {N} updates filed" in relay, relay[-3000:]
        assert re.search(rf"rewards document sent to ({N - 1}|{N}) SuperNodes", relay), relay  # and the live ones claimed
        assert re.search(rf"round 1: {N} SuperNodes, ({N - 1}|{N}) commitments, {N - 1} updates filed in [0-9.]+ s"
                         r"(, 1 did not answer|\n  refused: node \d+: Error: Node Unavailable)", relay), relay


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_a_killed_aggregator_restarted_with_its_state_directory_finishes_the_job(tmp_path, procs):
    n = 2
    with AnvilNode() as node:
        chain = RpcChain(node.url)
        dep, requester, provs, job = _posted_job(chain, node, tmp_path, n, "flower-restart")
        common = ["--rpc", node.url, "--contracts", str(tmp_path / "contracts.json"), "--job", str(job), "--poll", "0.2"]
        port = free_port()
        aggregator_args = ["aggregator", "serve-flower", *common, "--dev-account", "3", "--store", str(tmp_path / "agg-blobs"),
                           "--mailbox", str(tmp_path / "agg-box"), "--state-dir", str(tmp_path / "agg-state"),
                           "--flower-port", str(port), "--collect-timeout", "60"]
        first = _spawn(procs, tmp_path, "aggregator", aggregator_args)
        providers = [_spawn(procs, tmp_path, f"provider-{i}", [
            "provider", "supernode", *common, "--dev-account", str(40 + i), "--data", str(tmp_path / f"p{i}.npz"),
            "--superlink", f"127.0.0.1:{port}", "--spec", str(tmp_path / "spec.json"),
            "--store", str(tmp_path / f"p{i}-blobs"), "--state-dir", str(tmp_path / f"p{i}-state")]) for i in range(n)]
        logs = [tmp_path / "aggregator.log", *(tmp_path / f"provider-{i}.log" for i in range(n))]
        _wait(lambda: len(committed_rounds(dep, job)) >= 1, 240, "round 0", logs)
        first.kill()  # SIGKILL: its SuperLink and app run go with it
        first.wait()
        time.sleep(1.0)
        _spawn(procs, tmp_path, "aggregator-again", aggregator_args)
        logs.append(tmp_path / "aggregator-again.log")

        def settled() -> bool:
            state = dep.job(job)["state"]
            if state == JobState.FINALIZING:
                node.rpc("evm_mine", [])
                if chain.timestamp() >= int(dep.job(job)["challenge_deadline"]):
                    Requester(dep, requester, LocalBlobStore(tmp_path / "agg-blobs")).settle(job)
            return dep.job(job)["state"] in (JobState.SETTLED, JobState.FAILED, JobState.CANCELLED)

        _wait(settled, 300, "settlement", logs)
        for p in [procs[-1], *providers]:
            assert p.wait(timeout=150) == 0, "\n".join(f.read_text()[-2000:] for f in logs)
        assert [c.count for c in committed_rounds(dep, job)] == [n, n]
        assert all(dep.market.events("RewardClaimed", job_id=job, account=a.address) for a in provs)
        assert "round 1 committed" in (tmp_path / "aggregator-again.log").read_text()  # the restarted one went on
        assert "round 1 committed" not in (tmp_path / "aggregator.log").read_text()
