"""A paying caller of a model server: buys credits, signs each query's cumulative usage, checks
the server's signed answer, and disputes a wrong one on chain (a listed linear model)."""

from __future__ import annotations

import json
from pathlib import Path

from ..chain import Account
from ..errors import FedMarketError
from ..market import Deployment
from ..protocol.inference import input_hash, linear_answer, model_opening
from ..protocol.receipts import AccessQuery, Answer, Usage
from ..storage import BlobStore
from .model_owner import listed_shape
from .tabs import fund_tab, sign_tab


class ModelCaller:
    """A paying caller: buys credits and signs each query's cumulative usage for one server.

    With `record` (a JSON file of its own), the figures it signed at each server are kept across
    runs: receipts are cumulative, so the next one must build on what this caller signed, never on
    what a server says it signed (a server reporting a count of 10**9 had the caller sign away
    every credit it held)."""

    def __init__(self, dep: Deployment, account: Account, job_id: int, server: str, count: int | None = None,
                 tab_queries: int = 0, tab_spent: int = 0, record: Path | None = None):
        self.dep, self.mm, self.account, self.job_id, self.server = dep, dep.model_market, account, job_id, server
        self.count = int(self.mm.call("used", job_id, account.address, server)) if count is None else count
        self.record = record
        mine = self._records().get(self._key(), {})  # the most it signed there in earlier runs
        self.count = max(self.count, int(mine.get("count", 0)))
        self.tab_queries, self.tab_spent = tab_queries, tab_spent  # its usage on its tab at this server
        if int(mine.get("tab_spent", 0)) >= self.tab_spent:
            self.tab_queries, self.tab_spent = int(mine.get("tab_queries", 0)), int(mine.get("tab_spent", 0))
        self.access_count = int(mine.get("access_count", 0))  # its access queries at this server
        self.tab_price: int | None = mine.get("tab_price")  # the price its last tab query was signed at

    def _key(self) -> str:
        return f"{self.dep.chain_id}:{self.mm.address.lower()}:{self.job_id}:{self.server.lower()}"

    def _records(self) -> dict:
        if self.record is None or not Path(self.record).is_file():
            return {}
        try:
            return json.loads(Path(self.record).read_text())
        except ValueError:
            raise FedMarketError(f"{self.record} is not this caller's usage record (not JSON)") from None

    def save(self) -> None:
        """Write the figures it signed (before the signature leaves: a server holds it from then)."""
        if self.record is None:
            return
        records = self._records()
        records[self._key()] = {"count": self.count, "tab_queries": self.tab_queries, "tab_spent": self.tab_spent,
                                "access_count": self.access_count, "tab_price": self.tab_price}
        path = Path(self.record)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(records, indent=1, sort_keys=True))
        tmp.replace(path)

    def fund(self, amount: int):
        """Fund its tab at the server with `amount` base units (paid through the usage rollup)."""
        return fund_tab(self.dep, self.account, self.job_id, self.server, amount)

    def next_tab(self, max_price: int | None = None) -> tuple[int, int, bytes]:
        """The signed tab usage of the next query: (queries, spent, signature), one query more at the
        current price, refused above `max_price` (the owner sets the price, and a price raised to the
        whole tab had the next query sign it all away)."""
        price = int(self.mm.call("offer", self.job_id)["query_price"])
        if max_price is not None and price > max_price:
            raise FedMarketError(f"the query price is now {price} base units, above the {max_price} this caller "
                                 "accepts: not signing (raise the bound to pay it)")
        self.tab_queries += 1
        self.tab_spent += price
        self.tab_price = price
        sig = sign_tab(self.dep, self.account, self.job_id, self.server, self.tab_queries, self.tab_spent)
        return self.tab_queries, self.tab_spent, sig

    def buy(self, queries: int):
        """Prepay `queries` credits at the price read now: a price raised before the purchase lands is refused."""
        cost = queries * int(self.mm.call("offer", self.job_id)["query_price"])
        self.dep.token.transact("approve", self.mm.address, cost, sender=self.account)
        return self.mm.transact("buy_credits", self.job_id, queries, cost, sender=self.account)

    def next_receipt(self) -> tuple[int, bytes]:
        """The signed usage of the next query (its cumulative count at this server)."""
        self.count += 1
        sig = Usage(self.job_id, self.server, self.count).sign(self.account.key, self.dep.chain_id, self.mm.address)
        return self.count, sig

    def buy_access(self, periods: int):
        """Buy `periods` periods of time-bound access (paid at once to the owner, fee and contributors)
        on the terms read now: a higher price or a shorter period set before the purchase lands is refused."""
        offer = self.mm.call("offer", self.job_id)
        cost = periods * int(offer["access_price"])
        held = int(self.mm.call("access_until", self.job_id, self.account.address))
        min_until = max(self.dep.chain.timestamp(), held) + periods * int(offer["access_period"])
        self.dep.token.transact("approve", self.mm.address, cost, sender=self.account)
        return self.mm.transact("buy_access", self.job_id, periods, cost, min_until, sender=self.account)

    def next_access(self) -> tuple[int, bytes]:
        """The signed AccessQuery of the next query under time-bound access: (count, signature)."""
        self.access_count += 1
        sig = AccessQuery(self.job_id, self.server, self.access_count).sign(self.account.key, self.dep.chain_id,
                                                                             self.mm.address)
        return self.access_count, sig

    def check(self, reply: dict) -> int:
        """The answer's class, after checking the server signed exactly it (what a dispute needs)."""
        x, cls = [int(v) for v in reply["input"]], int(reply["answer"])
        signer = Answer(self.job_id, input_hash(x), cls).signer(bytes.fromhex(reply["signature"][2:]), self.dep.chain_id,
                                                                self.mm.address)
        if signer != self.server:
            raise FedMarketError(f"the answer is signed by {signer}, not the server {self.server}")
        return cls


def dispute_answer(dep: Deployment, account: Account, store: BlobStore, job_id: int, server: str, reply: dict):
    """Prove on chain that a server's signed answer is wrong: re-executed by `ModelMarket.dispute_answer`
    with the job's model (fetched and verified here). Refuses, without a transaction, an answer that is right."""
    from ..modelfile import trained_model

    mm = dep.model_market
    shape = listed_shape(dep, job_id)
    if not shape[0]:
        raise FedMarketError(f"job {job_id}'s model is not listed as linear: its answers are not provable on chain")
    trained = trained_model(dep, store, job_id)
    x, cls = [int(v) for v in reply["input"]], int(reply["answer"])
    if cls == linear_answer(trained.q, x, *shape):
        raise FedMarketError(f"the answer {cls} is the model's: nothing to dispute")
    chunks, proofs = model_opening(trained.q, trained.spec.quantization.chunk_size)
    return mm.transact("dispute_answer", job_id, server, x, cls, bytes.fromhex(reply["signature"][2:]), chunks, proofs,
                       sender=account)


PAYMENTS = ("credits", "tab", "access")


def _not_above(theirs: int, mine: int, what: str, caller: ModelCaller) -> None:
    if theirs > mine:
        where = f"its record {caller.record}" if caller.record is not None else "what it signed in this run and the chain"
        raise FedMarketError(f"the server says {caller.account.address} signed {theirs} {what} there, {where} says "
                             f"{mine}: not signing on top of the server's figure (receipts are cumulative; if you "
                             "signed them elsewhere, bring that record)")


def server_info(url: str) -> dict:
    """A model server's `/info` (its job, address, model market and chain)."""
    import httpx

    try:
        r = httpx.get(url.rstrip("/") + "/info", timeout=30)
        r.raise_for_status()
        return r.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise FedMarketError(f"no model server answers at {url}: {exc}") from None


def ask(url: str, caller: ModelCaller, features: list[float], pay: str = "credits", prove: bool = False,
        max_price: int | None = None) -> dict:
    """Ask a model server one query, paid by `pay` (credits, tab or access): the caller's next
    receipt signed one query past the server's figure, which must not exceed the most this caller
    signed there (its record, the chain's settled count, what it signed in this run: a server
    saying it signed more is refused), at most at `max_price` (default: the price of its last tab
    query, if it made one), and the answer's signature checked; returns the reply with the checked
    class."""
    import httpx

    if pay not in PAYMENTS:
        raise FedMarketError(f"pay with one of {', '.join(PAYMENTS)}, not {pay!r}")
    if not caller.mm.call("serving", caller.job_id, caller.server):
        raise FedMarketError(f"server {caller.server} is not staked as the model's offer asks: its answers are not "
                             "backed by the stake a wrong one would cost")
    base = url.rstrip("/")
    with httpx.Client(timeout=600) as client:
        last = client.get(base + "/usage", params={"caller": caller.account.address}).json()
        doc: dict = {"features": [float(v) for v in features], "prove": prove}
        # the next receipt is one query past the server's figure, which may be below the most this
        # caller signed (a query it refused, or one lost on the way) but never above it
        if pay == "credits":
            used = int(caller.mm.call("used", caller.job_id, caller.account.address, caller.server))
            top = max(caller.count, used)
            _not_above(int(last["count"]), top, "queries on credits", caller)
            caller.count = max(int(last["count"]), used)
            doc["count"], sig = caller.next_receipt()
            caller.count = max(top, caller.count)
        elif pay == "tab":
            top = (caller.tab_queries, caller.tab_spent)
            _not_above(int(last["tab_spent"]), top[1], "base units of its tab", caller)
            _not_above(int(last["tab_queries"]), top[0], "tab queries", caller)
            caller.tab_queries, caller.tab_spent = int(last["tab_queries"]), int(last["tab_spent"])
            try:
                doc["count"], doc["spent"], sig = caller.next_tab(caller.tab_price if max_price is None else max_price)
            finally:
                caller.tab_queries, caller.tab_spent = max(top[0], caller.tab_queries), max(top[1], caller.tab_spent)
        else:
            caller.access_count = max(caller.access_count, int(last["access_count"]))  # access is not charged by count
            doc["count"], sig = caller.next_access()
            doc["access"] = True
        caller.save()
        doc["signature"] = "0x" + sig.hex()
        r = client.post(base + "/query", json=doc)
    reply = r.json()
    if r.status_code != 200:
        raise FedMarketError(f"the server refused the query: {reply.get('error', r.text)}")
    reply["checked_answer"] = caller.check(reply)
    return reply
