"""Aggregator role: collects signed updates, aggregates them exactly, commits each round, posts rewards."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from ..chain import Account, Receipt
from ..errors import FedMarketError, SecAggAbort, StorageError
from ..fl import aggregate as agg_rules
from ..market import Deployment
from ..protocol.encoding import (
    address_key,
    canonical_json,
    decode_vector,
    encode_vector,
    vector_root,
)
from ..protocol.proofs import reward_tree, updates_tree
from ..protocol.receipts import ReceiptAck, UpdateReceipt
from ..spec import JobSpec
from ..storage import BlobStore, Mailbox
from . import secure_round as sr
from .common import (
    epsilon_after_round,
    global_model,
    load_spec,
    metrics_digest,
    round_providers,
    round_topic,
)
from .settlement import mailbox_reveals, reward_document, submit_reward_approvals


@dataclass(frozen=True)
class Update:
    """A verified update: signed receipt, matching blob, joined provider."""

    provider: str
    update_cid: str
    update_root: bytes
    weight: int
    signature: bytes
    train_loss: float
    q: np.ndarray

    @property
    def root(self) -> bytes:
        return self.update_root


def aggregate_int(spec: JobSpec, deltas: list[np.ndarray], weights: list[int]) -> np.ndarray:
    """The job's aggregation rule in exact integer arithmetic (what the disputes contract recomputes)."""
    if spec.strategy == "fedavg":
        return agg_rules.fedavg_int(deltas, weights)
    if spec.strategy == "median":
        return agg_rules.median_int(deltas)
    if len(deltas) <= 2 * spec.trim:
        raise FedMarketError(f"trimmed_mean with trim {spec.trim} needs more than {2 * spec.trim} updates, got {len(deltas)}")
    return agg_rules.trimmed_mean_int(deltas, spec.trim)


class Aggregator:
    """Runs the rounds of the jobs that name it as their aggregator."""

    def __init__(self, dep: Deployment, account: Account, store: BlobStore, mailbox: Mailbox):
        self.dep = dep
        self.account = account
        self.store = store
        self.mailbox = mailbox

    def accept(self, job_id: int) -> Receipt:
        """Accept the job, locking the aggregator stake its terms ask for."""
        stake = int(self.dep.job(job_id)["aggregator_stake"])
        if stake:
            self.dep.token.transact("approve", self.dep.market.address, stake, sender=self.account)
        return self.dep.market.transact("accept", job_id, sender=self.account)

    def start(self, job_id: int) -> Receipt:
        return self.dep.market.transact("start", job_id, sender=self.account)

    def release_stake(self, job_id: int) -> Receipt:
        """Take the aggregator stake back into free stake once the job is over."""
        return self.dep.market.transact("release_stake", job_id, self.account.address, sender=self.account)

    def collect(self, job_id: int, round_: int, spec: JobSpec) -> tuple[list[Update], list[dict]]:
        """Every valid update posted for the round (one per selected provider), and the rejected ones with reasons."""
        accepted: dict[str, Update] = {}
        rejected: list[dict] = []
        selected = set(round_providers(self.dep, spec, job_id, round_))
        for raw in self.mailbox.read(round_topic(job_id, round_)):
            try:
                upd = self._verify(raw, job_id, round_, spec, selected)
            except (FedMarketError, ValueError, KeyError, TypeError) as exc:
                rejected.append({"reason": str(exc)})
                continue
            if upd.provider in accepted:
                rejected.append({"provider": upd.provider, "reason": "second update in one round"})
                continue
            accepted[upd.provider] = upd
        updates = [accepted[p] for p in sorted(accepted, key=address_key)]
        if not spec.privacy.secure:  # a secure round acknowledges only its survivors (secure_survivors)
            self.acknowledge(job_id, round_, updates)
        return updates, rejected

    def acknowledge(self, job_id: int, round_: int, updates: list[Update]) -> None:
        """Countersign each update's receipt: from now on, leaving one of them out is provable censorship."""
        for u in updates:
            ack = ReceiptAck(job_id, round_, u.provider, u.update_root, u.weight)
            sig = ack.sign(self.account.key, self.dep.chain_id, self.dep.disputes.address)
            self.mailbox.post(
                round_topic(job_id, round_) + "-acks",
                canonical_json({"provider": u.provider, "update_root": "0x" + u.update_root.hex(),
                                "weight": u.weight, "signature": "0x" + sig.hex()}),
            )

    def _verify(self, raw: bytes, job_id: int, round_: int, spec: JobSpec, selected: set[str]) -> Update:
        msg = json.loads(raw)
        if msg["job_id"] != job_id or msg["round"] != round_:
            raise FedMarketError("receipt for another job or round")
        weight = int(msg["weight"])
        if weight < 1:
            raise FedMarketError("weight must be positive")
        if spec.privacy.dp and weight != 1:
            raise FedMarketError(f"privacy mode {spec.privacy.mode} bounds every provider's influence: weight must be 1, got {weight}")
        root = bytes.fromhex(msg["update_root"].removeprefix("0x"))
        sig = bytes.fromhex(msg["signature"].removeprefix("0x"))
        receipt = UpdateReceipt(job_id, round_, root, weight)
        signer = receipt.signer(sig, self.dep.chain_id, self.dep.disputes.address)
        if signer != msg["provider"]:
            raise FedMarketError(f"receipt signed by {signer}, not by {msg['provider']}")
        if not self.dep.market.call("is_provider", job_id, signer):
            raise FedMarketError(f"{signer} is not a provider of job {job_id} (never joined, or slashed)")
        if signer not in selected:
            raise FedMarketError(f"{signer} was not selected for round {round_}")
        try:
            q = decode_vector(self.store.get(msg["update_cid"]), spec.n_params)
        except StorageError as exc:
            raise FedMarketError(f"update of {signer}: {exc}") from None
        if vector_root(q, spec.quantization.chunk_size) != root:
            raise FedMarketError(f"update of {signer} does not match its signed root")
        return Update(signer, msg["update_cid"], root, weight, sig, float(msg.get("train_loss", "nan")), q)

    def secure_survivors(self, job_id: int, round_: int) -> list[int]:
        """Secure phase 4 (privacy modes secagg, secagg_dp): verify the masked updates' receipts and
        post the signed set of survivors (providers that shared keys and whose masked update
        arrived). Raises SecAggAbort, before anything is committed, below the round's threshold."""
        spec = load_spec(self.dep, self.store, job_id)
        if not spec.privacy.secure:
            raise FedMarketError(f"job {job_id} does not use secure aggregation")
        members = sr.participants(self.dep, spec, job_id, round_)
        cfg = sr.round_config(self.dep, spec, job_id, round_, len(members))
        updates, _ = self.collect(job_id, round_, spec)
        shared = sr.share_lists(self.mailbox.read(sr.topic(job_id, round_, "shares")), members)
        uid = {p: i for i, p in enumerate(members)}
        survivors = sorted(uid[u.provider] for u in updates if uid[u.provider] in shared)
        if len(survivors) < cfg.min_survivors:
            raise SecAggAbort(
                f"job {job_id} round {round_}: {len(survivors)} masked updates arrived, below the threshold of "
                f"{cfg.min_survivors} survivors; round aborted, nothing committed"
            )
        self.mailbox.post(sr.topic(job_id, round_, "survivors"),
                          sr.survivors_message(self.account.key, self.address, sorted(shared), survivors))
        self.acknowledge(job_id, round_, [u for u in updates if uid[u.provider] in set(survivors)])
        return survivors

    @property
    def address(self) -> str:
        return self.account.address

    def _secure_round(self, job_id: int, round_: int, spec: JobSpec, updates: list[Update]) -> tuple[list[Update], np.ndarray, dict]:
        """Unmask a secure round: (its survivors' masked updates, the mask correction, the transcript document)."""
        members = sr.participants(self.dep, spec, job_id, round_)
        cfg = sr.round_config(self.dep, spec, job_id, round_, len(members))
        mine = [sr.opened(raw, "aggregator") for raw in self.mailbox.read(sr.topic(job_id, round_, "survivors"))]
        mine = [m for m in mine if m["aggregator"] == self.address]
        if len(mine) != 1:
            raise FedMarketError(f"job {job_id} round {round_}: post the survivor set first (secure_survivors)")
        survivors = set(mine[0]["survivors"])
        uid = {p: i for i, p in enumerate(members)}
        kept = [u for u in updates if uid[u.provider] in survivors]
        if len(kept) != len(survivors):
            raise FedMarketError(f"job {job_id} round {round_}: a survivor's masked update is no longer available")
        transcript = sr.Transcript(self.mailbox.read(sr.topic(job_id, round_, "keys")), list(mine[0]["shared"]),
                                   self.mailbox.read(sr.topic(job_id, round_, "unmask")))
        masked = {uid[u.provider]: u.q for u in kept}
        total = sr.unmasked_sum(cfg, members, transcript, masked)  # SecAggAbort / ShareTampered: nothing committed
        return kept, sr.correction(masked, total), transcript.as_doc()

    def run_round(self, job_id: int, round_: int, collected: tuple[list[Update], list[dict]] | None = None) -> Receipt:
        """Aggregate the round's updates (exact integer arithmetic) and commit it in one transaction.

        A DP job's round commits the job's cumulative epsilon; a round that would exceed the
        budget is refused (PrivacyBudgetExceeded) before anything is sent."""
        spec = load_spec(self.dep, self.store, job_id)
        next_round, q_global = global_model(self.dep, self.store, spec, job_id)
        if next_round != round_:
            raise FedMarketError(f"job {job_id} is at round {next_round}, not {round_}")
        epsilon = epsilon_after_round(spec, round_)
        # `collected`: what `collect` just returned for this round, so it is not verified twice
        updates, rejected = collected if collected is not None else self.collect(job_id, round_, spec)
        if not updates:
            raise FedMarketError(f"job {job_id} round {round_}: no valid update to aggregate")
        secure = None
        if spec.privacy.secure:
            updates, corr, transcript = self._secure_round(job_id, round_, spec, updates)
            corr_root = vector_root(corr, spec.quantization.chunk_size)
            q_new = self.combine_secure(spec, q_global, updates, corr)
            secure = {"correction_cid": self.store.put(encode_vector(corr)), "correction_root": "0x" + corr_root.hex(),
                      "transcript_cid": self.store.put(canonical_json(transcript))}
            updates_root = updates_tree(updates, corr_root).root
        else:
            q_new = self.combine(spec, q_global, updates)
            updates_root = updates_tree(updates).root
        model_cid = self.store.put(encode_vector(q_new))
        model_root = vector_root(q_new, spec.quantization.chunk_size)
        total = sum(u.weight for u in updates)
        metrics = {
            "job_id": job_id,
            "round": round_,
            "strategy": spec.strategy,
            "privacy": spec.privacy.mode,
            "epsilon_spent": epsilon,
            "count": len(updates),
            "total_weight": total,
            "train_loss": sum(u.train_loss * u.weight for u in updates) / total,
            "model_cid": model_cid,
            "updates": [
                {
                    "index": i,
                    "provider": u.provider,
                    "update_cid": u.update_cid,
                    "update_root": "0x" + u.update_root.hex(),
                    "weight": u.weight,
                    "signature": "0x" + u.signature.hex(),
                }
                for i, u in enumerate(updates)
            ],
            "rejected": rejected,
        }
        if secure is not None:
            metrics["secure"] = secure
        doc = canonical_json(metrics)
        self.store.put(doc)
        return self.dep.market.transact(
            "submit_round", job_id, round_, model_root, model_cid, updates_root, len(updates), metrics_digest(doc),
            epsilon, sender=self.account,
        )

    def combine(self, spec: JobSpec, q_global: np.ndarray, updates: list[Update]) -> np.ndarray:
        """The new global model: the previous one plus the job's rule over the updates."""
        return q_global + aggregate_int(spec, [u.q for u in updates], [u.weight for u in updates])

    def combine_secure(self, spec: JobSpec, q_global: np.ndarray, updates: list[Update], corr: np.ndarray) -> np.ndarray:
        """The new global model of a secure round: the previous one plus the unmasked weighted mean."""
        return q_global + sr.secure_mean([u.q for u in updates], corr, [u.weight for u in updates])

    def reward_leaves(self, job_id: int, spec: JobSpec) -> list[dict]:
        """Every participant's reward leaf (see roles.settlement), from the committed rounds and the
        validators' revealed scores."""
        return self.rewards_document(job_id, spec)["leaves"]

    def rewards_document(self, job_id: int, spec: JobSpec) -> dict:
        return reward_document(self.dep, self.store, job_id, spec, mailbox_reveals(self.dep, self.mailbox, job_id))

    def post_rewards(self, job_id: int) -> Receipt:
        """After the last round: publish the rewards document and commit the root of its leaves.
        A job with validators first needs their approvals of that very root (they re-derive it:
        `Validator.approve_rewards`); the ones posted on the mailbox are submitted here."""
        spec = load_spec(self.dep, self.store, job_id)
        doc = self.rewards_document(job_id, spec)
        tree = reward_tree(doc["leaves"])
        total = int(doc["total"])
        cid = self.store.put(canonical_json(doc))
        if spec.participation.max_validators > 0:
            submit_reward_approvals(self.dep, self.mailbox, self.account, job_id, tree.root, total)
        return self.dep.market.transact("post_rewards", job_id, tree.root, total, cid, sender=self.account)
