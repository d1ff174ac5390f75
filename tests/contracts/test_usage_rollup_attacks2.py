"""UsageRollup attacked, second pass: the caller slots (`challenge_caller`/`answer_caller`), the
leaf count bound (`tabs_opened`), withheld leaves against the shared pool, and the server's
`TabBook` driven against the real rollup (rejections, free queries, usage beyond its bond).

Each test asserts the safe behaviour; what this pass broke is fixed: withheld leaves are forced
open by `challenge_leaves`, the TabBook follows the chain and admits only what it can post, and
a root whose leaves nobody checked in its hour goes final but its callers refund by declaring
what they signed (`declare_spent`, raised by the server where too low). The `roll` fixture checks after every test that the rollup holds
exactly what it owes."""

from __future__ import annotations

import pytest
import test_usage_rollup as base
from contract_kit import reverts
from test_model_market import SSTAKE, offer
from test_usage_rollup import ANSWER, PRICE, REFUND, WINDOW, Rollup

from fedmarket.errors import ContractRevert, FedMarketError
from fedmarket.protocol.usage import EMPTY_OPENING, Leaf, UsageTree
from fedmarket.roles.tabs import TabBook, TabRefused, audit_usage, declare_spent, refund_tab, usage_doc
from fedmarket.storage import open_store

roll = base.roll
SLOT = 2**160


def _post_published(roll: Rollup, store, usage: dict, final: bool = True, signatures: dict | None = None) -> UsageTree:
    """`usage` (caller -> queries) posted by the server with its leaves and their Tab signatures
    (the callers' own unless given) published in `store`; made final unless `final` is False."""
    tree = roll.tree(usage)
    sigs = signatures or {c.address.lower(): roll.sig(c, q, q * PRICE) for c, q in usage.items()}
    cid = store.put(usage_doc(roll.job.id, roll.server.address, tree, sigs))
    roll.ru.transact("post_usage", roll.job.id, tree.top.as_tuple(), tree.n, cid, sender=roll.server)
    if final:
        roll.kit.advance(WINDOW)
        roll.finalize()
    return tree


def _slot(acct) -> int:
    return SLOT + int(acct.address, 16)


def _challenge_caller(roll: Rollup, caller, sender):
    roll.challengers.add(sender.address)
    return roll.ru.transact("challenge_caller", roll.job.id, roll.server.address, caller.address, sender=sender)


def _answer_caller(roll: Rollup, tree: UsageTree, caller, signature=b""):
    return roll.ru.transact("answer_caller", roll.job.id, caller.address, tree.opening(caller.address), signature,
                            sender=roll.server)


# ---------------------------------------------------------------- withheld leaves and the shared pool


def test_withheld_leaves_counting_a_caller_twice_are_forced_open_and_the_server_slashed(roll):
    """Every caller's own place in a withheld root can be answered truly while one of them is
    counted a second time (an older receipt it did sign, out of order). A challenge to reveal every
    leaf (what audit_usage makes of withheld leaves) cannot be answered: the chain checks the order."""
    kit, ru, job = roll.kit, roll.ru, roll.job
    a, b = roll.sorted_callers(2)
    roll.fund(a)
    roll.fund(b)
    roll.fund(roll.rival, 1)  # the server's sybil: one wei opens the third tab the root's count needs
    roll.bond()
    # a really signed 30 and then 40 queries; the server lists 40 in a's place and 30 again at the end
    cheat = UsageTree([Leaf(a.address, 40, 40 * PRICE), Leaf(b.address, 20, 20 * PRICE),
                       Leaf(a.address, 30, 30 * PRICE)], as_given=True)
    ru.transact("post_usage", job.id, cheat.top.as_tuple(), cheat.n, "bafy-withheld", sender=roll.server)
    reveal_bond = ru.call("REVEAL_BOND")
    assert reveal_bond == 100 * base.BOND
    ru.transact("challenge_leaves", job.id, roll.server.address, sender=b)
    roll.challengers.add(b.address)
    roll.open_bonds += 100
    leaves, siblings = cheat.chunk(0)
    sigs = [roll.sig(a, 40, 40 * PRICE), roll.sig(b, 20, 20 * PRICE), roll.sig(a, 30, 30 * PRICE)]
    with reverts("rollup: leaves out of order"):
        ru.transact("reveal_leaves", job.id, 0, leaves, sigs, siblings, sender=roll.server)
    kit.advance(WINDOW)
    with reverts("rollup: challenges open"):
        roll.finalize()
    kit.advance(ANSWER)
    ev = ru.transact("timeout", job.id, roll.server.address, ru.call("REVEAL_SLOT"), sender=b).event("UsageRejected")
    roll.open_bonds -= 100
    assert (ev["challenger"], ev["slashed"]) == (b.address, SSTAKE)
    assert ru.call("owed", b.address) == reveal_bond + SSTAKE // 2
    for c in (a, b):  # nothing was paid: both tabs come back whole
        ru.transact("request_refund", job.id, roll.server.address, sender=c)
    kit.advance(REFUND)
    for c in (a, b):
        got = ru.transact("refund", job.id, roll.server.address, EMPTY_OPENING, EMPTY_OPENING, sender=c)
        assert got.event("TabRefunded")["amount"] == 100 * PRICE


def test_withheld_final_leaves_cannot_lock_a_callers_unspent_tab(roll, tmp_path):
    """The server posts the true usage but never publishes the leaves, and nobody challenges within
    the hour: the root goes final, and no caller can open its place in it (an idle caller, never in
    any root, cannot show its absence either). Each asks for its tab back declaring the most it
    signed there (`declare_spent`) and gets exactly its unspent part once the delay passed."""
    kit, ru, job = roll.kit, roll.ru, roll.job
    user, idle = roll.funded(2)  # idle: funded, never queried, absent from every root
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
    with pytest.raises(FedMarketError, match="final usage root's leaves are unavailable: ask for the refund with declare_spent"):
        refund_tab(kit.dep, idle, store, job.id, roll.server.address)
    for c, spent in ((user, 10 * PRICE), (idle, 0)):
        ev = declare_spent(kit.dep, c, job.id, roll.server.address, spent).event("SpentDeclared")
        assert (ev["caller"], ev["spent"], ev["release_time"]) == (c.address, spent, kit.dep.chain.timestamp() + REFUND)
    with reverts("rollup: refund not due yet"):  # a declaration restarts the delay: the server's time to raise it
        refund_tab(kit.dep, user, store, job.id, roll.server.address)
    kit.advance(REFUND)
    for c, unspent in ((idle, 100 * PRICE), (user, 90 * PRICE)):
        got = refund_tab(kit.dep, c, store, job.id, roll.server.address)
        assert got.event("TabRefunded")["amount"] == unspent
        assert ru.call("refund_request", job.id, roll.server.address, c.address) == 0
    assert ru.call("bond", job.id, roll.server.address) == SSTAKE  # the pool paid: its bond is whole


# ---------------------------------------------------------------- declared spending


def _withheld_final(roll: Rollup, usage: dict):
    """`usage` posted as the server's root with its leaves withheld, and made final."""
    tree = roll.tree(usage)
    roll.ru.transact("post_usage", roll.job.id, tree.top.as_tuple(), tree.n, "bafy-withheld", sender=roll.server)
    roll.kit.advance(WINDOW)
    roll.finalize()
    return tree


def _declare(roll: Rollup, caller, spent: int):
    return roll.ru.transact("declare_spent", roll.job.id, roll.server.address, caller.address, 0, spent, b"",
                            sender=caller)


def _raise(roll: Rollup, caller, queries: int, spent: int, sender=None, signature=None):
    sig = roll.sig(caller, queries, spent) if signature is None else signature
    return roll.ru.transact("declare_spent", roll.job.id, roll.server.address, caller.address, queries, spent, sig,
                            sender=sender or roll.server)


def _refund(roll: Rollup, caller) -> int:
    r = roll.ru.transact("refund", roll.job.id, roll.server.address, EMPTY_OPENING, EMPTY_OPENING, sender=caller)
    return r.event("TabRefunded")["amount"]


def test_a_caller_declaring_less_than_it_signed_is_raised_by_its_server(roll):
    """The attacker is a caller: it spent 30 queries (paid through a final root whose leaves it
    knows are withheld) and declares 5. Its server raises the declaration with the caller's own
    Tab of 30; the refund keeps back 30, and stays due when the caller's declaration made it."""
    kit, job = roll.kit, roll.job
    c = roll.callers[0]
    roll.fund(c)
    roll.bond()
    _withheld_final(roll, {c: 30})
    due = _declare(roll, c, 5 * PRICE).event("SpentDeclared")["release_time"]
    kit.advance(REFUND // 2)
    ev = _raise(roll, c, 30, 30 * PRICE).event("SpentDeclared")
    assert (ev["spent"], ev["release_time"]) == (30 * PRICE, due)
    kit.advance(REFUND // 2)
    assert _refund(roll, c) == 70 * PRICE
    assert roll.ru.call("bond", job.id, roll.server.address) == SSTAKE


def test_a_declaration_is_raised_only_with_a_tab_the_caller_signed_above_it(roll):
    """Every wrong raise is refused and changes nothing: a Tab at or below the declaration, one the
    caller never signed (another caller's key, or the caller's Tab at another server, sent by
    that server or by anyone), and a raise where the caller asked for nothing. Anyone may raise
    with a true Tab (the published leaves carry them): here an outsider."""
    ru, job = roll.ru, roll.job
    c, other = roll.callers[0], roll.callers[1]
    roll.fund(c)
    roll.bond()
    with reverts("rollup: not a raise"):  # no refund asked for: nothing to raise
        _raise(roll, c, 3, 3 * PRICE)
    _declare(roll, c, 10 * PRICE)
    word = ru.call("refund_request", job.id, roll.server.address, c.address)
    with reverts("rollup: not a raise"):
        _raise(roll, c, 10, 10 * PRICE)  # the declared figure itself
    with reverts("rollup: not a raise"):
        _raise(roll, c, 9, 9 * PRICE)
    with reverts("rollup: not signed by the caller"):
        _raise(roll, c, 20, 20 * PRICE, signature=roll.sig(other, 20, 20 * PRICE))
    for sender in (roll.rival, roll.kit.outsider, roll.server):  # signed for the rival: no Tab at this server
        with reverts("rollup: not signed by the caller"):
            _raise(roll, c, 20, 20 * PRICE, sender=sender, signature=roll.sig(c, 20, 20 * PRICE, server=roll.rival))
    assert ru.call("refund_request", job.id, roll.server.address, c.address) == word
    ev = _raise(roll, c, 20, 20 * PRICE, sender=roll.kit.outsider).event("SpentDeclared")
    assert (ev["spent"], ev["release_time"]) == (20 * PRICE, word & (2**64 - 1))


def test_a_watcher_raises_a_lie_from_the_published_leaves_after_the_server_left(roll, tmp_path):
    """The server published its leaves, settled its last period and unbonded: nobody is left to
    answer for a declaration with its bond. A caller declares nothing spent to take back the 40
    it paid. Another caller's audit (`audit_usage`, what `fedmarket model audit-usage` runs) raises
    the declaration with the liar's own signature from the published leaves, so each gets exactly
    its unspent part."""
    ru, job, kit = roll.ru, roll.job, roll.kit
    liar, watcher = roll.funded(2)
    store = open_store(tmp_path / "blobs")
    _post_published(roll, store, {liar: 40, watcher: 5})
    ru.transact("request_unbond", job.id, sender=roll.server)
    kit.advance(int(ru.call("UNBOND_DELAY")))
    ru.transact("unbond", job.id, sender=roll.server)
    _declare(roll, liar, 0)
    found = audit_usage(kit.dep, watcher, store, job.id, roll.server.address)
    assert len(found) == 1 and found[0].startswith(f"raised {liar.address}'s refund declaration from 0 to {40 * PRICE} "), found
    assert ru.call("refund_request", job.id, roll.server.address, liar.address) >> 64 == 40 * PRICE + 1
    assert audit_usage(kit.dep, watcher, store, job.id, roll.server.address) == []  # raised once
    ru.transact("request_refund", job.id, roll.server.address, sender=watcher)
    kit.advance(REFUND)
    assert _refund(roll, liar) == 60 * PRICE
    assert refund_tab(kit.dep, watcher, store, job.id, roll.server.address).event("TabRefunded")["amount"] == 95 * PRICE


def test_a_declaration_the_server_lets_stand_is_paid_from_its_bond(roll):
    """The caller spent 50 (paid out through a final root) and declares 0; its server never raises
    it. The caller takes its whole deposit, 50 more than the pool holds for it. The next caller's
    honest refund finds the pool 50 short: the server's bond pays the 50, so no caller's money
    covers another's declaration."""
    ru, job, kit = roll.ru, roll.job, roll.kit
    liar, honest = roll.funded(2)
    _withheld_final(roll, {liar: 50})
    assert ru.call("pool", job.id, roll.server.address) == 150 * PRICE
    _declare(roll, liar, 0)
    _declare(roll, honest, 0)
    kit.advance(REFUND)
    assert _refund(roll, liar) == 100 * PRICE
    assert _refund(roll, honest) == 100 * PRICE
    assert ru.call("bond", job.id, roll.server.address) == SSTAKE - 50 * PRICE
    assert ru.call("pool", job.id, roll.server.address) == 0
    assert ru.call("tab", job.id, roll.server.address, honest.address) == 0


def test_a_bond_too_small_for_the_shortfall_pays_what_it_has_and_leaves_no_claim_on_later_tabs(roll):
    """As above with a bond of 30 against a shortfall of 60 (two periods of 30 each, the most the bond
    lets a root move): the honest caller gets what the pool and the bond hold and bears the 30
    nobody covers. Its tab does not keep them as a claim: a later caller's deposit stays whole."""
    ru, job, kit = roll.ru, roll.job, roll.kit
    liar, honest = roll.funded(2, bond=30 * PRICE)
    _withheld_final(roll, {liar: 30})
    _withheld_final(roll, {liar: 60})
    _declare(roll, liar, 0)
    _declare(roll, honest, 0)
    kit.advance(REFUND)
    assert _refund(roll, liar) == 100 * PRICE
    assert _refund(roll, honest) == 70 * PRICE  # pool 40 + bond 30
    assert ru.call("bond", job.id, roll.server.address) == 0
    assert ru.call("tab", job.id, roll.server.address, honest.address) == 0
    late = roll.callers[2]
    roll.fund(late)
    _declare(roll, late, 0)
    with reverts("rollup: no tab"):  # nothing left to claim from the late caller's deposit
        ru.transact("request_refund", job.id, roll.server.address, sender=honest)
    kit.advance(REFUND)
    assert _refund(roll, late) == 100 * PRICE


def test_a_pending_root_the_pool_no_longer_covers_still_goes_final(roll):
    """A declaration nobody raised can empty the pool under a pending root: the liar spent 30 in the
    final root and 20 more in the pending one, and declares nothing; an honest caller's refund
    then takes the rest of the pool (and the bond). The pending root still goes final, paying the
    server what is left (nothing), so the server is not stuck with a root it can never finalize
    (it could not post again, nor unbond)."""
    ru, job, kit = roll.ru, roll.job, roll.kit
    liar, honest = roll.funded(2)
    _withheld_final(roll, {liar: 30})
    pending = roll.tree({liar: 50})
    ru.transact("post_usage", job.id, pending.top.as_tuple(), pending.n, "bafy-withheld", sender=roll.server)
    _declare(roll, liar, 0)
    _declare(roll, honest, 0)
    kit.advance(REFUND)
    assert _refund(roll, liar) == 100 * PRICE
    assert _refund(roll, honest) == 100 * PRICE  # 70 from the pool, 30 from the bond
    assert ru.call("pool", job.id, roll.server.address) == 0
    ev = roll.finalize().event("UsageFinalized")
    assert (ev["queries"], ev["amount"]) == (20, 0)
    assert ru.call("pending_root", job.id, roll.server.address) == b"\x00" * 32
    ru.transact("request_unbond", job.id, sender=roll.server)
    kit.advance(int(ru.call("UNBOND_DELAY")))
    assert ru.transact("unbond", job.id, sender=roll.server).event("Unbonded")["amount"] == SSTAKE - 30 * PRICE


def test_a_due_plain_request_cannot_be_raised_into_a_low_declaration(roll, tmp_path):
    """The liar spent 50 (final root, leaves published) and asks plainly; once the request is due an
    accomplice "raises" it into a declaration of 0 with a Tab(0, 0) the liar signs right then, to be
    refunded in the same block with no time for anyone to raise it. A raise only lifts an existing
    declaration: refused, and the roots keep the 50 back."""
    ru, job, kit = roll.ru, roll.job, roll.kit
    liar, honest = roll.funded(2)
    accomplice = roll.callers[2]
    store = open_store(tmp_path / "blobs")
    _post_published(roll, store, {liar: 50, honest: 10})
    ru.transact("request_refund", job.id, roll.server.address, sender=liar)
    kit.advance(REFUND)
    with reverts("rollup: not a raise"):
        _raise(roll, liar, 0, 0, sender=accomplice, signature=roll.sig(liar, 0, 0))
    assert refund_tab(kit.dep, liar, store, job.id, roll.server.address).event("TabRefunded")["amount"] == 50 * PRICE
    assert ru.call("bond", job.id, roll.server.address) == SSTAKE


def test_a_bad_signature_in_the_published_leaves_cannot_stop_an_audit(roll, tmp_path):
    """The server forges 60 on a victim's tab (a signature not the victim's) in a root whose published
    leaves also give its Sybil's leaf a garbage signature, the Sybil holding a standing declaration
    of 0. The watcher's audit checks each published Tab before raising with it (so sends nothing
    for the Sybil) and goes on to challenge the forged leaf."""
    ru, job, kit = roll.ru, roll.job, roll.kit
    victim, watcher, sybil = roll.callers[0], roll.callers[1], roll.callers[2]
    roll.fund(victim)
    roll.fund(watcher)
    roll.fund(sybil, 1)
    roll.bond()
    _declare(roll, sybil, 0)
    store = open_store(tmp_path / "blobs")
    sigs = {victim.address.lower(): roll.sig(watcher, 60, 60 * PRICE), watcher.address.lower(): roll.sig(watcher, 10, 10 * PRICE),
            sybil.address.lower(): b"\x11" * 64 + b"\x1b"}
    tree = _post_published(roll, store, {victim: 60, watcher: 10, sybil: (1, 1)}, final=False, signatures=sigs)
    found = audit_usage(kit.dep, watcher, store, job.id, roll.server.address)
    roll.challengers.add(watcher.address)
    roll.open_bonds += 1
    assert found == [f"leaf {tree.index[victim.address.lower()]}: {victim.address}'s usage is not signed by it: challenged"], found
    assert ru.call("open_challenges", job.id, roll.server.address) == 1


def test_a_tab_book_stops_rather_than_post_a_root_it_would_be_slashed_for(roll, tmp_path):
    """Its server missed a declaration of 0 by a caller that had spent 3 (final root): the refund
    left that caller's tab below its final leaf. Any later root must keep the leaf (else a provable
    rollback) and that is an overdraft: the TabBook refuses to post, naming why, instead of
    handing its bond to the first `prove_overdraft`."""
    kit = roll.kit
    liar, other = roll.funded(2, bond=None)
    book = _book(roll, tmp_path)
    for q in range(1, 4):
        _admit(roll, book, liar, q, q * PRICE)
    book.step()
    kit.advance(WINDOW)
    assert any("usage root final" in m for m in book.step())
    _declare(roll, liar, 0)
    kit.advance(REFUND)  # the server was down for the day: it never stepped, so never raised it
    assert _refund(roll, liar) == 100 * PRICE
    _admit(roll, book, other, 1, PRICE)
    bond = roll.ru.call("bond", roll.job.id, roll.server.address)
    with pytest.raises(FedMarketError, match="was refunded below its leaf in this server's final root"):
        book.step()
    assert roll.ru.call("pending_root", roll.job.id, roll.server.address) == b"\x00" * 32
    assert roll.ru.call("bond", roll.job.id, roll.server.address) == bond


def test_a_declaration_cannot_wrap_past_the_word(roll):
    """A declared spending is kept above bit 64 of the request word: one past 2**192 would wrap to a
    small figure (a refund of the whole tab while the event says "all spent"). It reverts instead;
    the largest that fits refunds nothing."""
    ru, job, kit = roll.ru, roll.job, roll.kit
    c = roll.callers[0]
    roll.fund(c)
    roll.bond()
    for huge in (2**192 - 1, 2**192 + 5 * PRICE):
        with pytest.raises(ContractRevert):
            _declare(roll, c, huge)
    _declare(roll, c, 2**192 - 2)
    kit.advance(REFUND)
    assert _refund(roll, c) == 0
    assert ru.call("tab", job.id, roll.server.address, c.address) == 100 * PRICE


def test_asking_again_without_declaring_drops_the_declaration(roll, tmp_path):
    """A caller that declared, then asks for the refund plainly (its leaves now published), is refunded
    by the roots' figures; funding again cancels both."""
    ru, job, kit = roll.ru, roll.job, roll.kit
    (c,) = roll.funded(1)
    store = open_store(tmp_path / "blobs")
    _post_published(roll, store, {c: 10})
    _declare(roll, c, 0)
    roll.fund(c, 1)
    assert ru.call("refund_request", job.id, roll.server.address, c.address) == 0
    _declare(roll, c, 0)
    ru.transact("request_refund", job.id, roll.server.address, sender=c)
    assert ru.call("refund_request", job.id, roll.server.address, c.address) >> 64 == 0
    kit.advance(REFUND)
    assert refund_tab(kit.dep, c, store, job.id, roll.server.address).event("TabRefunded")["amount"] == 90 * PRICE + 1


def test_a_tab_book_raises_a_low_declaration_with_the_callers_latest_tab(roll, tmp_path):
    """The server's TabBook, stepped as its serving loop does, raises a caller's declaration below
    the latest Tab it admitted from it, and leaves a true one alone."""
    kit = roll.kit
    liar, honest = roll.funded(2, bond=None)
    book = _book(roll, tmp_path)
    for q in range(1, 5):
        _admit(roll, book, liar, q, q * PRICE)
    _admit(roll, book, honest, 1, PRICE)
    assert any("usage root posted" in m for m in book.step())
    _declare(roll, liar, PRICE)
    _declare(roll, honest, PRICE)
    done = book.step()
    assert [m for m in done if "raised" in m] == [
        f"raised {liar.address}'s refund declaration from {PRICE} to {4 * PRICE} (tx {book.sent[-1].tx_hash})"]
    assert book.step() == []  # nothing more to raise; the root's window is still open
    kit.advance(REFUND)
    assert _refund(roll, liar) == 96 * PRICE
    assert _refund(roll, honest) == 99 * PRICE


# ---------------------------------------------------------------- caller slots


def test_an_absence_cannot_be_shown_for_a_caller_in_a_sorted_root(roll):
    """The server tries every neighbour pair and end of a sorted root to show a present caller absent."""
    ru, job = roll.ru, roll.job
    cs = roll.sorted_callers(4)
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
        with reverts("rollup: not signed by the caller"):  # its leaf without its signature
            _answer_caller(roll, tree, victim, b"")
        leaf = tree.leaves[target]
        _answer_caller(roll, tree, victim, roll.sig(victim, leaf.queries, leaf.spent))
        roll.open_bonds -= 1


def test_leaf_slots_and_caller_slots_never_answer_each_other(roll):
    kit, ru, job = roll.kit, roll.ru, roll.job
    a, b = roll.funded(2)
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
    a, b = roll.funded(2)
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
