"""Secure aggregation of one market round over the mailbox: who takes part, the signed messages
of the four SecAgg+ phases, and the transcript that lets anyone re-derive the mask correction.

Flow of round r of a job in privacy mode ``secagg`` / ``secagg_dp`` (uids are the joined
providers in address order, so everyone agrees on them without a message):

1. every provider posts its signed key advertisement (``keys``);
2. every provider posts its encrypted Shamir shares for its neighbours (``shares``);
3. every provider uploads its masked ``weight * update`` and posts the usual signed receipt of it
   (its root is what the updates tree commits, so censorship stays provable);
4. the aggregator verifies the receipts and posts the survivor set, signed (``survivors``);
5. every surviving provider posts its signed unmask response (``unmask``);
6. the aggregator removes the masks and commits the round. The updates tree lists the masked
   inputs and, after them, the *mask correction* ``sum(masked) - sum`` (mod 2**64), which the
   disputes contract's secure-sum rule subtracts when it recomputes a chunk. The keys, share
   senders and unmask responses are published with the round, so anyone can re-derive the
   correction and check it (a wrong one is not attested by validators).

The published transcript is exactly the aggregator's view in SecAgg+, which reveals nothing but
the sum as long as every survivor keeps a surviving honest neighbour (Bell et al. 2020).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import eth_abi
import numpy as np
from eth_account import Account as EthAccount
from eth_account.messages import encode_defunct
from eth_utils import keccak

from ..errors import FedMarketError, ShareTampered
from ..market import Deployment
from ..privacy.secagg import (
    AdvertiseKeys,
    EncryptedShare,
    SecAggConfig,
    SecAggServer,
    UnmaskResponse,
    neighbour_graph,
)
from ..protocol.encoding import canonical_json
from ..protocol.rules import ring_sum
from ..spec import JobSpec
from .common import round_providers, round_topic

ZERO_ADDRESS = "0x" + "00" * 20  # provider of the correction leaf


def topic(job_id: int, round_: int, phase: str) -> str:
    return f"{round_topic(job_id, round_)}-sa-{phase}"


def participants(dep: Deployment, spec: JobSpec, job_id: int, round_: int) -> list[str]:
    """The round's selected providers in address order: provider ``uid`` is its index here."""
    return round_providers(dep, spec, job_id, round_)


def round_config(dep: Deployment, spec: JobSpec, job_id: int, round_: int, n: int) -> SecAggConfig:
    """Public parameters of the round, bound to this chain, market, job and round."""
    round_id = keccak(eth_abi.encode(["uint256", "address", "uint256", "uint256"],
                                     [dep.chain_id, dep.disputes.address, job_id, round_]))
    return SecAggConfig.for_population(n, spec.n_params, dropout=spec.privacy.dropout,
                                       round_id=round_id, graph_seed=round_id)


def graph_of(cfg: SecAggConfig) -> list[np.ndarray]:
    return neighbour_graph(cfg.n, cfg.k, cfg.graph_seed)


# ----------------------------------------------------------------------------- signed messages


def sign(key: bytes, body: dict) -> bytes:
    """``body`` plus a signature by ``key`` over the keccak of its canonical JSON."""
    digest = keccak(canonical_json(body))
    sig = EthAccount.sign_message(encode_defunct(primitive=digest), private_key=key).signature
    return canonical_json({**body, "signature": "0x" + bytes(sig).hex()})


def opened(raw: bytes, signer_field: str) -> dict:
    """A signed message whose signature is by the address in its ``signer_field``; FedMarketError if not."""
    try:
        msg = json.loads(raw)
        sig = bytes.fromhex(msg.pop("signature").removeprefix("0x"))
        signer = EthAccount.recover_message(encode_defunct(primitive=keccak(canonical_json(msg))), signature=sig)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise FedMarketError(f"malformed secure-aggregation message: {exc}") from None
    if signer != msg.get(signer_field):
        raise FedMarketError(f"secure-aggregation message claims {msg.get(signer_field)} but is signed by {signer}")
    return msg


def keys_message(key: bytes, provider: str, adv: AdvertiseKeys) -> bytes:
    return sign(key, {"provider": provider, "uid": adv.uid, "c_pk": adv.c_pk.hex(), "s_pk": adv.s_pk.hex(),
                      "b_commit": adv.b_commit.hex()})


def shares_message(key: bytes, provider: str, uid: int, shares: list[EncryptedShare]) -> bytes:
    return sign(key, {"provider": provider, "uid": uid,
                      "shares": [{"dst": s.dst, "blob": s.blob.hex()} for s in shares]})


def unmask_message(key: bytes, provider: str, resp: UnmaskResponse) -> bytes:
    return sign(key, {"provider": provider, "uid": resp.uid,
                      "b_shares": {str(u): hex(s) for u, s in sorted(resp.b_shares.items())},
                      "sk_shares": {str(u): hex(s) for u, s in sorted(resp.sk_shares.items())}})


def survivors_message(key: bytes, aggregator: str, shared: list[int], survivors: list[int]) -> bytes:
    return sign(key, {"aggregator": aggregator, "shared": sorted(shared), "survivors": sorted(survivors)})


def _by_uid(raws: list[bytes], members: list[str]) -> dict[int, dict]:
    """Signed provider messages keyed by uid, keeping only those whose signer owns that uid."""
    out: dict[int, dict] = {}
    for raw in raws:
        try:
            msg = opened(raw, "provider")
            uid = int(msg["uid"])
        except (FedMarketError, KeyError, ValueError, TypeError):
            continue
        if 0 <= uid < len(members) and members[uid] == msg["provider"] and uid not in out:
            out[uid] = msg
    return out


def advertised(raws: list[bytes], members: list[str]) -> dict[int, AdvertiseKeys]:
    return {
        u: AdvertiseKeys(u, bytes.fromhex(m["c_pk"]), bytes.fromhex(m["s_pk"]), bytes.fromhex(m["b_commit"]))
        for u, m in _by_uid(raws, members).items()
    }


def share_lists(raws: list[bytes], members: list[str]) -> dict[int, list[EncryptedShare]]:
    return {u: [EncryptedShare(u, int(s["dst"]), bytes.fromhex(s["blob"])) for s in m["shares"]]
            for u, m in _by_uid(raws, members).items()}


def responses(raws: list[bytes], members: list[str]) -> list[UnmaskResponse]:
    return [
        UnmaskResponse(u, {int(k): int(v, 16) for k, v in m["b_shares"].items()},
                       {int(k): int(v, 16) for k, v in m["sk_shares"].items()})
        for u, m in sorted(_by_uid(raws, members).items())
    ]


# ----------------------------------------------------------------------------- unmasking


@dataclass(frozen=True)
class Transcript:
    """What the aggregator publishes with a secure round: enough to re-derive its mask correction."""

    keys: list[bytes]  # signed key advertisements
    shared: list[int]  # uids whose shares were routed (U1)
    unmask: list[bytes]  # signed unmask responses

    def as_doc(self) -> dict:
        return {"keys": [json.loads(k) for k in self.keys], "shared": sorted(self.shared),
                "unmask": [json.loads(u) for u in self.unmask]}

    @classmethod
    def from_doc(cls, doc: dict) -> Transcript:
        return cls([canonical_json(k) for k in doc["keys"]], [int(u) for u in doc["shared"]],
                   [canonical_json(u) for u in doc["unmask"]])


def unmasked_sum(cfg: SecAggConfig, members: list[str], transcript: Transcript, masked: dict[int, np.ndarray]) -> np.ndarray:
    """The exact int64 sum of the survivors' inputs, rebuilt from the transcript (what the aggregator
    computes, and what any auditor recomputes). Raises SecAggAbort / ShareTampered like the server."""
    server = SecAggServer(cfg, graph_of(cfg))
    keys = advertised(transcript.keys, members)
    server.keys = keys
    server.shared = {u for u in transcript.shared if u in keys}
    for u, y in masked.items():
        if u not in server.shared:
            raise ShareTampered(f"provider {u} masked an input but is not among the providers that shared keys")
        server.masked[u] = np.asarray(y).view(np.uint64)
    return server.unmask(responses(transcript.unmask, members))


def correction(masked: dict[int, np.ndarray], total: np.ndarray) -> np.ndarray:
    """``sum(masked) - total`` modulo 2**64, as int64: what the secure-sum rule subtracts."""
    acc = ring_sum([masked[u] for u in sorted(masked)], np.asarray(total).shape)
    return (acc - np.asarray(total, dtype=np.int64).view(np.uint64)).view(np.int64)
