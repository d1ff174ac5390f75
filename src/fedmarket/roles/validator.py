"""Validator role: re-checks each round, scores every contribution on its own held-out data, attests."""

from __future__ import annotations

import time

import numpy as np
from eth_utils import is_address

from ..chain import Account, Receipt
from ..errors import FedMarketError, MissingAfterQuorum, StorageUnreachable
from ..fl.quantize import dequantize, quantize
from ..jobmodel import job_model
from ..market import Deployment
from ..protocol import rules as R
from ..protocol.encoding import BAD_INPUT, address_key, canonical_json, untrusted_json
from ..protocol.keccak import keccak
from ..protocol.receipts import Attestation, Misbehaviour, Rejection, ScoresReveal
from ..scoring import score_round
from ..storage import BlobStore, Mailbox
from .auditor import Auditor
from .common import (
    DataRole,
    check_funds,
    claim_reward,
    committed_rounds,
    hex32,
    hexbytes,
    load_spec,
    round_accumulator,
    round_topic,
)
from .provider import training_seed
from .sealed import conflicting_seal, sealed
from .settlement import (
    SCORE_SCALE,
    mailbox_reveals,
    reward_document,
    rewards_topic,
    score_units,
    scores_tree,
    statement_of,
)


class Validator(DataRole):
    """A staked checker: attests a round only after recomputing it, and commits its scores."""

    ROLE = "validator"

    def __init__(self, dep: Deployment, account: Account, store: BlobStore, mailbox: Mailbox, X: np.ndarray, y: np.ndarray):
        super().__init__(dep, account, store, mailbox, X, y)
        self.auditor = Auditor(dep, store)
        # seconds a round whose data is missing waits before this validator rejects it: anyone on a
        # shared store can delete a blob, and the aggregator's process puts it back from its copy
        # (0: reject at once, as an in-process judge that looks once must)
        self.data_grace = 0.0
        self._missing_since: dict[tuple[int, int], float] = {}
        self._docs: dict[tuple[int, int], dict] = {}  # sealed scores, until revealed
        self._seen: dict[int, dict[str, tuple[int, int]]] = {}  # per job: provider -> (rounds seen, rounds flagged)

    def inspect(self, job_id: int):
        """The job's spec, once its terms and this validator's held-out data check (see `checked_spec`)."""
        return self.checked_spec(job_id)

    def join(self, job_id: int, stake: int | None = None) -> Receipt:
        """Check the job and this validator's data and funds, then join with (at least) the job's validator stake."""
        self.inspect(job_id)
        amount = int(self.dep.job(job_id)["validator_stake"]) if stake is None else stake
        check_funds(self.dep, self.address, amount, f"the validator stake of job {job_id}", R.Role.VALIDATOR)
        self.dep.token.transact("approve", self.dep.market.address, amount, sender=self.account)
        return self.dep.market.transact("join_validator", job_id, amount, sender=self.account)

    def review(self, job_id: int, round_: int) -> dict | None:
        """Recompute the round. If right, score each update and post a signed attestation that
        commits to the scores (their root) without revealing them. If wrong, post a signed
        rejection: whether a dispute game can prove the fault (a wrong chunk, an invalid update)
        or only validators can judge it (a secure round's unmasking, the committed epsilon,
        unavailable data), a validator that stays silent would be counted absent. Returns the
        posted message (attestation or rejection); `submit_own_vote` puts it on chain if nobody
        else has."""
        spec = load_spec(self.dep, self.store, job_id)
        rounds = committed_rounds(self.dep, job_id)
        if round_ >= len(rounds):
            raise FedMarketError(f"job {job_id} has not committed round {round_}")
        committed = rounds[round_]
        check, ev = self.auditor.check_round(spec, job_id, committed, rounds)
        if check.unavailable and self.dep.disputes.call("has_quorum", job_id, round_):
            # a rejection now fails nobody and costs this validator its fee for the round: data deleted
            # after quorum (anyone on a shared store can) is looked for again, as long as the votes are open
            raise MissingAfterQuorum(f"round {round_}: {check.problem}; the round has quorum, so looking again "
                                     "rather than rejecting it")
        if check.unavailable and self.data_grace > 0:
            since = self._missing_since.setdefault((job_id, round_), time.monotonic())
            if time.monotonic() - since < self.data_grace:
                raise StorageUnreachable(f"round {round_}: {check.problem}; looking again for up to "
                                         f"{self.data_grace:.0f} s before rejecting it")
        if not check.ok:  # provable or not, a wrong round gets this validator's vote against it
            return self._reject(job_id, round_, committed)
        if sealed(spec) and conflicting_seal(self.dep, self.mailbox, ev.metrics, job_id, round_,
                                             self.dep.job(job_id)["aggregator"]):
            return self._reject(job_id, round_, committed)  # two seals: one let a late commitment in
        jm = job_model(spec, self.store)
        Xn = jm.features(self.X)
        scored = None
        values = np.zeros(len(ev.updates))
        if ev.updates and not spec.privacy.secure:  # masked updates cannot be scored one by one
            deltas = dequantize(np.stack([u.q for u in ev.updates]))
            try:
                scored = score_round(jm.model, jm.params(ev.prev_model), deltas, Xn, self.y,
                                     [u.weight for u in ev.updates], seed=round_, metric="neg_loss", bound=True)
                values = scored.rewardable
            except (FedMarketError, ValueError, FloatingPointError, OverflowError):
                # an update that makes the model's outputs non-finite (in range, but past what float32
                # holds) leaves nothing to score: the round is right, so it is attested all the same
                # (a vote always comes out of a review), with every score zero
                scored = None
        scores = [(u.provider, score_units(v)) for u, v in zip(ev.updates, values)]
        root = scores_tree(scores, self.address).root
        flagged = [ev.updates[i].provider for i in np.flatnonzero(scored.report.flagged)] if scored else []
        # only the model sent back is slashable: relative flags are for the round's pay alone
        slashable = [u.provider for u in ev.updates if R.sent_back(u.q)] if not spec.privacy.secure else []
        if slashable and self._training_sends_back(jm, job_id, round_, ev.prev_model):
            slashable = []  # the job's own training moves nothing: an all-zero update is honest here
        doc = {
            "job_id": job_id, "round": round_, "validator": self.address,
            "method": scored.method if scored else ("masked: aggregate only" if spec.privacy.secure else "none"),
            "scores": [{"provider": p, "score": s} for p, s in scores],
            "flagged": flagged,
            "accuracy": _accuracy_units(jm, ev.model, self.X, self.y),
            "scores_root": "0x" + root.hex(),
        }
        self._docs[(job_id, round_)] = doc
        seen = self._seen.setdefault(job_id, {})
        for u in ev.updates:
            n_in, n_flag = seen.get(u.provider, (0, 0))
            seen[u.provider] = (n_in + 1, n_flag + (u.provider in slashable))
        sig = Attestation(job_id, round_, committed.model_root, root).sign(self.account.key, self.dep.chain_id, self.dep.disputes.address)
        message = {"validator": self.address, "round": round_, "model_root": "0x" + committed.model_root.hex(),
                   "scores_root": "0x" + root.hex(), "signature": "0x" + sig.hex()}
        self.mailbox.post(round_topic(job_id, round_) + "-attestations", canonical_json(message))
        return message

    def _training_sends_back(self, jm, job_id: int, round_: int, q_global: np.ndarray) -> bool:
        """Whether one round of the job's own local training, from the round's starting model on this
        validator's held-out data, quantizes to all zeros as well. A requester can post a job whose
        training cannot move the fixed-point model (a learning rate far below the quantization step,
        a network whose parameters get no gradient): every honest update is then all zeros, and
        reporting them as the model sent back would hand the requester every honest stake. Run only
        when some update is all zeros, so an honest round costs nothing more."""
        try:
            delta = jm.train(q_global, self.X, self.y, seed=training_seed(self.address, job_id, round_), round_=round_)
            return R.sent_back(quantize(delta))
        except (FedMarketError, ValueError, FloatingPointError, OverflowError):
            return True  # training fails on this job: nobody is judged by it

    def submit_own_vote(self, job_id: int, round_: int, message: dict | None = None) -> list[Receipt]:
        """Put this validator's vote on the round on chain, unless it is there already (the
        aggregator batches votes, but a validator never depends on it: one that withheld them could
        otherwise have every present validator slashed as absent). With `message` (the vote
        `review` posted, as its process keeps it) the vote goes from there, and is posted again:
        anyone on the mailbox could have deleted the posted copy."""
        me = self.account
        if message is None:
            return [*submit_attestations(self.dep, self.mailbox, me, job_id, round_, only=me.address),
                    *submit_rejections(self.dep, self.mailbox, me, job_id, round_, only=me.address)]
        raw = canonical_json(message)
        kind = "-attestations" if "scores_root" in message else "-rejections"
        self.mailbox.post(round_topic(job_id, round_) + kind, raw)
        submit = submit_attestations if "scores_root" in message else submit_rejections
        return submit(self.dep, self.mailbox, me, job_id, round_, only=me.address, posted=[raw])

    def _reject(self, job_id: int, round_: int, committed) -> dict:
        sig = Rejection(job_id, round_, committed.model_root).sign(self.account.key, self.dep.chain_id, self.dep.disputes.address)
        message = {"validator": self.address, "round": round_, "model_root": "0x" + committed.model_root.hex(),
                   "signature": "0x" + sig.hex()}
        self.mailbox.post(round_topic(job_id, round_) + "-rejections", canonical_json(message))
        return message

    def sealed(self, job_id: int) -> tuple[dict[int, dict], dict[str, list[int]]]:
        """What this validator keeps between review and reveal for a job: its sealed scores documents
        by round, and per provider (rounds seen, rounds flagged). A process persists them."""
        docs = {r: d for (j, r), d in self._docs.items() if j == job_id}
        return docs, {p: list(v) for p, v in self._seen.get(job_id, {}).items()}

    def restore(self, job_id: int, docs: dict[int, dict], seen: dict[str, list[int]]) -> None:
        """Take back what `sealed` returned (after a restart)."""
        for r, doc in docs.items():
            self._docs[(job_id, int(r))] = doc
        self._seen[job_id] = {p: (int(v[0]), int(v[1])) for p, v in seen.items()}

    def approve_rewards(self, job_id: int) -> dict | None:
        """Re-derive the job's scores-basis reward document from the chain, the blob store and the
        revealed scores, and post a signed approval of its statement (root, totals, quality gate:
        what a scores-basis `post_rewards` needs); returns it, or None when the job has no scores
        basis (masked updates, or a round without counted reveals). FedMarketError while the
        votes are open (`Disputes.votes_closed`): a statement signed before the last vote is in
        would leave that validator's fee out."""
        from ..protocol.receipts import RewardsApproval

        if not self.dep.disputes.call("votes_closed", job_id):
            raise FedMarketError(f"job {job_id}: validators' votes still open; the reward statement is not final")

        spec = load_spec(self.dep, self.store, job_id)
        doc = reward_document(self.dep, self.store, job_id, spec, mailbox_reveals(self.dep, self.mailbox, job_id))
        if doc["basis"] != R.Basis.SCORES:
            return None
        root, total, value_total, gate_met = statement_of(doc)
        sig = RewardsApproval(job_id, root, total, value_total, gate_met).sign(self.account.key, self.dep.chain_id,
                                                                               self.dep.disputes.address)
        message = {"validator": self.address, "reward_root": "0x" + root.hex(), "reward_total": str(total),
                   "value_total": str(value_total), "gate_met": gate_met, "signature": "0x" + sig.hex()}
        self.mailbox.post(rewards_topic(job_id), canonical_json(message))
        return message

    def claim(self, job_id: int) -> Receipt:
        """Claim this validator's leaf: its stake back to free stake and its reputation change."""
        return claim_reward(self.dep, self.store, self.account, job_id)

    def reveal(self, job_id: int, round_: int) -> str | None:
        """Publish the scores committed for a round, once the job's votes are closed for good
        (`Disputes.votes_closed`), so no validator can copy another's scores: no attestation counts
        any more. (Quorum alone was not enough: a validator that never reviewed could attest
        a copy of a revealed document under its own address until the votes closed, and be paid
        and counted for it.) Returns the scores document's CID, or None if this validator has
        nothing on chain to reveal."""
        doc = self._docs.get((job_id, round_))
        if doc is None:
            return None
        if not self.dep.disputes.call("votes_closed", job_id):
            raise FedMarketError(f"job {job_id}: validators' votes still open: round {round_}'s scores stay sealed")
        if "0x" + self.dep.disputes.call("attestation_of", job_id, round_, self.address).hex() != doc["scores_root"]:
            return None
        # signed: the root it attested binds the scores, not the accuracy and flags beside them
        sig = ScoresReveal(job_id, round_, keccak(canonical_json(doc))).sign(self.account.key, self.dep.chain_id,
                                                                             self.dep.disputes.address)
        cid = self.store.put(canonical_json({**doc, "signature": "0x" + sig.hex()}))
        self.mailbox.post(round_topic(job_id, round_) + "-reveals", reveal_message(self.address, cid))
        return cid

    def report_misbehaviour(self, job_id: int) -> list[str]:
        """Sign `Misbehaviour(job, provider)` for every provider this validator found sending the model
        back (`rules.sent_back`: every value zero) in most of the rounds it took part in; returns
        those providers. Flags relative to the round (a boosted or vanishing norm, a direction, a
        near-copy) only cost the round's reward: the round's other providers set them."""
        reported = []
        for provider, (n_in, n_flag) in sorted(self._seen.get(job_id, {}).items()):
            if n_flag * 2 > n_in:
                sig = Misbehaviour(job_id, provider).sign(self.account.key, self.dep.chain_id, self.dep.disputes.address)
                self.mailbox.post(misbehaviour_topic(job_id), canonical_json(
                    {"validator": self.address, "provider": provider, "signature": "0x" + sig.hex()}))
                reported.append(provider)
        return reported


def reveal_message(validator: str, scores_cid: str) -> bytes:
    """The mailbox message naming a validator's revealed scores document (the same bytes every time)."""
    return canonical_json({"validator": validator, "scores_cid": scores_cid})


def misbehaviour_topic(job_id: int) -> str:
    return f"job-{job_id}-misbehaviour"


def submit_misbehaviour(dep: Deployment, mailbox: Mailbox, sender: Account, job_id: int) -> list[Receipt]:
    """Slash every provider that validators holding two thirds of the job's validator stake reported
    (anyone may submit; the caller earns half the slashed stake)."""
    by_provider: dict[str, dict[str, bytes]] = {}
    for raw in mailbox.read(misbehaviour_topic(job_id)):
        try:
            msg = untrusted_json(raw)
            sig = hexbytes(msg["signature"])
            if not is_address(msg["provider"]):
                continue
            signer = Misbehaviour(job_id, msg["provider"]).signer(sig, dep.chain_id, dep.disputes.address)
        except BAD_INPUT:
            continue  # anyone can post here: a message that is not a signed report is passed over
        if signer == msg.get("validator"):
            by_provider.setdefault(msg["provider"], {})[signer] = sig
    total = int(dep.job(job_id)["validator_total_stake"])
    receipts = []
    for provider, sigs in sorted(by_provider.items()):
        if dep.market.call("membership", job_id, provider)[0] != R.Role.PROVIDER:  # already slashed (or not a provider)
            continue
        stakes = {v: dep.market.call("membership", job_id, v) for v in sigs}
        voters = sorted((v for v, (role, _) in stakes.items() if role == R.Role.VALIDATOR), key=address_key)
        if not voters or sum(stakes[v][1] for v in voters) * 3 < total * 2:
            continue
        receipts.append(dep.disputes.transact("slash_provider", job_id, provider, voters, [sigs[v] for v in voters],
                                              sender=sender))
    return receipts


def submit_attestations(dep: Deployment, mailbox: Mailbox, sender: Account, job_id: int, round_: int,
                        only: str | None = None, posted: list[bytes] | None = None) -> list[Receipt]:
    """Put a round's posted attestations (or the messages `posted`) on chain (anyone may; the
    aggregator has the most reason to). Only well-signed attestations of the committed model by
    validators of the job that have not voted yet are sent, one per validator (only validator
    `only`'s if given); those sharing a scores root go in one transaction. Nothing once the votes
    are closed (`Disputes.votes_closed`): no attestation counts any more."""
    if dep.disputes.call("votes_closed", job_id):
        return []
    rounds = committed_rounds(dep, job_id)
    data = rounds[round_].data
    proof = round_accumulator(dep, job_id, rounds).proof(round_)
    model_root = rounds[round_].model_root
    chosen: dict[str, tuple[bytes, bytes]] = {}  # validator -> (scores root, signature), as parsed and checked
    for raw in mailbox.read(round_topic(job_id, round_) + "-attestations") if posted is None else posted:
        try:
            msg = untrusted_json(raw)
            v = msg["validator"]
            scores_root = hex32(msg["scores_root"])
            sig = hexbytes(msg["signature"])
            if not isinstance(v, str) or v in chosen or (only is not None and v != only) or not any(scores_root):
                continue  # (an empty scores root is refused on chain: it would stop the whole batch)
            if Attestation(job_id, round_, model_root, scores_root).signer(sig, dep.chain_id, dep.disputes.address) != v:
                continue
        except BAD_INPUT:
            continue  # anyone can post here: a message that is not a signed attestation is passed over
        if dep.market.call("membership", job_id, v)[0] != R.Role.VALIDATOR:  # not (or no longer) a validator of the job
            continue
        if dep.disputes.call("attestation_of", job_id, round_, v) == b"\x00" * 32 and not dep.disputes.call("rejected", job_id, round_, v):
            chosen[v] = (scores_root, sig)
    by_root: dict[bytes, list[str]] = {}
    for v, (scores_root, _) in chosen.items():
        by_root.setdefault(scores_root, []).append(v)
    receipts = []
    for root, voters in sorted(by_root.items()):
        voters.sort(key=address_key)
        # what was checked is what is sent: a signature written without its 0x passed the check, and
        # re-parsed from the text it stopped every batch it was in
        receipts.append(dep.disputes.transact("attest", job_id, round_, data, proof, root, voters,
                                              [chosen[v][1] for v in voters], sender=sender))
    return receipts


def submit_rejections(dep: Deployment, mailbox: Mailbox, sender: Account, job_id: int, round_: int,
                      only: str | None = None, posted: list[bytes] | None = None) -> list[Receipt]:
    """Put a round's posted rejections (or the messages `posted`) on chain (anyone may):
    well-signed, by validators of the job (only validator `only` if given) that have not voted on
    the round yet."""
    rounds = committed_rounds(dep, job_id)
    c = rounds[round_]
    chosen: dict[str, bytes] = {}
    for raw in mailbox.read(round_topic(job_id, round_) + "-rejections") if posted is None else posted:
        try:
            msg = untrusted_json(raw)
            v = msg["validator"]
            sig = hexbytes(msg["signature"])
            if not isinstance(v, str) or (only is not None and v != only):
                continue
            if Rejection(job_id, round_, c.model_root).signer(sig, dep.chain_id, dep.disputes.address) != v:
                continue
        except BAD_INPUT:
            continue
        if v in chosen or dep.market.call("membership", job_id, v)[0] != R.Role.VALIDATOR:
            continue
        if dep.disputes.call("attestation_of", job_id, round_, v) == b"\x00" * 32 and not dep.disputes.call("rejected", job_id, round_, v):
            chosen[v] = sig
    if not chosen:
        return []
    ordered = sorted(chosen, key=address_key)
    return [dep.disputes.transact("reject", job_id, round_, c.data, round_accumulator(dep, job_id, rounds).proof(round_),
                                  ordered, [chosen[v] for v in ordered], sender=sender)]


def _accuracy_units(jm, model: np.ndarray, X: np.ndarray, y: np.ndarray) -> int:
    """The model's accuracy on the validator's data in score units; 0 for a model whose outputs are
    not finite (what an update at the edge of the fixed-point range can make of a float32 network)."""
    try:
        acc = float(jm.accuracy(model, X, y))
    except (FedMarketError, ValueError, FloatingPointError, OverflowError):
        return 0
    return int(round(acc * SCORE_SCALE)) if np.isfinite(acc) else 0
