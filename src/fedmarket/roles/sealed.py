"""Sealed updates: who trained an update, and who copied it.

On the mailbox every provider of a round reads every other's messages, so an update posted in the
clear could be fetched and posted again by another provider as its own. The two would look the
same, and nobody could tell the original from the copy. A round of a plain or `dp_local` job on
the mailbox therefore runs in two steps:

1. **Commit.** Each selected provider trains and posts only a signed `UpdateCommitment`:
   keccak of (provider, update root, weight, salt). Nothing in it reveals the update.
2. **Seal.** The aggregator posts one signed `CommitmentSeal` over the commitments it took, the
   first of each selected provider. No commitment after the seal counts.
3. **Reveal.** A provider reveals (its usual signed receipt, plus its salt) only once it sees its
   commitment in the seal. The aggregator takes an update only if it opens that provider's sealed
   commitment.

A copier sees the victim's update only at step 3, after the seal: its own commitment, made
before, cannot open to the copy, so the copy is left out and the original keeps its pay. An
aggregator that issues a second seal to let a late commitment in leaves both seals in the
mailbox, signed by it: validators find the two and reject the round (`conflicting_seal`). The
metrics document of the round carries the seal and every update's salt, so anyone can check that
each update opens its sealed commitment (`seal_problem`).

Secure modes need none of this: a masked update is useless to a copier. Flower rounds are sealed
the same way: the ServerApp files each update on the aggregator's mailbox, which strangers on a
shared broker read, so a SuperNode answers a round with its commitment and reveals only when the
ServerApp brings it the seal (`transport.flower`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterable
from pathlib import Path

import eth_abi

from ..errors import FedMarketError
from ..protocol.encoding import BAD_INPUT, address_key, canonical_json, untrusted_json
from ..protocol.keccak import keccak
from ..protocol.receipts import CommitmentSeal, UpdateCommitment
from ..spec import JobSpec
from ..storage import write_atomic
from .common import round_topic


class Pending:
    """A provider's committed, unrevealed updates (receipt with its salt, blob, commitment message),
    in a directory of its own: its process restarted between commit and reveal still reveals, and a
    Flower ClientApp, which lives for one message, reveals in another. Nothing here leaves the
    provider's machine before the seal."""

    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory)

    def _paths(self, job_id: int, r: int) -> tuple[Path, Path]:
        stem = self.dir / f"job-{job_id}-round-{r}"
        return stem.with_suffix(".json"), stem.with_suffix(".blob")

    def keep(self, job_id: int, r: int, message: dict, blob: bytes, committed: bytes) -> None:
        """`Provider.keep_sealed`: written (blob first, each atomically) before the commitment is sent;
        never over a round already kept (a second update of a round is a second release)."""
        doc, data = self._paths(job_id, r)
        if doc.exists():
            raise FedMarketError(f"job {job_id} round {r}: an update is committed already; not another")
        write_atomic(data, blob)
        write_atomic(doc, canonical_json({"message": message, "commitment": committed.decode()}))

    @contextlib.contextmanager
    def locked(self, job_id: int, r: int):
        """Held (an exclusive lock on a file beside the round's) while a process looks for the round's
        kept update and commits one: Flower runs a ClientApp process per message, all at once, and
        two `train` messages of a round both found nothing kept and trained twice."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / f"job-{job_id}-round-{r}.lock", "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def load(self, job_id: int, r: int) -> tuple[dict, bytes, bytes] | None:
        """(receipt with its salt, update blob, commitment message) kept for the round, or None."""
        doc, data = self._paths(job_id, r)
        if not doc.exists():
            return None
        kept = json.loads(doc.read_bytes())
        return kept["message"], data.read_bytes(), kept["commitment"].encode()


def sealed(spec: JobSpec) -> bool:
    """Whether the job's rounds commit before they reveal: unmasked updates (on the mailbox, or filed
    there by the Flower ServerApp)."""
    return not spec.privacy.secure


def commitment(provider: str, update_root: bytes, weight: int, salt: bytes) -> bytes:
    """keccak(abi.encode(provider, update_root, weight, salt)): binds the update to its provider,
    so nobody can post another's commitment as its own. The salt is exactly 32 bytes (FedMarketError
    otherwise: a shorter one would be padded, so two salts could open one commitment)."""
    if len(salt) != 32:
        raise FedMarketError(f"a commitment's salt is 32 bytes, got {len(salt)}")
    return keccak(eth_abi.encode(["address", "bytes32", "uint256", "bytes32"], [provider, update_root, int(weight), salt]))


def commit_topic(job_id: int, round_: int) -> str:
    return round_topic(job_id, round_) + "-commits"


def seal_topic(job_id: int, round_: int) -> str:
    return round_topic(job_id, round_) + "-seal"


def seal_digest(commitments: dict[str, bytes]) -> bytes:
    """keccak of the canonical list of (provider, commitment), in account order."""
    items = [[p, "0x" + commitments[p].hex()] for p in sorted(commitments, key=address_key)]
    return keccak(canonical_json(items))


def commitment_message(dep, account, job_id: int, round_: int, value: bytes) -> bytes:
    sig = UpdateCommitment(job_id, round_, value).sign(account.key, dep.chain_id, dep.disputes.address)
    return canonical_json({"provider": account.address, "job_id": job_id, "round": round_,
                           "commitment": "0x" + value.hex(), "signature": "0x" + sig.hex()})


def commitments(dep, raws: Iterable[bytes], job_id: int, round_: int, selected: set[str]) -> dict[str, bytes]:
    """The first authentic commitment of each selected provider, in mailbox order (others ignored)."""
    out: dict[str, bytes] = {}
    for raw in raws:
        try:
            msg = untrusted_json(raw)
            value = bytes.fromhex(msg["commitment"].removeprefix("0x"))
            sig = bytes.fromhex(msg["signature"].removeprefix("0x"))
            if msg["job_id"] != job_id or msg["round"] != round_ or len(value) != 32:
                continue
            signer = UpdateCommitment(job_id, round_, value).signer(sig, dep.chain_id, dep.disputes.address)
        except BAD_INPUT:
            continue
        if signer == msg.get("provider") and signer in selected and signer not in out:
            out[signer] = value
    return out


def seal_message(dep, account, job_id: int, round_: int, taken: dict[str, bytes]) -> dict:
    digest = seal_digest(taken)
    sig = CommitmentSeal(job_id, round_, digest).sign(account.key, dep.chain_id, dep.disputes.address)
    return {"job_id": job_id, "round": round_, "aggregator": account.address,
            "commitments": {p: "0x" + taken[p].hex() for p in sorted(taken, key=address_key)},
            "signature": "0x" + sig.hex()}


def open_seal(dep, msg: dict, job_id: int, round_: int, aggregator: str) -> dict[str, bytes]:
    """The commitments of a seal signed by `aggregator` for the round; FedMarketError if it is not one."""
    try:
        taken = {p: bytes.fromhex(v.removeprefix("0x")) for p, v in msg["commitments"].items()}
        sig = bytes.fromhex(msg["signature"].removeprefix("0x"))
        ok = msg["job_id"] == job_id and msg["round"] == round_
        signer = CommitmentSeal(job_id, round_, seal_digest(taken)).signer(sig, dep.chain_id, dep.disputes.address)
    except BAD_INPUT as exc:
        raise FedMarketError(f"malformed commitment seal: {exc}") from None
    if not ok or signer != aggregator:
        raise FedMarketError(f"commitment seal of round {round_} not signed by the aggregator {aggregator}")
    return taken


def seal_messages(dep, raws: Iterable[bytes], job_id: int, round_: int, aggregator: str) -> list[tuple[dict, dict[str, bytes]]]:
    """(message, its commitments) of every authentic seal of the round among `raws`, in their order."""
    out = []
    for raw in raws:
        try:
            msg = untrusted_json(raw)
            out.append((msg, open_seal(dep, msg, job_id, round_, aggregator)))
        except (FedMarketError, ValueError):
            continue
    return out


def seals(dep, raws: Iterable[bytes], job_id: int, round_: int, aggregator: str) -> list[dict[str, bytes]]:
    """Every distinct authentic seal of the round in the mailbox (more than one: the aggregator equivocated)."""
    out: list[dict[str, bytes]] = []
    for _, taken in seal_messages(dep, raws, job_id, round_, aggregator):
        if taken not in out:
            out.append(taken)
    return out


def seal_problem(dep, doc: dict, job_id: int, round_: int, aggregator: str) -> str:
    """'' if the round's metrics document carries the aggregator's seal and every update in it opens
    its provider's sealed commitment; else what is wrong."""
    if "seal" not in doc:
        return "the round carries no commitment seal"
    try:
        taken = open_seal(dep, doc["seal"], job_id, round_, aggregator)
    except FedMarketError as exc:
        return str(exc)
    for u in doc["updates"]:
        problem = opening_problem(taken, u)
        if problem:
            return problem
    return ""


def opening_problem(taken: dict[str, bytes], u: dict) -> str:
    """'' if the update `u` (provider, update root, weight and salt, as a metrics document or a
    revealed receipt carries them) opens its provider's commitment in the seal's `taken`; else what
    is wrong."""
    try:
        salt = bytes.fromhex(u["salt"].removeprefix("0x"))
        root = bytes.fromhex(u["update_root"].removeprefix("0x"))
    except (KeyError, ValueError, AttributeError):
        return f"update of {u.get('provider')} carries no salt"
    if len(salt) != 32:
        return f"update of {u.get('provider')} carries a salt of {len(salt)} bytes, not 32"
    if taken.get(u["provider"]) != commitment(u["provider"], root, int(u["weight"]), salt):
        return f"update of {u['provider']} does not open its sealed commitment"
    return ""


def conflicting_seal(dep, mailbox, doc: dict, job_id: int, round_: int, aggregator: str) -> str:
    """'' unless the mailbox holds a seal of the round, signed by the aggregator, other than the
    one the round carries: it sealed twice, and one of its seals let a late commitment in."""
    try:
        mine = open_seal(dep, doc["seal"], job_id, round_, aggregator)
    except (FedMarketError, KeyError):
        return ""  # `seal_problem` reports it
    others = [s for s in seals(dep, mailbox.read(seal_topic(job_id, round_)), job_id, round_, aggregator) if s != mine]
    return f"the aggregator signed {len(others) + 1} different seals for round {round_}" if others else ""


def seal_and_reveal(aggregator, providers, job_id: int, round_: int, spec: JobSpec | None = None) -> list[dict]:
    """The in-process middle of a sealed round: the aggregator seals, then every provider with a
    committed update reveals it. A provider left out of the seal (or facing two seals) stays out
    of the round, as its process would. Returns the revealed receipts."""
    aggregator.seal(job_id, round_, spec)
    out = []
    for p in providers:
        try:
            msg = p.reveal(job_id, round_)
        except FedMarketError:
            continue
        if msg is not None:
            out.append(msg)
    return out
