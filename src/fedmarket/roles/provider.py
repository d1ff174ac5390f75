"""Provider role: checks its private data against the job, joins with stake, trains, claims."""

from __future__ import annotations

import hashlib
import secrets

import numpy as np

from ..chain import Account, Receipt
from ..errors import FedMarketError, SecAggAbort, StorageError, StorageUnreachable
from ..fl.quantize import quantize
from ..jobmodel import job_model
from ..market import Deployment
from ..privacy.dp import clip_update, distributed_skellam, honest_minimum, local_gaussian, skellam_mu
from ..privacy.releases import ReleaseLog
from ..privacy.secagg import SecAggClient, SecAggConfig
from ..protocol import rules as R
from ..protocol.encoding import canonical_json, encode_vector, vector_root
from ..protocol.receipts import UpdateReceipt, permit_signature
from ..spec import JobSpec
from ..storage import BlobStore, Mailbox, cid_of
from . import sealed as sl
from .senders import signed_on
from . import secure_round as sr
from .auditor import training_model
from .common import DataRole, ProtocolViolation, check_funds, claim_reward, committed_rounds, reward_leaf, round_topic


def training_seed(provider: str, job_id: int, round_: int) -> int:
    """The seed of a provider's local training in one round (its shuffles, its network's randomness)."""
    return int.from_bytes(hashlib.sha256(f"{provider}:{job_id}:{round_}".encode()).digest()[:8], "big")


class Provider(DataRole):
    """A data owner. Its features and labels never leave this object: only quantized updates do."""

    def __init__(self, dep: Deployment, account: Account, store: BlobStore, mailbox: Mailbox, X: np.ndarray, y: np.ndarray,
                 releases: ReleaseLog | None = None):
        super().__init__(dep, account, store, mailbox, X, y)
        self.releases = releases if releases is not None else ReleaseLog()  # one release per private round
        self._specs: dict[int, JobSpec] = {}
        self._members_of: dict[tuple[int, int], list[str]] = {}
        self._clients: dict[tuple[int, int], tuple[SecAggClient, SecAggConfig]] = {}
        # secure rounds: the members whose masked updates it saw before the survivor set (uids)
        self._seen_masked: dict[tuple[int, int], set[int]] = {}
        self._upload_signers: dict[tuple[int, int], dict] = {}  # who signed each message it read
        self._masked_blob: dict[tuple[int, int], bytes] = {}  # its own masked update, until the survivor set
        self._scaled: dict[bytes, np.ndarray] = {}
        self._sealed: dict[tuple[int, int], dict] = {}  # receipts committed, not yet revealed (roles.sealed)
        self._sealed_blobs: dict[tuple[int, int], bytes] = {}  # and their update blobs, stored at the reveal
        # `keep_sealed`, if set, is given (job, round, receipt, blob, commitment message) before the
        # commitment is posted: a Flower ClientApp lives for one message, and reveals in another
        self.keep_sealed = None
        self.sat_out: dict[tuple[int, int], str] = {}  # rounds it trained for but sent nothing, and why
        self.zeroed: dict[tuple[int, int], str] = {}  # private rounds whose training failed: a zero update sent
        self._trained_from: dict[tuple[int, int], str] = {}  # the model root a round trains from (`trained_from`)

    @property
    def n_samples(self) -> int:
        return len(self.y)

    def inspect(self, job_id: int) -> JobSpec:
        """Fetch and verify the job's spec, check that the on-chain terms are exactly what it implies
        (TermsMismatch) and that local data fits its schema (SchemaMismatch)."""
        if job_id not in self._specs:
            self._specs[job_id] = self.checked_spec(job_id)
        return self._specs[job_id]

    def join(self, job_id: int) -> Receipt:
        """Check the job, the data and the funds, then join, the stake's allowance given by an
        EIP-2612 permit in the same transaction."""
        spec = self.inspect(job_id)
        stake = spec.reward.provider_stake
        check_funds(self.dep, self.address, spec.reward.provider_funds,
                    f"the provider stake of job {job_id} with the dispute bond that guards its pay", R.Role.PROVIDER)
        if not stake:
            return self.dep.market.transact("join", job_id, sender=self.account)
        deadline = self.dep.chain.timestamp() + 3_600
        v, r, s = permit_signature(self.dep.token, self.account, self.dep.market.address, stake, deadline)
        return self.dep.market.transact("join_with_permit", job_id, deadline, v, r, s, sender=self.account)

    def _local_delta(self, spec: JobSpec, job_id: int, round_: int, q_global: np.ndarray) -> np.ndarray:
        """Local training from the committed global model with the job's model and settings: the
        float delta (nothing else about the private data leaves: no loss, no statistic)."""
        jm = job_model(spec, self.store)
        key = spec.hash()
        if key not in self._scaled:  # the schema's scaling of the local data, once per job
            self._scaled = {key: jm.features(self.X)}
        return jm.train(q_global, self._scaled[key], self.y, seed=training_seed(self.address, job_id, round_),
                        round_=round_, scaled=True)

    def _private_delta(self, spec: JobSpec, job_id: int, round_: int, q_global: np.ndarray) -> np.ndarray:
        """`_local_delta`, except that in a private mode a training run that fails, or gives values
        that are not finite, gives a zero update (noised like any other in the DP modes) instead of
        silence: whether a provider sends must not depend on its data. A requester's module that
        fails on one chosen record (a division by zero below a threshold) otherwise made a provider
        holding it send nothing, a one-bit answer about that record no noise covered. The reason is
        kept in `zeroed` for the process's log."""
        if spec.privacy.mode == "plain":
            return self._local_delta(spec, job_id, round_, q_global)
        try:
            delta = self._local_delta(spec, job_id, round_, q_global)
            if not np.all(np.isfinite(delta)):
                why = "its training gave values that are not finite"
            else:
                quantize(delta)  # secagg sends it unclipped: a value past the fixed-point range would raise later
                return delta
        except (FedMarketError, ValueError, ArithmeticError, RuntimeError) as exc:  # torch raises RuntimeError
            why = f"its training failed or left the fixed-point range ({type(exc).__name__})"
        self.zeroed[(job_id, round_)] = why
        return np.zeros(spec.n_params)

    def _released(self, spec: JobSpec, delta: np.ndarray, cfg: SecAggConfig | None = None) -> tuple[np.ndarray, int]:
        """What leaves this machine for the job's privacy mode: (quantized update, weight); ``cfg``
        is a secure round's (its survivor minimum and selected providers size the noise share).

        DP noise comes from the operating system's entropy, never from a public seed."""
        mode = spec.privacy.mode
        if mode in ("plain", "secagg"):
            return quantize(delta), 1 if spec.unit_weights else self.n_samples
        rng = np.random.default_rng(secrets.randbits(128))
        p = spec.privacy
        if mode == "dp_local":
            return quantize(local_gaussian(delta, p.clip_norm, spec.noise_multiplier(), rng)), 1
        # secagg_dp: the clipped update on the fixed-point grid plus this provider's Skellam share, sized so
        # that the honest minimum of any survivor set the round accepts alone gives std 2 z C on the sum
        honest = honest_minimum(cfg.min_survivors, cfg.dishonest, cfg.n)  # the round's share (sampled: its draw's tail)
        mu = skellam_mu(spec.noise_multiplier(), p.clip_norm, spec.quantization.scale_bits, spec.n_params, honest)
        return distributed_skellam(quantize(clip_update(delta, p.clip_norm)), mu, rng), 1

    def train(self, job_id: int, round_: int) -> dict | None:
        """Train one round from the committed global model and post a signed receipt of the update.

        In the secure-aggregation modes this is phase 3 (the masked update); call
        :meth:`advertise` and :meth:`share` first and :meth:`unmask` after the aggregator
        names the survivors."""
        spec = self.inspect(job_id)
        next_round, q_global = training_model(self.dep, self.store, spec, job_id, self.mailbox)
        if next_round != round_:
            raise FedMarketError(f"job {job_id} is at round {next_round}, not {round_}")
        if not self.selected(job_id, round_):
            return None  # not picked this round: nothing leaves this machine
        why = self.frozen(job_id, round_)
        if why:
            self.sat_out[(job_id, round_)] = why
            return None
        if spec.privacy.mode != "plain":
            self.releases.check(job_id, round_)
        if spec.privacy.secure:
            self._check_keys_once(job_id, round_)
        delta = self._private_delta(spec, job_id, round_, q_global)
        if spec.privacy.secure:
            client, cfg = self._client(job_id, round_)
            q, weight = self._released(spec, delta, cfg)
            shares = sr.share_lists(self.mailbox.read(sr.topic(job_id, round_, "shares")), self._members(job_id, round_),
                                    cfg.round_id)
            incoming = [s for lst in shares.values() for s in lst if s.dst == client.uid]
            masked = client.masked_input(q.astype(np.int64) * np.int64(weight), incoming)
            q_out = np.frombuffer(masked.data, dtype=np.uint64).view(np.int64)
            # journaled once it is masked (a refusal to mask releases nothing, and spends no model) and
            # before it leaves: AlreadyReleased on a retry; in secagg with the model it spends (`frozen`)
            self.releases.claim(job_id, round_, spec.privacy.mode,
                                self.trained_from(job_id, round_) if spec.privacy.mode == "secagg" else None)
        else:
            if spec.privacy.mode != "plain":  # journaled before anything leaves: AlreadyReleased on a retry
                self.releases.claim(job_id, round_, spec.privacy.mode)
            q_out, weight = self._released(spec, delta)
            why = self._sits_out(spec, q_out)
            if why:
                self.sat_out[(job_id, round_)] = why
                return None
        return self._post_update(spec, job_id, round_, q_out, weight)

    def _sits_out(self, spec: JobSpec, q: np.ndarray) -> str:
        """Why this honest provider sends nothing this round ('' to send): in a job with validators,
        an update whose every value is zero on the fixed-point grid (its training moved nothing, a
        step too small for its data) is what they report as the model sent back. (Without
        validators nobody judges it, and its weight is paid.)"""
        if spec.participation.max_validators and R.sent_back(q):
            return "its update is all zeros on the fixed-point grid"
        return ""

    def _post_update(self, spec: JobSpec, job_id: int, round_: int, q: np.ndarray, weight: int) -> dict:
        """Store the update and post its signed receipt; in a sealed round (`roles.sealed`) post only
        the commitment, and keep the receipt and the blob for `reveal` (a blob stored at once could
        be read from a shared store, and copied, before the seal)."""
        blob = encode_vector(q)
        update_cid = cid_of(blob)
        update_root = vector_root(q, spec.quantization.chunk_size)
        receipt = UpdateReceipt(job_id, round_, update_root, weight)
        signature = receipt.sign(self.account.key, self.dep.chain_id, self.dep.disputes.address)
        message = {
            "provider": self.address,
            "job_id": job_id,
            "round": round_,
            "update_cid": update_cid,
            "update_root": "0x" + update_root.hex(),
            "weight": weight,
            "signature": "0x" + signature.hex(),
        }
        if sl.sealed(spec):
            salt = secrets.token_bytes(32)
            message["salt"] = "0x" + salt.hex()
            value = sl.commitment(self.address, update_root, weight, salt)
            committed = sl.commitment_message(self.dep, self.account, job_id, round_, value)
            if self.keep_sealed is not None:
                self.keep_sealed(job_id, round_, message, blob, committed)
            self.restore_sealed(job_id, round_, message, blob)
            self.mailbox.post(sl.commit_topic(job_id, round_), committed)
            return message
        if spec.privacy.secure:  # kept until the round's survivor set: put back if someone deletes it
            self._masked_blob[(job_id, round_)] = blob
        self.store.put(blob)
        self.mailbox.post(round_topic(job_id, round_), canonical_json(message))
        return message

    def restore_sealed(self, job_id: int, round_: int, message: dict, blob: bytes) -> None:
        """Hold a committed, unrevealed update (its receipt with the salt, and its blob) for `reveal`."""
        self._sealed[(job_id, round_)] = message
        self._sealed_blobs[(job_id, round_)] = blob

    def sealed_pending(self, job_id: int, round_: int) -> bool:
        """Whether this provider committed an update of the round that it has not revealed yet."""
        return (job_id, round_) in self._sealed

    def reveal(self, job_id: int, round_: int) -> dict | None:
        """Reveal the update committed for the round once the aggregator's seal holds its
        commitment: post the receipt with its salt. None while there is no seal yet (call again).
        Raises FedMarketError if the seal leaves this provider out, or if the aggregator signed
        two seals (then nothing is revealed: the round will be rejected)."""
        message = self._sealed.get((job_id, round_))
        if message is None:
            return None
        aggregator = self.dep.job(job_id)["aggregator"]
        found = sl.seals(self.dep, self.mailbox.read(sl.seal_topic(job_id, round_)), job_id, round_, aggregator)
        if not found:
            return None
        del self._sealed[(job_id, round_)]
        if len(found) > 1:
            raise FedMarketError(f"round {round_}: the aggregator signed {len(found)} different seals; not revealing")
        mine = sl.commitment(self.address, bytes.fromhex(message["update_root"][2:]), message["weight"],
                             bytes.fromhex(message["salt"][2:]))
        if found[0].get(self.address) != mine:
            raise FedMarketError(f"round {round_}: the aggregator's seal does not hold this provider's commitment")
        blob = self._sealed_blobs.pop((job_id, round_), None)
        if blob is not None:
            self.store.put(blob)
        self.mailbox.post(round_topic(job_id, round_), canonical_json(message))
        return message

    # ---- secure aggregation (privacy modes secagg and secagg_dp) ---------------------------

    def _members(self, job_id: int, round_: int) -> list[str]:
        key = (job_id, round_)
        if key not in self._members_of:
            self._members_of = {k: v for k, v in self._members_of.items() if k[0] != job_id}
            self._members_of[key] = sr.participants(self.dep, self.inspect(job_id), job_id, round_)
        return self._members_of[key]

    def members(self, job_id: int, round_: int) -> list[str]:
        """The providers the round's public seed picked, in address order (their SecAgg+ uids)."""
        return list(self._members(job_id, round_))

    def holds_round_secrets(self, job_id: int, round_: int) -> bool:
        """Whether this object drew the round's SecAgg+ secrets (a restarted process did not)."""
        return (job_id, round_) in self._clients

    def survivor_set(self, job_id: int, round_: int) -> frozenset[int]:
        """The survivor set the aggregator signed for the round (ProtocolViolation unless exactly one)."""
        return self._survivor_set(job_id, round_, self._client(job_id, round_)[1].round_id)

    def selected(self, job_id: int, round_: int) -> bool:
        """Whether the round's public seed picked this provider (always, without per-round selection)."""
        return self.address in self._members(job_id, round_)

    def takes_part(self, job_id: int, round_: int) -> bool:
        """Whether this provider plays the round's secure phases: selected, and not `frozen`."""
        return self.selected(job_id, round_) and not self.frozen(job_id, round_)

    def trained_from(self, job_id: int, round_: int) -> str:
        """The root of the model round `round_` trains from: the last committed round's (round 0's is
        the all-zero start, which an empty round 0 keeps)."""
        key = (job_id, round_)
        if key not in self._trained_from:  # (a committed round never changes)
            if round_ == 0:
                spec = self.inspect(job_id)
                root = vector_root(np.zeros(spec.n_params, dtype=np.int64), spec.quantization.chunk_size)
            else:
                root = committed_rounds(self.dep, job_id)[round_ - 1].model_root
            self._trained_from = {key: "0x" + bytes(root).hex()}
        return self._trained_from[key]

    def frozen(self, job_id: int, round_: int) -> str:
        """Why this provider sits out a `secagg` round ('' if it does not): it released a masked
        update trained from this very model in an earlier round, and nothing has moved the model
        since (that round committed nothing). Its update now would be the same vector, and a second
        sum over other providers would give it away (found by a privacy review: aborted rounds, or
        a made-up abort, re-sent every update into sums over different sets, and the sums solved
        for each one). The first masked input counts, not a confirmation: its neighbours can
        rebuild its self-mask whether or not it confirms (a review of the first version of this
        rule). In `secagg_dp` each release carries fresh noise and every round is charged on chain."""
        if self.inspect(job_id).privacy.mode != "secagg":
            return ""
        spent = self.releases.spent(job_id, self.trained_from(job_id, round_))
        if spent is None or spent == round_:
            return ""
        return (f"it released round {spent}'s update from this same model, which nothing has moved since: a "
                "second sum over other providers would give that update away")

    def _client(self, job_id: int, round_: int) -> tuple[SecAggClient, SecAggConfig]:
        key = (job_id, round_)
        if key not in self._clients:
            spec = self.inspect(job_id)
            if not spec.privacy.secure:
                raise FedMarketError(f"job {job_id} does not use secure aggregation")
            members = self._members(job_id, round_)
            if self.address not in members:
                raise FedMarketError(f"{self.address} is not selected for round {round_} of job {job_id}")
            cfg = sr.round_config(self.dep, spec, job_id, round_, len(members))
            uid = members.index(self.address)
            self._clients = {k: v for k, v in self._clients.items() if k[0] != job_id}  # one live round per job
            self._seen_masked = {k: v for k, v in self._seen_masked.items() if k[0] != job_id}
            self._upload_signers = {k: v for k, v in self._upload_signers.items() if k[0] != job_id}
            self._masked_blob = {k: v for k, v in self._masked_blob.items() if k[0] != job_id}
            self._clients[key] = (SecAggClient(uid, cfg, sr.graph_of(cfg)[uid]), cfg)
        return self._clients[key]

    def advertise(self, job_id: int, round_: int) -> None:
        """Secure phase 1: post this round's signed public keys (nothing if not selected, or if this
        provider already released the round: keys drawn after a restart would be fresh, and its
        earlier ones would make it a duplicate that everyone drops)."""
        if not self.takes_part(job_id, round_) or self.releases.released(job_id, round_):
            return
        client, cfg = self._client(job_id, round_)
        self.mailbox.post(sr.topic(job_id, round_, "keys"),
                          sr.keys_message(self.account.key, cfg.round_id, self.address, client.advertise()))

    def share(self, job_id: int, round_: int) -> None:
        """Secure phase 2: Shamir-share this round's secrets among the neighbours that advertised keys."""
        if not self.takes_part(job_id, round_):
            return
        client, cfg = self._client(job_id, round_)
        keys = sr.advertised(self.mailbox.read(sr.topic(job_id, round_, "keys")), self._members(job_id, round_), cfg.round_id)
        shares = client.share_keys(keys)
        self.mailbox.post(sr.topic(job_id, round_, "shares"),
                          sr.shares_message(self.account.key, cfg.round_id, self.address, client.uid, shares))

    def _check_keys_once(self, job_id: int, round_: int) -> None:
        """SecAggAbort unless this provider's current keys are the ones everybody accepted for the round
        (after a restart it drew fresh ones, and keys posted twice are dropped: it sits the round out)."""
        client, cfg = self._client(job_id, round_)
        mine = sr.advertised(self.mailbox.read(sr.topic(job_id, round_, "keys")), self._members(job_id, round_),
                             cfg.round_id).get(client.uid)
        if mine is None or mine != client.advertise():
            raise SecAggAbort(f"job {job_id} round {round_}: this provider's keys are not the round's "
                              "(posted twice after a restart, or never): it sits the round out")

    def _survivor_set(self, job_id: int, round_: int, round_id: bytes) -> frozenset[int]:
        """The survivor set the job's aggregator signed for the round (exactly one, or ProtocolViolation)."""
        aggregator = self.dep.job(job_id)["aggregator"]
        posted = []
        for raw in self.mailbox.read(sr.topic(job_id, round_, "survivors")):
            try:
                posted.append(sr.opened(raw, round_id, "survivors", "aggregator"))
            except FedMarketError:
                continue
        posted = [m for i, m in enumerate(posted) if m["aggregator"] == aggregator and m not in posted[:i]]
        if len(posted) != 1:  # (copies of one signed set, which anyone can make, are that set once)
            raise ProtocolViolation(f"job {job_id} round {round_}: expected one survivor set from the aggregator, found {len(posted)}")
        return frozenset(int(u) for u in posted[0]["survivors"])

    def watch_uploads(self, job_id: int, round_: int) -> None:
        """Note which members' signed masked updates are on the mailbox while the aggregator has
        posted no survivor set yet (read first, then found absent: each one predates the set).
        `confirm` refuses a set that leaves out one of them that is this provider's neighbour.
        Until then it also puts its own masked update's blob back if someone deleted it (anyone
        can, on a shared store): left out for a missing blob, it would make its neighbours refuse
        the set and abort the round."""
        if not self.takes_part(job_id, round_) or (job_id, round_) not in self._clients:
            return  # nothing masked here this round
        own = self._masked_blob.get((job_id, round_))
        if own is not None:
            try:  # read back (never past its own length), not `has`: an overwritten blob is as good as gone
                self.store.get_capped(cid_of(own), len(own))
            except StorageUnreachable:
                pass
            except StorageError:
                self.store.put(own)
        members = self._members(job_id, round_)
        cache = self._upload_signers.setdefault((job_id, round_), {})
        uploaded = signed_on(self.dep, self.mailbox, job_id, round_, "update", cache)
        if signed_on(self.dep, self.mailbox, job_id, round_, "survivors", cache):
            return  # the aggregator's survivor set is out: what was just read may postdate it
        seen = self._seen_masked.setdefault((job_id, round_), set())
        seen.update(members.index(a) for a in uploaded if a in members)

    def confirm(self, job_id: int, round_: int) -> None:
        """Secure phase 4 (consistency check): sign the aggregator's survivor set, once per round,
        unless it leaves out a neighbour whose masked update `watch_uploads` saw before the set."""
        if not self.takes_part(job_id, round_):
            return
        client, cfg = self._client(job_id, round_)
        survivors = client.confirm(self._survivor_set(job_id, round_, cfg.round_id),
                                   self._seen_masked.get((job_id, round_), set()))
        self.mailbox.post(sr.topic(job_id, round_, "confirm"),
                          sr.confirm_message(self.account.key, cfg.round_id, self.address, client.uid, survivors))

    def unmask(self, job_id: int, round_: int) -> None:
        """Secure phase 5: once enough survivors signed the same survivor set (and none another),
        answer it with this provider's shares."""
        if not self.takes_part(job_id, round_):
            return
        client, cfg = self._client(job_id, round_)
        survivors = self._survivor_set(job_id, round_, cfg.round_id)
        members = self._members(job_id, round_)
        confirmed = sr.pinned(cfg, members, self.mailbox.read(sr.topic(job_id, round_, "confirm")), survivors)
        resp = client.unmask(survivors, confirmed)
        self.mailbox.post(sr.topic(job_id, round_, "unmask"),
                          sr.unmask_message(self.account.key, cfg.round_id, self.address, resp))

    def reward_leaf(self, job_id: int) -> tuple[dict, list[bytes]]:
        """This provider's reward leaf and Merkle proof, rebuilt from the published rewards document."""
        return reward_leaf(self.dep, self.store, self.address, job_id)

    def claim(self, job_id: int) -> Receipt:
        """Claim the reward, release the job stake and apply the reputation change, in one transaction."""
        return claim_reward(self.dep, self.store, self.account, job_id)
