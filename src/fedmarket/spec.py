"""The job spec: one typed, validated document, committed on chain by its keccak256 hash."""

from __future__ import annotations

import functools
import math
from typing import Annotated, Literal, Union

import numpy as np
from eth_utils import keccak
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ConfigError, SchemaMismatch
from .protocol import rules as R
from .protocol.encoding import canonical_json

SPEC_VERSION = 1
#: the largest spec, as stored, that anyone posts or reads: room for a schema of the most features
#: (a million, with their bounds and names; most specs are a few kB, and a torch module is named by
#: content id, not carried). A requester's spec past it is refused before it is posted, and a role
#: downloads no more before it stakes.
MAX_SPEC_BYTES = 64 * 2**20


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # every number finite


class DataSchema(_Strict):
    """What a provider's local data must look like: tabular features in a known domain, integer labels."""

    n_features: int = Field(ge=1, le=1_000_000)
    n_classes: int = Field(ge=2, le=100_000)
    feature_low: list[float]
    feature_high: list[float]
    min_samples: int = Field(default=1, ge=1)
    features: list[str] | None = Field(default=None, description="column names of the features, in order (tables)")
    label: str | None = Field(default=None, description="the label column (tables)")
    classes: list[str] | None = Field(default=None, description="class names in class order: label values are matched to them")
    input_shape: list[int] | None = Field(default=None, description="shape of one sample, e.g. [1, 28, 28] (images); its product is n_features")

    @model_validator(mode="after")
    def _bounds(self) -> "DataSchema":
        if len(self.feature_low) != self.n_features or len(self.feature_high) != self.n_features:
            raise ValueError(f"feature_low and feature_high must each list {self.n_features} bounds")
        if any(lo > hi for lo, hi in zip(self.feature_low, self.feature_high)):
            raise ValueError("every feature_low must be <= its feature_high")
        if self.features is not None and (len(self.features) != self.n_features or len(set(self.features)) != self.n_features):
            raise ValueError(f"features must name {self.n_features} distinct columns")
        if self.label is not None and self.features is not None and self.label in self.features:
            raise ValueError(f"the label column '{self.label}' cannot also be a feature")
        if self.classes is not None and (len(self.classes) != self.n_classes or len(set(self.classes)) != self.n_classes):
            raise ValueError(f"classes must name {self.n_classes} distinct classes")
        if self.input_shape is not None and (not self.input_shape or min(self.input_shape) < 1
                                             or math.prod(self.input_shape) != self.n_features):
            raise ValueError(f"input_shape must be positive dimensions whose product is n_features = {self.n_features}")
        return self

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one sample: ``input_shape``, or ``(n_features,)``."""
        return tuple(self.input_shape) if self.input_shape else (self.n_features,)

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


class SoftmaxModel(_Strict):
    """Softmax (multinomial logistic) regression; starts from zeros."""

    kind: Literal["softmax"] = "softmax"
    l2: float = Field(default=1e-4, ge=0)


class MLPModel(_Strict):
    """A fully connected network: hidden layers of the given widths, ReLU or tanh between them;
    He-uniform initial weights drawn from ``init_seed``."""

    kind: Literal["mlp"]
    hidden: list[Annotated[int, Field(ge=1, le=1_000_000)]] = Field(default=[200], min_length=1, max_length=64)
    activation: Literal["relu", "tanh"] = "relu"
    l2: float = Field(default=0.0, ge=0)
    init_seed: int = Field(default=0, ge=0, lt=2**63)


class CNNModel(_Strict):
    """McMahan et al. (2017)'s CNN (needs PyTorch): ``kernel`` x ``kernel`` convolutions with the
    given channels, each followed by ReLU and 2x2 max pooling, a ReLU layer of ``dense`` units, the
    class scores. The data schema's ``input_shape`` ([channels, height, width]) is its input."""

    kind: Literal["cnn"]
    channels: list[Annotated[int, Field(ge=1, le=4096)]] = Field(default=[32, 64], min_length=1, max_length=8)
    kernel: int = Field(default=5, ge=1, le=15)
    dense: int = Field(default=512, ge=1, le=65_536)
    l2: float = Field(default=0.0, ge=0)
    init_seed: int = Field(default=0, ge=0, lt=2**63)


class TorchModelSpec(_Strict):
    """A requester's own PyTorch module (needs PyTorch), packed by `fedmarket model pack`: its
    architecture and initial weights are the blob ``module_cid`` names; every role loads it and
    checks it against this spec before it stakes. ``n_params`` is the length of its flat vector
    (trainable parameters, then floating buffers such as BatchNorm statistics)."""

    kind: Literal["torch"]
    module_cid: str = Field(min_length=1, max_length=200)
    n_params: int = Field(ge=1, le=R.MAX_PARAMS)
    l2: float = Field(default=0.0, ge=0)


#: the model every provider trains, by kind
ModelSpec = Annotated[Union[SoftmaxModel, MLPModel, CNNModel, TorchModelSpec], Field(discriminator="kind")]


class TrainingSpec(_Strict):
    """Rounds and local optimisation settings: the optimizer (SGD with optional momentum, Adam,
    AdamW), weight decay, a learning-rate schedule across rounds and the FedProx term. Optimizer
    state starts afresh every round, so a round follows from the global model and the seeds alone."""

    rounds: int = Field(ge=1, le=10_000)
    local_epochs: int = Field(default=5, ge=1, le=1000)
    batch_size: int = Field(default=16, ge=1)
    learning_rate: float = Field(default=0.5, gt=0)
    prox_mu: float = Field(default=0.0, ge=0)
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    momentum: float = Field(default=0.0, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    lr_schedule: Literal["constant", "step", "exponential", "cosine"] = "constant"
    lr_gamma: float = Field(default=1.0, gt=0, le=1, description="decay factor of the step and exponential schedules")
    lr_step_rounds: int = Field(default=1, ge=1, description="rounds between two decays of the step schedule")
    lr_min: float = Field(default=0.0, ge=0, description="the cosine schedule's last learning rate")

    @model_validator(mode="after")
    def _settings(self) -> "TrainingSpec":
        if self.momentum and self.optimizer != "sgd":
            raise ValueError(f"momentum applies to sgd; {self.optimizer} keeps its own moment estimates")
        if self.lr_min > self.learning_rate:
            raise ValueError("lr_min must not exceed learning_rate")
        return self

    def local(self):
        """The engine's :class:`~fedmarket.fl.optim.LocalTraining` of these settings."""
        from .fl.optim import LocalTraining

        return LocalTraining(
            epochs=self.local_epochs, batch_size=self.batch_size, lr=self.learning_rate, optimizer=self.optimizer,
            momentum=self.momentum, weight_decay=self.weight_decay, prox_mu=self.prox_mu, schedule=self.lr_schedule,
            gamma=self.lr_gamma, step_rounds=self.lr_step_rounds, min_lr=self.lr_min, total_rounds=self.rounds,
        )


EPSILON_SCALE = R.EPSILON_SCALE  # the chain holds epsilon in millionths


class PrivacySpec(_Strict):
    """How updates are protected; see docs/privacy.md for what each mode hides and what stays observable.

    - ``plain``: updates are signed and content-addressed, nothing is hidden.
    - ``dp_local``: each provider clips its update to ``clip_norm`` and adds Gaussian noise of
      std ``2 z clip_norm`` before it leaves (user-level DP against everybody, the aggregator included).
    - ``secagg``: SecAgg+ masking; the aggregator and the public see only the sum of a round.
    - ``secagg_dp``: SecAgg+ plus distributed discrete (Skellam) noise: each provider adds its share,
      sized so that the honest survivors alone carry std ``2 z clip_norm`` on the sum: the fewest
      survivors a round accepts, less ``max_dishonest`` of the round's selected providers (the
      aggregator picks the survivor set, so the colluders may all be in it): no party, even
      colluding with up to ``max_dishonest`` of the round's providers, sees a less noisy value.

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
    max_dishonest: float = Field(
        default=1 / 3, ge=0, lt=1, description="secagg and secagg_dp: share of a round's providers that may collude "
        "with the aggregator; the SecAgg+ neighbourhoods are sized so that no honest provider has a threshold of them "
        "around it (odds per round below privacy.secagg.PRIVACY_FAILURE), and in secagg_dp each provider's noise is "
        "sized so that the honest rest alone carries the job's noise")

    @model_validator(mode="after")
    def _consistent(self) -> "PrivacySpec":
        given = [n for n in ("epsilon", "delta", "clip_norm", "noise_multiplier") if getattr(self, n) is not None]
        if self.dp:
            missing = [n for n in ("epsilon", "delta", "clip_norm") if getattr(self, n) is None]
            if missing:
                raise ValueError(f"privacy mode {self.mode} needs {', '.join(missing)}")
        elif given:
            raise ValueError(f"privacy mode {self.mode} takes no {', '.join(given)} (only dp_local and secagg_dp add noise)")
        if not self.secure and self.max_dishonest != 1 / 3:
            raise ValueError(f"max_dishonest sizes secure aggregation's neighbourhoods; privacy mode {self.mode} has none")
        if self.secure and self.dropout + self.max_dishonest > 1 - 1e-9:
            # (with a margin: `honest_minimum` rounds f n up past a float's slip, so a sum a hair
            # below 1 would still leave rounds of no honest survivor)
            raise ValueError(f"dropout {self.dropout:g} and max_dishonest {self.max_dishonest:g} leave no honest survivor "
                             "to hide an update among (or to carry the noise): their sum must be below 1")
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
    it should cover the defender's gas for a whole game), the licence price, and the roles'
    fees, paid out of the escrow before the providers share the rest: the aggregator's per
    committed round, a validator's per round it attests (a member cut for a fault, or a
    validator that did not attest, earns nothing for it; the unearned part returns to the
    requester). ``licence_requester_bps`` is the model owner's share of licence revenue (the
    requester's, until it sells the model token) and, for query revenue, the owner's and its
    servers' shares together; the protocol fee is taken too, and the contributors share the
    rest by their rewards."""

    escrow: int = Field(gt=0, le=R.MAX_AMOUNT)
    provider_stake: int = Field(default=0, ge=0, le=R.MAX_AMOUNT)
    aggregator_stake: int = Field(default=0, ge=0, le=R.MAX_AMOUNT)
    validator_stake: int = Field(default=0, ge=0, le=R.MAX_AMOUNT)
    dispute_bond: int = Field(default=10**18, gt=0, le=R.MAX_AMOUNT)
    licence_price: int = Field(default=0, ge=0, le=R.MAX_AMOUNT)
    aggregator_fee: int = Field(default=0, ge=0, le=R.MAX_AMOUNT)
    validator_fee: int = Field(default=0, ge=0, le=R.MAX_AMOUNT)
    licence_requester_bps: int = Field(default=0, ge=0, le=R.BPS - R.MAX_FEE_BPS)

    @property
    def provider_funds(self) -> int:
        """What a provider must hold to join: its stake, and the dispute bond with which its process
        watches the reward root (a job whose bond it could never lock would leave its pay to whoever
        posts the root)."""
        return self.provider_stake + self.dispute_bond


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

    def samples(self, joined: int) -> bool:
        """Whether a round draws its providers at random from ``joined`` ones (with ``per_round``
        of them or more, every one is picked every round)."""
        return 0 < self.per_round < joined

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
    claim_period: int = Field(default=30 * 86_400, ge=R.MIN_CLAIM_PERIOD, le=R.MAX_CLAIM_PERIOD)
    response_period: int = Field(default=3_600, ge=1, le=R.MAX_RESPONSE_PERIOD)


class QuantizationSpec(_Strict):
    """Fixed-point encoding of updates (integers make aggregation exact and verifiable)."""

    scale_bits: Literal[20] = 20
    chunk_size: int = Field(default=64, ge=1, le=64)


@functools.lru_cache(maxsize=64)
def _fitted_noise(epsilon: float, delta: float, rounds: int) -> float:
    """The smallest noise multiplier keeping ``rounds`` rounds within ``(epsilon, delta)`` by the
    market's own accounting (`protocol.rules.epsilon_micro`, which the chain recomputes)."""
    budget = int(epsilon * EPSILON_SCALE)
    return R.noise_micro_for(budget, R.delta_log_micro(delta), rounds) / EPSILON_SCALE


class TransportSpec(_Strict):
    """How providers' updates reach the aggregator, when not by the mailbox: over Flower's Deployment
    Engine, running exactly the Flower app bundle (FAB) whose sha256 this names. A provider refuses
    to run any other bundle (`fedmarket.transport.flower`)."""

    kind: Literal["flower"] = "flower"
    flower_app_hash: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 (hex) of the Flower app bundle")


class JobSpec(_Strict):
    """A whole training job. Immutable; its hash is what the chain commits to."""

    version: Literal[1] = SPEC_VERSION
    name: str = Field(min_length=1, max_length=200)
    data: DataSchema
    model: ModelSpec = SoftmaxModel()
    training: TrainingSpec
    strategy: Literal["fedavg", "median", "trimmed_mean", "centered_clip", "norm_bounding"] = Field(
        default="fedavg", description="fedavg, median and trimmed_mean are proven on chain; centered_clip and "
        "norm_bounding are attested by the job's validators (two thirds of their stake), see docs/protocol.md")
    trim: int = Field(default=0, ge=0, description="updates dropped at each end per coordinate (trimmed_mean)")
    privacy: PrivacySpec = PrivacySpec()
    reward: RewardSpec
    participation: ParticipationSpec
    deadlines: DeadlineSpec = DeadlineSpec()
    quantization: QuantizationSpec = QuantizationSpec()
    quality: QualitySpec = QualitySpec()
    transport: TransportSpec | None = Field(default=None, description="None: the mailbox; else the Flower bundle providers run")

    @model_validator(mode="after")
    def _strategy(self) -> "JobSpec":
        if self.strategy == "trimmed_mean" and self.trim < 1:
            raise ValueError("trimmed_mean needs trim >= 1")
        if self.strategy != "trimmed_mean" and self.trim:
            raise ValueError("trim only applies to trimmed_mean")
        if self.privacy.secure and self.strategy != "fedavg":
            raise ValueError(f"privacy mode {self.privacy.mode} sums masked updates, so it needs strategy fedavg, not {self.strategy}")
        if self.privacy.secure and self.transport is not None:
            raise ValueError(f"privacy mode {self.privacy.mode} runs its SecAgg+ stages on the mailbox; a Flower job "
                             "(transport) carries plain and dp_local rounds")
        if self.privacy.secure and self.participation.min_providers < 3:
            raise ValueError("secure aggregation needs min_providers >= 3 (with two, each learns the other's update from the sum)")
        if self.attested and self.participation.max_validators < 1:
            raise ValueError(f"strategy {self.strategy} is attested by validators: it needs max_validators >= 1")
        if self.attested and self.quality.target_accuracy is not None:
            raise ValueError(f"strategy {self.strategy} pays by aggregated weight (the contracts keep no scores for "
                             "attested rules), so it cannot have a quality gate")
        if self.privacy.secure and self.quality.target_accuracy is not None:
            raise ValueError(f"privacy mode {self.privacy.mode} masks every update, so validators keep no scores and the "
                             "market cannot find a quality gate met: it cannot have one")
        if self.quality.target_accuracy is not None and self.participation.max_validators < 1:
            raise ValueError("a quality gate needs validators to attest the accuracy (max_validators >= 1)")
        if self.privacy.secure and 0 < self.participation.per_round < 3:
            raise ValueError("secure aggregation needs per_round >= 3")
        if self.privacy.secure:  # every round size the job can have tolerates the dropout it promises
            from .privacy.secagg import dropout_shortfall, sampled_shortfall

            part, p = self.participation, self.privacy
            sampled = part.samples(part.max_providers)
            # up to per_round joined, every one is in the round: those sizes, with the job's share
            hi = min(part.max_providers, part.per_round) if sampled else part.max_providers
            problem = dropout_shortfall(part.min_providers, hi, p.dropout, p.max_dishonest) if part.min_providers <= hi else None
            if problem is None and sampled:  # the sizes a sampled round draws, sized for its draw's tail
                problem = sampled_shortfall(part.per_round, part.max_providers, p.dropout, p.max_dishonest)
            if problem:
                raise ValueError(problem)
        if self.privacy.secure and self.participation.max_validators < 1:
            raise ValueError(f"privacy mode {self.privacy.mode} needs validators (max_validators >= 1): they re-derive "
                             "each round's mask correction, which no contract can")
        if self.reward.validator_fee and self.participation.max_validators < 1:
            raise ValueError("reward.validator_fee needs validators (max_validators >= 1)")
        fees = R.RoleFees(self.reward.aggregator_fee, self.reward.validator_fee, self.training.rounds,
                          self.participation.max_validators)
        if fees.reserved > self.reward.escrow - self.reward.escrow * R.MAX_FEE_BPS // R.BPS:
            raise ValueError(f"the roles' fees over {self.training.rounds} rounds ({fees.reserved}) exceed the escrow "
                             f"less the largest protocol fee ({self.reward.escrow - self.reward.escrow * R.MAX_FEE_BPS // R.BPS})")
        if self.training.rounds * self.deadlines.round_duration > R.MAX_TRAINING_TIME:
            raise ValueError(f"rounds x round_duration must not exceed {R.MAX_TRAINING_TIME} seconds (two years)")
        if self.model.kind == "cnn" and (self.data.input_shape is None or len(self.data.input_shape) != 3):
            raise ValueError("a cnn model needs data.input_shape [channels, height, width]")
        if self.n_params > R.MAX_PARAMS:
            raise ValueError(f"the model has {self.n_params} parameters, above the market's {R.MAX_PARAMS}")
        from .fl.models import EVAL_BATCH, MAX_ACTIVATION_BYTES

        if self.activation_bytes * EVAL_BATCH > MAX_ACTIVATION_BYTES:
            raise ValueError(f"the model's forward pass takes {self.activation_bytes * EVAL_BATCH >> 20} MiB of "
                             f"intermediate values for {EVAL_BATCH} samples, above {MAX_ACTIVATION_BYTES >> 20} MiB: "
                             "validators could not evaluate it")
        if self.privacy.dp and self.privacy.noise_multiplier is not None:
            if self.privacy.noise_multiplier * EPSILON_SCALE > R.MAX_NOISE:
                raise ValueError(f"noise_multiplier must be at most {R.MAX_NOISE / EPSILON_SCALE:g}")
            eps = R.epsilon_micro(self.noise_micro, self.delta_log_micro, self.training.rounds)
            if eps > self.privacy.budget_micro:
                raise ValueError(
                    f"noise_multiplier {self.privacy.noise_multiplier:g} spends epsilon {eps / EPSILON_SCALE:.4g} over "
                    f"{self.training.rounds} rounds, above the budget {self.privacy.epsilon:g}"
                )
        if self.privacy.mode == "secagg_dp":  # its Skellam shares must be as private as the chain counts
            from .privacy.dp import skellam_slack

            sensitivity = 2.0 * self.privacy.clip_norm * 2.0**self.quantization.scale_bits + math.sqrt(self.n_params)
            try:
                skellam_slack(self.noise_multiplier(), sensitivity, self.n_params)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return self

    @property
    def activation_bytes(self) -> int:
        """Bytes of intermediate values one sample's forward pass takes in a built-in model (numpy
        float64 for softmax and mlp, torch float32 for cnn; a `torch` job's module is measured when
        it is loaded, `fl.torch_archive.check_activations`): each layer's output, and its
        activation beside it."""
        m, d = self.model, self.data
        if m.kind == "softmax":
            return 16 * d.n_classes
        if m.kind == "mlp":
            return 16 * (sum(m.hidden) + d.n_classes)
        if m.kind == "cnn":
            c, h, w = d.input_shape
            total = c * h * w
            for ch in m.channels:
                total += 2 * ch * h * w + ch * (h // 2) * (w // 2)  # convolution, ReLU, pooling
                h, w = h // 2, w // 2
            return 4 * (total + 2 * m.dense + d.n_classes)
        return 0

    @property
    def attested(self) -> bool:
        """Whether the job's strategy is attested by validators (committed through the secure-sum rule)."""
        return self.strategy in R.ATTESTED

    @property
    def unit_weights(self) -> bool:
        """Whether every update must carry weight 1: every private mode (a sample count is a statistic of
        private data that no mechanism covers, and the DP modes bound influence by the clip), and the
        attested rules (they count updates)."""
        return self.privacy.mode != "plain" or self.attested

    @property
    def rule(self) -> R.Rule:
        """The on-chain aggregation rule of this spec's strategy and privacy mode."""
        return R.rule_for(self.strategy, self.privacy.secure)

    def noise_multiplier(self) -> float:
        """``z`` of the job's Gaussian noise (relative to the replace-one sensitivity ``2 clip_norm``),
        as the terms carry it (a whole number of millionths)."""
        return self.noise_micro / EPSILON_SCALE

    @property
    def noise_micro(self) -> int:
        """The noise multiplier in millionths (the terms' `noise_multiplier`): the spec's, rounded up,
        or the smallest that keeps every round within the budget."""
        if not self.privacy.dp:
            raise ConfigError(f"privacy mode {self.privacy.mode} adds no noise")
        if self.privacy.noise_multiplier is not None:
            return math.ceil(self.privacy.noise_multiplier * EPSILON_SCALE)
        return round(_fitted_noise(self.privacy.epsilon, self.privacy.delta, self.training.rounds) * EPSILON_SCALE)

    @property
    def delta_log_micro(self) -> int:
        """``ln(1/delta)`` in millionths (the terms' `delta_log`)."""
        if not self.privacy.dp:
            raise ConfigError(f"privacy mode {self.privacy.mode} adds no noise")
        return R.delta_log_micro(self.privacy.delta)

    def make_model(self):
        """The model every participant of this job trains and evaluates, at its initial parameters.
        A ``torch`` job's model is its packed module, which lives in the blob store: build it with
        :func:`fedmarket.jobmodel.job_model` (which every role uses, for every kind)."""
        from .fl.models import MLP, SoftmaxRegression

        m, d = self.model, self.data
        if m.kind == "softmax":
            return SoftmaxRegression(d.n_features, d.n_classes, m.l2)
        if m.kind == "mlp":
            return MLP(d.n_features, d.n_classes, hidden=m.hidden, l2=m.l2, seed=m.init_seed, activation=m.activation)
        if m.kind == "cnn":
            from .fl.torch_models import cnn_net

            return cnn_net(d.input_shape, d.n_classes, m.channels, m.kernel, m.dense, m.init_seed, m.l2)
        raise ConfigError("a torch job's model is its packed module in the blob store: use fedmarket.jobmodel.job_model(spec, store)")

    def normalize(self, X: np.ndarray) -> np.ndarray:
        """Features mapped to [0, 1] with the schema's domain bounds: identical for every participant."""
        from .fl.models import normalize

        return normalize(X, np.asarray(self.data.feature_low), np.asarray(self.data.feature_high))

    @property
    def n_params(self) -> int:
        """Length of the model's flat parameter vector: what every round commits."""
        m, d = self.model, self.data
        if m.kind == "softmax":
            return d.n_features * d.n_classes + d.n_classes
        if m.kind == "mlp":
            sizes = [d.n_features, *m.hidden, d.n_classes]
            return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
        if m.kind == "cnn":
            from .fl.torch_models import cnn_param_count

            return cnn_param_count(d.input_shape, d.n_classes, m.channels, m.kernel, m.dense)
        return m.n_params

    def canonical(self) -> bytes:
        """Canonical JSON bytes: the CID and the on-chain hash are taken of exactly these."""
        # a spec without a transport has the bytes (and hash) it had before the field existed
        return canonical_json(self.model_dump(mode="json", exclude={"transport"} if self.transport is None else None))

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
