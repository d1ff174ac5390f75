"""The deployed protocol: token, job market, disputes and licence contracts, and job terms."""

from __future__ import annotations

import enum
import json
from dataclasses import astuple, dataclass
from pathlib import Path

from .chain import Account, Chain, Contract, artifacts
from .errors import ChainError

DEFAULT_FEE_BPS = 100  # 1% protocol fee
DEFAULT_UNBONDING_DELAY = 7 * 86_400


class JobState(enum.IntFlag):
    """Mirror of the contract's `JobState` flag."""

    NONE = 0
    OPEN = 1
    TRAINING = 2
    FINALIZING = 4
    SETTLED = 8
    CANCELLED = 16
    FAILED = 32


class Role(enum.IntEnum):
    PROVIDER = 1
    AGGREGATOR = 2
    VALIDATOR = 3


class Rule(enum.IntEnum):
    """Aggregation rules the disputes contract can recompute."""

    WEIGHTED_MEAN = 0
    MEDIAN = 1
    TRIMMED_MEAN = 2
    SECURE_SUM = 3


@dataclass(frozen=True)
class JobTerms:
    """The on-chain terms of a job (JobMarket.JobTerms, field for field)."""

    spec_hash: bytes
    aggregator: str
    escrow: int
    provider_stake: int
    aggregator_stake: int
    validator_stake: int
    min_providers: int
    max_providers: int
    max_validators: int
    rounds: int
    join_deadline: int
    round_duration: int
    challenge_period: int
    claim_period: int
    rule: int
    trim: int
    chunk_size: int
    licence_price: int
    privacy_budget: int = 0  # epsilon budget in millionths; 0 = no differential privacy

    def abi(self) -> tuple:
        return astuple(self)


@dataclass
class Deployment:
    """Handles to the protocol's contracts on one chain."""

    chain: Chain
    token: Contract
    market: Contract
    disputes: Contract
    licence: Contract

    @classmethod
    def deploy(
        cls,
        chain: Chain,
        deployer: Account,
        treasury: str,
        fee_bps: int = DEFAULT_FEE_BPS,
        unbonding_delay: int = DEFAULT_UNBONDING_DELAY,
        token: Contract | None = None,
    ) -> "Deployment":
        """Deploy everything. Market and disputes point at each other through immutables,
        so the market's address is computed from the deployer's nonce before either exists."""
        if token is None:
            tok = artifacts.load("FedToken")
            token = chain.deploy(deployer, "FedToken", tok.abi, tok.bytecode, "fedmarket token", "FED", "fedmarket", "1")
        dis, mkt, lic = artifacts.load("Disputes"), artifacts.load("JobMarket"), artifacts.load("ModelLicence")
        nonce = chain.next_nonce(deployer.address)
        market_address = chain.create_address(deployer.address, nonce + 1)
        disputes = chain.deploy(deployer, "Disputes", dis.abi, dis.bytecode, market_address)
        market = chain.deploy(
            deployer, "JobMarket", mkt.abi, mkt.bytecode, token.address, disputes.address, treasury, fee_bps, unbonding_delay
        )
        if market.address != market_address:
            raise ChainError("the deployer sent another transaction between deployments; deploy again from a fresh account")
        licence = chain.deploy(deployer, "ModelLicence", lic.abi, lic.bytecode, market.address)
        return cls(chain, token, market, disputes, licence)

    @classmethod
    def attach(cls, chain: Chain, addresses: dict) -> "Deployment":
        handles = {
            key: chain.register(addresses[key], name, artifacts.load(name).abi)
            for key, name in (("token", "FedToken"), ("market", "JobMarket"), ("disputes", "Disputes"), ("licence", "ModelLicence"))
        }
        return cls(chain, **handles)

    def addresses(self) -> dict:
        return {
            "token": self.token.address,
            "market": self.market.address,
            "disputes": self.disputes.address,
            "licence": self.licence.address,
        }

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
        job = self.market.call("jobs", job_id)
        job["state"] = JobState(job["state"])
        return job

    @property
    def chain_id(self) -> int:
        return int(getattr(self.chain, "chain_id"))
