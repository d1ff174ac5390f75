"""UsageRollup: optimistic settlement of tab usage, written as the attacker of every function that
moves or locks value: a server charging what nobody signed, counting a caller twice, spending
past a tab, dropping a caller it already charged, or hiding its leaves; a caller refunding what
it spent; a challenger griefing an honest server. After every test the rollup's balance is what
it owes (pools, bonds, pull balances and open challenge bonds)."""

from __future__ import annotations

import tempfile

import pytest
from contract_kit import MAX, TOKEN, reverts
from test_model_market import SSTAKE, Shop

from fedmarket.protocol.receipts import Tab
from fedmarket.protocol.usage import EMPTY_OPENING, Leaf, Node, UsageTree, verify
from fedmarket.storage import open_store

PRICE = 2 * TOKEN // 100
BOND = 10**17  # the session deployment's challenge bond (market.DEFAULT_CHALLENGE_BOND)
WINDOW = 3_600
ANSWER = 4 * 3_600
REFUND = 86_400


class Rollup:
    """A listed job, a bonded server, callers with tabs at it; roots built honestly or not."""

    def __init__(self, shop: Shop):
        self.shop, self.kit = shop, shop.kit
        self.ru = self.kit.dep.usage_rollup
        self.token = self.kit.token
        self.job = shop.listed()
        self.server, self.rival = shop.server, shop.rival
        self.callers = list(shop.buyers)
        self.challengers: set = set()
        for acct in (*self.callers, self.server, self.rival, self.kit.outsider):
            self.token.transact("approve", self.ru.address, MAX, sender=acct)

    def fund(self, caller, amount=100 * PRICE, server=None):
        return self.ru.transact("fund_tab", self.job.id, (server or self.server).address, amount, sender=caller)

    def bond(self, server=None, amount=SSTAKE):
        return self.ru.transact("post_bond", self.job.id, amount, sender=server or self.server)

    def sorted_callers(self, k: int) -> list:
        """The first `k` callers in address order (a sum tree's leaf order)."""
        return sorted(self.callers[:k], key=lambda a: int(a.address, 16))

    def funded(self, k: int, bond: int | None = SSTAKE) -> list:
        """The first `k` callers in address order, each with a 100-query tab; the server bonded
        `bond` (not at all if None)."""
        callers = self.sorted_callers(k)
        for c in callers:
            self.fund(c)
        if bond is not None:
            self.bond(amount=bond)
        return callers

    def sig(self, caller, queries, spent, server=None) -> bytes:
        server = server or self.server
        return Tab(self.job.id, server.address, queries, spent).sign(caller.key, self.kit.chain_id, self.ru.address)

    def tree(self, usage: dict) -> UsageTree:
        """usage: caller account -> queries (each at PRICE), or (queries, spent)."""
        leaves = []
        for c, u in usage.items():
            q, s = (u, u * PRICE) if isinstance(u, int) else u
            leaves.append(Leaf(c.address if hasattr(c, "address") else c, q, s))
        return UsageTree(leaves)

    def post(self, tree: UsageTree, server=None, top=None, n=None):
        top = top or tree.top
        return self.ru.transact("post_usage", self.job.id, top.as_tuple(), n or tree.n, "bafy-test",
                                sender=server or self.server)

    def finalize(self, server=None):
        return self.ru.transact("finalize", self.job.id, (server or self.server).address, sender=self.kit.outsider)

    def challenge(self, index, sender=None, server=None):
        sender = sender or self.kit.outsider
        self.challengers.add(sender.address)
        return self.ru.transact("challenge", self.job.id, (server or self.server).address, index, sender=sender)

    def answer(self, tree, index, signature=None, server=None):
        server = server or self.server
        leaf = tree.leaves[index]
        caller = next(c for c in self.callers if c.address == leaf.caller)
        sig = self.sig(caller, leaf.queries, leaf.spent, server) if signature is None else signature
        return self.ru.transact("answer", self.job.id, tree.position(index), sig, sender=server)

    def held(self) -> int:
        ru, job = self.ru, self.job.id
        servers = (self.server.address, self.rival.address)
        accounts = {self.kit.treasury, self.kit.outsider.address, *servers, *(c.address for c in self.callers),
                    *self.challengers}
        total = sum(ru.call("owed", a) for a in accounts)
        total += sum(ru.call("pool", job, s) + ru.call("bond", job, s) for s in servers)
        return total + BOND * self.open_bonds

    open_bonds = 0


@pytest.fixture
def roll(kit):
    r = Rollup(Shop(kit))
    yield r
    assert r.shop.bal(r.ru.address) == r.held(), "the rollup's balance is not what it owes"


def test_deployed_against_the_model_market(roll):
    ru, mm = roll.ru, roll.shop.mm
    assert (ru.call("MODEL_MARKET"), ru.call("TOKEN"), ru.call("TREASURY")) == (mm.address, roll.token.address,
                                                                                 roll.kit.treasury)
    assert (ru.call("CHALLENGE_BOND"), ru.call("CHALLENGE_WINDOW"), ru.call("REFUND_DELAY")) == (BOND, WINDOW, REFUND)


# ---------------------------------------------------------------- the tree


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13])
def test_every_leaf_opens_against_the_root_and_nothing_else_does(n):
    tree = UsageTree([Leaf("0x" + f"{i + 1:040x}", i + 1, (i + 1) * 7) for i in range(n)])
    assert tree.top.queries == n * (n + 1) // 2 and tree.top.spent == 7 * tree.top.queries
    for i in range(n):
        pos = tree.position(i)
        assert verify(tree.root, n, pos)
        assert not verify(tree.root, n + 1, pos)  # the count is committed
        idx, (caller, q, s), sib = pos
        assert not verify(tree.root, n, (idx, (caller, q, s + 1), sib))  # and every amount


def test_a_caller_appears_once():
    with pytest.raises(ValueError, match="twice"):
        UsageTree([Leaf("0x" + "11" * 20, 1, 1), Leaf("0x" + "11" * 20, 2, 2)])


# ---------------------------------------------------------------- honest periods


def test_a_period_of_many_callers_settles_in_two_transactions_and_splits_like_usage(roll):
    kit, ru, mm, job = roll.kit, roll.ru, roll.shop.mm, roll.job
    for c in roll.callers:
        roll.fund(c)
    roll.bond()
    usage = {c: i + 1 for i, c in enumerate(roll.callers)}
    tree = roll.tree(usage)
    spent = sum(usage.values()) * PRICE
    before = {a: mm.call("owed", a) for a in (kit.treasury, roll.server.address)}
    revenue = mm.call("revenue", job.id)
    roll.post(tree)
    with reverts("rollup: challenge window open"):
        roll.finalize()
    kit.advance(WINDOW)
    assert roll.finalize().event("UsageFinalized")["amount"] == spent
    assert ru.call("pool", job.id, roll.server.address) == len(roll.callers) * 100 * PRICE - spent
    assert ru.call("queries_settled", job.id) == sum(usage.values())
    assert ru.call("final_root", job.id, roll.server.address) == tree.root
    assert mm.call("owed", kit.treasury) - before[kit.treasury] == spent * 100 // 10_000
    assert mm.call("owed", roll.server.address) - before[roll.server.address] == spent * 2_000 // 10_000
    assert mm.call("revenue", job.id) - revenue == spent - spent * 100 // 10_000 - spent * 1_000 // 10_000 - spent * 2_000 // 10_000
    with reverts("rollup: no root pending"):
        roll.finalize()
    # the next period charges only the rise
    usage2 = {**usage, roll.callers[0]: 10}
    tree2 = roll.tree(usage2)
    roll.post(tree2)
    kit.advance(WINDOW)
    assert roll.finalize().event("UsageFinalized")["amount"] == 9 * PRICE


@pytest.mark.parametrize("case, reason", [
    ("unbonded", "rollup: not bonded"),
    ("under", "rollup: more than bond covers"),
    ("unbonding", "rollup: not bonded"),
    ("empty", "rollup: bad leaf count"),
    ("nothing", "rollup: nothing new spent"),
    ("fewer", "rollup: fewer queries than final"),
    ("pool", "rollup: more than the tabs hold"),
    ("pending", "rollup: a root is pending"),
])
def test_a_root_the_server_may_not_post_is_refused(roll, case, reason):
    c = roll.callers[0]
    roll.fund(c)
    tree = roll.tree({c: 3})
    if case == "under":
        roll.bond(amount=3 * PRICE - 1)  # a root moves at most the bond
    elif case != "unbonded":
        roll.bond()
    if case == "unbonding":
        roll.ru.transact("request_unbond", roll.job.id, sender=roll.server)
    if case in ("nothing", "fewer", "pending"):
        roll.post(tree)
        if case != "pending":
            roll.kit.advance(WINDOW)
            roll.finalize()
    top, n = tree.top, tree.n
    if case == "empty":
        n = 0
    elif case == "fewer":
        top = Node(top.h, top.queries - 1, top.spent + PRICE)
    elif case == "pool":
        top = Node(top.h, top.queries, 100 * PRICE + 1)
    with reverts(reason):
        roll.ru.transact("post_usage", roll.job.id, top.as_tuple(), n, "bafy", sender=roll.server)


def test_tabs_and_bonds_need_a_listed_model_and_an_amount(roll):
    ru, c = roll.ru, roll.callers[0]
    with reverts("rollup: model not listed"):
        ru.transact("fund_tab", roll.job.id + 100, roll.server.address, 1, sender=c)
    with reverts("rollup: no amount"):
        ru.transact("fund_tab", roll.job.id, roll.server.address, 0, sender=c)
    with reverts("rollup: bad server"):
        ru.transact("fund_tab", roll.job.id, c.address, 1, sender=c)
    with reverts("rollup: model not listed"):
        ru.transact("post_bond", roll.job.id + 100, 1, sender=roll.server)
    with reverts("rollup: no amount"):
        ru.transact("post_bond", roll.job.id, 0, sender=roll.server)


# ---------------------------------------------------------------- the server as attacker


def test_a_leaf_nobody_signed_is_challenged_and_its_root_rejected(roll):
    kit, ru, job = roll.kit, roll.ru, roll.job
    victim, other = roll.callers[0], roll.callers[1]
    roll.fund(victim)
    roll.fund(other)
    roll.bond()
    tree = roll.tree({victim: 50, other: 1})  # the victim made no query at all
    roll.post(tree)
    i = tree.index[victim.address.lower()]
    roll.challenge(i, sender=victim)
    roll.open_bonds = 1
    with reverts("rollup: answer window open"):
        ru.transact("timeout", job.id, roll.server.address, i, sender=victim)
    with reverts("rollup: not signed by the caller"):  # another caller's signature is not the victim's
        roll.answer(tree, i, signature=roll.sig(other, 50, 50 * PRICE))
    kit.advance(max(WINDOW, ANSWER))
    with reverts("rollup: challenges open"):
        roll.finalize()
    ev = ru.transact("timeout", job.id, roll.server.address, i, sender=kit.outsider).event("UsageRejected")
    roll.open_bonds = 0
    assert (ev["slashed"], ev["challenger"], ev["reason"]) == (SSTAKE, victim.address, "unanswered challenge")
    assert ru.call("owed", victim.address) == BOND + SSTAKE // 2
    assert ru.call("pending_root", job.id, roll.server.address) == b"\x00" * 32
    assert ru.call("pool", job.id, roll.server.address) == 200 * PRICE  # nothing left the tabs
    with reverts("rollup: not bonded"):
        roll.post(roll.tree({other: 1}))


def test_an_answered_challenge_pays_the_server_and_the_root_goes_final(roll):
    kit, ru, job = roll.kit, roll.ru, roll.job
    c = roll.callers[0]
    roll.fund(c)
    roll.bond()
    tree = roll.tree({c: 4})
    roll.post(tree)
    with reverts("rollup: no such leaf"):
        roll.challenge(1)
    roll.challenge(0)
    roll.open_bonds = 1
    with reverts("rollup: already challenged"):
        roll.challenge(0, sender=roll.rival)
    with reverts("rollup: leaf not in the root"):  # another usage than the posted leaf
        ru.transact("answer", job.id, roll.tree({c: 3}).position(0), roll.sig(c, 3, 3 * PRICE), sender=roll.server)
    with reverts("rollup: not signed by the caller"):  # the caller's signature for another server
        roll.answer(tree, 0, signature=roll.sig(c, 4, 4 * PRICE, server=roll.rival))
    roll.answer(tree, 0)
    roll.open_bonds = 0
    assert ru.call("owed", roll.server.address) == BOND
    with reverts("rollup: not challenged"):
        roll.answer(tree, 0)
    kit.advance(WINDOW)
    with reverts("rollup: challenge window closed"):
        roll.challenge(0)
    roll.finalize()


def test_a_caller_counted_twice_is_proven_and_slashed(roll):
    ru, job = roll.ru, roll.job
    a, b = sorted(roll.callers[:2], key=lambda x: int(x.address, 16))
    roll.fund(a)
    roll.fund(b)
    roll.bond()
    honest = roll.tree({a: 1, b: 1})
    with reverts("rollup: no root pending"):
        ru.transact("prove_unsorted", job.id, roll.server.address, honest.position(0), honest.position(1), sender=roll.rival)
    roll.post(honest)
    with reverts("rollup: leaves in order"):
        ru.transact("prove_unsorted", job.id, roll.server.address, honest.position(0), honest.position(1), sender=roll.rival)
    roll.kit.advance(WINDOW)
    roll.finalize()
    # a forged tree: the same caller twice (built by hand, as a cheating server would)
    twice = UsageTree([Leaf(a.address, 1, PRICE), Leaf(b.address, 2, 2 * PRICE)])
    twice.leaves[1] = Leaf(a.address, 2, 2 * PRICE)
    forged = _forged(twice.leaves)
    roll.post(forged)
    with reverts("rollup: leaves not neighbours"):
        ru.transact("prove_unsorted", job.id, roll.server.address, forged.position(1), forged.position(0), sender=roll.rival)
    ev = ru.transact("prove_unsorted", job.id, roll.server.address, forged.position(0), forged.position(1),
                     sender=roll.rival).event("UsageRejected")
    roll.challengers.add(roll.rival.address)
    assert (ev["reason"], ev["slashed"]) == ("unsorted leaves", SSTAKE)


def _forged(leaves) -> UsageTree:
    """A tree over `leaves` as given (unsorted or repeated), as a cheating server builds it."""
    return UsageTree(leaves, as_given=True)


def test_spending_past_a_tab_is_proven_and_slashed(roll):
    ru, job = roll.ru, roll.job
    sybil, honest = roll.callers[0], roll.callers[1]
    roll.fund(sybil, 1 * PRICE)
    roll.fund(honest, 100 * PRICE)
    roll.bond()
    tree = roll.tree({sybil: 60, honest: 1})  # the sybil signs 60 queries, paid from the honest tab
    roll.post(tree)
    i = tree.index[honest.address.lower()]
    with reverts("rollup: within the tab"):
        ru.transact("prove_overdraft", job.id, roll.server.address, tree.position(i), sender=honest)
    ev = ru.transact("prove_overdraft", job.id, roll.server.address, tree.position(tree.index[sybil.address.lower()]),
                     sender=honest).event("UsageRejected")
    assert ev["reason"] == "overdraft"


@pytest.mark.parametrize("how", ["dropped", "lowered"])
def test_a_caller_dropped_or_lowered_after_it_paid_is_proven_and_slashed(roll, how):
    ru, job = roll.ru, roll.job
    cs = sorted(roll.callers[:3], key=lambda x: int(x.address, 16))
    for c in cs:
        roll.fund(c)
    roll.bond()
    first = roll.tree({c: 5 for c in cs})
    roll.post(first)
    roll.kit.advance(WINDOW)
    roll.finalize()
    victim = cs[1]  # dropping it would let it (a sybil of the server) refund what it spent
    later = roll.tree({cs[0]: 6, cs[2]: 12} if how == "dropped" else {cs[0]: 6, victim: 4, cs[2]: 9})
    roll.post(later)
    honest = roll.tree({cs[0]: 6, victim: 5, cs[2]: 9})
    with reverts("rollup: opening not in the root"):  # an opening of another tree
        ru.transact("prove_rollback", job.id, roll.server.address, victim.address, first.opening(victim.address),
                    honest.opening(victim.address), sender=cs[0])
    with reverts("rollup: no rollback"):  # a caller who only rose
        ru.transact("prove_rollback", job.id, roll.server.address, cs[0].address, first.opening(cs[0].address),
                    later.opening(cs[0].address), sender=cs[0])
    ev = ru.transact("prove_rollback", job.id, roll.server.address, victim.address, first.opening(victim.address),
                     later.opening(victim.address), sender=cs[0]).event("UsageRejected")
    assert ev["reason"] == "rollback"


def test_a_false_absence_is_refused(roll):
    ru, job = roll.ru, roll.job
    cs = sorted(roll.callers[:3], key=lambda x: int(x.address, 16))
    for c in cs:
        roll.fund(c)
    roll.bond()
    first = roll.tree({c: 5 for c in cs})
    roll.post(first)
    roll.kit.advance(WINDOW)
    roll.finalize()
    roll.post(roll.tree({c: 6 for c in cs}))
    later = roll.tree({c: 6 for c in cs})
    # "cs[1] is absent from the final root": leaves 0 and 2 are not neighbours
    lie = (3, first.position(0), first.position(2))
    with reverts("rollup: neighbour not in root"):
        ru.transact("prove_rollback", job.id, roll.server.address, cs[1].address, lie, later.opening(cs[1].address),
                    sender=cs[0])
    # "cs[1] is absent" with the neighbours of a caller who is below it
    with reverts("rollup: caller not between them"):
        ru.transact("prove_rollback", job.id, roll.server.address, cs[2].address, (3, first.position(0), first.position(1)),
                    later.opening(cs[2].address), sender=cs[0])


# ---------------------------------------------------------------- callers and refunds


def test_a_refund_keeps_back_what_the_final_and_the_pending_roots_charge(roll):
    kit, ru, job = roll.kit, roll.ru, roll.job
    c, d = roll.callers[0], roll.callers[1]
    roll.fund(c)
    roll.fund(d)
    roll.bond()
    first = roll.tree({c: 10, d: 1})
    roll.post(first)
    kit.advance(WINDOW)
    roll.finalize()
    ru.transact("request_refund", job.id, roll.server.address, sender=c)
    pending = roll.tree({c: 30, d: 1})
    roll.post(pending)
    with reverts("rollup: refund not due yet"):
        ru.transact("refund", job.id, roll.server.address, first.opening(c.address), pending.opening(c.address), sender=c)
    kit.advance(REFUND)
    with reverts("rollup: opening not in the root"):  # claiming the final root's lower spending as the pending one's
        ru.transact("refund", job.id, roll.server.address, first.opening(c.address), first.opening(c.address), sender=c)
    before = roll.shop.bal(c)
    ev = ru.transact("refund", job.id, roll.server.address, first.opening(c.address), pending.opening(c.address),
                     sender=c).event("TabRefunded")
    assert ev["amount"] == 70 * PRICE and roll.shop.bal(c) - before == 70 * PRICE
    assert ru.call("tab", job.id, roll.server.address, c.address) == 30 * PRICE
    with reverts("rollup: no refund requested"):
        ru.transact("refund", job.id, roll.server.address, first.opening(c.address), pending.opening(c.address), sender=c)
    roll.finalize()  # the pending root is still paid in full
    # what is left is d's unspent tab: c's tab is now exactly what it spent
    assert ru.call("pool", job.id, roll.server.address) == 99 * PRICE


def test_a_caller_never_charged_gets_its_whole_tab_back_by_showing_its_absence(roll):
    kit, ru, job = roll.kit, roll.ru, roll.job
    cs = sorted(roll.callers[:3], key=lambda x: int(x.address, 16))
    for c in cs:
        roll.fund(c)
    roll.bond()
    tree = roll.tree({cs[0]: 2, cs[2]: 2})
    roll.post(tree)
    kit.advance(WINDOW)
    roll.finalize()
    ru.transact("request_refund", job.id, roll.server.address, sender=cs[1])
    kit.advance(REFUND)
    with reverts("rollup: opening not in the root"):
        ru.transact("refund", job.id, roll.server.address, EMPTY_OPENING, EMPTY_OPENING, sender=cs[1])
    # and the charged caller cannot pass itself off as absent
    ru.transact("request_refund", job.id, roll.server.address, sender=cs[0])
    kit.advance(REFUND)
    with reverts("rollup: not the first leaf"):
        ru.transact("refund", job.id, roll.server.address, (2, tree.position(1), EMPTY_OPENING[1]), EMPTY_OPENING,
                    sender=cs[0])
    amount = ru.transact("refund", job.id, roll.server.address, tree.opening(cs[1].address), EMPTY_OPENING,
                         sender=cs[1]).event("TabRefunded")["amount"]
    assert amount == 100 * PRICE


def test_one_servers_root_cannot_reach_another_servers_tabs(roll):
    ru, job = roll.ru, roll.job
    c = roll.callers[0]
    roll.fund(c, 100 * PRICE, server=roll.rival)  # the tabs are all at the rival
    roll.fund(roll.callers[1], PRICE)
    roll.bond()
    with reverts("rollup: more than the tabs hold"):
        roll.post(roll.tree({roll.callers[1]: 50}))
    assert ru.call("pool", job.id, roll.rival.address) == 100 * PRICE


def test_unbonding_waits_and_never_leaves_a_root_unbacked(roll):
    kit, ru, job = roll.kit, roll.ru, roll.job
    c = roll.callers[0]
    roll.fund(c)
    roll.bond()
    roll.post(roll.tree({c: 1}))
    ru.transact("request_unbond", job.id, sender=roll.server)
    kit.advance(7 * 86_400)
    with reverts("rollup: a root is pending"):
        ru.transact("unbond", job.id, sender=roll.server)
    roll.finalize()
    assert ru.transact("unbond", job.id, sender=roll.server).event("Unbonded")["amount"] == SSTAKE
    with reverts("rollup: no unbond requested"):
        ru.transact("unbond", job.id, sender=roll.server)


def test_only_the_rollup_pays_a_model_and_with_the_shares_it_posted_under(roll):
    mm, job, payer = roll.shop.mm, roll.job, roll.kit.outsider
    assert mm.call("ROLLUP") == roll.ru.address
    roll.token.transact("approve", mm.address, MAX, sender=payer)
    with reverts("model: not the usage rollup"):  # else anyone could pay itself a server share of 100%
        mm.transact("pay", job.id, payer.address, 10 * PRICE, 0, 9_000, sender=payer)


def test_a_challenge_of_a_rejected_root_gets_its_bond_back(roll):
    kit, ru, job = roll.kit, roll.ru, roll.job
    a, b = sorted(roll.callers[:2], key=lambda x: int(x.address, 16))
    roll.fund(a)
    roll.fund(b)
    roll.bond()
    tree = roll.tree({a: 1, b: 1})
    roll.post(tree)
    roll.challenge(0, sender=roll.rival)
    roll.challenge(1, sender=kit.outsider)
    roll.open_bonds = 2
    with reverts("rollup: challenge still open"):
        ru.transact("reclaim_bond", job.id, roll.server.address, 1, sender=kit.outsider)
    kit.advance(ANSWER)
    ru.transact("timeout", job.id, roll.server.address, 0, sender=roll.rival)
    roll.open_bonds = 1
    ru.transact("reclaim_bond", job.id, roll.server.address, 1, sender=kit.outsider)
    roll.open_bonds = 0
    assert ru.call("owed", kit.outsider.address) == BOND
    with reverts("rollup: no challenge"):
        ru.transact("reclaim_bond", job.id, roll.server.address, 1, sender=kit.outsider)


# ---------------------------------------------------------------- a caller checking itself


@pytest.mark.parametrize("present", [True, False])
def test_a_caller_makes_the_server_show_its_place_even_with_the_leaves_withheld(roll, present):
    kit, ru, job = roll.kit, roll.ru, roll.job
    cs = sorted(roll.callers[:3], key=lambda x: int(x.address, 16))
    for c in cs:
        roll.fund(c)
    roll.bond()
    me = cs[1]
    tree = roll.tree({cs[0]: 2, me: 3, cs[2]: 4} if present else {cs[0]: 2, cs[2]: 4})
    roll.post(tree)  # its leaves are published nowhere
    slot = 2**160 + int(me.address, 16)
    roll.ru.transact("challenge_caller", job.id, roll.server.address, me.address, sender=me)
    roll.challengers.add(me.address)
    roll.open_bonds = 1
    with reverts("rollup: already challenged"):
        roll.ru.transact("challenge_caller", job.id, roll.server.address, me.address, sender=me)
    sig = roll.sig(me, 3, 3 * PRICE) if present else b""
    if present:
        with reverts("rollup: not signed by the caller"):
            ru.transact("answer_caller", job.id, me.address, tree.opening(me.address), roll.sig(cs[0], 3, 3 * PRICE),
                        sender=roll.server)
    else:  # "absent" shown by the leaf below it alone, as if that were the last
        with reverts("rollup: neighbour not in root"):
            ru.transact("answer_caller", job.id, me.address, (tree.n, tree.position(0), EMPTY_OPENING[1]), b"",
                        sender=roll.server)
    ev = ru.transact("answer_caller", job.id, me.address, tree.opening(me.address), sig,
                     sender=roll.server).event("CallerOpened")
    roll.open_bonds = 0
    assert (ev["caller"], ev["queries"], ev["spent"]) == (me.address, *((3, 3 * PRICE) if present else (0, 0)))
    with reverts("rollup: not challenged"):
        ru.transact("timeout", job.id, roll.server.address, slot, sender=me)
    kit.advance(WINDOW)
    roll.finalize()


def test_an_unanswered_caller_challenge_rejects_the_root(roll):
    kit, ru, job = roll.kit, roll.ru, roll.job
    me, other = roll.callers[0], roll.callers[1]
    roll.fund(me)
    roll.fund(other)
    roll.bond()
    roll.post(roll.tree({me: 40, other: 1}))  # 40 queries the caller never made, leaves withheld
    ru.transact("challenge_caller", job.id, roll.server.address, me.address, sender=me)
    roll.challengers.add(me.address)
    roll.open_bonds = 1
    kit.advance(ANSWER)
    ev = ru.transact("timeout", job.id, roll.server.address, 2**160 + int(me.address, 16), sender=me).event("UsageRejected")
    roll.open_bonds = 0
    assert (ev["challenger"], ev["slashed"]) == (me.address, SSTAKE)


def test_a_root_has_no_more_leaves_than_tabs_were_opened_at_its_server(roll):
    c = roll.callers[0]
    roll.fund(c)
    roll.fund(c)  # topping up opens no second tab
    roll.bond()
    assert roll.ru.call("tabs_opened", roll.job.id, roll.server.address) == 1
    with reverts("rollup: bad leaf count"):
        roll.post(roll.tree({c: 2, roll.callers[1]: (0, 0)}))


# ---------------------------------------------------------------- withheld leaves forced open


def test_a_server_reveals_a_withheld_root_of_two_chunks_and_keeps_the_bond(roll):
    """An honest root of 257 leaves whose leaves were not published: challenged to reveal them
    all, the server's TabBook sends both chunks (256 and 1), the chain checks order, tabs and
    signatures, and the challenge bond goes to the server; the root then goes final."""
    from fedmarket.driver import fund
    from fedmarket.roles.tabs import TabBook, audit_usage

    kit, ru, job = roll.kit, roll.ru, roll.job
    callers = [kit.chain.new_account("rollup-reveal", i) for i in range(257)]
    fund(kit.dep, kit.deployer, {c.address: 2 * PRICE for c in callers})
    for c in callers:
        roll.token.transact("approve", ru.address, PRICE, sender=c)
        ru.transact("fund_tab", job.id, roll.server.address, PRICE, sender=c)
    book = TabBook(kit.dep, roll.server, open_store(tempfile.mkdtemp()), job.id)
    for c in callers:
        sig = Tab(job.id, roll.server.address, 1, PRICE).sign(c.key, kit.chain_id, ru.address)
        book.admit(1, PRICE, sig)
    assert any("257 callers" in m for m in book.step())
    elsewhere = open_store(tempfile.mkdtemp())  # an auditor that cannot get the leaves
    assert audit_usage(kit.dep, kit.outsider, elsewhere, job.id, roll.server.address) == [
        "the pending root's leaves are unavailable or do not make the root: challenged to reveal them all"]
    roll.challengers.add(kit.outsider.address)
    lines = book.step()
    assert sum("revealed leaves" in m for m in lines) == 2, lines
    reveals = [r.gas_used for r in book.sent if r.events and r.events[0].name == "LeavesRevealed"]
    print(f"reveal gas per chunk: {reveals}")
    assert len(reveals) == 2 and max(reveals) < 10_000_000  # a full chunk fits a third of a block
    assert ru.call("owed", roll.server.address) == 2 * ru.call("REVEAL_BOND")  # the bond of two chunks
    assert audit_usage(kit.dep, kit.outsider, elsewhere, job.id, roll.server.address) == []  # read back from the chain
    kit.advance(WINDOW)
    assert any("usage root final: 257 queries" in m for m in book.step())
