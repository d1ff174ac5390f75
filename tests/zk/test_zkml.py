"""The circuit kit of a listed model (`fedmarket.zkml`): what a validator re-derives is what the
server built, another model's circuit differs, settings that hide the input or the weights or
are too coarse for the model are refused, and proofs answer as the model does."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedmarket.fl.quantize import quantize
from fedmarket.modelfile import TrainedModel
from fedmarket.roles.proofs import circuit_input
from fedmarket.spec import DataSchema, JobSpec, ParticipationSpec, RewardSpec, TrainingSpec
from fedmarket.zkml import FIELD, ProofError, answer_of, check_settings, scores_of


def trained(kind: str = "softmax", seed: int = 0, n_features: int = 12, n_classes: int = 4) -> TrainedModel:
    spec = JobSpec(name="zk", data=DataSchema(n_features=n_features, n_classes=n_classes, feature_low=[0.0] * n_features,
                                              feature_high=[1.0] * n_features),
                   model={"kind": kind, **({"hidden": [6]} if kind == "mlp" else {})},
                   training=TrainingSpec(rounds=1, local_epochs=1, batch_size=8, learning_rate=0.1),
                   reward=RewardSpec(escrow=10**20, provider_stake=1, aggregator_stake=1, validator_stake=0),
                   participation=ParticipationSpec(min_providers=1, max_providers=3, max_validators=0))
    q = quantize(np.random.default_rng(seed).normal(0, 1.0, spec.n_params))
    return TrainedModel(spec, q, 1, 0, b"\x11" * 32)


# ---- pure parts ------------------------------------------------------------------------------------------


def test_public_values_decode_as_signed_scores_and_the_first_best_class():
    instances = [5, 7, FIELD - 3, 9, FIELD - 9, 9]  # two inputs, then four scores
    assert scores_of(instances, 4) == [-3, 9, -9, 9]
    assert answer_of(instances, 4) == 1  # a tie goes to the first


@pytest.mark.parametrize("v, scale, want", [(0, 13, 0), (1 << 20, 13, 1 << 13), (1 << 19, 0, 1), ((1 << 19) - 1, 0, 0),
                                            (3 << 6, 13, 2), (1 << 6, 13, 1), ((1 << 6) - 1, 13, 0)])
def test_a_fixed_point_input_rounds_half_away_from_zero_at_the_circuit_scale(v, scale, want):
    assert circuit_input(v, scale) == want


@pytest.mark.parametrize("key, value", [("input_visibility", "Private"), ("output_visibility", "Hashed"),
                                        ("param_visibility", "Public")])
def test_settings_that_hide_the_input_or_the_answer_or_free_the_weights_are_refused(key, value):
    ok = {"run_args": {"input_visibility": "Public", "output_visibility": "Public", "param_visibility": "Fixed"}}
    check_settings(ok)
    bad = {"run_args": {**ok["run_args"], key: value}}
    with pytest.raises(ProofError, match=key):
        check_settings(bad)


# ---- real circuits (EZKL) -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def zk():
    pytest.importorskip("ezkl")
    from fedmarket import zkml

    if zkml.find_solcjs() is None:
        pytest.skip("no solcjs: run `npm install` (package.json pins solc)")
    return zkml


@pytest.mark.slow
def test_the_verifier_is_re_derived_exactly_and_binds_the_model(zk, tmp_path):
    model = trained("softmax")
    kit = zk.build_kit(model, tmp_path / "server")
    again = zk.derive_verifier(model, kit.path("settings.json"), kit.path("kzg.srs"), tmp_path / "validator")
    assert again.codehash == kit.codehash and again.runtime == kit.runtime
    other = zk.build_kit(trained("softmax", seed=1), tmp_path / "other", settings=kit.path("settings.json"),
                         srs=kit.path("kzg.srs"))
    assert other.codehash != kit.codehash  # the weights are part of the verifying key
    X = np.random.default_rng(5).random((3, 12))
    for x in X:
        proof = zk.prove(kit, x, 4)
        assert proof.answer == int(model.job_model.model.predict(model.params, x[None, :])[0])
        scale = zk.input_scale(kit)
        assert [v for v in proof.instances[:12]] == [int(np.floor(v * 2**scale + 0.5)) for v in x]


@pytest.mark.slow
def test_settings_too_coarse_for_the_model_are_refused_by_the_validator(zk, tmp_path):
    model = trained("mlp", seed=2)
    kit = zk.build_kit(model, tmp_path / "server")
    coarse = json.loads(kit.path("settings.json").read_text())
    coarse["run_args"]["input_scale"] = coarse["run_args"]["param_scale"] = 0  # every weight rounds to an integer
    (tmp_path / "coarse.json").write_text(json.dumps(coarse))
    with pytest.raises(ProofError, match="calibration inputs differently from the model"):
        zk.derive_verifier(model, tmp_path / "coarse.json", kit.path("kzg.srs"), tmp_path / "validator")


# ---- the command line --------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, expected", [
    (["--prove"], "--prove needs --mailbox"),
    (["--period", "0"], "--period must be positive"),
    (["--port", "70000"], "--port must be a TCP port"),
])
def test_serve_refuses_bad_flags_in_one_line_before_touching_the_chain(tmp_path, args, expected):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "fedmarket", "serve", "--job", "1", "--rpc", "http://127.0.0.1:9",
                           "--contracts", str(tmp_path / "none.json"), "--dev-account", "5", *args],
                          capture_output=True, text=True, timeout=120, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert expected in lines[0] and lines[0].startswith("fedmarket: error:")


def test_junk_verifier_offers_are_dropped_before_anyone_derives_anything(tmp_path):
    import json as _json

    from fedmarket.roles.proofs import OFFER_TOPIC, offers
    from fedmarket.storage import Mailbox

    box = Mailbox(tmp_path / "box")
    good = {"server": "0x" + "ab" * 20, "verifier": "0x" + "cd" * 20, "codehash": "0x" + "ef" * 32,
            "settings": "bafk-settings", "srs": "bafk-srs"}
    for junk in (b"not json", b"[1, 2]", _json.dumps({**good, "verifier": 123}).encode(),
                 _json.dumps({**good, "server": "0xnot-an-address"}).encode(),
                 _json.dumps({**good, "codehash": "0x1234"}).encode(), _json.dumps({"server": good["server"]}).encode()):
        box.post(OFFER_TOPIC, junk)
    box.post(OFFER_TOPIC, _json.dumps(good).encode())
    box.post(OFFER_TOPIC, _json.dumps({**good, "settings": "another"}).encode())  # the same verifier again
    (only,) = offers(box)
    assert only["verifier"].lower() == good["verifier"] and only["codehash"] == good["codehash"]


@pytest.mark.slow
def test_offered_files_that_are_not_a_circuit_are_refused_in_one_line(zk, tmp_path):
    from fedmarket.errors import FedMarketError

    model = trained("softmax")
    (tmp_path / "settings.json").write_text("not json")
    (tmp_path / "kzg.srs").write_bytes(b"\0" * 64)
    with pytest.raises((FedMarketError, ValueError)):
        zk.derive_verifier(model, tmp_path / "settings.json", tmp_path / "kzg.srs", tmp_path / "kit")


def test_models_beyond_the_prover_s_reach_are_refused_before_any_work(tmp_path):
    from fedmarket.zkml import MAX_PROVABLE_PARAMS, _network, provable

    assert provable(trained("softmax").spec) and provable(trained("mlp").spec)
    big = trained("mlp")
    spec = big.spec.model_copy(update={"model": big.spec.model.model_copy(update={"hidden": [2_000, 300]})})
    assert spec.n_params > MAX_PROVABLE_PARAMS and not provable(spec)
    with pytest.raises(ProofError, match="at most 500,000 parameters"):
        _network(TrainedModel(spec, np.zeros(spec.n_params, dtype=np.int64), 1, 0, b"\x11" * 32))
