"""What every role reads from the chain and the blob store: the job's spec and its committed rounds."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

import numpy as np
from multiformats import CID, multihash

from ..errors import FedMarketError, StorageError
from ..market import Deployment
from ..protocol.encoding import decode_vector, vector_root
from ..spec import JobSpec
from ..storage import BlobStore


class ProtocolViolation(FedMarketError):
    """Something committed on chain does not match the data it claims to commit to."""


def round_topic(job_id: int, round_: int) -> str:
    """Mailbox topic on which providers post their round `round_` receipts."""
    return f"job-{job_id}-round-{round_}"


def metrics_cid(metrics_hash: bytes) -> str:
    """A round's metrics_hash is the sha2-256 digest of its metrics document, so it names that blob."""
    return str(CID("base32", 1, "raw", multihash.wrap(metrics_hash, "sha2-256")))


def metrics_digest(doc_bytes: bytes) -> bytes:
    return hashlib.sha256(doc_bytes).digest()


def load_spec(dep: Deployment, store: BlobStore, job_id: int) -> JobSpec:
    """The job's spec from the blob store, checked against the hash committed on chain."""
    posted = dep.market.events("JobPosted", job_id=job_id)
    if not posted:
        raise FedMarketError(f"job {job_id} does not exist on this market")
    ev = posted[0]
    raw = store.get(ev["spec_cid"])
    spec = JobSpec.parse(raw)
    if spec.hash() != ev["spec_hash"] or spec.canonical() != raw:
        raise ProtocolViolation(f"job {job_id}: spec {ev['spec_cid']} does not hash to the committed spec hash")
    return spec


@dataclass(frozen=True)
class CommittedRound:
    """One RoundCommitted event."""

    round: int
    model_root: bytes
    model_cid: str
    updates_root: bytes
    count: int
    metrics_hash: bytes
    block: int
    epsilon_spent: int = 0

    @property
    def data(self) -> tuple:
        """The round's commitment in the clear, as the disputes contract takes it (RoundData)."""
        return (self.model_root, self.updates_root, self.count, self.metrics_hash)


def committed_rounds(dep: Deployment, job_id: int) -> list[CommittedRound]:
    evs = dep.market.events("RoundCommitted", job_id=job_id)
    rounds = [
        CommittedRound(
            e["round"], e["model_root"], e["model_cid"], e["updates_root"], e["count"], e["metrics_hash"], e.block,
            e["epsilon_spent"],
        )
        for e in evs
    ]
    return sorted(rounds, key=lambda r: r.round)


def round_seed(dep: Deployment, job_id: int, round_: int) -> bytes:
    """The public seed of round `round_`'s provider selection, as the market fixed it on chain."""
    if round_ == 0:
        started = dep.market.events("TrainingStarted", job_id=job_id)
        if not started:
            raise FedMarketError(f"job {job_id} has not started training")
        return started[0]["seed"]
    prev = [e for e in dep.market.events("RoundCommitted", job_id=job_id) if e["round"] == round_ - 1]
    if not prev:
        raise FedMarketError(f"job {job_id} has not committed round {round_ - 1}")
    return prev[0]["next_seed"]


def joined_providers(dep: Deployment, job_id: int) -> list[str]:
    """Every provider that joined the job, in address order."""
    from ..protocol.encoding import address_key

    return sorted({e["provider"] for e in dep.market.events("ProviderJoined", job_id=job_id)}, key=address_key)


def round_providers(dep: Deployment, spec: JobSpec, job_id: int, round_: int) -> list[str]:
    """The providers selected for round `round_` (all joined ones unless the spec sets per_round), in address order."""
    from ..protocol.selection import select

    members = joined_providers(dep, job_id)
    k = spec.participation.per_round
    if k == 0:
        return members
    return select(round_seed(dep, job_id, round_), job_id, round_, members, k)


def fetch_model(store: BlobStore, spec: JobSpec, committed: CommittedRound) -> np.ndarray:
    """The quantized global model a round committed, verified against its model root."""
    q = decode_vector(store.get(committed.model_cid), spec.n_params)
    if vector_root(q, spec.quantization.chunk_size) != committed.model_root:
        raise ProtocolViolation(f"round {committed.round}: model {committed.model_cid} does not match its model root")
    return q


def global_model(dep: Deployment, store: BlobStore, spec: JobSpec, job_id: int) -> tuple[int, np.ndarray]:
    """(next round number, quantized global model to train from). Round 0 starts from zeros."""
    rounds = committed_rounds(dep, job_id)
    if not rounds:
        return 0, np.zeros(spec.n_params, dtype=np.int64)
    last = rounds[-1]
    return last.round + 1, fetch_model(store, spec, last)


def fetch_metrics(store: BlobStore, committed: CommittedRound) -> dict:
    raw = store.get(metrics_cid(committed.metrics_hash))
    try:
        return json.loads(raw)
    except ValueError:
        raise StorageError(f"round {committed.round}: metrics blob is not JSON") from None


BPS = 10_000


def epsilon_after_round(spec: JobSpec, round_: int) -> int:
    """Cumulative epsilon (millionths, what `submit_round` commits) after round `round_` of a DP job; 0 without DP.

    It follows from the spec alone, so the aggregator, validators and auditors all get the same
    number. Raises PrivacyBudgetExceeded when the round would take the job past its budget."""
    if not spec.privacy.dp:
        return 0
    from ..errors import PrivacyBudgetExceeded
    from ..privacy.accountant import epsilon_for
    from ..spec import EPSILON_SCALE

    eps = epsilon_for(spec.noise_multiplier(), round_ + 1, spec.privacy.delta)
    micro = math.ceil(eps * EPSILON_SCALE)
    if micro > spec.privacy.budget_micro:
        raise PrivacyBudgetExceeded(
            f"round {round_} would bring epsilon to {eps:.6g} > budget {spec.privacy.epsilon:g} "
            f"(delta {spec.privacy.delta:g}); round refused"
        )
    return micro


def reward_leaf(dep: Deployment, store: BlobStore, account: str, job_id: int) -> tuple[dict, list[bytes]]:
    """`account`'s reward leaf and Merkle proof, rebuilt from the published rewards document."""
    from ..protocol.proofs import reward_tree

    posted = dep.market.events("RewardRootPosted", job_id=job_id)
    if not posted:
        raise FedMarketError(f"job {job_id} has no reward root yet")
    ev = posted[-1]
    leaves = json.loads(store.get(ev["rewards_cid"]))["leaves"]
    tree = reward_tree(leaves)
    if tree.root != ev["reward_root"]:
        raise ProtocolViolation(f"job {job_id}: rewards document does not match the posted reward root")
    for leaf in leaves:
        if leaf["account"] == account:
            return leaf, tree.proof(leaf["index"])
    raise FedMarketError(f"{account} has no reward leaf in job {job_id}")


def claim_reward(dep: Deployment, store: BlobStore, account, job_id: int):
    """Claim `account`'s leaf: reward, stake release and reputation change in one transaction."""
    leaf, proof = reward_leaf(dep, store, account.address, job_id)
    return dep.market.transact(
        "claim", job_id, leaf["index"], account.address, int(leaf["amount"]), int(leaf["reputation_delta"]), proof,
        sender=account,
    )
