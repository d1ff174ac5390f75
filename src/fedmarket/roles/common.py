"""What every role reads from the chain and the blob store: the job's spec and terms, its
committed rounds and their proofs, the global model, and the checks a role makes before it stakes."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from eth_utils import is_address, to_checksum_address
from multiformats import CID, multihash

from ..errors import (
    BlobTooLarge, ChainError, ConfigError, FedMarketError, PrivacyBudgetExceeded, SchemaMismatch, StorageError,
    StorageUnreachable,
)
from ..jobmodel import job_model
from ..market import Deployment, JobState, JobTerms
from ..memory import available_memory
from ..protocol import rules as R
from ..protocol.encoding import (
    BAD_INPUT, MAX_UNTRUSTED_BYTES, address_key, decode_vector, round_commitment, untrusted_json,
    vector_blob_limit, vector_root,
)
from ..protocol.merkle import RoundAccumulator
from ..protocol.proofs import updates_root
from ..protocol.receipts import ReceiptAck, UpdateReceipt
from ..protocol.selection import select
from ..spec import MAX_SPEC_BYTES, JobSpec
from ..storage import BlobStore, Mailbox


class ProtocolViolation(FedMarketError):
    """Something committed on chain does not match the data it claims to commit to."""


class TermsMismatch(FedMarketError):
    """A job's on-chain terms differ from the spec they hash to: no role stakes on such a job."""


class InsufficientFunds(FedMarketError):
    """An account cannot cover the stake, escrow or bond it is about to lock."""


#: what a role's checks before it stakes can find that no retry fixes (a spec that does not hash
#: to its commitment or is over MAX_SPEC_BYTES, terms, a schema, a module, funds): its process exits
REFUSED_BEFORE_STAKING = (TermsMismatch, ProtocolViolation, SchemaMismatch, ConfigError, BlobTooLarge, InsufficientFunds)


def round_topic(job_id: int, round_: int) -> str:
    """Mailbox topic on which providers post their round `round_` receipts."""
    return f"job-{job_id}-round-{round_}"


def topic_round(job_id: int, topic: str) -> int | None:
    """The round of job `job_id` that a mailbox topic belongs to (its receipts' topic, or one of that
    topic's suffixed ones: "-commits", "-sa-keys", "-reveals", ...), or None."""
    prefix = f"job-{job_id}-round-"
    if not topic.startswith(prefix):
        return None
    number = topic[len(prefix):].split("-", 1)[0]
    return int(number) if number.isdigit() else None


def claimed_senders(raws: list[bytes], field: str = "provider") -> set[str]:
    """Who claims to have posted these messages (signed envelopes or plain receipts), unverified:
    cheap, for a process deciding whether to wait; the phase itself verifies every message."""
    out: set[str] = set()
    for raw in raws:
        try:
            env = untrusted_json(raw)
            body = untrusted_json(env["signed"]) if "signed" in env else env
            out.add(body[field])
        except BAD_INPUT:
            continue
    return out


def hexbytes(value: str) -> bytes:
    """Bytes of a hex string, with or without its 0x; ValueError for anything else (a number, a
    list: what a message from the mailbox may hold instead)."""
    if not isinstance(value, str):
        raise ValueError(f"not a hex string: {value!r:.40}")
    return bytes.fromhex(value.removeprefix("0x"))


def hex32(value: str) -> bytes:
    """A 32-byte value from hex; ValueError for any other length."""
    out = hexbytes(value)
    if len(out) != 32:
        raise ValueError("not a 32-byte value")
    return out


def _signed_statement(raw: bytes, job_id: int, round_: int, chain_id: int, verifier: str, *, ack: bool):
    """((provider, update root, weight), signature, message, signer) of a mailbox message carrying a
    provider's UpdateReceipt (`ack=False`, on the round's topic) or the aggregator's ReceiptAck
    (`ack=True`, on its `-acks` topic); None if the message is malformed, for another job or round,
    or its signature unrecoverable."""
    try:
        msg = untrusted_json(raw)
        if not ack and (int(msg["job_id"]) != job_id or int(msg["round"]) != round_):
            return None
        key = (to_checksum_address(msg["provider"]), hex32(msg["update_root"]), int(msg["weight"]))
        sig = hexbytes(msg["signature"])
        stmt = ReceiptAck(job_id, round_, *key) if ack else UpdateReceipt(job_id, round_, key[1], key[2])
        return key, sig, msg, stmt.signer(sig, chain_id, verifier)
    except Exception:  # noqa: BLE001 - untrusted message: malformed, or a signature that recovers nothing
        return None


def posted_receipts(dep: Deployment, mailbox: Mailbox, job_id: int, round_: int) -> dict[tuple[str, bytes, int], tuple[bytes, dict]]:
    """Every update receipt posted on the round's topic and signed by the provider it names:
    (provider, update root, weight) -> (signature, message), in the order they were posted."""
    out: dict[tuple[str, bytes, int], tuple[bytes, dict]] = {}
    for raw in mailbox.read(round_topic(job_id, round_)):
        found = _signed_statement(raw, job_id, round_, dep.chain_id, dep.disputes.address, ack=False)
        if found is not None and found[3] == found[0][0]:
            out.setdefault(found[0], (found[1], found[2]))
    return out


def acknowledged(dep: Deployment, mailbox: Mailbox, job_id: int, round_: int, aggregator: str) -> dict[tuple[str, bytes, int], bytes]:
    """Every receipt (provider, update root, weight) `aggregator` acknowledged on the round's
    `-acks` topic -> its signature of the acknowledgement."""
    out: dict[tuple[str, bytes, int], bytes] = {}
    for raw in mailbox.read(round_topic(job_id, round_) + "-acks"):
        found = _signed_statement(raw, job_id, round_, dep.chain_id, dep.disputes.address, ack=True)
        if found is not None and found[3] == aggregator:
            out.setdefault(found[0], found[1])
    return out


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
    raw = store.get_capped(ev["spec_cid"], MAX_SPEC_BYTES)
    return committed_spec(raw, ev["spec_hash"], f"job {job_id}: spec {ev['spec_cid']}")


def keep_job_files(dep: Deployment, store: BlobStore, job_id: int, module: bool = True) -> None:
    """Keep a copy of the job's spec, and with `module` of a torch job's packed module, in `store`'s
    local mirror (a `MirroredStore`; nothing to do for another store). Every review and round reads
    them again, and the requester could delete its own spec once everyone staked: without a copy
    the stakers could not work, and would be slashed as absent. Keep the module only once the job
    passed the checks before staking (`DataRole.checked_spec`): its size follows the spec's
    parameter count, which the checks bound."""
    from ..storage import MirroredStore

    if not isinstance(store, MirroredStore):
        return
    posted = dep.market.events("JobPosted", job_id=job_id)
    if not posted:
        raise FedMarketError(f"job {job_id} does not exist on this market")
    ev = posted[0]
    spec = committed_spec(store.keep(ev["spec_cid"], MAX_SPEC_BYTES), ev["spec_hash"],
                          f"job {job_id}: spec {ev['spec_cid']}")
    if module and spec.model.kind == "torch":
        from ..fl.torch_models import pack_byte_limit

        store.keep(spec.model.module_cid, pack_byte_limit(spec.n_params))


def read_vector(store: BlobStore, cid: str, n_params: int) -> np.ndarray:
    """The vector of `n_params` values (an update, a model, a correction) stored under `cid`, never
    downloading more than such a vector's blob can take (`BlobTooLarge`, a StorageError)."""
    return decode_vector(store.get_capped(cid, vector_blob_limit(n_params)), n_params)


def read_document(store: BlobStore, cid: str):
    """The JSON document (a round's metrics, a reveal, rewards, usage leaves) stored under `cid`,
    parsed as untrusted input, never downloading more than MAX_UNTRUSTED_BYTES."""
    return untrusted_json(store.get_capped(cid, MAX_UNTRUSTED_BYTES))


def committed_spec(raw: bytes, spec_hash: bytes, what: str) -> JobSpec:
    """The spec in `raw`, if it is the one a job committed to: it hashes to `spec_hash` and `raw` is
    its canonical form (so no other bytes pass for it); ProtocolViolation naming `what` otherwise."""
    spec = JobSpec.parse(raw)
    if spec.hash() != spec_hash or spec.canonical() != raw:
        raise ProtocolViolation(f"{what} does not hash to the committed spec hash")
    return spec


# ---- terms: what a spec implies on chain, and the check every role makes before it stakes ----


def terms_of(spec: JobSpec, aggregator: str, now: int) -> JobTerms:
    """The on-chain terms a spec implies; the join deadline starts from `now`."""
    r, p, d = spec.reward, spec.participation, spec.deadlines
    return JobTerms(
        spec_hash=spec.hash(),
        aggregator=aggregator,
        escrow=r.escrow,
        provider_stake=r.provider_stake,
        aggregator_stake=r.aggregator_stake,
        validator_stake=r.validator_stake,
        min_providers=p.min_providers,
        max_providers=p.max_providers,
        min_validators=p.validators_needed,
        max_validators=p.max_validators,
        rounds=spec.training.rounds,
        per_round=p.per_round,
        join_deadline=now + d.join_window,
        round_duration=d.round_duration,
        challenge_period=d.challenge_period,
        claim_period=d.claim_period,
        response_period=d.response_period,
        dispute_bond=r.dispute_bond,
        rule=int(spec.rule),
        trim=spec.trim,
        chunk_size=spec.quantization.chunk_size,
        n_params=spec.n_params,
        licence_price=r.licence_price,
        privacy_budget=spec.privacy.budget_micro,
        miss_payout_bps=R.BPS if spec.quality.target_accuracy is None else spec.quality.miss_payout_bps,
        noise_multiplier=spec.noise_micro if spec.privacy.dp else 0,
        delta_log=spec.delta_log_micro if spec.privacy.dp else 0,
        aggregator_fee=r.aggregator_fee,
        validator_fee=r.validator_fee,
        licence_requester_bps=r.licence_requester_bps,
    )


def check_terms(dep: Deployment, spec: JobSpec, job_id: int) -> JobTerms:
    """The job's on-chain terms, if they are exactly what its spec implies (TermsMismatch naming
    the first field that differs otherwise): a requester cannot post one rule in the spec and
    another on chain and then "prove" an honest role wrong. The join deadline, fixed by the posting
    time, is at most the spec's join window from now: a deadline months out would lock every stake
    until then, with only the requester and the aggregator able to start the job before it."""
    onchain = dep.terms(job_id)
    expected = terms_of(spec, onchain.aggregator, 0)
    window = spec.deadlines.join_window
    if onchain.join_deadline > dep.chain.timestamp() + window:
        raise TermsMismatch(f"job {job_id}: on-chain join_deadline {onchain.join_deadline} is more than the spec's "
                            f"join_window of {window} s from now; refusing to stake on it")
    for f in fields(JobTerms):
        if f.name == "join_deadline":
            continue  # bounded above
        if getattr(onchain, f.name) != getattr(expected, f.name):
            raise TermsMismatch(
                f"job {job_id}: on-chain {f.name} is {getattr(onchain, f.name)!r} but its spec implies "
                f"{getattr(expected, f.name)!r}; refusing to stake on it"
            )
    return onchain


def check_funds(dep: Deployment, account: str, amount: int, what: str, role: int | None = None) -> None:
    """InsufficientFunds unless `account` can lock `amount` (its wallet, plus free stake of `role`)."""
    have = dep.balance(account) + (int(dep.market.call("free_stake", account, role)) if role else 0)
    if have < amount:
        raise InsufficientFunds(f"{account} holds {have} base units but {what} needs {amount}")
    if dep.chain.native_balance(account) == 0:
        raise InsufficientFunds(f"{account} has no ether to pay gas")


def memory_needed(spec: JobSpec, role: str) -> int:
    """Bytes a role holds at its peak in one round of the job, roughly: the aggregator and a
    validator a round's updates (as integers, and a validator's as floats too) beside a few models;
    a provider a few models; the evaluating roles a forward pass of a batch besides."""
    from ..fl.models import EVAL_BATCH

    vector = 8 * spec.n_params
    p = spec.participation
    updates = p.max_providers if not p.per_round else min(p.max_providers, 2 * p.per_round + 16)
    if role == "aggregator":
        return (2 * updates + 4) * vector
    activations = spec.activation_bytes * max(EVAL_BATCH, spec.training.batch_size)
    if role == "validator":
        return (2 * updates + 4) * vector + activations
    return 8 * vector + activations


def check_memory(spec: JobSpec, role: str, available: int | None = None) -> None:
    """ConfigError, before the role stakes, when the job would need more memory than the machine
    has available: a job of billions of parameters, or a round of thousands of large updates,
    would otherwise end the role mid-job, where its silence costs its stake."""
    need = memory_needed(spec, role)
    have = available_memory() if available is None else available
    if have is not None and need > have:
        raise ConfigError(f"the job needs about {need / 2**30:.1f} GiB of memory for its {role} "
                          f"({spec.n_params:,} parameters); this machine has {have / 2**30:.1f} GiB available")


class DataRole:
    """A role that holds local data (a provider's private training set, a validator's held-out
    set): its features and labels never leave the object; it checks a job against them before
    it stakes."""

    ROLE = "provider"  # what `check_memory` sizes

    def __init__(self, dep: Deployment, account, store: BlobStore, mailbox, X: np.ndarray, y: np.ndarray):
        self.dep = dep
        self.account = account
        self.store = store
        self.mailbox = mailbox
        self.X = np.asarray(X)
        self.y = np.asarray(y)

    @property
    def address(self) -> str:
        return self.account.address

    def checked_spec(self, job_id: int) -> JobSpec:
        """The job's spec, once its on-chain terms match it (TermsMismatch), the local data fits
        its schema (SchemaMismatch) and its model loads (a torch job's packed module, checked
        against the spec): what a role checks before any stake moves."""
        spec = load_spec(self.dep, self.store, job_id)
        check_terms(self.dep, spec, job_id)
        spec.data.check(self.X, self.y)
        check_memory(spec, self.ROLE)
        job_model(spec, self.store)  # builds the model (a torch job's packed module, checked): SchemaMismatch/ConfigError
        return spec


# ---- committed rounds -------------------------------------------------------------------------


@dataclass(frozen=True)
class CommittedRound:
    """One RoundCommitted event."""

    round: int
    model_root: bytes
    updates_root: bytes
    count: int
    metrics_hash: bytes
    epsilon_spent: int
    aux_root: bytes
    next_seed: bytes
    block: int

    @property
    def data(self) -> tuple:
        """The round's commitment in the clear, as the contracts take it (RoundData)."""
        return (self.model_root, self.updates_root, self.count, self.metrics_hash, self.epsilon_spent,
                self.aux_root, self.next_seed)

    def commitment(self, job_id: int) -> bytes:
        return round_commitment(job_id, self.round, self.data)


def committed_rounds(dep: Deployment, job_id: int) -> list[CommittedRound]:
    """The job's committed rounds in order (up to its current round: a round proven wrong and
    reverted is not among them)."""
    evs = dep.market.events("RoundCommitted", job_id=job_id)
    current = int(dep.market.call("job_status", job_id)[1])
    rounds = {
        e["round"]: CommittedRound(
            e["round"], e["model_root"], e["updates_root"], e["count"], e["metrics_hash"], e["epsilon_spent"],
            e["aux_root"], e["next_seed"], e.block,
        )
        for e in evs
    }
    return [rounds[r] for r in range(current) if r in rounds]


def round_accumulator(dep: Deployment, job_id: int, rounds: list[CommittedRound] | None = None) -> RoundAccumulator:
    rounds = committed_rounds(dep, job_id) if rounds is None else rounds
    return RoundAccumulator([c.commitment(job_id) for c in rounds], R.ROUNDS_DEPTH)


def round_proof(dep: Deployment, job_id: int, round_: int, acc: RoundAccumulator | None = None) -> list[bytes]:
    """Round `round_`'s proof in the market's accumulator (checked against the chain's root)."""
    rounds = committed_rounds(dep, job_id)
    acc = acc or round_accumulator(dep, job_id, rounds)
    last = len(acc.leaves) - 1
    if last < 0 or not dep.market.call("verify_round", job_id, last, rounds[last].data, acc.proof(last)):
        raise ChainError(f"job {job_id}: the round events read do not match the market's accumulator")
    return acc.proof(round_)


def verified_round(dep: Deployment, job_id: int, round_: int | None = None) -> CommittedRound:
    """A committed round (the latest by default), its event data checked against the market's
    round accumulator on chain."""
    rounds = committed_rounds(dep, job_id)
    if not rounds:
        raise FedMarketError(f"job {job_id} has committed no round yet")
    r = len(rounds) - 1 if round_ is None else int(round_)
    if not 0 <= r < len(rounds):
        raise FedMarketError(f"job {job_id} has committed rounds 0..{len(rounds) - 1}, not {r}")
    proof = round_proof(dep, job_id, r)
    if not dep.market.call("verify_round", job_id, r, rounds[r].data, proof):
        raise ChainError(f"job {job_id}: round {r}'s event does not match the market's accumulator")
    return rounds[r]


def start_seed(dep: Deployment, job_id: int) -> bytes:
    started = dep.market.events("TrainingStarted", job_id=job_id)
    if not started:
        raise FedMarketError(f"job {job_id} has not started training")
    return started[0]["seed"]


def round_seed(dep: Deployment, job_id: int, round_: int, rounds: list[CommittedRound] | None = None) -> bytes:
    """The public seed of round `round_`'s provider selection, as the market fixed it on chain."""
    if round_ == 0:
        return start_seed(dep, job_id)
    rounds = committed_rounds(dep, job_id) if rounds is None else rounds
    if len(rounds) < round_:
        raise FedMarketError(f"job {job_id} has not committed round {round_ - 1}")
    return rounds[round_ - 1].next_seed


def joined_providers(dep: Deployment, job_id: int) -> list[str]:
    """Every provider that joined the job, in address order (read once per process after the job
    started: joining closes at the start)."""

    def read() -> list[str]:
        return sorted({e["provider"] for e in dep.market.events("ProviderJoined", job_id=job_id)}, key=address_key)

    if JobState(dep.market.call("job_status", job_id)[0]) == JobState.OPEN:
        return read()
    return dep.remember(("joined", job_id), read)


def joined_validators(dep: Deployment, job_id: int) -> dict[str, int]:
    """Every validator of the job and the stake it joined with."""
    return {e["validator"]: int(e["stake"]) for e in dep.market.events("ValidatorJoined", job_id=job_id)}


def round_providers(dep: Deployment, spec: JobSpec, job_id: int, round_: int) -> list[str]:
    """The providers selected for round `round_` (all joined ones unless the spec sets per_round), in address order."""
    members = joined_providers(dep, job_id)
    return select(round_seed(dep, job_id, round_), job_id, round_, members, spec.participation.per_round)


def fetch_metrics(store: BlobStore, committed: CommittedRound) -> dict:
    """A round's metrics document (named by its committed hash), with every listed provider's
    address in checksum form: the chain takes an address in any case, so an aggregator could list
    one in lower case, and a reader comparing strings would take an honest leaf for a forged one."""
    try:
        doc = read_document(store, metrics_cid(committed.metrics_hash))
    except ValueError:
        raise StorageError(f"round {committed.round}: metrics blob is not JSON") from None
    updates = doc.get("updates") if isinstance(doc, dict) else None
    for entry in updates if isinstance(updates, list) else ():
        if isinstance(entry, dict) and is_address(entry.get("provider")):
            entry["provider"] = to_checksum_address(entry["provider"])
    return doc


def listed_leaves(store: BlobStore, committed: CommittedRound) -> list[tuple[str, bytes, int]]:
    """The (provider, update root, weight) leaves a round's metrics document lists, which must form
    the committed updates root: FedMarketError if they are malformed or do not. Anyone who pays,
    judges or watches by a round's members reads them through this (an aggregator's document is
    its own word; the root is what it committed to)."""
    try:
        entries = fetch_metrics(store, committed)["updates"]
        leaves = [(to_checksum_address(e["provider"]), bytes.fromhex(e["update_root"][2:]), int(e["weight"]))
                  for e in entries]
        root = updates_root([SimpleNamespace(provider=p, root=r, weight=w) for p, r, w in leaves])
    except BAD_INPUT:  # (with an entry the leaf encoding refuses: a negative weight, a long root)
        raise FedMarketError(f"round {committed.round}: metrics document lists malformed updates") from None
    if root != committed.updates_root:
        raise FedMarketError(f"round {committed.round}: the listed updates do not form the committed updates root")
    return leaves


def fetch_model(store: BlobStore, spec: JobSpec, committed: CommittedRound) -> np.ndarray:
    """The quantized global model a round committed (named by its metrics document), verified
    against its model root."""
    doc = fetch_metrics(store, committed)
    try:
        cid = doc["model_cid"]
    except (KeyError, TypeError):
        raise ProtocolViolation(f"round {committed.round}: metrics document names no model") from None
    q = read_vector(store, cid, spec.n_params)
    if vector_root(q, spec.quantization.chunk_size) != committed.model_root:
        raise ProtocolViolation(f"round {committed.round}: model {cid} does not match its model root")
    return q


def global_model(dep: Deployment, store: BlobStore, spec: JobSpec, job_id: int) -> tuple[int, np.ndarray]:
    """(next round number, quantized global model to train from). Round 0 starts from zeros."""
    rounds = committed_rounds(dep, job_id)
    if not rounds:
        return 0, np.zeros(spec.n_params, dtype=np.int64)
    last = rounds[-1]
    return last.round + 1, fetch_model(store, spec, last)


def epsilon_after_round(spec: JobSpec, round_: int) -> int:
    """Cumulative epsilon (millionths, what `submit_round` commits) after round `round_` of a DP job; 0 without DP.

    It follows from the spec alone, so the aggregator, validators and auditors all get the same
    number. Raises PrivacyBudgetExceeded when the round would take the job past its budget."""
    if not spec.privacy.dp:
        return 0
    micro = R.epsilon_micro(spec.noise_micro, spec.delta_log_micro, round_ + 1)
    if micro > spec.privacy.budget_micro:
        raise PrivacyBudgetExceeded(
            f"round {round_} would bring epsilon to {micro / R.EPSILON_SCALE:.6g} > budget {spec.privacy.epsilon:g} "
            f"(delta {spec.privacy.delta:g}); round refused"
        )
    return micro


# ---- rewards ----------------------------------------------------------------------------------


def posted_rewards(dep: Deployment, store: BlobStore, job_id: int) -> dict:
    """The rewards document behind the job's current reward root, checked against it."""
    return _posted_reward_tree(dep, store, job_id)[0]


def _posted_reward_tree(dep: Deployment, store: BlobStore, job_id: int):
    """(rewards document, its reward tree) behind the job's current reward root; a document is
    read and hashed once per process (its content id fixes it)."""
    from ..protocol.proofs import positional_leaves, reward_tree

    root = dep.market.call("progress", job_id)["reward_root"]
    posted = [e for e in dep.market.events("RewardRootPosted", job_id=job_id) if e["reward_root"] == root]
    if not posted or root == b"\x00" * 32:
        raise FedMarketError(f"job {job_id} has no reward root")

    def load(cid):
        doc = read_document(store, cid)
        try:
            leaves = positional_leaves(doc["leaves"])
            return {**doc, "leaves": leaves}, reward_tree(leaves)
        except BAD_INPUT:
            raise ProtocolViolation(f"job {job_id}: rewards document {cid} is malformed") from None

    # the newest posting's document, or else an earlier posting's of the very same root (the same
    # leaves): a root posted again under a document nobody can read is still challenged
    problem = None
    for cid in dict.fromkeys(e["rewards_cid"] for e in reversed(posted)):
        try:
            doc, tree = dep.remember(("rewards", cid), lambda cid=cid: load(cid))
        except (StorageUnreachable, ChainError):
            raise
        except FedMarketError as exc:  # missing, malformed, or not this root's
            problem = problem or exc
            continue
        if tree.root == root:
            return doc, tree
        problem = problem or ProtocolViolation(f"job {job_id}: rewards document does not match the posted reward root")
    raise problem


def reward_leaf(dep: Deployment, store: BlobStore, account: str, job_id: int) -> tuple[dict, list[bytes]]:
    """`account`'s reward leaf and its positional proof, from the published rewards document."""
    doc, tree = _posted_reward_tree(dep, store, job_id)
    for leaf in doc["leaves"]:
        if leaf["account"] == account:
            return leaf, tree.proof(int(leaf["index"]))
    raise FedMarketError(f"{account} has no reward leaf in job {job_id}")


def claim_reward(dep: Deployment, store: BlobStore, account, job_id: int):
    """Claim `account`'s leaf: reward, stake release and reputation change in one transaction."""
    from ..protocol.proofs import reward_struct

    leaf, proof = reward_leaf(dep, store, account.address, job_id)
    return dep.market.transact("claim", job_id, int(leaf["index"]), reward_struct(leaf), proof, sender=account)


#: How long past a job's join deadline its members' processes leave its start (or, if it cannot
#: start, its cancellation) to the aggregator and the requester before sending it themselves
LATE_START_GRACE = 30


def close_join_window(dep: Deployment, sender, job_id: int, now: int):
    """What anyone may do for an open job once its join deadline passed (`now`, what the next
    transaction sees): start it if it can start, else cancel it (full refund). None before the
    deadline or for a job that is not open. An aggregator that accepted and never starts would
    otherwise keep every member's stake and the escrow locked, and could time round 0's seed at
    will."""
    job = dep.job(job_id)
    if job["state"] != JobState.OPEN or now < int(job["join_deadline"]):
        return None
    return dep.market.transact("start" if R.startable(job) else "cancel", job_id, sender=sender)


def fail_job(dep: Deployment, sender, job_id: int):
    """Fail a training job past its deadline at the cost of whoever failed (anyone may call): the
    aggregator for a missed step, or, when the latest round lacks validator quorum, the
    validators' votes decide (`Disputes.fail_round`: every validator that did not vote is named)."""
    job = dep.job(job_id)
    if job["max_validators"] == 0 or job["current_round"] == 0 or job["quorum"]:
        return dep.market.transact("fail", job_id, sender=sender)
    r = job["current_round"] - 1
    absent = [v for v in sorted(joined_validators(dep, job_id), key=address_key)
              if dep.disputes.call("attestation_of", job_id, r, v) == b"\x00" * 32
              and not dep.disputes.call("rejected", job_id, r, v)]
    return dep.disputes.transact("fail_round", job_id, absent, sender=sender)


# ---- receipt journals: a server's record of the receipts it answered ------------------------
def journal_line(caller: str, *numbers: int, signature: bytes) -> str:
    """One answered query's receipt as a journal line: ``[caller, numbers..., "0x" signature]``."""
    return json.dumps([caller, *numbers, "0x" + signature.hex()]) + "\n"


def read_journal(path: Path) -> dict[str, tuple]:
    """Each caller's latest receipt in a receipt journal: ``(numbers..., signature)`` with the
    highest first number (its count). A line cut short by a crash is ignored: its query was never
    answered."""
    latest: dict[str, tuple] = {}
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return latest
    for line in lines:
        try:
            caller, *numbers, sig = json.loads(line)
            entry = (*(int(n) for n in numbers), bytes.fromhex(sig[2:]))
        except (ValueError, TypeError, AttributeError):
            continue
        if caller not in latest or entry[0] > latest[caller][0]:
            latest[caller] = entry
    return latest
