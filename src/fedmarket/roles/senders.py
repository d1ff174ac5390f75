"""Who signed what on the mailbox: the senders a long-running role may count when it decides
something it cannot undo (to seal a round, to go on without a provider, that it already posted).
Anyone can post a message naming anyone (`common.claimed_senders` reads such claims, unverified);
only a message its sender signed, for that job and round, counts here."""

from __future__ import annotations

from ..errors import FedMarketError
from ..market import Deployment
from ..protocol.encoding import BAD_INPUT, untrusted_json
from ..protocol.receipts import UpdateCommitment, UpdateReceipt
from . import sealed as sl
from . import secure_round as sr
from .common import hex32, hexbytes, round_topic


#: the SecAgg+ phases whose messages a provider signs (`roles.secure_round`), and the aggregator's
SECURE_PHASES = {"keys": "provider", "shares": "provider", "confirm": "provider", "unmask": "provider",
                 "survivors": "aggregator"}


def signed_by(dep: Deployment, raw: bytes, job_id: int, round_: int, kind: str) -> str | None:
    """Who signed `raw` as its message of `kind` for the job's round, or None: ``update`` (an
    `UpdateReceipt`, a masked update's included), ``commit`` (an `UpdateCommitment`), or a SecAgg+
    phase of `SECURE_PHASES` (signed by the account it names; a survivor set only by the job's
    aggregator). A claim nobody signed counts for
    nothing here: a process deciding to seal, to go on without someone, or that it posted already,
    asks this, never `claimed_senders`."""
    try:
        msg = untrusted_json(raw)
        if kind in SECURE_PHASES:
            signer = sr.opened(raw, sr.Domain.of(dep, job_id, round_).round_id, kind, SECURE_PHASES[kind])[SECURE_PHASES[kind]]
            # a survivor set counts only from the job's aggregator (anyone can sign one with a key of its own)
            return signer if kind != "survivors" or signer == dep.job(job_id)["aggregator"] else None
        if msg["job_id"] != job_id or msg["round"] != round_:
            return None
        sig = hexbytes(msg["signature"])
        if kind == "update":
            weight = msg["weight"]
            if type(weight) is not int:
                return None
            signer = UpdateReceipt(job_id, round_, hex32(msg["update_root"]), weight).signer(sig, dep.chain_id,
                                                                                             dep.disputes.address)
        elif kind == "commit":
            signer = UpdateCommitment(job_id, round_, hex32(msg["commitment"])).signer(sig, dep.chain_id,
                                                                                    dep.disputes.address)
        else:
            raise ValueError(f"no signed message of kind {kind!r}")
    except (FedMarketError, *BAD_INPUT):
        return None
    return signer if signer == msg.get("provider") else None


def signed_senders(dep: Deployment, raws: list[bytes], job_id: int, round_: int, kind: str,
                   seen: dict | None = None) -> set[str]:
    """Every account that signed one of `raws` as its `kind` message of the round (`signed_by`);
    `seen`, if given, keeps each message's answer (a process asks every poll)."""
    out: set[str] = set()
    for raw in raws:
        key = (kind, job_id, round_, bytes(raw))
        signer = seen[key] if seen is not None and key in seen else signed_by(dep, raw, job_id, round_, kind)
        if seen is not None:
            seen[key] = signer
        if signer:
            out.add(signer)
    return out


def signed_on(dep: Deployment, mailbox, job_id: int, round_: int, kind: str, seen: dict | None = None) -> set[str]:
    """`signed_senders` of the round's topic for `kind` (the round topic for ``update``, the commit
    topic for ``commit``, the phase's topic for a SecAgg+ phase)."""
    topic = {"update": round_topic(job_id, round_), "commit": sl.commit_topic(job_id, round_)}.get(kind) \
        or sr.topic(job_id, round_, kind)
    return signed_senders(dep, mailbox.read(topic), job_id, round_, kind, seen)
