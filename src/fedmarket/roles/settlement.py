"""Settlement: every reward leaf of a job, derived from chain data and the blob store alone.

The aggregator posts the root of these leaves and the auditor re-derives them with the same code:

- **Contribution.** With validators (and unmasked updates), a provider's value in a round is the
  stake-weighted median of the validators' revealed scores of its update (Shapley values on
  their held-out data, flagged updates scored 0); only reveals whose scores tree matches the
  validator's attestation on chain count. Its job value is the sum over rounds of the positive
  parts. Without validators, or when updates are masked (secure aggregation), the value is the
  weight the provider had aggregated across rounds (participation).
- **Slashed providers** (validator supermajority) get nothing.
- **Quality gate.** If the spec sets a target accuracy, the stake-weighted median of the
  validators' accuracy of the final model decides: missed, only `miss_payout_bps` of the pool is
  paid and `settle` refunds the rest to the requester.
- **Validators** get a leaf too (amount 0, their stake back on claim) whose reputation change is
  +1 per round they revealed in consensus and -1 per round they attested but did not reveal, or
  revealed scores far from the consensus (relative L1 distance above `DEVIATION_TOLERANCE`).
- The pool is split in exact integer arithmetic (largest remainder, ties to the lower index).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..errors import FedMarketError
from ..market import Deployment
from ..protocol.encoding import address_key
from ..spec import JobSpec
from ..storage import BlobStore
from .common import BPS, committed_rounds, fetch_metrics, joined_providers

SCORE_SCALE = 1_000_000
DEVIATION_TOLERANCE = 0.5


@dataclass(frozen=True)
class Reveal:
    """One validator's revealed scores of one round, checked against its attestation on chain."""

    validator: str
    stake: int
    scores: dict[str, int]
    flagged: tuple[str, ...]
    accuracy: int
    cid: str


def validator_stakes(dep: Deployment, job_id: int) -> dict[str, int]:
    return {e["validator"]: int(e["stake"]) for e in dep.market.events("ValidatorJoined", job_id=job_id)}


def verified_reveals(dep: Deployment, store: BlobStore, job_id: int, round_: int, cids: list[str],
                     stakes: dict[str, int]) -> list[Reveal]:
    """The reveals among `cids` that are well formed and match their validator's commitment on chain
    (one per validator of `stakes`; anything else is ignored, so a bad reveal cannot move the consensus)."""
    from .validator import scores_tree

    out: dict[str, Reveal] = {}
    for cid in cids:
        try:
            doc = json.loads(store.get(cid))
            v = doc["validator"]
            if doc["job_id"] != job_id or doc["round"] != round_ or v not in stakes or v in out:
                continue
            scores = [(e["provider"], int(e["score"])) for e in doc["scores"]]
            committed = dep.disputes.call("attestation_of", job_id, round_, v)
            if committed == b"\x00" * 32 or scores_tree(scores).root != committed:
                continue
            out[v] = Reveal(v, stakes[v], dict(scores), tuple(doc.get("flagged", [])), int(doc["accuracy"]), cid)
        except (FedMarketError, ValueError, KeyError, TypeError):
            continue
    return [out[v] for v in sorted(out, key=address_key)]


def weighted_median(values: list[int], weights: list[int]) -> int:
    """Stake-weighted median: the midpoint (floored) of the lower and upper weighted medians, so
    with two equal stakes neither validator alone sets a provider's score."""
    if not values:
        raise FedMarketError("weighted median of nothing")
    pairs = sorted(zip(values, weights))
    total = sum(w for _, w in pairs)
    acc, lower = 0, None
    for v, w in pairs:
        acc += w
        if lower is None and 2 * acc >= total:
            lower = v
        if 2 * acc > total:
            return (lower + v) // 2
    return (lower + pairs[-1][0]) // 2


def split(pool: int, values: list[int]) -> list[int]:
    """`pool` in proportion to non-negative integer `values`, exactly (largest remainder, ties to the lower index)."""
    total = sum(values)
    if total <= 0:
        return [0] * len(values)
    base = [pool * v // total for v in values]
    rem = [pool * v % total for v in values]
    for i in sorted(range(len(values)), key=lambda i: (-rem[i], i))[: pool - sum(base)]:
        base[i] += 1
    return base


def reward_document(dep: Deployment, store: BlobStore, job_id: int, spec: JobSpec, reveals: dict[int, list[str]]) -> dict:
    """The job's rewards document: every leaf, the total, and the inputs (reveals, quality) they came from."""
    rounds = committed_rounds(dep, job_id)
    docs = [fetch_metrics(store, c) for c in rounds]
    providers = joined_providers(dep, job_id)
    stakes = validator_stakes(dep, job_id)
    validators = sorted(stakes, key=address_key)
    by_round = [verified_reveals(dep, store, job_id, c.round, reveals.get(c.round, []), stakes) for c in rounds]
    scored = bool(validators) and not spec.privacy.secure and bool(rounds) and all(by_round)

    value = {p: 0 for p in providers}
    weight = {p: 0 for p in providers}
    rounds_in = {p: 0 for p in providers}
    consensus: list[dict[str, int]] = []
    for doc, revealed in zip(docs, by_round):
        cons = {}
        for u in doc["updates"]:
            p = u["provider"]
            weight[p] = weight.get(p, 0) + int(u["weight"])
            rounds_in[p] = rounds_in.get(p, 0) + 1
            if scored:
                cons[p] = weighted_median([r.scores.get(p, 0) for r in revealed], [r.stake for r in revealed])
                value[p] += max(cons[p], 0)
            else:
                value[p] += int(u["weight"])
        consensus.append(cons)
    slashed = [p for p in providers if int(dep.market.call("membership", job_id, p)[0]) >= 128]
    for p in slashed:
        value[p] = 0

    escrow = spec.reward.escrow
    pool = escrow - escrow * int(dep.market.call("FEE_BPS")) // BPS
    quality = None
    if spec.quality.target_accuracy is not None:
        last = by_round[-1] if by_round else []
        acc = weighted_median([r.accuracy for r in last], [r.stake for r in last]) if last else None
        met = acc is not None and acc >= round(spec.quality.target_accuracy * SCORE_SCALE)
        quality = {"target": spec.quality.target_accuracy, "accuracy": None if acc is None else acc / SCORE_SCALE, "met": met}
        if not met:
            pool = pool * spec.quality.miss_payout_bps // BPS
    amounts = split(pool, [value[p] for p in providers])

    leaves = [
        {
            "index": i,
            "account": p,
            "amount": str(amounts[i]),
            "reputation_delta": -max(1, rounds_in[p]) if p in slashed else rounds_in[p],
            "weight": weight[p],
            "value": value[p],
        }
        for i, p in enumerate(providers)
    ]
    for j, v in enumerate(validators):
        delta = 0
        for c, cons, revealed in zip(rounds, consensus, by_round):
            mine = next((r for r in revealed if r.validator == v), None)
            if mine is None:
                attested = dep.disputes.call("attestation_of", job_id, c.round, v) != b"\x00" * 32
                delta -= 1 if attested else 0
                continue
            if cons:
                dist = sum(abs(mine.scores.get(p, 0) - m) for p, m in cons.items())
                scale = sum(abs(m) for m in cons.values())
                delta += 1 if dist <= DEVIATION_TOLERANCE * max(scale, 1) else -1
            else:
                delta += 1
        leaves.append({"index": len(providers) + j, "account": v, "amount": "0", "reputation_delta": delta,
                       "weight": 0, "value": 0})
    total = sum(int(l["amount"]) for l in leaves)
    return {
        "job_id": job_id,
        "leaves": leaves,
        "total": str(total),
        "basis": "validator scores (stake-weighted median)" if scored else "aggregated weight",
        "reveals": {str(c.round): [r.cid for r in rv] for c, rv in zip(rounds, by_round)},
        "slashed": slashed,
        "quality": quality,
    }


def mailbox_reveals(dep: Deployment, mailbox, job_id: int) -> dict[int, list[str]]:
    """The scores CIDs validators revealed on the mailbox, per committed round (unverified: see verified_reveals)."""
    from .common import round_topic

    reveals: dict[int, list[str]] = {}
    for c in committed_rounds(dep, job_id):
        for raw in mailbox.read(round_topic(job_id, c.round) + "-reveals"):
            try:
                reveals.setdefault(c.round, []).append(json.loads(raw)["scores_cid"])
            except (ValueError, KeyError, TypeError):
                continue
    return reveals


def rewards_topic(job_id: int) -> str:
    return f"job-{job_id}-rewards"


def submit_reward_approvals(dep: Deployment, mailbox, sender, job_id: int, root: bytes, total: int) -> list:
    """Put the validators' signed approvals of (root, total) on chain (anyone may); returns the receipts."""
    from ..protocol.receipts import RewardsApproval

    chosen: dict[str, bytes] = {}
    for raw in mailbox.read(rewards_topic(job_id)):
        try:
            msg = json.loads(raw)
            if msg["reward_root"] != "0x" + root.hex() or int(msg["reward_total"]) != total:
                continue
            sig = bytes.fromhex(msg["signature"].removeprefix("0x"))
            v = RewardsApproval(job_id, root, total).signer(sig, dep.chain_id, dep.disputes.address)
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
        if v != msg.get("validator") or v in chosen:
            continue
        if int(dep.market.call("membership", job_id, v)[0]) != 3 or dep.disputes.call("rewards_signed", job_id, v):
            continue
        chosen[v] = sig
    if not chosen:
        return []
    ordered = sorted(chosen, key=address_key)
    return [dep.disputes.transact("approve_rewards", job_id, root, total, ordered, [chosen[v] for v in ordered],
                                  sender=sender)]
