"""The spec's model kinds, local-training settings, data-schema names and robust strategies: what each
one implies (parameter count, on-chain rule) and the one-line error each bad value gets."""

import pytest

from fedmarket.errors import ConfigError
from fedmarket.protocol import rules as R
from fedmarket.spec import JobSpec


def spec(**over):
    doc = {
        "name": "job",
        "data": {"n_features": 784, "n_classes": 10, "feature_low": [0.0] * 784, "feature_high": [255.0] * 784,
                 "input_shape": [1, 28, 28]},
        "training": {"rounds": 3},
        "reward": {"escrow": 10**18},
        "participation": {"min_providers": 2, "max_providers": 4, "max_validators": 1},
    }
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(doc.get(key), dict):
            doc[key] = {**doc[key], **value}
        else:
            doc[key] = value
    return JobSpec.parse(doc)


def test_each_model_kind_has_its_parameter_count():
    assert spec().n_params == 7850 and spec().model.kind == "softmax"
    assert spec(model={"kind": "mlp", "hidden": [200, 200]}).n_params == 199_210  # McMahan et al.'s 2NN
    assert spec(model={"kind": "cnn"}).n_params == 1_663_370  # and their CNN
    assert spec(model={"kind": "torch", "module_cid": "bafk", "n_params": 1234}).n_params == 1234


def test_softmax_specs_hash_as_before_the_model_kinds():
    # a softmax model dumps only its kind and l2, as the spec always did
    assert spec().model.model_dump() == {"kind": "softmax", "l2": 1e-4}


@pytest.mark.parametrize("over, words", [
    ({"model": {"kind": "resnet"}}, "does not match any of the expected tags"),
    ({"model": {"kind": "mlp", "hidden": []}}, "hidden"),
    ({"model": {"kind": "mlp", "activation": "gelu"}}, "activation"),
    ({"model": {"kind": "cnn"}, "data": {"input_shape": None}}, "needs data.input_shape"),
    ({"model": {"kind": "torch", "n_params": 5}}, "module_cid"),
    ({"training": {"rounds": 3, "optimizer": "adam", "momentum": 0.9}}, "momentum applies to sgd"),
    ({"training": {"rounds": 3, "lr_schedule": "linear"}}, "lr_schedule"),
    ({"training": {"rounds": 3, "learning_rate": 0.1, "lr_min": 0.5}}, "lr_min"),
    ({"data": {"input_shape": [1, 28, 27]}}, "input_shape"),
    ({"data": {"features": ["a", "b"]}}, "features must name 784"),
    ({"data": {"classes": ["x"] * 10}}, "classes must name 10 distinct"),
    ({"strategy": "krum"}, "strategy"),
    ({"strategy": "centered_clip", "participation": {"max_validators": 0}}, "needs max_validators"),
    ({"strategy": "centered_clip", "quality": {"target_accuracy": 0.8}}, "cannot have a quality gate"),
])
def test_bad_values_get_one_clear_line(over, words):
    with pytest.raises(ConfigError, match=words):
        spec(**over)


def test_settings_reach_the_engine():
    s = spec(training={"rounds": 4, "optimizer": "sgd", "momentum": 0.9, "weight_decay": 1e-4, "lr_schedule": "step",
                       "lr_gamma": 0.5, "lr_step_rounds": 2, "learning_rate": 0.2, "prox_mu": 0.01})
    local = s.training.local()
    assert (local.optimizer, local.momentum, local.weight_decay, local.prox_mu) == ("sgd", 0.9, 1e-4, 0.01)
    assert [local.lr_at(r) for r in range(4)] == [0.2, 0.2, 0.1, 0.1]


def test_robust_strategies_map_to_on_chain_rules():
    assert spec(strategy="median").rule == R.Rule.MEDIAN
    attested = spec(strategy="centered_clip")
    assert attested.rule == R.Rule.SECURE_SUM and attested.attested and attested.unit_weights
    assert not spec().unit_weights
