"""Validator role: re-checks each round, scores every contribution on its own held-out data, attests."""

from __future__ import annotations

import json

import numpy as np

from ..chain import Account, Receipt
from ..errors import FedMarketError
from ..fl.quantize import dequantize
from ..market import Deployment
from ..protocol.encoding import address_key, canonical_json, score_leaf
from ..protocol.merkle import MerkleTree
from ..protocol.receipts import Attestation
from ..scoring import score_round
from ..storage import BlobStore, Mailbox
from .auditor import Auditor
from .common import committed_rounds, fetch_model, load_spec, round_topic

SCORE_SCALE = 1_000_000  # scores are committed as integers: millionths of a utility point


def scores_tree(scores: list[tuple[str, int]]) -> MerkleTree:
    return MerkleTree([score_leaf(i, p, s) for i, (p, s) in enumerate(scores)])


class Validator:
    """A staked checker: attests a round only after recomputing it, and commits its scores."""

    def __init__(self, dep: Deployment, account: Account, store: BlobStore, mailbox: Mailbox, X: np.ndarray, y: np.ndarray):
        self.dep = dep
        self.account = account
        self.store = store
        self.mailbox = mailbox
        self.X = np.asarray(X)
        self.y = np.asarray(y)
        self.auditor = Auditor(dep, store)

    @property
    def address(self) -> str:
        return self.account.address

    def join(self, job_id: int, stake: int | None = None) -> Receipt:
        """Join with (at least) the job's validator stake."""
        amount = int(self.dep.job(job_id)["validator_stake"]) if stake is None else stake
        self.dep.token.transact("approve", self.dep.market.address, amount, sender=self.account)
        return self.dep.market.transact("join_validator", job_id, amount, sender=self.account)

    def review(self, job_id: int, round_: int) -> dict | None:
        """Recompute the round; if right, score each update and post a signed attestation.
        Returns the posted message, or None when the round is wrong (no attestation)."""
        spec = load_spec(self.dep, self.store, job_id)
        rounds = committed_rounds(self.dep, job_id)
        if round_ >= len(rounds):
            raise FedMarketError(f"job {job_id} has not committed round {round_}")
        committed = rounds[round_]
        prev_q = fetch_model(self.store, spec, rounds[round_ - 1]) if round_ else np.zeros(spec.n_params, dtype=np.int64)
        check, _ = self.auditor.check_round(spec, job_id, committed, prev_q)
        if not check.ok:
            return None
        updates = self.auditor.round_updates(spec, job_id, committed)
        model = spec.make_model()
        Xn = spec.normalize(self.X)
        scored = None
        if len(updates) >= 2 and not spec.privacy.secure:  # masked updates cannot be scored one by one
            deltas = dequantize(np.stack([u.q for u in updates]))
            scored = score_round(model, dequantize(prev_q), deltas, Xn, self.y, [u.weight for u in updates], seed=round_)
            values = scored.rewardable
        else:
            values = np.zeros(len(updates))
        scores = [(u.provider, int(round(float(v) * SCORE_SCALE))) for u, v in zip(updates, values)]
        root = scores_tree(scores).root
        doc = {
            "job_id": job_id, "round": round_, "validator": self.address,
            "method": scored.method if scored else ("masked: aggregate only" if spec.privacy.secure else "none"),
            "scores": [{"provider": p, "score": s} for p, s in scores],
            "flagged": [updates[i].provider for i in np.flatnonzero(scored.report.flagged)] if scored else [],
        }
        scores_cid = self.store.put(canonical_json(doc))
        sig = Attestation(job_id, round_, committed.model_root, root).sign(self.account.key, self.dep.chain_id, self.dep.disputes.address)
        message = {"validator": self.address, "round": round_, "scores_root": "0x" + root.hex(),
                   "scores_cid": scores_cid, "signature": "0x" + sig.hex()}
        self.mailbox.post(round_topic(job_id, round_) + "-attestations", canonical_json(message))
        return message


def submit_attestations(dep: Deployment, mailbox: Mailbox, sender: Account, job_id: int, round_: int) -> list[Receipt]:
    """Put a round's posted attestations on chain (anyone may; the aggregator has the most reason to).
    Attestations sharing a scores root go in one transaction."""
    rounds = committed_rounds(dep, job_id)
    data = rounds[round_].data
    by_root: dict[str, list[dict]] = {}
    for raw in mailbox.read(round_topic(job_id, round_) + "-attestations"):
        msg = json.loads(raw)
        if dep.disputes.call("attestation_of", job_id, round_, msg["validator"]) == b"\x00" * 32:
            by_root.setdefault(msg["scores_root"], []).append(msg)
    receipts = []
    for root, msgs in by_root.items():
        msgs.sort(key=lambda m: address_key(m["validator"]))
        receipts.append(dep.disputes.transact(
            "attest", job_id, round_, data, bytes.fromhex(root[2:]), [m["validator"] for m in msgs],
            [bytes.fromhex(m["signature"][2:]) for m in msgs], sender=sender,
        ))
    return receipts
