"""The job spec: one typed, validated document, committed on chain by its keccak256 hash."""

from __future__ import annotations

from typing import Literal

import numpy as np
from eth_utils import keccak
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ConfigError, SchemaMismatch
from .protocol.encoding import canonical_json

SPEC_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSchema(_Strict):
    """What a provider's local data must look like: tabular features in a known domain, integer labels."""

    n_features: int = Field(ge=1, le=1_000_000)
    n_classes: int = Field(ge=2, le=100_000)
    feature_low: list[float]
    feature_high: list[float]
    min_samples: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _bounds(self) -> "DataSchema":
        if len(self.feature_low) != self.n_features or len(self.feature_high) != self.n_features:
            raise ValueError(f"feature_low and feature_high must each list {self.n_features} bounds")
        if any(lo > hi for lo, hi in zip(self.feature_low, self.feature_high)):
            raise ValueError("every feature_low must be <= its feature_high")
        return self

    def check(self, X: np.ndarray, y: np.ndarray) -> None:
        """Raise SchemaMismatch naming the first way (X, y) breaks this schema."""
        X = np.asarray(X)
        y = np.asarray(y)
        if X.ndim != 2:
            raise SchemaMismatch(f"features must be a 2-D table, got an array of {X.ndim} dimension(s)")
        if X.shape[1] != self.n_features:
            raise SchemaMismatch(f"local data has {X.shape[1]} features; the job's schema requires {self.n_features}")
        if y.ndim != 1 or len(y) != len(X):
            raise SchemaMismatch(f"labels must be one per row: {len(X)} rows but labels of shape {y.shape}")
        if len(X) < self.min_samples:
            raise SchemaMismatch(f"local data has {len(X)} samples; the job requires at least {self.min_samples}")
        if not np.issubdtype(X.dtype, np.number):
            raise SchemaMismatch(f"features must be numeric, got dtype {X.dtype}")
        if not np.isfinite(X).all():
            raise SchemaMismatch(f"{int((~np.isfinite(X)).sum())} feature value(s) are NaN or infinite")
        low = np.asarray(self.feature_low)
        high = np.asarray(self.feature_high)
        outside = (X < low) | (X > high)
        if outside.any():
            col = int(np.argmax(outside.any(axis=0)))
            raise SchemaMismatch(
                f"{int(outside.sum())} feature value(s) fall outside the schema's domain "
                f"(first in feature {col}: allowed [{low[col]:g}, {high[col]:g}])"
            )
        if not (np.issubdtype(y.dtype, np.integer) or (np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y)))):
            raise SchemaMismatch(f"labels must be integers, got dtype {y.dtype}")
        if y.min() < 0 or y.max() >= self.n_classes:
            raise SchemaMismatch(f"labels must lie in [0, {self.n_classes - 1}]; found {int(y.min())}..{int(y.max())}")


class ModelSpec(_Strict):
    """The model every provider trains."""

    kind: Literal["softmax"] = "softmax"
    l2: float = Field(default=1e-4, ge=0)


class TrainingSpec(_Strict):
    """Rounds and local optimisation settings."""

    rounds: int = Field(ge=1, le=10_000)
    local_epochs: int = Field(default=5, ge=1, le=1000)
    batch_size: int = Field(default=16, ge=1)
    learning_rate: float = Field(default=0.5, gt=0)
    prox_mu: float = Field(default=0.0, ge=0)


class PrivacySpec(_Strict):
    """How updates are protected. Only plain (unprotected, but content-addressed and signed) exists yet."""

    mode: Literal["plain"] = "plain"


class RewardSpec(_Strict):
    """Money, in token base units: the requester's escrow, each role's stake, the licence price."""

    escrow: int = Field(gt=0)
    provider_stake: int = Field(default=0, ge=0)
    aggregator_stake: int = Field(default=0, ge=0)
    validator_stake: int = Field(default=0, ge=0)
    licence_price: int = Field(default=0, ge=0)


class ParticipationSpec(_Strict):
    min_providers: int = Field(ge=1)
    max_providers: int = Field(ge=1, le=1_000_000)
    max_validators: int = Field(default=0, ge=0, le=32)

    @model_validator(mode="after")
    def _order(self) -> "ParticipationSpec":
        if self.min_providers > self.max_providers:
            raise ValueError("min_providers must not exceed max_providers")
        return self


class DeadlineSpec(_Strict):
    """Durations in seconds, turned into on-chain deadlines when the job is posted."""

    join_window: int = Field(default=86_400, ge=1)
    round_duration: int = Field(default=3_600, ge=1)
    challenge_period: int = Field(default=3_600, ge=0)
    claim_period: int = Field(default=30 * 86_400, ge=1)


class QuantizationSpec(_Strict):
    """Fixed-point encoding of updates (integers make aggregation exact and verifiable)."""

    scale_bits: Literal[20] = 20
    chunk_size: int = Field(default=64, ge=1, le=64)


class JobSpec(_Strict):
    """A whole training job. Immutable; its hash is what the chain commits to."""

    version: Literal[1] = SPEC_VERSION
    name: str = Field(min_length=1, max_length=200)
    data: DataSchema
    model: ModelSpec = ModelSpec()
    training: TrainingSpec
    strategy: Literal["fedavg", "median", "trimmed_mean"] = "fedavg"
    trim: int = Field(default=0, ge=0, description="updates dropped at each end per coordinate (trimmed_mean)")
    privacy: PrivacySpec = PrivacySpec()
    reward: RewardSpec
    participation: ParticipationSpec
    deadlines: DeadlineSpec = DeadlineSpec()
    quantization: QuantizationSpec = QuantizationSpec()

    @model_validator(mode="after")
    def _strategy(self) -> "JobSpec":
        if self.strategy == "trimmed_mean" and self.trim < 1:
            raise ValueError("trimmed_mean needs trim >= 1")
        if self.strategy != "trimmed_mean" and self.trim:
            raise ValueError("trim only applies to trimmed_mean")
        return self

    @property
    def rule(self) -> int:
        """The on-chain aggregation rule id (JobMarket.RULE_*) of this spec's strategy."""
        return {"fedavg": 0, "median": 1, "trimmed_mean": 2}[self.strategy]

    def make_model(self):
        """The model every participant of this job trains and evaluates."""
        from .fl.models import SoftmaxRegression

        return SoftmaxRegression(self.data.n_features, self.data.n_classes, self.model.l2)

    def normalize(self, X: np.ndarray) -> np.ndarray:
        """Features mapped to [0, 1] with the schema's domain bounds: identical for every participant."""
        from .fl.models import normalize

        return normalize(X, np.asarray(self.data.feature_low), np.asarray(self.data.feature_high))

    @property
    def n_params(self) -> int:
        return self.data.n_features * self.data.n_classes + self.data.n_classes

    def canonical(self) -> bytes:
        """Canonical JSON bytes: the CID and the on-chain hash are taken of exactly these."""
        return canonical_json(self.model_dump(mode="json"))

    def hash(self) -> bytes:
        return keccak(self.canonical())

    @classmethod
    def parse(cls, raw: bytes | str | dict) -> "JobSpec":
        """Validate a spec document; ConfigError lists every problem."""
        try:
            if isinstance(raw, dict):
                return cls.model_validate(raw)
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'spec'}: {e['msg']}" for e in exc.errors())
            raise ConfigError(f"invalid job spec: {problems}") from None
