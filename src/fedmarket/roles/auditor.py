"""Auditor: re-derives every round and every payout of a job from chain data and the blob store alone."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import FedMarketError
from ..market import Deployment
from ..protocol.encoding import decode_vector, vector_root
from ..protocol.proofs import RoundUpdate, reward_tree, updates_tree
from ..protocol.receipts import UpdateReceipt
from ..spec import JobSpec
from ..storage import BlobStore
from .common import CommittedRound, committed_rounds, fetch_metrics, fetch_model, load_spec


@dataclass
class RoundCheck:
    """What re-deriving one round found."""

    round: int
    ok: bool
    problem: str = ""
    bad_chunk: int | None = None
    count: int = 0


@dataclass
class AuditReport:
    job_id: int
    state: str
    rounds: list[RoundCheck] = field(default_factory=list)
    rewards_ok: bool | None = None
    rewards_problem: str = ""
    claims_ok: bool | None = None
    claims_problem: str = ""

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rounds) and self.rewards_ok is not False and self.claims_ok is not False

    def as_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


class Auditor:
    """Anyone: needs no key, trusts nothing but the chain and content hashes."""

    def __init__(self, dep: Deployment, store: BlobStore):
        self.dep = dep
        self.store = store
        # a committed round's content is immutable (roots on chain, blobs by content id): verify it once
        self._verified: dict[tuple[int, int, bytes], tuple[list[RoundUpdate], np.ndarray | None]] = {}

    def round_updates(self, spec: JobSpec, job_id: int, committed: CommittedRound) -> list[RoundUpdate]:
        """The round's updates, each checked: signed by its provider, blob matching its root,
        and together (with a secure round's mask correction) forming exactly the committed updates tree."""
        return self.verified_round(spec, job_id, committed)[0]

    def verified_round(self, spec: JobSpec, job_id: int, committed: CommittedRound) -> tuple[list[RoundUpdate], np.ndarray | None]:
        """(the round's checked updates, a secure round's checked mask correction or None), verified
        once per round and then remembered."""
        key = (job_id, committed.round, committed.updates_root)
        if key not in self._verified:
            self._verified[key] = self._verify_round(spec, job_id, committed)
        return self._verified[key]

    def _verify_round(self, spec: JobSpec, job_id: int, committed: CommittedRound) -> tuple[list[RoundUpdate], np.ndarray | None]:
        doc = fetch_metrics(self.store, committed)
        updates = []
        for entry in doc["updates"]:
            q = decode_vector(self.store.get(entry["update_cid"]), spec.n_params)
            root = bytes.fromhex(entry["update_root"][2:])
            if vector_root(q, spec.quantization.chunk_size) != root:
                raise FedMarketError(f"update of {entry['provider']} does not match its root")
            signer = UpdateReceipt(job_id, committed.round, root, int(entry["weight"])).signer(
                bytes.fromhex(entry["signature"][2:]), self.dep.chain_id, self.dep.disputes.address
            )
            if signer != entry["provider"]:
                raise FedMarketError(f"receipt of {entry['provider']} is not signed by it")
            updates.append(RoundUpdate(entry["provider"], q, int(entry["weight"]), spec.quantization.chunk_size))
        if len(updates) != committed.count:
            raise FedMarketError(f"metrics list {len(updates)} updates, the round committed {committed.count}")
        corr = self.correction(spec, committed, doc)
        corr_root = None if corr is None else vector_root(corr, spec.quantization.chunk_size)
        if updates_tree(updates, corr_root).root != committed.updates_root:
            raise FedMarketError("the listed updates do not form the committed updates root")
        return updates, corr

    def correction(self, spec: JobSpec, committed: CommittedRound, doc: dict) -> np.ndarray | None:
        """A secure round's published mask correction (None for other modes), checked against its root."""
        if not spec.privacy.secure:
            return None
        sec = doc.get("secure")
        if not isinstance(sec, dict):
            raise FedMarketError(f"round {committed.round} of a secure job publishes no mask correction")
        corr = decode_vector(self.store.get(sec["correction_cid"]), spec.n_params)
        if "0x" + vector_root(corr, spec.quantization.chunk_size).hex() != sec["correction_root"]:
            raise FedMarketError(f"round {committed.round}: mask correction does not match its root")
        return corr

    def _check_unmasking(self, spec: JobSpec, job_id: int, committed: CommittedRound, updates: list[RoundUpdate], corr: np.ndarray) -> str:
        """Re-derive a secure round's mask correction from its published transcript; '' if it matches."""
        import json

        from . import secure_round as sr

        doc = fetch_metrics(self.store, committed)
        members = sr.participants(self.dep, spec, job_id, committed.round)
        cfg = sr.round_config(self.dep, spec, job_id, committed.round, len(members))
        uid = {p: i for i, p in enumerate(members)}
        try:
            transcript = sr.Transcript.from_doc(json.loads(self.store.get(doc["secure"]["transcript_cid"])))
            masked = {uid[u.provider]: u.q for u in updates}
            total = sr.unmasked_sum(cfg, members, transcript, masked)
        except (FedMarketError, KeyError, ValueError, TypeError) as exc:
            return f"mask correction cannot be re-derived from the transcript: {exc}"
        if not np.array_equal(sr.correction(masked, total), corr):
            return "mask correction differs from the one the transcript re-derives"
        return ""

    def check_round(self, spec: JobSpec, job_id: int, committed: CommittedRound, prev_q: np.ndarray) -> tuple[RoundCheck, np.ndarray | None]:
        """Recompute one round; returns the finding and the committed model (None if unavailable)."""
        from . import secure_round as sr
        from .aggregator import aggregate_int
        from .common import epsilon_after_round

        try:
            updates, corr = self.verified_round(spec, job_id, committed)
            model = fetch_model(self.store, spec, committed)
        except FedMarketError as exc:  # storage and protocol errors both derive from it
            return RoundCheck(committed.round, False, str(exc), None, committed.count), None
        if corr is not None:
            expected = prev_q + sr.secure_mean([u.q for u in updates], corr, [u.weight for u in updates])
        else:
            expected = prev_q + aggregate_int(spec, [u.q for u in updates], [u.weight for u in updates])
        diff = np.flatnonzero(expected != model)
        if diff.size:
            chunk = int(diff[0]) // spec.quantization.chunk_size
            return RoundCheck(committed.round, False, f"wrong aggregate ({diff.size} values differ)", chunk, committed.count), model
        if corr is not None:
            problem = self._check_unmasking(spec, job_id, committed, updates, corr)
            if problem:
                return RoundCheck(committed.round, False, problem, None, committed.count), model
        from .common import round_providers

        picked = set(round_providers(self.dep, spec, job_id, committed.round))
        strangers = [u.provider for u in updates if u.provider not in picked]
        if strangers:
            return RoundCheck(committed.round, False, f"update from {strangers[0]}, not selected for the round by its seed",
                              None, committed.count), model
        if spec.privacy.dp and any(u.weight != 1 for u in updates):
            return RoundCheck(committed.round, False, "a DP round aggregated an update with weight other than 1", None, committed.count), model
        try:
            eps = epsilon_after_round(spec, committed.round)
        except FedMarketError as exc:
            return RoundCheck(committed.round, False, str(exc), None, committed.count), model
        if committed.epsilon_spent != eps:
            return RoundCheck(committed.round, False, f"committed epsilon {committed.epsilon_spent} millionths, the spec gives {eps}",
                              None, committed.count), model
        return RoundCheck(committed.round, True, count=committed.count), model

    def audit(self, job_id: int) -> AuditReport:
        spec = load_spec(self.dep, self.store, job_id)
        job = self.dep.job(job_id)
        report = AuditReport(job_id, job["state"].name)
        prev = np.zeros(spec.n_params, dtype=np.int64)
        docs = []
        for committed in committed_rounds(self.dep, job_id):
            check, model = self.check_round(spec, job_id, committed, prev)
            report.rounds.append(check)
            if not check.ok or model is None:
                return report
            prev = model
            docs.append(fetch_metrics(self.store, committed))
        posted = self.dep.market.events("RewardRootPosted", job_id=job_id)
        if posted:
            self._check_rewards(report, spec, job_id, docs, posted[-1])
        return report

    def _check_rewards(self, report: AuditReport, spec: JobSpec, job_id: int, docs: list[dict], posted) -> None:
        import json

        from .settlement import reward_document

        try:
            published = json.loads(self.store.get(posted["rewards_cid"]))
            reveals = {int(r): list(cids) for r, cids in published.get("reveals", {}).items()}
        except (FedMarketError, ValueError, TypeError, AttributeError):
            report.rewards_ok, report.rewards_problem = False, "the rewards document is missing or malformed"
            return
        expected = reward_document(self.dep, self.store, job_id, spec, reveals)["leaves"]
        tree = reward_tree(expected)
        if tree.root != posted["reward_root"]:
            report.rewards_ok, report.rewards_problem = False, "reward root differs from the one re-derived from the rounds"
            return
        if sum(int(l["amount"]) for l in expected) != posted["reward_total"]:
            report.rewards_ok, report.rewards_problem = False, "reward total differs from the sum of the leaves"
            return
        report.rewards_ok = True
        by_index = {l["index"]: l for l in expected}
        for claim in self.dep.market.events("RewardClaimed", job_id=job_id):
            leaf = by_index.get(claim["index"])
            if leaf is None or leaf["account"] != claim["account"] or int(leaf["amount"]) != claim["amount"]:
                report.claims_ok, report.claims_problem = False, f"claim of leaf {claim['index']} does not match it"
                return
        report.claims_ok = True
