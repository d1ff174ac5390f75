"""Aggregator role: collects signed updates, aggregates them exactly, commits each round, posts
the reward root, and defends both in dispute games."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..chain import Account, Receipt
from ..errors import FedMarketError, SecAggAbort, ShareTampered, StorageError, StorageUnreachable
from ..jobmodel import job_model
from ..market import Deployment
from ..protocol import rules as R
from ..protocol.encoding import (
    BAD_INPUT,
    address_key,
    canonical_json,
    encode_vector,
    untrusted_json,
    vector_root,
)
from ..protocol.proofs import updates_root
from ..protocol.receipts import ReceiptAck, UpdateReceipt
from ..spec import JobSpec
from ..storage import BlobStore, Mailbox
from . import sealed as sl
from . import secure_round as sr
from .common import (
    check_funds,
    check_memory,
    check_terms,
    epsilon_after_round,
    global_model,
    hex32,
    hexbytes,
    load_spec,
    metrics_digest,
    read_vector,
    round_providers,
    round_topic,
)
from .games import Defender
from .settlement import mailbox_reveals, post_reward_root, reward_document

ZERO32 = b"\x00" * 32


@dataclass(frozen=True)
class Update:
    """A verified update: signed receipt, matching blob, selected provider of the job."""

    provider: str
    update_cid: str
    update_root: bytes
    weight: int
    signature: bytes
    q: np.ndarray
    salt: bytes = b""  # a sealed round's: opens the provider's commitment (roles.sealed)

    @property
    def root(self) -> bytes:
        return self.update_root


class Aggregator:
    """Runs the rounds of the jobs that name it as their aggregator."""

    def __init__(self, dep: Deployment, account: Account, store: BlobStore, mailbox: Mailbox):
        self.dep = dep
        self.account = account
        self.store = store
        self.mailbox = mailbox
        self.defender = Defender(dep, account, store)
        # a secure round's survivors, verified when their set was signed (job, round) -> updates:
        # the round unmasks them even if a survivor withdraws its blob in between
        self._survivors: dict[tuple[int, int], list[Update]] = {}
        # the updates it acknowledged, (job, round) -> provider -> update: a countersigned receipt
        # left out of the round is provable censorship, so a later collect keeps each (and puts its
        # blob back) whatever happened since (the provider slashed, its blob deleted)
        self._acked: dict[tuple[int, int], dict[str, Update]] = {}
        # `keep_ack(job, round, updates)`, if set, stores acknowledged updates before their
        # acknowledgements are posted (a process keeps them across restarts)
        self.keep_ack = None
        # the seals it signed, (job, round) -> message: its own record, never the mailbox's (anyone
        # on a shared broker can delete a message, and a seal signed again over other commitments
        # is proof of equivocation); `keep_seal`, if set, stores one before it is posted (a process
        # keeps them across restarts)
        self.seals: dict[tuple[int, int], dict] = {}
        self.keep_seal = None

    @property
    def address(self) -> str:
        return self.account.address

    def accept(self, job_id: int) -> Receipt:
        """Check the job's terms against its spec and the funds to stake, then accept it."""
        spec = load_spec(self.dep, self.store, job_id)
        terms = check_terms(self.dep, spec, job_id)
        if terms.aggregator != self.address:
            raise FedMarketError(f"job {job_id} names {terms.aggregator} as its aggregator, not {self.address}")
        if spec.model.kind == "torch":
            job_model(spec, self.store)  # its packed module is available and fits the spec (SchemaMismatch)
        check_memory(spec, "aggregator")
        stake = terms.aggregator_stake
        check_funds(self.dep, self.address, stake, f"the aggregator stake of job {job_id}")
        if stake:
            self.dep.token.transact("approve", self.dep.market.address, stake, sender=self.account)
        return self.dep.market.transact("accept", job_id, sender=self.account)

    def start(self, job_id: int) -> Receipt:
        return self.dep.market.transact("start", job_id, sender=self.account)

    def release_stake(self, job_id: int) -> Receipt:
        """Take the aggregator stake back into free stake once the job is over."""
        return self.dep.market.transact("release_stake", job_id, self.account.address, sender=self.account)

    # ---- one round ----------------------------------------------------------------------------

    def seal(self, job_id: int, round_: int, spec: JobSpec | None = None) -> dict:
        """Seal the round's commitments (`roles.sealed`): post one signed seal over the first
        authentic commitment of each selected provider, after which no commitment counts. Sealing
        again returns the seal already signed: an aggregator never signs two."""
        spec = spec or load_spec(self.dep, self.store, job_id)
        mine = self.posted_seal(job_id, round_)
        if mine is not None:
            return mine
        selected = set(round_providers(self.dep, spec, job_id, round_))
        taken = sl.commitments(self.dep, self.mailbox.read(sl.commit_topic(job_id, round_)), job_id, round_, selected)
        msg = sl.seal_message(self.dep, self.account, job_id, round_, taken)
        self.seals[(job_id, round_)] = msg
        if self.keep_seal is not None:
            self.keep_seal(job_id, round_, msg)  # kept before anyone can see it
        self.mailbox.post(sl.seal_topic(job_id, round_), canonical_json(msg))
        return msg

    def posted_seal(self, job_id: int, round_: int) -> dict | None:
        """The seal this aggregator signed for the round, if any: its own record, else (a record
        lost) the first it posted in the mailbox. A seal of its record that the mailbox no longer
        holds (deleted by someone on a shared broker) is posted again, so that providers see it."""
        posted = None
        for raw in self.mailbox.read(sl.seal_topic(job_id, round_)):
            try:
                msg = untrusted_json(raw)
                sl.open_seal(self.dep, msg, job_id, round_, self.address)
            except (FedMarketError, *BAD_INPUT):
                continue
            posted = msg
            break
        mine = self.seals.get((job_id, round_))
        if mine is None:
            if posted is not None:
                self.seals[(job_id, round_)] = posted
            return posted
        if posted != mine:
            self.mailbox.post(sl.seal_topic(job_id, round_), canonical_json(mine))
        return mine

    def collect(self, job_id: int, round_: int, spec: JobSpec) -> tuple[list[Update], list[dict]]:
        """Every valid update posted for the round (the first of each selected provider), and the
        rejected ones with reasons. A second update of a provider is refused, not ordered. In a
        sealed round only updates that open their provider's sealed commitment count. An update
        it acknowledged stays the provider's, whatever was posted since (its blob put back if it
        is gone, its provider counted if slashed since): leaving it out is provable censorship."""
        acked = self._acked.setdefault((job_id, round_), {})
        accepted: dict[str, Update] = dict(acked)
        rejected: list[dict] = []
        selected = set(round_providers(self.dep, spec, job_id, round_))
        seal = None
        if sl.sealed(spec):
            posted = self.posted_seal(job_id, round_)
            seal = sl.open_seal(self.dep, posted, job_id, round_, self.address) if posted is not None else {}
        for raw in self.mailbox.read(round_topic(job_id, round_)):
            try:
                upd = self._verify(raw, job_id, round_, spec, selected)
                if upd.provider not in accepted and seal is not None and \
                        seal.get(upd.provider) != sl.commitment(upd.provider, upd.update_root, upd.weight, upd.salt):
                    raise FedMarketError(f"update of {upd.provider} does not open a commitment sealed before the reveals")
            except StorageUnreachable:  # the store is down: no reason to leave anyone out; retry later
                raise
            except (FedMarketError, *BAD_INPUT) as exc:
                rejected.append({"reason": str(exc)})  # anyone can post on the topic: a bad message is one reason
                continue
            if upd.provider in accepted:
                first = accepted[upd.provider]
                if (first.update_root, first.weight) != (upd.update_root, upd.weight):
                    rejected.append({"provider": upd.provider, "reason": "second update in one round"})
                continue
            accepted[upd.provider] = upd
        for upd in acked.values():
            if not self.store.has(upd.update_cid):
                self.store.put(encode_vector(upd.q))
        updates = [accepted[p] for p in sorted(accepted, key=address_key)]
        if not spec.privacy.secure:  # a secure round acknowledges what it unmasked (run_round)
            new = [u for u in updates if u.provider not in acked]
            if new and self.keep_ack is not None:
                self.keep_ack(job_id, round_, new)  # kept before anyone can see an acknowledgement
            self.acknowledge(job_id, round_, new)
            acked.update({u.provider: u for u in new})
        for key in [k for k in self._acked if k[0] == job_id and k[1] < round_]:
            del self._acked[key]
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
        """An update that passes every rule `RoundArbiter._check_update` enforces."""
        msg = untrusted_json(raw)
        if not isinstance(msg, dict) or msg.get("job_id") != job_id or msg.get("round") != round_:
            raise FedMarketError("receipt for another job or round")
        weight = msg["weight"]
        if type(weight) is not int:  # not a float, a bool or a string that happens to convert
            raise FedMarketError(f"weight must be an integer, got {weight!r}")
        if not 1 <= weight <= R.MAX_WEIGHT:
            raise FedMarketError(f"weight must be in [1, {R.MAX_WEIGHT}], got {weight}")
        if spec.unit_weights and weight != 1:
            why = f"privacy mode {spec.privacy.mode} releases no sample count" if spec.privacy.mode != "plain" else \
                f"strategy {spec.strategy} counts every update once"
            raise FedMarketError(f"{why}: weight must be 1, got {weight}")
        root = hex32(msg["update_root"])
        sig = hexbytes(msg["signature"])
        salt = b""
        if sl.sealed(spec):  # it opens the provider's sealed commitment, which hashes a bytes32 salt
            salt = hexbytes(msg["salt"]) if "salt" in msg else b""
            if len(salt) != 32:
                raise FedMarketError(f"a sealed round's update needs a 32-byte salt, got {len(salt)} bytes")
        signer = UpdateReceipt(job_id, round_, root, weight).signer(sig, self.dep.chain_id, self.dep.disputes.address)
        if signer != msg["provider"]:
            raise FedMarketError(f"receipt signed by {signer}, not by {msg['provider']}")
        word, stage = self.dep.market.call("membership", job_id, signer)
        if not R.provider_in_round(word, stage, round_):
            raise FedMarketError(f"{signer} is not a provider of job {job_id} (never joined, or slashed before round {round_})")
        if signer not in selected:
            raise FedMarketError(f"{signer} was not selected for round {round_}")
        try:
            q = read_vector(self.store, msg["update_cid"], spec.n_params)
        except StorageUnreachable:
            raise
        except StorageError as exc:
            raise FedMarketError(f"update of {signer}: {exc}") from None
        if not spec.privacy.secure:  # a masked update's values are uniform in int64: its sum is checked
            problem = R.values_problem(q, f"update of {signer}")
            if problem:
                raise FedMarketError(problem)
        if vector_root(q, spec.quantization.chunk_size) != root:
            raise FedMarketError(f"update of {signer} does not match its signed root")
        return Update(signer, msg["update_cid"], root, weight, sig, q, salt)

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
        shared = sr.share_lists(self.mailbox.read(sr.topic(job_id, round_, "shares")), members, cfg.round_id)
        uid = {p: i for i, p in enumerate(members)}
        survivors = sorted(uid[u.provider] for u in updates if uid[u.provider] in shared)
        if len(survivors) < cfg.min_survivors:
            raise SecAggAbort(
                f"job {job_id} round {round_}: {len(survivors)} masked updates arrived, below the threshold of "
                f"{cfg.min_survivors} survivors; round aborted, nothing committed"
            )
        self._survivors[(job_id, round_)] = [u for u in updates if uid[u.provider] in shared]
        self.mailbox.post(sr.topic(job_id, round_, "survivors"),
                          sr.survivors_message(self.account.key, cfg.round_id, self.address, sorted(shared), survivors))
        return survivors

    def own_survivors(self, job_id: int, round_: int, spec: JobSpec | None = None) -> dict | None:
        """The survivor set this aggregator signed for a secure round, or None. Anyone can post on
        the topic: a message that is not the aggregator's own, or is no message, is passed over."""
        spec = spec or load_spec(self.dep, self.store, job_id)
        members = sr.participants(self.dep, spec, job_id, round_)
        try:
            cfg = sr.round_config(self.dep, spec, job_id, round_, len(members))
        except SecAggAbort:
            return None  # too few selected for a secure round: it has no survivor set
        for raw in self.mailbox.read(sr.topic(job_id, round_, "survivors")):
            try:
                msg = sr.opened(raw, cfg.round_id, "survivors", "aggregator")
            except FedMarketError:
                continue
            if msg.get("aggregator") == self.address and isinstance(msg.get("survivors"), list) \
                    and isinstance(msg.get("shared"), list):
                return msg
        return None

    def _secure_round(self, job_id: int, round_: int, spec: JobSpec, updates: list[Update]) -> tuple[list[Update], np.ndarray, dict]:
        """Unmask a secure round: (its survivors' masked updates, the mask correction, the transcript document)."""
        members = sr.participants(self.dep, spec, job_id, round_)
        cfg = sr.round_config(self.dep, spec, job_id, round_, len(members))
        mine = self.own_survivors(job_id, round_, spec)
        if mine is None:  # too few masked updates for a survivor set (secure_survivors aborted)
            raise SecAggAbort(f"job {job_id} round {round_}: no survivor set was posted")
        survivors = set(mine["survivors"])
        uid = {p: i for i, p in enumerate(members)}
        # each survivor's masked update as verified when the survivor set was signed (a survivor
        # cannot take it back by withdrawing its blob), else as collected now (after a restart)
        known = {u.provider: u for u in (*updates, *self._survivors.pop((job_id, round_), []))}
        kept = sorted((u for u in known.values() if uid[u.provider] in survivors), key=lambda u: address_key(u.provider))
        if len(kept) != len(survivors):
            raise SecAggAbort(f"job {job_id} round {round_}: a survivor's masked update is no longer available")
        read = lambda phase: self.mailbox.read(sr.topic(job_id, round_, phase))  # noqa: E731
        transcript = sr.Transcript(read("keys"), list(mine["shared"]), read("confirm"), read("unmask"))
        masked = {uid[u.provider]: u.q for u in kept}
        total = sr.unmasked_sum(cfg, members, transcript, masked)  # SecAggAbort / ShareTampered: nothing committed
        corr = sr.correction(masked, total)
        problem = R.values_problem(R.secure_mean([u.q for u in kept], corr, [u.weight for u in kept]), "the unmasked mean")
        if problem:  # a provider masked an update outside the range: the round would wrap the model
            raise SecAggAbort(f"job {job_id} round {round_}: {problem}; round aborted, nothing committed")
        return kept, corr, transcript.as_doc()

    def run_round(self, job_id: int, round_: int, collected: tuple[list[Update], list[dict]] | None = None) -> Receipt:
        """Aggregate the round's updates (exact integer arithmetic) and commit it in one transaction.
        A round with no update keeps the model (the aggregator is never slashed for providers'
        silence). A DP job's round commits the job's cumulative epsilon; a round that would exceed
        the budget is refused (PrivacyBudgetExceeded) before anything is sent."""
        spec = load_spec(self.dep, self.store, job_id)
        next_round, q_global = global_model(self.dep, self.store, spec, job_id)
        if next_round != round_:
            raise FedMarketError(f"job {job_id} is at round {next_round}, not {round_}")
        epsilon = epsilon_after_round(spec, round_)
        # `collected`: what `collect` just returned for this round, so it is not verified twice
        updates, rejected = collected if collected is not None else self.collect(job_id, round_, spec)
        secure, aux_root, corr = None, ZERO32, None
        if spec.privacy.secure:
            transcript = {"keys": [], "shared": [], "confirm": [], "unmask": []}
            corr = np.zeros(spec.n_params, dtype=np.int64)
            try:
                if updates:
                    updates, corr, transcript = self._secure_round(job_id, round_, spec, updates)
                    # acknowledged only now: an aborted round (too few survivors or unmask answers, a
                    # tampered share) commits no update, and nobody acknowledged can be left out
                    self.acknowledge(job_id, round_, updates)
            except (SecAggAbort, ShareTampered) as exc:
                rejected = [*rejected, {"reason": f"secure aggregation aborted: {exc}"}]
                updates, corr = [], np.zeros(spec.n_params, dtype=np.int64)
                transcript = {"keys": [], "shared": [], "confirm": [], "unmask": []}
            aux_root = vector_root(corr, spec.quantization.chunk_size)
            secure = {"correction_cid": self.store.put(encode_vector(corr)),
                      "transcript_cid": self.store.put(canonical_json(transcript))}
        elif spec.attested:  # the attested rule's result, committed as the secure sum's correction
            corr = self.attested_correction(spec, updates)
            aux_root = vector_root(corr, spec.quantization.chunk_size)
            attested = {"correction_cid": self.store.put(encode_vector(corr))}
        q_new = self.aggregate(spec, q_global, updates, corr)
        # every update the round holds is published by the aggregator too (its canonical blob): a
        # provider that withdraws its own after the round was collected cannot make it unavailable
        published = [self.store.put(encode_vector(u.q)) for u in updates]
        sealed = sl.sealed(spec)
        model_cid = self.store.put(encode_vector(q_new))
        model_root = vector_root(q_new, spec.quantization.chunk_size)
        metrics = {
            "job_id": job_id,
            "round": round_,
            "strategy": spec.strategy,
            "privacy": spec.privacy.mode,
            "epsilon_spent": epsilon,
            "count": len(updates),
            "total_weight": sum(u.weight for u in updates),
            "model_cid": model_cid,
            "updates": [
                {"index": i, "provider": u.provider, "update_cid": cid, "update_root": "0x" + u.update_root.hex(),
                 "weight": u.weight, "signature": "0x" + u.signature.hex(), **({"salt": "0x" + u.salt.hex()} if sealed else {})}
                for i, (u, cid) in enumerate(zip(updates, published))
            ],
            "rejected": rejected,
        }
        if sealed:
            metrics["seal"] = self.seal(job_id, round_, spec)  # the one posted (sealing again returns it)
        if secure is not None:
            metrics["secure"] = secure
        if spec.attested:
            metrics["attested"] = attested
        doc = canonical_json(metrics)
        self.store.put(doc)
        return self.dep.market.transact(
            "submit_round", job_id, round_, model_root, updates_root(updates), len(updates), metrics_digest(doc),
            epsilon, aux_root, sender=self.account,
        )

    def attested_correction(self, spec: JobSpec, updates: list[Update]) -> np.ndarray:
        """The correction under which the secure-sum rule gives the job's attested strategy over the
        round's updates (zero for a round without any)."""
        if not updates:
            return np.zeros(spec.n_params, dtype=np.int64)
        return R.attested_correction(spec.strategy, [u.q for u in updates], [u.weight for u in updates])

    def aggregate(self, spec: JobSpec, q_global: np.ndarray, updates: list[Update], correction: np.ndarray | None) -> np.ndarray:
        """The new global model: the previous one plus the job's rule over the round's updates (kept as is without any)."""
        if not updates:
            return q_global
        return R.apply_delta(q_global, R.aggregate(spec.rule, [u.q for u in updates], [u.weight for u in updates],
                                                   spec.trim, correction))

    # ---- rewards and disputes -----------------------------------------------------------------

    def rewards_document(self, job_id: int, spec: JobSpec, basis: int | None = None) -> dict:
        return reward_document(self.dep, self.store, job_id, spec, mailbox_reveals(self.dep, self.mailbox, job_id), basis)

    def reward_leaves(self, job_id: int, spec: JobSpec) -> list[dict]:
        return self.rewards_document(job_id, spec)["leaves"]

    def post_rewards(self, job_id: int, basis: int | None = None) -> Receipt:
        """After the last round: publish the rewards document and commit the root of its leaves
        (`settlement.post_reward_root`)."""
        doc = self.rewards_document(job_id, load_spec(self.dep, self.store, job_id), basis)
        return post_reward_root(self.dep, self.store, self.mailbox, self.account, job_id, doc)

    def defend(self, job_id: int) -> list[Receipt]:
        """Answer every dispute game of the job that waits for the defender."""
        return self.defender.respond(job_id)
