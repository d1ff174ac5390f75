"""Auditor: re-derives every round and every payout of a job from chain data and the blob store
alone, with the same rules the arbiters enforce, and names what a dispute game would prove."""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from types import SimpleNamespace

import numpy as np

from ..errors import FedMarketError, StorageUnreachable
from ..market import Deployment
from ..protocol import rules as R
from ..protocol.encoding import address_key, decode_vector, vector_root
from ..protocol.merkle import MerkleTree
from ..protocol.proofs import RoundUpdate, reward_tree, updates_root, updates_tree
from ..protocol.receipts import UpdateReceipt
from ..protocol.selection import is_selected
from ..spec import JobSpec
from ..storage import BlobStore
from .common import (
    CommittedRound,
    committed_rounds,
    epsilon_after_round,
    fetch_metrics,
    fetch_model,
    load_spec,
    posted_rewards,
    round_seed,
)
from .sealed import seal_problem, sealed


@dataclass
class RoundCheck:
    """What re-deriving one round found: the first invalid leaf, or else the first wrong chunk."""

    round: int
    ok: bool
    problem: str = ""
    bad_chunk: int | None = None
    bad_leaf: int | None = None
    count: int = 0


@dataclass
class AuditReport:
    job_id: int
    state: str
    rounds: list[RoundCheck] = field(default_factory=list)
    rewards_ok: bool | None = None
    rewards_problem: str = ""
    bad_reward_leaf: int | None = None
    claims_ok: bool | None = None
    claims_problem: str = ""

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rounds) and self.rewards_ok is not False and self.claims_ok is not False

    def as_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


@dataclass(frozen=True)
class RoundEvidence:
    """A committed round's data, fetched and matched against its roots: what any move of a
    dispute game over the round needs."""

    committed: CommittedRound
    prev: CommittedRound | None
    updates: list[RoundUpdate]
    model: np.ndarray
    prev_model: np.ndarray
    correction: np.ndarray | None
    seed: bytes
    tree: MerkleTree | None
    metrics: dict  # the round's metrics document, as fetched by its content id

    @property
    def nbytes(self) -> int:
        """Bytes of the vectors it holds (what keeping it costs)."""
        vectors = [u.q for u in self.updates] + [self.model, self.prev_model]
        return sum(v.nbytes for v in vectors) + (0 if self.correction is None else self.correction.nbytes)


class Auditor:
    """Anyone: needs no key, trusts nothing but the chain and content hashes."""

    # Vector bytes of round evidence kept for reuse (a game's moves, the next round's check). A
    # committed round's content is immutable (roots on chain, blobs by content id), so what is
    # dropped past this can be fetched again; keeping every round made a watcher of a long job of
    # a large model grow by a round's updates each round (0.46 GB a round for a 1.7M-parameter CNN
    # with 20 providers) until the machine ran out of memory.
    EVIDENCE_BYTES = 1 << 30

    def __init__(self, dep: Deployment, store: BlobStore):
        self.dep = dep
        self.store = store
        self._evidence: OrderedDict[tuple[int, int, bytes], RoundEvidence] = OrderedDict()  # least recent first
        # each round's (provider, weight) leaves, checked against its updates root: small, kept for good
        self._members: dict[tuple[int, int, bytes], tuple[tuple[str, int], ...]] = {}

    # ---- fetching ----------------------------------------------------------------------------

    def evidence(self, spec: JobSpec, job_id: int, round_: int, rounds: list[CommittedRound] | None = None) -> RoundEvidence:
        """Round `round_`'s updates (blobs matching their roots, together forming the committed
        updates tree), model and correction; FedMarketError if anything is unavailable or does not
        match what the round committed."""
        rounds = committed_rounds(self.dep, job_id) if rounds is None else rounds
        committed, key = self._round_key(job_id, round_, rounds)
        if key in self._evidence:
            self._evidence.move_to_end(key)
            return self._evidence[key]
        ev = self._fetch(spec, job_id, committed, rounds[round_ - 1] if round_ else None, rounds)
        self._evidence[key] = ev
        held = sum(e.nbytes for e in self._evidence.values())
        while held > self.EVIDENCE_BYTES and len(self._evidence) > 1:  # the newest always stays
            held -= self._evidence.popitem(last=False)[1].nbytes
        return ev

    def _round_key(self, job_id: int, round_: int, rounds: list[CommittedRound] | None
                   ) -> tuple[CommittedRound, tuple[int, int, bytes]]:
        """A committed round and the key its cached data is kept under (the round's commitment:
        what it committed, so a replaced round is never read from the cache)."""
        committed = (committed_rounds(self.dep, job_id) if rounds is None else rounds)[round_]
        return committed, (job_id, round_, committed.commitment(job_id))

    def held(self) -> list[tuple[int, int]]:
        """(job, round) of the round evidence kept now, least recently used first."""
        return [(job, r) for job, r, _ in self._evidence]

    def members(self, job_id: int, round_: int, rounds: list[CommittedRound] | None = None) -> tuple[tuple[str, int], ...]:
        """Round `round_`'s (provider, weight) leaves from its metrics document, checked against
        the committed updates root without fetching the updates themselves (what a member's
        value over many rounds needs); FedMarketError if they do not form that root."""
        committed, key = self._round_key(job_id, round_, rounds)
        if key not in self._members:
            try:
                entries = fetch_metrics(self.store, committed)["updates"]
                leaves = [SimpleNamespace(provider=e["provider"], root=bytes.fromhex(e["update_root"][2:]),
                                          weight=int(e["weight"])) for e in entries]
            except (KeyError, TypeError, ValueError, AttributeError):
                raise FedMarketError(f"round {round_}: metrics document lists malformed updates") from None
            if updates_root(leaves) != committed.updates_root:
                raise FedMarketError(f"round {round_}: the listed updates do not form the committed updates root")
            self._members[key] = tuple((u.provider, u.weight) for u in leaves)
        return self._members[key]

    def _fetch(self, spec: JobSpec, job_id: int, committed: CommittedRound, prev: CommittedRound | None,
               rounds: list[CommittedRound]) -> RoundEvidence:
        doc = fetch_metrics(self.store, committed)
        size = spec.quantization.chunk_size
        updates = []
        for entry in doc["updates"]:
            q = decode_vector(self.store.get(entry["update_cid"]), spec.n_params)
            update = RoundUpdate(entry["provider"], q, int(entry["weight"]), size, bytes.fromhex(entry["signature"][2:]))
            if update.root != bytes.fromhex(entry["update_root"][2:]):  # hashed once, kept for the updates tree
                raise FedMarketError(f"update of {entry['provider']} does not match its root")
            updates.append(update)
        if len(updates) != committed.count:
            raise FedMarketError(f"metrics list {len(updates)} updates, the round committed {committed.count}")
        tree = updates_tree(updates)
        if (b"\x00" * 32 if tree is None else tree.root) != committed.updates_root:
            raise FedMarketError("the listed updates do not form the committed updates root")
        correction = self._correction(spec, committed, doc)
        model = fetch_model(self.store, spec, committed)
        prev_model = fetch_model(self.store, spec, prev) if prev else np.zeros(spec.n_params, dtype=np.int64)
        seed = round_seed(self.dep, job_id, committed.round, rounds)
        return RoundEvidence(committed, prev, updates, model, prev_model, correction, seed, tree, doc)

    def _correction(self, spec: JobSpec, committed: CommittedRound, doc: dict) -> np.ndarray | None:
        """A secure round's published mask correction, or an attested round's (None for other
        rules), checked against its root."""
        if spec.rule != R.Rule.SECURE_SUM:
            return None
        sec = doc.get("attested" if spec.attested else "secure")
        if not isinstance(sec, dict):
            raise FedMarketError(f"round {committed.round} of a {'attested' if spec.attested else 'secure'} job "
                                 "publishes no correction")
        corr = decode_vector(self.store.get(sec["correction_cid"]), spec.n_params)
        if vector_root(corr, spec.quantization.chunk_size) != committed.aux_root:
            raise FedMarketError(f"round {committed.round}: mask correction does not match its committed root")
        return corr

    # ---- the rules a round must follow -------------------------------------------------------

    def leaf_problem(self, spec: JobSpec, job_id: int, ev: RoundEvidence, index: int, n_providers: int | None = None) -> str:
        """Why leaf `index` of the round breaks the rules `RoundArbiter._check_update` enforces ('' if it does not)."""
        u = ev.updates[index]
        r = ev.committed.round
        if index > 0 and address_key(ev.updates[index - 1].provider) >= address_key(u.provider):
            return f"leaf {index} is not after leaf {index - 1} in provider order"
        if not 1 <= u.weight <= R.MAX_WEIGHT:
            return f"leaf {index} has weight {u.weight}, outside [1, {R.MAX_WEIGHT}]"
        if spec.privacy.dp and u.weight != 1:
            return f"leaf {index}: a private update must have weight 1, not {u.weight}"
        try:
            signer = UpdateReceipt(job_id, r, u.root, u.weight).signer(u.signature, self.dep.chain_id, self.dep.disputes.address)
        except Exception:  # noqa: BLE001 - an unrecoverable signature is no receipt
            signer = None
        if signer != u.provider:
            return f"leaf {index} of {u.provider} carries no receipt signed by it"
        word, stage = self.dep.market.call("membership", job_id, u.provider)
        if R.role_of(word) != R.Role.PROVIDER:
            return f"leaf {index}: {u.provider} is not a provider of job {job_id}"
        if R.is_slashed(word) and r > int(stage):
            return f"leaf {index}: {u.provider} was slashed before round {r}"
        n = n_providers if n_providers is not None else int(self.dep.market.call("progress", job_id)["n_providers"])
        if not is_selected(ev.seed, job_id, r, u.provider, spec.participation.per_round, n):
            return f"leaf {index}: {u.provider} was not selected for round {r} by its seed"
        return ""

    def expected_model(self, spec: JobSpec, ev: RoundEvidence) -> np.ndarray:
        if not ev.updates:
            return ev.prev_model
        delta = R.aggregate(spec.rule, [u.q for u in ev.updates], [u.weight for u in ev.updates], spec.trim,
                            ev.correction)
        return ev.prev_model + delta

    def check_round(self, spec: JobSpec, job_id: int, committed: CommittedRound, rounds: list[CommittedRound] | None = None
                    ) -> tuple[RoundCheck, RoundEvidence | None]:
        """Recompute one round: its data, then each leaf's validity (a LEAF game proves the first
        invalid one), then the aggregate (an AGGREGATE game proves the first wrong chunk), then
        what validators judge (a secure round's unmasking, the committed epsilon)."""
        c = committed
        try:
            ev = self.evidence(spec, job_id, c.round, rounds)
        except StorageUnreachable:  # the store did not answer: nothing is known of the data yet
            raise
        except FedMarketError as exc:  # storage and protocol errors both derive from it
            return RoundCheck(c.round, False, f"round data unavailable or inconsistent: {exc}", count=c.count), None
        n = int(self.dep.market.call("progress", job_id)["n_providers"])
        for i in range(len(ev.updates)):
            problem = self.leaf_problem(spec, job_id, ev, i, n)
            if problem:
                return RoundCheck(c.round, False, problem, bad_leaf=i, count=c.count), ev
        try:
            expected = self.expected_model(spec, ev)
        except FedMarketError as exc:
            return RoundCheck(c.round, False, str(exc), bad_chunk=0, count=c.count), ev
        diff = np.flatnonzero(expected != ev.model)
        if diff.size:
            chunk = int(diff[0]) // spec.quantization.chunk_size
            return RoundCheck(c.round, False, f"wrong aggregate ({diff.size} values differ)", bad_chunk=chunk, count=c.count), ev
        if ev.correction is not None:
            problem = self._check_attested(spec, ev) if spec.attested else self._check_unmasking(spec, job_id, ev)
            if problem:
                return RoundCheck(c.round, False, problem, count=c.count), ev
        if sealed(spec):  # every update opens the commitment the aggregator sealed before the reveals
            problem = seal_problem(self.dep, ev.metrics, job_id, c.round, self.dep.job(job_id)["aggregator"])
            if problem:
                return RoundCheck(c.round, False, problem, count=c.count), ev
        try:
            eps = epsilon_after_round(spec, c.round)
        except FedMarketError as exc:
            return RoundCheck(c.round, False, str(exc), count=c.count), ev
        if c.epsilon_spent != eps:
            return RoundCheck(c.round, False, f"committed epsilon {c.epsilon_spent} millionths, the spec gives {eps}",
                              count=c.count), ev
        return RoundCheck(c.round, True, count=c.count), ev

    def _check_attested(self, spec: JobSpec, ev: RoundEvidence) -> str:
        """Recompute an attested round's rule from its updates; '' if the committed correction gives it."""
        if not ev.updates:
            return "" if not ev.correction.any() else "an empty round's correction must be zero"
        if any(u.weight != 1 for u in ev.updates):
            return f"strategy {spec.strategy} counts every update once, but an update has weight != 1"
        expected = R.attested_correction(spec.strategy, [u.q for u in ev.updates], [1] * len(ev.updates))
        if not np.array_equal(expected, ev.correction):
            return f"the committed correction does not give the {spec.strategy} of the round's updates"
        return ""

    def _check_unmasking(self, spec: JobSpec, job_id: int, ev: RoundEvidence) -> str:
        """Re-derive a secure round's mask correction from its published transcript; '' if it matches."""
        from . import secure_round as sr

        doc = ev.metrics
        r = ev.committed.round
        members = sr.participants(self.dep, spec, job_id, r)
        cfg = sr.round_config(self.dep, spec, job_id, r, len(members))
        uid = {p: i for i, p in enumerate(members)}
        try:
            transcript = sr.Transcript.from_doc(json.loads(self.store.get(doc["secure"]["transcript_cid"])))
            masked = {uid[u.provider]: u.q for u in ev.updates}
            total = sr.unmasked_sum(cfg, members, transcript, masked)
        except (FedMarketError, KeyError, ValueError, TypeError) as exc:
            return f"mask correction cannot be re-derived from the transcript: {exc}"
        if not np.array_equal(sr.correction(masked, total), ev.correction):
            return "mask correction differs from the one the transcript re-derives"
        return ""

    # ---- a whole job -------------------------------------------------------------------------

    def audit(self, job_id: int) -> AuditReport:
        spec = load_spec(self.dep, self.store, job_id)
        job = self.dep.job(job_id)
        report = AuditReport(job_id, job["state"].name)
        rounds = committed_rounds(self.dep, job_id)
        for committed in rounds:
            check, _ = self.check_round(spec, job_id, committed, rounds)
            report.rounds.append(check)
            if not check.ok:
                return report
        if job["reward_root"] != b"\x00" * 32:
            self.check_rewards(report, spec, job_id)
        return report

    def check_rewards(self, report: AuditReport, spec: JobSpec, job_id: int) -> None:
        """Re-derive the posted reward root's leaves; on a difference, name the first leaf (the
        one a value or sum game proves)."""
        from .settlement import reward_document

        try:
            published = posted_rewards(self.dep, self.store, job_id)
            reveals = {int(r): list(cids) for r, cids in published.get("reveals", {}).items()}
            expected = reward_document(self.dep, self.store, job_id, spec, reveals, int(published["basis"]))
        except (FedMarketError, ValueError, TypeError, AttributeError, KeyError) as exc:
            report.rewards_ok, report.rewards_problem = False, f"the rewards document is missing or malformed: {exc}"
            return
        posted = self.dep.job(job_id)
        if reward_tree(expected["leaves"]).root != posted["reward_root"]:
            report.rewards_ok = False
            report.rewards_problem = "reward root differs from the one re-derived from the rounds"
            report.bad_reward_leaf = _first_difference(published["leaves"], expected["leaves"])
            return
        if int(expected["total"]) != posted["reward_total"] or int(expected["value_total"]) != posted["value_total"]:
            report.rewards_ok, report.rewards_problem = False, "reward totals differ from the leaves'"
            return
        report.rewards_ok = True
        by_index = {leaf["index"]: leaf for leaf in expected["leaves"]}
        for claim in self.dep.market.events("RewardClaimed", job_id=job_id):
            leaf = by_index.get(claim["index"])
            if leaf is None or leaf["account"] != claim["account"] or int(leaf["amount"]) != claim["amount"]:
                report.claims_ok, report.claims_problem = False, f"claim of leaf {claim['index']} does not match it"
                return
        report.claims_ok = True


def _first_difference(posted: list[dict], expected: list[dict]) -> int | None:
    keys = ("account", "role", "amount", "reputation_delta", "value", "activity")
    for a, b in zip(sorted(posted, key=lambda x: int(x["index"])), expected):
        if any(str(a.get(k)) != str(b[k]) for k in keys):
            return int(b["index"])
    return None
