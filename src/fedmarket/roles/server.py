"""The inference server: answers paying callers with a settled job's model and settles their
signed usage on chain in batches (`ModelMarket.settle_usage`).

Each query carries the caller's signature of ``Usage(jobId, server, count)``, its cumulative
count of queries at this server: one more than its last. The server keeps only each caller's
latest receipt, so a period's settlement is one receipt per caller however many queries it
made, and it can settle nothing a caller did not sign. Answers are signed
``Answer(jobId, inputHash, class)``: for a linear (softmax) model the class is the integer
argmax the contract re-executes (`protocol.inference`), so a wrong answer costs the stake.

With a circuit kit (`zkml`, a softmax or MLP model), a query that asks for it gets its answer
proven: the proof, its public values (the input and the class scores) and the server's
``ProvenAnswer`` signature, which the job's registered verifier checks on chain
(`roles.proofs`). The caller's usage is checked before the prover starts, so nobody makes the
server prove for free.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from eth_utils import to_checksum_address

from ..chain import Account
from ..errors import FedMarketError
from ..market import Deployment
from ..protocol.inference import ONE, fixed_input, input_hash, linear_answer, linear_shape
from ..protocol.receipts import AccessQuery, Answer, Usage
from ..storage import BlobStore
from .common import check_funds, journal_line, read_journal
from .model_owner import listed_shape
from .proofs import sign_proven, verifier_accepts
from .tabs import TabBook, TabRefused

MAX_BATCH = 256  # ModelMarket.MAX_BATCH


class QueryRefused(FedMarketError):
    """A query the server will not answer: bad signature, out-of-order count, no credit."""


@dataclass(frozen=True)
class Reply:
    """One answer: the class, the fixed-point input it answers, and the server's signature; for a
    proven answer also the proof and the server's ProvenAnswer signature of it."""

    answer: int
    label: str
    x: list[int]
    count: int
    signature: bytes
    proof: object | None = None
    proven_signature: bytes = b""

    def doc(self) -> dict:
        doc = {"answer": self.answer, "label": self.label, "input": self.x, "count": self.count,
               "signature": "0x" + self.signature.hex()}
        if self.proof is not None:
            doc.update(proof=self.proof.doc(), proven_signature="0x" + self.proven_signature.hex())
        return doc


class ModelServer:
    """Serves one listed job's model, verified against the final model root listed on chain."""

    def __init__(self, dep: Deployment, account: Account, store: BlobStore, job_id: int, journal: Path | None = None,
                 kit=None, access: bool = False):
        from ..modelfile import trained_model

        if dep.model_market is None:
            raise FedMarketError("this deployment has no model market (deploy it again with this version)")
        self.dep, self.mm, self.account, self.job_id = dep, dep.model_market, account, job_id
        listed = bytes(self.mm.call("model_root", job_id))
        if listed == b"\x00" * 32:
            raise FedMarketError(f"job {job_id}'s model is not listed on the model market")
        self.trained = trained_model(dep, store, job_id)
        if self.trained.model_root != listed:
            raise FedMarketError(f"job {job_id}: the listed model root 0x{listed.hex()} is not its final round's")
        self.shape = listed_shape(dep, job_id)
        if self.shape != linear_shape(self.trained.spec):
            raise FedMarketError(f"job {job_id} is listed as a linear model of shape {self.shape}; its spec's is "
                                 f"{linear_shape(self.trained.spec)}: disputes would re-execute another function")
        self.jm = self.trained.job_model
        d = self.trained.spec.data
        self.classes = d.classes or [str(i) for i in range(d.n_classes)]
        self.chain_id = dep.chain_id
        self.latest: dict[str, tuple[int, bytes]] = {}  # caller -> its latest receipt (count, signature)
        self.lock = threading.Lock()
        self.journal = journal
        self.kit = kit  # zkml.Kit of this model, to prove answers with
        self.proving: set[tuple[str, int]] = set()  # (caller, count) of the proofs under way
        if journal is not None:
            self.latest = read_journal(journal)
        self.access = access  # answer holders of time-bound access (paid to the owner and contributors, not to servers)
        self.access_counts: dict[str, int] = {}  # access holder -> its last query's count here (no replays)
        self.tabs = None  # tab receipts, settled through the usage rollup (when the deployment has one)
        if dep.usage_rollup is not None:
            self.tabs = TabBook(dep, account, store, job_id, None if journal is None else journal.with_name(journal.name + ".tabs"))

    def _record(self, caller: str, count: int, signature: bytes) -> None:
        """Keep the caller's latest receipt (under the lock), appended to the journal first: a
        restarted server still settles the queries it answered and expects each caller's next count."""
        if self.journal is not None:
            with open(self.journal, "a") as fh:
                fh.write(journal_line(caller, count, signature=signature))
        self.latest[caller] = (count, signature)

    @property
    def address(self) -> str:
        return self.account.address

    def ensure_staked(self) -> str | None:
        """Stake the offer's server stake if not serving yet (checking the funds first); returns what it did."""
        if self.mm.call("serving", self.job_id, self.address):
            return None
        need = max(int(self.mm.call("offer", self.job_id)["server_stake"]), 1) - int(self.mm.call("stake", self.job_id, self.address))
        if int(self.mm.call("unstake_time", self.job_id, self.address)):
            need = max(need, 1)  # staking again cancels the unstake
        check_funds(self.dep, self.address, need, "the server stake")
        self.dep.token.transact("approve", self.mm.address, need, sender=self.account)
        self.mm.transact("stake_server", self.job_id, need, sender=self.account)
        return f"staked {need} base units on job {self.job_id}"

    # ---- answering ------------------------------------------------------------------------
    def answer(self, features: list[float], count: int, signature: bytes, prove: bool = False,
               spent: int | None = None, access: bool = False) -> Reply:
        """Answer one query if its usage receipt is the caller's next and its credit covers it;
        with `prove`, attach a proof of the answer (the usage is checked before proving). With
        `spent`, the receipt is a tab's (`roles.tabs`: queries `count`, tokens `spent`); with
        `access`, the signature is an access holder's `AccessQuery` (a server started to serve them)."""
        X = np.asarray(features, dtype=np.float64).reshape(1, -1)
        if X.shape[1] != self.trained.spec.data.n_features or not np.isfinite(X).all():
            raise QueryRefused(f"the model takes {self.trained.spec.data.n_features} finite features, "
                               f"the query has {X.shape[1]}")
        x = fixed_input(self.jm.features(X)[0])
        if self.shape[0]:
            cls = linear_answer(self.trained.q, x, *self.shape)
        else:
            cls = int(self.jm.predict(self.trained.q, X)[0])
        proof, proven = None, b""
        if prove:
            if self.kit is None:
                raise QueryRefused("this server proves no answers (not started with --prove, or its prover is still being built)")
            self._check_verifier()
            caller = self._payer(count, signature, spent, access, record=False)  # paid for, before the prover starts
            with self.lock:  # one proof per paid query: the same receipt sent again meanwhile is refused
                if (caller, count) in self.proving:
                    raise QueryRefused(f"{caller}'s query {count} is being proven already")
                self.proving.add((caller, count))
            try:
                proof = self._prove(x, cls)
            finally:
                with self.lock:
                    self.proving.discard((caller, count))
            if not verifier_accepts(self.dep, self.job_id, proof):
                raise QueryRefused("the job's registered verifier rejects this server's proof: not signed; ask without a proof")
            proven = sign_proven(self.dep, self.account, self.job_id, proof)
        self._payer(count, signature, spent, access)  # the usage is recorded only for a query it answers
        sig = Answer(self.job_id, input_hash(x), cls).sign(self.account.key, self.chain_id, self.mm.address)
        return Reply(cls, self.classes[cls], x, count, sig, proof, proven)

    def usage_of(self, caller: str) -> dict:
        """A caller's last receipts at this server: its credits' count (settled or answered), its
        tab's queries and spent, its access count (what its next query signs one more than)."""
        address = to_checksum_address(caller)  # credit and access receipts are kept by signer, tabs in lower case
        with self.lock:
            count = self.latest.get(address, (0, b""))[0]
            access = self.access_counts.get(address, 0)
            tab = self.tabs.latest.get(address.lower(), (0, 0, b"")) if self.tabs is not None else (0, 0, b"")
        settled = int(self.mm.call("used", self.job_id, address, self.address))
        return {"caller": caller, "count": max(count, settled), "tab_queries": tab[0], "tab_spent": tab[1],
                "access_count": access}

    def _check_verifier(self) -> None:
        """QueryRefused unless the job's registered verifier is this server's circuit (same code). A
        signed proof that the registered verifier rejects costs the server its stake
        (`ModelMarket.dispute_proof`), and the first verifier a validator majority attests is the
        job's for good: a rival's circuit of the same model with other settings, registered first,
        rejected every proof of this server's, and each signed one was slashable."""
        registered = bytes(self.mm.call("verifier_codehash", self.job_id))
        if registered == b"\x00" * 32:
            raise QueryRefused(f"job {self.job_id} has no registered verifier yet: ask without a proof, or later")
        if registered != self.kit.codehash:
            raise QueryRefused(f"job {self.job_id}'s registered verifier (code 0x{registered.hex()[:16]}...) is another "
                               "circuit than this server's: its proofs would not pass it; ask without a proof")

    def _prove(self, x: list[int], cls: int):
        from ..zkml import prove

        proof = prove(self.kit, np.asarray(x, dtype=np.float64) / ONE, len(self.classes))
        if proof.answer != cls:  # a near tie that the circuit's coarser fixed point breaks the other way
            raise QueryRefused(f"the circuit's fixed point answers {proof.answer} where the model answers {cls} "
                               f"(a near tie): ask without a proof")
        return proof

    def _payer(self, count: int, signature: bytes, spent: int | None, access: bool = False, record: bool = True) -> str:
        """The caller paying for this query, by its credits, (with `spent`) its tab, or (with
        `access`) its time-bound access."""
        if access:
            return self._access_holder(int(count), signature, record)
        if spent is None:
            return self._caller(count, signature, record)
        if self.tabs is None:
            raise QueryRefused("this deployment has no usage rollup: pay with credits")
        try:
            return self.tabs.admit(int(count), int(spent), signature, record)
        except TabRefused as exc:
            raise QueryRefused(str(exc)) from None

    def _access_holder(self, count: int, signature: bytes, record: bool) -> str:
        if not self.access:
            raise QueryRefused("this server does not answer time-bound access (pay with credits or a tab)")
        try:
            caller = AccessQuery(self.job_id, self.address, count).signer(signature, self.chain_id, self.mm.address)
        except Exception:  # noqa: BLE001 - eth_account raises several kinds for a malformed signature
            raise QueryRefused("the access signature is malformed") from None
        if not self.mm.call("has_access", self.job_id, caller):
            raise QueryRefused(f"{caller} holds no time-bound access to this model now: no credit for the query")
        with self.lock:
            last = self.access_counts.get(caller, 0)
            if count <= last:
                raise QueryRefused(f"{caller}'s access query count here must rise above {last}, not {count}")
            if record:
                self.access_counts[caller] = count
        return caller

    def _caller(self, count: int, signature: bytes, record: bool = True) -> str:
        """The caller who signed `count`, after checking it is its next count and it has credit."""
        try:
            caller = Usage(self.job_id, self.address, int(count)).signer(signature, self.chain_id, self.mm.address)
        except Exception:  # noqa: BLE001 - eth_account raises several kinds for a malformed signature
            raise QueryRefused("the usage signature is malformed") from None
        settled, queries = self._settled_and_credit(caller)
        with self.lock:
            last = max(settled, self.latest.get(caller, (0, b""))[0])
            if count != last + 1:
                raise QueryRefused(f"{caller}'s next count at this server is {last + 1}, not {count}")
            if int(self.mm.call("refund_time", self.job_id, caller)):
                raise QueryRefused(f"{caller} asked for a refund of its credits")
            if count - settled > queries:
                raise QueryRefused(f"{caller} has credit for {queries} unsettled queries; count {count} exceeds it")
            if record:
                self._record(caller, count, signature)
        return caller

    def _settled_and_credit(self, caller: str) -> tuple[int, int]:
        """The caller's settled count here and its credits left, read as one consistent pair: a
        settlement between the two reads changes both, so the pair is read again until the count held."""
        for _ in range(5):
            before = int(self.mm.call("used", self.job_id, caller, self.address))
            queries = int(self.mm.call("credit", self.job_id, caller)[0])
            if int(self.mm.call("used", self.job_id, caller, self.address)) == before:
                return before, queries
        raise QueryRefused("the chain moved under five reads in a row; try again")

    # ---- settling -------------------------------------------------------------------------
    def pending(self) -> list[tuple[int, bytes]]:
        """The latest receipt of every caller with queries not settled yet."""
        with self.lock:
            items = list(self.latest.items())
        return [(c, s) for caller, (c, s) in items if c > int(self.mm.call("used", self.job_id, caller, self.address))]

    def settle(self) -> list:
        """Settle every pending receipt, `MAX_BATCH` callers per transaction; returns the receipts."""
        todo, done = self.pending(), []
        for i in range(0, len(todo), MAX_BATCH):
            done.append(self.mm.transact("settle_usage", self.job_id, todo[i : i + MAX_BATCH], sender=self.account))
        if done:
            self._compact()
        return done

    def _compact(self) -> None:
        """Rewrite the journal as each caller's latest receipt (atomically, under the lock that appends)."""
        if self.journal is None:
            return
        with self.lock:
            tmp = self.journal.with_name(self.journal.name + ".tmp")
            tmp.write_text("".join(journal_line(c, n, signature=sig) for c, (n, sig) in self.latest.items()))
            tmp.replace(self.journal)
