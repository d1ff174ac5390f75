"""Run one whole market job with every role in one process: the engine behind `fedmarket demo`."""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from .chain import Chain
from .driver import Cast, JobDriver, Progress, RoundPlan, fund
from .errors import ConfigError
from .fl.data import DATASETS, load_dataset, subset, train_test_split
from .fl.partition import dirichlet_partition, iid_partition
from .fl.train import centralized_train
from .market import DEFAULT_FEE_BPS, Deployment, JobState
from .protocol import rules as R
from .protocol.encoding import address_key
from .roles import Aggregator, Provider, Requester, Validator
from .roles.challenger import Challenger
from .roles.common import committed_rounds, posted_rewards
from .spec import (
    EPSILON_SCALE,
    DataSchema,
    DeadlineSpec,
    JobSpec,
    ParticipationSpec,
    PrivacySpec,
    QualitySpec,
    RewardSpec,
    TrainingSpec,
)
from .storage import LocalBlobStore, Mailbox

TOKEN = 10**18
PRIVACY_MODES = ("plain", "dp_local", "secagg", "secagg_dp")
MODELS = ("softmax", "mlp", "cnn")
IMAGE_DATASETS = ("fashion_mnist", "mnist")  # 28x28 grey images with their official train/test split
#: local training of the demo's models where the command line does not set it
MODEL_DEFAULTS = {
    "softmax": {},
    "mlp": {"local_epochs": 1, "batch_size": 32, "learning_rate": 0.05, "momentum": 0.9},
    "cnn": {"local_epochs": 1, "batch_size": 32, "learning_rate": 0.05, "momentum": 0.9},
}


@dataclass(frozen=True)
class JobConfig:
    """Everything a demo job needs; `check()` rejects bad values with one clear line."""

    providers: int = 20
    rounds: int = 10
    dataset: str = "digits"
    partition: str = "iid"
    alpha: float = 0.5
    seed: int = 0
    test_fraction: float = 0.25
    escrow_tokens: int = 1_000
    stake_tokens: int = 10
    aggregator_stake_tokens: int = 100
    validators: int = 0
    validator_stake_tokens: int = 50
    fee_bps: int = DEFAULT_FEE_BPS
    aggregator_fee_tokens: float = 1.0  # per committed round
    validator_fee_tokens: float = 0.5  # per attestation (jobs with validators)
    licence_requester_bps: int = 1_000
    local_epochs: int = 5
    batch_size: int = 16
    learning_rate: float = 1.0
    privacy: str = "plain"
    epsilon: float = 8.0
    delta: float = 1e-5
    clip_norm: float = 1.0
    dropout: float = 0.0
    per_round: int = 0
    target_accuracy: float | None = None
    miss_payout_bps: int = 5_000
    model: str = "softmax"
    momentum: float = 0.0
    hidden: tuple[int, ...] = (200,)
    strategy: str = "fedavg"
    trim: int = 0

    @classmethod
    def for_model(cls, model: str = "softmax", **kwargs) -> "JobConfig":
        """A config with the model's local-training defaults (`MODEL_DEFAULTS`) under `kwargs`."""
        if model not in MODELS:
            raise ConfigError(f"unknown model '{model}'; choose one of: {', '.join(MODELS)}")
        return cls(model=model, **{**MODEL_DEFAULTS[model], **{k: v for k, v in kwargs.items() if v is not None}})

    def check(self) -> None:
        if self.providers < 1:
            raise ConfigError(f"--providers must be at least 1 (got {self.providers})")
        if self.rounds < 1:
            raise ConfigError(f"--rounds must be at least 1 (got {self.rounds})")
        if self.dataset not in DATASETS + IMAGE_DATASETS:
            raise ConfigError(f"unknown dataset '{self.dataset}'; choose one of: {', '.join(DATASETS + IMAGE_DATASETS)}")
        if self.model not in MODELS:
            raise ConfigError(f"unknown model '{self.model}'; choose one of: {', '.join(MODELS)}")
        if self.model == "cnn" and self.dataset not in ("digits", *IMAGE_DATASETS):
            raise ConfigError(f"--model cnn needs an image dataset (digits, {', '.join(IMAGE_DATASETS)}), not {self.dataset}")
        if self.partition not in ("iid", "dirichlet"):
            raise ConfigError(f"unknown partition '{self.partition}'; choose iid or dirichlet")
        if not self.alpha > 0:
            raise ConfigError(f"--alpha must be positive (got {self.alpha})")
        if not 0 < self.test_fraction < 1:
            raise ConfigError(f"test fraction must be in (0, 1) (got {self.test_fraction})")
        if not 0 <= self.validators <= 32:
            raise ConfigError(f"--validators must be between 0 and 32 (got {self.validators})")
        if self.escrow_tokens < 1 or self.stake_tokens < 0:
            raise ConfigError("escrow must be positive and stake non-negative")
        if self.aggregator_fee_tokens < 0 or self.validator_fee_tokens < 0:
            raise ConfigError("the aggregator's and validators' fees must not be negative")
        fees = self.rounds * (self.aggregator_fee_tokens + self.validators * self.validator_fee_tokens)
        if fees > self.escrow_tokens * 0.9:
            raise ConfigError(f"the roles' fees over {self.rounds} rounds ({fees:g} tokens) exceed 90% of the "
                              f"escrow ({self.escrow_tokens} tokens): raise the escrow or lower the fees")
        if self.privacy not in PRIVACY_MODES:
            raise ConfigError(f"unknown privacy mode '{self.privacy}'; choose one of: {', '.join(PRIVACY_MODES)}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"--dropout must be in [0, 1) (got {self.dropout})")
        if self.privacy.startswith("secagg") and self.providers < 3:
            raise ConfigError(f"secure aggregation needs at least 3 providers (got {self.providers})")
        if self.privacy.startswith("secagg") and self.validators < 1:
            raise ConfigError(f"--privacy {self.privacy} needs --validators: they re-derive each round's mask correction")
        self.privacy_spec()  # epsilon, delta and clip norm problems surface here
        if self.strategy not in (*R.STRATEGIES, *R.ATTESTED):
            raise ConfigError(f"unknown strategy '{self.strategy}'; choose one of: {', '.join((*R.STRATEGIES, *R.ATTESTED))}")
        if self.strategy in R.ATTESTED and self.validators < 1:
            raise ConfigError(f"--strategy {self.strategy} is attested by validators: it needs --validators")
        if (self.strategy == "trimmed_mean") != (self.trim > 0) or not 0 <= 2 * self.trim < self.providers:
            raise ConfigError(f"--trim must be at least 1 with trimmed_mean (only), and 2 x trim below --providers "
                              f"(got --strategy {self.strategy} --trim {self.trim})")
        if not 0 <= self.per_round <= self.providers:
            raise ConfigError(f"--per-round must be between 0 (everyone) and --providers (got {self.per_round})")
        if self.privacy.startswith("secagg") and 0 < self.per_round < 3:
            raise ConfigError(f"secure aggregation needs --per-round of at least 3 (got {self.per_round})")
        if self.target_accuracy is not None:
            if not 0 < self.target_accuracy <= 1:
                raise ConfigError(f"--target-accuracy must be in (0, 1] (got {self.target_accuracy})")
            if self.validators < 1:
                raise ConfigError("--target-accuracy needs --validators (they attest the final accuracy)")
            if self.privacy.startswith("secagg") or self.strategy in R.ATTESTED:
                raise ConfigError(f"--target-accuracy needs scored updates: --privacy {self.privacy} with --strategy "
                                  f"{self.strategy} pays by weight, and its gate could never be met")

    def privacy_spec(self) -> PrivacySpec:
        dp = self.privacy in ("dp_local", "secagg_dp")
        try:
            return PrivacySpec(
                mode=self.privacy,
                **({"epsilon": self.epsilon, "delta": self.delta, "clip_norm": self.clip_norm} if dp else {}),
                dropout=max(0.3, self.dropout),
            )
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'privacy'}: {e['msg']}" for e in exc.errors())
            raise ConfigError(f"bad privacy settings: {problems}") from None

    def dropped(self, round_: int) -> list[int]:
        """Providers (by index) that vanish in round `round_`: a seeded `dropout` share of them."""
        k = int(self.dropout * self.providers)
        rng = np.random.default_rng([self.seed, round_, 7])
        return sorted(int(i) for i in rng.choice(self.providers, size=k, replace=False)) if k else []

    def plan(self, round_: int) -> RoundPlan:
        """Round `round_`'s vanishing providers, each at some stage: before its keys, before masking, or after."""
        return RoundPlan({i: ("keys", "mask", "unmask")[k % 3] for k, i in enumerate(self.dropped(round_))})

    def split(self):
        """Check the config against its dataset; returns (train, test, per-provider index arrays)."""
        self.check()
        if self.dataset in IMAGE_DATASETS:
            from .fl.datasets import load_fashion_mnist, load_mnist

            train, test = load_fashion_mnist() if self.dataset == "fashion_mnist" else load_mnist()
            ds = train
        else:
            ds = load_dataset(self.dataset)
            train, test = train_test_split(ds, self.test_fraction, self.seed)
        if self.providers > train.n_samples:
            raise ConfigError(
                f"--providers {self.providers} exceeds the {train.n_samples} training samples of '{self.dataset}'"
            )
        if self.partition == "iid":
            parts = iid_partition(train.y, self.providers, self.seed)
        else:
            parts = dirichlet_partition(train.y, self.providers, self.alpha, self.seed)
        return ds, train, test, parts


def _centralized_accuracy(spec: JobSpec, train, test, cfg: JobConfig) -> float | None:
    """Reference point: the same model trained on the pooled training data (what FL should approach);
    None for the CNN (as long to train as the whole job again)."""
    if spec.model.kind == "cnn":
        return None
    model = spec.make_model()
    params = centralized_train(
        model, spec.normalize(train.X), train.y,
        epochs=cfg.rounds * cfg.local_epochs, batch_size=cfg.batch_size, lr=cfg.learning_rate / 2, seed=cfg.seed,
    )
    return model.accuracy(params, spec.normalize(test.X), test.y)


def demo_model(cfg: JobConfig) -> dict:
    """The demo's model spec for `cfg.model`."""
    if cfg.model == "mlp":
        return {"kind": "mlp", "hidden": list(cfg.hidden), "init_seed": cfg.seed}
    if cfg.model == "cnn":
        return {"kind": "cnn", "init_seed": cfg.seed}
    return {"kind": "softmax"}


#: the `fedmarket demo` option behind a spec field, to name it in an error
_DEMO_OPTIONS = {"learning_rate": "--lr", "local_epochs": "--epochs", "rounds": "--rounds", "trim": "--trim",
                 "per_round": "--per-round", "target_accuracy": "--target-accuracy", "strategy": "--strategy"}


def demo_spec(cfg: JobConfig, ds, deadlines: DeadlineSpec | None = None) -> JobSpec:
    """The demo job's spec: the dataset's schema, the config's model, money and privacy; a setting
    the spec refuses is a one-line ConfigError naming it."""
    try:
        return _demo_spec(cfg, ds, deadlines)
    except ValidationError as exc:
        def where(e) -> str:
            field = ".".join(map(str, e["loc"])) or "spec"
            option = _DEMO_OPTIONS.get(str(e["loc"][-1])) if e["loc"] else None
            return f"{option} ({field})" if option else field

        problems = "; ".join(f"{where(e)}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"bad demo settings: {problems}") from None


def _demo_spec(cfg: JobConfig, ds, deadlines: DeadlineSpec | None = None) -> JobSpec:
    side = int(round(ds.n_features ** 0.5))
    image = ds.name in ("digits", *IMAGE_DATASETS) and side * side == ds.n_features
    names = {"softmax": "softmax regression", "mlp": "MLP", "cnn": "CNN"}
    return JobSpec(
        name=f"{cfg.dataset} {names[cfg.model]}, {cfg.providers} providers",
        data=DataSchema(
            n_features=ds.n_features,
            n_classes=ds.num_classes,
            feature_low=[float(v) for v in ds.feature_low],
            feature_high=[float(v) for v in ds.feature_high],
            input_shape=[1, side, side] if image else None,
        ),
        model=demo_model(cfg),
        strategy=cfg.strategy,
        trim=cfg.trim,
        training=TrainingSpec(
            rounds=cfg.rounds, local_epochs=cfg.local_epochs, batch_size=cfg.batch_size, learning_rate=cfg.learning_rate,
            momentum=cfg.momentum,
        ),
        reward=RewardSpec(escrow=cfg.escrow_tokens * TOKEN, provider_stake=cfg.stake_tokens * TOKEN,
                          aggregator_stake=cfg.aggregator_stake_tokens * TOKEN,
                          validator_stake=cfg.validator_stake_tokens * TOKEN if cfg.validators else 0,
                          aggregator_fee=round(cfg.aggregator_fee_tokens * TOKEN),
                          validator_fee=round(cfg.validator_fee_tokens * TOKEN) if cfg.validators else 0,
                          licence_requester_bps=cfg.licence_requester_bps),
        participation=ParticipationSpec(min_providers=cfg.providers, max_providers=cfg.providers,
                                        max_validators=cfg.validators, per_round=cfg.per_round),
        quality=QualitySpec(target_accuracy=cfg.target_accuracy, miss_payout_bps=cfg.miss_payout_bps),
        privacy=cfg.privacy_spec(),
        deadlines=deadlines or DeadlineSpec(),
    )


@dataclass
class DemoWorld:
    """The demo's chain, contracts, accounts and data."""

    dep: Deployment
    cast: Cast
    treasury: str
    train: object
    test: object


def demo_world(chain: Chain, workdir: Path, cfg: JobConfig, spec: JobSpec, ds, train, test, parts) -> DemoWorld:
    """Deploy the protocol, fund every account and build the cast. Validators hold out half of the
    test split between them; the requester keeps the rest."""
    # the demo's mailbox is its own, per run: an earlier run's messages in the same directory were
    # signed for a deployment at the same addresses (the embedded chain starts afresh each run)
    shutil.rmtree(Path(workdir) / "mailbox", ignore_errors=True)
    store, mailbox = LocalBlobStore(workdir / "blobs"), Mailbox(workdir / "mailbox")
    seed = f"demo-{cfg.seed}"
    deployer, treasury, req_acct, agg_acct, outsider = (chain.new_account(seed, i) for i in range(5))
    prov_accts = [chain.new_account(seed, 100 + i) for i in range(cfg.providers)]
    val_accts = [chain.new_account(seed, 200 + i) for i in range(cfg.validators)]
    dep = Deployment.deploy(chain, deployer, treasury.address, cfg.fee_bps)
    r = spec.reward
    fund(dep, deployer, {req_acct.address: r.escrow, agg_acct.address: r.aggregator_stake, outsider.address: 10 * r.dispute_bond,
                         **{a.address: r.provider_funds for a in prov_accts},
                         **{a.address: r.validator_stake for a in val_accts}})
    providers = [Provider(dep, a, store, mailbox, train.X[idx], train.y[idx]) for a, idx in zip(prov_accts, parts)]
    validators = []
    if val_accts:
        half = test.n_samples // 2
        held = np.array_split(np.arange(half, test.n_samples), len(val_accts))
        validators = [Validator(dep, a, store, mailbox, test.X[i], test.y[i]) for a, i in zip(val_accts, held)]
        test = subset(test, np.arange(half))
    cast = Cast(Requester(dep, req_acct, store), Aggregator(dep, agg_acct, store, mailbox), providers, validators,
                Challenger(dep, outsider, store))
    return DemoWorld(dep, cast, treasury.address, train, test)


def run_job(chain: Chain, workdir: str | Path, cfg: JobConfig, progress: Progress | None = None,
            deadlines: DeadlineSpec | None = None, centralized: bool = True) -> dict:
    """Deploy, post a funded job, run every round, settle, let everyone claim; return the report.
    Money figures in the report are read from token balances on chain, before and after.
    `deadlines` replace the spec's defaults (short ones where time must pass for real). With
    `centralized`, the report holds the same model trained centrally (None otherwise)."""
    ds, train, test, parts = cfg.split()
    t0 = time.perf_counter()
    tick = progress or (lambda stage, done, total: None)
    tick("deploy", 0, 1)
    spec = demo_spec(cfg, ds, deadlines)
    world = demo_world(chain, Path(workdir), cfg, spec, ds, train, test, parts)
    tick("deploy", 1, 1)
    cast = world.cast
    driver = JobDriver(world.dep, cast.aggregator.store, cast.aggregator.mailbox, cast, spec, tick)
    watched = [cast.requester.account.address, world.treasury, *cast.accounts]
    before = {a: world.dep.holdings(a) for a in watched}
    driver.run(cfg.plan)
    report = demo_report(world, driver, cfg, before)
    report["centralized_accuracy"] = _centralized_accuracy(spec, world.train, world.test, cfg) if centralized else None
    report["seconds"] = round(time.perf_counter() - t0, 3)
    return report


def demo_report(world: DemoWorld, driver: JobDriver, cfg: JobConfig, before: dict[str, int]) -> dict:
    """What the chain says about the demo job: accuracy per round, gas, and every token, from balances."""
    dep, cast, job_id, spec = world.dep, world.cast, driver.job_id, driver.spec
    after = {a: dep.holdings(a) for a in before}
    delta = {a: after[a] - before[a] for a in before}
    escrow = spec.reward.escrow
    req = cast.requester.account.address
    paid = sum(delta[p.address] for p in cast.providers)
    agg = cast.aggregator.account.address
    validators = [v.address for v in cast.validators]
    members = {req, world.treasury, agg, *validators, *(p.address for p in cast.providers)}
    others = sum(delta[a] for a in before if a not in members)
    market_left = dep.balance(dep.market.address) - sum(dep.staked(a) for a in before)
    job = dep.job(job_id)
    committed = committed_rounds(dep, job_id)
    rewards = posted_rewards(dep, cast.aggregator.store, job_id) if job["state"] == JobState.SETTLED else {}
    settled = job["state"] == JobState.SETTLED
    return {
        "job_id": job_id,
        "chain": dep.chain.name,
        "contracts": dep.addresses(),
        "spec_cid": dep.market.events("JobPosted", job_id=job_id)[0]["spec_cid"],
        "config": asdict(cfg),
        "state": job["state"].name,
        "rounds": cfg.rounds,
        "providers": cfg.providers,
        **_accuracy(cast, job_id, world.test),
        "privacy": spec.privacy.mode,
        "epsilon_spent": committed[-1].epsilon_spent / EPSILON_SCALE if committed else 0.0,
        "epsilon_budget": spec.privacy.epsilon,
        "updates_per_round": [c.count for c in committed],
        "reward_basis": {0: "aggregated weight", 1: "validator scores (stake-weighted median)"}.get(rewards.get("basis")),
        "quality": rewards.get("quality"),
        "gas_per_round": driver.round_gas,
        "claim_gas": driver.claim_gas,
        "escrow": escrow,
        "paid": paid,
        "aggregator_earned": delta[agg],
        "validators_earned": sum(delta[v] for v in validators),
        "fee": delta[world.treasury],
        "refunded": delta[req] + escrow,
        "job_funds_left_in_market": market_left,
        "others_delta": others,
        "validators": len(cast.validators),
        "attested_rounds": sum(bool(dep.disputes.call("has_quorum", job_id, r)) for r in range(len(committed))) if cast.validators else 0,
        "model_token_owner": dep.licence.call("ownerOf", job_id) if settled else None,
        "slashed_providers": [r.event("ProviderSlashed")["provider"] for r in driver.slashed if _has(r, "ProviderSlashed")],
        # every token of the escrow is accounted for on some watched account, and none is left behind
        "conserved": sum(delta.values()) == 0 and market_left == 0 and settled,
        "settlement": _settlement(dep, cast, job_id, delta),
    }


def _has(receipt, name: str) -> bool:
    return any(e.name == name for e in receipt.events)


def _accuracy(cast: Cast, job_id: int, test) -> dict:
    accuracy = cast.requester.evaluate(job_id, test.X, test.y)
    return {"final_accuracy": accuracy[-1] if accuracy else 0.0, "accuracy": accuracy}


def _settlement(dep: Deployment, cast: Cast, job_id: int, delta: dict[str, int]) -> list[dict]:
    """Every member's earnings from balances, providers first (sorted by account), then the
    validators and the aggregator: what it earned (reward or fee), its samples (providers) and its
    reputation after the job."""
    rows = [(p.address, "provider", p.n_samples) for p in sorted(cast.providers, key=lambda p: address_key(p.address))]
    rows += [(v.address, "validator", None) for v in sorted(cast.validators, key=lambda v: address_key(v.address))]
    rows.append((cast.aggregator.account.address, "aggregator", None))
    return [{"account": a, "role": role, "samples": n, "reward": delta[a], "reputation": int(dep.market.call("reputation", a))}
            for a, role, n in rows]
