"""The attacker's workbench (tests/security): one embedded chain with the protocol deployed and funded accounts for
the whole session (every test runs in its own snapshot), and `Sim`, a job of real roles (any of
them swapped for a cheating subclass) driven by `fedmarket.driver.JobDriver`, with what every
account holds before and after read from the chain."""

from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

from fedmarket.chain.boa_backend import BoaChain
from fedmarket.driver import Cast, JobDriver
from fedmarket.errors import ContractRevert
from fedmarket.fl.data import load_dataset, subset, train_test_split
from fedmarket.fl.partition import iid_partition
from fedmarket.market import Deployment, JobState
from fedmarket.protocol import rules as R
from fedmarket.protocol.encoding import canonical_json
from fedmarket.roles import Aggregator, Provider, Requester, Validator
from fedmarket.roles.challenger import Challenger
from fedmarket.roles.common import claim_reward, load_spec
from fedmarket.roles.games import Truth, job_games
from fedmarket.roles.settlement import mailbox_reveals, reward_document, statement_of
from fedmarket.spec import (
    DataSchema,
    DeadlineSpec,
    JobSpec,
    ParticipationSpec,
    PrivacySpec,
    QualitySpec,
    RewardSpec,
    TrainingSpec,
)
from fedmarket.storage import LocalBlobStore, Mailbox

TOKEN = 10**18
ESCROW, PROV_STAKE, AGG_STAKE, VAL_STAKE, BOND = 100 * TOKEN, 10 * TOKEN, 50 * TOKEN, 10 * TOKEN, TOKEN
FUNDS = 10_000 * TOKEN
ZERO32 = b"\x00" * 32
EMPTY_ROUND = (ZERO32, ZERO32, 0, ZERO32, 0, ZERO32, ZERO32)
N_PROVIDERS, N_VALIDATORS = 8, 5


@dataclass(repr=False)
class Chain:
    """The session's chain, deployment and accounts."""

    chain: BoaChain
    dep: Deployment
    deployer: object
    treasury: object
    requester: object
    aggregator: object
    watcher: object  # an outsider running the challenger role
    stranger: object  # an outsider with tokens and nothing else
    providers: list
    validators: list

    @property
    def everyone(self) -> list:
        return [self.requester, self.aggregator, self.watcher, self.stranger, *self.providers, *self.validators]

    def mint(self, account, amount: int) -> None:
        self.dep.token.transact("mint", account.address, amount, sender=self.deployer)


def new_chain() -> Chain:
    chain = BoaChain()
    acct = functools.partial(chain.new_account, "security")
    deployer, treasury, requester, aggregator, watcher, stranger = (acct(i) for i in range(6))
    providers = [acct(100 + i) for i in range(N_PROVIDERS)]
    validators = [acct(200 + i) for i in range(N_VALIDATORS)]
    dep = Deployment.deploy(chain, deployer, treasury.address, fee_bps=100, unbonding_delay=1_000)
    c = Chain(chain, dep, deployer, treasury, requester, aggregator, watcher, stranger, providers, validators)
    for a in c.everyone:
        c.mint(a, FUNDS)
    return c


@functools.lru_cache(maxsize=1)
def digits():
    ds = load_dataset("digits")
    train, test = train_test_split(ds, 0.25, 0)
    return ds, train, test


def flower_jobs(monkeypatch) -> None:
    """Have `make` post Flower jobs: specs naming a Flower app bundle (the harness runs their rounds
    in process, through the roles a Flower job uses)."""
    from fedmarket.spec import TransportSpec

    plain = make_spec
    monkeypatch.setattr(sys.modules[__name__], "make_spec", lambda **kw: plain(**kw).model_copy(
        update={"transport": TransportSpec(flower_app_hash="0" * 64)}))


def make_spec(*, providers=3, rounds=2, validators=0, strategy="fedavg", trim=0, privacy="plain", per_round=0,
              escrow=ESCROW, provider_stake=PROV_STAKE, aggregator_stake=AGG_STAKE, validator_stake=VAL_STAKE,
              bond=BOND, target_accuracy=None, miss_payout_bps=5_000, deadlines=None, min_validators=None,
              aggregator_fee=0, validator_fee=0, licence_requester_bps=0, learning_rate=1.0, name="security",
              max_dishonest=None) -> JobSpec:
    ds, _, _ = digits()
    dp = privacy in ("dp_local", "secagg_dp")
    return JobSpec(
        name=name,
        data=DataSchema(n_features=ds.n_features, n_classes=ds.num_classes,
                        feature_low=[float(v) for v in ds.feature_low], feature_high=[float(v) for v in ds.feature_high]),
        training=TrainingSpec(rounds=rounds, local_epochs=1, batch_size=16, learning_rate=learning_rate),
        strategy=strategy,
        trim=trim,
        privacy=PrivacySpec(mode=privacy, **({"epsilon": 8.0, "delta": 1e-5, "clip_norm": 1.0} if dp else {}),
                            **({"max_dishonest": max_dishonest} if max_dishonest is not None else {})),
        reward=RewardSpec(escrow=escrow, provider_stake=provider_stake, aggregator_stake=aggregator_stake,
                          validator_stake=validator_stake if validators else 0, dispute_bond=bond,
                          aggregator_fee=aggregator_fee, validator_fee=validator_fee,
                          licence_requester_bps=licence_requester_bps),
        participation=ParticipationSpec(min_providers=providers, max_providers=providers, max_validators=validators,
                                        min_validators=min_validators, per_round=per_round),
        quality=QualitySpec(target_accuracy=target_accuracy, miss_payout_bps=miss_payout_bps),
        deadlines=deadlines or DeadlineSpec(),
    )


@dataclass(repr=False)
class Sim:
    """One job of real roles on the session chain: its spec, cast and driver, and every account's
    holdings (wallet + free and unbonding stake) when it was built."""

    c: Chain
    spec: JobSpec
    store: LocalBlobStore
    box: Mailbox
    cast: Cast
    driver: JobDriver
    before: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"<Sim job {self.driver.job_id}>"

    # ---- handles -------------------------------------------------------------------------------
    @property
    def dep(self) -> Deployment:
        return self.c.dep

    @property
    def chain(self) -> BoaChain:
        return self.c.chain

    @property
    def job(self) -> int:
        return self.driver.job_id

    @property
    def agg(self):
        return self.cast.aggregator

    @property
    def providers(self) -> list:
        return self.cast.providers

    @property
    def validators(self) -> list:
        return self.cast.validators

    @property
    def watched(self) -> list[str]:
        return [a.address for a in self.c.everyone] + [self.c.treasury.address]

    def state(self) -> JobState:
        return self.dep.job(self.job)["state"]

    def holdings(self) -> dict[str, int]:
        return {a: self.dep.holdings(a) for a in self.watched}

    def delta(self, before: dict | None = None) -> dict[str, int]:
        before = before or self.before
        now = self.holdings()
        return {a: now[a] - before[a] for a in before}

    def total(self) -> int:
        """Every token of the watched accounts and the protocol's contracts (conserved by everything)."""
        dep = self.dep
        held = [*self.watched, dep.market.address, dep.round_arbiter.address, dep.reward_arbiter.address,
                dep.disputes.address, dep.licence.address]
        return sum(dep.balance(a) for a in held)

    def truth(self) -> Truth:
        return Truth(self.dep, self.store, self.job)

    def games(self):
        return job_games(self.dep, self.job)

    # ---- moves ---------------------------------------------------------------------------------
    def run(self, plans=None) -> int:
        return self.driver.run(plans)

    def open(self) -> int:
        return self.driver.open()

    def rounds(self, n: int | None = None) -> None:
        """Rounds 0..n-1 as `JobDriver.run` plays them (quorum checked before each); the validators
        reveal their scores if the votes closed (every validator voted on every round)."""
        for r in range(self.spec.training.rounds if n is None else n):
            if self.state() != JobState.TRAINING or not self.driver.quorum_or_fail():
                return
            self.driver.round(r)
        self.driver.reveal()

    def past(self, deadline: int) -> None:
        """Move chain time just past `deadline` (the next transaction runs after it)."""
        now = self.chain.timestamp()
        if now <= deadline:
            self.chain.advance_time(deadline - now + 1)

    def past_round_deadline(self) -> None:
        self.past(int(self.dep.job(self.job)["round_deadline"]))

    def approve(self, account, spender: str) -> None:
        self.dep.token.transact("approve", spender, 2**256 - 1, sender=account)

    def honest_document(self, basis=None) -> dict:
        """The rewards document an honest poster derives now (every role uses this code)."""
        return reward_document(self.dep, self.store, self.job, self.spec, mailbox_reveals(self.dep, self.box, self.job),
                               basis)

    def run_until_rejected(self) -> None:
        """Open, train every round, post the root and let the watcher prove it wrong, stopping
        before anyone posts a replacement (the driver's finish would have a provider post it)."""
        self.open()
        self.rounds()
        self.driver._judge_and_post()
        self.driver.challenge()

    def post_replacement(self, account, basis=None):
        """Anyone posts the right reward root after the aggregator was slashed for a wrong one,
        locking a bond of the aggregator's stake (at least the dispute bond)."""
        doc = self.honest_document(basis)
        cid = self.store.put(canonical_json(doc))
        root, total, value_total, gate_met = statement_of(doc)
        self.approve(account, self.dep.market.address)
        return self.dep.market.transact("post_rewards", self.job, root, total, value_total, doc["basis"], gate_met, cid,
                                        doc["slashes"], sender=account)

    def settle_and_claim(self) -> None:
        """Wait out the challenge window, settle and claim every leaf (the driver's finish, from FINALIZING)."""
        self.past(int(self.dep.job(self.job)["challenge_deadline"]) - 1)
        self.dep.market.transact("settle", self.job, sender=self.c.stranger)
        for member in (*self.providers, *self.validators, self.agg):
            claim_reward(self.dep, self.store, member.account, self.job)

    def release_all(self) -> None:
        self.driver.release_all()

    def slashed(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for ev in self.dep.market.events("StakeSlashed", job_id=self.job):
            out[ev["account"]] = out.get(ev["account"], 0) + int(ev["amount"])
        return out

    def assert_no_honest_loss(self, honest: list[str], delta: dict | None = None) -> None:
        """Every honest account ends the job with at least what it had before it."""
        delta = delta or self.delta()
        lost = {a: d for a, d in delta.items() if a in honest and d < 0}
        assert not lost, f"honest parties lost tokens: {lost}"


def build(c: Chain, workdir: Path, *, aggregator_cls=Aggregator, provider_cls=None, validator_cls=None,
          challenger_cls=Challenger, challenger=True, validator_data=None, **spec_kw) -> Sim:
    """A job of real roles: `provider_cls` / `validator_cls` a class or a list of one class per member."""
    spec = make_spec(**spec_kw)
    n, m = spec.participation.max_providers, spec.participation.max_validators
    _, train, test = digits()
    store, box = LocalBlobStore(workdir / "blobs"), Mailbox(workdir / "box")
    dep = c.dep
    parts = iid_partition(train.y, n, 0)
    pcls = provider_cls if isinstance(provider_cls, (list, tuple)) else [provider_cls or Provider] * n
    providers = [cls(dep, a, store, box, subset(train, idx).X, subset(train, idx).y)
                 for cls, a, idx in zip(pcls, c.providers, parts)]
    vcls = validator_cls if isinstance(validator_cls, (list, tuple)) else [validator_cls or Validator] * m
    held = np.array_split(np.arange(test.n_samples), max(m, 1))  # disjoint shares of the held-out split
    validators = []
    for i, (cls, a) in enumerate(zip(vcls, c.validators[:m])):
        X, y = (validator_data[i] if validator_data and validator_data[i] is not None
                else (test.X[held[i]], test.y[held[i]]))
        validators.append(cls(dep, a, store, box, X, y))
    ch = challenger_cls(dep, c.watcher, store) if challenger else None
    cast = Cast(Requester(dep, c.requester, store), (aggregator_cls or Aggregator)(dep, c.aggregator, store, box), providers,
                validators, ch)
    driver = JobDriver(dep, store, box, cast, spec)
    sim = Sim(c, spec, store, box, cast, driver)
    sim.before = sim.holdings()
    return sim


def revert(fn, *args, match: str | None = None, **kw) -> str:
    """Call `fn` and return the revert reason it must raise (optionally containing `match`)."""
    with pytest.raises(ContractRevert) as info:
        fn(*args, **kw)
    reason = str(info.value)
    if match is not None:
        assert match in reason, f"expected a revert with {match!r}, got {reason!r}"
    return reason


__all__ = [
    "AGG_STAKE",
    "BOND",
    "EMPTY_ROUND",
    "ESCROW",
    "PROV_STAKE",
    "TOKEN",
    "VAL_STAKE",
    "ZERO32",
    "Aggregator",
    "Provider",
    "R",
    "Sim",
    "Validator",
    "build",
    "load_spec",
    "make_spec",
    "revert",
]
