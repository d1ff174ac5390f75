"""Requester role: posts and funds a job, follows its rounds, evaluates the models, settles."""

from __future__ import annotations

import numpy as np

from ..chain import Account, Receipt
from ..errors import ConfigError
from ..jobmodel import job_model
from ..market import Deployment
from ..spec import MAX_SPEC_BYTES, JobSpec
from ..storage import BlobStore
from .common import InsufficientFunds, check_funds, committed_rounds, fetch_model, load_spec, terms_of

#: gas `post` may spend: approve (46k measured) and post_job (608k measured), doubled
POST_GAS = 2 * (46_000 + 608_000)


class Requester:
    """A party that pays for a model."""

    def __init__(self, dep: Deployment, account: Account, store: BlobStore):
        self.dep = dep
        self.account = account
        self.store = store

    def post(self, spec: JobSpec, aggregator: str) -> int:
        """Store the spec, lock the escrow and post the job; returns the job id."""
        market, token = self.dep.market, self.dep.token
        now = self.dep.chain.timestamp()
        terms = terms_of(spec, aggregator, now)
        problem = self.dep.terms_check.call("problem", terms.abi(), self.account.address, now + 1)
        if problem:
            raise ConfigError(f"the job's terms would be refused: {problem.removeprefix('market: ')}")
        check_funds(self.dep, self.account.address, spec.reward.escrow, "the job's escrow")
        job_model(spec, self.store)  # the model builds (a torch job's packed module is in the store and fits)
        raw = spec.canonical()
        if len(raw) > MAX_SPEC_BYTES:
            raise ConfigError(f"the job spec is {len(raw):,} bytes, over the {MAX_SPEC_BYTES:,} bytes every role reads")
        self._check_gas()
        cid = self.store.put(raw)
        token.transact("approve", market.address, spec.reward.escrow, sender=self.account)
        receipt = market.transact("post_job", terms.abi(), cid, sender=self.account)
        return int(receipt.event("JobPosted")["job_id"])

    def _check_gas(self) -> None:
        """InsufficientFunds unless the account's ether pays both of `post`'s transactions at the
        current fee cap: an approve whose post_job then fails for gas would leave the allowance behind."""
        price = self.dep.chain.fee_cap()  # 0 on the embedded EVM, where gas costs nothing
        need = POST_GAS * price
        have = self.dep.chain.native_balance(self.account.address)
        if have < need:
            raise InsufficientFunds(f"{self.account.address} holds {have} wei of ether but approving and posting "
                                    f"the job may cost up to {need} wei of gas ({POST_GAS} gas at {price} wei)")

    def evaluate(self, job_id: int, X: np.ndarray, y: np.ndarray) -> list[float]:
        """Test accuracy of every committed global model on the requester's own held-out data."""
        spec = load_spec(self.dep, self.store, job_id)
        jm = job_model(spec, self.store)
        return [jm.accuracy(fetch_model(self.store, spec, r), X, y) for r in committed_rounds(self.dep, job_id)]

    def settle(self, job_id: int) -> Receipt:
        """Settle after the challenge window (anyone may; the requester has the most reason to)."""
        return self.dep.market.transact("settle", job_id, sender=self.account)

    def sweep(self, job_id: int) -> Receipt:
        """Take back rewards nobody claimed once the claim period is over."""
        return self.dep.market.transact("sweep", job_id, sender=self.account)

    def cancel(self, job_id: int) -> Receipt:
        return self.dep.market.transact("cancel", job_id, sender=self.account)
