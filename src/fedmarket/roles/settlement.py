"""Settlement: every reward leaf of a job, derived from chain data and the blob store alone.

The aggregator posts the root of these leaves and the auditor, the validators and the
challenger re-derive them with the same code. One leaf per member (providers, validators and
the aggregator), sorted by account; the rule each leaf follows is `protocol.rules.leaf_ok`,
which `RewardArbiter` enforces on chain:

- **Value.** In the *weight* basis, a provider's value is the weight it had aggregated across
  rounds, provable round by round (`RewardArbiter.challenge_value`). In the *scores* basis
  (validated jobs with unmasked updates, every round revealed), it is the sum over rounds of
  the positive part of the stake-weighted median of the validators' revealed scores of its
  update (Shapley values on their held-out data, flagged updates scored 0); only reveals whose
  scores tree matches the validator's attestation on chain count. That root pays only once two
  thirds of the validator stake approved it.
- **Amount.** ``pool * value // value_total`` for an unslashed provider (``value_total`` summing
  those values), 0 for everyone else; the rounding dust is refunded to the requester at
  settlement. The pool is the escrow less the protocol fee, times the miss payout if the
  validators found the quality target missed (or no validator judged it).
- **Activity and reputation.** A provider's activity is the number of rounds its update was
  aggregated in (its reputation change), the aggregator's the number of rounds, a validator's
  the rounds it attested (reputation ``2 * activity - rounds`` in the weight basis; in the
  scores basis +1 per round revealed in consensus, -1 per round attested but not revealed or
  revealed far from the consensus). A member slashed before the root gets ``-max(1, activity)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import FedMarketError, StorageError, StorageUnreachable
from ..market import Deployment
from ..protocol import rules as R
from ..protocol.encoding import BAD_INPUT, address_key, canonical_json, untrusted_json
from ..protocol.keccak import keccak
from ..protocol.receipts import ScoresReveal
from ..spec import JobSpec
from ..storage import BlobStore
from .common import (
    committed_rounds, hexbytes, joined_providers, joined_validators, listed_leaves, read_document, round_topic,
)

SCORE_SCALE = 1_000_000  # scores are committed as integers: millionths of a utility point
DEVIATION_TOLERANCE = 0.5


def score_units(value: float) -> int:
    """A contribution value as the integer a validator commits: the nearest number of millionths,
    but a positive value is never rounded down to 0 (a small honest provider's value can be below
    half a millionth, and a score of 0 pays nothing)."""
    units = int(round(float(value) * SCORE_SCALE))
    return max(units, 1) if value > 0 else units


@dataclass(frozen=True)
class Member:
    """A job member as the market records it: role word (with the slashed bit) and its stage."""

    account: str
    role_word: int
    stage: int
    final: int = R.STAGE_FINAL  # the job's final stage when read (`rules.final_stage`)

    @property
    def role(self) -> int:
        return R.role_of(self.role_word)

    @property
    def cut(self) -> bool:
        return R.cut_before_root(self.role_word, self.stage, self.final)


@dataclass(frozen=True)
class Reveal:
    """One validator's revealed scores of one round, checked against its attestation on chain."""

    validator: str
    stake: int
    scores: dict[str, int]
    flagged: tuple[str, ...]
    accuracy: int
    cid: str


def members(dep: Deployment, job_id: int) -> list[Member]:
    """Every member of the job (providers, validators, the aggregator), in account order."""
    accounts = [*joined_providers(dep, job_id), *joined_validators(dep, job_id), dep.job(job_id)["aggregator"]]
    final = R.final_stage(dep.market.call("progress", job_id)["challenge_deadline"])
    out = []
    for a in sorted(set(accounts), key=address_key):
        word, stage = dep.market.call("membership", job_id, a)
        out.append(Member(a, int(word), int(stage), final))
    return out


def scores_tree(scores: list[tuple[str, int]], validator: str):
    """The tree a validator's attestation commits its scores of a round by: a leaf per provider,
    then one naming the validator itself. An attestation is public before the scores are revealed:
    without its name in the tree, a validator that never reviewed the round could attest the same
    root and, once the scores were revealed, sign them as its own (its fee, with no work, and the
    copied view counted twice)."""
    from ..protocol.encoding import score_leaf
    from ..protocol.merkle import MerkleTree

    return MerkleTree([score_leaf(i, p, s) for i, (p, s) in enumerate(scores)] + [score_leaf(len(scores), validator, 0)])


def verified_reveals(dep: Deployment, store: BlobStore, job_id: int, round_: int, cids: list[str],
                     stakes: dict[str, int]) -> list[Reveal]:
    """The reveals among `cids` that are well formed and match their validator's commitment on chain
    (one per validator of `stakes`; anything else is ignored, so a bad reveal cannot move the consensus).
    A validator that signed two different reveals of the round has neither counted: the root it
    attested binds only the scores, so it could otherwise change the accuracy or flags counted for it
    (and the statement everyone approves) by posting another, its position in the reading order
    ground to come first. "Different" is the signed body: the same document re-encoded, or with its
    signature written otherwise, is the one reveal (anyone could post such a copy)."""
    out: dict[str, Reveal] = {}
    bodies: dict[str, bytes] = {}  # validator -> the digest of the document body it signed
    twice: set[str] = set()
    for cid in cids:
        try:
            doc = read_document(store, cid)
            v = doc["validator"]
            if doc["job_id"] != job_id or doc["round"] != round_ or not isinstance(v, str) or v not in stakes:
                continue
            body = canonical_json({k: x for k, x in doc.items() if k != "signature"})
            if bodies.get(v) == keccak(body):
                continue  # the same signed document under other bytes (anyone can re-encode one): once
            signer = ScoresReveal(job_id, round_, keccak(body)).signer(hexbytes(doc["signature"]), dep.chain_id,
                                                                      dep.disputes.address)
            if signer != v:  # its accuracy and flags are the validator's only if it signed them
                continue
            scores = [(e["provider"], int(e["score"])) for e in doc["scores"]]
            root = scores_tree(scores, v).root
            reveal = Reveal(v, stakes[v], dict(scores), tuple(doc.get("flagged", [])), int(doc["accuracy"]), cid)
        except StorageUnreachable:
            raise  # says nothing of the reveal: look again later
        except (StorageError, *BAD_INPUT):
            continue  # anyone can name a CID here: one that is no reveal is passed over
        committed = dep.disputes.call("attestation_of", job_id, round_, v)
        if committed != b"\x00" * 32 and root == committed:
            if v in out:
                twice.add(v)
            out[v], bodies[v] = reveal, keccak(body)
    return [out[v] for v in sorted(out, key=address_key) if v not in twice]


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


def _activity(dep: Deployment, job_id: int, docs: list[dict], validators: list[str]) -> tuple[dict, dict]:
    """(weight aggregated, rounds in) of every provider, and rounds attested of every validator."""
    weight: dict[str, int] = {}
    rounds_in: dict[str, int] = {}
    for doc in docs:
        for u in doc["updates"]:
            p = u["provider"]
            weight[p] = weight.get(p, 0) + int(u["weight"])
            rounds_in[p] = rounds_in.get(p, 0) + 1
    for v in validators:
        rounds_in[v] = sum(dep.disputes.call("attestation_of", job_id, r, v) != b"\x00" * 32 for r in range(len(docs)))
    return weight, rounds_in


def _validator_delta(v: str, rounds, consensus: list[dict[str, int]], by_round: list[list[Reveal]], attested) -> int:
    """Scores-basis reputation of a validator: +1 per round revealed near the consensus, -1 per
    round attested but not revealed or revealed far from it."""
    delta = 0
    for c, cons, revealed in zip(rounds, consensus, by_round):
        mine = next((r for r in revealed if r.validator == v), None)
        if mine is None:
            delta -= 1 if attested(c.round, v) else 0
            continue
        dist = sum(abs(mine.scores.get(p, 0) - m) for p, m in cons.items())
        scale = sum(abs(m) for m in cons.values())
        delta += 1 if dist <= DEVIATION_TOLERANCE * max(scale, 1) else -1
    return delta


def reward_document(dep: Deployment, store: BlobStore, job_id: int, spec: JobSpec, reveals: dict[int, list[str]],
                    basis: int | None = None, members_of=None) -> dict:
    """The job's rewards document: every leaf, the totals, and the inputs they came from. The
    basis is the scores basis when the job can have one and every round has counted reveals,
    else the weight basis (or `basis` if given). Each round's (provider, weight) updates come from
    `members_of(round)` if given (an auditor that re-derives withheld rounds), else from its metrics
    document's list, which must form the committed updates root (`common.listed_leaves`): a member
    posting the root by a list the tree does not hold would be slashed for it."""
    rounds = committed_rounds(dep, job_id)
    if members_of is None:
        def members_of(r: int) -> list[tuple[str, int]]:
            return [(p, w) for p, _, w in listed_leaves(store, rounds[r])]
    docs = [{"updates": [{"provider": p, "weight": w} for p, w in members_of(c.round)]} for c in rounds]
    # read before the members: a slash landing after it makes the post revert, not the root wrong
    slashes = int(dep.market.call("slashes", job_id))
    mem = members(dep, job_id)
    stakes = joined_validators(dep, job_id)
    validators = [m.account for m in mem if m.role == R.Role.VALIDATOR]
    weight, activity = _activity(dep, job_id, docs, validators)
    by_round = [verified_reveals(dep, store, job_id, c.round, reveals.get(c.round, []), stakes) for c in rounds]
    can_score = bool(validators) and spec.rule != R.Rule.SECURE_SUM  # the contracts keep no scores for it
    if basis is None:
        basis = R.Basis.SCORES if can_score and rounds and all(by_round) else R.Basis.WEIGHT
    if basis == R.Basis.SCORES and not (can_score and all(by_round)):
        raise FedMarketError(f"job {job_id}: no scores basis without validators' reveals for every round")

    value = {m.account: 0 for m in mem if m.role == R.Role.PROVIDER}
    consensus: list[dict[str, int]] = []
    for doc, revealed in zip(docs, by_round):
        cons = {}
        for u in doc["updates"]:
            p = u["provider"]
            if basis == R.Basis.SCORES:
                cons[p] = weighted_median([r.scores.get(p, 0) for r in revealed], [r.stake for r in revealed])
                value[p] += max(cons[p], 0)
            else:
                value[p] += int(u["weight"])
        consensus.append(cons)

    quality, gate_met = _quality_gate(spec, basis, by_round)
    terms = dep.terms(job_id)
    fees = R.RoleFees.of(terms, int(dep.job(job_id)["n_validators"]))
    pool_ = R.pool(spec.reward.escrow, int(dep.market.call("FEE_BPS")), terms.miss_payout_bps, gate_met, fees.reserved)
    value_total = sum(value[m.account] for m in mem if m.role == R.Role.PROVIDER and not m.cut)

    def attested(r: int, v: str) -> bool:
        return dep.disputes.call("attestation_of", job_id, r, v) != b"\x00" * 32

    leaves = []
    for i, m in enumerate(mem):
        v_raw = value.get(m.account, 0)
        a = activity.get(m.account, 0) if m.role != R.Role.AGGREGATOR else len(rounds)
        amount, delta = R.leaf_due(m.role, v_raw, a, len(rounds), basis, pool_, value_total, m.cut, fees)
        if m.role == R.Role.VALIDATOR and basis == R.Basis.SCORES and not m.cut:
            delta = _validator_delta(m.account, rounds, consensus, by_round, attested)
        leaves.append({"index": i, "account": m.account, "role": m.role, "amount": str(amount),
                       "reputation_delta": delta, "value": v_raw, "activity": a, "weight": weight.get(m.account, 0)})
    total = sum(int(leaf["amount"]) for leaf in leaves)
    return {
        "job_id": job_id,
        "leaves": leaves,
        "total": str(total),
        "value_total": str(value_total),
        "pool": str(pool_),
        "fees": {"aggregator_per_round": str(fees.aggregator), "validator_per_attestation": str(fees.validator),
                 "reserved": str(fees.reserved)},
        "basis": int(basis),
        "gate_met": gate_met,
        "reveals": {str(c.round): [r.cid for r in rv] for c, rv in zip(rounds, by_round)},
        "slashed": [m.account for m in mem if m.cut],
        "slashes": slashes,
        "quality": quality,
    }


def _quality_gate(spec: JobSpec, basis: int, by_round: list) -> tuple[dict | None, bool]:
    """(the rewards document's quality entry, whether the gate is met): met without a target; with
    one, in the scores basis, the validators' stake-weighted median accuracy of the best round's
    model against it (every round's model is public, so a requester whose Sybil poisons the last
    round, with a huge claimed weight, still holds the good one); never in the weight basis."""
    target = spec.quality.target_accuracy
    if target is None:
        return None, True
    if basis != R.Basis.SCORES:
        return {"target": target, "accuracy": None, "met": False}, False
    accs = [weighted_median([r.accuracy for r in rev], [r.stake for r in rev]) for rev in by_round]
    best = max(range(len(accs)), key=lambda i: (accs[i], i))
    met = accs[best] >= round(target * SCORE_SCALE)
    return {"target": target, "accuracy": accs[best] / SCORE_SCALE, "round": best, "met": met}, met


def mailbox_reveals(dep: Deployment, mailbox, job_id: int) -> dict[int, list[str]]:
    """The scores CIDs validators revealed on the mailbox, per committed round (unverified: see verified_reveals)."""
    reveals: dict[int, list[str]] = {}
    for c in committed_rounds(dep, job_id):
        for raw in mailbox.read(round_topic(job_id, c.round) + "-reveals"):
            try:
                cid = untrusted_json(raw)["scores_cid"]
            except BAD_INPUT:
                continue
            if isinstance(cid, str):
                reveals.setdefault(c.round, []).append(cid)
    return reveals


def rewards_topic(job_id: int) -> str:
    return f"job-{job_id}-rewards"


def statement_of(doc: dict) -> tuple[bytes, int, int, bool]:
    """(root, total, value total, gate met): what validators approve and `post_rewards` posts."""
    from ..protocol.proofs import reward_tree

    return reward_tree(doc["leaves"]).root, int(doc["total"]), int(doc["value_total"]), bool(doc["gate_met"])


def statement_key(statement: tuple) -> bytes:
    """The hash a reward statement's approvals are counted under (`Disputes.approve_rewards`)."""
    import eth_abi

    from ..protocol.keccak import keccak

    root, total, value_total, gate_met = statement
    return keccak(eth_abi.encode(["bytes32", "uint256", "uint256", "bool"], [root, total, value_total, gate_met]))


def submit_reward_approvals(dep: Deployment, mailbox, sender, job_id: int, statement: tuple,
                            posted: list[bytes] | None = None) -> list:
    """Put the validators' signed approvals of a scores-basis statement (posted on the mailbox, or
    the messages `posted`) on chain (anyone may)."""
    from ..protocol.receipts import RewardsApproval

    root, total, value_total, gate_met = statement
    chosen: dict[str, bytes] = {}
    for raw in mailbox.read(rewards_topic(job_id)) if posted is None else posted:
        try:
            msg = untrusted_json(raw)
            if (msg["reward_root"] != "0x" + root.hex() or int(msg["reward_total"]) != total
                    or int(msg["value_total"]) != value_total or bool(msg["gate_met"]) != gate_met):
                continue
            sig = bytes.fromhex(msg["signature"].removeprefix("0x"))
            v = RewardsApproval(job_id, root, total, value_total, gate_met).signer(sig, dep.chain_id, dep.disputes.address)
        except BAD_INPUT:
            continue
        if v != msg.get("validator") or v in chosen:
            continue
        if (int(dep.market.call("membership", job_id, v)[0]) != R.Role.VALIDATOR
                or dep.disputes.call("rewards_signed", job_id, statement_key(statement), v)):
            continue
        chosen[v] = sig
    if not chosen:
        return []
    ordered = sorted(chosen, key=address_key)
    return [dep.disputes.transact("approve_rewards", job_id, root, total, value_total, gate_met, ordered,
                                  [chosen[v] for v in ordered], sender=sender)]


def post_reward_root(dep: Deployment, store: BlobStore, mailbox, account, job_id: int, doc: dict):
    """Publish a rewards document (`reward_document`) and post the root of its leaves from
    `account`: the aggregator's last step, and, once the aggregator was slashed (a wrong root, or
    none in time), what any provider or validator of the job does so that the providers are paid.
    A scores-basis root goes with the validators' approvals of that very statement, submitted first."""
    statement = statement_of(doc)
    cid = store.put(canonical_json(doc))
    if doc["basis"] == R.Basis.SCORES:
        submit_reward_approvals(dep, mailbox, account, job_id, statement)
    root, total, value_total, gate_met = statement
    return dep.market.transact("post_rewards", job_id, root, total, value_total, doc["basis"], gate_met, cid,
                               int(doc["slashes"]), sender=account)


def post_orphaned_root(dep: Deployment, store: BlobStore, mailbox, account, job_id: int, spec: JobSpec,
                       members_of=None):
    """Post the reward root of a job whose aggregator was slashed (`root_orphaned`) as one of its
    providers or validators: the rule's document (scores basis once approved, else the weight basis),
    each round's members from `members_of` (an `Auditor`'s, which re-derives a round whose
    document is withheld or lies from the mailbox) or else from its checked metrics document."""
    doc = reward_document(dep, store, job_id, spec, mailbox_reveals(dep, mailbox, job_id), members_of=members_of)
    return post_reward_root(dep, store, mailbox, account, job_id, doc)


def root_orphaned(dep: Deployment, job_id: int) -> bool:
    """Whether the job waits for someone other than its aggregator to post the reward root: every
    round is in, no root stands and the aggregator was slashed (for a wrong root, or for none)."""
    job = dep.job(job_id)
    word, _ = dep.market.call("membership", job_id, job["aggregator"])
    return (job["state"] == R.JobState.TRAINING and int(job["current_round"]) == int(job["rounds"])
            and R.is_slashed(word))
