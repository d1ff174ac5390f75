"""UsageRollup attacked, third pass: the data-availability challenge (`challenge_leaves`,
`reveal_leaves` in chunks of 256, `reveal_next`, the reveal bond in `timeout`/`reclaim_bond`)
and the off-chain side that uses it (`audit_usage`, `_published`).

Each test asserts the safe behaviour. Attacks that fail are plain tests (a bad leaf alone in a
partial last chunk, a caller counted twice across a chunk boundary, the reveal bond paid once,
another server's revealed leaves, a stale reveal against a new root, a restarted TabBook). What
this pass broke is fixed: a withheld rollback revealed after the challenge hour gets a fresh
window before it can be finalized, a rejected root's reveal state is cleared and `audit_usage`
asks the current epoch's events, and a root has at most the leaves a server can reveal in its
answer window, the bond scaling with the chunks.
The `roll` fixture checks after every test that the rollup holds exactly what it owes."""

from __future__ import annotations

import tempfile
from pathlib import Path

import test_usage_rollup as base
from contract_kit import TOKEN, reverts
from test_model_market import SSTAKE
from test_usage_rollup import ANSWER, BOND, PRICE, REFUND, WINDOW, Rollup

from fedmarket.protocol.receipts import Tab
from fedmarket.protocol.usage import Leaf, UsageTree, opening
from fedmarket.storage import open_store

roll = base.roll
REVEAL = 100  # REVEAL_BOND in challenge bonds
BLOCK_GAS = 30_000_000  # a whole mainnet block
BLOCK_TIME = 12
SOURCE = Path(__file__).resolve().parents[2] / "contracts" / "UsageRollup.vy"


def _many(roll: Rollup, k: int, label: str, tab: int = 2 * PRICE) -> list:
    """`k` new callers, each with a tab of `tab` at the server, sorted by address."""
    from fedmarket.driver import fund

    kit, ru = roll.kit, roll.ru
    callers = [kit.chain.new_account(label, i) for i in range(k)]
    fund(kit.dep, kit.deployer, {c.address: tab for c in callers})
    for c in callers:
        roll.token.transact("approve", ru.address, tab, sender=c)
        ru.transact("fund_tab", roll.job.id, roll.server.address, tab, sender=c)
    roll.callers += callers  # their signatures and balances are the fixture's too
    return sorted(callers, key=lambda a: int(a.address, 16))


def _sig(roll: Rollup, caller, leaf: Leaf) -> bytes:
    return roll.sig(caller, leaf.queries, leaf.spent)


def _challenge_leaves(roll: Rollup, sender):
    """Challenge the server's pending root to reveal its leaves: REVEAL challenge bonds per chunk."""
    roll.challengers.add(sender.address)
    n = roll.ru.call("totals", roll.job.id, roll.server.address, True)[2]
    roll.reveal_units = REVEAL * -(-n // 256)
    roll.open_bonds += roll.reveal_units
    return roll.ru.transact("challenge_leaves", roll.job.id, roll.server.address, sender=sender)


def _reveal(roll: Rollup, tree: UsageTree, k: int, sigs: list, leaves=None):
    got, siblings = tree.chunk(k)
    return roll.ru.transact("reveal_leaves", roll.job.id, k, got if leaves is None else leaves, sigs, siblings,
                            sender=roll.server)


def _timeout(roll: Rollup, slot: int, sender):
    r = roll.ru.transact("timeout", roll.job.id, roll.server.address, slot, sender=sender)
    roll.open_bonds -= roll.reveal_units if slot == 2**161 else 1
    return r.event("UsageRejected")


# ---------------------------------------------------------------- chunk boundaries


def test_a_bad_leaf_alone_in_the_partial_last_chunk_or_a_caller_counted_twice_across_chunks_cannot_be_revealed(roll):
    """n = 257: leaf 256 is carried up alone through eight levels and meets chunk 0's node only at
    the top. A server whose root charges that leaf more than its caller signed cannot answer: the
    real leaf fails its signature, a signed leaf in its place is not in the root, and the chunk
    cannot be skipped, emptied or sent again. The same 257 leaves with the last caller of chunk 0
    counted again at the head of chunk 1 fail the order check carried across the chunks."""
    kit, ru, job = roll.kit, roll.ru, roll.job
    callers = _many(roll, 257, "attacks3-boundary")
    by_addr = {c.address: c for c in callers}
    roll.bond()
    leaves = [Leaf(c.address, 1, PRICE) for c in callers[:256]] + [Leaf(callers[256].address, 1, 2 * PRICE)]
    cheat = UsageTree(leaves)  # the last caller signed 1 query for PRICE, the root charges 2 * PRICE
    roll.post(cheat)
    _challenge_leaves(roll, roll.rival)
    sigs0 = [roll.sig(by_addr[x[0]], 1, PRICE) for x in cheat.chunk(0)[0]]
    with reverts("rollup: not the next chunk"):
        _reveal(roll, cheat, 1, [roll.sig(callers[256], 1, PRICE)])
    assert _reveal(roll, cheat, 0, sigs0).gas_used < BLOCK_GAS
    assert ru.call("reveal_next", job.id, roll.server.address) == 1
    with reverts("rollup: not the next chunk"):
        _reveal(roll, cheat, 0, sigs0)  # no second pass over chunk 0
    with reverts("rollup: wrong chunk size"):
        _reveal(roll, cheat, 1, [], leaves=[])
    with reverts("rollup: not signed by the caller"):
        _reveal(roll, cheat, 1, [roll.sig(callers[256], 1, PRICE)])
    with reverts("rollup: chunk not in the root"):
        _reveal(roll, cheat, 1, [roll.sig(callers[256], 1, PRICE)], leaves=[(callers[256].address, 1, PRICE)])
    with reverts("rollup: not the next chunk"):  # past the end
        ru.transact("reveal_leaves", job.id, 2, [], [], [], sender=roll.server)
    kit.advance(ANSWER)
    assert _timeout(roll, 2**161, roll.rival)["slashed"] == SSTAKE

    roll.bond()
    last0 = callers[255]  # chunk 0's last caller, again at the head of chunk 1 (an older receipt)
    twice = UsageTree([Leaf(c.address, 2, 2 * PRICE) for c in callers[:256]] + [Leaf(last0.address, 1, PRICE)],
                      as_given=True)
    roll.post(twice)
    _challenge_leaves(roll, roll.rival)
    _reveal(roll, twice, 0, [roll.sig(by_addr[x[0]], 2, 2 * PRICE) for x in twice.chunk(0)[0]])
    with reverts("rollup: leaves out of order"):
        _reveal(roll, twice, 1, [roll.sig(last0, 1, PRICE)])
    kit.advance(ANSWER)
    assert _timeout(roll, 2**161, roll.rival)["slashed"] == SSTAKE


# ---------------------------------------------------------------- the reveal bond


def test_timeout_reclaim_and_a_new_challenge_each_pay_the_reveal_bond_once(roll):
    kit, ru, job = roll.kit, roll.ru, roll.job
    a, b = sorted(roll.callers[:2], key=lambda x: int(x.address, 16))
    roll.fund(a)
    roll.fund(b)
    roll.bond()
    reveal_bond, slot = ru.call("REVEAL_BOND"), ru.call("REVEAL_SLOT")
    assert (reveal_bond, slot) == (REVEAL * BOND, 2**161)
    tree = roll.tree({a: 1, b: 2})
    roll.post(tree)
    _challenge_leaves(roll, roll.rival)
    roll.challenge(0)  # the outsider's leaf challenge, left unanswered: the root is rejected
    roll.open_bonds += 1
    kit.advance(ANSWER)
    before = ru.call("owed", roll.rival.address)
    _timeout(roll, 0, kit.outsider)
    roll.bond()
    roll.post(tree)  # epoch 2: a new reveal challenge returns the rival's stale one, once
    _challenge_leaves(roll, kit.outsider)
    roll.open_bonds -= REVEAL  # the rival's was paid back
    assert ru.call("owed", roll.rival.address) - before == reveal_bond
    with reverts("rollup: challenge still open"):  # the slot is the outsider's now, not the rival's
        ru.transact("reclaim_bond", job.id, roll.server.address, slot, sender=roll.rival)
    with reverts("rollup: answer window open"):
        ru.transact("timeout", job.id, roll.server.address, slot, sender=kit.outsider)
    kit.advance(ANSWER)
    before = ru.call("owed", kit.outsider.address)
    _timeout(roll, slot, kit.outsider)
    assert ru.call("owed", kit.outsider.address) - before == reveal_bond + SSTAKE // 2
    with reverts("rollup: no challenge"):
        ru.transact("reclaim_bond", job.id, roll.server.address, slot, sender=kit.outsider)


# ---------------------------------------------------------------- what the reveal does not check


def test_a_withheld_rollback_cannot_be_revealed_late_and_finalized_before_anyone_proves_it(roll):
    kit, ru, job = roll.kit, roll.ru, roll.job
    a, b = sorted(roll.callers[:2], key=lambda x: int(x.address, 16))
    roll.fund(a)
    roll.fund(b)
    roll.bond()
    final = roll.tree({a: 10, b: 5})
    roll.post(final)
    kit.advance(WINDOW)
    roll.finalize()  # a paid for 10 queries
    cheat = roll.tree({a: 4, b: 20})  # a's older receipt (it did sign 4): a rolled back, leaves withheld
    roll.post(cheat)
    kit.advance(WINDOW - 60)
    _challenge_leaves(roll, kit.outsider)  # the watcher finds the leaves withheld late in the hour
    kit.advance(120)  # the server waits out the challenge hour, then reveals and finalizes at once
    _reveal(roll, cheat, 0, [_sig(roll, {a.address: a, b.address: b}[x.caller], x) for x in cheat.leaves])
    roll.open_bonds -= REVEAL
    with reverts("rollup: challenge window open"):  # the revealed leaves get a whole window to be checked
        roll.finalize(server=roll.server)
    # the watcher reads the revealed leaves and proves the rollback
    ev = ru.transact("prove_rollback", job.id, roll.server.address, a.address, opening(final, a.address),
                     opening(cheat, a.address), sender=kit.outsider).event("UsageRejected")
    assert ev["reason"] == "rollback"


def test_every_root_the_rollup_accepts_can_be_revealed_within_the_answer_window(roll):
    ru = roll.ru
    callers = _many(roll, 257, "attacks3-grief")
    by_addr = {c.address: c for c in callers}
    roll.bond()
    tree = UsageTree([Leaf(c.address, 1, PRICE) for c in callers])
    roll.post(tree)
    _challenge_leaves(roll, roll.rival)
    gas = [_reveal(roll, tree, k, [roll.sig(by_addr[x[0]], 1, PRICE) for x in tree.chunk(k)[0]]).gas_used
           for k in range(tree.chunks)]
    roll.open_bonds -= roll.reveal_units
    assert ru.call("owed", roll.server.address) == roll.reveal_units * BOND  # REVEAL bonds per chunk
    full = gas[0]
    assert full < BLOCK_GAS  # one chunk fits a block
    max_leaves = ru.call("MAX_LEAVES")  # what post_usage accepts (with tabs opened at as many callers)
    chunk = ru.call("CHUNK")
    blocks = ru.call("ANSWER_WINDOW") // BLOCK_TIME
    needed = -(-max_leaves // chunk) * full
    print(f"full chunk {full} gas; a {max_leaves}-leaf root needs {needed / 1e9:.1f}G gas, "
          f"the answer window holds at most {blocks * BLOCK_GAS / 1e9:.1f}G "
          f"({blocks * BLOCK_GAS // full * chunk} leaves)")
    assert needed <= blocks * BLOCK_GAS


# ---------------------------------------------------------------- audit_usage and the reveal state


def test_a_reveal_stopped_in_an_old_epoch_does_not_stop_audits_challenging_the_next_withheld_root(roll):
    from fedmarket.roles.tabs import audit_usage

    kit, ru, job = roll.kit, roll.ru, roll.job
    callers = _many(roll, 257, "attacks3-stale")
    by_addr = {c.address: c for c in callers}
    roll.bond()
    tree = UsageTree([Leaf(c.address, 1, PRICE) for c in callers])
    roll.post(tree)
    _challenge_leaves(roll, roll.rival)
    _reveal(roll, tree, 0, [roll.sig(by_addr[x[0]], 1, PRICE) for x in tree.chunk(0)[0]])
    kit.advance(ANSWER)
    _timeout(roll, 2**161, roll.rival)  # the reveal stopped at chunk 1 (the server's own sybil, or a crash)
    roll.bond()
    cheat = UsageTree([Leaf(callers[0].address, 1, 2 * PRICE)])  # its caller signed 1 query for PRICE
    roll.post(cheat)  # withheld
    print("reveal_next after the rejection:", ru.call("reveal_next", job.id, roll.server.address))
    found = audit_usage(kit.dep, kit.outsider, open_store(tempfile.mkdtemp()), job.id, roll.server.address)
    assert found == ["the pending root's leaves are unavailable or do not make the root: challenged to reveal them all"]
    roll.challengers.add(kit.outsider.address)
    roll.reveal_units = REVEAL  # one chunk
    roll.open_bonds += REVEAL
    with reverts("rollup: not signed by the caller"):
        _reveal(roll, cheat, 0, [roll.sig(callers[0], 1, PRICE)])
    kit.advance(ANSWER)
    _timeout(roll, 2**161, kit.outsider)


def test_audit_usage_never_reads_another_servers_revealed_leaves_as_this_servers(roll):
    """The rival reveals a root on chain; the server posts a root of exactly the same leaves (so the
    same root hash) and withholds them. The auditor must not take the rival's LeavesRevealed as the
    server's leaves (they are filtered by the indexed server), so it challenges the server."""
    from fedmarket.roles.tabs import audit_usage

    kit, ru, job = roll.kit, roll.ru, roll.job
    a, b = sorted(roll.callers[:2], key=lambda x: int(x.address, 16))
    for server in (roll.server, roll.rival):
        roll.fund(a, server=server)
        roll.fund(b, server=server)
        roll.bond(server=server)
    tree = roll.tree({a: 1, b: 2})
    roll.post(tree, server=roll.rival)
    roll.challengers.add(kit.outsider.address)
    roll.open_bonds += REVEAL
    ru.transact("challenge_leaves", job.id, roll.rival.address, sender=kit.outsider)
    sigs = [Tab(job.id, roll.rival.address, x.queries, x.spent).sign({a.address: a, b.address: b}[x.caller].key,
                                                                     kit.chain_id, ru.address) for x in tree.leaves]
    leaves, siblings = tree.chunk(0)
    ru.transact("reveal_leaves", job.id, 0, leaves, sigs, siblings, sender=roll.rival)
    roll.open_bonds -= REVEAL
    roll.post(tree)  # the server's epoch 1, same root, withheld
    assert ru.call("pending_root", job.id, roll.server.address) == ru.call("pending_root", job.id, roll.rival.address)
    found = audit_usage(kit.dep, kit.outsider, open_store(tempfile.mkdtemp()), job.id, roll.server.address)
    assert found == ["the pending root's leaves are unavailable or do not make the root: challenged to reveal them all"]
    roll.open_bonds += REVEAL
    _reveal(roll, tree, 0, [_sig(roll, {a.address: a, b.address: b}[x.caller], x) for x in tree.leaves])
    roll.open_bonds -= REVEAL


def test_a_reveal_left_from_a_rejected_root_does_not_leak_into_the_next_and_a_restarted_book_resumes(roll, tmp_path):
    """Epoch 1: a 257-leaf root's reveal stops after chunk 0 and the root is rejected (which clears
    the reveal). Epoch 2: the TabBook posts again; a new challenge_leaves starts the reveal over at chunk
    0 (the old last caller does not carry over), the server sends chunk 0 and crashes, and a TabBook
    restarted from its store sends only chunk 1 and keeps the reveal bond."""
    from fedmarket.roles.tabs import TabBook

    kit, ru, job = roll.kit, roll.ru, roll.job
    callers = _many(roll, 257, "attacks3-resume")
    store = open_store(tmp_path / "blobs")
    book = TabBook(kit.dep, roll.server, store, job.id)
    for c in callers:
        book.admit(1, PRICE, roll.sig(c, 1, PRICE))
    assert any("257 callers" in m for m in book.step())
    tree = book.posted.tree
    by_addr = {c.address.lower(): c for c in callers}  # the book keys its callers in lower case
    sigs = [[roll.sig(by_addr[x[0].lower()], 1, PRICE) for x in tree.chunk(k)[0]] for k in range(2)]
    _challenge_leaves(roll, roll.rival)
    _reveal(roll, tree, 0, sigs[0])
    kit.advance(ANSWER)
    _timeout(roll, 2**161, roll.rival)
    assert ru.call("reveal_next", job.id, roll.server.address) == 0  # the rejection cleared the reveal
    assert any("257 callers" in m for m in book.step())  # it bonds again and posts epoch 2
    assert book.posted.tree.root == tree.root
    with reverts("rollup: not challenged"):
        _reveal(roll, tree, 1, sigs[1])  # the old reveal cannot go on against the new root
    _challenge_leaves(roll, kit.outsider)
    assert ru.call("reveal_next", job.id, roll.server.address) == 0
    _reveal(roll, tree, 0, sigs[0])  # then the server crashes
    restarted = TabBook(kit.dep, roll.server, store, job.id)
    lines = restarted.step()
    assert sum("revealed leaves" in m for m in lines) == 1, lines
    roll.open_bonds -= roll.reveal_units
    assert ru.call("open_challenges", job.id, roll.server.address) == 0
    assert ru.call("owed", roll.server.address) == roll.reveal_units * BOND
    kit.advance(WINDOW)
    assert any("usage root final: 257 queries" in m for m in restarted.step())


def test_a_griefer_cannot_keep_a_servers_root_pending_until_a_caller_refunds_its_unposted_usage(roll):
    """ATTACK (found by a funds-liveness review): the server posts root R1 (caller c at 1 query). c
    then runs queries worth 900 tokens (signed Tabs the server admitted: within c's tab and the server's bond) and asks for its tab back. The
    server must get c's usage into a root before the refund is due, but only one root may be pending.
    A griefer re-opens `challenge_leaves` on R1 at the end of every fresh window its reveal gives, so R1
    stays pending (no new root can be posted) until the refund is due: c then takes back everything R1
    does not show. The griefer pays one reveal bond per hour (to the server); c keeps 900 tokens of
    answered queries. A root's leaves can be forced open once now: once they are all out, they are
    public in the chain's logs, and `challenge_leaves` refuses that root again."""
    from fedmarket.driver import fund

    kit, ru, job = roll.kit, roll.ru, roll.job
    c = roll.sorted_callers(1)[0]
    griefer = kit.outsider
    tab = 1_000 * TOKEN
    fund(kit.dep, kit.deployer, {c.address: tab, griefer.address: 1_000 * TOKEN})
    roll.fund(c, tab)
    roll.bond(amount=2_000 * TOKEN)  # the server's bond covers what it admits
    r1 = roll.tree({c: 1})
    roll.post(r1)
    # c's heavy use, signed and answered while R1 is pending; the server cannot post it yet
    used_q = 900 * TOKEN // PRICE
    signed_spent = 1 * PRICE + used_q * PRICE
    roll.sig(c, 1 + used_q, signed_spent)  # the server holds this Tab
    with base.reverts("rollup: a root is pending"):
        roll.post(roll.tree({c: (1 + used_q, signed_spent)}))
    ru.transact("request_refund", job.id, roll.server.address, sender=c)
    due = kit.dep.chain.timestamp() + REFUND
    reveal_bond = ru.call("REVEAL_BOND")
    g_before = kit.token.call("balanceOf", griefer.address)
    roll.challengers.add(griefer.address)
    cycles = 0
    while cycles < 30:
        posted = ru.call("totals", job.id, roll.server.address, True)[3]
        kit.advance(posted + WINDOW - 2 - kit.dep.chain.timestamp())
        if kit.dep.chain.timestamp() >= due:
            break
        if cycles:
            with base.reverts("rollup: leaves revealed"):
                ru.transact("challenge_leaves", job.id, roll.server.address, sender=griefer)
            break
        ru.transact("challenge_leaves", job.id, roll.server.address, sender=griefer)
        roll.open_bonds += REVEAL
        cycles += 1
        leaves, siblings = r1.chunk(0)
        # the honest server answers at once, as TabBook does: every leaf, signed
        ru.transact("reveal_leaves", job.id, 0, leaves, [roll.sig(c, 1, PRICE)], siblings, sender=roll.server)
        roll.open_bonds -= REVEAL
        # the server tries to post c's usage: still blocked
        if kit.dep.chain.timestamp() + WINDOW < due:
            with base.reverts("rollup: a root is pending"):
                roll.post(roll.tree({c: (1 + used_q, signed_spent)}))
    assert cycles == 1
    # R1 goes final at the end of its fresh window, and the server posts c's usage in time
    kit.advance(WINDOW + 1)
    ru.transact("finalize", job.id, roll.server.address, sender=griefer)
    r2 = roll.tree({c: (1 + used_q, signed_spent)})
    roll.post(r2)
    kit.advance(max(0, due - kit.dep.chain.timestamp()))
    got = ru.transact("refund", job.id, roll.server.address, r1.opening(c.address), r2.opening(c.address),
                      sender=c).event("TabRefunded")["amount"]
    g_cost = g_before - kit.token.call("balanceOf", griefer.address)
    print(f"cycles={cycles} griefer paid {g_cost / TOKEN} tokens (reveal bond {reveal_bond / TOKEN}); "
          f"c refunded {got / TOKEN} of {tab / TOKEN}, having signed {signed_spent / TOKEN}")
    assert got <= tab - signed_spent, (
        f"c took back {(got - (tab - signed_spent)) / TOKEN} tokens of answered usage; the griefer paid "
        f"{g_cost / TOKEN} over {cycles} reveal challenges")


def test_a_server_posting_late_is_not_slashed_by_a_caller_front_running_its_post_with_a_due_refund(roll, tmp_path):
    """A caller whose plain refund is due front-runs the server's next `post_usage` with `refund`
    (found by the usage review): the refund, with no root pending, cut the tab to the final root's
    leaf, and the post then landed with the caller's later usage above it, an overdraft anyone
    proved, for the server's whole bond (half to the caller). A server now posts a caller whose
    plain refund is due (or falls due within a few blocks) at its final root's leaf: it loses the
    usage it did not post in time, as docs/model-market.md says, and keeps its bond."""
    from test_usage_rollup_attacks2 import _admit, _book

    from fedmarket.roles.tabs import refund_tab

    kit, ru, job, server = roll.kit, roll.ru, roll.job, roll.server
    c, d = roll.callers[0], roll.callers[1]  # c the attacker, d any other caller of the server
    roll.fund(c)  # a 100-query tab
    roll.fund(d)  # another caller's tab in the server's pool (a server has many callers)
    book = _book(roll, tmp_path)
    for q in range(1, 11):
        _admit(roll, book, c, q, q * PRICE)
    assert any("usage root posted" in m for m in book.step())  # bonds the offer's stake, posts c at 10
    kit.advance(WINDOW)
    assert any("usage root final" in m for m in book.step())
    for q in range(1, 4):
        _admit(roll, book, d, q, q * PRICE)
    for q in range(11, 31):  # 20 more queries answered; the server then stops (crash, outage)
        _admit(roll, book, c, q, q * PRICE)

    ru.transact("request_refund", job.id, server.address, sender=c)
    kit.advance(REFUND)  # the refund is due; c does not take it yet

    bond_before = ru.call("bond", job.id, server.address)
    assert bond_before == SSTAKE
    owed_c_before = ru.call("owed", c.address)

    # the server comes back and steps; c's refund is mined just before its post_usage (a front-run)
    orig = ru.transact

    def front_run(fn, *args, **kw):
        if fn == "post_usage":
            ru.transact = orig
            refund_tab(kit.dep, c, book.store, job.id, server.address)
        return orig(fn, *args, **kw)

    ru.transact = front_run
    try:
        book.step()
    finally:
        ru.transact = orig
    tab_now = ru.call("tab", job.id, server.address, c.address)
    leaf = book.posted.tree.usage(c.address) if book.posted is not None else None

    slashed = 0
    if leaf is not None and leaf.spent > tab_now:
        i = [x.caller.lower() for x in book.posted.tree.leaves].index(c.address.lower())
        ev = ru.transact("prove_overdraft", job.id, server.address, book.posted.tree.position(i),
                         sender=c).event("UsageRejected")
        slashed = ev["slashed"]
    assert slashed == 0 and ru.call("bond", job.id, server.address) == bond_before, (
        f"an honest server that came back after its caller's refund fell due lost its whole bond "
        f"({slashed}); the caller got {(ru.call('owed', c.address) - owed_c_before)} of it")
