"""Auditor: re-derives every round and every payout of a job from chain data and the blob store
alone, with the same rules the arbiters enforce, and names what a dispute game would prove."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass, field, replace
from types import SimpleNamespace

import numpy as np
from eth_utils import to_checksum_address

from ..errors import BlobNotFound, BlobTooLarge, FedMarketError, ModelOutOfRange, StorageUnreachable
from ..market import Deployment
from ..protocol import rules as R
from ..protocol.encoding import BAD_INPUT, address_key, vector_root
from ..protocol.merkle import MerkleTree
from ..protocol.proofs import RoundUpdate, reward_tree, updates_root, updates_tree
from ..protocol.receipts import UpdateReceipt, canonical_twin
from ..protocol.selection import is_selected
from ..spec import JobSpec
from ..storage import BlobStore, Mailbox
from .common import (
    CommittedRound,
    ProtocolViolation,
    acknowledged,
    committed_rounds,
    epsilon_after_round,
    fetch_metrics,
    fetch_model,
    global_model,
    hexbytes,
    listed_leaves,
    load_spec,
    posted_receipts,
    posted_rewards,
    read_document,
    read_vector,
    round_seed,
)
from .sealed import seal_messages, seal_problem, seal_topic, sealed


@dataclass
class RoundCheck:
    """What re-deriving one round found: the first invalid leaf, or else the first wrong chunk."""

    round: int
    ok: bool
    problem: str = ""
    bad_chunk: int | None = None
    bad_leaf: int | None = None
    count: int = 0
    # the committed model is withheld and the round's updates give another one: a MODEL game
    # (`RoundArbiter.challenge_model`) walks the committed tree to a chunk that differs
    model_withheld: bool = False
    # a blob of the round is missing from the store, or overwritten (junk, too long, not a file):
    # no evidence was built, and it may be put back
    unavailable: bool = False


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
    model: np.ndarray | None  # None: withheld, and the updates give another model (never when fetched)
    prev_model: np.ndarray
    correction: np.ndarray | None
    seed: bytes
    tree: MerkleTree | None
    metrics: dict  # the round's metrics document, as fetched by its content id (re-derived if withheld)
    rederived: bool = False  # the metrics document was withheld: the updates come from the mailbox

    @property
    def nbytes(self) -> int:
        """Bytes of the vectors it holds (what keeping it costs)."""
        vectors = [u.q for u in self.updates] + [v for v in (self.model, self.prev_model) if v is not None]
        return sum(v.nbytes for v in vectors) + (0 if self.correction is None else self.correction.nbytes)


class Auditor:
    """Anyone: needs no key, trusts nothing but the chain and content hashes.

    Given the job's `mailbox`, it also re-derives a round whose data the aggregator withholds:
    the updates from the receipts the providers posted (their blobs in the store), as the
    committed updates root names them, and the model they give. A validator's auditor has none:
    a round whose data a validator cannot fetch is one it rejects."""

    # Vector bytes of round evidence kept for reuse (a game's moves, the next round's check). A
    # committed round's content is immutable (roots on chain, blobs by content id), so what is
    # dropped past this can be fetched again; keeping every round made a watcher of a long job of
    # a large model grow by a round's updates each round (0.46 GB a round for a 1.7M-parameter CNN
    # with 20 providers) until the machine ran out of memory.
    EVIDENCE_BYTES = 1 << 30

    def __init__(self, dep: Deployment, store: BlobStore, mailbox: Mailbox | None = None):
        self.dep = dep
        self.store = store
        self.mailbox = mailbox
        self._evidence: OrderedDict[tuple[int, int, bytes], RoundEvidence] = OrderedDict()  # least recent first
        # each round's (provider, weight) leaves, checked against its updates root: small, kept for good
        self._members: dict[tuple[int, int, bytes], tuple[tuple[str, bytes, int], ...]] = {}

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
        """Round `round_`'s (provider, weight) leaves (`leaves`): what a member's value over many
        rounds needs."""
        return tuple((p, w) for p, _, w in self.leaves(job_id, round_, rounds))

    def leaves(self, job_id: int, round_: int, rounds: list[CommittedRound] | None = None
               ) -> tuple[tuple[str, bytes, int], ...]:
        """Round `round_`'s (provider, update root, weight) leaves from its metrics document, checked
        against the committed updates root without fetching the updates themselves
        (`common.listed_leaves`); with a mailbox, re-derived from it when the document is withheld or
        lists other leaves; FedMarketError if they cannot be had."""
        committed, key = self._round_key(job_id, round_, rounds)
        if key not in self._members:
            try:
                leaves = listed_leaves(self.store, committed)
            except StorageUnreachable:
                raise
            except FedMarketError:
                if self.mailbox is None:
                    raise
                ev = self.evidence(load_spec(self.dep, self.store, job_id), job_id, round_, rounds)
                leaves = [(to_checksum_address(u.provider), u.root, u.weight) for u in ev.updates]
            self._members[key] = tuple(leaves)
        return self._members[key]

    def _fetch(self, spec: JobSpec, job_id: int, committed: CommittedRound, prev: CommittedRound | None,
               rounds: list[CommittedRound]) -> RoundEvidence:
        doc = self._withheld(lambda: fetch_metrics(self.store, committed))
        seed = round_seed(self.dep, job_id, committed.round, rounds)
        listed = None if doc is None else self._withheld(lambda: self._listed(spec, committed, doc))
        if listed is None:
            updates, tree, doc = self._rederive(spec, job_id, committed, seed)
        else:
            updates, tree = listed
        correction = self._correction(spec, committed, doc)
        prev_model = np.zeros(spec.n_params, dtype=np.int64)
        if prev is not None:
            prev_model = self._withheld(lambda: fetch_model(self.store, spec, prev))
            if prev_model is None:  # withheld: the previous round's re-derived model, if it is the committed one
                prev_model = self.evidence(spec, job_id, prev.round, rounds).model
            if prev_model is None:
                raise FedMarketError(f"round {prev.round}'s model is withheld and its updates give another one")
        ev = RoundEvidence(committed, prev, updates, self._withheld(lambda: fetch_model(self.store, spec, committed)),
                           prev_model, correction, seed, tree, doc, rederived=listed is None)
        if ev.model is None:  # withheld: what the updates give stands in for it if it is what was committed
            try:
                expected = self.expected_model(spec, ev)
            except FedMarketError:
                return ev
            if vector_root(expected, spec.quantization.chunk_size) == committed.model_root:
                ev = replace(ev, model=expected)
        return ev

    def _withheld(self, fetch):
        """`fetch()`, or None when what it fetches is missing or malformed and this auditor can
        re-derive rounds from the mailbox (without one, the error). A store that does not answer
        is not evidence of withholding: StorageUnreachable always propagates."""
        try:
            return fetch()
        except StorageUnreachable:
            raise
        except (FedMarketError, *BAD_INPUT):
            if self.mailbox is None:
                raise
            return None

    def _listed(self, spec: JobSpec, committed: CommittedRound, doc: dict) -> tuple[list[RoundUpdate], MerkleTree | None]:
        """The updates a metrics document lists, their blobs fetched, and their tree, which must be
        the committed one."""
        if len(doc["updates"]) != committed.count:  # before fetching any: a padded list costs nothing to refuse
            raise FedMarketError(f"metrics list {len(doc['updates'])} updates, the round committed {committed.count}")
        updates = [self._update(spec, e["provider"], e["update_root"], e["weight"], e["signature"], e["update_cid"])
                   for e in doc["updates"]]
        tree = updates_tree(updates)
        if (b"\x00" * 32 if tree is None else tree.root) != committed.updates_root:
            raise FedMarketError("the listed updates do not form the committed updates root")
        return updates, tree

    def _update(self, spec: JobSpec, provider: str, root: str | bytes, weight, signature: str | bytes, cid: str) -> RoundUpdate:
        """One listed update, its blob fetched and matched against the root it was listed with."""
        root = hexbytes(root) if isinstance(root, str) else root
        signature = hexbytes(signature) if isinstance(signature, str) else signature
        q = read_vector(self.store, cid, spec.n_params)
        update = RoundUpdate(provider, q, int(weight), spec.quantization.chunk_size, signature)
        if update.root != root:  # hashed once, kept for the updates tree
            raise FedMarketError(f"update of {provider} does not match its root")
        return update

    def _rederive(self, spec: JobSpec, job_id: int, committed: CommittedRound, seed: bytes
                  ) -> tuple[list[RoundUpdate], MerkleTree | None, dict]:
        """A round whose metrics document is withheld: its updates re-derived from the receipts
        posted on the round's topic (each signed by its provider, its blob in the store), as the
        committed updates root names them (with their tree, and the metrics document they stand
        for). Tried in turn: the updates the aggregator acknowledged; those of the job's providers
        selected for the round; every signed one; the acknowledged ones but one. FedMarketError if
        none of them forms the committed root (an update nobody posted is in the round, or more
        than one acknowledged update is left out)."""
        r = committed.round
        if spec.rule == R.Rule.SECURE_SUM:
            raise FedMarketError(f"round {r}: a secure round's metrics document is withheld (its correction with it)")
        posted = posted_receipts(self.dep, self.mailbox, job_id, r)
        firsts: dict[str, tuple] = {}
        for key, (sig, msg) in posted.items():  # the first receipt of each provider, as the aggregator takes it
            firsts.setdefault(key[0], (key, sig, msg))
        acked = acknowledged(self.dep, self.mailbox, job_id, r, self.dep.job(job_id)["aggregator"])
        n = int(self.dep.market.call("progress", job_id)["n_providers"])

        def valid(provider: str) -> bool:
            word, _ = self.dep.market.call("membership", job_id, provider)
            return int(word) == R.Role.PROVIDER and is_selected(seed, job_id, r, provider, spec.participation.per_round, n)

        everyone = sorted(firsts.values(), key=lambda f: address_key(f[0][0]))
        # an acknowledgement names the very receipt taken (a provider may have posted others)
        taken = sorted(((key, *posted[key]) for key in acked if key in posted), key=lambda f: address_key(f[0][0]))
        # the acknowledged updates (what an honest aggregator takes), the valid ones, every one,
        # and then the acknowledged ones but one (what censoring one update leaves: then proven
        # by the inclusion game)
        subsets = [taken, [f for f in everyone if valid(f[0][0])], everyone,
                   *(taken[:i] + taken[i + 1:] for i in range(len(taken)))]
        tried = []
        for subset in subsets:
            keys = [f[0] for f in subset]
            if keys in tried:
                continue
            tried.append(keys)
            leaves = [SimpleNamespace(provider=p, root=root, weight=w) for p, root, w in keys]
            if len(leaves) == committed.count and updates_root(leaves) == committed.updates_root:
                updates = [self._update(spec, key[0], key[1], key[2], sig, str(msg.get("update_cid", "")))
                           for key, sig, msg in subset]
                return updates, updates_tree(updates), self._rederived_document(spec, job_id, r, subset)
        raise FedMarketError(f"round {r}: the metrics document is withheld, and no set of the {len(everyone)} updates "
                             "posted for the round forms its committed updates root")

    def _rederived_document(self, spec: JobSpec, job_id: int, round_: int, subset: list) -> dict:
        """What a withheld metrics document would say of the round's updates (each one's posted
        receipt, blob and salt) and, in a sealed job, the aggregator's seal from the mailbox (the
        one every update opens, if it signed several)."""
        doc = {"updates": [{"provider": key[0], "update_root": "0x" + key[1].hex(), "weight": key[2],
                            "signature": "0x" + sig.hex(), "update_cid": msg.get("update_cid"),
                            **({"salt": msg["salt"]} if "salt" in msg else {})} for key, sig, msg in subset]}
        if sealed(spec):
            aggregator = self.dep.job(job_id)["aggregator"]
            raws = self.mailbox.read(seal_topic(job_id, round_))
            authentic = [msg for msg, _ in seal_messages(self.dep, raws, job_id, round_, aggregator)]
            opened = [m for m in authentic if not seal_problem(self.dep, {**doc, "seal": m}, job_id, round_, aggregator)]
            if opened or authentic:
                doc["seal"] = (opened or authentic)[0]
        return doc

    def _correction(self, spec: JobSpec, committed: CommittedRound, doc: dict) -> np.ndarray | None:
        """A secure round's published mask correction, or an attested round's (None for other
        rules), checked against its root."""
        if spec.rule != R.Rule.SECURE_SUM:
            return None
        sec = doc.get("attested" if spec.attested else "secure")
        if not isinstance(sec, dict):
            raise FedMarketError(f"round {committed.round} of a {'attested' if spec.attested else 'secure'} job "
                                 "publishes no correction")
        corr = read_vector(self.store, sec["correction_cid"], spec.n_params)
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
        try:  # a listed high-s (or v 0/1) twin of the provider's signature is still its receipt: the
            # aggregator shows the canonical one on chain and wins the game (the watcher's bond lost)
            signer = UpdateReceipt(job_id, r, u.root, u.weight).signer(canonical_twin(u.signature), self.dep.chain_id,
                                                                       self.dep.disputes.address)
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
        return R.apply_delta(ev.prev_model, delta)  # ModelOutOfRange where the exact model leaves int64

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
        except (FedMarketError, *BAD_INPUT) as exc:  # storage and protocol errors, and documents anyone could write
            return RoundCheck(c.round, False, f"round data unavailable or inconsistent: {exc}", count=c.count,
                              unavailable=isinstance(exc, (BlobNotFound, BlobTooLarge))), None
        n = int(self.dep.market.call("progress", job_id)["n_providers"])
        for i in range(len(ev.updates)):
            problem = self.leaf_problem(spec, job_id, ev, i, n)
            if problem:
                return RoundCheck(c.round, False, problem, bad_leaf=i, count=c.count), ev
        if ev.model is None:
            return RoundCheck(c.round, False, "the model is withheld, and the round's updates (posted by their providers) "
                              "give a model of another root", model_withheld=True, count=c.count), ev
        try:
            expected = self.expected_model(spec, ev)
        except ModelOutOfRange as exc:  # no int64 model is right there: the aggregate game proves it
            return RoundCheck(c.round, False, str(exc), bad_chunk=exc.index // spec.quantization.chunk_size,
                              count=c.count), ev
        except FedMarketError as exc:
            return RoundCheck(c.round, False, str(exc), bad_chunk=0, count=c.count), ev
        diff = np.flatnonzero(expected != ev.model)
        if diff.size:
            chunk = int(diff[0]) // spec.quantization.chunk_size
            return RoundCheck(c.round, False, f"wrong aggregate ({diff.size} values differ)", bad_chunk=chunk, count=c.count), ev
        # an update (or a secure round's mean) outside the fixed-point range: no honest aggregator
        # takes it, and validators reject the round (the chain has no such bound to prove)
        ranged = [(u.q, f"update of {u.provider}") for u in ev.updates] if not spec.privacy.secure else \
            [(expected - ev.prev_model, "the round's unmasked mean")] if ev.updates else []
        for q, what in ranged:
            problem = R.values_problem(q, what)
            if problem:
                return RoundCheck(c.round, False, problem, count=c.count), ev
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
        if not ev.updates:  # an aborted round (or one too small to run) unmasks nothing
            return "" if not np.any(ev.correction) else "an empty secure round's mask correction is not zero"
        members = sr.participants(self.dep, spec, job_id, r)
        uid = {p: i for i, p in enumerate(members)}
        try:
            cfg = sr.round_config(self.dep, spec, job_id, r, len(members))
            transcript = sr.Transcript.from_doc(read_document(self.store, doc["secure"]["transcript_cid"]))
            masked = {uid[u.provider]: u.q for u in ev.updates}
            total = sr.unmasked_sum(cfg, members, transcript, masked)
        except (FedMarketError, *BAD_INPUT) as exc:
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
        """Re-derive the posted reward root's leaves on the basis the chain holds (never the one the
        poster's document names); on a difference, name the first leaf (the one a value or sum game
        proves)."""
        from .settlement import reward_document

        basis = int(self.dep.job(job_id)["basis"])
        try:
            published = posted_rewards(self.dep, self.store, job_id)
            reveals = {int(r): list(cids) for r, cids in published.get("reveals", {}).items()}
            documented = int(published["basis"])
        except (FedMarketError, *BAD_INPUT) as exc:
            report.rewards_ok, report.rewards_problem = False, f"the rewards document is missing or malformed: {exc}"
            return
        if documented != basis:  # a weight-basis root with leaves of another basis passed as right
            report.rewards_ok = False
            report.rewards_problem = f"the rewards document names basis {documented}, the chain holds basis {basis}"
            return
        try:
            rounds = committed_rounds(self.dep, job_id)
            # each round's leaves checked against its root, or (with a mailbox) re-derived
            expected = reward_document(self.dep, self.store, job_id, spec, reveals, basis,
                                       lambda r: self.members(job_id, r, rounds))
        except (FedMarketError, *BAD_INPUT) as exc:
            report.rewards_ok, report.rewards_problem = False, f"the rewards cannot be re-derived, round data unavailable: {exc}"
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


def training_model(dep: Deployment, store: BlobStore, spec: JobSpec, job_id: int, mailbox: Mailbox | None
                   ) -> tuple[int, np.ndarray]:
    """`common.global_model`, but a model the aggregator withholds is re-derived, given the job's
    `mailbox`, from the updates the providers posted if they give its committed root: a
    withholding aggregator does not stall the job. ProtocolViolation if they give another model
    (a wrong round: anyone can prove it)."""
    try:
        return global_model(dep, store, spec, job_id)
    except StorageUnreachable:
        raise
    except FedMarketError:
        if mailbox is None:
            raise
    rounds = committed_rounds(dep, job_id)
    last = rounds[-1]
    model = Auditor(dep, store, mailbox).evidence(spec, job_id, last.round, rounds).model
    if model is None:
        raise ProtocolViolation(f"round {last.round}: the model is withheld, and the updates posted for it give another")
    return last.round + 1, model
