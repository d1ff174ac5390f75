# pragma version 0.4.3
# pragma evm-version cancun
"""
@title fedmarket reward arbiter
@notice Disputes over a posted reward root, each a game of `modules/game.vy`:
        - `challenge_rewards`: the poster bisects the root's totals (value of unslashed
          providers, amounts) over the reward leaves down to one leaf, which must be a
          member's, in account order, and follow the reward rule (`_leaf_ok`).
        - `challenge_value` (weight basis): the poster bisects one leaf's value and activity
          over the job's rounds down to one round, where it shows what the member did: a
          provider's update weight (or the gap where it would sit), a validator's
          attestation, the aggregator's commit.
        A poster's loss rejects the root and slashes the poster; the job then awaits a new one.
@license AGPL-3.0-only
"""

from ethereum.ercs import IERC20
from modules import constants as C
from modules import leaves
from modules import rules
from modules import statements as S
from modules import terms as T
from modules import game

initializes: game

exports: (
    game.split,
    game.choose,
    game.timeout,
    game.close_moot,
    game.games,
    game.game_count,
    game.open_games,
    game.MARKET,
    game.DISPUTES,
    game.TOKEN,
    game.SEPARATOR,
)


# @dev Where a provider stands in a round's updates tree: its leaf, or the leaves around the gap.
struct Presence:
    included: bool
    index: uint256
    update_root: bytes32
    weight: uint256
    proof: DynArray[bytes32, C.MAX_CHUNK_PROOF]
    below: address
    below_root: bytes32
    below_weight: uint256
    below_proof: DynArray[bytes32, C.MAX_CHUNK_PROOF]
    above: address
    above_root: bytes32
    above_weight: uint256
    above_proof: DynArray[bytes32, C.MAX_CHUNK_PROOF]


@deploy
def __init__(market: address, disputes: address, token: IERC20):
    """
    @notice Deploys the arbiter for one market.
    @param market The job market.
    @param disputes The disputes contract (attestations; the statements' EIP-712 domain).
    @param token The market's token (bonds are paid in it).
    """
    game.__init__(market, disputes, token, empty(address))


@external
@nonreentrant
def challenge_rewards(job_id: uint256) -> uint256:
    """
    @notice Disputes a posted reward root as a whole: the poster must bisect its totals (value
            of unslashed providers, amounts) down to one leaf, which must follow the reward rule.
    @param job_id The job (finalizing).
    @return The game id.
    """
    p: T.Progress = self._finalizing(job_id)
    gid: uint256 = game._open(job_id, C.GAME_REWARD_SUM, 0, 0, p.poster, game._round_params(job_id))
    game.games[gid].hi = p.n_providers + p.n_validators + 1
    game.games[gid].subject = p.reward_root
    totals: DynArray[int256, rules.MAX_CLAIM] = [convert(p.value_total, int256), convert(p.reward_total, int256)]
    game.games[gid].claim = keccak256(abi_encode(totals))
    return gid


@external
@nonreentrant
def challenge_value(job_id: uint256, index: uint256) -> uint256:
    """
    @notice Disputes the value and activity of reward leaf `index` of a weight-basis root: the
            poster must open the leaf and bisect them over the job's rounds down to one round.
    @param job_id The job (finalizing, weight basis).
    @param index The reward leaf.
    @return The game id.
    """
    p: T.Progress = self._finalizing(job_id)
    assert p.basis == C.BASIS_WEIGHT, "arbiter: scores basis is approved by validators"
    assert index < p.n_providers + p.n_validators + 1, "arbiter: no such leaf"
    gid: uint256 = game._open(job_id, C.GAME_REWARD_VALUE, index, index, p.poster, game._round_params(job_id))
    game.games[gid].subject = p.reward_root
    return gid


@view
@internal
def _finalizing(job_id: uint256) -> T.Progress:
    state: uint256 = 0
    current: uint256 = 0
    deadline: uint256 = 0
    quorum: bool = False
    aggregator: address = empty(address)
    state, current, deadline, quorum, aggregator = staticcall game.MARKET.job_status(job_id)
    assert state == C.FINALIZING, "arbiter: no reward root to dispute"
    return staticcall game.MARKET.progress(job_id)


@view
@internal
def _leaf_ok(job_id: uint256, leaf: leaves.RewardLeaf, basis: uint256, pool: uint256, value_total: uint256, rounds: uint256, final: uint256, n_validators: uint256) -> bool:
    """Whether a reward leaf follows the reward rule for the member it names (`final`: the stage
    of a slash made under the standing root, STAGE_FINAL plus its challenge deadline)."""
    role: uint256 = 0
    stage: uint256 = 0
    role, stage = staticcall game.MARKET.membership(job_id, leaf.account)
    if role & C.ROLE_MASK == 0 or role & C.ROLE_MASK != leaf.role:
        return False  # every leaf is a member's, in its own role
    if leaf.activity > rounds or leaf.value > C.MAX_AMOUNT:
        return False
    cut: bool = role & C.SLASHED != 0 and stage != final  # slashed before the root was posted
    r: int256 = convert(rounds, int256)
    a: int256 = convert(leaf.activity, int256)
    if cut:
        return leaf.amount == 0 and leaf.reputation_delta == -max(a, 1)
    t: T.JobTerms = staticcall game.MARKET.terms(job_id)
    if leaf.role == C.ROLE_PROVIDER:
        # the providers share what the roles' reserved fees leave of the pool
        due: uint256 = 0
        if value_total > 0:
            due = (pool - T._reserved(t, n_validators)) * leaf.value // value_total
        return leaf.amount == due and leaf.reputation_delta == a
    if leaf.value != 0:
        return False
    if leaf.role == C.ROLE_VALIDATOR:
        if leaf.amount != t.validator_fee * leaf.activity:
            return False  # a fee per attestation of the committed model
    elif leaf.amount != t.aggregator_fee * rounds:
        return False  # a fee per committed round
    if basis == C.BASIS_SCORES:
        return leaf.reputation_delta >= -r and leaf.reputation_delta <= r  # the validators' judgement
    if leaf.role == C.ROLE_VALIDATOR:
        return leaf.reputation_delta == 2 * a - r
    return leaf.activity == rounds and leaf.reputation_delta == r


@external
@nonreentrant
def defend_reward_leaf(
    gid: uint256,
    claim: DynArray[int256, rules.MAX_CLAIM],
    leaf: leaves.RewardLeaf,
    proof: DynArray[bytes32, C.MAX_CHUNK_PROOF],
    prev: leaves.RewardLeaf,
    prev_proof: DynArray[bytes32, C.MAX_CHUNK_PROOF],
):
    """
    @notice The poster's last move in a reward-sum game: the one leaf the game came down to,
            after the previous leaf in account order, following the reward rule, and giving
            exactly the claim made for it. The challenger's bond goes to the poster.
    @param gid The game.
    @param claim The claim over this leaf: [value if an unslashed provider's, else 0; amount].
    @param leaf The reward leaf at the game's position.
    @param proof Its proof in the reward root.
    @param prev The leaf before it (ignored for leaf 0).
    @param prev_proof Its proof.
    """
    game._await(gid, C.GAME_REWARD_SUM, C.TURN_DEFENDER)
    lo: uint256 = game.games[gid].lo
    n: uint256 = game.games[gid].hi
    assert n == lo + 1, "arbiter: not down to one leaf"
    assert keccak256(abi_encode(claim)) == game.games[gid].claim, "arbiter: not the claimed leaf"
    job_id: uint256 = game.games[gid].job_id
    p: T.Progress = staticcall game.MARKET.progress(job_id)
    n_leaves: uint256 = p.n_providers + p.n_validators + 1
    root: bytes32 = game.games[gid].subject
    assert leaves._verify(leaves._reward_leaf(leaf), lo, n_leaves, proof, root), "arbiter: leaf not in the root"
    if lo > 0:
        assert leaves._verify(leaves._reward_leaf(prev), lo - 1, n_leaves, prev_proof, root), "arbiter: previous leaf not in the root"
        assert convert(prev.account, uint256) < convert(leaf.account, uint256), "arbiter: leaves out of order"
    rounds: uint256 = (game.games[gid].params >> game.P_ROUNDS) & 65_535
    final: uint256 = C.STAGE_FINAL + p.challenge_deadline
    assert self._leaf_ok(job_id, leaf, p.basis, p.pool, p.value_total, rounds, final, p.n_validators), "arbiter: leaf breaks the reward rule"
    role: uint256 = 0
    stage: uint256 = 0
    role, stage = staticcall game.MARKET.membership(job_id, leaf.account)
    counted: int256 = 0
    if role == C.ROLE_PROVIDER or (role == C.ROLE_PROVIDER | C.SLASHED and stage == final):
        counted = convert(leaf.value, int256)
    assert len(claim) == 2 and claim[0] == counted and claim[1] == convert(leaf.amount, int256), "arbiter: leaf does not give the claim"
    game._resolve(gid, False, "reward leaf shown")


@external
@nonreentrant
def defend_value_root(gid: uint256, leaf: leaves.RewardLeaf, proof: DynArray[bytes32, C.MAX_CHUNK_PROOF]):
    """
    @notice The poster's first move in a value game: it opens the disputed leaf, whose value
            and activity it must then bisect over the job's rounds.
    @param gid The game.
    @param leaf The reward leaf.
    @param proof Its proof in the reward root.
    """
    game._await(gid, C.GAME_REWARD_VALUE, C.TURN_DEFENDER)
    assert game.games[gid].claim == empty(bytes32), "arbiter: leaf already opened"
    p: T.Progress = staticcall game.MARKET.progress(game.games[gid].job_id)
    index: uint256 = game.games[gid].target
    assert leaves._verify(leaves._reward_leaf(leaf), index, p.n_providers + p.n_validators + 1, proof, game.games[gid].subject), "arbiter: leaf not in the root"
    rounds: uint256 = (game.games[gid].params >> game.P_ROUNDS) & 65_535
    claim: DynArray[int256, rules.MAX_CLAIM] = [convert(leaf.value, int256), convert(leaf.activity, int256)]
    game.games[gid].claim = keccak256(abi_encode(claim))
    game.games[gid].context = keccak256(abi_encode(leaf.account))
    game.games[gid].hi = rounds
    log game.ClaimMade(game_id=gid, lo=0, hi=rounds, claim=claim, lo_hints=[], hi_hints=[])
    game._turn(gid, C.TURN_DEFENDER)


@view
@internal
def _presence(job_id: uint256, round: uint256, data: leaves.RoundData, provider: address, e: Presence) -> (uint256, uint256):
    """(weight, 1) of `provider`'s update in the round, or (0, 0) when `e` shows the gap where it
    would sit; reverts if `e` shows neither."""
    if e.included:
        assert leaves._verify(leaves._update_leaf(provider, e.update_root, e.weight), e.index, data.count, e.proof, data.updates_root), "arbiter: update not in the round"
        return e.weight, 1
    p: uint256 = convert(provider, uint256)
    if data.count == 0:
        return 0, 0
    # `below` is leaf index-1 (none when index == 0), `above` is leaf index (none when index == count)
    assert e.index <= data.count, "arbiter: bad gap"
    if e.index > 0:
        assert leaves._verify(leaves._update_leaf(e.below, e.below_root, e.below_weight), e.index - 1, data.count, e.below_proof, data.updates_root), "arbiter: gap not committed"
        assert convert(e.below, uint256) < p, "arbiter: not a gap"
    if e.index < data.count:
        assert leaves._verify(leaves._update_leaf(e.above, e.above_root, e.above_weight), e.index, data.count, e.above_proof, data.updates_root), "arbiter: gap not committed"
        assert p < convert(e.above, uint256), "arbiter: not a gap"
    return 0, 0


@external
@nonreentrant
def defend_value_round(
    gid: uint256,
    claim: DynArray[int256, rules.MAX_CLAIM],
    data: leaves.RoundData,
    proof: DynArray[bytes32, C.ROUNDS_DEPTH],
    account: address,
    evidence: Presence,
):
    """
    @notice The poster's last move in a value game: the one round the game came down to, and
            what the member did in it: a provider's update weight (or the gap where it would
            sit), a validator's attestation, the aggregator's commit. It must give the claim.
    @param gid The game.
    @param claim The claim over this round: [value, activity].
    @param data The round's commitment in the clear.
    @param proof Its proof in the market's round accumulator.
    @param account The leaf's account (as opened); its role is the one it holds in the job.
    @param evidence A provider's presence in the round (ignored for other roles).
    """
    game._await(gid, C.GAME_REWARD_VALUE, C.TURN_DEFENDER)
    round: uint256 = game.games[gid].lo
    assert game.games[gid].hi == round + 1, "arbiter: not down to one round"
    assert keccak256(abi_encode(claim)) == game.games[gid].claim, "arbiter: not the claimed round"
    assert keccak256(abi_encode(account)) == game.games[gid].context, "arbiter: not the opened leaf"
    job_id: uint256 = game.games[gid].job_id
    role: uint256 = 0
    stage: uint256 = 0
    role, stage = staticcall game.MARKET.membership(job_id, account)
    role &= C.ROLE_MASK
    assert staticcall game.MARKET.verify_round(job_id, round, data, proof), "arbiter: round data not committed"
    value: uint256 = 0
    active: uint256 = 1
    if role == C.ROLE_PROVIDER:
        value, active = self._presence(job_id, round, data, account, evidence)
    elif role == C.ROLE_VALIDATOR:
        if staticcall game.DISPUTES.attestation_of(job_id, round, account) == empty(bytes32):
            active = 0
    assert len(claim) == 2 and claim[0] == convert(value, int256) and claim[1] == convert(active, int256), "arbiter: round does not give the claim"
    game._resolve(gid, False, "round shown")
