"""The deployed protocol: token + job market, their addresses, and the job state enum."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from pathlib import Path

from .chain import Account, Chain, Contract
from .chain import artifacts

DEFAULT_FEE_BPS = 100  # 1% protocol fee


class JobState(enum.IntFlag):
    """Mirror of the contract's `JobState` flag."""

    NONE = 0
    OPEN = 1
    TRAINING = 2
    FINALIZING = 4
    SETTLED = 8
    CANCELLED = 16
    FAILED = 32


@dataclass
class Deployment:
    """Handles to the protocol's contracts on one chain."""

    chain: Chain
    token: Contract
    market: Contract

    @classmethod
    def deploy(cls, chain: Chain, deployer: Account, treasury: str, fee_bps: int = DEFAULT_FEE_BPS) -> "Deployment":
        tok = artifacts.load("FedToken")
        mkt = artifacts.load("JobMarket")
        token = chain.deploy(deployer, "FedToken", tok.abi, tok.bytecode, "fedmarket token", "FED", "fedmarket", "1")
        market = chain.deploy(deployer, "JobMarket", mkt.abi, mkt.bytecode, token.address, treasury, fee_bps)
        return cls(chain, token, market)

    @classmethod
    def attach(cls, chain: Chain, addresses: dict) -> "Deployment":
        token = chain.register(addresses["token"], "FedToken", artifacts.load("FedToken").abi)
        market = chain.register(addresses["market"], "JobMarket", artifacts.load("JobMarket").abi)
        return cls(chain, token, market)

    def addresses(self) -> dict:
        return {"token": self.token.address, "market": self.market.address}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.addresses(), indent=2))

    # ---- small conveniences used by every role -----------------------------------------
    def balance(self, address: str) -> int:
        return int(self.token.call("balanceOf", address))

    def job(self, job_id: int) -> dict:
        job = self.market.call("jobs", job_id)
        job["state"] = JobState(job["state"])
        return job

    @property
    def chain_id(self) -> int:
        return int(getattr(self.chain, "chain_id"))
