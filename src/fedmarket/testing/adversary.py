"""Cheating participants, for tests and benchmarks of what cheating earns.

Cheating providers: honest on chain (join, signed receipts, claims), dishonest in what they release.

Every attack of the engine's catalogue (:data:`fedmarket.fl.attacks.ATTACKS`) can be run by
market providers: :class:`AdversarialProvider` trains like :class:`~fedmarket.roles.Provider`
(on data the attack poisoned once, e.g. flipped labels or a backdoor trigger) and releases what the
attack's ``poison_updates`` makes of its update. Colluding accounts (Sybil copies, "a little is
enough") share one :class:`Coalition`: each round it trains every member first, then poisons the
members' updates together, as :func:`fedmarket.fl.simulation.simulate` does with its malicious
clients. The math is the catalogue's; nothing here re-implements an attack.

Only the released update changes: the provider still signs its receipt, posts it on the round's
topic and claims like anyone, so what validators and the chain see is what a real attacker would
produce. Plain privacy mode only (a masked or DP-noised update is a different attack surface).

Provable cheats of the other roles: :class:`ShiftyAggregator` (a wrong aggregate),
:class:`DroppingAggregator` (an acknowledged update left out) and
:class:`EquivocatingValidator` (two attestations of one round).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from ..errors import ConfigError, FedMarketError
from ..fl.attacks import ATTACKS, Attack, FreeRider, Sybil, make_attack
from ..fl.train import local_train
from ..jobmodel import job_model
from ..protocol.encoding import canonical_json
from ..protocol.receipts import Attestation
from ..roles.aggregator import Aggregator
from ..roles.common import committed_rounds, round_providers, round_topic
from ..roles.provider import Provider, training_seed
from ..roles.validator import Validator
from ..spec import JobSpec

__all__ = [
    "ATTACK_NAMES",
    "AdversarialProvider",
    "Coalition",
    "DroppingAggregator",
    "EquivocatingValidator",
    "JitteredSybil",
    "LoudFreeRider",
    "ShiftyAggregator",
    "adversaries",
]

ATTACK_NAMES: tuple[str, ...] = tuple(ATTACKS)  # the catalogue, in its order


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "big")


class Coalition:
    """The accounts of one attacker (one account for a lone attacker) and the attack they run.

    Parameters
    ----------
    attack : Attack or str
        An attack of the catalogue, or its name (built with ``params``).
    seed : int, optional
        Seed of the attack's randomness (data poisoning, noise).
    params
        Keyword parameters of the attack when ``attack`` is a name.
    """

    def __init__(self, attack: Attack | str, seed: int = 0, **params: Any) -> None:
        if isinstance(attack, str):
            attack = make_attack(attack, **params)
        elif params:
            raise ConfigError("attack parameters are only taken with an attack name")
        if not isinstance(attack, Attack):
            raise ConfigError(f"not an attack: {attack!r}")
        self.attack = attack
        self.seed = int(seed)
        self.members: list[AdversarialProvider] = []
        self._rounds: dict[tuple[int, int], dict[str, tuple[np.ndarray, float]]] = {}

    @property
    def name(self) -> str:
        return self.attack.name

    @property
    def addresses(self) -> list[str]:
        return [m.address for m in self.members]

    def released(self, member: AdversarialProvider, spec: JobSpec, job_id: int, round_: int,
                 q_global: np.ndarray) -> tuple[np.ndarray, float]:
        """`member`'s poisoned float delta for the round and the loss it reports: on the first call of a
        round, every selected member trains (on its poisoned data) and the attack poisons their updates
        together."""
        key = (job_id, round_)
        if key not in self._rounds:
            selected = set(round_providers(member.dep, spec, job_id, round_))
            active = [m for m in self.members if m.address in selected]
            trained = [m._trained_delta(spec, job_id, round_, q_global) for m in active]
            U = np.stack([d for d, _ in trained])
            rng = np.random.default_rng(_seed("attack", self.seed, job_id, round_))
            P = np.asarray(self.attack.poison_updates(U, len(selected), rng), dtype=np.float64)
            if P.shape != U.shape:
                raise FedMarketError(f"attack {self.name} returned updates of shape {P.shape}, expected {U.shape}")
            self._rounds = {k: v for k, v in self._rounds.items() if k[0] != job_id}  # one live round per job
            self._rounds[key] = {m.address: (P[i], loss) for i, (m, (_, loss)) in enumerate(zip(active, trained))}
        out = self._rounds[key].get(member.address)
        if out is None:
            raise FedMarketError(f"{member.address} is not selected for round {round_} of job {job_id}")
        return out


class AdversarialProvider(Provider):
    """A provider that runs `coalition`'s attack: joins, signs and claims honestly, releases a poisoned update.

    The attack's ``poison_data`` is applied once, to the normalised local data, the first time the
    provider trains for a job (its ``X``/``y`` stay the real data, so the schema check at join passes).
    """

    def __init__(self, *args: Any, coalition: Coalition | Attack | str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.coalition = coalition if isinstance(coalition, Coalition) else Coalition(coalition)
        self.coalition.members.append(self)
        self._poisoned: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def attack(self) -> Attack:
        return self.coalition.attack

    def _sits_out(self, spec: JobSpec, q: np.ndarray) -> str:
        return ""  # a cheater sends what its attack makes, the model sent back included

    def _training_data(self, spec: JobSpec, job_id: int) -> tuple[np.ndarray, np.ndarray]:
        if job_id not in self._poisoned:
            rng = np.random.default_rng(_seed("data", self.coalition.seed, self.address, job_id))
            self._poisoned[job_id] = self.attack.poison_data(spec.normalize(self.X), self.y, spec.data.n_classes, rng)
        return self._poisoned[job_id]

    def _trained_delta(self, spec: JobSpec, job_id: int, round_: int, q_global: np.ndarray) -> tuple[np.ndarray, float]:
        """What honest local training on the (poisoned) data gives: (float delta, training loss)."""
        jm = job_model(spec, self.store)
        Xn, y = self._training_data(spec, job_id)
        start = jm.params(q_global)
        local = local_train(jm.model, start, Xn, y, spec.training.local(), seed=training_seed(self.address, job_id, round_),
                            round_=round_)
        return local - start, float(jm.model.loss_and_grad(local, Xn, y)[0])

    def _local_delta(self, spec: JobSpec, job_id: int, round_: int, q_global: np.ndarray) -> np.ndarray:
        if spec.privacy.mode != "plain":
            raise FedMarketError(f"adversarial providers run in plain jobs only, not {spec.privacy.mode}")
        return self.coalition.released(self, spec, job_id, round_, q_global)[0]


def adversaries(attack: Attack | str, dep, accounts, store, mailbox, data, seed: int = 0,
                **params: Any) -> list[AdversarialProvider]:
    """One coalition running `attack`: an :class:`AdversarialProvider` per account, each with its
    ``(X, y)`` of `data`."""
    coalition = Coalition(attack, seed, **params)
    return [AdversarialProvider(dep, a, store, mailbox, X, y, coalition=coalition) for a, (X, y) in zip(accounts, data)]


# ---------------------------------------------------------------- evasions (not in the engine's catalogue)
# Variants tuned to slip under `scoring.detect`'s thresholds, to measure what detection misses.


class JitteredSybil(Sybil):
    """Sybil copies of one update, each plus independent Gaussian noise of about `rel` times the
    update's norm: far enough apart to pass the copy check (`sybil_tol`, 1% of the median norm)."""

    def __init__(self, base: Attack | None = None, rel: float = 0.05) -> None:
        super().__init__(base if base is not None else Attack())
        if not np.isfinite(rel) or rel <= 0:
            raise ConfigError(f"rel must be a positive number, got {rel!r}")
        self.rel = float(rel)

    def poison_updates(self, U, n_total, rng):
        P = super().poison_updates(U, n_total, rng)
        sigma = self.rel * float(np.linalg.norm(P[0])) / np.sqrt(P.shape[1])
        return P + rng.normal(0.0, sigma, size=P.shape)


class LoudFreeRider(FreeRider):
    """A free-rider whose noise is `rel` times the norm of the update it did not send: above the
    free-rider threshold (`zero_tol`, 5% of the median norm). It trains only to size the noise."""

    def __init__(self, rel: float = 0.5) -> None:
        super().__init__(mode="noise")
        if not np.isfinite(rel) or rel <= 0:
            raise ConfigError(f"rel must be a positive number, got {rel!r}")
        self.rel = float(rel)

    def poison_updates(self, U, n_total, rng):
        sigma = self.rel * np.linalg.norm(U, axis=1, keepdims=True) / np.sqrt(U.shape[1])
        return rng.normal(0.0, 1.0, size=U.shape) * sigma


# ---------------------------------------------------------------- copying another's update


class CopyingProvider(Provider):
    """Trains and commits like everyone, then, at its reveal, takes the update `victim` just revealed
    on the mailbox and posts it as its own (its receipt re-signed, its own salt). With
    `late_commit` it also posts a commitment to the copy, after the seal (what a copier whose
    aggregator would re-seal for it needs)."""

    victim: str = ""
    late_commit: bool = False

    def _post_update(self, spec, job_id, round_, q, weight):
        if self.late_commit:  # commits only to the copy, once it has one
            return {"provider": self.address, "update_cid": "", "weight": weight}
        return super()._post_update(spec, job_id, round_, q, weight)

    def reveal(self, job_id, round_):
        import json
        import secrets

        from ..protocol.receipts import UpdateReceipt
        from ..roles import sealed as sl

        self._sealed.pop((job_id, round_), None)
        original = None
        for raw in self.mailbox.read(round_topic(job_id, round_)):
            msg = json.loads(raw)
            if msg.get("provider") == self.victim:
                original = msg
        if original is None:
            return None
        root, weight, salt = bytes.fromhex(original["update_root"][2:]), int(original["weight"]), secrets.token_bytes(32)
        sig = UpdateReceipt(job_id, round_, root, weight).sign(self.account.key, self.dep.chain_id, self.dep.disputes.address)
        copy = dict(original, provider=self.address, signature="0x" + sig.hex(), salt="0x" + salt.hex())
        if self.late_commit:
            value = sl.commitment(self.address, root, weight, salt)
            self.mailbox.post(sl.commit_topic(job_id, round_), sl.commitment_message(self.dep, self.account, job_id, round_, value))
        self.mailbox.post(round_topic(job_id, round_), canonical_json(copy))
        return copy


class ResealingAggregator(Aggregator):
    """Colludes with a copier: before collecting, it seals the round again, now over every
    commitment in the mailbox (the copier's late one included), and collects against that seal."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._latest: dict[tuple[int, int], dict] = {}

    def collect(self, job_id, round_, spec):
        from ..roles import sealed as sl

        selected = set(round_providers(self.dep, spec, job_id, round_))
        taken = sl.commitments(self.dep, self.mailbox.read(sl.commit_topic(job_id, round_)), job_id, round_, selected)
        msg = sl.seal_message(self.dep, self.account, job_id, round_, taken)
        self.mailbox.post(sl.seal_topic(job_id, round_), canonical_json(msg))
        self._latest[(job_id, round_)] = msg
        return super().collect(job_id, round_, spec)

    def posted_seal(self, job_id, round_):
        return self._latest.get((job_id, round_)) or super().posted_seal(job_id, round_)


# ---------------------------------------------------------------- provable cheats of the other roles


class ShiftyAggregator(Aggregator):
    """Nudges one coordinate of round `shift_round`'s model by 3 quantisation steps: the kind of
    error nobody would notice by eye, and a wrong aggregate the fraud proof catches."""

    shift_round = 1
    _shifting = False

    def run_round(self, job_id, round_, collected=None):
        self._shifting = round_ == self.shift_round
        return super().run_round(job_id, round_, collected)

    def aggregate(self, spec, q_global, updates, correction):
        q = super().aggregate(spec, q_global, updates, correction)
        if self._shifting:
            q = q.copy()
            q[200] += 3
        return q


class DroppingAggregator(Aggregator):
    """Countersigns every update of round 1 (collect posts the acks), then leaves one out of the
    round: `victim`'s, or the first in address order when no victim is named (censorship)."""

    victim: str | None = None

    def collect(self, job_id, round_, spec):
        updates, rejected = super().collect(job_id, round_, spec)
        if round_ == 1 and updates:
            victim = self.victim or updates[0].provider
            updates = [u for u in updates if u.provider != victim]
        return updates, rejected


class EquivocatingValidator(Validator):
    """Reviews honestly, then also signs and posts a second attestation of the same round with other scores."""

    def review(self, job_id, round_):
        msg = super().review(job_id, round_)
        other = b"\x5a" * 32
        model_root = committed_rounds(self.dep, job_id)[round_].model_root
        sig = Attestation(job_id, round_, model_root, other).sign(self.account.key, self.dep.chain_id,
                                                                  self.dep.disputes.address)
        self.mailbox.post(round_topic(job_id, round_) + "-attestations",
                          canonical_json(dict(msg, scores_root="0x" + other.hex(), signature="0x" + sig.hex())))
        return msg


# ---------------------------------------------------------------- griefing and cheats of tests/security
# Each is an honest role with one thing changed, so that what the chain and the other roles see is
# what a real attacker would produce. `tests/security/` and `benchmarks/attack_economics.py` use them.


class SilentProvider(Provider):
    """Joins (stake and all), then never sends an update: a liveness fault of a provider."""

    def train(self, job_id, round_):
        return None

    def advertise(self, job_id, round_):
        return None

    def share(self, job_id, round_):
        return None

    def confirm(self, job_id, round_):
        return None

    def unmask(self, job_id, round_):
        return None


class InflatedWeightProvider(Provider):
    """Trains honestly but signs `factor` times its sample count as its update's weight: a claim
    nobody can check (docs/security.md, known limits), which the weight basis pays for."""

    factor = 100

    def _released(self, spec, delta, cfg=None):
        q, weight = super()._released(spec, delta, cfg)
        return q, weight if spec.unit_weights else weight * self.factor


class DoubleUpdateProvider(Provider):
    """Posts two different updates (and receipts) in every round, hoping to choose which counts."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._firsts: dict[tuple[int, int], dict] = {}

    def train(self, job_id, round_):
        first = super().train(job_id, round_)
        if first is None:
            return None
        from ..protocol.encoding import decode_vector

        spec = self.inspect(job_id)
        pending = self._sealed.pop((job_id, round_), None)  # a sealed round: the first is committed first
        blob = self._sealed_blobs.pop((job_id, round_), None)  # (its blob kept for the reveal)
        if pending is not None:
            self._firsts[(job_id, round_)] = (pending, blob)
        q = decode_vector(blob if blob is not None else self.store.get(first["update_cid"]), spec.n_params) + 1
        return self._post_update(spec, job_id, round_, q, int(first["weight"]))

    def reveal(self, job_id, round_):
        """A sealed round: once sealed, reveals both (only the one whose commitment the seal took
        can count)."""
        from ..roles import sealed as sl

        key = (job_id, round_)
        if key not in self._firsts:
            return super().reveal(job_id, round_)
        aggregator = self.dep.job(job_id)["aggregator"]
        if not sl.seals(self.dep, self.mailbox.read(sl.seal_topic(job_id, round_)), job_id, round_, aggregator):
            return None
        (first, first_blob), second = self._firsts.pop(key), self._sealed.pop(key, None)
        for message, blob in ((first, first_blob), (second, self._sealed_blobs.pop(key, None))):
            if message is not None:
                if blob is not None:
                    self.store.put(blob)
                self.mailbox.post(round_topic(job_id, round_), canonical_json(message))
        return first


class SilentValidator(Validator):
    """Joins with its stake, then never reviews, attests, reveals or approves anything."""

    def review(self, job_id, round_):
        return None

    def reveal(self, job_id, round_):
        return None

    def approve_rewards(self, job_id):
        return None

    def report_misbehaviour(self, job_id):
        return []


class BrokenDataValidator(Validator):
    """A validator whose held-out data does not fit the job's schema and which joins anyway (it
    skips the role's schema check); it can then never score a round, so it never votes."""

    def inspect(self, job_id):
        from ..roles.common import check_terms, load_spec

        spec = load_spec(self.dep, self.store, job_id)
        check_terms(self.dep, spec, job_id)
        return spec  # no `spec.data.check(self.X, self.y)`: the honest role refuses here

    def review(self, job_id, round_):
        try:
            return super().review(job_id, round_)
        except Exception:  # noqa: BLE001 - its data cannot be scored: it stays silent
            return None

    def approve_rewards(self, job_id):
        try:
            return super().approve_rewards(job_id)
        except Exception:  # noqa: BLE001
            return None


class MuteAggregator(ShiftyAggregator):
    """Commits a wrong aggregate (see ShiftyAggregator) and never answers a dispute game."""

    def defend(self, job_id):
        return []


class ForgingAggregator(Aggregator):
    """Collects and acknowledges like the honest role, then hands the round's verified updates to
    `forge(job_id, round_, spec, updates)` (identity here) and aggregates and commits whatever it
    returns: reorder, drop, add an update of its own making. Subclasses (or an instance attribute
    `forge`) decide what."""

    def forge(self, job_id, round_, spec, updates):
        return updates

    def collect(self, job_id, round_, spec):
        updates, rejected = super().collect(job_id, round_, spec)
        return list(self.forge(job_id, round_, spec, list(updates))), rejected


class UnorderedAggregator(ForgingAggregator):
    """Commits its updates tree in descending provider order (the contracts require ascending)."""

    def forge(self, job_id, round_, spec, updates):
        return sorted(updates, key=lambda u: int(u.provider, 16), reverse=True)


class TamperingPoster(Aggregator):
    """Aggregates honestly, then posts a reward root of `tamper(doc)`: the honest rewards document
    changed in place (identity here). The tampered document is what it publishes and defends."""

    def tamper(self, doc):
        return doc

    def rewards_document(self, job_id, spec, basis=None):
        return self.tamper(super().rewards_document(job_id, spec, basis))


class SelfPayingAggregator(TamperingPoster):
    """A job without validators: its own leaf takes the whole pool, the providers' leaves nothing
    (the totals add up, every value is right: only the reward rule is broken)."""

    def tamper(self, doc):
        pool = int(doc["pool"])
        for leaf in doc["leaves"]:
            leaf["amount"] = str(pool if leaf["account"] == self.address else 0)
        doc["total"] = str(pool)
        return doc


class InflatingAggregator(TamperingPoster):
    """Doubles the value of one provider's leaf (`favoured`, else the first provider) and pays every
    provider `pool * value // value_total` of the inflated values: the reward rule holds leaf by
    leaf, only a value game over the rounds shows the value was never aggregated."""

    favoured: str | None = None

    def tamper(self, doc):
        from ..protocol import rules as R

        providers = [leaf for leaf in doc["leaves"] if int(leaf["role"]) == R.Role.PROVIDER]
        pick = next((leaf for leaf in providers if leaf["account"] == self.favoured), providers[0])
        pick["value"] = 2 * int(pick["value"])
        value_total = sum(int(leaf["value"]) for leaf in providers if leaf["account"] not in doc["slashed"])
        pool = int(doc["pool"]) - int(doc["fees"]["reserved"])  # what the roles' fees leave the providers
        for leaf in providers:
            if leaf["account"] not in doc["slashed"]:
                leaf["amount"] = str(pool * int(leaf["value"]) // value_total if value_total else 0)
        doc["value_total"] = str(value_total)
        doc["total"] = str(sum(int(leaf["amount"]) for leaf in doc["leaves"]))
        return doc


class _Overlay:
    """A blob store that writes to `private` and reads from `private`, then `public`."""

    def __init__(self, private, public):
        self.private = private
        self.public = public

    def put(self, data):
        return self.private.put(data)

    def get(self, cid):
        return self.private.get(cid) if self.private.has(cid) else self.public.get(cid)

    def get_capped(self, cid, limit):
        return (self.private if self.private.has(cid) else self.public).get_capped(cid, limit)

    def has(self, cid):
        return self.private.has(cid) or self.public.has(cid)


class WithholdingAggregator(Aggregator):
    """Commits its rounds but keeps their data (metrics document, model, correction) in `private`, a
    store nobody else reads; it publishes only its rewards document. It can still defend, from
    its private copy, whatever it committed."""

    def __init__(self, dep, account, store, mailbox, private=None):
        import tempfile

        from ..storage import LocalBlobStore

        super().__init__(dep, account, store, mailbox)
        self.public = store
        self.private = private if private is not None else LocalBlobStore(tempfile.mkdtemp(prefix="withheld-"))
        self.store = _Overlay(self.private, store)
        self.defender.store = self.store
        self.defender.auditor.store = self.store

    def post_rewards(self, job_id, basis=None):
        receipt = super().post_rewards(job_id, basis)
        cid = receipt.event("RewardRootPosted")["rewards_cid"]
        self.public.put(self.store.get(cid))
        return receipt


class WithholdingShiftyAggregator(WithholdingAggregator, ShiftyAggregator):
    """A wrong aggregate (ShiftyAggregator) whose round data is withheld (WithholdingAggregator)."""


class CorrectionFakingAggregator(Aggregator):
    """A secure job: unmasks honestly, then commits a mask correction `offset` off in its first value
    and the model that correction gives, so the aggregate game is consistent with what it
    committed: only a validator re-deriving the correction from the transcript sees the lie."""

    offset = 1_000

    def _secure_round(self, job_id, round_, spec, updates):
        kept, corr, transcript = super()._secure_round(job_id, round_, spec, updates)
        corr = corr.copy()
        corr[0] = np.int64(int(corr[0]) + self.offset)
        return kept, corr, transcript


class FalseChallenger:
    """Mixin of `roles.challenger.Challenger`: besides any true fault, challenges what is right, once
    each: the first round's chunk 0 (`kind` "aggregate"), its leaf 0 ("leaf"), the first
    acknowledged update ("inclusion"), the reward root as a whole ("reward_sum") or its leaf 0
    ("reward_value"); then plays its own moves as any challenger would and loses its bond."""

    kind = "aggregate"

    def _false_round_game(self, job_id):
        from ..roles.games import Truth

        truth = Truth(self.dep, self.store, job_id, self.auditor)
        if not truth.rounds:
            return None
        self._bond(job_id, self.dep.round_arbiter)
        data, proof, prev, prev_proof = truth.round_args(0)
        if self.kind == "aggregate":
            return self.dep.round_arbiter.transact("challenge_aggregate", job_id, 0, 0, data, proof, prev, prev_proof,
                                                   sender=self.account)
        if self.kind == "leaf":
            return self.dep.round_arbiter.transact("challenge_leaf", job_id, 0, 0, data, proof, prev, prev_proof,
                                                   sender=self.account)
        return None

    def check(self, job_id, verified=None, mailbox=None):
        found = super().check(job_id, mailbox=mailbox)
        if found is not None or getattr(self, "_false_done", False) or self.kind not in ("aggregate", "leaf"):
            return found
        self._false_done = True
        return self._false_round_game(job_id)

    def check_censorship(self, job_id, mailbox):
        found = super().check_censorship(job_id, mailbox)
        if found or getattr(self, "_false_done", False) or self.kind != "inclusion":
            return found
        import json

        from ..roles.common import committed_rounds as _rounds
        from ..roles.common import round_topic as _topic

        rounds = _rounds(self.dep, job_id)
        if not rounds:
            return []
        self._false_done = True
        acks = [json.loads(raw) for raw in mailbox.read(_topic(job_id, 0) + "-acks")]
        receipts = {json.loads(raw)["provider"]: json.loads(raw) for raw in mailbox.read(_topic(job_id, 0))}
        ack = next(a for a in acks if a["provider"] in receipts)
        rec = receipts[ack["provider"]]
        from ..roles.games import Truth

        data, proof, _, _ = Truth(self.dep, self.store, job_id, self.auditor).round_args(0)
        self._bond(job_id, self.dep.round_arbiter)
        return [self.dep.round_arbiter.transact(
            "challenge_inclusion", job_id, 0, data, proof, ack["provider"], bytes.fromhex(ack["update_root"][2:]),
            int(ack["weight"]), bytes.fromhex(rec["signature"][2:]), bytes.fromhex(ack["signature"][2:]),
            sender=self.account)]

    def check_rewards(self, job_id):
        from ..market import JobState as _JobState

        found = super().check_rewards(job_id)
        if (found is not None or getattr(self, "_false_rewards_done", False)
                or self.kind not in ("reward_sum", "reward_value")
                or self.dep.job(job_id)["state"] != _JobState.FINALIZING):
            return found
        self._false_rewards_done = True
        self._bond(job_id, self.dep.reward_arbiter)
        if self.kind == "reward_sum":
            return self.dep.reward_arbiter.transact("challenge_rewards", job_id, sender=self.account)
        return self.dep.reward_arbiter.transact("challenge_value", job_id, 0, sender=self.account)
