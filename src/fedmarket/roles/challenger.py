"""Challenger: watches a job's rounds, recomputes them, and proves a wrong aggregate on chain."""

from __future__ import annotations

import numpy as np

from ..chain import Account, Receipt
from ..market import Deployment
from ..protocol.proofs import fraud_proof
from ..storage import BlobStore
from .auditor import Auditor
from .common import committed_rounds, load_spec


class Challenger:
    """Anyone with gas: earns half the aggregator's stake by proving one wrong chunk."""

    def __init__(self, dep: Deployment, account: Account, store: BlobStore):
        self.dep = dep
        self.account = account
        self.auditor = Auditor(dep, store)

    def check(self, job_id: int) -> Receipt | None:
        """Recompute every committed round in order; on the first wrong one, submit the fraud
        proof of its first wrong chunk and return the receipt. None if every round is right."""
        spec = load_spec(self.dep, self.auditor.store, job_id)
        prev_q = np.zeros(spec.n_params, dtype=np.int64)
        prev = None
        for committed in committed_rounds(self.dep, job_id):
            found, model = self.auditor.check_round(spec, job_id, committed, prev_q)
            if not found.ok:
                if found.bad_chunk is None:
                    return None  # unavailable or malformed data: a validator matter, not a chunk proof
                updates = self.auditor.round_updates(spec, job_id, committed)
                args = fraud_proof(
                    job_id=job_id, round_=committed.round, chunk_index=found.bad_chunk,
                    chunk_size=spec.quantization.chunk_size, rule=spec.rule, trim=spec.trim,
                    prev_model_q=None if prev is None else prev_q,
                    prev_data=None if prev is None else prev.data,
                    new_model_q=model, data=committed.data, updates=updates,
                    correction=self.auditor.correction(spec, committed),
                )
                return self.dep.disputes.transact("prove_fraud", *args, sender=self.account)
            prev_q, prev = model, committed
        return None
