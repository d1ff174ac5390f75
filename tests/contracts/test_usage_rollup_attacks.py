"""UsageRollup attacked: every function that moves or locks value, by who could call it, with what,
when, and whose inaction it counts on. Each test asserts the safe behaviour; the attacks that broke
the first version (odd signature forms, padded leaf counts, roots beyond the bond, the owner
changing the stake or the shares mid-period, a zero-address leaf) are fixed in the contract or
its off-chain reader. The `roll` fixture checks after every test that the rollup holds exactly
what it owes."""

from __future__ import annotations

import pytest
import test_usage_rollup as base
from contract_kit import reverts
from eth_account import Account as EthAccount
from eth_utils import keccak
from test_model_market import FEE_BPS, OWNER_CAP, SSTAKE, offer
from test_usage_rollup import ANSWER, BOND, PRICE, REFUND, WINDOW, Rollup

from fedmarket.errors import ContractRevert
from fedmarket.protocol.receipts import Tab
from fedmarket.protocol.usage import EMPTY_OPENING, Leaf, Node, UsageTree

SECP_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
UNBOND = 7 * 86_400
MAX_AMOUNT = 2**128
roll = base.roll  # the listed job, bonded server and funded callers of test_usage_rollup


def _as_given(leaves) -> UsageTree:
    """The tree of `leaves` in the order given (a cheating server's tree)."""
    return UsageTree(list(leaves), as_given=True)


def _settled(roll: Rollup, usage: dict) -> UsageTree:
    """Post `usage` and make it final."""
    tree = roll.tree(usage)
    roll.post(tree)
    roll.kit.advance(WINDOW)
    roll.finalize()
    return tree


# ---------------------------------------------------------------- signatures


def _other_form(sig: bytes, form: str) -> bytes:
    """The same signature in a form eth_account also recovers: v as 0/1, or the high-s twin."""
    r, s, v = sig[:32], int.from_bytes(sig[32:64], "big"), sig[64]
    if form == "v01":
        return r + s.to_bytes(32, "big") + bytes([v - 27])
    return r + (SECP_N - s).to_bytes(32, "big") + bytes([55 - v])


@pytest.mark.parametrize("form", ["v01", "high_s"])
def test_a_caller_cannot_get_an_honest_server_slashed_with_an_odd_signature_form(roll, form):
    kit, ru, job = roll.kit, roll.ru, roll.job
    c = roll.callers[0]
    roll.fund(c)
    roll.bond()
    sig = _other_form(roll.sig(c, 50, 50 * PRICE), form)
    # the server's admission check refuses it (only the form the contracts read is read off chain)...
    with pytest.raises(ValueError, match="canonical"):
        Tab(job.id, roll.server.address, 50, 50 * PRICE).signer(sig, kit.chain_id, ru.address)
    # ...and a server that took it anyway answers with it: the rollup reads it in its canonical form
    tree = roll.tree({c: 50})
    roll.post(tree)
    roll.challenge(0, sender=c)
    roll.open_bonds = 1
    tab_before, owed_before = roll.shop.bal(c), ru.call("owed", c.address)
    try:
        roll.answer(tree, 0, signature=sig)
        answered = True
        roll.open_bonds = 0
    except ContractRevert:
        answered = False
    if not answered:  # the rest of the attack: the honest server is slashed, the caller refunds what it spent
        kit.advance(ANSWER)
        ru.transact("timeout", job.id, roll.server.address, 0, sender=c)
        roll.open_bonds = 0
        ru.transact("request_refund", job.id, roll.server.address, sender=c)
        kit.advance(REFUND)
        ru.transact("refund", job.id, roll.server.address, EMPTY_OPENING, EMPTY_OPENING, sender=c)
    gain = roll.shop.bal(c) - tab_before + ru.call("owed", c.address) - owed_before
    assert answered, f"the honest server was slashed; the caller gained {gain} (its challenge bond, half the server's bond and its whole tab: 50 queries free)"


def test_a_tab_signature_is_bound_to_its_job_and_rollup(roll):
    kit, ru, job = roll.kit, roll.ru, roll.job
    c = roll.callers[0]
    roll.fund(c)
    roll.bond()
    tree = roll.tree({c: 4})
    roll.post(tree)
    roll.challenge(0)
    roll.open_bonds = 1
    other_job = Tab(job.id + 1, roll.server.address, 4, 4 * PRICE).sign(c.key, kit.chain_id, ru.address)
    other_rollup = Tab(job.id, roll.server.address, 4, 4 * PRICE).sign(c.key, kit.chain_id, roll.shop.mm.address)
    other_chain = Tab(job.id, roll.server.address, 4, 4 * PRICE).sign(c.key, kit.chain_id + 1, ru.address)
    for sig in (other_job, other_rollup, other_chain):
        with reverts("rollup: not signed by the caller"):
            roll.answer(tree, 0, signature=sig)
    roll.answer(tree, 0)
    roll.open_bonds = 0


# ---------------------------------------------------------------- the tree's shape


def test_shape_tricks_open_nothing_the_tree_does_not_hold(roll):
    """Overdraft proofs need `_at`: a leaf shown at another index, past n, with a sibling too many or
    too few, or with sums that wrap, never opens."""
    ru, job = roll.ru, roll.job
    cs = roll.sorted_callers(3)
    for c in cs:
        roll.fund(c, 10 * PRICE)
    roll.bond()
    tree = roll.tree({cs[0]: 1, cs[1]: 1, cs[2]: 1})  # leaf 2 is carried up a level with no sibling
    roll.post(tree)

    def overdraft(pos):
        return ru.transact("prove_overdraft", job.id, roll.server.address, pos, sender=roll.rival)

    _, leaf, sib = tree.position(2)
    assert len(sib) == 1
    for pos, reason in (((3, leaf, sib), "rollup: leaf not in the root"),  # index >= n
                        ((2, leaf, sib + [sib[0]]), "rollup: proof too long"),  # a sibling too many
                        ((2, leaf, []), "rollup: proof too short"),  # too few
                        ((1, leaf, sib), "rollup: proof too short")):  # another index
        with reverts(reason):
            overdraft(pos)
    # an inner node passed off as a leaf: its hash is of six words, a leaf's of three
    inner = tree.layers[1][0]
    forged = (0, (cs[0].address, inner.queries, inner.spent), [tree.layers[0][1].as_tuple(),
                                                                tree.layers[1][1].as_tuple()])
    with reverts("rollup: leaf not in the root"):
        overdraft(forged)
    # a sibling whose sums would wrap the parent's reverts rather than open
    big = (1, (cs[1].address, 1, 2**256 - 1), [tree.layers[0][0].as_tuple(), tree.layers[1][1].as_tuple()])
    with _any_revert():
        overdraft(big)
    with reverts("rollup: within the tab"):  # the true leaf opens, and is within its tab
        overdraft(tree.position(2))


class _any_revert:
    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        assert kind is not None and issubclass(kind, ContractRevert), "expected a revert"
        return True


def test_packed_totals_cannot_overflow_their_fields(roll):
    ru, job = roll.ru, roll.job
    c = roll.callers[0]
    roll.fund(c)
    roll.bond()
    tree = roll.tree({c: 1})
    for top, n, reason in ((Node(tree.top.h, 2**64, PRICE), 1, "rollup: totals too large"),
                           (Node(tree.top.h, 1, MAX_AMOUNT), 1, "rollup: totals too large"),
                           (tree.top, 2**24 + 1, "rollup: bad leaf count")):
        with reverts(reason):
            ru.transact("post_usage", job.id, top.as_tuple(), n, "bafy", sender=roll.server)


# ---------------------------------------------------------------- refunds and the server's posts


def test_a_refund_taken_with_a_root_pending_never_makes_that_root_an_overdraft(roll):
    """The caller refunds while the server's root charging it is pending: it keeps back the pending
    spending, so nobody can prove the honest root overdrawn, and the root still pays."""
    kit, ru, job = roll.kit, roll.ru, roll.job
    c, d = roll.callers[0], roll.callers[1]
    roll.fund(c)
    roll.fund(d)
    roll.bond()
    first = _settled(roll, {c: 10, d: 1})
    ru.transact("request_refund", job.id, roll.server.address, sender=c)
    kit.advance(REFUND - WINDOW - ANSWER)
    pending = roll.tree({c: 40, d: 1})
    roll.post(pending)
    kit.advance(WINDOW + ANSWER)  # the refund is due, the root not final yet
    with reverts("rollup: opening not in the root"):  # pretending no root is pending
        ru.transact("refund", job.id, roll.server.address, first.opening(c.address), EMPTY_OPENING, sender=c)
    amount = ru.transact("refund", job.id, roll.server.address, first.opening(c.address), pending.opening(c.address),
                         sender=c).event("TabRefunded")["amount"]
    assert amount == 60 * PRICE
    i = pending.index[c.address.lower()]
    with reverts("rollup: within the tab"):
        ru.transact("prove_overdraft", job.id, roll.server.address, pending.position(i), sender=c)
    assert roll.finalize().event("UsageFinalized")["amount"] == 30 * PRICE


def test_a_sybil_refunding_through_a_false_absence_is_caught_and_no_honest_tab_loses(roll):
    """The server lists its sybil out of order so the sybil looks absent (the first leaf is above
    it), the sybil refunds its whole tab while its spending is in the pending root: the root is
    provably unsorted and overdrawn, and every honest caller still gets its whole tab back."""
    kit, ru, job = roll.kit, roll.ru, roll.job
    sybil, h1, h2 = roll.sorted_callers(3)
    for c in (sybil, h1, h2):
        roll.fund(c)
    roll.bond()
    ru.transact("request_refund", job.id, roll.server.address, sender=sybil)
    kit.advance(REFUND)
    bad = _as_given([Leaf(h1.address, 0, 0), Leaf(sybil.address, 100, 100 * PRICE), Leaf(h2.address, 0, 0)])
    roll.post(bad, top=bad.top, n=3)
    lie = (3, bad.position(0), EMPTY_OPENING[1])
    assert ru.transact("refund", job.id, roll.server.address, EMPTY_OPENING, lie,
                       sender=sybil).event("TabRefunded")["amount"] == 100 * PRICE
    # the pool still holds the honest tabs, so `finalize` would pay the sybil's 100 from them: only a
    # proof within the window stops it (the rollup's one assumption: someone audits every root)
    ev = ru.transact("prove_overdraft", job.id, roll.server.address, bad.position(1), sender=h1).event("UsageRejected")
    roll.challengers.add(h1.address)
    assert ev["slashed"] == SSTAKE
    for c in (h1, h2):
        ru.transact("request_refund", job.id, roll.server.address, sender=c)
    kit.advance(REFUND)
    for c in (h1, h2):
        got = ru.transact("refund", job.id, roll.server.address, EMPTY_OPENING, EMPTY_OPENING, sender=c)
        assert got.event("TabRefunded")["amount"] == 100 * PRICE
    assert ru.call("pool", job.id, roll.server.address) == 0


# ---------------------------------------------------------------- challenges and bonds


def test_challenging_every_leaf_of_an_honest_root_only_pays_the_server(roll):
    """A griefer challenges every leaf at the last moment: the root is final one answer window
    later and every bond is the server's."""
    kit, ru, job = roll.kit, roll.ru, roll.job
    cs = roll.sorted_callers(3)
    for c in cs:
        roll.fund(c)
    roll.bond()
    tree = roll.tree({c: 2 for c in cs})
    roll.post(tree)
    kit.advance(WINDOW - 10)
    for i in range(3):
        roll.challenge(i, sender=roll.rival)
    roll.open_bonds = 3
    kit.advance(ANSWER - 20)
    with reverts("rollup: answer window open"):
        ru.transact("timeout", job.id, roll.server.address, 0, sender=roll.rival)
    for i in range(3):
        roll.answer(tree, i)
    roll.open_bonds = 0
    roll.finalize()
    assert ru.call("owed", roll.server.address) == 3 * BOND


def test_an_old_challenge_cannot_reject_the_next_root(roll):
    """Challenges of a rejected root stay in their slots: they neither time out nor block the
    server's next root, and their bonds come back once (reclaimed or overwritten)."""
    kit, ru, job = roll.kit, roll.ru, roll.job
    a, b = roll.funded(2)
    tree = roll.tree({a: 1, b: 1})
    roll.post(tree)
    roll.challenge(0, sender=roll.rival)
    roll.challenge(1, sender=kit.outsider)
    roll.open_bonds = 2
    kit.advance(ANSWER)
    ru.transact("timeout", job.id, roll.server.address, 0, sender=roll.rival)
    roll.open_bonds = 1
    roll.bond()  # the server bonds again and posts the next root
    roll.post(tree)
    with reverts("rollup: not challenged"):
        ru.transact("timeout", job.id, roll.server.address, 1, sender=kit.outsider)
    with reverts("rollup: not challenged"):  # nor is there anything to answer
        roll.answer(tree, 1)
    roll.challenge(1, sender=roll.rival)  # the slot is reused: the old bond is paid back
    assert ru.call("owed", kit.outsider.address) == BOND
    with reverts("rollup: challenge still open"):
        ru.transact("reclaim_bond", job.id, roll.server.address, 1, sender=roll.rival)
    roll.answer(tree, 1)
    roll.open_bonds = 0
    kit.advance(WINDOW)
    roll.finalize()


def test_unbonding_does_not_escape_a_slash(roll):
    kit, ru, job = roll.kit, roll.ru, roll.job
    c = roll.callers[0]
    roll.fund(c, PRICE)
    roll.fund(roll.callers[1], 100 * PRICE)
    roll.bond()
    tree = roll.tree({c: 50})  # past c's tab
    roll.post(tree)
    ru.transact("request_unbond", job.id, sender=roll.server)
    kit.advance(UNBOND)
    with reverts("rollup: a root is pending"):
        ru.transact("unbond", job.id, sender=roll.server)
    ev = ru.transact("prove_overdraft", job.id, roll.server.address, tree.position(0), sender=roll.rival)
    roll.challengers.add(roll.rival.address)
    assert ev.event("UsageRejected")["slashed"] == SSTAKE
    # the unbond request outlives the slash, but there is nothing left to take
    assert ru.transact("unbond", job.id, sender=roll.server).event("Unbonded")["amount"] == 0


# ---------------------------------------------------------------- the model owner against the servers


def test_the_model_owner_cannot_stop_a_bonded_server_posting_usage_it_served(roll):
    kit, ru, job, mm = roll.kit, roll.ru, roll.job, roll.shop.mm
    c = roll.callers[0]
    roll.fund(c)
    roll.bond()
    tree = roll.tree({c: 60})  # served and signed under the listed offer
    mm.transact("set_offer", job.id, offer(server_stake=MAX_AMOUNT), sender=kit.requester)
    try:
        roll.post(tree)
        posted = True
    except ContractRevert:
        posted = False
    if not posted:  # the caller takes back what it spent
        ru.transact("request_refund", job.id, roll.server.address, sender=c)
        kit.advance(REFUND)
        got = ru.transact("refund", job.id, roll.server.address, EMPTY_OPENING, EMPTY_OPENING, sender=c)
        assert got.event("TabRefunded")["amount"] == 100 * PRICE
    assert posted, "the server cannot post the 60 queries it answered; the caller got all of them back"


# ---------------------------------------------------------------- withheld leaves


def test_a_root_cannot_claim_more_leaves_than_callers_with_tabs(roll):
    kit, ru, job = roll.kit, roll.ru, roll.job
    victim, other = roll.callers[0], roll.callers[1]
    roll.fund(victim)
    roll.fund(other)
    roll.bond()
    keys = {}
    for k in range(62):  # the server's own keys, each signing zero usage
        acct = EthAccount.from_key(keccak(b"pad%d" % k))
        keys[acct.address] = acct.key
    pad = [Leaf(a, 0, 0) for a in keys]
    leaves = sorted([*pad, Leaf(other.address, 1, PRICE), Leaf(victim.address, 100, 100 * PRICE)],
                    key=lambda x: x.key)
    tree = _as_given(leaves)
    try:
        roll.post(tree)
        posted = True
    except ContractRevert:
        posted = False
    if posted:  # an auditor without the leaves challenges leaf 0: a pad leaf, answered; the forgery goes final
        roll.challenge(0, sender=kit.outsider)
        roll.open_bonds = 1
        pad_sig = Tab(job.id, roll.server.address, 0, 0).sign(keys[tree.leaves[0].caller], kit.chain_id, ru.address)
        ru.transact("answer", job.id, tree.position(0), pad_sig, sender=roll.server)
        roll.open_bonds = 0
        kit.advance(WINDOW)
        assert roll.finalize().event("UsageFinalized")["amount"] == 101 * PRICE  # 100 of them never signed
    assert not posted, f"a {tree.n}-leaf root over 2 tabs went final with an unsigned leaf among them"


def test_the_model_owner_cannot_cut_the_servers_share_of_a_posted_period(roll):
    kit, job, mm, ru = roll.kit, roll.job, roll.shop.mm, roll.ru
    c = roll.callers[0]
    roll.fund(c)
    roll.bond()  # under the offer's server_bps 2,000
    roll.post(roll.tree({c: 50}))
    kit.advance(WINDOW)
    # the owner cuts the server share and takes all the job's terms allow, for servers that bond later
    mm.transact("set_offer", job.id, offer(server_bps=0, owner_bps=OWNER_CAP), sender=kit.requester)
    assert ru.call("server_share", job.id, roll.server.address) == 2_000
    before = {a: mm.call("owed", a) for a in (roll.server.address, kit.requester.address)}
    roll.finalize()  # the posted period: the shares when it was posted
    assert mm.call("owed", roll.server.address) - before[roll.server.address] == 50 * PRICE * 2_000 // 10_000
    assert mm.call("owed", kit.requester.address) - before[kit.requester.address] == 50 * PRICE * 1_000 // 10_000
    # the next period: the server keeps its share, the owner takes what the terms leave beside it
    before = {a: mm.call("owed", a) for a in (roll.server.address, kit.requester.address)}
    revenue = mm.call("revenue", job.id)
    roll.post(roll.tree({c: 80}))
    kit.advance(WINDOW)
    roll.finalize()
    assert mm.call("owed", roll.server.address) - before[roll.server.address] == 30 * PRICE * 2_000 // 10_000
    assert mm.call("owed", kit.requester.address) - before[kit.requester.address] == 30 * PRICE * (OWNER_CAP - 2_000) // 10_000
    assert mm.call("revenue", job.id) - revenue >= 30 * PRICE * (10_000 - FEE_BPS - OWNER_CAP) // 10_000
    # a server that bonds now is split at the new offer
    roll.bond(server=roll.rival)
    assert ru.call("server_share", job.id, roll.rival.address) == 0


def test_a_root_cannot_move_more_than_the_servers_bond(roll):
    c = roll.callers[0]
    assert roll.shop.bal(c) >= 2 * SSTAKE
    roll.fund(c, 2 * SSTAKE)
    roll.bond()  # SSTAKE
    with reverts("rollup: more than bond covers"):
        roll.post(roll.tree({c: (1, SSTAKE + 1)}))


def test_a_leaf_of_the_zero_address_cannot_be_answered_without_a_signature(roll):
    ru, job = roll.ru, roll.job
    c = roll.callers[0]
    roll.fund(c)
    roll.bond()
    roll.fund(roll.callers[1])  # two tabs: a root of two leaves
    tree = roll.tree({"0x" + "00" * 20: (10**9, 0), c: 1})
    assert tree.leaves[0].caller == "0x" + "00" * 20
    roll.post(tree)
    roll.challenge(0, sender=c)
    roll.open_bonds = 1
    try:
        ru.transact("answer", job.id, tree.position(0), b"", sender=roll.server)
        answered = True
        roll.open_bonds = 0
    except ContractRevert:
        answered = False
    assert not answered, "the server answered for a caller that signed nothing"
