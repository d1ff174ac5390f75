"""Secure aggregation of one market round over the mailbox: who takes part, the signed messages
of the SecAgg+ phases (with the consistency check), and the transcript that lets anyone re-derive
the mask correction.

Flow of round r of a job in privacy mode ``secagg`` / ``secagg_dp`` (uids are the round's
selected providers in address order, so everyone agrees on them without a message). Every message
is signed by its sender's market key over its exact bytes, which name the round (``round_id`` =
keccak of chain id, disputes contract, job, round) and the phase; a message replayed from another
round, job, chain or phase is rejected, and a provider with two messages in one phase is dropped
from it (duplicates are rejected, not ordered):

1. every provider posts its key advertisement (``keys``);
2. every provider posts its encrypted Shamir shares for its neighbours (``shares``);
3. every provider that received at least ``t`` authentic shares uploads its masked update and
   posts the usual signed receipt of it (its root is what the updates tree commits, so
   censorship stays provable); a provider releases one update per round (`privacy.releases`);
4. the aggregator verifies the receipts and posts the survivor set, signed (``survivors``);
5. consistency check: every surviving provider signs the survivor set it was shown (``confirm``),
   one set per round, never one smaller than the round's minimum;
6. a provider unmasks (``unmask``) only once at least ``min_survivors`` survivors signed exactly
   its set: no two providers act on different sets, since ``min_survivors`` is at least the
   `confirmation_quorum`, which two sets can never both reach (a provider's confirmation of
   another set counts for nothing; it no longer aborts the round, which let any one provider
   abort every secure round);
7. the aggregator removes the masks and commits the round. The updates tree lists the masked
   inputs and, after them, the *mask correction* ``sum(masked) - sum`` (mod 2**64), which the
   disputes contract's secure-sum rule subtracts when it recomputes a chunk. The keys, share
   senders, confirmations and unmask responses are published with the round, so anyone can
   re-derive the correction and check that the survivors pinned the set (validators do not attest
   a round where either fails).

The neighbour graph's seed includes the round's on-chain seed (fixed after the providers joined),
so addresses cannot be ground into a chosen neighbourhood.

The published transcript is exactly the aggregator's view in SecAgg+, which reveals nothing but
the sum as long as every survivor keeps a surviving honest neighbour (Bell et al. 2020).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import eth_abi
import numpy as np
from eth_utils import keccak

from ..errors import FedMarketError, MalformedMessage, SecAggAbort, ShareTampered
from ..market import Deployment
from ..privacy.secagg import (
    AdvertiseKeys,
    EncryptedShare,
    SecAggConfig,
    SecAggServer,
    UnmaskResponse,
    confirmation_quorum,
    dropout_shortfall,
    neighbour_graph,
    sampled_share,
)
from ..protocol.encoding import BAD_INPUT, canonical_json, untrusted_json
from ..protocol.rules import ring_sum
from ..spec import JobSpec
from .common import joined_providers, round_providers, round_seed, round_topic

ZERO_ADDRESS = "0x" + "00" * 20  # provider of the correction leaf
#: the fewest selected providers a secure round runs with (`per_round` sampling can select fewer
#: than the spec's minimum: such a round commits no update)
MIN_SECURE_ROUND = 3


def topic(job_id: int, round_: int, phase: str) -> str:
    return f"{round_topic(job_id, round_)}-sa-{phase}"


def participants(dep: Deployment, spec: JobSpec, job_id: int, round_: int) -> list[str]:
    """The round's selected providers in address order: provider ``uid`` is its index here."""
    return round_providers(dep, spec, job_id, round_)


@dataclass(frozen=True)
class Domain:
    """What every signed message of a secure round is bound to: the chain, the market, the job, the round."""

    chain_id: int
    contract: str
    job: int
    round: int

    @classmethod
    def of(cls, dep: Deployment, job_id: int, round_: int) -> Domain:
        return cls(int(dep.chain_id), dep.disputes.address, int(job_id), int(round_))

    @property
    def round_id(self) -> bytes:
        return keccak(eth_abi.encode(["uint256", "address", "uint256", "uint256"],
                                     [self.chain_id, self.contract, self.job, self.round]))

    def as_doc(self) -> dict:
        return {"chain_id": self.chain_id, "contract": self.contract, "job": self.job, "round": self.round}


def round_config(dep: Deployment, spec: JobSpec, job_id: int, round_: int, n: int) -> SecAggConfig:
    """Public parameters of the round, bound to this chain, market, job and round.

    The neighbour graph's seed also takes the round's on-chain seed (a block hash fixed after
    the providers joined), so nobody can grind addresses into a chosen neighbourhood, and the
    degree and threshold are sized for the job's ``max_dishonest`` colluders as well as its
    dropout (`privacy.secagg.default_degree`). A
    ``secagg_dp`` round needs all but ``dropout`` of its providers to survive: that minimum is
    what its noise is calibrated to (`privacy.dp.honest_minimum`)."""
    if n < MIN_SECURE_ROUND:
        raise SecAggAbort(f"job {job_id} round {round_}: {n} selected provider(s); a secure round needs "
                          f"{MIN_SECURE_ROUND} (with two, each learns the other's update from the sum): it commits no update")
    round_id = Domain.of(dep, job_id, round_).round_id
    dishonest = round_dishonest(spec, n, len(joined_providers(dep, job_id)))
    if dishonest != spec.privacy.max_dishonest:  # a sampled round: its draw may hold more colluders
        problem = dropout_shortfall(n, n, spec.privacy.dropout, dishonest)
        if problem:
            raise SecAggAbort(f"job {job_id} round {round_}: the {n} providers sampled may hold more colluders than "
                              f"the job's share ({problem}): it commits no update")
    return secagg_config(spec, n, round_id, keccak(round_id + round_seed(dep, job_id, round_)), dishonest)


def round_dishonest(spec: JobSpec, n: int, population: int) -> float:
    """The share of a round's ``n`` providers it is sized against colluding: the job's
    ``max_dishonest`` when every joined provider (``population``) is in the round, and the upper
    tail of the random draw when the job samples them (`privacy.secagg.sampled_share`)."""
    if not spec.participation.samples(population):
        return spec.privacy.max_dishonest
    return sampled_share(n, population, spec.privacy.max_dishonest)


def secagg_config(spec: JobSpec, n: int, round_id: bytes, graph_seed: bytes, dishonest: float | None = None) -> SecAggConfig:
    """The SecAgg+ parameters of a round of ``n`` providers of this job (what `round_config` binds
    to the chain): degree and threshold for the job's dropout and the round's share of colluders
    (`round_dishonest`; the job's ``max_dishonest`` by default), and its fewest survivors."""
    dishonest = spec.privacy.max_dishonest if dishonest is None else dishonest
    cfg = SecAggConfig.for_population(n, spec.n_params, dropout=spec.privacy.dropout,
                                      dishonest=dishonest, round_id=round_id, graph_seed=graph_seed)
    return dataclasses.replace(cfg, min_survivors=min_survivors(spec, n, cfg.threshold, dishonest))


def min_survivors(spec: JobSpec, n: int, threshold: int, dishonest: float | None = None) -> int:
    """Fewest masked inputs a round of ``n`` providers accepts, and fewest signed confirmations of
    its survivor set before anyone unmasks: the SecAgg threshold, the `confirmation_quorum` (so
    that no two survivor sets can both be confirmed, whatever the aggregator shows to whom), and in
    ``secagg_dp`` every provider but the tolerated dropout. ``dishonest`` is the round's share of
    colluders (the job's ``max_dishonest`` by default)."""
    dishonest = spec.privacy.max_dishonest if dishonest is None else dishonest
    fewest = max(threshold, confirmation_quorum(n, dishonest))
    if spec.privacy.mode != "secagg_dp":
        return fewest
    return max(fewest, n - math.floor(spec.privacy.dropout * n))


def graph_of(cfg: SecAggConfig) -> list[np.ndarray]:
    return neighbour_graph(cfg.n, cfg.k, cfg.graph_seed)


# ----------------------------------------------------------------------------- signed messages


def sign(key: bytes, round_id: bytes, phase: str, body: dict) -> bytes:
    """A signed message: the exact bytes signed (``body`` with the round id and the phase, as
    canonical JSON) travel as they are, next to the signature over their keccak."""
    from eth_account import Account as EthAccount  # loaded with the first secure round (about 0.5 s)
    from eth_account.messages import encode_defunct

    signed = canonical_json({**body, "round_id": "0x" + round_id.hex(), "phase": phase}).decode()
    sig = EthAccount.sign_message(encode_defunct(primitive=keccak(signed.encode())), private_key=key).signature
    return canonical_json({"signed": signed, "signature": "0x" + bytes(sig).hex()})


def opened(raw: bytes, round_id: bytes, phase: str, signer_field: str) -> dict:
    """The body of a signed message, verified on the exact bytes signed, for this round and phase,
    and signed by the address in its ``signer_field``; FedMarketError if not (a message replayed
    from another round, job, chain or phase included)."""
    from eth_account import Account as EthAccount
    from eth_account.messages import encode_defunct

    try:
        env = untrusted_json(raw)
        signed = env["signed"].encode()
        msg = untrusted_json(signed)
        bound = (msg.pop("round_id"), msg.pop("phase"))
    except BAD_INPUT as exc:
        raise FedMarketError(f"malformed secure-aggregation message: {exc}") from None
    try:
        signer = EthAccount.recover_message(encode_defunct(primitive=keccak(signed)),
                                            signature=bytes.fromhex(env["signature"].removeprefix("0x")))
    except Exception as exc:  # noqa: BLE001 - eth_account's errors for a signature recovering no key are no ValueError
        raise FedMarketError(f"malformed secure-aggregation message: its signature recovers no key ({exc})") from None
    if bound != ("0x" + round_id.hex(), phase):
        raise FedMarketError(f"secure-aggregation message for another round or phase ({bound[1]}): replayed")
    if signer != msg.get(signer_field):
        raise FedMarketError(f"secure-aggregation message claims {msg.get(signer_field)} but is signed by {signer}")
    return msg


def keys_message(key: bytes, round_id: bytes, provider: str, adv: AdvertiseKeys) -> bytes:
    return sign(key, round_id, "keys", {"provider": provider, "uid": adv.uid, "c_pk": adv.c_pk.hex(),
                                        "s_pk": adv.s_pk.hex(), "b_commit": adv.b_commit.hex()})


def shares_message(key: bytes, round_id: bytes, provider: str, uid: int, shares: list[EncryptedShare]) -> bytes:
    return sign(key, round_id, "shares", {"provider": provider, "uid": uid,
                                          "shares": [{"dst": s.dst, "blob": s.blob.hex()} for s in shares]})


def confirm_message(key: bytes, round_id: bytes, provider: str, uid: int, survivors: frozenset[int]) -> bytes:
    """Consistency check: the provider's signature on the survivor set it will unmask for."""
    return sign(key, round_id, "confirm", {"provider": provider, "uid": uid, "survivors": sorted(survivors)})


def unmask_message(key: bytes, round_id: bytes, provider: str, resp: UnmaskResponse) -> bytes:
    return sign(key, round_id, "unmask", {"provider": provider, "uid": resp.uid,
                                          "b_shares": {str(u): hex(s) for u, s in sorted(resp.b_shares.items())},
                                          "sk_shares": {str(u): hex(s) for u, s in sorted(resp.sk_shares.items())}})


def survivors_message(key: bytes, round_id: bytes, aggregator: str, shared: list[int], survivors: list[int]) -> bytes:
    return sign(key, round_id, "survivors", {"aggregator": aggregator, "shared": sorted(shared),
                                             "survivors": sorted(survivors)})


def phase_timeout(round_duration: int) -> float:
    """Seconds a role process waits for late members at each SecAgg+ phase before it goes on
    without them: a tenth of the job's round, between 5 s and 2 min (the providers and the
    aggregator use the same figure, so the aggregator outwaits the providers' last phase)."""
    return min(120.0, max(5.0, int(round_duration) / 10))


def by_uid(raws: list[bytes], members: list[str], round_id: bytes, phase: str) -> dict[int, dict]:
    """Signed provider messages of one phase keyed by uid, keeping only those whose signer owns that
    uid. A provider that signed two different messages in a phase is dropped from it: duplicates are
    rejected, not ordered. Copies of one signed message (the same signed bytes in another envelope,
    or under another signature of them) are that message once: anyone can make them, so they must
    not make a provider look like a double signer and drop it from the round."""
    out: dict[int, dict] = {}
    twice: set[int] = set()
    for raw in raws:
        try:
            msg = opened(raw, round_id, phase, "provider")
            uid = msg["uid"]
        except (FedMarketError, *BAD_INPUT):
            continue
        if type(uid) is int and 0 <= uid < len(members) and members[uid] == msg.get("provider"):
            if uid in out and out[uid] != msg:
                twice.add(uid)
            out.setdefault(uid, msg)
    return {u: m for u, m in out.items() if u not in twice}


def _parsed(by: dict[int, dict], parse) -> dict[int, Any]:
    """`parse(uid, message)` of each provider's message; a provider whose (signed) message does not
    parse is left out of the phase, as if it had dropped, rather than stopping the round."""
    out = {}
    for u, m in by.items():
        try:
            out[u] = parse(u, m)
        except BAD_INPUT:
            continue
    return out


def _uid(value) -> int:
    if type(value) is not int:
        raise TypeError(f"a uid is an integer, got {value!r}")
    return value


def advertised(raws: list[bytes], members: list[str], round_id: bytes) -> dict[int, AdvertiseKeys]:
    return _parsed(by_uid(raws, members, round_id, "keys"), lambda u, m: AdvertiseKeys(
        u, bytes.fromhex(m["c_pk"]), bytes.fromhex(m["s_pk"]), bytes.fromhex(m["b_commit"])))


def share_lists(raws: list[bytes], members: list[str], round_id: bytes) -> dict[int, list[EncryptedShare]]:
    return _parsed(by_uid(raws, members, round_id, "shares"),
                   lambda u, m: [EncryptedShare(u, _uid(s["dst"]), bytes.fromhex(s["blob"])) for s in m["shares"]])


def confirmations(raws: list[bytes], members: list[str], round_id: bytes) -> dict[int, frozenset[int]]:
    """The survivor set each provider signed in the consistency step."""
    return _parsed(by_uid(raws, members, round_id, "confirm"), lambda u, m: frozenset(_uid(v) for v in m["survivors"]))


def responses(raws: list[bytes], members: list[str], round_id: bytes) -> list[UnmaskResponse]:
    parsed = _parsed(by_uid(raws, members, round_id, "unmask"), lambda u, m: UnmaskResponse(
        u, {int(k): int(v, 16) for k, v in m["b_shares"].items()}, {int(k): int(v, 16) for k, v in m["sk_shares"].items()}))
    return [parsed[u] for u in sorted(parsed)]


def pinned(cfg: SecAggConfig, members: list[str], raws: list[bytes], survivors: frozenset[int]) -> frozenset[int]:
    """The survivors that signed exactly ``survivors`` in the consistency step. Raises SecAggAbort if
    fewer than ``min_survivors`` signed it. A member's signature on another set counts for nothing:
    ``min_survivors`` is at least the `confirmation_quorum`, which no two sets can both reach (their
    honest confirmers would overlap), so one dishonest member signing another set proves nothing but
    its own lie, and aborting on it let any one provider abort every secure round."""
    signed = confirmations(raws, members, cfg.round_id)
    confirmed = frozenset(u for u, s in signed.items() if s == survivors and u in survivors)
    need = max(cfg.min_survivors, len(members) // 2 + 1)  # never below a majority, whatever the config
    if len(confirmed) < need:
        raise SecAggAbort(f"{len(confirmed)} survivors confirmed the survivor set, the round needs {need}")
    return confirmed


# ----------------------------------------------------------------------------- unmasking


@dataclass(frozen=True)
class Transcript:
    """What the aggregator publishes with a secure round: enough to re-derive its mask correction
    and to check that the survivors pinned the survivor set with their signatures."""

    keys: list[bytes]  # signed key advertisements
    shared: list[int]  # uids whose shares were routed (U1)
    confirm: list[bytes]  # signed confirmations of the survivor set (consistency step)
    unmask: list[bytes]  # signed unmask responses

    def as_doc(self) -> dict:
        """The transcript as a document; a message that is no JSON (junk anyone can post on a
        phase's topic) is left out: re-deriving the correction reads only authentic messages."""
        def docs(raws: list[bytes]) -> list:
            out = []
            for raw in raws:
                try:
                    out.append(untrusted_json(raw))
                except MalformedMessage:
                    continue
            return out

        return {"keys": docs(self.keys), "shared": sorted(self.shared), "confirm": docs(self.confirm),
                "unmask": docs(self.unmask)}

    @classmethod
    def from_doc(cls, doc: dict) -> Transcript:
        return cls([canonical_json(k) for k in doc["keys"]], [int(u) for u in doc["shared"]],
                   [canonical_json(c) for c in doc["confirm"]], [canonical_json(u) for u in doc["unmask"]])


def unmasked_sum(cfg: SecAggConfig, members: list[str], transcript: Transcript, masked: dict[int, np.ndarray]) -> np.ndarray:
    """The exact int64 sum of the survivors' inputs, rebuilt from the transcript (what the aggregator
    computes, and what any auditor recomputes). Raises SecAggAbort / ShareTampered like the server,
    and SecAggAbort if the survivors did not pin the survivor set (`pinned`)."""
    server = SecAggServer(cfg, graph_of(cfg))
    keys = advertised(transcript.keys, members, cfg.round_id)
    server.keys = keys
    server.shared = {u for u in transcript.shared if u in keys}
    for u, y in masked.items():
        if u not in server.shared:
            raise ShareTampered(f"provider {u} masked an input but is not among the providers that shared keys")
        server.masked[u] = np.asarray(y).view(np.uint64)
    if masked:  # an aborted round commits nothing, and has no survivor set to pin
        pinned(cfg, members, transcript.confirm, frozenset(masked))
    return server.unmask(responses(transcript.unmask, members, cfg.round_id))


def correction(masked: dict[int, np.ndarray], total: np.ndarray) -> np.ndarray:
    """``sum(masked) - total`` modulo 2**64, as int64: what the secure-sum rule subtracts."""
    acc = ring_sum([masked[u] for u in sorted(masked)], np.asarray(total).shape)
    return (acc - np.asarray(total, dtype=np.int64).view(np.uint64)).view(np.int64)
