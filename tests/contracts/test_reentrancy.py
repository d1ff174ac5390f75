"""JobMarket against a malicious token that re-enters it from inside every transfer.

The market is deployed on `mocks/ReentrantToken`, which calls back into the market with armed
calldata each time tokens move. Every payload used here is shown to be valid on its own (a
control replays it outside any market call and it succeeds), so a failed re-entry is the
market's lock at work and not a badly built payload. Each test checks that the re-entry
failed (`successes()` stays at the 3 successes of the token's own set-up calls while `attempts()`
rises), that the outer call made exactly
the payments it should, and that the market still holds exactly what a ghost ledger says it
owes: nothing can be drained.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import pytest
from eth_utils import keccak

from fedmarket.chain import artifacts
from fedmarket.errors import ContractRevert
from fedmarket.market import Deployment, JobState, JobTerms, Role
from fedmarket.protocol.encoding import reward_leaf
from fedmarket.protocol.merkle import MerkleTree

TOKEN = 10**18
FEE_BPS = 100
UNBONDING_DELAY = 1_000
STAKE = 10 * TOKEN
AGG_STAKE = 100 * TOKEN
TOKEN_STAKE = 7 * TOKEN  # what the malicious token itself has unbonding in the market
AGG_UNBOND = 20 * TOKEN  # what the aggregator has unbonding in the market
MAX = 2**256 - 1


@dataclass
class GhostJob:
    escrow: int
    state: JobState = JobState.OPEN
    reward_total: int = 0
    claimed_total: int = 0
    locked: dict = field(default_factory=dict)  # address -> stake still locked

    def owed(self) -> int:
        """What the market holds for this job: escrow while running, unclaimed rewards once settled."""
        held = sum(self.locked.values())
        if self.state in (JobState.OPEN, JobState.TRAINING, JobState.FINALIZING):
            return held + self.escrow
        if self.state == JobState.SETTLED:
            return held + self.reward_total - self.claimed_total
        return held


@dataclass
class Ghost:
    """Independent bookkeeping of what the market owes (jobs + free + unbonding stakes)."""

    jobs: dict = field(default_factory=dict)
    free: int = 0
    unbonding: int = 0

    def total(self) -> int:
        return sum(j.owed() for j in self.jobs.values()) + self.free + self.unbonding


class Scenario:
    """Three jobs on the malicious token, positioned so that every payload is valid on its own:

    * A settled, claims open: leaves for providers 0 and 1 (the outer claim pays leaf 0);
    * B settled, claim period over, nothing claimed: sweepable, provider 2 releasable;
    * C finalizing, challenge window over: settleable (providers 4, 5 and its aggregator locked);
    * the token contract itself has stake unbonding, matured: it can `withdraw`.
    """

    def __init__(self, w):
        self.w = w
        self.chain = w["chain"]
        chain = self.chain
        self.deployer = chain.new_account("reentrancy", 0)
        self.treasury = chain.new_account("reentrancy", 1).address
        art = artifacts.load("mocks/ReentrantToken")
        self.token = chain.deploy(self.deployer, "ReentrantToken", art.abi, art.bytecode)
        self.dep = Deployment.deploy(chain, self.deployer, self.treasury, fee_bps=FEE_BPS,
                                     unbonding_delay=UNBONDING_DELAY, token=self.token)
        assert self.dep.token is self.token and self.dep.market.call("TOKEN") == self.token.address
        self.m = self.dep.market
        self.requester, self.aggregator, self.outsider = w["requester"], w["aggregator"], w["outsider"]
        self.providers = w["providers"]
        for acct in [self.requester, self.aggregator, self.outsider, *self.providers]:
            self.token.transact("mint", acct.address, 10_000 * TOKEN, sender=self.deployer)
            self.token.transact("approve", self.m.address, MAX, sender=acct)
        self.ghost = Ghost()
        self.leaves: dict[str, list] = {}
        self.trees: dict[str, MerkleTree] = {}

        # the token contract stakes in the market itself (through its own re-entry hook, while no
        # market call is running): approve, deposit, request an unbonding
        self.token.transact("mint", self.token.address, TOKEN_STAKE, sender=self.deployer)
        self.self_call(self.token.address, self.token.abi.function("approve").encode((self.m.address, MAX)))
        self.self_call(self.m.address, self.m.abi.function("deposit").encode((Role.PROVIDER, TOKEN_STAKE)))
        self.self_call(self.m.address, self.m.abi.function("request_unbond").encode((Role.PROVIDER, TOKEN_STAKE)))
        self.ghost.unbonding = TOKEN_STAKE
        assert self.m.call("unbonding", self.token.address, Role.PROVIDER)["amount"] == TOKEN_STAKE

        # an aggregator stake on its way out, matured by the time the tests run (outer `withdraw`)
        self.m.transact("deposit", Role.AGGREGATOR, AGG_UNBOND, sender=self.aggregator)
        self.m.transact("request_unbond", Role.AGGREGATOR, AGG_UNBOND, sender=self.aggregator)
        self.ghost.unbonding += AGG_UNBOND

        self.B = self.job("B", 500 * TOKEN, [2, 3], [100 * TOKEN, 200 * TOKEN], challenge=0, claim=100)
        self.settle("B")
        self.chain.advance_time(UNBONDING_DELAY)  # B's claim period and both unbondings end
        self.A = self.job("A", 1_000 * TOKEN, [0, 1], [400 * TOKEN, 500 * TOKEN], challenge=0, claim=100_000)
        self.settle("A")
        self.C = self.job("C", 300 * TOKEN, [4, 5], [60 * TOKEN, 90 * TOKEN], challenge=50, claim=100_000)
        # D open with nobody joined (its requester may cancel); E training, its aggregator silent
        self.D = self.post("D", 80 * TOKEN, 1, round_duration=500, challenge=0, claim=100)
        self.E = self.post("E", 70 * TOKEN, 1, round_duration=10, challenge=0, claim=100)
        self.m.transact("accept", self.E, sender=self.aggregator)
        self.m.transact("join", self.E, sender=self.providers[5])
        self.m.transact("start", self.E, sender=self.aggregator)
        self.ghost.jobs["E"].locked.update({self.aggregator.address: AGG_STAKE, self.providers[5].address: STAKE})
        self.ghost.jobs["E"].state = JobState.TRAINING
        self.chain.advance_time(50)  # C's challenge window and E's round deadline end
        for name, state in (("A", JobState.SETTLED), ("B", JobState.SETTLED), ("C", JobState.FINALIZING),
                            ("D", JobState.OPEN), ("E", JobState.TRAINING)):
            assert self.dep.job(getattr(self, name))["state"] == state == self.ghost.jobs[name].state
        assert self.balance(self.m.address) == self.ghost.total()
        # the token's own three set-up calls are the only re-entries that ever succeed
        self.setup_counters = self.counters()
        assert self.setup_counters == (3, 3)

    # ---- building -------------------------------------------------------------------
    def self_call(self, target: str, payload: bytes):
        """Make the token contract call `target` with `payload` (outside any market call)."""
        before = self.token.call("successes")
        self.token.transact("arm", target, payload, sender=self.deployer)
        self.token.transact("transfer", self.deployer.address, 0, sender=self.outsider)  # any transfer fires it
        self.token.transact("arm", "0x" + "00" * 20, b"", sender=self.deployer)
        assert self.token.call("successes") == before + 1, "the control call must succeed on its own"

    def post(self, name, escrow, n_providers, round_duration, challenge, claim) -> int:
        terms = JobTerms(
            spec_hash=keccak(name.encode()), aggregator=self.aggregator.address, escrow=escrow,
            provider_stake=STAKE, aggregator_stake=AGG_STAKE, validator_stake=0,
            min_providers=n_providers, max_providers=n_providers, max_validators=0, rounds=1,
            join_deadline=self.chain.timestamp() + 1_000, round_duration=round_duration, challenge_period=challenge,
            claim_period=claim, rule=0, trim=0, chunk_size=64, licence_price=0,
        )
        r = self.m.transact("post_job", terms.abi(), "bafkrei" + name, sender=self.requester)
        self.ghost.jobs[name] = GhostJob(escrow)
        return r.event("JobPosted")["job_id"]

    def job(self, name, escrow, provider_ix, amounts, challenge, claim) -> int:
        """A job through its single round up to its reward root (Finalizing)."""
        job_id = self.post(name, escrow, len(provider_ix), 500, challenge, claim)
        g = self.ghost.jobs[name]
        self.m.transact("accept", job_id, sender=self.aggregator)
        g.locked[self.aggregator.address] = AGG_STAKE
        for i in provider_ix:
            self.m.transact("join", job_id, sender=self.providers[i])
            g.locked[self.providers[i].address] = STAKE
        self.m.transact("start", job_id, sender=self.aggregator)
        self.m.transact("submit_round", job_id, 0, keccak(b"model"), "bafkreimodel", keccak(b"upd"), len(provider_ix),
                        b"\x00" * 32, 0, sender=self.aggregator)
        leaves = [(k, self.providers[i].address, a, 1) for k, (i, a) in enumerate(zip(provider_ix, amounts))]
        tree = MerkleTree([reward_leaf(*leaf) for leaf in leaves])
        self.m.transact("post_rewards", job_id, tree.root, sum(amounts), "bafkreirewards", sender=self.aggregator)
        g.state, g.reward_total = JobState.FINALIZING, sum(amounts)
        self.leaves[name], self.trees[name] = leaves, tree
        return job_id

    def settle(self, name):
        job_id = getattr(self, name)
        self.m.transact("settle", job_id, sender=self.outsider)
        self.ghost.jobs[name].state = JobState.SETTLED

    # ---- calldata -------------------------------------------------------------------
    def claim_args(self, name, k) -> tuple:
        return (getattr(self, name), *self.leaves[name][k], self.trees[name].proof(k))

    def calldata(self, fn: str, *args) -> bytes:
        return self.m.abi.function(fn).encode(args)

    def payloads(self) -> dict[str, bytes]:
        return {
            "claim same leaf": self.calldata("claim", *self.claim_args("A", 0)),
            "claim another account": self.calldata("claim", *self.claim_args("A", 1)),
            "sweep": self.calldata("sweep", self.B),
            "release_stake": self.calldata("release_stake", self.B, self.providers[2].address),
            "withdraw": self.calldata("withdraw", Role.PROVIDER),
            "settle": self.calldata("settle", self.C),
        }

    # ---- reading --------------------------------------------------------------------
    def balance(self, address: str) -> int:
        return int(self.token.call("balanceOf", address))

    def arm(self, payload: bytes):
        self.token.transact("arm", self.m.address, payload, sender=self.deployer)

    def counters(self) -> tuple[int, int]:
        return int(self.token.call("attempts")), int(self.token.call("successes"))

    def untouched(self):
        """What every payload would have changed, had it got through (see `assert_untouched`)."""
        A, B, C = self.A, self.B, self.C
        return {
            "A leaf 0 claimed": self.m.call("is_claimed", A, 0),
            "A leaf 1 claimed": self.m.call("is_claimed", A, 1),
            "A claimed_total": self.dep.job(A)["claimed_total"],
            "B claimed_total": self.dep.job(B)["claimed_total"],
            "B provider 2 stake": self.m.call("membership", B, self.providers[2].address),
            "C state": self.dep.job(C)["state"],
            "token unbonding": self.m.call("unbonding", self.token.address, Role.PROVIDER)["amount"],
            "provider 0 wallet": self.balance(self.providers[0].address),
            "provider 1 wallet": self.balance(self.providers[1].address),
            "provider 2 wallet": self.balance(self.providers[2].address),
            "requester wallet": self.balance(self.requester.address),
            "treasury wallet": self.balance(self.treasury),
            "token wallet": self.balance(self.token.address),
        }


@pytest.fixture(scope="module")
def scenario_base(boa_world):
    chain = boa_world["chain"]
    with chain.snapshot():
        yield Scenario(boa_world)


@pytest.fixture
def sc(scenario_base):
    """The scenario, rolled back after each test (chain and ghost alike)."""
    ghost = copy.deepcopy(scenario_base.ghost)
    with scenario_base.chain.snapshot():
        yield scenario_base
    scenario_base.ghost = ghost


PAYLOADS = ["claim same leaf", "claim another account", "sweep", "release_stake", "withdraw", "settle"]


def transfers(receipt, token):
    return [(e["sender"], e["receiver"], e["value"]) for e in receipt.events if e.name == "Transfer" and e.address == token]


def test_each_payload_is_valid_on_its_own(sc):
    """Control for every test below: outside a market call, each payload goes through and has its effect."""
    for name, payload in sc.payloads().items():
        with sc.chain.snapshot():
            before = sc.untouched()
            sc.self_call(sc.m.address, payload)  # asserts that `successes` went up by one
            assert sc.untouched() != before, name


@pytest.mark.parametrize("kind", PAYLOADS)
def test_reentry_during_claim_payout_fails(sc, kind):
    payload = sc.payloads()[kind]
    p0 = sc.providers[0].address
    leaf_amount = sc.leaves["A"][0][2]
    before = sc.untouched()
    market_before = sc.balance(sc.m.address)
    attempts, successes = sc.counters()
    assert (attempts, successes) == sc.setup_counters
    sc.arm(payload)

    r = sc.m.transact("claim", *sc.claim_args("A", 0), sender=sc.outsider)

    # the re-entry was tried once, from inside the payout, and failed
    assert sc.counters() == (attempts + 1, successes)
    # the outer claim did exactly its own job: one payment of reward + released stake to the provider
    assert transfers(r, sc.token.address) == [(sc.m.address, p0, leaf_amount + STAKE)]
    names = [e.name for e in r.events if e.address == sc.m.address]
    assert names.count("RewardClaimed") == 1 and set(names) <= {"RewardClaimed", "ReputationChanged", "StakeReleased"}
    assert all(e["account"] == p0 for e in r.events if e.name in ("StakeReleased", "ReputationChanged"))
    ev = r.event("RewardClaimed")
    assert (ev["account"], ev["amount"], ev["stake_released"]) == (p0, leaf_amount, STAKE)
    after = sc.untouched()
    assert after.pop("A leaf 0 claimed") and not before.pop("A leaf 0 claimed")
    assert after.pop("A claimed_total") == before.pop("A claimed_total") + leaf_amount
    assert after.pop("provider 0 wallet") == before.pop("provider 0 wallet") + leaf_amount + STAKE
    assert after == before  # nothing the payload would have done happened
    assert sc.balance(sc.m.address) == market_before - leaf_amount - STAKE
    # the market still holds exactly what it owes
    a = sc.ghost.jobs["A"]
    a.claimed_total += leaf_amount
    a.locked.pop(p0)
    assert sc.balance(sc.m.address) == sc.ghost.total()

    # control: the same payload, replayed outside a market call, is decided on its own merits
    if kind == "claim same leaf":
        with pytest.raises(ContractRevert, match="market: already claimed"):
            sc.m.transact("claim", *sc.claim_args("A", 0), sender=sc.outsider)
    else:
        sc.self_call(sc.m.address, payload)


def outer_calls(sc):
    """Every other entry point that moves tokens: (sender, function, args, expected market transfers,
    keys of `untouched()` it changes itself, ghost update)."""
    m, req, out, agg = sc.m.address, sc.requester.address, sc.outsider.address, sc.aggregator.address
    p2, p5 = sc.providers[2].address, sc.providers[5].address
    fee_c = 300 * TOKEN * FEE_BPS // 10_000
    share = AGG_STAKE // 2
    g = sc.ghost.jobs

    def settle_c():
        g["C"].state = JobState.SETTLED

    def sweep_b():
        g["B"].claimed_total = g["B"].reward_total

    def release_p2():
        g["B"].locked.pop(p2)

    def withdraw_agg():
        sc.ghost.unbonding -= AGG_UNBOND

    def cancel_d():
        g["D"].state = JobState.CANCELLED

    def fail_e():
        g["E"].state = JobState.FAILED
        g["E"].locked.pop(agg)

    def deposit_p5():
        sc.ghost.free += 3 * TOKEN

    return {
        "settle": (sc.outsider, "settle", (sc.C,),
                   [(m, sc.treasury, fee_c), (m, req, 300 * TOKEN - fee_c - 150 * TOKEN)],
                   {"C state", "treasury wallet", "requester wallet"}, settle_c),
        "sweep": (sc.outsider, "sweep", (sc.B,), [(m, req, 300 * TOKEN)],
                  {"B claimed_total", "requester wallet"}, sweep_b),
        "release_stake": (sc.outsider, "release_stake", (sc.B, p2), [(m, p2, STAKE)],
                          {"B provider 2 stake", "provider 2 wallet"}, release_p2),
        "withdraw": (sc.aggregator, "withdraw", (Role.AGGREGATOR,), [(m, agg, AGG_UNBOND)], set(), withdraw_agg),
        "cancel": (sc.requester, "cancel", (sc.D,), [(m, req, 80 * TOKEN)], {"requester wallet"}, cancel_d),
        "fail": (sc.outsider, "fail", (sc.E,), [(m, req, 70 * TOKEN), (m, out, share), (m, req, AGG_STAKE - share)],
                 {"requester wallet"}, fail_e),
        # tokens coming in: `transferFrom` fires the hook too
        "deposit": (sc.providers[5], "deposit", (Role.PROVIDER, 3 * TOKEN), [(p5, m, 3 * TOKEN)], set(), deposit_p5),
    }


@pytest.mark.parametrize("kind", PAYLOADS)
@pytest.mark.parametrize("outer", ["settle", "sweep", "release_stake", "withdraw", "cancel", "fail", "deposit"])
def test_reentry_during_every_other_transfer_fails(sc, outer, kind):
    sender, fn, args, expected, changes, update = outer_calls(sc)[outer]
    before = sc.untouched()
    market_before = sc.balance(sc.m.address)
    attempts, successes = sc.counters()
    sc.arm(sc.payloads()[kind])

    r = sc.m.transact(fn, *args, sender=sender)

    assert sc.counters() == (attempts + len(expected), successes), "each transfer tried to re-enter; none got in"
    assert transfers(r, sc.token.address) == expected
    after = sc.untouched()
    assert {k: v for k, v in after.items() if k not in changes} == {k: v for k, v in before.items() if k not in changes}
    moved = sum(v if dst == sc.m.address else -v for _, dst, v in expected)
    assert sc.balance(sc.m.address) == market_before + moved
    update()
    assert sc.balance(sc.m.address) == sc.ghost.total()
    if (outer, kind) not in {("settle", "settle"), ("sweep", "sweep"), ("release_stake", "release_stake")}:
        sc.self_call(sc.m.address, sc.payloads()[kind])  # still valid afterwards: only the lock stopped it


def test_reentry_cannot_drain_the_market(sc):
    """All payloads in a row, each armed during a claim: at the end every token is accounted for."""
    total_supply = int(sc.token.call("totalSupply"))
    attempts, successes = sc.counters()
    sc.arm(sc.payloads()["claim another account"])
    sc.m.transact("claim", *sc.claim_args("A", 0), sender=sc.outsider)
    sc.arm(sc.payloads()["claim same leaf"])
    sc.m.transact("claim", *sc.claim_args("A", 1), sender=sc.outsider)  # the payload is now a second claim of leaf 0
    sc.arm(sc.payloads()["sweep"])
    sc.m.transact("settle", sc.C, sender=sc.outsider)
    sc.arm(sc.payloads()["settle"])
    sc.m.transact("sweep", sc.B, sender=sc.outsider)
    assert sc.counters() == (attempts + 1 + 1 + 2 + 1, successes)
    a, b, c = sc.ghost.jobs["A"], sc.ghost.jobs["B"], sc.ghost.jobs["C"]
    a.claimed_total = a.reward_total
    a.locked.pop(sc.providers[0].address)
    a.locked.pop(sc.providers[1].address)
    b.claimed_total = b.reward_total
    c.state = JobState.SETTLED
    assert sc.balance(sc.m.address) == sc.ghost.total()
    assert int(sc.token.call("totalSupply")) == total_supply
    assert sc.m.call("is_claimed", sc.A, 0) and sc.m.call("is_claimed", sc.A, 1)
    assert sc.dep.job(sc.A)["claimed_total"] == 900 * TOKEN == sc.dep.job(sc.A)["reward_total"]
