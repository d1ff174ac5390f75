"""The deployed protocol: token, job market, disputes, licence and model market contracts, and job terms."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import astuple, dataclass, field
from pathlib import Path
from typing import Any

from .chain import Account, Chain, Contract, artifacts
from .errors import ChainError
from .protocol.rules import JobState, Role

__all__ = ["DEFAULT_FEE_BPS", "DEFAULT_UNBONDING_DELAY", "Deployment", "JobState", "JobTerms", "Role"]

DEFAULT_FEE_BPS = 100  # 1% protocol fee
DEFAULT_UNBONDING_DELAY = 7 * 86_400
DEFAULT_CHALLENGE_BOND = 10**17  # 0.1 token per challenged usage leaf (UsageRollup.CHALLENGE_BOND)
# shortest round, response and challenge period on a public chain: 25 blocks of 12 s, room for a
# transaction to land through congestion (development chains allow 1 s)
MIN_PERIOD = 300


@dataclass(frozen=True)
class JobTerms:
    """The on-chain terms of a job (`modules/terms.vy` JobTerms, field for field)."""

    spec_hash: bytes
    aggregator: str
    escrow: int
    provider_stake: int
    aggregator_stake: int
    validator_stake: int
    min_providers: int
    max_providers: int
    min_validators: int
    max_validators: int
    rounds: int
    per_round: int
    join_deadline: int
    round_duration: int
    challenge_period: int
    claim_period: int
    response_period: int
    dispute_bond: int
    rule: int
    trim: int
    chunk_size: int
    n_params: int
    licence_price: int
    privacy_budget: int = 0  # epsilon budget in millionths; 0 = no differential privacy
    miss_payout_bps: int = 10_000  # share of the pool paid when the quality target is missed
    noise_multiplier: int = 0  # of a private job's Gaussian noise, in millionths
    delta_log: int = 0  # ln(1/delta) of a private job, in millionths
    aggregator_fee: int = 0  # paid to the aggregator per committed round
    validator_fee: int = 0  # paid to a validator per attestation of a round's committed model
    licence_requester_bps: int = 0  # the model owner's share of licence and query revenue

    def abi(self) -> tuple:
        return astuple(self)

    @classmethod
    def from_chain(cls, values) -> JobTerms:
        if isinstance(values, dict):
            return cls(**{f: values[f] for f in cls.__dataclass_fields__})
        return cls(*values)


CONTRACTS = (
    ("terms_check", "TermsCheck"),
    ("rules", "Rules"),
    ("disputes", "Disputes"),
    ("round_arbiter", "RoundArbiter"),
    ("reward_arbiter", "RewardArbiter"),
    ("market", "JobMarket"),
    ("licence", "ModelLicence"),
    ("model_market", "ModelMarket"),
    ("usage_rollup", "UsageRollup"),
)
# contracts a deployment saved before they existed may lack (attached as None)
OPTIONAL = ("model_market", "usage_rollup")


@dataclass
class Deployment:
    """Handles to the protocol's contracts on one chain."""

    chain: Chain
    token: Contract
    market: Contract
    disputes: Contract
    licence: Contract
    round_arbiter: Contract
    reward_arbiter: Contract
    terms_check: Contract
    rules: Contract
    model_market: Contract | None = None
    usage_rollup: Contract | None = None
    memo: dict = field(default_factory=dict, repr=False, compare=False)

    def remember(self, key: tuple, compute: Callable[[], Any]) -> Any:
        """`compute()`, once per `key`, for facts the chain can no longer change: a started job's
        providers, the tree of a content-addressed document. Every role in this process shares it."""
        if self.memo.get("rollbacks") != self.chain.rollbacks:  # the chain went back: forget everything
            self.memo = {"rollbacks": self.chain.rollbacks}
        if key not in self.memo:
            self.memo[key] = compute()
        return self.memo[key]

    @classmethod
    def deploy(
        cls,
        chain: Chain,
        deployer: Account,
        treasury: str,
        fee_bps: int = DEFAULT_FEE_BPS,
        unbonding_delay: int = DEFAULT_UNBONDING_DELAY,
        token: Contract | None = None,
        min_period: int | None = None,
        challenge_bond: int = DEFAULT_CHALLENGE_BOND,
    ) -> Deployment:
        """Deploy everything. The market and its judges point at each other through immutables,
        so the market's address is computed from the deployer's nonce before any of them exists.
        `min_period` is the shortest period a job may set (`TermsCheck.MIN_PERIOD`): by default
        1 s on a development chain (the embedded EVM, chain id 31337) and `MIN_PERIOD` elsewhere.
        `challenge_bond` is what a challenger of a usage root puts up per leaf (`UsageRollup`)."""
        if min_period is None:
            min_period = 1 if chain.development else MIN_PERIOD
        if token is None:
            tok = artifacts.load("FedToken")
            token = chain.deploy(deployer, "FedToken", tok.abi, tok.bytecode, "fedmarket token", "FED", "fedmarket", "1")
        art = {key: artifacts.load(name) for key, name in CONTRACTS}
        nonce = chain.next_nonce(deployer.address)
        market_address = chain.create_address(deployer.address, nonce + 5)
        h: dict[str, Contract] = {}

        def put(key: str, *args) -> None:
            name = dict(CONTRACTS)[key]
            h[key] = chain.deploy(deployer, name, art[key].abi, art[key].bytecode, *args)

        put("terms_check", min_period)
        put("rules")
        put("disputes", market_address)
        put("round_arbiter", market_address, h["disputes"].address, token.address, h["rules"].address)
        put("reward_arbiter", market_address, h["disputes"].address, token.address)
        put("market", token.address, h["disputes"].address, h["round_arbiter"].address, h["reward_arbiter"].address,
            h["terms_check"].address, treasury, fee_bps, unbonding_delay)
        if h["market"].address != market_address:
            raise ChainError("the deployer sent another transaction between deployments; deploy again from a fresh account")
        put("licence", market_address)
        rollup_address = chain.create_address(deployer.address, nonce + 8)  # the model market's usage rollup, next
        put("model_market", market_address, h["licence"].address, treasury, fee_bps, rollup_address)
        put("usage_rollup", h["model_market"].address, challenge_bond)
        if h["usage_rollup"].address != rollup_address:
            raise ChainError("the deployer sent another transaction between deployments; deploy again from a fresh account")
        return cls(chain, token, **h)

    @classmethod
    def attach(cls, chain: Chain, addresses: dict) -> Deployment:
        """Handles to a deployment from its saved addresses; events are read from its `block` on."""
        block = int(addresses.get("block", 0))
        handles = {
            key: chain.register(addresses[key], name, artifacts.load(name).abi, block)
            for key, name in (("token", "FedToken"), *CONTRACTS)
            if key in addresses or key not in OPTIONAL
        }
        return cls(chain, **handles)

    def addresses(self) -> dict:
        return {"token": self.token.address,
                **{key: getattr(self, key).address for key, _ in CONTRACTS if getattr(self, key) is not None}}

    def save(self, path: str | Path, **meta) -> None:
        """Write the addresses as JSON, plus any `meta` fields (e.g. chain_id, block)."""
        Path(path).write_text(json.dumps({**self.addresses(), **meta}, indent=2))

    # ---- small conveniences used by every role -----------------------------------------
    def balance(self, address: str) -> int:
        return int(self.token.call("balanceOf", address))

    def staked(self, address: str) -> int:
        """Stake `address` holds in the market outside any job (free + unbonding, every role)."""
        total = 0
        for role in Role:
            total += int(self.market.call("free_stake", address, role))
            total += int(self.market.call("unbonding", address, role)["amount"])
        return total

    def holdings(self, address: str) -> int:
        """Tokens `address` can get back without any job's consent: wallet + free/unbonding stake."""
        return self.balance(address) + self.staked(address)

    def job(self, job_id: int) -> dict:
        """A job's terms, progress and live status in one dict (`state` as a JobState)."""
        state, current, deadline, quorum, aggregator = self.market.call("job_status", job_id)
        if state == JobState.NONE:
            terms = self.market.call("terms", job_id)
        else:  # a posted job's terms never change
            terms = self.remember(("terms", job_id), lambda: self.market.call("terms", job_id))
        return {
            **terms,
            **self.market.call("progress", job_id),
            "state": JobState(state),
            "current_round": current,
            "round_deadline": deadline,
            "quorum": quorum,
            "aggregator": aggregator,
        }

    def terms(self, job_id: int) -> JobTerms:
        return JobTerms.from_chain(self.market.call("terms", job_id))

    @property
    def chain_id(self) -> int:
        return int(self.chain.chain_id)
