"""Dispute games from both sides (`contracts/modules/game.vy`): the claims a defender must stand
by at every range, and the half a challenger disputes, computed from the chain and the blob
store. The aggregator defends its rounds and reward roots with `Defender`; `Challenger` opens
games and plays the challenger's moves."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..chain import Account, Contract, Receipt
from ..errors import ChainError, ContractRevert, FedMarketError, StorageUnreachable
from ..market import Deployment
from ..protocol import rules as R
from ..protocol.encoding import BAD_INPUT, address_key, vector_tree
from ..protocol.merkle import MerkleTree
from ..protocol.proofs import (
    EMPTY_CHUNK,
    chunk_opening,
    chunk_values,
    presence,
    reward_struct,
    reward_tree,
    update_opening,
)
from ..spec import JobSpec
from ..storage import BlobStore
from .auditor import Auditor, RoundEvidence
from .common import committed_rounds, load_spec, posted_rewards, round_accumulator

ZERO32 = b"\x00" * 32
ROUND_GAMES = (R.Game.AGGREGATE, R.Game.LEAF, R.Game.INCLUSION, R.Game.MODEL)


@dataclass(frozen=True)
class GameState:
    """One game as its arbiter holds it."""

    arbiter: Contract
    gid: int
    job_id: int
    kind: R.Game
    round: int
    target: int
    challenger: str
    defender: str
    lo: int
    hi: int
    claim: bytes
    turn: R.Turn
    deadline: int
    left: bytes = ZERO32  # a model walk's opened children (the node's, before the challenger chooses)
    right: bytes = ZERO32

    @property
    def open(self) -> bool:
        return self.turn != R.Turn.NONE


def arbiter_of(dep: Deployment, kind: int) -> Contract:
    return dep.round_arbiter if R.Game(kind) in ROUND_GAMES else dep.reward_arbiter


def game_state(arbiter: Contract, gid: int) -> GameState:
    g = arbiter.call("games", gid)
    return GameState(arbiter, gid, g["job_id"], R.Game(g["kind"]), g["round"], g["target"], g["challenger"],
                     g["defender"], g["lo"], g["hi"], g["claim"], R.Turn(g["turn"]), g["deadline"], g["left"], g["right"])


def each_move(games: list[GameState], move) -> tuple[list[Receipt], list[tuple[int, str]]]:
    """`move(g)` (a receipt, or None for nothing to do) in every game, one game's failure never
    holding back the others: a revert (someone else's move or timeout landed first) or data that
    cannot be re-derived now is noted as `(game, why)`, and the game's deadline is the next step's to
    meet; a store or node that does not answer is raised, since the next step tries every game
    again. Returns the receipts and the failed moves (which the role processes log)."""
    receipts, failed = [], []
    for g in games:
        try:
            receipt = move(g)
        except ContractRevert as exc:  # (a ChainError: caught first)
            failed.append((g.gid, f"{type(exc).__name__}: {exc}"))
            continue
        except (StorageUnreachable, ChainError):
            raise
        except (FedMarketError, *BAD_INPUT) as exc:
            failed.append((g.gid, f"{type(exc).__name__}: {exc}"))
            continue
        if receipt is not None:
            receipts.append(receipt)
    return receipts, failed


def job_games(dep: Deployment, job_id: int, open_only: bool = True) -> list[GameState]:
    """Every game ever opened on the job (only the unresolved ones by default), oldest first."""
    out = []
    for arbiter in (dep.round_arbiter, dep.reward_arbiter):
        for ev in arbiter.events("GameOpened", job_id=job_id):
            g = game_state(arbiter, ev["game_id"])
            if g.open or not open_only:
                out.append(g)
    return out


def last_claims(g: GameState) -> tuple[list[int], list[int], list[int]]:
    """(root claim, lo hints, hi hints) the defender made, and the pending split's claims, from events."""
    made = g.arbiter.events("ClaimMade", game_id=g.gid)
    if not made:
        raise FedMarketError(f"game {g.gid}: no claim made yet")
    return made[-1]["claim"], made[-1]["lo_hints"], made[-1]["hi_hints"]


def pending_split(g: GameState) -> tuple[list[int], list[int]]:
    splits = [e for e in g.arbiter.events("RangeSplit", game_id=g.gid) if e["lo"] == g.lo and e["hi"] == g.hi]
    if not splits:
        raise FedMarketError(f"game {g.gid}: no split of [{g.lo}, {g.hi}) to choose from")
    return splits[-1]["left"], splits[-1]["right"]


# ---- what is true: the claims an honest defender makes ---------------------------------------


class Truth:
    """The true claims over any range of a job's rounds or reward leaves."""

    def __init__(self, dep: Deployment, store: BlobStore, job_id: int, auditor: Auditor | None = None):
        self.dep = dep
        self.store = store
        self.job_id = job_id
        self.auditor = auditor or Auditor(dep, store)
        self.spec: JobSpec = load_spec(dep, store, job_id)
        self.rounds = committed_rounds(dep, job_id)
        self.acc = round_accumulator(dep, job_id, self.rounds)
        self._trees: dict[tuple[int, bool], MerkleTree] = {}
        self._rewards: tuple[list[dict], dict[str, tuple[int, int]]] | None = None

    def evidence(self, round_: int) -> RoundEvidence:
        return self.auditor.evidence(self.spec, self.job_id, round_, self.rounds)

    def model_tree(self, round_: int, expected: bool = False) -> MerkleTree:
        """The chunk tree of the round's committed model, or (`expected`) of the model its updates give."""
        key = (round_, expected or self.evidence(round_).model is None)
        if key not in self._trees:
            ev = self.evidence(round_)
            model = self.auditor.expected_model(self.spec, ev) if key[1] else ev.model
            self._trees[key] = vector_tree(model, self.spec.quantization.chunk_size)
        return self._trees[key]

    def round_args(self, round_: int) -> tuple:
        """(data, proof, prev data, prev proof) of a committed round, as `challenge_*` take them."""
        c = self.rounds[round_]
        prev = self.rounds[round_ - 1] if round_ else None
        empty = (ZERO32, ZERO32, 0, ZERO32, 0, ZERO32, ZERO32)
        return (c.data, self.acc.proof(round_), prev.data if prev else empty,
                self.acc.proof(round_ - 1) if prev else [])

    def aggregate_claim(self, round_: int, chunk: int, lo: int, hi: int, lo_hints=None, hi_hints=None) -> tuple[list[int], list[int], list[int]]:
        """(claim, lo hints, hi hints) over updates [lo, hi) of a round at a chunk; the hints are the
        round's true order statistics unless given."""
        ev = self.evidence(round_)
        size = self.spec.quantization.chunk_size
        rule = self.spec.rule
        rows = np.array([chunk_values(u.q, chunk, size) for u in ev.updates], dtype=np.int64)
        if rows.size == 0:
            rows = np.zeros((0, len(chunk_values(ev.model, chunk, size))), dtype=np.int64)
        if lo_hints is None:
            lo_hints, hi_hints = R.hints(rule, rows, self.spec.trim)
        weights = [u.weight for u in ev.updates[lo:hi]]
        return R.range_claim(rule, rows[lo:hi], weights, lo_hints, hi_hints), list(lo_hints), list(hi_hints)

    def rewards(self) -> tuple[list[dict], dict[str, tuple[int, int]]]:
        """The posted rewards document's leaves and every member's (role word, stage), its stage
        made relative to the standing root (`STAGE_FINAL` if slashed under it). Read once per Truth
        (a snapshot of the job for one step: a game's claims each read them)."""
        if self._rewards is None:
            leaves = sorted(posted_rewards(self.dep, self.store, self.job_id)["leaves"], key=lambda l: int(l["index"]))
            final = R.final_stage(self.dep.market.call("progress", self.job_id)["challenge_deadline"])
            words = {}
            for leaf in leaves:
                word, stage = self.dep.market.call("membership", self.job_id, leaf["account"])
                words[leaf["account"]] = (int(word), R.relative_stage(stage, final))
            self._rewards = leaves, words
        return self._rewards

    def reward_sum_claim(self, lo: int, hi: int) -> list[int]:
        """[value of unslashed providers, amounts] over reward leaves [lo, hi) of the posted root."""
        leaves, words = self.rewards()
        value = sum(R.counted_value(leaf, *words[leaf["account"]]) for leaf in leaves[lo:hi])
        return [value, sum(int(leaf["amount"]) for leaf in leaves[lo:hi])]

    def round_value(self, account: str, round_: int) -> list[int]:
        """[value, activity] of a member in one round (`RewardArbiter.defend_value_round`)."""
        word, _ = self.dep.market.call("membership", self.job_id, account)
        role = R.role_of(word)
        if role == R.Role.VALIDATOR:
            return [0, int(self.dep.disputes.call("attestation_of", self.job_id, round_, account) != ZERO32)]
        if role != R.Role.PROVIDER:
            return [0, 1]
        for provider, weight in self.auditor.members(self.job_id, round_, self.rounds):
            if provider == account:
                return [weight, 1]
        return [0, 0]

    def value_claim(self, account: str, lo: int, hi: int) -> list[int]:
        parts = [self.round_value(account, r) for r in range(lo, hi)]
        return [sum(p[0] for p in parts), sum(p[1] for p in parts)]


# ---- the defender ------------------------------------------------------------------------------


class Defender:
    """Answers every game of a job that this account defends and that waits for the defender,
    with the true claim: an honest aggregator (or reward poster) always wins its games and takes
    the challenger's bond. Only the defender moves for itself (`game._await`)."""

    def __init__(self, dep: Deployment, account: Account, store: BlobStore, auditor: Auditor | None = None):
        self.dep = dep
        self.account = account
        self.store = store
        self.auditor = auditor or Auditor(dep, store)
        self.failed_moves: list[tuple[int, str]] = []  # (game, why) of the last `respond` (the process logs them)

    def respond(self, job_id: int) -> list[Receipt]:
        """One move in every game of the job whose turn is the defender's; returns the receipts."""
        waiting = [g for g in job_games(self.dep, job_id)
                   if g.turn == R.Turn.DEFENDER and g.defender == self.account.address]
        if not waiting:
            return []
        truth = Truth(self.dep, self.store, job_id, self.auditor)
        # a round game read just before its round was reverted (another game proved it wrong, or the
        # job failed) has nothing left to defend
        live = [g for g in waiting if not (g.kind in ROUND_GAMES and g.round >= len(truth.rounds))]
        out, self.failed_moves = each_move(live, lambda g: self.move(truth, g))
        return out

    def move(self, truth: Truth, g: GameState) -> Receipt:
        send = lambda fn, *args: g.arbiter.transact(fn, g.gid, *args, sender=self.account)
        if g.kind == R.Game.AGGREGATE:
            return self._aggregate(truth, g, send)
        if g.kind == R.Game.MODEL:
            return self._walk(truth, g, send)
        if g.kind == R.Game.LEAF:
            ev = truth.evidence(g.round)
            return send("defend_update", ev.committed.data, update_opening(ev.updates, g.lo, ev.tree), EMPTY_CHUNK, [], [], [])
        if g.kind == R.Game.INCLUSION:
            return self._inclusion(truth, g, send)
        if g.kind == R.Game.REWARD_SUM:
            return self._reward_sum(truth, g, send)
        return self._reward_value(truth, g, send)

    def _aggregate(self, truth: Truth, g: GameState, send) -> Receipt:
        ev = truth.evidence(g.round)
        size = truth.spec.quantization.chunk_size
        if g.claim == ZERO32:
            claim, lo_h, hi_h = truth.aggregate_claim(g.round, g.target, 0, ev.committed.count)
            prev_chunk = chunk_opening(ev.prev_model, g.target, size) if ev.prev else EMPTY_CHUNK
            corr = chunk_opening(ev.correction, g.target, size) if ev.correction is not None else EMPTY_CHUNK
            empty = (ZERO32, ZERO32, 0, ZERO32, 0, ZERO32, ZERO32)
            return send("defend_aggregate", ev.committed.data, ev.prev.data if ev.prev else empty, prev_chunk,
                        chunk_opening(ev.model, g.target, size), corr, claim, lo_h, hi_h)
        _, lo_h, hi_h = last_claims(g)
        if g.hi - g.lo >= 2:
            mid = (g.lo + g.hi) // 2
            parent = truth.aggregate_claim(g.round, g.target, g.lo, g.hi, lo_h, hi_h)[0]
            left = truth.aggregate_claim(g.round, g.target, g.lo, mid, lo_h, hi_h)[0]
            return send("split", parent, left)
        claim = truth.aggregate_claim(g.round, g.target, g.lo, g.hi, lo_h, hi_h)[0]
        u = ev.updates[g.lo]
        return send("defend_update", ev.committed.data, update_opening(ev.updates, g.lo, ev.tree),
                    chunk_opening(u.q, g.target, size), claim, lo_h, hi_h)

    def _walk(self, truth: Truth, g: GameState, send) -> Receipt:
        """A model walk: the children of the disputed node of the committed model tree; at a chunk,
        the aggregate game's first move there; past the last chunk, the zero leaf of the padding."""
        ev = truth.evidence(g.round)
        tree = truth.model_tree(g.round)
        if g.hi - g.lo >= 2:
            left, right = _children(tree, g.lo, g.hi)
            return send("open_node", left, right)
        if g.lo >= tree.n:
            return send("open_node", ZERO32, ZERO32)
        return self._aggregate(truth, replace(g, kind=R.Game.AGGREGATE, target=g.lo, lo=0, hi=ev.committed.count,
                                              claim=ZERO32), send)

    def _inclusion(self, truth: Truth, g: GameState, send) -> Receipt:
        ev = truth.evidence(g.round)
        provider = "0x" + g.target.to_bytes(20, "big").hex()
        for i, u in enumerate(ev.updates):
            if address_key(u.provider) == address_key(provider):
                return send("defend_inclusion", ev.committed.data, i, ev.tree.proof(i))
        raise FedMarketError(f"game {g.gid}: the acknowledged update of {provider} is not in round {g.round}")

    def _reward_sum(self, truth: Truth, g: GameState, send) -> Receipt:
        if g.hi - g.lo >= 2:
            mid = (g.lo + g.hi) // 2
            return send("split", truth.reward_sum_claim(g.lo, g.hi), truth.reward_sum_claim(g.lo, mid))
        leaves, _ = truth.rewards()
        tree = reward_tree(leaves)
        prev = leaves[g.lo - 1] if g.lo else leaves[g.lo]
        return send("defend_reward_leaf", truth.reward_sum_claim(g.lo, g.hi), reward_struct(leaves[g.lo]),
                    tree.proof(g.lo), reward_struct(prev), tree.proof(g.lo - 1) if g.lo else [])

    def _reward_value(self, truth: Truth, g: GameState, send) -> Receipt:
        leaves, _ = truth.rewards()
        leaf = leaves[g.target]
        if g.claim == ZERO32:
            return send("defend_value_root", reward_struct(leaf), reward_tree(leaves).proof(g.target))
        account = leaf["account"]
        if g.hi - g.lo >= 2:
            mid = (g.lo + g.hi) // 2
            return send("split", truth.value_claim(account, g.lo, g.hi), truth.value_claim(account, g.lo, mid))
        ev = truth.evidence(g.lo)
        return send("defend_value_round", truth.value_claim(account, g.lo, g.hi), ev.committed.data,
                    truth.acc.proof(g.lo), account, presence(ev.updates, account, ev.tree))


# ---- the challenger's moves ---------------------------------------------------------------------


def _children(tree: MerkleTree, lo: int, hi: int) -> tuple[bytes, bytes]:
    """The two children of the node of positional `tree` over positions [lo, hi) (a power of two, >= 2)."""
    height = (hi - lo).bit_length() - 2  # the children's level (0: leaves)
    i = lo >> height
    return tree.layers[height][i], tree.layers[height][i + 1]


def choose(truth: Truth, g: GameState) -> bool:
    """True to dispute the right half: the half whose claimed sum is not the true one (the left
    one when both are wrong; the right one when the left is right). In a model walk, the child
    whose opened hash is not the true model's (the left one when both differ)."""
    if g.kind == R.Game.MODEL:
        return _children(truth.model_tree(g.round, expected=True), g.lo, g.hi)[0] == g.left
    left, _ = pending_split(g)
    mid = (g.lo + g.hi) // 2
    if g.kind == R.Game.AGGREGATE:
        _, lo_h, hi_h = last_claims(g)
        true_left = truth.aggregate_claim(g.round, g.target, g.lo, mid, lo_h, hi_h)[0]
    elif g.kind == R.Game.REWARD_SUM:
        true_left = truth.reward_sum_claim(g.lo, mid)
        if list(left) == true_left:
            return True if truth.reward_sum_claim(mid, g.hi) != list(pending_split(g)[1]) else any_bad_leaf(truth, mid, g.hi)
    else:
        leaves, _ = truth.rewards()
        true_left = truth.value_claim(leaves[g.target]["account"], g.lo, mid)
    return list(left) == true_left


def any_bad_leaf(truth: Truth, lo: int, hi: int) -> bool:
    """Whether a posted reward leaf in [lo, hi) breaks the rule (out of order, or an amount or
    value its member's role and stage do not allow): what a sum game ends on when the sums hold."""
    leaves, words = truth.rewards()
    job = truth.dep.job(truth.job_id)
    pool_, vt, rounds, basis = int(job["pool"]), int(job["value_total"]), len(truth.rounds), int(job["basis"])
    fees = R.RoleFees.of(truth.dep.terms(truth.job_id), int(job["n_validators"]))

    def bad(i: int) -> bool:
        leaf = leaves[i]
        out_of_order = i > 0 and address_key(leaves[i - 1]["account"]) >= address_key(leaf["account"])
        return out_of_order or not R.leaf_ok(leaf, *words[leaf["account"]], basis, pool_, vt, rounds, fees=fees)

    return any(bad(i) for i in range(lo, min(hi, len(leaves))))
