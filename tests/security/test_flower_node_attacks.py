"""The aggregator's ServerApp against a provider's SuperNode (found by a review of the Flower
transport): what it can make the provider's node run, and how many updates of a round it can make
the node release. Each test is written as the attacker and passes only when the attack fails."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("flwr", reason="the Flower transport is the optional `flower` extra")

import sec_support  # noqa: E402
from flwr.app import ConfigRecord  # noqa: E402

from fedmarket.protocol.encoding import canonical_json, untrusted_json  # noqa: E402
from fedmarket.roles import Provider  # noqa: E402
from fedmarket.roles import sealed as sl  # noqa: E402
from fedmarket.storage import LocalBlobStore, Mailbox, cid_of  # noqa: E402
from fedmarket.transport import flower as fl  # noqa: E402


def test_no_app_runner_but_the_guarded_client_app_runs_on_a_providers_node(tmp_path):
    """ATTACK (the aggregator's SuperLink): submit a run whose bundle declares an `agentapp`. Flower
    marks the run an agent app, and the provider's SuperNode launches `flwr-agentapp` by name, which
    installed the bundle and imported its code: only `flwr-clientapp` went through the bundle check
    (`flower_guard`), so any code ran on the provider's machine (its keystore, its password in the
    environment, its data). Every other app runner a SuperNode can launch is a refusal now."""
    from flwr.supercore.constant import TASK_TYPE_TO_COMMAND, TaskType

    from fedmarket.transport.flower_nodes import SuperNode

    node = SuperNode(tmp_path / "sn", "127.0.0.1:1", {"job": 0}, "ab" * 32)
    guard = (tmp_path / "sn" / "bin").resolve()
    for task_type, command in TASK_TYPE_TO_COMMAND.items():
        found = shutil.which(command, path=node.env["PATH"])
        assert found is not None and Path(found).resolve().parent == guard, f"{task_type.value} runs {found}"
        if task_type != TaskType.CLIENT_APP:
            run = subprocess.run([found, "--insecure"], capture_output=True, text=True, timeout=30)
            assert run.returncode != 0 and "refusing" in run.stderr, (command, run)


def _node(make, monkeypatch, tmp_path, **kw):
    """A job, and the victim provider's SuperNode context: `node_provider` builds a fresh Provider for
    each message, as a fresh ClientApp process does."""
    sec_support.flower_jobs(monkeypatch)
    s = make(**kw)
    s.open()
    victim, node = s.providers[0], tmp_path / "victim-node"
    context = SimpleNamespace(node_config={"job": s.job, "store": str(node / "blobs"), "mailbox": str(node / "mailbox"),
                                           "state": str(node / "committed")})
    monkeypatch.setattr(fl, "node_deployment", lambda cfg: s.dep)
    monkeypatch.setattr(fl, "node_provider", lambda cfg, dep=None: (Provider(s.dep, victim.account, LocalBlobStore(cfg["store"]),
                                                                   Mailbox(cfg["mailbox"]), victim.X, victim.y), s.job))
    monkeypatch.setattr(fl, "_reply", lambda msg, record: SimpleNamespace(content={fl.RECORD: dict(ConfigRecord(record))}))
    return s, context, victim


def _msg(record: dict):
    return SimpleNamespace(content={fl.RECORD: dict(ConfigRecord(record))})


def _commitment(reply) -> bytes:
    return bytes.fromhex(untrusted_json(reply.content[fl.RECORD]["commitment"])["commitment"][2:])


def test_two_train_messages_at_once_release_one_update(make, monkeypatch, tmp_path):
    """ATTACK (the aggregator's ServerApp): push two `train` messages of a round to one SuperNode at
    once. Flower runs a ClientApp process per message, all at the same time, and both found nothing
    committed and trained, each with fresh DP noise; with the first one sealed and revealed in
    between, the second overwrote the kept blob and a second reveal sent it: two independently
    noised releases of one round (averaged, half the noise variance). A round's look-train-keep is
    done under a lock now, and a kept round is never overwritten."""
    s, context, victim = _node(make, monkeypatch, tmp_path, providers=3, rounds=1, privacy="dp_local")
    train = _msg({"job-id": s.job, "round": 0, "blobs": fl.round_blobs(s.dep, s.store, s.job)})
    paused, go = threading.Event(), threading.Event()
    load = sl.Pending.load

    def racing_load(self, job_id, r):  # T2 pauses right after finding nothing kept
        out = load(self, job_id, r)
        if threading.current_thread().name == "T2" and out is None and not paused.is_set():
            paused.set()
            go.wait(60)
        return out

    monkeypatch.setattr(sl.Pending, "load", racing_load)
    replies = {}
    threads = [threading.Thread(target=lambda n=n: replies.__setitem__(n, fl.train_on_node(train, context)), name=n)
               for n in ("T2", "T1")]
    threads[0].start()
    assert paused.wait(60)
    threads[1].start()
    time.sleep(1.0)  # T1 runs whole meanwhile, unless it waits for T2
    early = "T1" in replies
    go.set()
    for t in threads:
        t.join(120)
    assert _commitment(replies["T1"]) == _commitment(replies["T2"]), "two updates of one round were committed"
    assert not early
    c = _commitment(replies["T1"])
    seal = sl.seal_message(s.dep, s.agg.account, s.job, 0, {victim.address: c})
    reveal = _msg({"job-id": s.job, "round": 0, "seal": canonical_json(seal).decode()})
    blobs = {cid_of(fl.reveal_on_node(reveal, context).content[fl.RECORD]["blob"]) for _ in range(2)}
    assert len(blobs) == 1


def test_a_kept_round_is_never_overwritten(tmp_path):
    """The store of committed updates refuses a second update of a round (a second release)."""
    from fedmarket.errors import FedMarketError

    pending = sl.Pending(tmp_path)
    pending.keep(1, 0, {"a": 1}, b"first", b"{}")
    with pytest.raises(FedMarketError, match="committed already"):
        pending.keep(1, 0, {"a": 2}, b"second", b"{}")
    assert pending.load(1, 0)[1] == b"first"


def test_the_serverapp_cannot_fill_a_providers_store_with_junk(make, monkeypatch, tmp_path):
    """ATTACK (the aggregator's ServerApp): send a train message (and a rewards message) whose blobs
    are junk besides the job's own, megabytes of it. Every blob a message carried was stored in the
    provider's own store, for good. Only the blobs the chain fixes for the job are filed now (its
    spec, the last round's metrics document and the model it names, the posted rewards document),
    each within its size."""
    s, context, victim = _node(make, monkeypatch, tmp_path, providers=3, rounds=1)
    junk = [bytes([i]) * (4 << 20) for i in range(3)]
    fl.train_on_node(_msg({"job-id": s.job, "round": 0, "blobs": fl.round_blobs(s.dep, s.store, s.job) + junk}), context)
    fl.file_on_node(_msg({"job-id": s.job, "blobs": junk}), context)
    kept = LocalBlobStore(context.node_config["store"])
    assert not any(kept.has(cid_of(b)) for b in junk)
    assert kept.has(cid_of(fl.round_blobs(s.dep, s.store, s.job)[0]))  # the spec it trains on


def test_a_reply_that_opens_no_sealed_commitment_is_not_filed_by_the_serverapp(make, monkeypatch, tmp_path):
    """ATTACK (any node that reaches the aggregator's SuperLink: the ServerApp sends every node the
    reveal message): answer it with a message naming some provider and a blob far past the job's
    update size. It was stored in the aggregator's store and posted on the round's topic, whoever
    sent it. The ServerApp files a reply now only within the job's update size and only if it opens
    its provider's commitment in the round's seal (as `Relay.relay_round` calls it); the victim's
    own reply is filed."""
    from fedmarket.errors import FedMarketError, StorageError
    from fedmarket.protocol.encoding import vector_blob_limit

    s, context, victim = _node(make, monkeypatch, tmp_path, providers=3, rounds=1)
    c = _commitment(fl.train_on_node(_msg({"job-id": s.job, "round": 0, "blobs": fl.round_blobs(s.dep, s.store, s.job)}),
                                     context))
    seal = sl.seal_message(s.dep, s.agg.account, s.job, 0, {victim.address: c})
    genuine = fl.reveal_on_node(_msg({"job-id": s.job, "round": 0, "seal": canonical_json(seal).decode()}),
                                context).content[fl.RECORD]
    store, box = LocalBlobStore(tmp_path / "agg-blobs"), Mailbox(tmp_path / "agg-mailbox")
    limit = vector_blob_limit(s.spec.n_params)
    file = lambda rec: fl.file_update(store, box, s.job, 0, rec, seal=seal, limit=limit)  # noqa: E731
    huge = b"\x00" * (8 << 20)
    message = {**untrusted_json(genuine["message"]), "update_cid": cid_of(huge)}
    with pytest.raises(StorageError, match="past the"):
        file({"message": canonical_json(message).decode(), "blob": huge})
    small = b"\x01" * 64
    for provider in (victim.address, s.providers[1].address):  # a changed salt, or a provider not in the seal
        forged = {**untrusted_json(genuine["message"]), "provider": provider, "update_cid": cid_of(small),
                  "salt": "0x" + "00" * 32}
        with pytest.raises(FedMarketError, match="opens no commitment"):
            file({"message": canonical_json(forged).decode(), "blob": small})
    assert not store.has(cid_of(huge)) and not store.has(cid_of(small))
    assert file(genuine) == victim.address and store.has(cid_of(genuine["blob"]))


def test_a_spec_naming_another_bundle_runs_no_code_on_a_providers_node(anvil, tmp_path):
    """ATTACK (the requester with its aggregator; found by a review of the transport): post a Flower
    job whose spec names the attackers' own app bundle. `provider supernode` handed the SuperNode's
    guard the spec's hash, never this installation's, so the attackers' ClientApp ran on the
    provider's machine next to its keystore and `$FEDMARKET_PASSWORD`. The provider now refuses such
    a job in one line, before it stakes and before any SuperNode starts."""
    import os
    import sys

    import numpy as np

    from fedmarket.chain.rpc_backend import RpcChain
    from fedmarket.fl.data import load_dataset
    from fedmarket.keys import dev_account
    from fedmarket.roles import Requester
    from fedmarket.spec import DataSchema, DeadlineSpec, JobSpec, ParticipationSpec, RewardSpec, TrainingSpec, TransportSpec
    from fedmarket.testing.localjob import deploy_dev

    chain = RpcChain(anvil.url)
    deployer, treasury, requester, agg, prov = (dev_account(i) for i in (0, 1, 2, 3, 40))
    dep = deploy_dev(chain, deployer, treasury.address, tmp_path, [requester, agg, prov], mint=10**21)
    ds = load_dataset("digits")
    np.savez(tmp_path / "p0.npz", X=ds.X[:200], y=ds.y[:200])
    theirs = "e7" * 32  # the sha256 of the attackers' bundle
    spec = JobSpec(
        name="theirs", data=DataSchema(n_features=64, n_classes=10, feature_low=[0.0] * 64, feature_high=[16.0] * 64),
        training=TrainingSpec(rounds=1, local_epochs=1), reward=RewardSpec(escrow=10**20, provider_stake=10**18),
        participation=ParticipationSpec(min_providers=2, max_providers=2),
        deadlines=DeadlineSpec(join_window=3_600, round_duration=600, challenge_period=1, claim_period=86_400,
                               response_period=5),
        transport=TransportSpec(flower_app_hash=theirs))
    (tmp_path / "spec.json").write_bytes(spec.canonical())
    job = Requester(dep, requester, LocalBlobStore(tmp_path / "agg-blobs")).post(spec, agg.address)
    run = subprocess.run(
        [sys.executable, "-m", "fedmarket", "provider", "supernode", "--rpc", anvil.url, "--contracts",
         str(tmp_path / "contracts.json"), "--job", str(job), "--dev-account", "40", "--data", str(tmp_path / "p0.npz"),
         "--superlink", "127.0.0.1:1", "--spec", str(tmp_path / "spec.json"), "--store", str(tmp_path / "p0-blobs"),
         "--state-dir", str(tmp_path / "p0-state")],
        capture_output=True, text=True, timeout=120, env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"})
    assert run.returncode != 0
    assert f"names Flower app bundle {theirs[:16]}" in run.stderr + run.stdout, run.stderr[-2000:]
    assert not list((tmp_path / "p0-state").glob("**/supernode/bin"))  # no SuperNode was set up
    assert tuple(dep.market.call("membership", job, prov.address)) == (0, 0)  # nothing staked
