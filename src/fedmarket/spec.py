"""The job spec: one typed, validated document, committed on chain by its keccak256 hash."""

from __future__ import annotations

import functools
from typing import Literal

import numpy as np
from eth_utils import keccak
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ConfigError, SchemaMismatch
from .protocol import rules as R
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


EPSILON_SCALE = R.EPSILON_SCALE  # the chain holds epsilon in millionths


class PrivacySpec(_Strict):
    """How updates are protected; see docs/privacy.md for what each mode hides and what stays observable.

    - ``plain``: updates are signed and content-addressed, nothing is hidden.
    - ``dp_local``: each provider clips its update to ``clip_norm`` and adds Gaussian noise of
      std ``2 z clip_norm`` before it leaves (user-level DP against everybody, the aggregator included).
    - ``secagg``: SecAgg+ masking; the aggregator and the public see only the sum of a round.
    - ``secagg_dp``: SecAgg+ plus distributed noise: each provider adds its share of the noise, so
      the sum carries std ``2 z clip_norm`` while no party sees a less noisy value.

    In the DP modes every update has weight 1 (a provider's contribution is bounded by the clip,
    whatever its sample count) and ``z`` is the smallest noise multiplier keeping all the job's
    rounds within ``(epsilon, delta)`` unless ``noise_multiplier`` fixes it.
    """

    mode: Literal["plain", "dp_local", "secagg", "secagg_dp"] = "plain"
    epsilon: float | None = Field(default=None, gt=0, le=1_000)
    delta: float | None = Field(default=None, gt=0, lt=1)
    clip_norm: float | None = Field(default=None, gt=0)
    noise_multiplier: float | None = Field(default=None, gt=0)
    dropout: float = Field(default=0.3, ge=0, lt=1, description="share of a round's providers secure aggregation tolerates losing")

    @model_validator(mode="after")
    def _consistent(self) -> "PrivacySpec":
        given = [n for n in ("epsilon", "delta", "clip_norm", "noise_multiplier") if getattr(self, n) is not None]
        if self.dp:
            missing = [n for n in ("epsilon", "delta", "clip_norm") if getattr(self, n) is None]
            if missing:
                raise ValueError(f"privacy mode {self.mode} needs {', '.join(missing)}")
        elif given:
            raise ValueError(f"privacy mode {self.mode} takes no {', '.join(given)} (only dp_local and secagg_dp add noise)")
        return self

    @property
    def dp(self) -> bool:
        return self.mode in ("dp_local", "secagg_dp")

    @property
    def secure(self) -> bool:
        return self.mode in ("secagg", "secagg_dp")

    @property
    def budget_micro(self) -> int:
        """The epsilon budget as the chain holds it (millionths; 0 without DP)."""
        return int(self.epsilon * EPSILON_SCALE) if self.dp else 0


class RewardSpec(_Strict):
    """Money, in token base units: the requester's escrow, each role's stake, the bond a
    challenger locks to open a dispute game (paid to the defender if the challenge fails, so
    it should cover the defender's gas for a whole game), and the licence price."""

    escrow: int = Field(gt=0, le=R.MAX_AMOUNT)
    provider_stake: int = Field(default=0, ge=0, le=R.MAX_AMOUNT)
    aggregator_stake: int = Field(default=0, ge=0, le=R.MAX_AMOUNT)
    validator_stake: int = Field(default=0, ge=0, le=R.MAX_AMOUNT)
    dispute_bond: int = Field(default=10**18, gt=0, le=R.MAX_AMOUNT)
    licence_price: int = Field(default=0, ge=0, le=R.MAX_AMOUNT)


class ParticipationSpec(_Strict):
    """Who takes part. ``per_round`` > 0 picks each provider for a round with probability
    ``per_round / joined`` from a public seed (a block hash fixed when the previous round was
    committed), so anyone can check who was picked; 0 takes every provider every round. A job
    with validators names the set it needs: at least ``min_validators`` (all of
    ``max_validators`` unless set), each staking at least the reward's ``validator_stake``."""

    min_providers: int = Field(ge=1)
    max_providers: int = Field(ge=1, le=R.MAX_PROVIDERS)
    max_validators: int = Field(default=0, ge=0, le=R.MAX_VALIDATORS)
    min_validators: int | None = Field(default=None, ge=0, le=R.MAX_VALIDATORS)
    per_round: int = Field(default=0, ge=0, le=R.MAX_PROVIDERS)

    @model_validator(mode="after")
    def _order(self) -> "ParticipationSpec":
        if self.min_providers > self.max_providers:
            raise ValueError("min_providers must not exceed max_providers")
        if self.per_round > self.max_providers:
            raise ValueError("per_round must not exceed max_providers")
        if self.min_validators is not None:
            if self.min_validators > self.max_validators:
                raise ValueError("min_validators must not exceed max_validators")
            if self.max_validators and self.min_validators < 1:
                raise ValueError("a job with validators needs min_validators >= 1")
        return self

    @property
    def validators_needed(self) -> int:
        """The fewest validators the job starts with (all of them unless ``min_validators`` says otherwise)."""
        return self.max_validators if self.min_validators is None else self.min_validators


class QualitySpec(_Strict):
    """Quality gate: validators attest the final model's accuracy on their held-out data; if the
    stake-weighted median misses ``target_accuracy``, only ``miss_payout_bps`` of the reward pool
    is paid and the rest returns to the requester."""

    target_accuracy: float | None = Field(default=None, gt=0, le=1)
    miss_payout_bps: int = Field(default=5_000, ge=0, le=10_000)


class DeadlineSpec(_Strict):
    """Durations in seconds, turned into on-chain deadlines when the job is posted. The response
    period is each move's time in a dispute game; the challenge period is the time to open one
    after the reward root is posted (settlement then waits for every open game)."""

    join_window: int = Field(default=86_400, ge=1, le=R.MAX_JOIN_WINDOW)
    round_duration: int = Field(default=3_600, ge=1, le=R.MAX_ROUND_DURATION)
    challenge_period: int = Field(default=3_600, ge=1, le=R.MAX_CHALLENGE_PERIOD)
    claim_period: int = Field(default=30 * 86_400, ge=1, le=R.MAX_CLAIM_PERIOD)
    response_period: int = Field(default=3_600, ge=1, le=R.MAX_RESPONSE_PERIOD)


class QuantizationSpec(_Strict):
    """Fixed-point encoding of updates (integers make aggregation exact and verifiable)."""

    scale_bits: Literal[20] = 20
    chunk_size: int = Field(default=64, ge=1, le=64)


@functools.lru_cache(maxsize=64)
def _fitted_noise(epsilon: float, delta: float, rounds: int) -> float:
    from .privacy.accountant import noise_multiplier_for

    # aim a hair under the budget so the millionths committed on chain never round above it
    return noise_multiplier_for(epsilon * (1 - 1e-6), delta, rounds, sampling="none", tol=1e-4)


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
    quality: QualitySpec = QualitySpec()

    @model_validator(mode="after")
    def _strategy(self) -> "JobSpec":
        if self.strategy == "trimmed_mean" and self.trim < 1:
            raise ValueError("trimmed_mean needs trim >= 1")
        if self.strategy != "trimmed_mean" and self.trim:
            raise ValueError("trim only applies to trimmed_mean")
        if self.privacy.secure and self.strategy != "fedavg":
            raise ValueError(f"privacy mode {self.privacy.mode} sums masked updates, so it needs strategy fedavg, not {self.strategy}")
        if self.privacy.secure and self.participation.min_providers < 3:
            raise ValueError("secure aggregation needs min_providers >= 3 (with two, each learns the other's update from the sum)")
        if self.quality.target_accuracy is not None and self.participation.max_validators < 1:
            raise ValueError("a quality gate needs validators to attest the accuracy (max_validators >= 1)")
        if self.privacy.secure and 0 < self.participation.per_round < 3:
            raise ValueError("secure aggregation needs per_round >= 3")
        if self.privacy.secure and self.participation.max_validators < 1:
            raise ValueError(f"privacy mode {self.privacy.mode} needs validators (max_validators >= 1): they re-derive "
                             "each round's mask correction, which no contract can")
        if self.training.rounds * self.deadlines.round_duration > R.MAX_TRAINING_TIME:
            raise ValueError(f"rounds x round_duration must not exceed {R.MAX_TRAINING_TIME} seconds (two years)")
        if self.n_params > R.MAX_PARAMS:
            raise ValueError(f"the model has {self.n_params} parameters, above the market's {R.MAX_PARAMS}")
        if self.privacy.dp and self.privacy.noise_multiplier is not None:
            from .privacy.accountant import epsilon_for

            eps = epsilon_for(self.privacy.noise_multiplier, self.training.rounds, self.privacy.delta)
            if eps > self.privacy.epsilon:
                raise ValueError(
                    f"noise_multiplier {self.privacy.noise_multiplier:g} spends epsilon {eps:.4g} over "
                    f"{self.training.rounds} rounds, above the budget {self.privacy.epsilon:g}"
                )
        return self

    @property
    def rule(self) -> R.Rule:
        """The on-chain aggregation rule of this spec's strategy and privacy mode."""
        return R.rule_for(self.strategy, self.privacy.secure)

    def noise_multiplier(self) -> float:
        """``z`` of the job's Gaussian noise (relative to the replace-one sensitivity ``2 clip_norm``)."""
        if not self.privacy.dp:
            raise ConfigError(f"privacy mode {self.privacy.mode} adds no noise")
        if self.privacy.noise_multiplier is not None:
            return self.privacy.noise_multiplier
        return _fitted_noise(self.privacy.epsilon, self.privacy.delta, self.training.rounds)

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
