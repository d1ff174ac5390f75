"""Attacker tests: what a private job lets out of a provider. An observer that reads every mailbox
message, every blob and every report of the job finds no statistic of a provider's private data
(no training loss, no sample count, no per-provider metric) outside the mechanism; the only
loss/accuracy figures are the validators', computed on their own held-out data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedmarket.errors import AlreadyReleased, SecAggAbort
from fedmarket.fl.data import load_dataset, subset
from fedmarket.fl.partition import iid_partition
from fedmarket.jobmodel import job_model
from fedmarket.privacy.releases import ReleaseLog
from fedmarket.roles import Aggregator, Provider, Requester, Validator
from fedmarket.roles import secure_round as sr
from fedmarket.roles.common import global_model, round_topic
from fedmarket.roles.sealed import commit_topic, seal_and_reveal
from fedmarket.roles.validator import submit_attestations, submit_rejections
from fedmarket.spec import DataSchema, JobSpec, ParticipationSpec, PrivacySpec, RewardSpec, TrainingSpec
from fedmarket.storage import LocalBlobStore, Mailbox

TOKEN = 10**18
N = 4
DP = {"epsilon": 4.0, "delta": 1e-5, "clip_norm": 1.0}
STAT_WORDS = ("loss", "train", "sample", "examples", "accuracy", "acc", "metric", "norm")


def _spec(mode: str, n: int = N) -> JobSpec:
    return JobSpec(
        name=f"leak scan {mode}",
        data=DataSchema(n_features=64, n_classes=10, feature_low=[0.0] * 64, feature_high=[16.0] * 64),
        training=TrainingSpec(rounds=2, local_epochs=1),
        reward=RewardSpec(escrow=100 * TOKEN, provider_stake=TOKEN, aggregator_stake=50 * TOKEN, validator_stake=5 * TOKEN),
        participation=ParticipationSpec(min_providers=n, max_providers=n, max_validators=1),
        privacy=PrivacySpec(mode=mode, **({} if mode == "secagg" else DP)),
    )


def _run_job(world, tmp_path, spec):
    """A whole private job in process; returns the providers, their true training losses per round, the dirs."""
    dep = world["dep"]
    store, box = LocalBlobStore(tmp_path / "blobs"), Mailbox(tmp_path / "box")
    ds = load_dataset("digits")
    parts = iid_partition(ds.y[60:], N, 1)
    providers = [Provider(dep, world["providers"][i], store, box, subset(ds, 60 + parts[i]).X, subset(ds, 60 + parts[i]).y)
                 for i in range(N)]
    agg = Aggregator(dep, world["aggregator"], store, box)
    validator = Validator(dep, world["validators"][0], store, box, ds.X[:60], ds.y[:60])
    job = Requester(dep, world["requester"], store).post(spec, world["aggregator"].address)
    agg.accept(job)
    for p in providers:
        p.join(job)
    validator.join(job)
    agg.start(job)
    losses = []
    for r in range(spec.training.rounds):
        _, q_global = global_model(dep, store, spec, job)
        losses += [_train_loss(spec, store, p, job, r, q_global) for p in providers]
        if spec.privacy.secure:
            for step in ("advertise", "share", "train"):
                for p in providers:
                    getattr(p, step)(job, r)
            agg.secure_survivors(job, r)
            for step in ("confirm", "unmask"):
                for p in providers:
                    getattr(p, step)(job, r)
        else:
            for p in providers:
                p.train(job, r)
            seal_and_reveal(agg, providers, job, r)  # commitments sealed, then the updates revealed
        agg.run_round(job, r)
        validator.review(job, r)
        submit_attestations(dep, box, world["aggregator"], job, r)
        submit_rejections(dep, box, world["aggregator"], job, r)
    return providers, losses, [tmp_path / "blobs", tmp_path / "box"]


def _train_loss(spec, store, p, job, r, q_global) -> float:
    """The provider's training loss after its local round: the statistic the attacker looks for."""
    jm = job_model(spec, store)
    delta = p._local_delta(spec, job, r, q_global)
    Xn = jm.features(p.X)
    return float(jm.model.loss_and_grad(jm.params(q_global) + delta, Xn, p.y)[0])


def _documents(roots):
    for root in roots:
        for path in Path(root).rglob("*"):
            if path.is_file() and not path.name.startswith("."):
                try:
                    yield path, json.loads(path.read_bytes())
                except (ValueError, UnicodeDecodeError):
                    continue  # binary vectors (updates, models): the mechanism's own output


def _walk(doc, path=()):
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield path + (str(k),), None
            yield from _walk(v, path + (str(k),))
    elif isinstance(doc, list):
        for v in doc:
            yield from _walk(v, path)
    elif isinstance(doc, str) and doc.startswith("{"):  # a signed message's exact bytes: walk them too
        yield from _walk(json.loads(doc), path)
    else:
        yield path, doc


@pytest.mark.parametrize("mode", ["dp_local", "secagg", "secagg_dp"])
def test_no_statistic_of_private_data_in_any_message_blob_or_report(world, tmp_path, mode):
    spec = _spec(mode)
    providers, losses, roots = _run_job(world, tmp_path, spec)
    addresses = {p.address for p in providers}
    sizes = {p.n_samples for p in providers}
    scanned = signed_bodies = 0
    for path, doc in _documents(roots):
        if doc == json.loads(spec.canonical()):
            continue  # the requester's spec: the job's public settings
        scanned += 1
        validator_doc = isinstance(doc, dict) and "validator" in doc
        for keys, value in _walk(doc):
            leaf = keys[-1].lower() if keys else ""
            if any(w in leaf for w in STAT_WORDS):
                # the validators' accuracy comes from their own held-out data, not a provider's
                assert validator_doc and leaf == "accuracy", f"{path.name}: per-provider statistic {'/'.join(keys)}"
            if isinstance(value, float):
                assert all(abs(value - loss) > 1e-9 for loss in losses), f"{path.name}: a provider's training loss"
        if isinstance(doc, dict) and "signed" in doc:
            signed_bodies += 1
        if isinstance(doc, dict) and doc.get("provider") in addresses and "weight" in doc:
            assert doc["weight"] == 1 and doc["weight"] not in sizes, f"{path.name}: a sample count left a provider"
    assert scanned >= (2 * N + 2) * spec.training.rounds  # the scan saw the job's whole traffic
    assert signed_bodies >= (4 * N if spec.privacy.secure else 0) * spec.training.rounds  # and the secure phases


# ---------------------------------------------------------------------------- one release per round


def _open_job(world, tmp_path, mode, n=N):
    dep = world["dep"]
    store, box = LocalBlobStore(tmp_path / "blobs"), Mailbox(tmp_path / "box")
    ds = load_dataset("digits")
    parts = iid_partition(ds.y, n, 2)
    data = [(subset(ds, parts[i]).X, subset(ds, parts[i]).y) for i in range(n)]
    logs = [tmp_path / f"releases-{i}.jsonl" for i in range(n)]
    providers = [Provider(dep, world["providers"][i], store, box, *data[i], releases=ReleaseLog(logs[i])) for i in range(n)]
    agg = Aggregator(dep, world["aggregator"], store, box)
    validator = Validator(dep, world["validators"][0], store, box, ds.X[:60], ds.y[:60])
    job = Requester(dep, world["requester"], store).post(_spec(mode, n), world["aggregator"].address)
    agg.accept(job)
    for p in providers:
        p.join(job)
    validator.join(job)
    agg.start(job)

    def restarted(i):  # the same provider after a crash: same key, data and journal, nothing in memory
        return Provider(dep, world["providers"][i], store, box, *data[i], releases=ReleaseLog(logs[i]))

    return job, agg, providers, box, restarted


def _posted_by(box, topic, address):
    out = []
    for raw in box.read(topic):
        msg = json.loads(raw)
        body = json.loads(msg["signed"]) if "signed" in msg else msg
        if body.get("provider") == address:
            out.append(body)
    return out


def test_a_retried_dp_round_gets_no_second_noisy_copy(world, tmp_path):
    """The attack: ask a provider to train round 0 again (or crash it and ask the restarted one),
    and average the two noisy copies of its update."""
    job, agg, providers, box, restarted = _open_job(world, tmp_path, "dp_local")
    victim = providers[0]
    victim.train(job, 0)
    with pytest.raises(AlreadyReleased, match="round 0: this provider already released"):
        victim.train(job, 0)
    with pytest.raises(AlreadyReleased):
        restarted(0).train(job, 0)
    assert len(_posted_by(box, commit_topic(job, 0), victim.address)) == 1  # one commitment: one release


def test_a_retried_secure_round_reuses_no_masks_and_releases_once(world, tmp_path):
    """After masking, a restarted provider releases nothing more for the round; restarted before
    masking, it draws fresh keys, which makes it a duplicate everyone drops: no second masked input,
    no masks reused under other inputs."""
    job, agg, providers, box, restarted = _open_job(world, tmp_path, "secagg_dp")
    for step in ("advertise", "share"):
        for p in providers:
            getattr(p, step)(job, 0)
    providers[0].train(job, 0)
    after_mask, before_mask = restarted(0), restarted(1)
    old_keys = providers[1]._client(job, 0)[0].advertise()
    after_mask.advertise(job, 0)  # already released: posts nothing
    with pytest.raises(AlreadyReleased):
        after_mask.train(job, 0)
    before_mask.advertise(job, 0)
    before_mask.share(job, 0)
    assert before_mask._client(job, 0)[0].advertise() != old_keys  # fresh secrets
    with pytest.raises(SecAggAbort, match="sits the round out"):
        before_mask.train(job, 0)
    with pytest.raises(SecAggAbort, match="sits the round out"):
        providers[1].train(job, 0)  # its first keys are void too: keys posted twice are dropped
    for p in providers[2:]:
        p.train(job, 0)
    for i, p in enumerate(providers):
        assert len(_posted_by(box, round_topic(job, 0), p.address)) == (0 if i == 1 else 1)
    assert len(_posted_by(box, sr.topic(job, 0, "keys"), providers[0].address)) == 1


# ---------------------------------------------------------------------------- distributed DP under collusion


def test_sybil_survivors_leave_the_victim_at_least_the_promised_noise(world, tmp_path):
    """The attack: the aggregator's Sybils join the job, survive, and subtract the noise they added
    themselves (they know it), hoping the victim's value is left with the noise of a few honest
    shares. The survivor set is pinned by the providers' signatures and never smaller than the
    round's minimum m; at most a max_dishonest share of the round's n providers colludes (all of
    them possibly in the set the aggregator picks); and each honest provider's Skellam share is
    sized so that the m - floor(f n) honest ones alone carry the promised noise."""
    job, agg, providers, box, _ = _open_job(world, tmp_path, "secagg_dp", n=6)
    spec = providers[0].inspect(job)
    members = sr.participants(agg.dep, spec, job, 0)
    cfg = sr.round_config(agg.dep, spec, job, 0, len(members))
    m, t = cfg.min_survivors, cfg.threshold
    assert m == 5 and t < m  # 6 providers, 30% dropout tolerated
    for step in ("advertise", "share"):
        for p in providers:
            getattr(p, step)(job, 0)
    providers[0].train(job, 0)
    victim, _ = providers[0]._client(job, 0)
    # a survivor set of the victim and t - 1 Sybils is never confirmed, so never unmasked
    with pytest.raises(SecAggAbort, match="below the round's"):
        victim.confirm(frozenset([victim.uid, *[u for u in range(6) if u != victim.uid][: t - 1]]))
    # in the smallest set the providers do confirm, the honest ones alone carry the promised variance
    honest = m - int(spec.privacy.max_dishonest * len(members))
    sigma = spec.noise_multiplier() * (2 * spec.privacy.clip_norm * 2**20 + np.sqrt(spec.n_params))
    zero = np.zeros(spec.n_params)
    draws = np.stack([sum(providers[1 + i]._released(spec, zero, cfg)[0] for i in range(honest)) for _ in range(20)])
    assert np.var(draws) >= 0.96 * sigma**2  # 13,000 draws: the estimate is within 4% w.p. > 1 - 1e-4
    assert np.var(draws) <= 1.3 * sigma**2 * m / honest  # and not much more than the calibration asks
