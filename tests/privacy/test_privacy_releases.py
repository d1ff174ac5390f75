"""Attacker tests: what a private job lets out of a provider. An observer that reads every mailbox
message, every blob and every report of the job finds no statistic of a provider's private data
(no training loss, no sample count, no per-provider metric) outside the mechanism; the only
loss/accuracy figures are the validators', computed on their own held-out data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedmarket.fl.data import load_dataset, subset
from fedmarket.fl.partition import iid_partition
from fedmarket.jobmodel import job_model
from fedmarket.roles import Aggregator, Provider, Requester, Validator
from fedmarket.roles.common import global_model
from fedmarket.roles.validator import submit_attestations, submit_rejections
from fedmarket.spec import DataSchema, JobSpec, ParticipationSpec, PrivacySpec, RewardSpec, TrainingSpec
from fedmarket.storage import LocalBlobStore, Mailbox

TOKEN = 10**18
N = 4
DP = {"epsilon": 4.0, "delta": 1e-5, "clip_norm": 1.0}
STAT_WORDS = ("loss", "train", "sample", "examples", "accuracy", "acc", "metric", "norm")


def _spec(mode: str) -> JobSpec:
    return JobSpec(
        name=f"leak scan {mode}",
        data=DataSchema(n_features=64, n_classes=10, feature_low=[0.0] * 64, feature_high=[16.0] * 64),
        training=TrainingSpec(rounds=2, local_epochs=1),
        reward=RewardSpec(escrow=100 * TOKEN, provider_stake=TOKEN, aggregator_stake=50 * TOKEN, validator_stake=5 * TOKEN),
        participation=ParticipationSpec(min_providers=N, max_providers=N, max_validators=1),
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
            for step in ("unmask",):
                for p in providers:
                    getattr(p, step)(job, r)
        else:
            for p in providers:
                p.train(job, r)
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
    else:
        yield path, doc


@pytest.mark.parametrize("mode", ["dp_local", "secagg", "secagg_dp"])
def test_no_statistic_of_private_data_in_any_message_blob_or_report(world, tmp_path, mode):
    spec = _spec(mode)
    providers, losses, roots = _run_job(world, tmp_path, spec)
    addresses = {p.address for p in providers}
    sizes = {p.n_samples for p in providers}
    scanned = 0
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
        if isinstance(doc, dict) and doc.get("provider") in addresses and "weight" in doc:
            assert doc["weight"] == 1 and doc["weight"] not in sizes, f"{path.name}: a sample count left a provider"
    assert scanned >= (2 * N + 2) * spec.training.rounds  # the scan saw the job's whole traffic
