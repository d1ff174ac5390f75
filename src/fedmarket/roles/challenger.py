"""Challenger: watches a job's rounds and proves on chain what can be proven: a wrong aggregate, an
acknowledged update left out of a round (censorship), a validator that signed two attestations
for one round (equivocation)."""

from __future__ import annotations

import json

import numpy as np
from eth_utils import to_checksum_address

from ..chain import Account, Receipt
from ..errors import FedMarketError
from ..market import Deployment, JobState, Role
from ..protocol.encoding import address_key
from ..protocol.proofs import censorship_leaf, fraud_proof, updates_tree
from ..protocol.receipts import Attestation, ReceiptAck, UpdateReceipt
from ..spec import JobSpec
from ..storage import BlobStore, Mailbox
from .auditor import Auditor
from .common import CommittedRound, committed_rounds, fetch_metrics, load_spec, round_topic


class Challenger:
    """Anyone with gas: earns half the cheater's stake by proving a wrong chunk or a censored update
    (the aggregator's) or an equivocation (a validator's)."""

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
                updates, correction = self.auditor.verified_round(spec, job_id, committed)
                args = fraud_proof(
                    job_id=job_id, round_=committed.round, chunk_index=found.bad_chunk,
                    chunk_size=spec.quantization.chunk_size, rule=spec.rule, trim=spec.trim,
                    prev_model_q=None if prev is None else prev_q,
                    prev_data=None if prev is None else prev.data,
                    new_model_q=model, data=committed.data, updates=updates,
                    correction=correction,
                )
                return self.dep.disputes.transact("prove_fraud", *args, sender=self.account)
            prev_q, prev = model, committed
        return None

    # ---------------------------------------------------------------- censorship

    def check_censorship(self, job_id: int, mailbox: Mailbox) -> list[Receipt]:
        """Prove that the aggregator countersigned an update and then left it out of (or altered it in)
        a committed round.

        For every committed round: the aggregator's acknowledgements posted on the round's `-acks`
        topic (each checked to be signed by the job's aggregator), the providers' signed receipts
        posted on the round's topic, and the updates tree rebuilt from the round's metrics document
        (with a secure round's mask-correction leaf last). An acknowledged (provider, update root,
        weight) that the tree does not hold is proven with `Disputes.prove_censorship`. A proof fails
        the job and reverts it to before that round, so at most one is submitted; returns the
        receipts ([] if the aggregator kept every update it acknowledged, or the job is no longer
        disputable)."""
        spec = load_spec(self.dep, self.auditor.store, job_id)
        receipts: list[Receipt] = []
        for committed in committed_rounds(self.dep, job_id):
            if not self._disputable(job_id, committed.round):
                break
            found = self._censored(spec, job_id, committed, mailbox)
            if found is None:
                continue
            (provider, root, weight, psig, asig), leaf, proof = found
            receipts.append(self.dep.disputes.transact(
                "prove_censorship", job_id, committed.round, committed.data, provider, root, weight, psig, asig,
                leaf, proof, sender=self.account,
            ))
            break  # the job failed and was reverted to before this round: nothing later is disputable
        return receipts

    def _disputable(self, job_id: int, round_: int) -> bool:
        job = self.dep.job(job_id)
        return job["state"] in (JobState.TRAINING, JobState.FINALIZING) and round_ < int(job["current_round"])

    def _committed_updates(self, spec: JobSpec, committed: CommittedRound) -> tuple[list["_Listed"], bytes | None] | None:
        """The round's listed updates (in leaf order) and a secure round's correction root, from its
        metrics document; None if the document is unavailable or does not form the committed root."""
        try:
            doc = fetch_metrics(self.auditor.store, committed)
            listed = [_Listed(to_checksum_address(e["provider"]), _hex32(e["update_root"]), int(e["weight"]))
                      for e in doc["updates"]]
            corr_root = _hex32(doc["secure"]["correction_root"]) if spec.privacy.secure else None
        except (FedMarketError, KeyError, ValueError, TypeError):
            return None
        # in the document's order: the one the tree was built in
        if len(listed) != committed.count or updates_tree(listed, corr_root).root != committed.updates_root:
            return None  # unavailable or inconsistent data: a validator matter, not a censorship proof
        return listed, corr_root

    def _censored(self, spec: JobSpec, job_id: int, committed: CommittedRound, mailbox: Mailbox):
        """The first provable censorship of one round: ((provider, root, weight, provider sig, ack sig),
        leaf, leaf proof), or None."""
        rebuilt = self._committed_updates(spec, committed)
        if rebuilt is None:
            return None
        listed, corr_root = rebuilt
        r = committed.round
        chain_id, verifier = self.dep.chain_id, self.dep.disputes.address
        aggregator = self.dep.job(job_id)["aggregator"]
        included = {(u.provider, u.root, u.weight) for u in listed}
        signed: dict[tuple[str, bytes, int], bytes] = {}  # provider receipts, checked
        for raw in mailbox.read(round_topic(job_id, r)):
            found = _signed_statement(raw, job_id, r, chain_id, verifier, ack=False)
            if found is not None and found[2] == found[0][0]:
                signed[found[0]] = found[1]
        for raw in mailbox.read(round_topic(job_id, r) + "-acks"):
            found = _signed_statement(raw, job_id, r, chain_id, verifier, ack=True)
            if found is None or found[2] != aggregator:
                continue
            key, asig = found[0], found[1]
            if key in included or key not in signed:
                continue  # kept as acknowledged, or no provider receipt to prove it with
            role, _ = self.dep.market.call("membership", job_id, key[0])
            if int(role) & 127 != Role.PROVIDER:
                continue
            try:
                leaf, proof = censorship_leaf(listed, key[0], corr_root)
            except ValueError:
                continue
            return (*key, signed[key], asig), leaf, proof
        return None

    # ---------------------------------------------------------------- equivocation

    def check_equivocation(self, job_id: int, mailbox: Mailbox) -> list[Receipt]:
        """Prove every validator that signed two different attestations (model root or scores root)
        for one round of the job, from the messages posted on each committed round's `-attestations`
        topic. A message without a `model_root` attests the round's committed model root. Each
        validator is slashed at most once per job; returns the receipts ([] if nobody equivocated)."""
        chain_id, verifier = self.dep.chain_id, self.dep.disputes.address
        receipts: list[Receipt] = []
        proven: set[str] = set()
        model_roots: dict[int, set[bytes]] = {}
        for c in committed_rounds(self.dep, job_id):
            model_roots.setdefault(c.round, set()).add(c.model_root)
        for r in sorted(model_roots):
            seen: dict[str, dict[tuple[bytes, bytes], bytes]] = {}
            for raw in mailbox.read(round_topic(job_id, r) + "-attestations"):
                found = _attestation(raw, job_id, r, model_roots[r], chain_id, verifier)
                if found is not None:
                    validator, statement, sig = found
                    seen.setdefault(validator, {}).setdefault(statement, sig)
            for validator in sorted(seen, key=address_key):
                if len(seen[validator]) < 2 or validator in proven:
                    continue
                role, _ = self.dep.market.call("membership", job_id, validator)
                if int(role) != Role.VALIDATOR:  # not a validator of the job, or already slashed
                    continue
                (a, sa), (b, sb) = sorted(seen[validator].items())[:2]
                receipts.append(self.dep.disputes.transact(
                    "prove_equivocation", job_id, r, validator, a[0], a[1], sa, b[0], b[1], sb, sender=self.account,
                ))
                proven.add(validator)
        return receipts


class _Listed:
    """One update as a metrics document lists it (what the updates tree needs, without the blob)."""

    __slots__ = ("provider", "root", "weight")

    def __init__(self, provider: str, root: bytes, weight: int):
        self.provider, self.root, self.weight = provider, root, weight


def _hexbytes(value: str) -> bytes:
    return bytes.fromhex(value.removeprefix("0x"))


def _hex32(value: str) -> bytes:
    out = _hexbytes(value)
    if len(out) != 32:
        raise ValueError("not a 32-byte value")
    return out


def _signed_statement(raw: bytes, job_id: int, round_: int, chain_id: int, verifier: str, *, ack: bool):
    """((provider, update root, weight), signature, signer) of a mailbox message carrying a provider's
    UpdateReceipt (`ack=False`, on the round's topic) or the aggregator's ReceiptAck (`ack=True`, on its
    `-acks` topic); None if the message is malformed, for another job or round, or its signature unrecoverable."""
    try:
        msg = json.loads(raw)
        if not ack and (int(msg["job_id"]) != job_id or int(msg["round"]) != round_):
            return None
        key = (to_checksum_address(msg["provider"]), _hex32(msg["update_root"]), int(msg["weight"]))
        sig = _hexbytes(msg["signature"])
        stmt = ReceiptAck(job_id, round_, *key) if ack else UpdateReceipt(job_id, round_, key[1], key[2])
        return key, sig, stmt.signer(sig, chain_id, verifier)
    except Exception:  # noqa: BLE001 - untrusted message: malformed, or a signature that recovers nothing
        return None


def _attestation(raw: bytes, job_id: int, round_: int, model_roots: set[bytes], chain_id: int, verifier: str):
    """(validator, (model root, scores root), signature) of a validly signed attestation message, or None."""
    try:
        msg = json.loads(raw)
        if "round" in msg and int(msg["round"]) != round_:
            return None
        validator = to_checksum_address(msg["validator"])
        scores = _hex32(msg["scores_root"])
        sig = _hexbytes(msg["signature"])
        candidates = [_hex32(msg["model_root"])] if msg.get("model_root") else sorted(model_roots)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    for model_root in candidates:
        try:
            if Attestation(job_id, round_, model_root, scores).signer(sig, chain_id, verifier) == validator:
                return validator, (model_root, scores), sig
        except Exception:  # noqa: BLE001 - unrecoverable signature
            return None
    return None
