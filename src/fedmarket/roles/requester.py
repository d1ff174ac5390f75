"""Requester role: posts and funds a job, follows its rounds, evaluates the models, settles."""

from __future__ import annotations

import numpy as np

from ..chain import Account, Receipt
from ..fl.quantize import dequantize
from ..market import Deployment, JobTerms
from ..spec import JobSpec
from ..storage import BlobStore
from .common import committed_rounds, fetch_model, load_spec


def terms_of(spec: JobSpec, aggregator: str, now: int) -> JobTerms:
    """The on-chain terms a spec implies; deadlines start from `now`."""
    r, p, d = spec.reward, spec.participation, spec.deadlines
    return JobTerms(
        spec_hash=spec.hash(),
        aggregator=aggregator,
        escrow=r.escrow,
        provider_stake=r.provider_stake,
        aggregator_stake=r.aggregator_stake,
        validator_stake=r.validator_stake,
        min_providers=p.min_providers,
        max_providers=p.max_providers,
        max_validators=p.max_validators,
        rounds=spec.training.rounds,
        join_deadline=now + d.join_window,
        round_duration=d.round_duration,
        challenge_period=d.challenge_period,
        claim_period=d.claim_period,
        rule=spec.rule,
        trim=spec.trim,
        chunk_size=spec.quantization.chunk_size,
        licence_price=r.licence_price,
        privacy_budget=spec.privacy.budget_micro,
    )


class Requester:
    """A party that pays for a model."""

    def __init__(self, dep: Deployment, account: Account, store: BlobStore):
        self.dep = dep
        self.account = account
        self.store = store

    def post(self, spec: JobSpec, aggregator: str) -> int:
        """Store the spec, lock the escrow and post the job; returns the job id."""
        cid = self.store.put(spec.canonical())
        market, token = self.dep.market, self.dep.token
        token.transact("approve", market.address, spec.reward.escrow, sender=self.account)
        terms = terms_of(spec, aggregator, self.dep.chain.timestamp())
        receipt = market.transact("post_job", terms.abi(), cid, sender=self.account)
        return int(receipt.event("JobPosted")["job_id"])

    def evaluate(self, job_id: int, X: np.ndarray, y: np.ndarray) -> list[float]:
        """Test accuracy of every committed global model on the requester's own held-out data."""
        spec = load_spec(self.dep, self.store, job_id)
        model = spec.make_model()
        Xn = spec.normalize(X)
        return [
            model.accuracy(dequantize(fetch_model(self.store, spec, r)), Xn, y)
            for r in committed_rounds(self.dep, job_id)
        ]

    def settle(self, job_id: int) -> Receipt:
        """Settle after the challenge window (anyone may; the requester has the most reason to)."""
        return self.dep.market.transact("settle", job_id, sender=self.account)

    def sweep(self, job_id: int) -> Receipt:
        """Take back rewards nobody claimed once the claim period is over."""
        return self.dep.market.transact("sweep", job_id, sender=self.account)

    def cancel(self, job_id: int) -> Receipt:
        return self.dep.market.transact("cancel", job_id, sender=self.account)
