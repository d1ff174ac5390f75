"""Run one whole market job with every role in one process: the engine behind `fedmarket demo`."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from .chain import Chain
from .errors import ConfigError
from .fl.data import DATASETS, load_dataset, subset, train_test_split
from .fl.partition import dirichlet_partition, iid_partition
from .fl.train import centralized_train
from .market import DEFAULT_FEE_BPS, Deployment, JobState
from .protocol.encoding import address_key
from .roles import Aggregator, Provider, Requester, Validator
from .roles.common import committed_rounds
from .roles.validator import submit_attestations, submit_misbehaviour
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
Progress = Callable[[str, int, int], None]  # (stage, done, total)


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

    def check(self) -> None:
        if self.providers < 1:
            raise ConfigError(f"--providers must be at least 1 (got {self.providers})")
        if self.rounds < 1:
            raise ConfigError(f"--rounds must be at least 1 (got {self.rounds})")
        if self.dataset not in DATASETS:
            raise ConfigError(f"unknown dataset '{self.dataset}'; choose one of: {', '.join(DATASETS)}")
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
        if self.privacy not in PRIVACY_MODES:
            raise ConfigError(f"unknown privacy mode '{self.privacy}'; choose one of: {', '.join(PRIVACY_MODES)}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"--dropout must be in [0, 1) (got {self.dropout})")
        if self.privacy.startswith("secagg") and self.providers < 3:
            raise ConfigError(f"secure aggregation needs at least 3 providers (got {self.providers})")
        self.privacy_spec()  # epsilon, delta and clip norm problems surface here
        if not 0 <= self.per_round <= 128:
            raise ConfigError(f"--per-round must be between 0 (everyone) and 128 (got {self.per_round})")
        if self.privacy.startswith("secagg") and 0 < self.per_round < 3:
            raise ConfigError(f"secure aggregation needs --per-round of at least 3 (got {self.per_round})")
        if self.target_accuracy is not None:
            if not 0 < self.target_accuracy <= 1:
                raise ConfigError(f"--target-accuracy must be in (0, 1] (got {self.target_accuracy})")
            if self.validators < 1:
                raise ConfigError("--target-accuracy needs --validators (they attest the final accuracy)")

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

    def split(self):
        """Check the config against its dataset; returns (train, test, per-provider index arrays)."""
        self.check()
        ds = load_dataset(self.dataset)
        train, test = train_test_split(ds, self.test_fraction, self.seed)
        if self.providers > train.n_samples:
            raise ConfigError(
                f"--providers {self.providers} exceeds the {train.n_samples} training samples of '{self.dataset}'"
            )
        if self.per_round == 0 and self.providers > 128:
            raise ConfigError(f"{self.providers} providers: a round takes at most 128, so set --per-round")
        if self.partition == "iid":
            parts = iid_partition(train.y, self.providers, self.seed)
        else:
            parts = dirichlet_partition(train.y, self.providers, self.alpha, self.seed)
        return ds, train, test, parts


def _centralized_accuracy(spec: JobSpec, train, test, cfg: JobConfig) -> float:
    """Reference point: the same model trained on the pooled training data (what FL should approach)."""
    model = spec.make_model()
    params = centralized_train(
        model, spec.normalize(train.X), train.y,
        epochs=cfg.rounds * cfg.local_epochs, batch_size=cfg.batch_size, lr=cfg.learning_rate / 2, seed=cfg.seed,
    )
    return model.accuracy(params, spec.normalize(test.X), test.y)


def run_job(chain: Chain, workdir: str | Path, cfg: JobConfig, progress: Progress | None = None) -> dict:
    """Deploy, post a funded job, run every round, settle, let every provider claim; return the report.

    The requester keeps a held-out test split of the dataset; providers split the rest.

    Money figures in the report are read from token balances on chain, before and after.
    """
    ds, train, test, parts = cfg.split()
    tick = progress or (lambda stage, done, total: None)
    t0 = time.perf_counter()
    workdir = Path(workdir)
    store = LocalBlobStore(workdir / "blobs")
    mailbox = Mailbox(workdir / "mailbox")

    # ---- accounts and contracts ----------------------------------------------------------
    tick("deploy", 0, 1)
    seed = f"demo-{cfg.seed}"
    deployer, treasury, req_acct, agg_acct = (chain.new_account(seed, i) for i in range(4))
    providers_accts = [chain.new_account(seed, 100 + i) for i in range(cfg.providers)]
    validator_accts = [chain.new_account(seed, 200 + i) for i in range(cfg.validators)]
    dep = Deployment.deploy(chain, deployer, treasury.address, cfg.fee_bps)
    escrow = cfg.escrow_tokens * TOKEN
    stake = cfg.stake_tokens * TOKEN
    agg_stake = cfg.aggregator_stake_tokens * TOKEN
    dep.token.transact("mint", req_acct.address, escrow, sender=deployer)
    if agg_stake:
        dep.token.transact("mint", agg_acct.address, agg_stake, sender=deployer)
    for acct in providers_accts:
        if stake:
            dep.token.transact("mint", acct.address, stake, sender=deployer)
    val_stake = cfg.validator_stake_tokens * TOKEN
    for acct in validator_accts:
        dep.token.transact("mint", acct.address, val_stake, sender=deployer)
    tick("deploy", 1, 1)

    requester = Requester(dep, req_acct, store)
    aggregator = Aggregator(dep, agg_acct, store, mailbox)
    providers = [
        Provider(dep, acct, store, mailbox, train.X[idx], train.y[idx]) for acct, idx in zip(providers_accts, parts)
    ]
    if validator_accts:  # validators hold out half of the test split between them; the requester keeps the rest
        half = test.n_samples // 2
        held = np.array_split(np.arange(half, test.n_samples), len(validator_accts))
        validators = [Validator(dep, a, store, mailbox, test.X[i], test.y[i]) for a, i in zip(validator_accts, held)]
        test = subset(test, np.arange(half))
    else:
        validators = []
    spec = JobSpec(
        name=f"{cfg.dataset} softmax regression, {cfg.providers} providers",
        data=DataSchema(
            n_features=ds.n_features,
            n_classes=ds.num_classes,
            feature_low=[float(v) for v in ds.feature_low],
            feature_high=[float(v) for v in ds.feature_high],
        ),
        training=TrainingSpec(
            rounds=cfg.rounds, local_epochs=cfg.local_epochs, batch_size=cfg.batch_size, learning_rate=cfg.learning_rate
        ),
        reward=RewardSpec(escrow=escrow, provider_stake=stake, aggregator_stake=agg_stake,
                          validator_stake=val_stake if validators else 0),
        participation=ParticipationSpec(min_providers=cfg.providers, max_providers=cfg.providers,
                                        max_validators=len(validators), per_round=cfg.per_round),
        quality=QualitySpec(target_accuracy=cfg.target_accuracy, miss_payout_bps=cfg.miss_payout_bps),
        privacy=cfg.privacy_spec(),
        deadlines=DeadlineSpec(),
    )

    watched = [req_acct.address, treasury.address, agg_acct.address, *(p.address for p in providers),
               *(v.address for v in validators)]
    before = {a: dep.holdings(a) for a in watched}

    # ---- open: post, join, start ---------------------------------------------------------
    job_id = requester.post(spec, agg_acct.address)
    aggregator.accept(job_id)
    for i, p in enumerate(providers):
        p.join(job_id)
        tick("join", i + 1, len(providers))
    for v in validators:
        v.join(job_id)
    aggregator.start(job_id)

    # ---- training: every provider trains, the aggregator commits one tx per round ---------
    gas_per_round = []
    secure = spec.privacy.secure
    for r in range(cfg.rounds):
        gone = set(cfg.dropped(r))
        # a vanished provider drops at some stage: before its keys, before masking, or after masking
        stage = {i: ("keys", "mask", "unmask")[k % 3] for k, i in enumerate(sorted(gone))}
        if secure:
            for i, p in enumerate(providers):
                if stage.get(i) != "keys":
                    p.advertise(job_id, r)
            for i, p in enumerate(providers):
                if stage.get(i) != "keys":
                    p.share(job_id, r)
        for i, p in enumerate(providers):
            if i not in gone or (secure and stage[i] == "unmask"):
                p.train(job_id, r)
        if secure:
            aggregator.secure_survivors(job_id, r)
            for i, p in enumerate(providers):
                if i not in gone:
                    p.unmask(job_id, r)
        gas_per_round.append(aggregator.run_round(job_id, r).gas_used)
        if validators:  # each validator recomputes, scores and commits; quorum gates the next round
            for v in validators:
                v.review(job_id, r)
            submit_attestations(dep, mailbox, agg_acct, job_id, r)
            for v in validators:  # scores are revealed only once every counted commitment is fixed
                v.reveal(job_id, r)
        tick("rounds", r + 1, cfg.rounds)

    # ---- finalizing and settlement ------------------------------------------------------
    if validators:  # providers a validator supermajority flagged (poisoning, free-riding) are slashed
        for v in validators:
            v.report_misbehaviour(job_id)
        slashed = submit_misbehaviour(dep, mailbox, agg_acct, job_id)
        for v in validators:  # each re-derives the reward root; two thirds of their stake must sign it
            v.approve_rewards(job_id)
    else:
        slashed = []
    aggregator.post_rewards(job_id)
    chain.advance_time(spec.deadlines.challenge_period)
    requester.settle(job_id)
    claim_gas = []
    for i, p in enumerate(providers):
        claim_gas.append(p.claim(job_id).gas_used)
        tick("claims", i + 1, len(providers))
    if agg_stake:
        aggregator.release_stake(job_id)
    for v in validators:  # a validator's leaf returns its stake and moves its reputation
        v.claim(job_id)
    dep.licence.transact("mint", job_id, sender=req_acct)  # the trained model becomes the requester's NFT

    # ---- what the chain says ------------------------------------------------------------
    # holdings = wallet + stake parked in the market outside any job, so stakes net out
    after = {a: dep.holdings(a) for a in watched}
    paid = sum(after[p.address] - before[p.address] for p in providers)
    fee = after[treasury.address] - before[treasury.address]
    refunded = after[req_acct.address] - (before[req_acct.address] - escrow)
    aggregator_delta = after[agg_acct.address] - before[agg_acct.address]
    validators_delta = sum(after[v.address] - before[v.address] for v in validators)
    market_left = dep.balance(dep.market.address) - sum(dep.staked(a) for a in watched)
    accuracy = requester.evaluate(job_id, test.X, test.y)
    central = _centralized_accuracy(spec, train, test, cfg)
    job = dep.job(job_id)
    committed = committed_rounds(dep, job_id)
    rewards_doc = json.loads(store.get(dep.market.events("RewardRootPosted", job_id=job_id)[-1]["rewards_cid"]))
    settlement = [
        {
            "provider": p.address,
            "samples": p.n_samples,
            "reward": after[p.address] - before[p.address],
            "reputation": int(dep.market.call("reputation", p.address)),
            "claimed": bool(dep.market.call("is_claimed", job_id, i)),
        }
        for i, p in enumerate(sorted(providers, key=lambda p: address_key(p.address)))  # reward leaf order
    ]
    return {
        "job_id": job_id,
        "chain": chain.name,
        "contracts": dep.addresses(),
        "spec_cid": dep.market.events("JobPosted", job_id=job_id)[0]["spec_cid"],
        "config": asdict(cfg),
        "state": job["state"].name,
        "rounds": cfg.rounds,
        "providers": cfg.providers,
        "final_accuracy": accuracy[-1],
        "accuracy": accuracy,
        "centralized_accuracy": central,
        "privacy": spec.privacy.mode,
        "epsilon_spent": committed[-1].epsilon_spent / EPSILON_SCALE if committed else 0.0,
        "epsilon_budget": spec.privacy.epsilon,
        "updates_per_round": [c.count for c in committed],
        "reward_basis": rewards_doc["basis"],
        "quality": rewards_doc["quality"],
        "gas_per_round": gas_per_round,
        "claim_gas": claim_gas,
        "escrow": escrow,
        "paid": paid,
        "fee": fee,
        "refunded": refunded,
        "job_funds_left_in_market": market_left,
        "aggregator_delta": aggregator_delta,
        "validators": len(validators),
        "attested_rounds": sum(bool(dep.disputes.call("has_quorum", job_id, r)) for r in range(cfg.rounds)) if validators else 0,
        "model_token_owner": dep.licence.call("ownerOf", job_id),
        "slashed_providers": [r.event("ProviderSlashed")["provider"] for r in slashed],
        # every token of the escrow (and of any slashed stake) is accounted for on some watched account
        "conserved": escrow == paid + fee + refunded + aggregator_delta + validators_delta
        and market_left == 0
        and (aggregator_delta == 0 if not slashed else aggregator_delta > 0)
        and validators_delta == 0
        and job["state"] == JobState.SETTLED,
        "settlement": settlement,
        "seconds": round(time.perf_counter() - t0, 3),
    }
