"""The job spec: canonical hashing, validation errors, and the provider's schema check."""

from __future__ import annotations

import numpy as np
import pytest

from fedmarket.errors import ConfigError, SchemaMismatch
from fedmarket.spec import DataSchema, JobSpec


def make_spec(**over):
    doc = {
        "name": "t",
        "data": {"n_features": 3, "n_classes": 2, "feature_low": [0, 0, 0], "feature_high": [1, 1, 1]},
        "training": {"rounds": 2},
        "reward": {"escrow": 100, "provider_stake": 1},
        "participation": {"min_providers": 1, "max_providers": 4},
    }
    doc.update(over)
    return JobSpec.parse(doc)


def test_canonical_bytes_and_hash_are_stable():
    a, b = make_spec(), JobSpec.parse(make_spec().canonical())
    assert a.canonical() == b.canonical() and a.hash() == b.hash() and len(a.hash()) == 32
    assert make_spec(name="other").hash() != a.hash()


@pytest.mark.parametrize(
    "over, fragment",
    [
        ({"training": {"rounds": 0}}, "training.rounds"),
        ({"participation": {"min_providers": 5, "max_providers": 4}}, "min_providers must not exceed"),
        ({"reward": {"escrow": 0}}, "reward.escrow"),
        ({"strategy": "krum"}, "strategy"),
        ({"surprise": 1}, "surprise"),
        ({"data": {"n_features": 2, "n_classes": 2, "feature_low": [0], "feature_high": [1, 1]}}, "must each list 2"),
    ],
)
def test_invalid_specs_name_the_problem(over, fragment):
    with pytest.raises(ConfigError, match="invalid job spec") as err:
        make_spec(**over)
    assert fragment in str(err.value)


SCHEMA = DataSchema(n_features=3, n_classes=2, feature_low=[0, 0, 0], feature_high=[1, 1, 1], min_samples=2)


def test_matching_data_passes():
    SCHEMA.check(np.full((4, 3), 0.5), np.array([0, 1, 1, 0]))


@pytest.mark.parametrize(
    "X, y, fragment",
    [
        (np.zeros((4, 2)), np.zeros(4, int), "has 2 features; the job's schema requires 3"),
        (np.zeros(4), np.zeros(4, int), "2-D table"),
        (np.zeros((4, 3)), np.zeros(3, int), "one per row"),
        (np.zeros((1, 3)), np.zeros(1, int), "at least 2"),
        (np.full((4, 3), np.nan), np.zeros(4, int), "NaN or infinite"),
        (np.full((4, 3), 2.0), np.zeros(4, int), "outside the schema's domain"),
        (np.zeros((4, 3)), np.array([0, 1, 2, 0]), "labels must lie in [0, 1]"),
        (np.zeros((4, 3)), np.array([0.5, 1, 0, 0]), "labels must be integers"),
    ],
)
def test_mismatched_data_is_named(X, y, fragment):
    with pytest.raises(SchemaMismatch) as err:
        SCHEMA.check(X, y)
    assert fragment in str(err.value)
