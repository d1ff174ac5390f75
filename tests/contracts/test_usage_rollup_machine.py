"""UsageRollup's refunds as random histories: callers fund, query (signing cumulative Tabs), ask for
their tabs back plainly or by declaration (honestly, or declaring less than they signed), and
take refunds; the server posts every period's true usage with its leaves withheld or published,
finalizes, and raises declarations, or is down for a day and misses them. Against a ghost of
what each caller signed and holds, after every step:

- the rollup's token balance is exactly its pools, bonds and pull balances;
- a refund by openings or by an honest or raised declaration pays exactly the unspent tab;
- while the server raises, a lying caller takes back nothing it spent, and no honest caller
  loses anything to the liar; when it missed a lie, the shortfall comes out of its bond before
  any caller's refund;
- nothing reverts that the model says must succeed (no stuck refund, no root that cannot go final).
"""

from __future__ import annotations

from contract_kit import MAX
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test
from test_model_market import SSTAKE, Shop
from test_usage_rollup import PRICE, REFUND, WINDOW

from fedmarket.protocol.receipts import Tab
from fedmarket.protocol.usage import EMPTY_OPENING, Leaf, UsageTree

OUTCOMES: dict[str, int] = {}


class Tabs(RuleBasedStateMachine):
    shop: Shop = None
    job = None

    def __init__(self):
        super().__init__()
        s = self.shop
        self.kit, self.ru, self.j = s.kit, s.kit.dep.usage_rollup, self.job.id
        self._snap = self.kit.chain.snapshot()
        self._snap.__enter__()
        self.server = s.server
        self.callers = sorted(s.buyers[:3], key=lambda a: int(a.address, 16))
        for a in (*self.callers, self.server):
            s.token.transact("approve", self.ru.address, MAX, sender=a)
        self.ru.transact("post_bond", self.j, SSTAKE, sender=self.server)
        self.deposit = {c.address: 0 for c in self.callers}  # the tab on chain
        self.signed = {c.address: 0 for c in self.callers}  # queries signed (each at PRICE), cumulative
        self.leaf = {c.address: 0 for c in self.callers}  # queries in the final root
        self.pending: dict | None = None  # queries per caller in the pending root
        self.asked: dict[str, int | None] = {}  # caller -> None (plain) or the declared spending
        self.liars_missed = False  # a lie the server did not raise was refunded
        for c in self.callers:
            self.fund(self.callers.index(c), 10)

    def teardown(self):
        self._snap.__exit__(None, None, None)

    def hit(self, key):
        OUTCOMES[key] = OUTCOMES.get(key, 0) + 1

    def _owed_sum(self) -> int:
        accounts = {self.kit.treasury, self.server.address, *self.deposit}
        return sum(self.ru.call("owed", a) for a in accounts)

    @invariant()
    def balance_is_what_it_owes(self):
        held = self.ru.call("pool", self.j, self.server.address) + self.ru.call("bond", self.j, self.server.address)
        assert self.shop.bal(self.ru.address) == held + self._owed_sum()

    @rule(i=st.integers(0, 2), n=st.integers(1, 5))
    def fund(self, i, n):
        c = self.callers[i]
        self.ru.transact("fund_tab", self.j, self.server.address, n * PRICE, sender=c)
        self.deposit[c.address] += n * PRICE
        self.asked.pop(c.address, None)
        self.hit("fund")

    @rule(i=st.integers(0, 2), n=st.integers(1, 10))
    def query(self, i, n):
        c = self.callers[i].address
        if c in self.asked or (self.signed[c] + n) * PRICE > self.deposit[c]:
            return
        self.signed[c] += n
        self.hit("query")

    @rule()
    def post(self):
        """The period's true usage (the leaves' publication is the auditors' concern, not the refunds')."""
        if self.pending is not None:
            return
        usage = {c: q for c, q in self.signed.items() if q}
        rise = (sum(usage.values()) - sum(self.leaf.values())) * PRICE
        if rise <= 0 or rise > min(self.ru.call("pool", self.j, self.server.address),
                                   self.ru.call("bond", self.j, self.server.address)):
            return
        if any(q * PRICE > self.ru.call("tab", self.j, self.server.address, c) for c, q in usage.items()):
            return  # a caller refunded below what it signed: its TabBook stops (tested elsewhere)
        tree = UsageTree([Leaf(c, q, q * PRICE) for c, q in usage.items()])
        self.ru.transact("post_usage", self.j, tree.top.as_tuple(), tree.n, "bafy-withheld", sender=self.server)
        self.pending = usage
        self.hit("post")

    @precondition(lambda self: self.pending is not None)
    @rule()
    def finalize(self):
        self.kit.advance(WINDOW)
        self.ru.transact("finalize", self.j, self.server.address, sender=self.kit.outsider)
        self.leaf = {c: self.pending.get(c, 0) for c in self.leaf}
        self.pending = None
        self.hit("finalize")

    @rule(i=st.integers(0, 2), how=st.sampled_from(["plain", "honest", "lie", "over"]))
    def ask(self, i, how):
        c = self.callers[i]
        if self.deposit[c.address] == 0:
            return
        if how == "plain":
            self.ru.transact("request_refund", self.j, self.server.address, sender=c)
            self.asked[c.address] = None
        else:
            q = self.signed[c.address]
            spent = {"honest": q, "lie": 0, "over": q + 1}[how] * PRICE
            self.ru.transact("declare_spent", self.j, self.server.address, c.address, 0, spent, b"", sender=c)
            self.asked[c.address] = spent
        self.hit(f"ask {how}")

    def server_raises(self):
        """The server's step: it raises every declaration below what it holds signed (called when
        a refund falls due and the server was up that day)."""
        for c in self.callers:
            d = self.asked.get(c.address)
            q = self.signed[c.address]
            if d is not None and d < q * PRICE:
                sig = Tab(self.j, self.server.address, q, q * PRICE).sign(c.key, self.kit.chain_id, self.ru.address)
                self.ru.transact("declare_spent", self.j, self.server.address, c.address, q, q * PRICE, sig,
                                 sender=self.server)
                self.asked[c.address] = q * PRICE
                self.hit("raised")

    @precondition(lambda self: bool(self.asked))
    @rule(data=st.data())
    def refund(self, data):
        a = data.draw(st.sampled_from(sorted(self.asked)))
        c = next(x for x in self.callers if x.address == a)
        declared = self.asked[a]
        if declared is None and self.pending is not None:
            return  # a plain refund needs the pending root's leaves: they may be withheld; declare instead
        if declared is not None and declared < self.signed[a] * PRICE and data.draw(st.booleans(), label="server up"):
            self.server_raises()  # the server was up for the day: it raised before the refund was due
            declared = self.asked[a]
        self.kit.advance(REFUND)
        final = EMPTY_OPENING
        if declared is None:
            tree = UsageTree([Leaf(x, q, q * PRICE) for x, q in self.leaf.items() if q]) if any(self.leaf.values()) else None
            final = tree.opening(a) if tree is not None else EMPTY_OPENING
        pool = self.ru.call("pool", self.j, self.server.address)
        bond = self.ru.call("bond", self.j, self.server.address)
        got = self.ru.transact("refund", self.j, self.server.address, final, EMPTY_OPENING, sender=c).event("TabRefunded")["amount"]
        kept = self.leaf[a] * PRICE if declared is None else declared
        want = max(0, self.deposit[a] - kept)
        lie = declared is not None and declared < self.signed[a] * PRICE  # one nobody raised
        if lie:
            self.liars_missed = True
            self.hit("lie refunded")
        if want <= pool:
            assert got == want, f"refund {got} != unspent {want}"
            assert self.ru.call("bond", self.j, self.server.address) == bond
        else:  # only a lie nobody raised (this one, or an earlier one) leaves the pool short
            assert self.liars_missed, "the pool ran short without a missed lie"
            assert got == min(want, pool + bond)
            assert self.ru.call("bond", self.j, self.server.address) == bond - (got - pool)
            self.hit("covered by the bond")
        self.deposit[a] = min(self.deposit[a], kept)
        self.signed[a] = min(self.signed[a], self.deposit[a] // PRICE)
        del self.asked[a]
        self.hit("refund")


def test_declared_refunds_state_machine(kit):
    shop = Shop(kit)
    Tabs.shop, Tabs.job = shop, shop.listed()
    OUTCOMES.clear()
    run_state_machine_as_test(Tabs, settings=settings(
        max_examples=100, stateful_step_count=50, deadline=None, database=None, derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]))
    missing = [k for k in ("fund", "query", "post", "finalize", "ask plain", "ask honest", "ask lie", "raised", "refund",
                           "lie refunded", "covered by the bond") if not OUTCOMES.get(k)]
    assert not missing, f"the run never exercised: {missing} ({OUTCOMES})"
