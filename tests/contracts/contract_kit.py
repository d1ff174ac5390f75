"""Helpers of the contract tests: jobs driven by hand on the session deployment, every round and
reward root they commit kept in the clear, and both sides of every dispute game.

A `Kit` wraps the session world (`tests/conftest.py::boa_world`) inside a snapshot. `Kit.job()`
posts a job with small terms (3 chunks of a 10-value model by default) and starts it;
`Job.commit()` builds a round exactly as the protocol defines it (updates signed by their
providers, sorted by address, the model by the job's rule, `protocol.encoding` trees) or, with
its overrides, every way an aggregator can cheat. `RoundPlayer` and `RewardPlayer` play the
games over those rounds and reward roots: the true claims (`protocol.rules`), a lie placed in
either half, and the challenger's choice of the half that is wrong.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field, replace
from pathlib import Path

import eth_abi
import numpy as np
import pytest
from eth_utils import keccak

from fedmarket.chain import Account
from fedmarket.errors import ContractRevert
from fedmarket.market import JobTerms
from fedmarket.protocol import rules as R
from fedmarket.protocol.encoding import (
    address_key,
    double_hash,
    reward_leaf,
    round_commitment,
    update_leaf,
    vector_tree,
)
from fedmarket.protocol.merkle import MerkleTree, RoundAccumulator
from fedmarket.protocol.proofs import presence, reward_struct
from fedmarket.protocol.receipts import Attestation, Misbehaviour, ReceiptAck, Rejection, RewardsApproval, UpdateReceipt

TOKEN = 10**18
ESCROW = 1_000 * TOKEN
STAKE = 10 * TOKEN
AGG_STAKE = 100 * TOKEN
VAL_STAKE = 50 * TOKEN
BOND = 5 * TOKEN
FEE_BPS = 100  # the session deployment's fee
UNBONDING_DELAY = 1_000
MAX = 2**256 - 1
ZERO32 = b"\x00" * 32
ZERO_ADDR = "0x" + "00" * 20
EMPTY_DATA = (ZERO32, ZERO32, 0, ZERO32, 0, ZERO32, ZERO32)
EMPTY_CHUNK = ([], [])
SCORES = keccak(b"scores")


@contextlib.contextmanager
def reverts(reason: str):
    """The block must revert with exactly `reason`."""
    with pytest.raises(ContractRevert) as info:
        yield info
    assert info.value.reason == reason, f"reverted with {info.value.reason!r}, expected {reason!r}"


def events(receipt, name: str) -> list:
    return [e for e in receipt.events if e.name == name]


def sort_accounts(accounts) -> list:
    return sorted(accounts, key=lambda a: address_key(a.address if hasattr(a, "address") else a))


def pool_of(escrow: int = ESCROW, miss_bps: int = R.BPS, gate_met: bool = True) -> int:
    return R.pool(escrow, FEE_BPS, miss_bps, gate_met)


# ---------------------------------------------------------------- test-only contracts


@functools.cache
def compile_harness(name: str) -> tuple:
    """(ABI, bytecode) of `harness/<name>.vy`, a contract the tests compile against the modules."""
    from vyper.cli.vyper_compile import compile_files
    from vyper.compiler.settings import OptimizationLevel, Settings

    from fedmarket.chain import artifacts
    from fedmarket.chain.abi import ContractABI

    path = Path(__file__).parent / "harness" / f"{name}.vy"
    out = compile_files([str(path)], ["abi", "bytecode"], paths=[str(artifacts.contracts_dir())],
                        settings=Settings(optimize=OptimizationLevel.GAS, evm_version=artifacts.EVM_VERSION))
    compiled = next(iter(out.values()))
    return ContractABI(compiled["abi"]), bytes.fromhex(compiled["bytecode"].removeprefix("0x"))


def deploy_test_contract(chain, deployer, name: str, *args):
    abi, bytecode = compile_harness(name)
    return chain.deploy(deployer, name, abi, bytecode, *args)


# ---------------------------------------------------------------- the world


class Kit:
    """The session deployment and accounts, with jobs driven by hand."""

    def __init__(self, w):
        self.w = w
        self.chain = w["chain"]
        self.dep = w["dep"]
        self.m = self.dep.market
        self.disputes = self.dep.disputes
        self.ra = self.dep.round_arbiter
        self.wa = self.dep.reward_arbiter
        self.token = self.dep.token
        self.deployer = w["deployer"]
        self.treasury = w["treasury"].address
        self.requester = w["requester"]
        self.aggregator = w["aggregator"]
        self.outsider = w["outsider"]
        self.providers = w["providers"]
        self.validators = w["validators"]
        self.chain_id = self.dep.chain_id
        for acct in (self.outsider, self.requester, *self.validators):
            self.approve_bonds(acct)

    def approve_bonds(self, acct) -> None:
        for arbiter in (self.ra, self.wa):
            self.token.transact("approve", arbiter.address, MAX, sender=acct)

    def now(self) -> int:
        return self.chain.timestamp()

    def advance(self, seconds: int) -> None:
        self.chain.advance_time(seconds)

    def balance(self, address) -> int:
        return self.dep.balance(address if isinstance(address, str) else address.address)

    def as_contract(self, address: str) -> Account:
        """An account that sends as `address` (the embedded EVM checks no signature): to call the
        market the way only its judges can."""
        return Account(address, b"")

    def terms(self, **over) -> JobTerms:
        base = {
            "spec_hash": keccak(b"spec"), "aggregator": self.aggregator.address, "escrow": ESCROW, "provider_stake": STAKE,
            "aggregator_stake": AGG_STAKE, "validator_stake": VAL_STAKE, "min_providers": 3, "max_providers": 3,
            "min_validators": 0, "max_validators": 0, "rounds": 2, "per_round": 0, "join_deadline": self.now() + 1_000,
            "round_duration": 500, "challenge_period": 100, "claim_period": 1_000, "response_period": 100, "dispute_bond": BOND,
            "rule": R.Rule.WEIGHTED_MEAN, "trim": 0, "chunk_size": 4, "n_params": 10, "licence_price": 0, "privacy_budget": 0,
            "miss_payout_bps": R.BPS, "aggregator_fee": 0, "validator_fee": 0, "licence_requester_bps": 0,
        }
        base.update(over)
        if base["privacy_budget"] and "noise_multiplier" not in over:  # a private job: the noise its budget allows
            base.setdefault("delta_log", R.delta_log_micro(1e-5))
            base["noise_multiplier"] = R.noise_micro_for(base["privacy_budget"], base["delta_log"], base["rounds"])
        return JobTerms(**base)

    def post(self, sender=None, cid: str = "bafkreispec", **over) -> int:
        receipt = self.m.transact("post_job", self.terms(**over).abi(), cid, sender=sender or self.requester)
        return receipt.event("JobPosted")["job_id"]

    def job(self, n: int = 3, validators: int = 0, start: bool = True, stakes=None, **over) -> Job:
        """A job with `n` providers (the first `n` of the world) and `validators` validators,
        accepted, joined and (by default) started."""
        over.setdefault("min_providers", n)
        over.setdefault("max_providers", max(n, over["min_providers"]))
        over.setdefault("max_validators", validators)
        over.setdefault("min_validators", validators)
        if over.get("rule") == R.Rule.SECURE_SUM and not validators:
            raise ValueError("a secure-sum job needs validators")
        job_id = self.post(**over)
        job = Job(self, job_id, self.terms(**over), self.providers[:n], self.validators[:validators])
        self.m.transact("accept", job_id, sender=self.aggregator)
        for p in job.providers:
            self.m.transact("join", job_id, sender=p)
        for i, v in enumerate(job.validators):
            self.m.transact("join_validator", job_id, (stakes or {}).get(i, job.terms.validator_stake), sender=v)
        if start:
            job.start()
        return job


# ---------------------------------------------------------------- rounds


@dataclass
class Upd:
    """One update as a round's updates tree lists it (what `protocol.proofs` calls a RoundUpdate)."""

    provider: str
    q: np.ndarray
    weight: int
    signature: bytes
    root: bytes


@dataclass
class Round:
    """One committed round, in the clear."""

    index: int
    data: tuple
    updates: list[Upd]  # in committed order
    tree: MerkleTree | None
    model: np.ndarray
    prev_model: np.ndarray
    correction: np.ndarray | None
    receipt: object = None

    @property
    def count(self) -> int:
        return self.data[2]


def big_chunk_root(q: list[int], chunk_size: int) -> bytes:
    """Root of a vector whose values may leave int64 (what `vector_tree` refuses to build)."""
    leaves = []
    for i, s in enumerate(range(0, len(q), chunk_size)):
        leaves.append(double_hash(eth_abi.encode(["uint256", "int256[]"], [i, q[s : s + chunk_size]])))
    return MerkleTree(leaves).root


def big_chunk_tree(q: list[int], chunk_size: int) -> MerkleTree:
    """A tree over chunks of any int256 values (their plain ABI encoding): what an aggregator might
    commit for values the market's int64 leaves cannot hold."""
    leaves = [double_hash(eth_abi.encode(["uint256", "int256[]"], [i, q[s : s + chunk_size]]))
              for i, s in enumerate(range(0, len(q), chunk_size))]
    return MerkleTree(leaves)


class Job:
    """One job driven by hand; every round it commits kept in the clear."""

    def __init__(self, kit: Kit, job_id: int, terms: JobTerms, providers, validators):
        self.kit = kit
        self.id = job_id
        self.terms = terms
        self.providers = list(providers)
        self.validators = list(validators)
        self.rounds: list[Round] = []
        self.acc = RoundAccumulator()
        self.rng = np.random.default_rng(job_id)
        self.start_seed = ZERO32

    # ---- reading
    @property
    def rule(self) -> R.Rule:
        return R.Rule(self.terms.rule)

    @property
    def size(self) -> int:
        return self.terms.chunk_size

    @property
    def n_chunks(self) -> int:
        return -(-self.terms.n_params // self.size)

    @property
    def validated(self) -> bool:
        return self.terms.max_validators > 0

    @property
    def model(self) -> np.ndarray:
        return self.rounds[-1].model if self.rounds else np.zeros(self.terms.n_params, dtype=np.int64)

    def status(self) -> tuple:
        return self.kit.m.call("job_status", self.id)

    def info(self) -> dict:
        return self.kit.dep.job(self.id)

    def membership(self, acct) -> tuple:
        return self.kit.m.call("membership", self.id, acct if isinstance(acct, str) else acct.address)

    def start(self, sender=None):
        receipt = self.kit.m.transact("start", self.id, sender=sender or self.kit.aggregator)
        self.start_seed = receipt.event("TrainingStarted")["seed"]
        return receipt

    def seed(self, r: int) -> bytes:
        return self.start_seed if r == 0 else self.rounds[r - 1].data[6]

    def selected(self, r: int) -> list:
        """The job's providers selected for round `r` (all of them without per_round)."""
        k, n = self.terms.per_round, len(self.providers)
        from fedmarket.protocol.selection import is_selected

        return [p for p in self.providers if is_selected(self.seed(r), self.id, r, p.address, k, n)]

    # ---- building a round
    def sign_receipt(self, signer, r: int, root: bytes, weight: int) -> bytes:
        return UpdateReceipt(self.id, r, root, weight).sign(signer.key, self.kit.chain_id, self.kit.disputes.address)

    def sign_ack(self, r: int, provider: str, root: bytes, weight: int, signer=None) -> bytes:
        signer = signer or self.kit.aggregator
        return ReceiptAck(self.id, r, provider, root, weight).sign(signer.key, self.kit.chain_id, self.kit.disputes.address)

    def update(self, acct, q=None, weight: int = 1, r: int | None = None, signer=None, signed: bool = True) -> Upd:
        """`acct`'s update for round `r` (the next one by default), signed by `signer` (its provider)."""
        r = len(self.rounds) if r is None else r
        if q is None:
            q = self.rng.integers(-60, 61, size=self.terms.n_params)
        q = np.asarray(q, dtype=np.int64)
        root = vector_tree(q, self.size).root
        sig = self.sign_receipt(signer or acct, r, root, weight) if signed else b""
        return Upd(acct.address, q, weight, sig, root)

    def updates(self, accts=None, weights=None, r: int | None = None) -> list[Upd]:
        """Honest updates of `accts` (the providers selected for the round by default)."""
        r = len(self.rounds) if r is None else r
        accts = self.selected(r) if accts is None else accts
        weights = weights or [1 if self.terms.privacy_budget else 3 + 2 * i for i in range(len(accts))]
        return [self.update(a, weight=w, r=r) for a, w in zip(accts, weights)]

    def masked(self, updates: list[Upd]) -> tuple[list[Upd], np.ndarray]:
        """A secure round: each update masked by a random ring element, and the correction that
        removes the masks' sum (the secure-sum rule then gives the plain weighted sum)."""
        masks = [self.rng.integers(-(2**62), 2**62, size=self.terms.n_params, dtype=np.int64) for _ in updates]
        out = []
        r = len(self.rounds)
        for u, mask in zip(updates, masks):
            y = (u.q.view(np.uint64) + mask.view(np.uint64)).view(np.int64)
            acct = next(p for p in self.kit.providers if p.address == u.provider)
            out.append(self.update(acct, q=y, weight=u.weight, r=r))
        corr = np.zeros(self.terms.n_params, dtype=np.uint64)
        for mask in masks:
            corr += mask.view(np.uint64)
        return out, corr.view(np.int64)

    def honest_model(self, updates: list[Upd], correction=None) -> np.ndarray:
        if not updates:
            return self.model.copy()
        return self.model + R.aggregate(self.rule, [u.q for u in updates], [u.weight for u in updates], self.terms.trim,
                                        correction)

    def commit(self, updates=None, model=None, correction=None, sort: bool = True, count=None, epsilon=None,
               updates_root=None, aux_root=None, model_root=None, attest: bool = True, sender=None, shift=None):
        """Commit the next round: by default honest (selected providers' updates, sorted, the rule's
        model; a secure job's updates masked). Every argument overrides one part of it; `shift`
        ({coordinate: steps}) moves the honest model (a wrong aggregate)."""
        r = len(self.rounds)
        if updates is None:
            updates = self.updates()
            if self.rule == R.Rule.SECURE_SUM and correction is None:
                updates, correction = self.masked(updates)
        if self.rule == R.Rule.SECURE_SUM and correction is None:
            correction = np.zeros(self.terms.n_params, dtype=np.int64)
        if sort:
            updates = sorted(updates, key=lambda u: address_key(u.provider))
        prev = self.model
        if model is None:
            model = self.honest_model(updates, correction)
        model = np.array(model, dtype=np.int64)
        for coord, steps in (shift or {}).items():
            model[coord] += steps
        tree = MerkleTree([update_leaf(u.provider, u.root, u.weight) for u in updates]) if updates else None
        if updates_root is None:
            updates_root = tree.root if tree else ZERO32
        if aux_root is None:
            aux_root = vector_tree(correction, self.size).root if correction is not None else ZERO32
        if epsilon is None:
            t = self.terms
            epsilon = R.epsilon_micro(t.noise_multiplier, t.delta_log, r + 1) if t.privacy_budget else 0
        count = len(updates) if count is None else count
        model_root = vector_tree(model, self.size).root if model_root is None else model_root
        metrics = keccak(b"metrics %d %d" % (self.id, r))
        receipt = self.kit.m.transact("submit_round", self.id, r, model_root, updates_root, count, metrics, epsilon,
                                      aux_root, sender=sender or self.kit.aggregator)
        seed = receipt.event("RoundCommitted")["next_seed"]
        data = (model_root, updates_root, count, metrics, epsilon, aux_root, seed)
        self.acc.append(round_commitment(self.id, r, data))
        self.rounds.append(Round(r, data, list(updates), tree, model, prev, correction, receipt))
        if self.validated and attest:
            self.attest(r)
        return receipt

    def commit_all(self, **kw) -> None:
        while len(self.rounds) < self.terms.rounds:
            self.commit(**kw)

    def round_args(self, r: int) -> tuple:
        """(data, proof, prev data, prev proof) as the arbiters' `challenge_*` take them."""
        prev = (self.rounds[r - 1].data, self.acc.proof(r - 1)) if r else (EMPTY_DATA, [])
        return (self.rounds[r].data, self.acc.proof(r), *prev)

    # ---- validators
    def sign_attestation(self, v, r: int, scores=SCORES, model_root=None) -> bytes:
        model_root = self.rounds[r].data[0] if model_root is None else model_root
        return Attestation(self.id, r, model_root, scores).sign(v.key, self.kit.chain_id, self.kit.disputes.address)

    def attest(self, r: int, signers=None, scores=SCORES, sender=None):
        signers = sort_accounts(self.validators if signers is None else signers)
        data, proof, _, _ = self.round_args(r)
        sigs = [self.sign_attestation(v, r, scores) for v in signers]
        return self.kit.disputes.transact("attest", self.id, r, data, proof, scores, [v.address for v in signers], sigs,
                                          sender=sender or self.kit.outsider)

    def reject(self, r: int, signers, sender=None):
        signers = sort_accounts(signers)
        data, proof, _, _ = self.round_args(r)
        sigs = [Rejection(self.id, r, data[0]).sign(v.key, self.kit.chain_id, self.kit.disputes.address) for v in signers]
        return self.kit.disputes.transact("reject", self.id, r, data, proof, [v.address for v in signers], sigs,
                                          sender=sender or self.kit.outsider)

    def slash_provider(self, provider, signers=None, sender=None):
        signers = sort_accounts(self.validators if signers is None else signers)
        sigs = [Misbehaviour(self.id, provider.address).sign(v.key, self.kit.chain_id, self.kit.disputes.address)
                for v in signers]
        return self.kit.disputes.transact("slash_provider", self.id, provider.address, [v.address for v in signers], sigs,
                                          sender=sender or self.kit.outsider)

    def approve(self, statement: tuple, signers=None, sender=None):
        """Validators approve a reward statement (root, total, value total, gate met)."""
        signers = sort_accounts(self.validators if signers is None else signers)
        sigs = [RewardsApproval(self.id, *statement).sign(v.key, self.kit.chain_id, self.kit.disputes.address)
                for v in signers]
        return self.kit.disputes.transact("approve_rewards", self.id, *statement, [v.address for v in signers], sigs,
                                          sender=sender or self.kit.outsider)

    # ---- rewards
    def weight_leaves(self, gate_met: bool = True) -> list[dict]:
        """The weight-basis reward leaves the reward rule asks for (`protocol.rules.leaf_due`),
        from the rounds committed here and the chain's memberships and attestations."""
        rounds = self.terms.rounds
        fees = R.RoleFees.of(self.terms, len(self.validators))
        pool = R.pool(self.terms.escrow, FEE_BPS, self.terms.miss_payout_bps, gate_met, fees.reserved)
        members = []
        for p in self.providers:
            ups = [u for rd in self.rounds for u in rd.updates if u.provider == p.address]
            members.append((p.address, R.Role.PROVIDER, sum(u.weight for u in ups), len(ups)))
        for v in self.validators:
            attested = sum(self.kit.disputes.call("attestation_of", self.id, r, v.address) != ZERO32
                           for r in range(len(self.rounds)))
            members.append((v.address, R.Role.VALIDATOR, 0, attested))
        members.append((self.kit.aggregator.address, R.Role.AGGREGATOR, 0, rounds))
        words = {a: self.membership(a) for a, *_ in members}
        final = R.final_stage(self.info()["challenge_deadline"])
        value_total = sum(value for a, role, value, _ in members
                          if role == R.Role.PROVIDER and not R.cut_before_root(*words[a], final))
        leaves = []
        for a, role, value, activity in sorted(members, key=lambda m: address_key(m[0])):
            amount, delta = R.leaf_due(role, value, activity, rounds, R.Basis.WEIGHT, pool, value_total,
                                       R.cut_before_root(*words[a], final), fees)
            leaves.append({"account": a, "role": int(role), "amount": amount, "reputation_delta": delta, "value": value,
                               "activity": activity})
        return index_leaves(leaves)

    def post_rewards(self, leaves: list[dict], total=None, value_total=None, basis=R.Basis.WEIGHT, gate_met=None,
                     sender=None, cid: str = "bafkreirewards"):
        """Post the root of `leaves` (in their order); returns (tree, receipt)."""
        tree = MerkleTree([reward_leaf_bytes(leaf) for leaf in leaves])
        total = sum(leaf["amount"] for leaf in leaves) if total is None else total
        if value_total is None:
            value_total = sum(leaf["value"] for leaf in leaves if leaf["role"] == R.Role.PROVIDER
                              and not R.cut_before_root(*self.membership(leaf["account"])))
        gate_met = (self.terms.miss_payout_bps == R.BPS) if gate_met is None else gate_met
        receipt = self.kit.m.transact("post_rewards", self.id, tree.root, total, value_total, basis, gate_met, cid,
                                      self.kit.m.call("slashes", self.id), sender=sender or self.kit.aggregator)
        self.leaves, self.tree = leaves, tree
        return tree, receipt

    def claim(self, i: int, sender=None):
        leaf = self.leaves[i]
        return self.kit.m.transact("claim", self.id, i, reward_struct(leaf), self.tree.proof(i),
                                   sender=sender or self.kit.outsider)

    def finalize(self, leaves=None, **kw):
        """Commit the remaining rounds honestly and post `leaves` (the rule's by default)."""
        self.commit_all()
        if self.validated and self.rule != R.Rule.SECURE_SUM and kw.get("basis", R.Basis.WEIGHT) == R.Basis.WEIGHT:
            # the weight basis opens in the last half of the step's deadline
            self.kit.advance(self.terms.round_duration // 2)
        leaves = self.weight_leaves() if leaves is None else leaves
        return self.post_rewards(leaves, **kw)

    def settle(self):
        self.kit.advance(self.terms.challenge_period)
        return self.kit.m.transact("settle", self.id, sender=self.kit.outsider)


def index_leaves(leaves: list[dict]) -> list[dict]:
    return [dict(leaf, index=i) for i, leaf in enumerate(leaves)]


def reward_leaf_bytes(leaf: dict) -> bytes:
    return reward_leaf(leaf["account"], int(leaf["role"]), int(leaf["amount"]), int(leaf["reputation_delta"]),
                       int(leaf["value"]), int(leaf["activity"]))


# ---------------------------------------------------------------- games


def game(arbiter, gid: int) -> dict:
    return arbiter.call("games", gid)


def resolved(receipt) -> dict:
    return receipt.event("GameResolved").args


def ring(claim: list[int], width: int) -> list[int]:
    """A secure claim with its value lanes reduced modulo 2**64."""
    return [c % R.RING if i < width else c for i, c in enumerate(claim)]


class RoundPlayer:
    """Both sides of a round game (aggregate, leaf, inclusion) over a `Job`'s rounds."""

    def __init__(self, job: Job, gid: int, challenger=None, defender=None):
        self.job = job
        self.kit = job.kit
        self.gid = gid
        self.challenger = challenger or self.kit.outsider
        self.defender = defender or self.kit.aggregator
        self.hints: tuple[list[int], list[int]] = ([], [])
        self.delta: list[int] | None = None  # what the defender's claims add to the truth
        self.side = "left"

    @property
    def g(self) -> dict:
        return game(self.kit.ra, self.gid)

    @property
    def chunk(self) -> int:
        """The disputed chunk: the game's target, or where a model walk stands."""
        g = self.g
        return g["lo"] if g["kind"] == R.Game.MODEL else g["target"]

    @property
    def rd(self) -> Round:
        return self.job.rounds[self.g["round"]]

    def send(self, fn: str, *args, sender=None):
        return self.kit.ra.transact(fn, self.gid, *args, sender=sender or self.defender)

    # ---- the truth
    def width(self, chunk: int | None = None) -> int:
        chunk = self.chunk if chunk is None else chunk
        return len(self.job.model[chunk * self.job.size : (chunk + 1) * self.job.size])

    def rows(self, chunk: int) -> np.ndarray:
        s = self.job.size
        rows = [u.q[chunk * s : (chunk + 1) * s] for u in self.rd.updates]
        return np.array(rows, dtype=np.int64).reshape(len(rows), self.width(chunk))

    def truth(self, lo: int, hi: int, hints=None) -> list[int]:
        chunk = self.chunk
        lo_h, hi_h = self.hints if hints is None else hints
        rows = self.rows(chunk)[lo:hi]
        weights = [u.weight for u in self.rd.updates[lo:hi]]
        if len(weights) == 0:
            length = 5 * self.width() if self.job.rule.ranked else self.width() + 1
            return [0] * length
        return R.range_claim(self.job.rule, rows, weights, lo_h, hi_h)

    def true_hints(self) -> tuple[list[int], list[int]]:
        return R.hints(self.job.rule, self.rows(self.chunk), self.job.terms.trim)

    def lie(self) -> tuple[list[int], list[int], list[int]]:
        """(claim, lo hints, hi hints) over the whole round that gives the committed model at the
        disputed chunk, whatever it is: what a defender of a wrong model must claim."""
        chunk, s, rule, w = self.chunk, self.job.size, self.job.rule, self.width()
        prev = self.rd.prev_model[chunk * s : chunk * s + w]
        new = self.rd.model[chunk * s : chunk * s + w]
        step = [int(b) - int(a) for a, b in zip(prev, new)]
        total = sum(u.weight for u in self.rd.updates)
        if rule == R.Rule.WEIGHTED_MEAN:
            return [d * total for d in step] + [total], [], []
        if rule == R.Rule.SECURE_SUM:
            corr = self.rd.correction[chunk * s : chunk * s + w]
            return [(d * total + int(c)) % R.RING for d, c in zip(step, corr)] + [total], [], []
        lr, hr = R.ranks(rule, self.rd.count, self.job.terms.trim)
        claim = []
        for d in step:
            claim += [lr, 1, hr, 1, 0]
        return claim, list(step), list(step)

    # ---- the defender's moves
    def defend_aggregate(self, claim=None, hints=None, lie: bool = False, side: str = "left", **over):
        """The first move: the committed chunks and the claim over the round (true, or `lie()`)."""
        job, rd, chunk, s = self.job, self.rd, self.chunk, self.job.size
        if lie:
            claim, lo_h, hi_h = self.lie()
            self.hints = (lo_h, hi_h)
            truth = self.truth(0, rd.count)
            self.delta = [a - b for a, b in zip(claim, truth)]
            self.side = side
        else:
            self.hints = self.true_hints() if hints is None else hints
            if claim is None:
                claim = self.truth(0, rd.count)
        tree_new = vector_tree(rd.model, s)
        args = {
            "data": rd.data,
            "prev": job.rounds[rd.index - 1].data if rd.index else EMPTY_DATA,
            "prev_chunk": (chunk_list(rd.prev_model, chunk, s), vector_tree(rd.prev_model, s).proof(chunk)) if rd.index else EMPTY_CHUNK,
            "new_chunk": (chunk_list(rd.model, chunk, s), tree_new.proof(chunk)),
            "correction": ((chunk_list(rd.correction, chunk, s), vector_tree(rd.correction, s).proof(chunk))
                        if rd.correction is not None else EMPTY_CHUNK),
            "claim": claim, "lo_hints": self.hints[0], "hi_hints": self.hints[1],
        }
        args.update(over)
        self.hints = (list(args["lo_hints"]), list(args["hi_hints"]))
        return self.send("defend_aggregate", *args.values())

    def claimed(self, lo: int, hi: int) -> list[int]:
        """The defender's claim over [lo, hi): the truth, plus its lie where it put it."""
        out = self.truth(lo, hi)
        if self.delta is not None:
            out = [a + b for a, b in zip(out, self.delta)]
        if self.job.rule == R.Rule.SECURE_SUM:
            out = ring(out, self.width())
        return out

    def split(self, sender=None):
        g = self.g
        lo, hi = g["lo"], g["hi"]
        mid = (lo + hi) // 2
        parent = self.claimed(lo, hi)
        left = self.truth(lo, mid)
        if self.delta is not None and self.side == "left":
            left = [a + b for a, b in zip(left, self.delta)]
        if self.job.rule == R.Rule.SECURE_SUM:
            left = ring(left, self.width())
        return self.send("split", parent, left, sender=sender)

    def opening(self, index: int | None = None) -> tuple:
        """An UpdateOpening of leaf `index` (the game's position) and the leaf before it."""
        index = self.g["lo"] if index is None else index
        rd = self.rd
        u = rd.updates[index]
        if index > 0:
            p = rd.updates[index - 1]
            before = (p.provider, p.root, p.weight, rd.tree.proof(index - 1))
        else:
            before = (ZERO_ADDR, ZERO32, 0, [])
        return (index, u.provider, u.root, u.weight, rd.tree.proof(index), u.signature, *before)

    def defend_update(self, opening=None, chunk=None, claim=None, hints=None, sender=None):
        """The last move: the update at the game's position (and, in an aggregate game, its chunk)."""
        g = self.g
        if g["kind"] == R.Game.LEAF:
            return self.send("defend_update", self.rd.data, opening or self.opening(), EMPTY_CHUNK, [], [], [],
                             sender=sender)
        u = self.rd.updates[g["lo"]]
        c, s = g["target"], self.job.size
        if chunk is None:
            chunk = (chunk_list(u.q, c, s), vector_tree(u.q, s).proof(c))
        claim = self.claimed(g["lo"], g["hi"]) if claim is None else claim
        lo_h, hi_h = self.hints if hints is None else hints
        return self.send("defend_update", self.rd.data, opening or self.opening(), chunk, claim, lo_h, hi_h,
                         sender=sender)

    def defend_inclusion(self, index: int | None = None, sender=None):
        provider = "0x" + self.g["target"].to_bytes(20, "big").hex()
        rd = self.rd
        if index is None:
            index = next(i for i, u in enumerate(rd.updates) if address_key(u.provider) == address_key(provider))
        return self.send("defend_inclusion", rd.data, index, rd.tree.proof(index), sender=sender)

    # ---- a model walk (`challenge_model`)
    def node(self, tree: MerkleTree | None = None) -> tuple[bytes, bytes]:
        """The children of the walk's node in `tree` (the committed model's by default)."""
        g = self.g
        tree = tree or vector_tree(self.rd.model, self.job.size)
        height = (g["hi"] - g["lo"]).bit_length() - 2
        i = g["lo"] >> height
        return tree.layers[height][i], tree.layers[height][i + 1]

    def open_node(self, children=None, tree=None, sender=None):
        return self.send("open_node", *(children or self.node(tree)), sender=sender)

    def walk_to(self, position: int, tree=None):
        """Open nodes and choose, down to `position` of the padded model tree; returns the last receipt."""
        receipt = None
        while self.g["hi"] - self.g["lo"] >= 2:
            self.open_node(tree=tree)
            receipt = self.choose(position >= (self.g["lo"] + self.g["hi"]) // 2)
        assert self.g["lo"] == position
        return receipt

    # ---- the challenger's move
    def choose(self, go_right: bool | None = None, sender=None):
        """The half whose claim is wrong (the right one when the left one is true)."""
        if go_right is None:
            g = self.g
            mid = (g["lo"] + g["hi"]) // 2
            split = self.kit.ra.events("RangeSplit", game_id=self.gid)[-1]
            true_left = self.truth(g["lo"], mid)
            if self.job.rule == R.Rule.SECURE_SUM:
                true_left = ring(true_left, self.width())
            go_right = list(split["left"]) == true_left
        receipt = self.kit.ra.transact("choose", self.gid, go_right, sender=sender or self.challenger)
        if self.delta is not None and go_right != (self.side == "right"):
            self.delta = None  # the game went on in the half the defender told the truth about
        return receipt

    def bisect(self):
        """Split and choose until the game is down to one update."""
        while self.g["hi"] - self.g["lo"] >= 2:
            self.split()
            self.choose()

    def play(self, lie: bool = False, side: str = "left"):
        """An aggregate game played to its last move; returns the last receipt."""
        self.defend_aggregate(lie=lie, side=side)
        if self.g["turn"] == R.Turn.NONE:
            return None
        self.bisect()
        return self.defend_update()

    def timeout(self, sender=None):
        self.kit.advance(self.g["deadline"] - self.kit.now() + 1)
        return self.kit.ra.transact("timeout", self.gid, sender=sender or self.kit.outsider)


def chunk_list(q: np.ndarray, chunk: int, size: int) -> list[int]:
    return [int(v) for v in np.asarray(q).ravel()[chunk * size : (chunk + 1) * size]]


def open_aggregate(job: Job, r: int, chunk: int, challenger=None) -> int:
    receipt = job.kit.ra.transact("challenge_aggregate", job.id, r, chunk, *job.round_args(r),
                                  sender=challenger or job.kit.outsider)
    return receipt.event("GameOpened")["game_id"]


def open_walk(job: Job, r: int, challenger=None) -> int:
    receipt = job.kit.ra.transact("challenge_model", job.id, r, *job.round_args(r), sender=challenger or job.kit.outsider)
    return receipt.event("GameOpened")["game_id"]


def open_leaf(job: Job, r: int, index: int, challenger=None) -> int:
    receipt = job.kit.ra.transact("challenge_leaf", job.id, r, index, *job.round_args(r),
                                  sender=challenger or job.kit.outsider)
    return receipt.event("GameOpened")["game_id"]


def open_inclusion(job: Job, r: int, provider, root: bytes, weight: int, psig=None, asig=None, challenger=None) -> int:
    data, proof, _, _ = job.round_args(r)
    psig = job.sign_receipt(provider, r, root, weight) if psig is None else psig
    asig = job.sign_ack(r, provider.address, root, weight) if asig is None else asig
    receipt = job.kit.ra.transact("challenge_inclusion", job.id, r, data, proof, provider.address, root, weight, psig,
                                  asig, sender=challenger or job.kit.outsider)
    return receipt.event("GameOpened")["game_id"]


# ---------------------------------------------------------------- reward games


class RewardPlayer:
    """Both sides of a reward game (sum, value) over a `Job`'s posted leaves."""

    def __init__(self, job: Job, gid: int, challenger=None, defender=None):
        self.job = job
        self.kit = job.kit
        self.gid = gid
        self.challenger = challenger or self.kit.outsider
        self.defender = defender or self.kit.aggregator
        self.delta: list[int] | None = None
        self.side = "left"

    @property
    def g(self) -> dict:
        return game(self.kit.wa, self.gid)

    def send(self, fn: str, *args, sender=None):
        return self.kit.wa.transact(fn, self.gid, *args, sender=sender or self.defender)

    # ---- reward-sum games
    def counted(self, leaf: dict) -> int:
        word, stage = self.job.membership(leaf["account"])
        return R.counted_value(leaf, word, stage)

    def sum_truth(self, lo: int, hi: int) -> list[int]:
        leaves = self.job.leaves[lo:hi]
        return [sum(self.counted(leaf) for leaf in leaves), sum(int(leaf["amount"]) for leaf in leaves)]

    def sum_claimed(self, lo: int, hi: int) -> list[int]:
        out = self.sum_truth(lo, hi)
        return out if self.delta is None else [a + b for a, b in zip(out, self.delta)]

    def split_sum(self, sender=None):
        g = self.g
        mid = (g["lo"] + g["hi"]) // 2
        if self.delta is None:  # the root's totals may differ from the leaves' sums: put the gap in one half
            posted = [self.job.info()["value_total"], self.job.info()["reward_total"]]
            truth = self.sum_truth(0, len(self.job.leaves))
            self.delta = [a - b for a, b in zip(posted, truth)]
        left = self.sum_truth(g["lo"], mid)
        if self.side == "left":
            left = [a + b for a, b in zip(left, self.delta)]
        return self.send("split", self.sum_claimed(g["lo"], g["hi"]), left, sender=sender)

    def _choose(self, go_right: bool, sender=None):
        receipt = self.kit.wa.transact("choose", self.gid, go_right, sender=sender or self.challenger)
        if self.delta is not None and go_right != (self.side == "right"):
            self.delta = [0, 0]  # the game went on in the half the defender told the truth about
        return receipt

    def choose_leaf(self, target: int, sender=None):
        g = self.g
        return self._choose(target >= (g["lo"] + g["hi"]) // 2, sender)

    def choose_sum(self, sender=None):
        """The half whose claimed sums are not the leaves' (the right one when the left is true)."""
        g = self.g
        mid = (g["lo"] + g["hi"]) // 2
        left = self.kit.wa.events("RangeSplit", game_id=self.gid)[-1]["left"]
        return self._choose(list(left) == self.sum_truth(g["lo"], mid), sender)

    def down_to(self, target: int | None = None) -> None:
        """Bisect a sum game down to leaf `target` (or to the leaf whose sums are wrong)."""
        while self.g["hi"] - self.g["lo"] >= 2:
            self.split_sum()
            if target is None:
                self.choose_sum()
            else:
                self.choose_leaf(target)

    def defend_leaf(self, index: int | None = None, claim=None, leaf=None, proof=None, prev=None, prev_proof=None,
                    sender=None):
        i = self.g["lo"] if index is None else index
        leaves, tree = self.job.leaves, self.job.tree
        claim = self.sum_claimed(i, i + 1) if claim is None else claim
        leaf = reward_struct(leaves[i]) if leaf is None else leaf
        proof = tree.proof(i) if proof is None else proof
        if prev is None:
            prev = reward_struct(leaves[i - 1] if i else leaves[i])
        if prev_proof is None:
            prev_proof = tree.proof(i - 1) if i else []
        return self.send("defend_reward_leaf", claim, leaf, proof, prev, prev_proof, sender=sender)

    # ---- value games
    @property
    def leaf(self) -> dict:
        return self.job.leaves[self.g["target"]]

    def round_value(self, account: str, r: int) -> list[int]:
        """[value, activity] of a member in round `r` (`RewardArbiter.defend_value_round`)."""
        word, _ = self.job.membership(account)
        role = R.role_of(word)
        if role == R.Role.VALIDATOR:
            return [0, int(self.kit.disputes.call("attestation_of", self.job.id, r, account) != ZERO32)]
        if role != R.Role.PROVIDER:
            return [0, 1]
        for u in self.job.rounds[r].updates:
            if u.provider == account:
                return [u.weight, 1]
        return [0, 0]

    def value_truth(self, lo: int, hi: int) -> list[int]:
        parts = [self.round_value(self.leaf["account"], r) for r in range(lo, hi)]
        return [sum(p[0] for p in parts), sum(p[1] for p in parts)]

    def value_claimed(self, lo: int, hi: int) -> list[int]:
        out = self.value_truth(lo, hi)
        return out if self.delta is None else [a + b for a, b in zip(out, self.delta)]

    def open_value(self, leaf=None, proof=None, sender=None):
        i = self.g["target"]
        receipt = self.send("defend_value_root", reward_struct(self.job.leaves[i]) if leaf is None else leaf,
                            self.job.tree.proof(i) if proof is None else proof, sender=sender)
        opened = self.job.leaves[i]
        truth = self.value_truth(0, self.job.terms.rounds)
        self.delta = [int(opened["value"]) - truth[0], int(opened["activity"]) - truth[1]]
        return receipt

    def split_value(self, sender=None):
        g = self.g
        mid = (g["lo"] + g["hi"]) // 2
        left = self.value_truth(g["lo"], mid)
        if self.side == "left":
            left = [a + b for a, b in zip(left, self.delta)]
        return self.send("split", self.value_claimed(g["lo"], g["hi"]), left, sender=sender)

    def choose_value(self, go_right: bool | None = None, sender=None):
        g = self.g
        mid = (g["lo"] + g["hi"]) // 2
        if go_right is None:
            left = self.kit.wa.events("RangeSplit", game_id=self.gid)[-1]["left"]
            go_right = list(left) == self.value_truth(g["lo"], mid)
        receipt = self.kit.wa.transact("choose", self.gid, go_right, sender=sender or self.challenger)
        if go_right != (self.side == "right"):
            self.delta = [0, 0]
        return receipt

    def down_to_round(self, target: int | None = None) -> None:
        while self.g["hi"] - self.g["lo"] >= 2:
            self.split_value()
            if target is None:
                self.choose_value()
            else:
                self.choose_value(target >= (self.g["lo"] + self.g["hi"]) // 2)

    def evidence(self, r: int, account: str | None = None) -> tuple:
        rd = self.job.rounds[r]
        return presence(rd.updates, account or self.leaf["account"], rd.tree)

    def defend_round(self, claim=None, data=None, proof=None, account=None, evidence=None, sender=None):
        r = self.g["lo"]
        account = self.leaf["account"] if account is None else account
        return self.send(
            "defend_value_round",
            self.value_claimed(r, r + 1) if claim is None else claim,
            self.job.rounds[r].data if data is None else data,
            self.job.acc.proof(r) if proof is None else proof,
            account,
            self.evidence(r, account) if evidence is None else evidence,
            sender=sender,
        )

    def timeout(self, sender=None):
        self.kit.advance(self.g["deadline"] - self.kit.now() + 1)
        return self.kit.wa.transact("timeout", self.gid, sender=sender or self.kit.outsider)


def open_rewards(job: Job, challenger=None) -> int:
    receipt = job.kit.wa.transact("challenge_rewards", job.id, sender=challenger or job.kit.outsider)
    return receipt.event("GameOpened")["game_id"]


def open_value(job: Job, index: int, challenger=None) -> int:
    receipt = job.kit.wa.transact("challenge_value", job.id, index, sender=challenger or job.kit.outsider)
    return receipt.event("GameOpened")["game_id"]


def with_leaf(leaves: list[dict], i: int, **over) -> list[dict]:
    out = [dict(leaf) for leaf in leaves]
    out[i].update(over)
    return out


__all__ = [name for name in dir() if not name.startswith("_")] + ["replace", "field", "dataclass"]
