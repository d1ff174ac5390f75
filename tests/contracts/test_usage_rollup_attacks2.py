"""UsageRollup attacked, second pass: the caller slots (`challenge_caller`/`answer_caller`), the
leaf count bound (`tabs_opened`), withheld leaves against the shared pool, and the server's
`TabBook` driven against the real rollup (rejections, free queries, usage beyond its bond).

Attacks that succeed today assert the safe behaviour as strict xfails naming the fix; attacks
that fail are plain tests. The `roll` fixture checks after every test that the rollup holds
exactly what it owes."""

from __future__ import annotations

import pytest
import test_usage_rollup as base
from contract_kit import reverts
from test_model_market import SSTAKE, offer
from test_usage_rollup import ANSWER, PRICE, REFUND, WINDOW, Rollup

from fedmarket.errors import ContractRevert, FedMarketError
from fedmarket.protocol.usage import EMPTY_OPENING, Leaf, UsageTree
from fedmarket.roles.tabs import TabBook, TabRefused
from fedmarket.storage import open_store

roll = base.roll
SLOT = 2**160


def _sorted(roll: Rollup, k: int) -> list:
    return sorted(roll.callers[:k], key=lambda a: int(a.address, 16))


def _slot(acct) -> int:
    return SLOT + int(acct.address, 16)


def _challenge_caller(roll: Rollup, caller, sender):
    roll.challengers.add(sender.address)
    return roll.ru.transact("challenge_caller", roll.job.id, roll.server.address, caller.address, sender=sender)


def _answer_caller(roll: Rollup, tree: UsageTree, caller, signature=b""):
    return roll.ru.transact("answer_caller", roll.job.id, caller.address, tree.opening(caller.address), signature,
                            sender=roll.server)


# ---------------------------------------------------------------- withheld leaves and the shared pool


@pytest.mark.xfail(strict=True, raises=ContractRevert, reason=(
    "withheld leaves: every caller's own place is answered truly while one of them is counted a second "
    "time (an older receipt it did sign, out of order), so no challenge the auditors make fails and the "
    "pool pays the duplicate from the other callers' tabs. Fix: a data-availability challenge "
    "(challenge_leaves: the server reveals every leaf, in chunks, within ANSWER_WINDOW, the rollup "
    "rebuilding the root and checking order and tabs, or is slashed), used by audit_usage when the "
    "leaves are unavailable instead of challenge_caller of its own place"))
def test_withheld_leaves_let_a_server_count_a_caller_twice_and_lock_the_last_refund(roll):
    kit, ru, job = roll.kit, roll.ru, roll.job
    a, b = _sorted(roll, 2)
    roll.fund(a)
    roll.fund(b)
    roll.fund(roll.rival, 1)  # the server's sybil: one wei opens the third tab the root's count needs
    roll.bond()
    # a really signed 30 and then 40 queries; the server lists 40 in a's place and 30 again at the end
    cheat = UsageTree([Leaf(a.address, 40, 40 * PRICE), Leaf(b.address, 20, 20 * PRICE),
                       Leaf(a.address, 30, 30 * PRICE)], as_given=True)
    ru.transact("post_usage", job.id, cheat.top.as_tuple(), cheat.n, "bafy-withheld", sender=roll.server)
    # each caller does what audit_usage does with withheld leaves: it has its own place shown
    for c in (a, b):
        _challenge_caller(roll, c, sender=c)
        roll.open_bonds += 1
    for c, leaf in ((a, cheat.leaves[0]), (b, cheat.leaves[1])):
        ev = _answer_caller(roll, cheat, c, roll.sig(c, leaf.queries, leaf.spent)).event("CallerOpened")
        assert (ev["queries"], ev["spent"]) == (leaf.queries, leaf.spent)  # both see exactly what they signed
        roll.open_bonds -= 1
    # the duplicate is within a's tab, so even its leaf shown would prove no overdraft
    with reverts("rollup: within the tab"):
        ru.transact("prove_overdraft", job.id, roll.server.address, cheat.position(2), sender=b)
    kit.advance(WINDOW)
    assert roll.finalize().event("UsageFinalized")["amount"] == 90 * PRICE  # 30 queries nobody owes
    for c in (a, b):
        ru.transact("request_refund", job.id, roll.server.address, sender=c)
    kit.advance(REFUND)
    got = ru.transact("refund", job.id, roll.server.address, cheat.opening(a.address), EMPTY_OPENING, sender=a)
    assert got.event("TabRefunded")["amount"] == 60 * PRICE
    # b's unspent 80 queries: the pool holds 50 and one wei
    got = ru.transact("refund", job.id, roll.server.address, cheat.opening(b.address), EMPTY_OPENING, sender=b)
    assert got.event("TabRefunded")["amount"] == 80 * PRICE


@pytest.mark.xfail(strict=True, raises=FedMarketError, reason=(
    "a root whose leaves are withheld goes final when nobody challenges within the hour, and then no "
    "caller can refund: refund needs the caller's opening (its leaf, or its neighbours) in the final "
    "root, which only the leaves give, and challenge_caller works on a pending root only (a caller who "
    "never queried is locked too). Fix: let challenge_caller open a caller's place in the final root "
    "when none is pending, record the usage answer_caller shows (per caller and epoch), and let refund "
    "(and refund_tab) use that record in place of an opening"))
def test_withheld_final_leaves_cannot_lock_a_callers_unspent_tab(roll, tmp_path):
    from fedmarket.roles.tabs import refund_tab

    kit, ru, job = roll.kit, roll.ru, roll.job
    user, idle = _sorted(roll, 2)
    roll.fund(user)
    roll.fund(idle)  # funded, never queried: absent from every root
    roll.bond()
    tree = roll.tree({user: 10})  # the true usage, signed; only the leaves are never published
    ru.transact("post_usage", job.id, tree.top.as_tuple(), tree.n, "bafy-withheld", sender=roll.server)
    kit.advance(WINDOW)
    roll.finalize()
    store = open_store(tmp_path / "blobs")
    for c in (user, idle):
        ru.transact("request_refund", job.id, roll.server.address, sender=c)
    kit.advance(REFUND)
    with reverts("rollup: opening not in the root"):  # nothing the caller can build opens
        ru.transact("refund", job.id, roll.server.address, EMPTY_OPENING, EMPTY_OPENING, sender=idle)
    for c, unspent in ((idle, 100 * PRICE), (user, 90 * PRICE)):
        got = refund_tab(kit.dep, c, store, job.id, roll.server.address)
        assert got.event("TabRefunded")["amount"] == unspent


@pytest.mark.xfail(strict=True, reason=(
    "withholding pays: with the leaves unavailable audit_usage has its caller challenge its own place, "
    "the server answers and keeps the caller's challenge bond, every root, from every caller who "
    "checks. Fix: answer_caller returns the bond to a challenger that is the challenged caller itself "
    "(the server only showed what it should have published); challenges by others still pay the server"))
def test_a_caller_checking_its_place_in_a_withheld_root_does_not_pay_the_server(roll, tmp_path):
    from fedmarket.roles.tabs import audit_usage

    kit, ru, job = roll.kit, roll.ru, roll.job
    c = roll.callers[0]
    roll.fund(c)
    roll.bond()
    tree = roll.tree({c: 10})
    ru.transact("post_usage", job.id, tree.top.as_tuple(), tree.n, "bafy-withheld", sender=roll.server)
    before = roll.shop.bal(c) + ru.call("owed", c.address)
    findings = audit_usage(kit.dep, c, open_store(tmp_path / "blobs"), job.id, roll.server.address)
    roll.challengers.add(c.address)
    roll.open_bonds = 1
    assert "challenged to show" in findings[0]
    _answer_caller(roll, tree, c, roll.sig(c, 10, 10 * PRICE))
    roll.open_bonds = 0
    assert roll.shop.bal(c) + ru.call("owed", c.address) == before, "the caller paid the withholding server a bond"


# ---------------------------------------------------------------- caller slots


def test_an_absence_cannot_be_shown_for_a_caller_in_a_sorted_root(roll):
    """The server tries every neighbour pair and end of a sorted root to show a present caller absent."""
    ru, job = roll.ru, roll.job
    cs = _sorted(roll, 4)
    for c in cs:
        roll.fund(c)
    roll.bond()
    tree = roll.tree({c: i + 1 for i, c in enumerate(cs)})
    roll.post(tree)
    none = EMPTY_OPENING[1]
    for target in range(4):
        victim = cs[target]
        _challenge_caller(roll, victim, sender=victim)
        roll.open_bonds += 1
        lies = [(4, tree.position(0), none), (4, tree.position(3), none)]
        lies += [(4, tree.position(i), tree.position(i + 1)) for i in range(3)]
        for lie in lies:
            if lie[1][1][0] == victim.address:
                continue  # its own leaf opens it, with its signature
            with pytest.raises(ContractRevert):
                ru.transact("answer_caller", job.id, victim.address, lie, b"", sender=roll.server)
        with reverts("rollup: not the caller's signature"):  # its leaf without its signature
            _answer_caller(roll, tree, victim, b"")
        leaf = tree.leaves[target]
        _answer_caller(roll, tree, victim, roll.sig(victim, leaf.queries, leaf.spent))
        roll.open_bonds -= 1


def test_leaf_slots_and_caller_slots_never_answer_each_other(roll):
    kit, ru, job = roll.kit, roll.ru, roll.job
    a, b = _sorted(roll, 2)
    roll.fund(a)
    roll.fund(b)
    roll.bond()
    tree = roll.tree({a: 1, b: 2})
    roll.post(tree)
    with reverts("rollup: no such leaf"):  # a caller slot is no leaf index
        ru.transact("challenge", job.id, roll.server.address, _slot(a), sender=kit.outsider)
    roll.challenge(0)
    _challenge_caller(roll, b, sender=kit.outsider)
    roll.open_bonds = 2
    # the leaf challenge is not answered by opening a caller, nor the caller's by a leaf answer
    with reverts("rollup: not challenged"):
        _answer_caller(roll, tree, a, roll.sig(a, 1, PRICE))
    forged = (_slot(b), tree.leaves[1].as_tuple(), [s.as_tuple() for s in tree.siblings(1)])
    with reverts("rollup: leaf not in the root"):
        ru.transact("answer", job.id, forged, roll.sig(b, 2, 2 * PRICE), sender=roll.server)
    roll.answer(tree, 0)
    _answer_caller(roll, tree, b, roll.sig(b, 2, 2 * PRICE))
    roll.open_bonds = 0
    with reverts("rollup: not challenged"):  # answered once
        _answer_caller(roll, tree, b, roll.sig(b, 2, 2 * PRICE))
    kit.advance(WINDOW)
    roll.finalize()


def test_a_rejected_root_cannot_be_finalized_and_its_caller_slot_bonds_come_back_once(roll):
    kit, ru, job = roll.kit, roll.ru, roll.job
    a, b = _sorted(roll, 2)
    roll.fund(a)
    roll.fund(b)
    roll.bond()
    tree = roll.tree({a: 1, b: 1})
    roll.post(tree)
    roll.challenge(0, sender=roll.rival)
    _challenge_caller(roll, a, sender=kit.outsider)
    roll.open_bonds = 2
    kit.advance(ANSWER)
    ru.transact("timeout", job.id, roll.server.address, 0, sender=roll.rival)
    roll.open_bonds = 1
    with reverts("rollup: no root pending"):
        roll.finalize()
    with reverts("rollup: no root pending"):  # the caller slot cannot slash the empty pending root again
        ru.transact("timeout", job.id, roll.server.address, _slot(a), sender=kit.outsider)
    before = ru.call("owed", kit.outsider.address)
    ru.transact("reclaim_bond", job.id, roll.server.address, _slot(a), sender=kit.outsider)
    roll.open_bonds = 0
    assert ru.call("owed", kit.outsider.address) - before == base.BOND
    with reverts("rollup: no challenge"):
        ru.transact("reclaim_bond", job.id, roll.server.address, _slot(a), sender=kit.outsider)
    roll.bond()  # the server bonds again; the next root settles
    roll.post(tree)
    kit.advance(WINDOW)
    assert roll.finalize().event("UsageFinalized")["amount"] == 2 * PRICE


# ---------------------------------------------------------------- the server's TabBook against the rollup


def _book(roll: Rollup, tmp_path) -> TabBook:
    return TabBook(roll.kit.dep, roll.server, open_store(tmp_path / "blobs"), roll.job.id)


def _admit(roll: Rollup, book: TabBook, caller, queries: int, spent: int) -> str:
    return book.admit(queries, spent, roll.sig(caller, queries, spent))


@pytest.mark.xfail(strict=True, reason=(
    "after its pending root is rejected (a challenge timed out while the server was unreachable), "
    "TabBook.step answers that root's challenges again, each reverting 'rollup: no root pending', and "
    "raises every period until restarted: nothing it serves is posted and its callers refund it all. "
    "Fix: in step, when pending_root is empty (or epoch differs from self.posted.epoch) drop "
    "self.posted before _answer_challenges"))
def test_a_tab_book_keeps_posting_after_its_root_is_rejected(roll, tmp_path):
    kit, ru, job = roll.kit, roll.ru, roll.job
    c = roll.callers[0]
    roll.fund(c)
    book = _book(roll, tmp_path)
    for q in range(1, 4):
        _admit(roll, book, c, q, q * PRICE)
    assert any("usage root posted" in m for m in book.step())
    roll.challenge(0, sender=roll.rival)
    roll.open_bonds = 1
    kit.advance(ANSWER)  # the server was down for the answer window
    ru.transact("timeout", job.id, roll.server.address, 0, sender=roll.rival)
    roll.open_bonds = 0
    _admit(roll, book, c, 4, 4 * PRICE)
    try:
        done = book.step()
    except Exception as exc:  # noqa: BLE001 - what the serving loop logs and retries forever
        done = [f"step failed: {exc}"]
    assert any("usage root posted" in m for m in done), done


@pytest.mark.xfail(strict=True, reason=(
    "finalize is anyone's: a griefer challenges a leaf (the server answers, the griefer loses one bond) "
    "and finalizes the root before the server does; TabBook still holds it as posted, answers its "
    "challenges again ('rollup: no root pending') and raises every period until restarted, so nothing "
    "it serves is posted and callers refund it all (its self.final also stays stale). Fix: at the start "
    "of step read pending_root/final_root: a posted root now final becomes self.final, one no longer "
    "pending is dropped, before _answer_challenges"))
def test_anyone_finalizing_the_servers_root_does_not_stop_its_tab_book(roll, tmp_path):
    kit = roll.kit
    c = roll.callers[0]
    roll.fund(c)
    book = _book(roll, tmp_path)
    _admit(roll, book, c, 1, PRICE)
    book.step()
    roll.challenge(0, sender=roll.rival)
    roll.open_bonds = 1
    assert any("answered" in m for m in book.step())
    roll.open_bonds = 0
    kit.advance(WINDOW)
    roll.finalize()  # by the outsider, before the server's next period
    _admit(roll, book, c, 2, 2 * PRICE)
    try:
        done = book.step()
    except Exception as exc:  # noqa: BLE001 - what the serving loop logs and retries forever
        done = [f"step failed: {exc}"]
    assert any("usage root posted" in m for m in done), done


@pytest.mark.xfail(strict=True, reason=(
    "a tab receipt at query price 0 is admitted from a caller with no tab, so free callers become "
    "leaves that no tab counted: once the price is back, every root has n > tabs_opened and "
    "post_usage reverts 'bad leaf count' forever; the paying callers refund all they spent. Fix: "
    "TabBook.admit refuses a receipt that spends nothing (or from a caller whose tab is 0), and "
    "_usage leaves out callers with nothing spent and no final leaf"))
def test_free_tab_queries_cannot_stop_the_server_posting_paid_ones(roll, tmp_path):
    kit, job, mm = roll.kit, roll.job, roll.shop.mm
    book = _book(roll, tmp_path)
    mm.transact("set_offer", job.id, offer(query_price=0), sender=kit.requester)
    free = roll.callers[1:4]
    admitted = 0
    for f in free:  # no tab at all
        try:
            _admit(roll, book, f, 1, 0)
            admitted += 1
        except TabRefused:
            pass
    mm.transact("set_offer", job.id, offer(), sender=kit.requester)
    payer = roll.callers[0]
    roll.fund(payer)
    _admit(roll, book, payer, 1, PRICE)
    try:
        done = book.step()
    except Exception as exc:  # noqa: BLE001 - what the serving loop logs and retries forever
        done = [f"step failed: {exc}"]
    assert any("usage root posted" in m for m in done), f"{admitted} free callers admitted; {done}"


@pytest.mark.xfail(strict=True, raises=pytest.fail.Exception, reason=(
    "TabBook.admit checks each receipt against its caller's tab only, never against the bond a root "
    "may move: a caller runs up usage beyond the server's bond plus wallet, step cannot bond enough "
    "('more than the bond covers' / InsufficientFunds), and the caller refunds every query it was "
    "answered. Fix: admit refuses a receipt taking the unposted usage (latest spent less the final "
    "root's) past the bond plus what the server's wallet can add, or step posts older receipts within the bond"))
def test_a_caller_cannot_run_up_usage_the_server_cannot_bond_and_refund_it(roll, tmp_path):
    kit, job, mm = roll.kit, roll.job, roll.shop.mm
    book = _book(roll, tmp_path)
    book.ensure_bonded()  # the offer's stake
    token, server = roll.token, roll.server
    wallet = token.call("balanceOf", server.address)
    token.transact("transfer", kit.outsider.address, wallet, sender=server)  # its capital is in the bond
    c = roll.callers[0]
    price = SSTAKE  # one query is the whole bond
    mm.transact("set_offer", job.id, offer(query_price=price), sender=kit.requester)
    try:
        roll.fund(c, 2 * price)
        _admit(roll, book, c, 1, price)
        with pytest.raises(TabRefused):
            _admit(roll, book, c, 2, 2 * price)  # a root could not carry it
    finally:
        token.transact("transfer", server.address, wallet, sender=kit.outsider)
