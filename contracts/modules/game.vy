# pragma version 0.4.3
"""
@title fedmarket dispute game
@notice The game both arbiters play: storage of games, bonds, turns and deadlines, the
        bisection moves (`split`, `choose`), and resolution. A challenger opens a game with
        the job's dispute bond; the defender must then *show* what it committed (the burden of
        proof is always on it) by splitting every range the challenger disputes in two, down
        to one item it opens on chain. The side that lets its deadline pass loses: a
        defender's loss fails the job (`RoundArbiter`) or rejects the reward root
        (`RewardArbiter`) and slashes it, half to the challenger; a challenger's loss pays its
        bond to the defender. A game on a job that moved on (failed, round reverted, root
        replaced) closes with the bond refunded. `JobMarket.settle` waits for every game.
@license AGPL-3.0-only
"""

from ethereum.ercs import IERC20
from modules import constants as C
from modules import leaves
from modules import rules
from modules import statements as S
from modules import terms as T


interface IMarket:
    def job_status(job_id: uint256) -> (uint256, uint256, uint256, bool, address): view
    def terms(job_id: uint256) -> T.JobTerms: view
    def progress(job_id: uint256) -> T.Progress: view
    def membership(job_id: uint256, account: address) -> (uint256, uint256): view
    def verify_round(job_id: uint256, round: uint256, data: leaves.RoundData, proof: DynArray[bytes32, C.ROUNDS_DEPTH]) -> bool: view
    def fail_proven(job_id: uint256, round: uint256, challenger: address, reason: String[32]): nonpayable
    def reward_fault(job_id: uint256, challenger: address): nonpayable


interface IRules:
    def leaf_claim(rule: uint256, chunk: DynArray[int256, C.MAX_CHUNK], weight: uint256, lo: DynArray[int256, C.MAX_CHUNK], hi: DynArray[int256, C.MAX_CHUNK]) -> DynArray[int256, rules.MAX_CLAIM]: pure
    def root_ok(rule: uint256, count: uint256, trim: uint256, claim: DynArray[int256, rules.MAX_CLAIM], lo: DynArray[int256, C.MAX_CHUNK], hi: DynArray[int256, C.MAX_CHUNK], prev: DynArray[int256, C.MAX_CHUNK], new: DynArray[int256, C.MAX_CHUNK], correction: DynArray[int256, C.MAX_CHUNK]) -> bool: pure


interface IDisputes:
    def attestation_of(job_id: uint256, round: uint256, validator: address) -> bytes32: view


# @dev One game. Claims are kept as hashes; whoever moves re-supplies what they hash.
struct Game:
    job_id: uint256
    kind: uint256
    round: uint256
    target: uint256
    challenger: address
    defender: address
    bond: uint256
    lo: uint256
    hi: uint256
    claim: bytes32
    left: bytes32
    right: bytes32
    subject: bytes32
    context: bytes32
    seed: bytes32
    params: uint256
    turn: uint256
    deadline: uint256


# @dev One chunk of a committed vector, with its Merkle proof under the vector's root.
struct ChunkOpening:
    values: DynArray[int256, C.MAX_CHUNK]
    proof: DynArray[bytes32, C.MAX_CHUNK_PROOF]


# @dev A game opened: who challenges whom over which round (and item), the bond, the first deadline.
event GameOpened:
    game_id: indexed(uint256)
    job_id: indexed(uint256)
    kind: uint256
    round: uint256
    target: uint256
    challenger: indexed(address)
    defender: address
    bond: uint256
    deadline: uint256


event ClaimMade:
    game_id: indexed(uint256)
    lo: uint256
    hi: uint256
    claim: DynArray[int256, rules.MAX_CLAIM]
    lo_hints: DynArray[int256, C.MAX_CHUNK]
    hi_hints: DynArray[int256, C.MAX_CHUNK]


event RangeSplit:
    game_id: indexed(uint256)
    lo: uint256
    hi: uint256
    left: DynArray[int256, rules.MAX_CLAIM]
    right: DynArray[int256, rules.MAX_CLAIM]
    deadline: uint256


event RangeChosen:
    game_id: indexed(uint256)
    lo: uint256
    hi: uint256
    deadline: uint256


event GameResolved:
    game_id: indexed(uint256)
    job_id: indexed(uint256)
    challenger_won: bool
    moot: bool
    reason: String[32]


# @dev Packing of a round game's job parameters (read once, at opening).
P_RULE: constant(uint256) = 0
P_CHUNK: constant(uint256) = 8
P_DP: constant(uint256) = 16
P_TRIM: constant(uint256) = 24
P_PER_ROUND: constant(uint256) = 48
P_PROVIDERS: constant(uint256) = 72
P_PARAMS: constant(uint256) = 96
P_RESPONSE: constant(uint256) = 136
P_ROUNDS: constant(uint256) = 168
MASK24: constant(uint256) = 2**24 - 1
MASK40: constant(uint256) = 2**40 - 1
MASK64: constant(uint256) = 2**64 - 1

# @dev The market whose jobs this contract judges.
MARKET: public(immutable(IMarket))
# @dev The contract whose attestations count (and whose EIP-712 domain every statement uses).
DISPUTES: public(immutable(IDisputes))
# @dev The token of bonds.
TOKEN: public(immutable(IERC20))
# @dev EIP-712 domain separator of the protocol's statements (Disputes' domain).
SEPARATOR: public(immutable(bytes32))
# @dev The pure contract of the aggregation rules (zero for the reward arbiter, which needs none).
RULES: public(immutable(IRules))

# @dev Every game by id; ids are 1, 2, ...
games: public(HashMap[uint256, Game])
# @dev Number of games opened so far.
game_count: public(uint256)
# @dev Games of each job not yet resolved (settlement waits for zero).
open_games: public(HashMap[uint256, uint256])


@deploy
def __init__(market: address, disputes: address, token: IERC20, rules_contract: address):
    """
    @notice Deploys the arbiter for one market.
    @param market The job market.
    @param disputes The disputes contract (attestations; the statements' EIP-712 domain).
    @param token The market's token (bonds are paid in it).
    @param rules_contract The pure contract of the aggregation rules.
    """
    assert market != empty(address) and disputes != empty(address), "arbiter: zero address"
    MARKET = IMarket(market)
    DISPUTES = IDisputes(disputes)
    TOKEN = token
    SEPARATOR = S._separator(chain.id, disputes)
    RULES = IRules(rules_contract)


@internal
def _open(job_id: uint256, kind: uint256, round: uint256, target: uint256, defender: address, params: uint256) -> uint256:
    """Creates a game, pulls the challenger's bond, and gives the defender the first move."""
    t: T.JobTerms = staticcall MARKET.terms(job_id)
    state: uint256 = 0
    current: uint256 = 0
    deadline: uint256 = 0
    quorum: bool = False
    aggregator: address = empty(address)
    state, current, deadline, quorum, aggregator = staticcall MARKET.job_status(job_id)
    if state == C.FINALIZING:
        # the challenge window bounds when games open, so settlement cannot be put off for ever
        assert block.timestamp < (staticcall MARKET.progress(job_id)).challenge_deadline, "arbiter: challenge window over"
    gid: uint256 = self.game_count + 1
    self.game_count = gid
    deadline = block.timestamp + t.response_period
    self.games[gid].job_id = job_id
    self.games[gid].kind = kind
    self.games[gid].round = round
    self.games[gid].target = target
    self.games[gid].challenger = msg.sender
    self.games[gid].defender = defender
    self.games[gid].bond = t.dispute_bond
    self.games[gid].params = params
    self.games[gid].turn = C.TURN_DEFENDER
    self.games[gid].deadline = deadline
    self.open_games[job_id] += 1
    assert extcall TOKEN.transferFrom(msg.sender, self, t.dispute_bond, default_return_value=True), "arbiter: bond transfer failed"
    log GameOpened(
        game_id=gid, job_id=job_id, kind=kind, round=round, target=target, challenger=msg.sender,
        defender=defender, bond=t.dispute_bond, deadline=deadline,
    )
    return gid


@view
@internal
def _round_params(job_id: uint256) -> uint256:
    """The job parameters a round game needs, packed into one word."""
    t: T.JobTerms = staticcall MARKET.terms(job_id)
    n: uint256 = (staticcall MARKET.progress(job_id)).n_providers
    dp: uint256 = 1 if t.privacy_budget > 0 else 0
    return (
        t.rule << P_RULE | t.chunk_size << P_CHUNK | dp << P_DP | t.trim << P_TRIM
        | t.per_round << P_PER_ROUND | n << P_PROVIDERS | t.n_params << P_PARAMS
        | t.response_period << P_RESPONSE | t.rounds << P_ROUNDS
    )


@internal
def _turn(gid: uint256, turn: uint256):
    """Hands the move to `turn` with a fresh deadline."""
    self.games[gid].turn = turn
    self.games[gid].deadline = block.timestamp + ((self.games[gid].params >> P_RESPONSE) & MASK24)


@view
@internal
def _await(gid: uint256, kind: uint256, turn: uint256):
    """A move of `kind`'s game by the side whose turn it is, made by that side itself (a move
    made for the other side would bind it to a claim it never made), before the deadline."""
    assert self.games[gid].kind == kind, "arbiter: wrong game kind"
    assert self.games[gid].turn == turn, "arbiter: not this move's turn"
    mover: address = self.games[gid].challenger
    if turn == C.TURN_DEFENDER:
        mover = self.games[gid].defender
    assert msg.sender == mover, "arbiter: not this side's move"
    assert block.timestamp <= self.games[gid].deadline, "arbiter: move too late"


@external
@nonreentrant
def split(gid: uint256, parent: DynArray[int256, rules.MAX_CLAIM], left: DynArray[int256, rules.MAX_CLAIM]):
    """
    @notice The defender splits the range it claims in two at `(lo + hi) // 2`: the claim over
            the left half is given, the right half's is the rest. Only the defender moves for itself.
    @param gid The game.
    @param parent The claim over the current range (as made before).
    @param left The claim over its left half.
    """
    kind: uint256 = self.games[gid].kind
    assert kind == C.GAME_AGGREGATE or kind == C.GAME_REWARD_SUM or kind == C.GAME_REWARD_VALUE, "arbiter: nothing to split"
    self._await(gid, kind, C.TURN_DEFENDER)
    lo: uint256 = self.games[gid].lo
    hi: uint256 = self.games[gid].hi
    assert hi - lo >= 2 and self.games[gid].claim != empty(bytes32), "arbiter: range cannot be split"
    assert keccak256(abi_encode(parent)) == self.games[gid].claim, "arbiter: not the claimed range"
    assert len(left) == len(parent), "arbiter: bad claim length"
    width: uint256 = 0
    if kind == C.GAME_AGGREGATE and self.games[gid].params & 255 == C.RULE_SECURE_SUM:
        width = len(parent) - 1
    right: DynArray[int256, rules.MAX_CLAIM] = rules._right(width, parent, left)
    self.games[gid].left = keccak256(abi_encode(left))
    self.games[gid].right = keccak256(abi_encode(right))
    self._turn(gid, C.TURN_CHALLENGER)
    log RangeSplit(game_id=gid, lo=lo, hi=hi, left=left, right=right, deadline=self.games[gid].deadline)


@external
@nonreentrant
def choose(gid: uint256, go_right: bool):
    """
    @notice The challenger names the half it disputes; the defender must now defend that half.
    @param gid The game.
    @param go_right True for `[mid, hi)`, false for `[lo, mid)`.
    """
    kind: uint256 = self.games[gid].kind
    self._await(gid, kind, C.TURN_CHALLENGER)
    lo: uint256 = self.games[gid].lo
    hi: uint256 = self.games[gid].hi
    mid: uint256 = (lo + hi) // 2
    if go_right:
        self.games[gid].lo = mid
        self.games[gid].claim = self.games[gid].right
        lo = mid
    else:
        self.games[gid].hi = mid
        self.games[gid].claim = self.games[gid].left
        hi = mid
    self.games[gid].left = empty(bytes32)
    self.games[gid].right = empty(bytes32)
    self._turn(gid, C.TURN_DEFENDER)
    log RangeChosen(game_id=gid, lo=lo, hi=hi, deadline=self.games[gid].deadline)


@external
@nonreentrant
def timeout(gid: uint256):
    """
    @notice Ends a game whose mover let its deadline pass: the defender loses if it was its
            turn, the challenger otherwise. Callable by anyone.
    @param gid The game.
    """
    turn: uint256 = self.games[gid].turn
    assert turn != C.TURN_NONE, "arbiter: game over"
    assert block.timestamp > self.games[gid].deadline, "arbiter: deadline not passed"
    if turn == C.TURN_DEFENDER:
        self._resolve(gid, True, "defender silent")
    else:
        self._resolve(gid, False, "challenger silent")


@external
@nonreentrant
def close_moot(gid: uint256):
    """
    @notice Closes a game the job has outgrown (failed, or the disputed round reverted, or the
            disputed reward root replaced or posted again by another poster), refunding the
            challenger's bond. Callable by anyone.
    @param gid The game.
    """
    assert self.games[gid].turn != C.TURN_NONE, "arbiter: game over"
    assert self._moot(gid), "arbiter: game still live"
    self._close(gid, self.games[gid].challenger, False, True, "moot")


@view
@internal
def _moot(gid: uint256) -> bool:
    job_id: uint256 = self.games[gid].job_id
    state: uint256 = 0
    current: uint256 = 0
    deadline: uint256 = 0
    quorum: bool = False
    aggregator: address = empty(address)
    state, current, deadline, quorum, aggregator = staticcall MARKET.job_status(job_id)
    kind: uint256 = self.games[gid].kind
    if kind == C.GAME_REWARD_SUM or kind == C.GAME_REWARD_VALUE:
        # a game is against one posting: the root, and the poster who must defend it (a root
        # discarded and posted again by another poster leaves the old game moot, not revived)
        p: T.Progress = staticcall MARKET.progress(job_id)
        return state != C.FINALIZING or p.reward_root != self.games[gid].subject or p.poster != self.games[gid].defender
    return (state != C.TRAINING and state != C.FINALIZING) or self.games[gid].round >= current


@internal
def _resolve(gid: uint256, challenger_won: bool, reason: String[32]):
    """Pays out a finished game; a proven fault fails the job or rejects the reward root."""
    if self._moot(gid):
        self._close(gid, self.games[gid].challenger, challenger_won, True, reason)
        return
    if not challenger_won:
        self._close(gid, self.games[gid].defender, False, False, reason)
        return
    job_id: uint256 = self.games[gid].job_id
    challenger: address = self.games[gid].challenger
    kind: uint256 = self.games[gid].kind
    self._close(gid, challenger, True, False, reason)
    if kind == C.GAME_REWARD_SUM or kind == C.GAME_REWARD_VALUE:
        extcall MARKET.reward_fault(job_id, challenger)
    elif kind == C.GAME_INCLUSION:
        extcall MARKET.fail_proven(job_id, self.games[gid].round, challenger, "censored update")
    else:
        extcall MARKET.fail_proven(job_id, self.games[gid].round, challenger, "round fault proven")


@internal
def _close(gid: uint256, payee: address, challenger_won: bool, moot: bool, reason: String[32]):
    job_id: uint256 = self.games[gid].job_id
    bond: uint256 = self.games[gid].bond
    self.games[gid].turn = C.TURN_NONE
    self.games[gid].bond = 0
    self.open_games[job_id] -= 1
    if bond > 0:
        assert extcall TOKEN.transfer(payee, bond, default_return_value=True), "arbiter: bond transfer failed"
    log GameResolved(game_id=gid, job_id=job_id, challenger_won=challenger_won, moot=moot, reason=reason)
