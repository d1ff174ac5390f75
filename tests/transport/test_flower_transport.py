"""Market rounds on Flower's Deployment Engine: real `flower-superlink` and `flower-supernode`
processes on 127.0.0.1 and `flwr run` of the market's Flower app, on anvil.

The Flower rounds give the very aggregates the mailbox gives (same job on two fresh nodes), over
TLS (self-signed CA made here) with SuperNode authentication (an unregistered SuperNode gets no
work); a provider refuses a bundle other than the one its job spec names; a forged blob is
refused by the ServerApp's filing. Every process is stopped in a finalizer."""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import signal
import time

import numpy as np
import pytest

pytest.importorskip("flwr", reason="the Flower transport is the optional `flower` extra")

from fedmarket.chain.anvil import AnvilNode, find_anvil
from fedmarket.chain.rpc_backend import RpcChain
from fedmarket.fl.data import load_dataset, subset
from fedmarket.fl.partition import iid_partition
from fedmarket.keys import dev_account
from fedmarket.market import Deployment
from fedmarket.processes import AggregatorProcess
from fedmarket.roles import Aggregator, Provider, Requester
from fedmarket.roles.auditor import Auditor
from fedmarket.roles.common import committed_rounds, round_topic
from fedmarket.roles.sealed import seal_and_reveal
from fedmarket.spec import DataSchema, JobSpec, ParticipationSpec, RewardSpec, TrainingSpec, TransportSpec
from fedmarket.storage import LocalBlobStore, Mailbox
from fedmarket.transport.flower import APP_DIR, app_hash
from fedmarket.transport.flower_nodes import Serving, SuperLink, SuperNode, Tls, stop_all
from fedmarket.transport.flower_processes import FlowerAggregatorProcess

pytestmark = pytest.mark.skipif(find_anvil() is None, reason="needs anvil (npm install)")

N, ROUNDS = 2, 2
PROVIDER0 = 40  # dev account of provider 0


class Market:
    """A fresh deployment and a started job on `node`; each party with its own store and mailbox."""

    def __init__(self, tmp, node: AnvilNode, n: int = N, rounds: int = ROUNDS, shared: bool = False):
        self.tmp, self.url = tmp, node.url
        chain = RpcChain(node.url)
        deployer, treasury, requester, agg = (dev_account(i) for i in range(4))
        provs = [dev_account(PROVIDER0 + i) for i in range(n)]
        for a in [deployer, requester, agg, *provs]:
            chain.fund(a.address, 10**21)
        self.dep = dep = Deployment.deploy(chain, deployer, treasury.address, 100)
        dep.save(tmp / "contracts.json", chain_id=chain.chain_id, block=dep.token.from_block, deployer=deployer.address)
        for a in [requester, agg, *provs]:
            dep.token.transact("mint", a.address, 10**21, sender=deployer)
        ds = load_dataset("digits")
        parts = iid_partition(ds.y, n, 0)
        self.spec = spec = JobSpec(
            name="flower", data=DataSchema(n_features=64, n_classes=10, feature_low=[0.0] * 64, feature_high=[16.0] * 64),
            training=TrainingSpec(rounds=rounds, local_epochs=1), reward=RewardSpec(escrow=10**20, provider_stake=10**18),
            participation=ParticipationSpec(min_providers=n, max_providers=n),
            transport=TransportSpec(flower_app_hash=app_hash()))
        self.agg_store, self.agg_box = LocalBlobStore(tmp / "agg-blobs"), Mailbox(tmp / "agg-box")
        self.agg_account = agg
        self.aggregator = Aggregator(dep, agg, self.agg_store, self.agg_box)
        self.providers, self.data = [], []
        for i in range(n):
            X, y = subset(ds, parts[i]).X, subset(ds, parts[i]).y
            np.savez(tmp / f"p{i}.npz", X=X, y=y)
            self.data.append(tmp / f"p{i}.npz")
            store = self.agg_store if shared else LocalBlobStore(tmp / f"p{i}-blobs")
            store.put(spec.canonical())  # what `fedmarket provider run --spec` does
            box = self.agg_box if shared else Mailbox(tmp / f"p{i}-box")
            self.providers.append(Provider(dep, provs[i], store, box, X, y))
        self.job = Requester(dep, requester, self.agg_store).post(spec, agg.address)
        self.aggregator.accept(self.job)
        for p in self.providers:
            p.join(self.job)
        self.aggregator.start(self.job)

    def node_config(self, i: int) -> dict:
        return {"rpc": self.url, "contracts": str(self.tmp / "contracts.json"), "job": self.job, "data": str(self.data[i]),
                "store": str(self.tmp / f"p{i}-blobs"), "mailbox": str(self.tmp / f"p{i}-box"), "dev-account": PROVIDER0 + i,
                "state": str(self.tmp / f"p{i}-committed")}

    def run_config(self, **kw) -> dict:
        cfg = {"rpc": self.url, "contracts": str(self.tmp / "contracts.json"), "job-id": self.job,
               "store": str(self.tmp / "agg-blobs"), "mailbox": str(self.tmp / "agg-box"), "round-timeout": 120.0,
               "node-wait": 30.0, "give-up-after": 0.0, "poll": 0.1}
        cfg.update(kw)
        return cfg

    def commit_rounds(self, timeout: float, services) -> None:
        """The aggregator's process commits every round as its mailbox fills (from the ServerApp)."""
        proc = AggregatorProcess(self.dep, self.agg_account, self.agg_store, self.agg_box, self.job, self.tmp / "agg-state",
                                 collect_timeout=timeout, log=lambda m: None)
        deadline = time.monotonic() + timeout

        def over() -> bool:
            if time.monotonic() > deadline or any(not s.alive for s in services):
                return True
            return len(committed_rounds(self.dep, self.job)) >= int(self.dep.job(self.job)["rounds"])

        proc.run(0.1, until=over)


@pytest.fixture
def services():
    """Flower processes started by a test; every one stopped (with what it started) at the end."""
    started = []
    yield started
    stop_all(reversed(started))


def _certificates(tmp):
    """A self-signed CA and a SuperLink certificate for 127.0.0.1 signed by it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    pem = serialization.Encoding.PEM

    def cert(subject, issuer, key, signer, ca: bool):
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
             .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
             .not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                             x509.DNSName("localhost")]), critical=False)
        return b.sign(signer, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedmarket test CA")])
    ca = cert(ca_name, ca_name, ca_key, ca_key, True)
    server = cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]), ca_name, key, ca_key, False)
    (tmp / "ca.pem").write_bytes(ca.public_bytes(pem))
    (tmp / "server.pem").write_bytes(server.public_bytes(pem))
    (tmp / "server.key").write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return Tls(ca=tmp / "ca.pem", cert=tmp / "server.pem", key=tmp / "server.key")


def _node_key(path):
    """A SuperNode's authentication key pair (EC P-384, OpenSSH format): (private, public) paths."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    path.with_suffix(".key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                                           serialization.NoEncryption()))
    path.with_suffix(".pub").write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                                       serialization.PublicFormat.OpenSSH))
    return path.with_suffix(".key"), path.with_suffix(".pub")


def test_flower_rounds_over_tls_with_node_auth_give_the_mailbox_aggregates(tmp_path, services):
    # the mailbox transport (one shared store and mailbox): the same job on a fresh node (same
    # accounts, same job id)
    (tmp_path / "mailbox").mkdir()
    with AnvilNode() as node_a:
        a = Market(tmp_path / "mailbox", node_a, shared=True)
        for r in range(ROUNDS):
            for p in a.providers:
                p.train(a.job, r)
            seal_and_reveal(a.aggregator, a.providers, a.job, r)  # a Flower job's rounds are sealed
            a.aggregator.run_round(a.job, r)
        roots_a = [(c.model_root, c.updates_root, c.count) for c in committed_rounds(a.dep, a.job)]

    (tmp_path / "flower").mkdir()
    with AnvilNode() as node_b:
        b = Market(tmp_path / "flower", node_b)
        tls = _certificates(tmp_path / "flower")
        link = SuperLink(tmp_path / "flower" / "link", tls=tls, node_auth=True)
        services.append(link.start())
        link.wait_ready()
        keys = [_node_key(tmp_path / "flower" / f"node{i}") for i in range(N)]
        link.register(*(public for _, public in keys))
        for i, (private, _) in enumerate(keys):
            services.append(SuperNode(tmp_path / "flower" / f"node{i}", link.address, b.node_config(i), app_hash(),
                                      root_certificates=tls.ca, auth_key=private).start())
        stranger_key, _ = _node_key(tmp_path / "flower" / "stranger")  # never registered
        stranger = SuperNode(tmp_path / "flower" / "stranger", link.address, b.node_config(0), app_hash(),
                             root_certificates=tls.ca, auth_key=stranger_key).start()
        services.append(stranger)
        run = link.submit(b.run_config())
        services.append(run)
        b.commit_rounds(150, [link, run])
        deadline = time.monotonic() + 30
        while run.alive and time.monotonic() < deadline:
            time.sleep(0.1)
        log = run.output()
        roots_b = [(c.model_root, c.updates_root, c.count) for c in committed_rounds(b.dep, b.job)]
        assert len(roots_b) == ROUNDS, log[-3000:] + link.output()[-2000:]
        assert roots_b == roots_a and [c for _, _, c in roots_b] == [N] * ROUNDS
        assert log.count(f"{N} SuperNodes, {N} commitments, {N} updates filed") == ROUNDS and "refused" not in log
        assert "Receiving" not in stranger.output()  # the unregistered SuperNode got no work
        assert Auditor(b.dep, b.agg_store).audit(b.job).ok


def test_a_provider_refuses_a_bundle_the_job_spec_does_not_name(tmp_path, services):
    other_app = tmp_path / "app"
    shutil.copytree(APP_DIR, other_app, ignore=shutil.ignore_patterns("__pycache__"))
    server = other_app / "fedmarket_flower_app" / "server_app.py"
    server.write_text(server.read_text() + "\n# one more line: another bundle\n")
    with AnvilNode() as node:
        m = Market(tmp_path, node, n=2, rounds=1)
        link = SuperLink(tmp_path / "link")
        services.append(link.start())
        link.wait_ready()
        for i in range(2):
            services.append(SuperNode(tmp_path / f"node{i}", link.address, m.node_config(i), app_hash()).start())
        run = link.submit(m.run_config(**{"give-up-after": 1.0, "node-wait": 30.0}), app_dir=other_app)
        services.append(run)
        deadline = time.monotonic() + 90
        while run.alive and time.monotonic() < deadline:
            time.sleep(0.2)
        log = run.output()
        assert log.count("provider refuses Flower app bundle") >= 2, log[-3000:]
        assert f"the job spec names {app_hash()[:16]}" in log
        assert "no update within" in log
        assert not m.agg_box.read(round_topic(m.job, 0))  # nothing filed, nothing committed
        assert all(not p.mailbox.read(round_topic(m.job, 0)) for p in m.providers)  # nobody trained
        assert not committed_rounds(m.dep, m.job)


@pytest.mark.slow
def test_the_job_goes_on_after_the_superlink_dies_mid_job(tmp_path, services):
    with AnvilNode() as node:
        m = Market(tmp_path, node)
        # its state in a database file: SuperNodes keep their identity across the SuperLink's restart
        sent = tmp_path / "agg-state" / "sent"
        serving = Serving(SuperLink(tmp_path / "link", database=str(tmp_path / "superlink.db")),
                          m.run_config(**{"sent-dir": str(sent)}))
        services.append(serving)
        serving.start()
        for i in range(N):
            services.append(SuperNode(tmp_path / f"node{i}", serving.link.address, m.node_config(i), app_hash()).start())
        events: list[str] = []
        proc = FlowerAggregatorProcess(m.dep, m.agg_account, m.agg_store, m.agg_box, m.job, tmp_path / "agg-state",
                                       collect_timeout=300, log=events.append, serving=serving, sent_dir=sent)
        deadline, crashed = time.monotonic() + 300, []

        def over() -> bool:
            done = len(committed_rounds(m.dep, m.job))
            if done >= 1 and not crashed:  # the SuperLink crashes once round 0 is in
                crashed.append(serving.link.proc.pid)
                os.kill(serving.link.proc.pid, signal.SIGKILL)
            return done >= ROUNDS or time.monotonic() > deadline

        proc.run(0.1, until=over)
        log = serving.run.output() if serving.run else ""
        assert [c.count for c in committed_rounds(m.dep, m.job)] == [N] * ROUNDS, "\n".join(events) + log[-3000:]
        assert serving.restarts == 1 and any("the SuperLink had stopped" in e for e in events)
        assert Auditor(m.dep, m.agg_store).audit(m.job).ok
