"""Market jobs with real models: an MLP whose committed rounds are exactly the engine's simulation,
a validator-attested robust rule (centred clipping) whose wrong result is rejected, a user's own
PyTorch module (with BatchNorm buffers) committed by content id and checked before anyone stakes,
and the trained model out: verified against the chain and written as .npz, .pt and ONNX, each
predicting what the job's own loader predicts, a store that lies about it caught."""

from __future__ import annotations

import numpy as np
import pytest

from fedmarket.driver import Cast, JobDriver
from fedmarket.errors import ConfigError, FedMarketError, SchemaMismatch
from fedmarket.fl.aggregate import fedavg_int
from fedmarket.fl.data import load_dataset, subset
from fedmarket.fl.partition import iid_partition
from fedmarket.fl.quantize import quantize
from fedmarket.fl.train import local_train
from fedmarket.jobmodel import job_model
from fedmarket.market import JobState
from fedmarket.modelfile import Predictor, read_npz, save, trained_model
from fedmarket.protocol import rules as R
from fedmarket.roles import Aggregator, Provider, Requester, Validator
from fedmarket.roles.common import committed_rounds, fail_job, fetch_metrics, fetch_model
from fedmarket.roles.provider import training_seed
from fedmarket.spec import DataSchema, JobSpec, ParticipationSpec, RewardSpec, TrainingSpec
from fedmarket.storage import LocalBlobStore, Mailbox

TOKEN = 10**18


def make_spec(model: dict, n: int, rounds: int = 2, validators: int = 0, strategy: str = "fedavg", **training) -> JobSpec:
    return JobSpec(
        name=f"{model['kind']} job",
        data=DataSchema(n_features=64, n_classes=10, feature_low=[0.0] * 64, feature_high=[16.0] * 64,
                        input_shape=[1, 8, 8]),
        model=model,
        training=TrainingSpec(rounds=rounds, **{"local_epochs": 1, "batch_size": 16, "learning_rate": 0.1, **training}),
        strategy=strategy,
        reward=RewardSpec(escrow=100 * TOKEN, provider_stake=TOKEN, aggregator_stake=50 * TOKEN,
                          validator_stake=5 * TOKEN if validators else 0, licence_requester_bps=3_000),
        participation=ParticipationSpec(min_providers=n, max_providers=n, max_validators=validators),
    )


def cast_for(world, tmp_path, spec, aggregator_cls=Aggregator, extra_blobs=()):
    dep = world["dep"]
    store, box = LocalBlobStore(tmp_path / "blobs"), Mailbox(tmp_path / "box")
    for blob in extra_blobs:
        store.put(blob)
    ds = load_dataset("digits")
    n = spec.participation.max_providers
    parts = iid_partition(ds.y, n, 0)
    providers = [Provider(dep, world["providers"][i], store, box, subset(ds, parts[i]).X, subset(ds, parts[i]).y)
                 for i in range(n)]
    validators = [Validator(dep, world["validators"][i], store, box, ds.X[:80], ds.y[:80])
                  for i in range(spec.participation.max_validators)]
    cast = Cast(Requester(dep, world["requester"], store), aggregator_cls(dep, world["aggregator"], store, box),
                providers, validators)
    return JobDriver(dep, store, box, cast, spec), ds


def test_an_mlp_job_starts_from_its_committed_weights_and_is_the_engine_simulation(world, tmp_path):
    spec = make_spec({"kind": "mlp", "hidden": [16], "activation": "tanh", "init_seed": 3}, 3, momentum=0.9)
    driver, ds = cast_for(world, tmp_path, spec)
    job = driver.run()
    assert driver.state == JobState.SETTLED
    jm = job_model(spec)
    assert jm.base.any()  # not the zero vector: the spec's seeded He-uniform weights
    # the engine, by hand: the same seeds, local training, quantization and exact FedAvg
    q = np.zeros(spec.n_params, dtype=np.int64)
    provs = sorted(driver.cast.providers, key=lambda p: int(p.address, 16))
    for r in range(spec.training.rounds):
        deltas = [quantize(local_train(jm.model, jm.params(q), jm.features(p.X), p.y, spec.training.local(),
                                       seed=training_seed(p.address, job, r), round_=r) - jm.params(q)) for p in provs]
        q = q + fedavg_int(deltas, [p.n_samples for p in provs])
    last = committed_rounds(world["dep"], job)[-1]
    assert np.array_equal(fetch_model(driver.store, spec, last), q)
    assert jm.accuracy(q, ds.X, ds.y) > 0.5


class FedAvgInDisguise(Aggregator):
    """Commits round 1 of an attested job as the weighted mean, with the correction that makes the
    secure sum give it (so every dispute game would side with it): only validators can tell."""

    def run_round(self, job_id, round_, collected=None):
        self.cheat = round_ == 1
        return super().run_round(job_id, round_, collected)

    def attested_correction(self, spec, updates):
        if not (self.cheat and updates):
            return super().attested_correction(spec, updates)
        Q = [u.q for u in updates]
        mean = fedavg_int(Q, [1] * len(Q))
        return (R.ring_sum(Q, mean.shape) - (mean * np.int64(len(Q))).view(np.uint64)).view(np.int64)


def test_an_attested_rule_is_recomputed_by_validators_and_a_wrong_one_fails_the_job(world, tmp_path):
    spec = make_spec({"kind": "softmax"}, 4, rounds=2, validators=1, strategy="centered_clip")
    assert spec.rule == R.Rule.SECURE_SUM and spec.unit_weights
    driver, _ = cast_for(world, tmp_path, spec, FedAvgInDisguise)
    driver.open()
    driver.round(0)
    ev = driver.cast.validators[0].auditor.evidence(spec, driver.job_id, 0)
    assert all(u.weight == 1 for u in ev.updates)
    assert np.array_equal(ev.model, R.attested_delta("centered_clip", [u.q for u in ev.updates]))
    assert world["dep"].job(driver.job_id)["quorum"]  # attested
    driver.round(1)
    assert world["dep"].disputes.call("rejected", driver.job_id, 1, driver.cast.validators[0].address)
    outsider = world["outsider"]
    before = world["dep"].holdings(outsider.address)
    assert fail_job(world["dep"], outsider, driver.job_id).event("JobFailed")["reason"] == "round rejected"
    assert world["dep"].holdings(outsider.address) - before == 25 * TOKEN  # half the cheating aggregator's stake


def test_a_users_pytorch_module_is_committed_by_content_id_and_checked_before_staking(world, tmp_path):
    torch = pytest.importorskip("torch")
    from fedmarket.fl.torch_models import pack_module
    from fedmarket.storage import cid_of

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.BatchNorm1d(32), torch.nn.ReLU(),
                                 torch.nn.Linear(32, 10))
    packed = pack_module(module, (1, 8, 8), 10)  # the schema's input shape
    n_params = sum(p.numel() for p in module.parameters()) + 64  # + BatchNorm's running mean and variance
    bad = make_spec({"kind": "torch", "module_cid": cid_of(packed), "n_params": n_params + 1}, 3)
    driver, _ = cast_for(world, tmp_path, bad, extra_blobs=[packed])
    with pytest.raises(SchemaMismatch, match="parameters"):
        driver.cast.requester.post(bad, driver.cast.aggregator.address)
    missing = make_spec({"kind": "torch", "module_cid": cid_of(b"no such module"), "n_params": n_params}, 3)
    with pytest.raises(SchemaMismatch, match="unavailable"):
        driver.cast.requester.post(missing, driver.cast.aggregator.address)
    spec = make_spec({"kind": "torch", "module_cid": cid_of(packed), "n_params": n_params}, 3, optimizer="adam",
                     learning_rate=0.01)
    driver, ds = cast_for(world, tmp_path, spec, extra_blobs=[packed])
    job = driver.run()
    assert driver.state == JobState.SETTLED
    jm = job_model(spec, driver.store)
    q = fetch_model(driver.store, spec, committed_rounds(world["dep"], job)[-1])
    assert np.abs(jm.params(q)[-64:] - jm.params(np.zeros_like(q))[-64:]).max() > 0  # BatchNorm statistics aggregated
    assert jm.accuracy(q, ds.X, ds.y) > 0.5


# ---------------------------------------------------------------- model out


@pytest.fixture(scope="module")
def done(boa_world, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("model-out")
    with boa_world["chain"].snapshot():
        spec = make_spec({"kind": "mlp", "hidden": [12]}, 3, rounds=2, momentum=0.9)
        driver, ds = cast_for(boa_world, tmp, spec)
        job = driver.run()
        yield boa_world["dep"], driver.store, job, spec, ds, tmp


def test_the_model_comes_out_verified_in_every_format(done, tmp_path):
    dep, store, job, spec, ds, _ = done
    trained = trained_model(dep, store, job)
    assert trained.round == 1 and trained.model_root == committed_rounds(dep, job)[-1].model_root
    expected = job_model(spec, store).predict(trained.q, ds.X)
    formats = [".npz", ".pt"]
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401

        formats.append(".onnx")
    except ImportError:
        pass
    for suffix in formats:
        path = save(trained, tmp_path / f"model{suffix}")
        pred = Predictor(path)
        assert pred.classes == [str(i) for i in range(10)] and pred.meta["job_id"] == job
        got = pred.predict(ds.X)
        assert (got == expected).mean() > 0.995, suffix  # float32 programs may flip a near tie
    again = read_npz(tmp_path / "model.npz")
    assert np.array_equal(again.q, trained.q) and again.spec == spec
    with pytest.raises(ConfigError, match="unknown model format"):
        save(trained, tmp_path / "model.bin")
    with pytest.raises(SchemaMismatch, match="takes 64 features"):
        Predictor(tmp_path / "model.npz").predict(np.zeros((2, 5)))


def test_a_store_that_lies_about_the_model_is_caught(done, tmp_path):
    dep, store, job, spec, _, workdir = done
    last = committed_rounds(dep, job)[-1]
    cid = fetch_metrics(store, last)["model_cid"]
    raw = (workdir / "blobs" / cid).read_bytes()
    liar = LocalBlobStore(tmp_path / "liar")
    for f in (workdir / "blobs").iterdir():
        (tmp_path / "liar" / f.name).write_bytes(f.read_bytes())
    tampered = bytearray(raw)
    tampered[-1] ^= 1
    (tmp_path / "liar" / cid).write_bytes(bytes(tampered))  # the blob no longer hashes to its content id
    with pytest.raises(FedMarketError):
        trained_model(dep, liar, job)
    with pytest.raises(FedMarketError, match="committed rounds 0..1, not 7"):
        trained_model(dep, store, job, round_=7)


def test_a_cnn_job_trains_mcmahans_architecture_on_images(world, tmp_path):
    pytest.importorskip("torch")
    spec = make_spec({"kind": "cnn", "channels": [4, 8], "dense": 16, "init_seed": 1}, 3, rounds=2, momentum=0.9)
    driver, ds = cast_for(world, tmp_path, spec)
    job = driver.run()
    assert driver.state == JobState.SETTLED
    jm = job_model(spec, driver.store)
    q = fetch_model(driver.store, spec, committed_rounds(world["dep"], job)[-1])
    assert jm.model.input_shape == (1, 8, 8) and jm.accuracy(q, ds.X, ds.y) > 0.3  # chance is 0.1
