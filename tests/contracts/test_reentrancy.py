"""The protocol on a malicious token that re-enters a target from inside every transfer.

Everything is deployed on `mocks/ReentrantToken`, which calls `target` with armed calldata each
time tokens move. Every payload used is shown valid on its own (a control replays it outside any
call and it succeeds), so a failed re-entry is a lock at work, not a bad payload. Each test
checks that the re-entry was tried once per transfer and failed, that the outer call made
exactly its own transfers, that nothing a payload would change changed, and that every contract
still holds exactly what its books say it owes: the market its escrows, stakes, bonds and
unclaimed rewards; an arbiter the bonds of its open games; the licence its unpaid revenue.
"""

from __future__ import annotations

import pytest
from contract_kit import (
    AGG_STAKE,
    BOND,
    MAX,
    STAKE,
    TOKEN,
    VAL_STAKE,
    Kit,
    RewardPlayer,
    RoundPlayer,
    chunk_list,
    index_leaves,
    open_aggregate,
    open_rewards,
    reverts,
)
from eth_utils import keccak

from fedmarket.chain import artifacts
from fedmarket.errors import ContractRevert
from fedmarket.market import Deployment, JobState, Role
from fedmarket.protocol import rules as R
from fedmarket.protocol.encoding import vector_tree
from fedmarket.protocol.proofs import reward_struct

UNBONDING_DELAY = 1_000
TOKEN_STAKE = 7 * TOKEN  # what the malicious token itself has unbonding in the market
AGG_UNBOND = 20 * TOKEN  # what the aggregator has unbonding in the market
PRICE = 30 * TOKEN
ZERO_ADDR = "0x" + "00" * 20


class Scenario:
    """Jobs on the malicious token, positioned so that every payload is valid on its own:

    * A settled, claims open, its model minted and licensed once (revenue to claim);
    * B settled, claim period over, nothing claimed: sweepable, its providers releasable, not minted;
    * C finalizing, challenge window over: settleable (and open to a reward challenge);
    * D open, nobody joined: its requester may cancel; E training, its aggregator silent: failable;
    * F finalizing with a root listing two leaves out of order, a sum game down to the bad leaf
      and its defender silent past the deadline: anyone may time it out;
    * G training, one round committed, an aggregate game at the defender's last move;
    * V validated and training, its validator's two attestations of one round at hand;
    * the token contract itself has stake unbonding (matured) and bond allowances to both arbiters.
    """

    def __init__(self, w):
        chain = w["chain"]
        self.chain = chain
        self.deployer = chain.new_account("reentrancy", 0)
        treasury = chain.new_account("reentrancy", 1)
        art = artifacts.load("mocks/ReentrantToken")
        self.token = chain.deploy(self.deployer, "ReentrantToken", art.abi, art.bytecode)
        dep = Deployment.deploy(chain, self.deployer, treasury.address, fee_bps=100, unbonding_delay=UNBONDING_DELAY,
                                token=self.token)
        assert dep.token is self.token and dep.market.call("TOKEN") == self.token.address
        accounts = [w["requester"], w["aggregator"], w["outsider"], *w["providers"], *w["validators"]]
        for acct in accounts:
            self.token.transact("mint", acct.address, 10_000 * TOKEN, sender=self.deployer)
            self.token.transact("approve", dep.market.address, MAX, sender=acct)
        self.kit = kit = Kit({**w, "dep": dep, "deployer": self.deployer, "treasury": treasury})
        self.dep, self.m, self.ra, self.wa, self.lic = dep, dep.market, dep.round_arbiter, dep.reward_arbiter, dep.licence
        self.accounts = [a.address for a in accounts] + [self.token.address]
        self.treasury = treasury.address

        # the token contract stakes in the market itself and may pay bonds (through its own hook,
        # while nothing else runs)
        self.token.transact("mint", self.token.address, TOKEN_STAKE + 10 * BOND, sender=self.deployer)
        for spender in (self.m, self.ra, self.wa):
            self.self_call(self.token.address, self.token.abi.function("approve").encode((spender.address, MAX)))
        self.self_call(self.m.address, self.m.abi.function("deposit").encode((Role.PROVIDER, TOKEN_STAKE)))
        self.self_call(self.m.address, self.m.abi.function("request_unbond").encode((Role.PROVIDER, TOKEN_STAKE)))
        self.m.transact("deposit", Role.AGGREGATOR, AGG_UNBOND, sender=kit.aggregator)
        self.m.transact("request_unbond", Role.AGGREGATOR, AGG_UNBOND, sender=kit.aggregator)

        self.B = kit.job(n=2, rounds=1, challenge_period=1, claim_period=100)
        self.B.finalize()
        self.B.settle()
        kit.advance(UNBONDING_DELAY)  # B's claim period and both unbondings end
        self.A = kit.job(n=2, rounds=1, challenge_period=1, claim_period=100_000, licence_price=PRICE)
        self.A.finalize()
        self.A.settle()
        self.a0, self.a1 = [i for i, leaf in enumerate(self.A.leaves) if leaf["amount"] > 0]  # A's providers
        self.lic.transact("mint", self.A.id, sender=kit.outsider)
        self.token.transact("approve", self.lic.address, MAX, sender=kit.validators[3])
        self.lic.transact("buy", self.A.id, sender=kit.validators[3])
        self.C = kit.job(n=2, rounds=1, challenge_period=50, claim_period=100_000)
        self.C.finalize()
        self.H = kit.job(n=2, rounds=1, challenge_period=100_000)  # its reward root stays open to challenges
        self.H.finalize()
        self.D = kit.post()
        self.E = kit.job(n=1, rounds=1, round_duration=10)
        self.V = kit.job(n=1, validators=1, rounds=1)
        self.F = kit.job(n=2, rounds=1, response_period=1, challenge_period=5)
        self.F.commit_all()
        leaves = self.F.weight_leaves()
        leaves[0], leaves[1] = leaves[1], leaves[0]
        self.F.post_rewards(index_leaves(leaves))
        self.f_game = RewardPlayer(self.F, open_rewards(self.F))
        self.f_game.down_to(1)
        self.G = kit.job(n=2, rounds=2, response_period=10_000, round_duration=10_000)
        self.G.commit()
        self.g_game = RoundPlayer(self.G, open_aggregate(self.G, 0, 1))
        self.g_game.defend_aggregate()
        self.g_game.bisect()
        kit.advance(50)  # C's challenge window, E's deadline and F's game deadline end
        for job, state in ((self.A, JobState.SETTLED), (self.B, JobState.SETTLED), (self.C, JobState.FINALIZING),
                           (self.E, JobState.TRAINING), (self.F, JobState.FINALIZING), (self.G, JobState.TRAINING)):
            assert job.status()[0] == state
        self.check_books()
        self.setup_counters = self.counters()  # the token's own set-up calls are the only re-entries that succeeded
        assert self.setup_counters == (5, 5)

    # ---- building
    def self_call(self, target: str, payload: bytes):
        """Make the token contract call `target` with `payload` (outside any other call)."""
        before = self.token.call("successes")
        self.arm(target, payload)
        self.token.transact("transfer", self.deployer.address, 0, sender=self.kit.outsider)  # any transfer fires it
        self.arm(ZERO_ADDR, b"")
        assert self.token.call("successes") == before + 1, "the control call must succeed on its own"

    def arm(self, target: str, payload: bytes):
        self.token.transact("arm", target, payload, sender=self.deployer)

    def counters(self) -> tuple[int, int]:
        return int(self.token.call("attempts")), int(self.token.call("successes"))

    def balance(self, address: str) -> int:
        return int(self.token.call("balanceOf", address))

    # ---- calldata
    def claim_args(self, job, i):
        return (job.id, i, reward_struct(job.leaves[i]), job.tree.proof(i))

    def payloads(self) -> dict[str, tuple[str, bytes]]:
        m, ra, wa, lic = self.m, self.ra, self.wa, self.lic
        enc = lambda c, fn, *a: (c.address, c.abi.function(fn).encode(a))
        return {
            "market: claim the same leaf": enc(m, "claim", *self.claim_args(self.A, self.a0)),
            "market: claim another leaf": enc(m, "claim", *self.claim_args(self.A, self.a1)),
            "market: sweep": enc(m, "sweep", self.B.id),
            "market: release a stake": enc(m, "release_stake", self.B.id, self.B.providers[0].address),
            "market: withdraw": enc(m, "withdraw", Role.PROVIDER),
            "market: settle": enc(m, "settle", self.C.id),
            "round arbiter: challenge": enc(ra, "challenge_aggregate", self.G.id, 0, 0, *self.G.round_args(0)),
            "reward arbiter: challenge": enc(wa, "challenge_rewards", self.H.id),
            "licence: claim revenue": enc(lic, "claim_revenue", *self.claim_args(self.A, self.a0)),
            "licence: claim another's revenue": enc(lic, "claim_revenue", *self.claim_args(self.A, self.a1)),
            "licence: mint": enc(lic, "mint", self.B.id),
        }

    # ---- reading
    def untouched(self) -> dict:
        """What every payload would change, had it got through."""
        A, B, C = self.A.id, self.B.id, self.C.id
        return {
            "A leaf 0 claimed": self.m.call("is_claimed", A, self.a0),
            "A leaf 1 claimed": self.m.call("is_claimed", A, self.a1),
            "A claimed total": self.m.call("progress", A)["claimed_total"],
            "B claimed total": self.m.call("progress", B)["claimed_total"],
            "B provider stake": self.m.call("membership", B, self.B.providers[0].address),
            "C state": self.m.call("job_status", C)[0],
            "token unbonding": self.m.call("unbonding", self.token.address, Role.PROVIDER)["amount"],
            "round games": self.ra.call("game_count"),
            "reward games": self.wa.call("game_count"),
            "A revenue paid": self.lic.call("paid_out", A),
            "B minted": self.lic.call("totalSupply"),
            **{f"wallet {a}": self.balance(a) for a in self.accounts},
        }

    def check_books(self) -> None:
        """Every contract holds exactly what its own books say it owes."""
        owed = 0
        for job in range(1, self.m.call("job_count") + 1):
            state = self.m.call("job_status", job)[0]
            p, t = self.m.call("progress", job), self.m.call("terms", job)
            locked = sum(stake for word, stake in (self.m.call("membership", job, a) for a in self.accounts)
                         if word & R.SLASHED == 0)
            if state in (JobState.OPEN, JobState.TRAINING, JobState.FINALIZING):
                owed += t["escrow"] + locked + p["poster_bond"]
            elif state == JobState.SETTLED:
                owed += p["reward_total"] - p["claimed_total"] + locked
            else:
                owed += locked
        for a in self.accounts:
            for role in Role:
                owed += self.m.call("free_stake", a, role) + self.m.call("unbonding", a, role)["amount"]
        assert self.balance(self.m.address) == owed, "the market's books"
        for arbiter in (self.ra, self.wa):
            bonds = sum(arbiter.call("games", g)["bond"] for g in range(1, arbiter.call("game_count") + 1))
            assert self.balance(arbiter.address) == bonds, f"{arbiter.name}'s books"
        revenue = sum(self.lic.call("revenue", j) - self.lic.call("paid_out", j)
                      for j in range(1, self.m.call("job_count") + 1))
        owed = sum(self.lic.call("owed", a) for a in {*self.accounts, self.treasury})
        assert self.balance(self.lic.address) == revenue + owed, "the licence's books"


@pytest.fixture(scope="module")
def scenario_base(boa_world):
    with boa_world["chain"].snapshot():
        yield Scenario(boa_world)


@pytest.fixture
def sc(scenario_base):
    """The scenario, rolled back after each test."""
    with scenario_base.chain.snapshot():
        yield scenario_base


def transfers(receipt, token) -> list:
    return [(e["sender"], e["receiver"], e["value"]) for e in receipt.events
            if e.name == "Transfer" and e.address == token.address]


def test_each_payload_is_valid_on_its_own(sc):
    """Control for every test below: outside any call, each payload goes through and has its effect."""
    for name, (target, payload) in sc.payloads().items():
        with sc.chain.snapshot():
            before = sc.untouched()
            sc.self_call(target, payload)
            assert sc.untouched() != before, name
            sc.check_books()


def outer_calls(sc) -> dict:
    """Every entry point that moves tokens: (contract, sender, function, args, the transfers it makes,
    keys of `untouched()` it changes itself)."""
    k, m, ra, wa, lic = sc.kit, sc.m.address, sc.ra.address, sc.wa.address, sc.lic.address
    req, out, agg, treasury = k.requester.address, k.outsider.address, k.aggregator.address, k.treasury
    a0 = sc.A.leaves[sc.a0]
    p_a0 = a0["account"]
    fee_c = sc.C.terms.escrow * 100 // R.BPS
    wallets = lambda *accounts: {f"wallet {a}" for a in accounts}
    p_g = sc.G.rounds[0].updates[sc.g_game.g["lo"]]
    v = sc.V.validators[0]
    root = keccak(b"any model")
    sig_a, sig_b = (sc.V.sign_attestation(v, 0, keccak(x), model_root=root) for x in (b"a", b"b"))
    due = sc.lic.call("revenue", sc.A.id) * a0["amount"] // sc.A.info()["reward_total"]
    return {
        "market: claim": (sc.m, k.outsider, "claim", sc.claim_args(sc.A, sc.a0), [(m, p_a0, a0["amount"] + STAKE)],
                          {"A leaf 0 claimed", "A claimed total"} | wallets(p_a0)),
        "market: settle": (sc.m, k.outsider, "settle", (sc.C.id,),
                           [(m, treasury, fee_c), (m, req, sc.C.terms.escrow - fee_c - sc.C.info()["reward_total"])],
                           {"C state"} | wallets(req, treasury)),
        "market: sweep": (sc.m, k.outsider, "sweep", (sc.B.id,), [(m, req, sc.B.info()["reward_total"])],
                          {"B claimed total"} | wallets(req)),
        "market: release a stake": (sc.m, k.outsider, "release_stake", (sc.B.id, sc.B.providers[0].address),
                                    [(m, sc.B.providers[0].address, STAKE)],
                                    {"B provider stake"} | wallets(sc.B.providers[0].address)),
        "market: withdraw": (sc.m, k.aggregator, "withdraw", (Role.AGGREGATOR,), [(m, agg, AGG_UNBOND)], wallets(agg)),
        "market: cancel": (sc.m, k.requester, "cancel", (sc.D,), [(m, req, sc.kit.terms().escrow)], wallets(req)),
        "market: fail": (sc.m, k.outsider, "fail", (sc.E.id,),
                         [(m, req, sc.E.terms.escrow), (m, out, AGG_STAKE // 2), (m, treasury, AGG_STAKE // 2)],
                         wallets(req, out, treasury)),
        "market: deposit": (sc.m, k.providers[5], "deposit", (Role.PROVIDER, 3 * TOKEN),
                            [(k.providers[5].address, m, 3 * TOKEN)], wallets(k.providers[5].address)),
        "disputes: equivocation": (sc.dep.disputes, k.outsider, "prove_equivocation",
                                   (sc.V.id, 0, v.address, root, keccak(b"a"), sig_a, root, keccak(b"b"), sig_b),
                                   [(m, out, VAL_STAKE // 2), (m, treasury, VAL_STAKE // 2)], wallets(out, treasury)),
        "round arbiter: challenge": (sc.ra, k.outsider, "challenge_aggregate", (sc.G.id, 0, 0, *sc.G.round_args(0)),
                                     [(out, ra, BOND)], {"round games"} | wallets(out)),
        "round arbiter: defend": (sc.ra, k.aggregator, "defend_update", (
            sc.g_game.gid, sc.G.rounds[0].data, sc.g_game.opening(),
            (chunk_list(p_g.q, 1, 4), vector_tree(p_g.q, 4).proof(1)),
            sc.g_game.claimed(sc.g_game.g["lo"], sc.g_game.g["hi"]), [], []),
            [(ra, agg, BOND)], wallets(agg)),
        "reward arbiter: timeout": (sc.wa, k.requester, "timeout", (sc.f_game.gid,),
                                    [(wa, out, BOND), (m, out, AGG_STAKE // 2), (m, treasury, AGG_STAKE // 2)],
                                    wallets(out, treasury)),
        "licence: buy": (sc.lic, k.validators[2], "buy", (sc.A.id,), [(k.validators[2].address, lic, PRICE)],
                         wallets(k.validators[2].address)),
        "licence: claim revenue": (sc.lic, k.outsider, "claim_revenue", sc.claim_args(sc.A, sc.a0), [(lic, p_a0, due)],
                                   {"A revenue paid"} | wallets(p_a0)),
    }


# which payloads re-enter a contract the outer call has locked
LOCKED = {
    "market": ["market: claim the same leaf", "market: claim another leaf", "market: sweep", "market: release a stake",
               "market: withdraw", "market: settle"],
    "disputes": ["market: claim the same leaf", "market: sweep", "market: settle"],
    "round arbiter": ["round arbiter: challenge"],
    "reward arbiter": ["reward arbiter: challenge"],
    "licence": ["licence: claim revenue", "licence: claim another's revenue", "licence: mint"],
}
CASES = [(outer, payload) for outer in (
    "market: claim", "market: settle", "market: sweep", "market: release a stake", "market: withdraw", "market: cancel",
    "market: fail", "market: deposit", "disputes: equivocation", "round arbiter: challenge", "round arbiter: defend",
    "reward arbiter: timeout", "licence: buy", "licence: claim revenue") for payload in LOCKED[outer.split(":")[0]]]


@pytest.mark.parametrize("outer, payload", CASES)
def test_reentry_into_a_locked_contract_fails(sc, outer, payload):
    if outer == "licence: buy":
        sc.token.transact("approve", sc.lic.address, MAX, sender=sc.kit.validators[2])
    contract, sender, fn, args, expected, changes = outer_calls(sc)[outer]
    expected = [t for t in expected if t[2] > 0]  # nothing moves for a zero amount
    target, calldata = sc.payloads()[payload]
    before = sc.untouched()
    attempts, successes = sc.counters()
    sc.arm(target, calldata)

    receipt = contract.transact(fn, *args, sender=sender)

    assert sc.counters() == (attempts + len(expected), successes), "each transfer tried to re-enter; none got in"
    assert transfers(receipt, sc.token) == expected
    after = sc.untouched()
    assert {k: v for k, v in after.items() if k not in changes} == {k: v for k, v in before.items() if k not in changes}
    sc.check_books()
    sc.arm(ZERO_ADDR, b"")
    try:  # the payload is still decided on its own merits afterwards
        sc.self_call(target, calldata)
    except AssertionError:
        assert (outer, payload) in {("market: claim", "market: claim the same leaf"), ("market: settle", "market: settle"),
                                    ("market: sweep", "market: sweep"),
                                    ("market: release a stake", "market: release a stake"),
                                    ("licence: claim revenue", "licence: claim revenue")}, "only its own effect was done"
    sc.check_books()


def test_a_settle_cannot_slip_in_between_a_won_game_and_its_verdict(sc):
    """The reward arbiter pays the bond out before it tells the market the root is wrong: a settle
    re-entering from that payment would settle the rejected root, and the whole verdict reverts."""
    F = sc.F
    sc.kit.advance(1)
    root = F.info()["reward_root"]
    sc.arm(sc.m.address, sc.m.abi.function("settle").encode((F.id,)))
    with pytest.raises(ContractRevert):
        sc.wa.transact("timeout", sc.f_game.gid, sender=sc.kit.requester)
    assert F.status()[0] == JobState.FINALIZING and F.info()["reward_root"] == root
    assert sc.wa.call("open_games", F.id) == 1
    sc.arm(ZERO_ADDR, b"")
    sc.wa.transact("timeout", sc.f_game.gid, sender=sc.kit.requester)
    assert F.status()[0] == JobState.TRAINING
    sc.check_books()


def test_reentry_cannot_drain_anything(sc):
    """Payloads in a row, each armed during another payout: at the end every token is accounted for."""
    supply = int(sc.token.call("totalSupply"))
    attempts, successes = sc.counters()
    p = sc.payloads()
    moved = 0
    for payload, (contract, fn, args, sender) in [
        ("market: claim another leaf", (sc.m, "claim", sc.claim_args(sc.A, sc.a0), sc.kit.outsider)),
        ("market: claim the same leaf", (sc.m, "claim", sc.claim_args(sc.A, sc.a1), sc.kit.outsider)),
        ("market: sweep", (sc.m, "settle", (sc.C.id,), sc.kit.outsider)),
        ("licence: claim revenue", (sc.lic, "claim_revenue", sc.claim_args(sc.A, sc.a0), sc.kit.outsider)),
        ("reward arbiter: challenge", (sc.wa, "timeout", (sc.f_game.gid,), sc.kit.requester)),
    ]:
        sc.arm(*p[payload])
        moved += len(transfers(contract.transact(fn, *args, sender=sender), sc.token))
    assert moved >= 7 and sc.counters() == (attempts + moved, successes)
    sc.check_books()
    assert int(sc.token.call("totalSupply")) == supply
    assert sc.m.call("is_claimed", sc.A.id, sc.a0) and sc.m.call("is_claimed", sc.A.id, sc.a1)
    with reverts("market: already claimed"):
        sc.m.transact("claim", *sc.claim_args(sc.A, sc.a0), sender=sc.kit.outsider)
