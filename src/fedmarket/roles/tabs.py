"""Tabs: pay-per-query usage settled through the usage rollup (`UsageRollup`), one root per period
whatever the number of callers.

A caller funds a tab at one server (:func:`fund_tab`) and signs, with each query,
``Tab(jobId, server, queries, spent)``: its cumulative queries and tokens spent there, each query
adding one and the model's query price. The server (:class:`TabBook`) checks each such receipt
against the tab on chain, keeps each caller's latest, and every period posts the sum tree of all
of them (`protocol.usage`), with the leaves and signatures published by content id. It answers
challenges of its leaves, raises refund declarations below what a caller signed, and makes its
root final once the challenge window passed.

A caller takes back its unspent tab with :func:`refund_tab`, opening its place in the roots from
their published leaves; where they are withheld, it asks with :func:`declare_spent` instead.

Anyone (a caller, a validator) audits a pending root with :func:`audit_usage`: it fetches the
published leaves, checks them against the root, every signature, the order, every tab and the
final root's leaves, and proves on chain what it finds wrong.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

from eth_utils import to_checksum_address

from ..chain import Account
from ..errors import ContractRevert, FedMarketError, StorageError
from ..market import Deployment
from ..protocol.receipts import Tab
from ..protocol.usage import EMPTY_OPENING, Leaf, UsageTree, opening
from ..storage import BlobStore
from .common import check_funds, journal_line, read_document, read_journal

ZERO_ROOT = b"\x00" * 32
REVEAL_SLOT = 2**161  # UsageRollup.REVEAL_SLOT: the challenge to reveal every leaf


class TabRefused(FedMarketError):
    """A tab query the server will not answer: bad signature, wrong amounts, tab too small."""


def rollup_of(dep: Deployment):
    if dep.usage_rollup is None:
        raise FedMarketError("this deployment has no usage rollup (deploy it again with this version)")
    return dep.usage_rollup


def fund_tab(dep: Deployment, account: Account, job_id: int, server: str, amount: int):
    """Fund `account`'s tab at `server` with `amount` base units (approving the rollup first)."""
    ru = rollup_of(dep)
    check_funds(dep, account.address, amount, "the tab")
    dep.token.transact("approve", ru.address, amount, sender=account)
    return ru.transact("fund_tab", job_id, server, amount, sender=account)


def sign_tab(dep: Deployment, account: Account, job_id: int, server: str, queries: int, spent: int) -> bytes:
    return Tab(job_id, server, queries, spent).sign(account.key, dep.chain_id, rollup_of(dep).address)


@dataclass(frozen=True)
class Posted:
    """A root this server posted: its epoch, tree and each leaf's signature (as published)."""

    epoch: int
    tree: UsageTree
    signatures: dict[str, bytes]


def usage_doc(job_id: int, server: str, tree: UsageTree, signatures: dict[str, bytes]) -> bytes:
    """The published leaves of a root, sorted as in the tree, each with its caller's signature."""
    leaves = [[x.caller, x.queries, x.spent, "0x" + signatures[x.caller.lower()].hex()] for x in tree.leaves]
    return json.dumps({"job_id": job_id, "server": server, "leaves": leaves}, separators=(",", ":")).encode()


def read_usage(store: BlobStore, cid: str) -> tuple[list[Leaf], list[bytes]]:
    """The leaves and signatures of a published root, in their published order (checked against
    the root by the reader, never trusted)."""
    doc = read_document(store, cid)
    leaves = [Leaf(c, int(q), int(s)) for c, q, s, _ in doc["leaves"]]
    return leaves, [bytes.fromhex(sig[2:]) for *_, sig in doc["leaves"]]


# A plain refund request due this soon caps its caller at the final root's leaf: the refund, sent
# before the root lands, cuts the tab to that leaf (seconds; a few blocks and a step)
REFUND_MARGIN = 120


class TabBook:
    """A server's tab receipts for one job: admitted per query, posted per period."""

    def __init__(self, dep: Deployment, account: Account, store: BlobStore, job_id: int, journal: Path | None = None):
        self.dep, self.ru, self.account, self.store, self.job_id = dep, rollup_of(dep), account, store, job_id
        self.latest: dict[str, tuple[int, int, bytes]] = {}  # caller (lower case) -> (queries, spent, signature)
        self.lock = threading.Lock()
        self.journal = journal
        if journal is not None:
            self.latest = read_journal(journal)
        self.posted: Posted | None = self._load(pending=True)
        self.final: Posted | None = self._load(pending=False)
        for root in (self.final, self.posted):  # what it already posted is never rolled back, journal or not
            for leaf in root.tree.leaves if root is not None else []:
                key = leaf.caller.lower()
                if leaf.queries > self.latest.get(key, (0, 0, b""))[0]:
                    self.latest[key] = (leaf.queries, leaf.spent, root.signatures[key])
        self.sent: list = []  # receipts of the posts, finalizations and answers sent (gas accounting)

    @property
    def address(self) -> str:
        return self.account.address

    def ensure_bonded(self, covers: int = 0) -> str | None:
        """Bond in the rollup at least the offer's server stake and `covers` (a root moves at most
        the bond), if not so bonded yet (and not unbonding)."""
        bond = int(self.ru.call("bond", self.job_id, self.address))
        stake = max(int(self.dep.model_market.call("offer", self.job_id)["server_stake"]), covers, 1)
        if bond >= stake and not int(self.ru.call("unbond_time", self.job_id, self.address)):
            return None
        need = max(stake - bond, 1)
        check_funds(self.dep, self.address, need, "the usage rollup bond")
        self.dep.token.transact("approve", self.ru.address, need, sender=self.account)
        self.ru.transact("post_bond", self.job_id, need, sender=self.account)
        return f"bonded {need} base units in the usage rollup"

    # ---- admitting queries --------------------------------------------------------------
    def admit(self, queries: int, spent: int, signature: bytes, record: bool = True) -> str:
        """The caller who signed this tab receipt, after checking it is its next query at the
        current price and its tab covers it; recorded (journal first) if `record`."""
        try:
            caller = Tab(self.job_id, self.address, int(queries), int(spent)).signer(signature, self.dep.chain_id,
                                                                                    self.ru.address)
        except Exception:  # noqa: BLE001 - eth_account raises several kinds for a malformed signature
            raise TabRefused("the tab signature is malformed") from None
        price = int(self.dep.model_market.call("offer", self.job_id)["query_price"])
        if price == 0:
            raise TabRefused("the model's query price is 0: nothing to pay from a tab")
        tab = int(self.ru.call("tab", self.job_id, self.address, caller))
        refunding = int(self.ru.call("refund_request", self.job_id, self.address, caller))
        # what it can post: each root moves at most the bond, which its wallet can raise
        can_bond = int(self.ru.call("bond", self.job_id, self.address)) + self.dep.balance(self.address)
        final_spent = int(self.ru.call("totals", self.job_id, self.address, False)[1])
        key = caller.lower()
        with self.lock:
            q0, s0, _ = self.latest.get(key, (0, 0, b""))
            if queries != q0 + 1 or spent != s0 + price:
                raise TabRefused(f"{caller}'s next tab receipt here is queries {q0 + 1}, spent {s0 + price}; "
                                 f"got {queries}, {spent}")
            if refunding:
                raise TabRefused(f"{caller} asked for its tab back")
            if spent > tab:
                raise TabRefused(f"{caller}'s tab holds {tab}; spending {spent} exceeds its credit")
            if sum(e[1] for e in self.latest.values()) + price - final_spent > can_bond:
                raise TabRefused("the server cannot bond more usage this period; try later (or pay with credits)")
            if record:
                if self.journal is not None:
                    with open(self.journal, "a") as fh:
                        fh.write(journal_line(key, queries, spent, signature=signature))
                self.latest[key] = (queries, spent, signature)
        return caller

    # ---- posting ----------------------------------------------------------------------------
    def _load(self, pending: bool) -> Posted | None:
        """This server's pending (or final) root, read back from its published leaves."""
        if self.ru.call("pending_root" if pending else "final_root", self.job_id, self.address) == ZERO_ROOT:
            return None
        if pending:
            epoch = int(self.ru.call("epoch", self.job_id, self.address))
        else:
            epoch = int(self.ru.events("UsageFinalized", job_id=self.job_id, server=self.address)[-1]["epoch"])
        ev = self.ru.events("UsagePosted", job_id=self.job_id, server=self.address, epoch=epoch)[-1]
        try:
            leaves, sigs = read_usage(self.store, ev["data_cid"])
        except (StorageError, ValueError, KeyError, TypeError):
            raise FedMarketError(f"the leaves of this server's {'pending' if pending else 'final'} usage root "
                                 f"({ev['data_cid']}) are not in its blob store: serve with the store it posted them to") from None
        return Posted(epoch, UsageTree(leaves), {x.caller.lower(): s for x, s in zip(leaves, sigs)})

    def _usage(self) -> dict[str, tuple[int, int, bytes]]:
        """Each caller's latest receipt to post, except that a caller refunded since (its tab now
        what the roots charged), or whose plain refund request is due by the time the root lands,
        keeps its final root's leaf: later usage would be an overdraft. (A caller front-ran a late
        server's post with its refund, which cut the tab to the final root's leaf, and the post then
        proved an overdraft that took the server's whole bond.)"""
        with self.lock:
            latest = dict(self.latest)
        for ev in self.ru.events("TabRefunded", job_id=self.job_id, server=self.address):
            key = ev["caller"].lower()
            if key in latest:
                tab = int(self.ru.call("tab", self.job_id, self.address, ev["caller"]))
                if latest[key][1] > tab:
                    self._keep_final_leaf(latest, key, ev["caller"], tab)
        soon = self.dep.chain.timestamp() + REFUND_MARGIN
        for caller in {ev["caller"] for ev in self.ru.events("TabRefundRequested", job_id=self.job_id, server=self.address)}:
            key = caller.lower()
            word = int(self.ru.call("refund_request", self.job_id, self.address, caller)) if key in latest else 0
            if word and word >> 64 == 0 and word & (2**64 - 1) <= soon:  # a plain request (no declaration), due
                self._keep_final_leaf(latest, key, caller, None)
        return latest

    def _keep_final_leaf(self, latest: dict, key: str, caller: str, tab: int | None) -> None:
        """Post `caller` at its final root's leaf (or not at all, without one) from now on."""
        old = self.final.tree.usage(key) if self.final is not None else None
        if tab is not None and old is not None and old.spent > tab:
            raise FedMarketError(
                f"{caller} was refunded below its leaf in this server's final root (a refund "
                f"declaration nobody raised): a root can neither keep that leaf (an overdraft) nor drop "
                f"it (a rollback), so this server cannot post at job {self.job_id} again; unbond")
        if old is None:
            latest.pop(key)
        else:
            latest[key] = (old.queries, old.spent, self.final.signatures[key])
        with self.lock:
            if key in latest:
                self.latest[key] = latest[key]
            else:
                self.latest.pop(key, None)

    def _sync(self) -> None:
        """Follow the chain: a posted root that anyone made final, or that was rejected, is no
        longer pending; the final root is the chain's."""
        pending = self.ru.call("pending_root", self.job_id, self.address)
        if self.posted is not None and (pending == ZERO_ROOT
                                        or int(self.ru.call("epoch", self.job_id, self.address)) != self.posted.epoch):
            self.posted = None
        final = bytes(self.ru.call("final_root", self.job_id, self.address))
        if final != ZERO_ROOT and (self.final is None or self.final.tree.root != final):
            self.final = self._load(pending=False)

    def step(self) -> list[str]:
        """One period's work: answer challenges, raise declarations below what callers signed,
        finalize the pending root when due, post the next."""
        self._sync()
        done = self._answer_challenges() + self.raise_declarations()
        pending = self.ru.call("pending_root", self.job_id, self.address) != ZERO_ROOT
        if pending:
            posted_at = int(self.ru.call("totals", self.job_id, self.address, True)[3])
            due = posted_at + int(self.ru.call("CHALLENGE_WINDOW"))
            if self.dep.chain.timestamp() < due or int(self.ru.call("open_challenges", self.job_id, self.address)):
                return done
            r = self.ru.transact("finalize", self.job_id, self.address, sender=self.account)
            self.sent.append(r)
            ev = r.event("UsageFinalized")
            done.append(f"usage root final: {ev['queries']} queries for {ev['amount']} base units "
                        f"(tx {r.tx_hash}, {r.gas_used} gas)")
            self.final, self.posted = self.posted, None
        latest = self._usage()
        if not latest:
            return done
        tree = UsageTree([Leaf(c, q, s) for c, (q, s, _) in latest.items()])
        final_spent = int(self.ru.call("totals", self.job_id, self.address, False)[1])
        if tree.top.spent <= final_spent:
            return done
        bonded = self.ensure_bonded(tree.top.spent - final_spent)  # the first post bonds: nobody paying by tab, no bond
        if bonded:
            done.append(bonded)
        sigs = {c: sig for c, (_, _, sig) in latest.items()}
        cid = self.store.put(usage_doc(self.job_id, self.address, tree, sigs))
        r = self.ru.transact("post_usage", self.job_id, tree.top.as_tuple(), tree.n, cid, sender=self.account)
        self.sent.append(r)
        self.posted = Posted(int(r.event("UsagePosted")["epoch"]), tree, sigs)
        done.append(f"usage root posted: {tree.n} callers, {tree.top.queries} queries, {tree.top.spent} spent "
                    f"(tx {r.tx_hash}, {r.gas_used} gas)")
        return done

    def _answer_challenges(self) -> list[str]:
        """Answer every open challenge of the pending root: a leaf with its signature, a caller
        with its leaf and signature or its absence."""
        if self.posted is None:
            return []
        done, tree, sigs = [], self.posted.tree, self.posted.signatures
        for ev in self.ru.events("Challenged", job_id=self.job_id, server=self.address, epoch=self.posted.epoch):
            slot = int(ev["slot"])
            try:
                if slot == REVEAL_SLOT:
                    done += self._reveal(tree, sigs)
                    continue
                if slot < 2**160:
                    r = self.ru.transact("answer", self.job_id, tree.position(slot),
                                         sigs[tree.leaves[slot].caller.lower()], sender=self.account)
                else:
                    caller = to_checksum_address(f"0x{slot - 2**160:040x}")
                    r = self.ru.transact("answer_caller", self.job_id, caller, tree.opening(caller),
                                         sigs.get(caller.lower(), b""), sender=self.account)
            except FedMarketError as exc:
                if "not challenged" in str(exc):
                    continue  # answered already
                raise
            self.sent.append(r)
            done.append(f"answered the challenge of slot {slot} (tx {r.tx_hash})")
        return done


    def raise_declarations(self) -> list[str]:
        """Raise every standing refund declaration (`declare_spent`) below the latest Tab its caller
        signed here, with that Tab: a declaration left standing is paid from this server's bond."""
        with self.lock:
            signed = dict(self.latest)
        done = raise_declarations(self.dep, self.account, self.job_id, self.address, signed)
        self.sent += [r for r, _ in done if r is not None]
        return [m for _, m in done]

    def _reveal(self, tree: UsageTree, sigs: dict[str, bytes]) -> list[str]:
        """Reveal every leaf of the pending root on chain, chunk by chunk (from where it stopped)."""
        done = []
        start = int(self.ru.call("reveal_next", self.job_id, self.address))
        for k in range(start, tree.chunks):
            leaves, siblings = tree.chunk(k)
            r = self.ru.transact("reveal_leaves", self.job_id, k, leaves, [sigs[x[0].lower()] for x in leaves], siblings,
                                 sender=self.account)
            self.sent.append(r)
            done.append(f"revealed leaves {k * len(leaves)}.. of the pending root (tx {r.tx_hash}, {r.gas_used} gas)")
        return done


# ---- auditing -------------------------------------------------------------------------------
def _published(ru, store: BlobStore, job_id: int, server: str, epoch: int) -> tuple[UsageTree, list[bytes] | None] | None:
    """The tree of a posted root rebuilt from its published leaves in their published order, with
    their signatures; else from the leaves the server revealed on chain (`reveal_leaves`: every
    one checked there, signatures included, so none are returned); None if neither makes the root."""
    evs = ru.events("UsagePosted", job_id=job_id, server=server, epoch=epoch)
    if not evs:
        return None
    root = bytes(evs[-1]["root"])
    try:
        leaves, sigs = read_usage(store, evs[-1]["data_cid"])
        tree = UsageTree(leaves, as_given=True)
        if tree.root == root:
            return tree, sigs
    except (StorageError, ValueError, KeyError, TypeError):
        pass
    chunks = sorted(ru.events("LeavesRevealed", job_id=job_id, server=server, epoch=epoch), key=lambda e: e["chunk"])
    revealed = [Leaf(*x) for ev in chunks for x in ev["leaves"]]
    if revealed and UsageTree(revealed, as_given=True).root == root:
        return UsageTree(revealed, as_given=True), None
    return None


def _challenge(dep: Deployment, account: Account, fn: str, *args, bond: int | None = None):
    """Open a challenge, putting up its bond (the rollup's challenge bond unless given; checked
    and approved first)."""
    ru = rollup_of(dep)
    bond = int(ru.call("CHALLENGE_BOND")) if bond is None else bond
    check_funds(dep, account.address, bond, "the challenge bond")
    dep.token.transact("approve", ru.address, bond, sender=account)
    return ru.transact(fn, *args, sender=account)


def final_tree(ru, store: BlobStore, job_id: int, server: str) -> UsageTree | None:
    """The tree of a server's final root (None if it has none), from its published leaves."""
    if ru.call("final_root", job_id, server) == ZERO_ROOT:
        return None
    epoch = int(ru.events("UsageFinalized", job_id=job_id, server=server)[-1]["epoch"])
    got = _published(ru, store, job_id, server, epoch)
    if got is None:
        raise FedMarketError(f"the leaves of server {server}'s final usage root are not in the blob store")
    return got[0]


def declared(ru, job_id: int, server: str, caller: str) -> int | None:
    """The spending `caller` declared for its refund request at `server` (`declare_spent`), or None
    (no request, or a plain one): `UsageRollup.refund_request` keeps it plus one above bit 64."""
    word = int(ru.call("refund_request", job_id, server, caller))
    return (word >> 64) - 1 if word >> 64 else None


def declarations(ru, job_id: int, server: str) -> dict[str, int]:
    """Each caller's standing refund declaration at `server` (`declare_spent`, not yet refunded or
    replaced by a plain request): caller -> declared spending."""
    out = {}
    for caller in {ev["caller"] for ev in ru.events("SpentDeclared", job_id=job_id, server=server)}:
        spent = declared(ru, job_id, server, caller)
        if spent is not None:
            out[caller] = spent
    return out


def raise_declarations(dep: Deployment, account: Account, job_id: int, server: str,
                       signed: dict[str, tuple[int, int, bytes]]) -> list[tuple]:
    """Raise each standing declaration at `server` below a Tab its caller signed there, from
    `signed` (caller, lower case -> (queries, spent, signature)): the server's own receipts, or a
    watcher's read of the published leaves. Returns (receipt, message) per raise."""
    ru, done = rollup_of(dep), []
    for caller, standing in sorted(declarations(ru, job_id, server).items()):
        queries, spent, sig = signed.get(caller.lower(), (0, 0, b""))
        if spent <= standing or not _signed_by(dep, caller, job_id, server, queries, spent, sig):
            continue  # nothing above the declaration, or not the caller's Tab (a published leaf may lie)
        try:
            r = ru.transact("declare_spent", job_id, server, caller, queries, spent, sig, sender=account)
        except ContractRevert as exc:  # raced by a refund or a higher raise: the others still go
            done.append((None, f"could not raise {caller}'s refund declaration: {exc}"))
            continue
        done.append((r, f"raised {caller}'s refund declaration from {standing} to {spent} (tx {r.tx_hash})"))
    return done


def _signed_by(dep: Deployment, caller: str, job_id: int, server: str, queries: int, spent: int, sig: bytes) -> bool:
    """Whether `sig` is `caller`'s Tab(jobId, server, queries, spent): a published leaf's claim,
    checked before it is raised with or trusted."""
    try:
        signer = Tab(job_id, server, queries, spent).signer(sig, dep.chain_id, rollup_of(dep).address)
    except Exception:  # noqa: BLE001 - a malformed signature is no signature
        return False
    return signer.lower() == caller.lower()


def published_tabs(ru, store: BlobStore, job_id: int, server: str) -> dict[str, tuple[int, int, bytes]]:
    """Each caller's highest Tab among the published leaves of the server's final and pending roots
    (caller, lower case -> (queries, spent, signature)); none from roots whose leaves are withheld."""
    out: dict[str, tuple[int, int, bytes]] = {}
    epochs = [int(ev["epoch"]) for ev in ru.events("UsageFinalized", job_id=job_id, server=server)[-1:]]
    if ru.call("pending_root", job_id, server) != ZERO_ROOT:
        epochs.append(int(ru.call("epoch", job_id, server)))
    for epoch in epochs:
        got = _published(ru, store, job_id, server, epoch)
        if got is None or got[1] is None:
            continue
        for leaf, sig in zip(got[0].leaves, got[1]):
            key = leaf.caller.lower()
            if leaf.spent > out.get(key, (0, -1, b""))[1]:
                out[key] = (leaf.queries, leaf.spent, sig)
    return out


def audit_usage(dep: Deployment, account: Account, store: BlobStore, job_id: int, server: str,
                act: bool = True) -> list[str]:
    """Raise refund declarations below what the published leaves show their callers signed; check
    a server's pending usage root against its published leaves, every signature and tab, their
    order and the final root, and with `act` prove on chain the first thing wrong (a leaf
    challenged when the leaves are withheld or do not make the root). Returns the findings."""
    ru = rollup_of(dep)
    raised = []
    if act and ru.events("SpentDeclared", job_id=job_id, server=server):
        raised = [m for _, m in raise_declarations(dep, account, job_id, server, published_tabs(ru, store, job_id, server))]
    if ru.call("pending_root", job_id, server) == ZERO_ROOT:
        return raised
    return raised + _audit_pending(dep, account, store, job_id, server, act)


def _audit_pending(dep: Deployment, account: Account, store: BlobStore, job_id: int, server: str,
                   act: bool) -> list[str]:
    ru = rollup_of(dep)
    got = _published(ru, store, job_id, server, int(ru.call("epoch", job_id, server)))
    if got is None:  # the chain makes the server reveal them all, checked there, or lose its bond
        if not act:
            return ["the pending root's leaves are unavailable or do not make the root: challenge it to reveal them"]
        if ru.events("Challenged", job_id=job_id, server=server, epoch=int(ru.call("epoch", job_id, server)),
                     slot=REVEAL_SLOT):
            return ["the pending root's leaves are unavailable: already challenged to reveal them"]
        chunks = -(-int(ru.call("totals", job_id, server, True)[2]) // int(ru.call("CHUNK")))
        _challenge(dep, account, "challenge_leaves", job_id, server, bond=int(ru.call("REVEAL_BOND")) * chunks)
        return ["the pending root's leaves are unavailable or do not make the root: challenged to reveal them all"]
    tree, sigs = got
    i = tree.disorder()
    if i is not None:
        if act:
            ru.transact("prove_unsorted", job_id, server, tree.position(i), tree.position(i + 1), sender=account)
        return [f"leaves {i} and {i + 1} are out of order (a caller counted twice): proven"]
    for i, (leaf, sig) in enumerate(zip(tree.leaves, sigs if sigs is not None else [None] * tree.n)):
        if leaf.spent > int(ru.call("tab", job_id, server, leaf.caller)):
            if act:
                ru.transact("prove_overdraft", job_id, server, tree.position(i), sender=account)
            return [f"leaf {i}: {leaf.caller} spends {leaf.spent}, more than its tab: proven"]
        if sig is None:
            continue  # revealed on chain: its signature was checked there
        if not _signed_by(dep, leaf.caller, job_id, server, leaf.queries, leaf.spent, sig):
            if act:
                _challenge(dep, account, "challenge", job_id, server, i)
            return [f"leaf {i}: {leaf.caller}'s usage is not signed by it: challenged"]
    final = final_tree(ru, store, job_id, server)
    for leaf in final.leaves if final is not None else []:
        now = tree.usage(leaf.caller)
        if now is None or now.queries < leaf.queries or now.spent < leaf.spent:
            if act:
                ru.transact("prove_rollback", job_id, server, leaf.caller, opening(final, leaf.caller),
                            opening(tree, leaf.caller), sender=account)
            return [f"{leaf.caller} is lower than in the final root: proven"]
    return []


def request_refund(dep: Deployment, account: Account, job_id: int, server: str):
    """Ask for the unspent part of the tab at `server` back: the server answers no more queries on
    it and posts its usage before the refund is due, `REFUND_DELAY` from now (`refund_tab` then)."""
    if int(rollup_of(dep).call("tab", job_id, server, account.address)) == 0:
        raise FedMarketError(f"{account.address} has no tab at server {server} on job {job_id}")
    return rollup_of(dep).transact("request_refund", job_id, server, sender=account)


def refund_due(dep: Deployment, job_id: int, server: str, caller: str) -> int | None:
    """When `caller`'s refund request at `server` falls due (a unix time), or None if it made none."""
    word = int(rollup_of(dep).call("refund_request", job_id, server, caller))
    return word & (2**64 - 1) if word else None


def declare_spent(dep: Deployment, account: Account, job_id: int, server: str, spent: int):
    """Ask for the tab back declaring `spent`, the most `account` signed at `server` (its latest
    Tab): for a caller that cannot open its place in the server's roots because their leaves are
    withheld. The refund is due `REFUND_DELAY` from now; the server may raise the declaration in
    between with a Tab the caller signed spending more."""
    if not 0 <= int(spent) < 2**128:
        raise FedMarketError(f"a declared spending must be from 0 to 2**128 - 1, got {spent}")
    return rollup_of(dep).transact("declare_spent", job_id, server, account.address, 0, int(spent), b"", sender=account)


def refund_tab(dep: Deployment, account: Account, store: BlobStore, job_id: int, server: str):
    """Take back the unspent tab once the refund is due: less the spending declared for the
    request if there is one (`declare_spent`), else opening the caller's place in the final and the
    pending roots from their published leaves."""
    ru = rollup_of(dep)
    if declared(ru, job_id, server, account.address) is not None:
        return ru.transact("refund", job_id, server, EMPTY_OPENING, EMPTY_OPENING, sender=account)
    withheld = ("leaves are unavailable: ask for the refund with declare_spent (the most you signed "
                "at this server) instead")
    pending = None
    if ru.call("pending_root", job_id, server) != ZERO_ROOT:
        got = _published(ru, store, job_id, server, int(ru.call("epoch", job_id, server)))
        if got is None:
            raise FedMarketError(f"the pending usage root's {withheld}")
        if got[0].disorder() is not None:
            raise FedMarketError("the pending usage root's leaves are unsorted: audit it first")
        pending = got[0]
    try:
        final = final_tree(ru, store, job_id, server)
    except FedMarketError:
        raise FedMarketError(f"the final usage root's {withheld}") from None
    return ru.transact("refund", job_id, server, opening(final, account.address), opening(pending, account.address),
                       sender=account)
