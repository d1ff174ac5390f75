# pragma version 0.4.3
# pragma evm-version cancun
"""
@title fedmarket round arbiter
@notice Disputes over what an aggregator committed in a round, each a game of
        `modules/game.vy` whose every step is bounded whatever the number of updates:
        - `challenge_aggregate` (round, chunk): the aggregator claims the rule's additive sum
          over the round's updates at that chunk, consistent with the committed model
          (checked once, `modules/rules.vy`), then splits every range the challenger picks,
          down to one update, which it must open: the committed leaf, its provider's signed
          receipt, its membership and selection, its order after the previous leaf, the chunk.
        - `challenge_model` (round): the same game for a challenger that cannot see the
          committed model (the aggregator withholds it): the aggregator opens the model tree
          node by node down the path the challenger picks (`open_node`, `choose`) to one
          chunk, and the game goes on there as an aggregate game.
        - `challenge_leaf` (round, index): the aggregator opens one leaf and shows it valid, so
          a malformed or unavailable commitment is its loss, never a shield.
        - `challenge_inclusion`: a provider's receipt countersigned by the aggregator; the
          aggregator must show that update in the round (censorship otherwise).
        A defender's loss reverts the job to before the round, fails it and slashes the aggregator.
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
    game.RULES,
)


# @dev One committed update, opened at its position, with the leaf before it (its order).
struct UpdateOpening:
    index: uint256
    provider: address
    update_root: bytes32
    weight: uint256
    proof: DynArray[bytes32, C.MAX_CHUNK_PROOF]
    signature: Bytes[65]
    prev_provider: address
    prev_update_root: bytes32
    prev_weight: uint256
    prev_proof: DynArray[bytes32, C.MAX_CHUNK_PROOF]


event NodeOpened:
    game_id: indexed(uint256)
    lo: uint256
    hi: uint256
    left: bytes32
    right: bytes32
    deadline: uint256


@deploy
def __init__(market: address, disputes: address, token: IERC20, rules_contract: address):
    """
    @notice Deploys the arbiter for one market.
    @param market The job market.
    @param disputes The disputes contract (attestations; the statements' EIP-712 domain).
    @param token The market's token (bonds are paid in it).
    @param rules_contract The pure contract of the aggregation rules.
    """
    game.__init__(market, disputes, token, rules_contract)


@view
@internal
def _committed(job_id: uint256, round: uint256, data: leaves.RoundData, proof: DynArray[bytes32, C.ROUNDS_DEPTH]) -> (address, bytes32):
    """Checks a disputable round's data; returns (aggregator, the round's commitment)."""
    state: uint256 = 0
    current: uint256 = 0
    deadline: uint256 = 0
    quorum: bool = False
    aggregator: address = empty(address)
    state, current, deadline, quorum, aggregator = staticcall game.MARKET.job_status(job_id)
    assert state == C.TRAINING or state == C.FINALIZING, "arbiter: job not disputable"
    assert staticcall game.MARKET.verify_round(job_id, round, data, proof), "arbiter: round data not committed"
    return aggregator, leaves._round_commitment(job_id, round, data)


@view
@internal
def _seed(job_id: uint256, round: uint256, prev: leaves.RoundData, prev_proof: DynArray[bytes32, C.ROUNDS_DEPTH]) -> bytes32:
    """The seed that selected round `round`'s providers: fixed at the start for round 0, else the
    next seed the previous round committed."""
    if round == 0:
        return (staticcall game.MARKET.progress(job_id)).start_seed
    assert staticcall game.MARKET.verify_round(job_id, round - 1, prev, prev_proof), "arbiter: previous round not committed"
    return prev.next_seed


@external
@nonreentrant
def challenge_aggregate(
    job_id: uint256,
    round: uint256,
    chunk: uint256,
    data: leaves.RoundData,
    proof: DynArray[bytes32, C.ROUNDS_DEPTH],
    prev: leaves.RoundData,
    prev_proof: DynArray[bytes32, C.ROUNDS_DEPTH],
) -> uint256:
    """
    @notice Disputes chunk `chunk` of round `round`'s model, with the job's dispute bond.
            The aggregator must answer with its claim over the round's updates.
    @param job_id The job.
    @param round A committed round.
    @param chunk A chunk index of the model.
    @param data The round's commitment in the clear.
    @param proof Its proof in the market's round accumulator.
    @param prev The previous round's commitment (ignored at round 0).
    @param prev_proof Its proof (empty at round 0).
    @return The game id.
    """
    return self._open_round_game(C.GAME_AGGREGATE, job_id, round, chunk, data, proof, prev, prev_proof)


@external
@nonreentrant
def challenge_model(
    job_id: uint256,
    round: uint256,
    data: leaves.RoundData,
    proof: DynArray[bytes32, C.ROUNDS_DEPTH],
    prev: leaves.RoundData,
    prev_proof: DynArray[bytes32, C.ROUNDS_DEPTH],
) -> uint256:
    """
    @notice Disputes round `round`'s model without naming a chunk, with the job's dispute bond:
            for a challenger that re-derived the round's model but cannot see the committed
            one (the aggregator withholds it). The aggregator opens the committed model tree
            node by node (`open_node`, its root first) down the path the challenger picks
            (`choose`) to one chunk, and then defends that chunk as in `challenge_aggregate`.
            A defender that cannot open a node loses (`timeout`).
    @param job_id The job.
    @param round A committed round.
    @param data The round's commitment in the clear.
    @param proof Its proof in the market's round accumulator.
    @param prev The previous round's commitment (ignored at round 0).
    @param prev_proof Its proof (empty at round 0).
    @return The game id.
    """
    return self._open_round_game(C.GAME_MODEL, job_id, round, 0, data, proof, prev, prev_proof)


@internal
def _open_round_game(
    kind: uint256,
    job_id: uint256,
    round: uint256,
    target: uint256,
    data: leaves.RoundData,
    proof: DynArray[bytes32, C.ROUNDS_DEPTH],
    prev: leaves.RoundData,
    prev_proof: DynArray[bytes32, C.ROUNDS_DEPTH],
) -> uint256:
    """Opens an aggregate game at chunk `target`, a walk (`GAME_MODEL`) over the whole padded model
    tree, or a leaf game at leaf `target`."""
    aggregator: address = empty(address)
    commitment: bytes32 = empty(bytes32)
    aggregator, commitment = self._committed(job_id, round, data, proof)
    seed: bytes32 = self._seed(job_id, round, prev, prev_proof)
    params: uint256 = game._round_params(job_id)
    n_chunks: uint256 = leaves._n_chunks((params >> game.P_PARAMS) & game.MASK40, (params >> game.P_CHUNK) & 255)
    if kind == C.GAME_LEAF:
        assert target < data.count, "arbiter: no such leaf"
    else:
        assert target < n_chunks, "arbiter: no such chunk"
    gid: uint256 = game._open(job_id, kind, round, target, aggregator, params)
    if kind == C.GAME_MODEL:
        game.games[gid].hi = 1 << leaves._depth(n_chunks)
        game.games[gid].claim = data.model_root
    elif kind == C.GAME_LEAF:
        game.games[gid].lo = target
        game.games[gid].hi = target + 1
    else:
        game.games[gid].hi = data.count
    game.games[gid].subject = commitment
    game.games[gid].seed = seed
    if round > 0 and kind != C.GAME_LEAF:  # a leaf game needs no previous model
        game.games[gid].context = leaves._round_commitment(job_id, round - 1, prev)
    return gid


@external
@nonreentrant
def challenge_leaf(
    job_id: uint256,
    round: uint256,
    index: uint256,
    data: leaves.RoundData,
    proof: DynArray[bytes32, C.ROUNDS_DEPTH],
    prev: leaves.RoundData,
    prev_proof: DynArray[bytes32, C.ROUNDS_DEPTH],
) -> uint256:
    """
    @notice Disputes leaf `index` of round `round`'s updates tree: the aggregator must open it
            and show it valid (signed receipt, provider of the job and selected for the round,
            weight in bounds, after the previous leaf in provider order).
    @param job_id The job.
    @param round A committed round.
    @param index A leaf index below the round's count.
    @param data The round's commitment in the clear.
    @param proof Its proof in the market's round accumulator.
    @param prev The previous round's commitment (ignored at round 0).
    @param prev_proof Its proof (empty at round 0).
    @return The game id.
    """
    return self._open_round_game(C.GAME_LEAF, job_id, round, index, data, proof, prev, prev_proof)


@external
@nonreentrant
def challenge_inclusion(
    job_id: uint256,
    round: uint256,
    data: leaves.RoundData,
    proof: DynArray[bytes32, C.ROUNDS_DEPTH],
    provider: address,
    update_root: bytes32,
    weight: uint256,
    provider_signature: Bytes[65],
    aggregator_signature: Bytes[65],
) -> uint256:
    """
    @notice Disputes the omission of an update the aggregator acknowledged: the provider's
            signed receipt and the aggregator's signed acknowledgement of it. The aggregator
            must show that very update in the round (censorship otherwise).
    @param job_id The job.
    @param round A committed round.
    @param data The round's commitment in the clear.
    @param proof Its proof in the market's round accumulator.
    @param provider The provider.
    @param update_root Root of its update.
    @param weight Its weight.
    @param provider_signature Its EIP-712 UpdateReceipt signature.
    @param aggregator_signature The aggregator's EIP-712 ReceiptAck signature of the same receipt.
    @return The game id.
    """
    aggregator: address = empty(address)
    commitment: bytes32 = empty(bytes32)
    aggregator, commitment = self._committed(job_id, round, data, proof)
    assert S._signer(S._receipt(game.SEPARATOR, job_id, round, update_root, weight), provider_signature) == provider, "arbiter: bad provider signature"
    assert S._signer(S._ack(game.SEPARATOR, job_id, round, provider, update_root, weight), aggregator_signature) == aggregator, "arbiter: bad aggregator signature"
    gid: uint256 = game._open(job_id, C.GAME_INCLUSION, round, convert(provider, uint256), aggregator, game._round_params(job_id))
    game.games[gid].hi = data.count
    game.games[gid].subject = commitment
    game.games[gid].context = leaves._update_leaf(provider, update_root, weight)
    return gid


@external
@nonreentrant
def open_node(gid: uint256, left: bytes32, right: bytes32):
    """
    @notice The defender's move in a model walk: the two children of the node of the committed
            model tree the challenger disputes. At a position past the model's last chunk the
            tree holds a zero leaf; the defender shows that (any `left`, `right`) and wins. At a
            chunk, the defender moves with `defend_aggregate` instead.
    @param gid The game.
    @param left The left child's hash.
    @param right The right child's hash.
    """
    game._await(gid, C.GAME_MODEL, C.TURN_DEFENDER)
    if game.games[gid].hi == game.games[gid].lo + 1:
        params: uint256 = game.games[gid].params
        assert game.games[gid].claim == empty(bytes32) and game.games[gid].lo >= leaves._n_chunks((params >> game.P_PARAMS) & game.MASK40, (params >> game.P_CHUNK) & 255), "arbiter: a chunk, not padding"
        game._resolve(gid, False, "padding is zero")
        return
    assert keccak256(concat(left, right)) == game.games[gid].claim, "arbiter: not the disputed node"
    game.games[gid].left = left
    game.games[gid].right = right
    game._turn(gid, C.TURN_CHALLENGER)
    log NodeOpened(game_id=gid, lo=game.games[gid].lo, hi=game.games[gid].hi, left=left, right=right, deadline=game.games[gid].deadline)


@external
@nonreentrant
def defend_aggregate(
    gid: uint256,
    data: leaves.RoundData,
    prev: leaves.RoundData,
    prev_chunk: game.ChunkOpening,
    new_chunk: game.ChunkOpening,
    correction: game.ChunkOpening,
    claim: DynArray[int256, rules.MAX_CLAIM],
    lo_hints: DynArray[int256, C.MAX_CHUNK],
    hi_hints: DynArray[int256, C.MAX_CHUNK],
):
    """
    @notice The defender's first move in an aggregate game (or in a model walk come down to a
            chunk, which goes on as an aggregate game there): the committed chunk of the new
            model, of the previous model (none at round 0) and of a secure round's mask
            correction, and its claim over all of the round's updates, which must turn the
            previous chunk into the new one by the job's rule. Only the defender moves for itself.
    @param gid The game.
    @param data The round's commitment in the clear.
    @param prev The previous round's commitment (ignored at round 0).
    @param prev_chunk The previous model's chunk and its proof (ignored at round 0).
    @param new_chunk The committed model's chunk and its proof.
    @param correction A secure round's correction chunk and its proof (ignored otherwise).
    @param claim The additive claim over the round's updates (see `modules/rules.vy`).
    @param lo_hints Per coordinate, the lowest kept order statistic (median, trimmed mean).
    @param hi_hints Per coordinate, the highest kept order statistic (median, trimmed mean).
    """
    if game.games[gid].kind == C.GAME_MODEL and game.games[gid].hi == game.games[gid].lo + 1:
        # a walk come down to a chunk: an aggregate game there from now on (a walk above one is
        # not an aggregate game yet, and `_await` refuses it)
        game.games[gid].kind = C.GAME_AGGREGATE
        game.games[gid].target = game.games[gid].lo
        game.games[gid].lo = 0
        game.games[gid].hi = data.count
        game.games[gid].claim = empty(bytes32)
    game._await(gid, C.GAME_AGGREGATE, C.TURN_DEFENDER)
    assert game.games[gid].claim == empty(bytes32), "arbiter: claim already made"
    job_id: uint256 = game.games[gid].job_id
    round: uint256 = game.games[gid].round
    chunk: uint256 = game.games[gid].target
    params: uint256 = game.games[gid].params
    assert leaves._round_commitment(job_id, round, data) == game.games[gid].subject, "arbiter: not the disputed round"
    rule: uint256 = params & 255
    chunk_size: uint256 = (params >> game.P_CHUNK) & 255
    n_params: uint256 = (params >> game.P_PARAMS) & game.MASK40
    n_chunks: uint256 = leaves._n_chunks(n_params, chunk_size)
    width: uint256 = leaves._chunk_width(chunk, n_params, chunk_size)
    assert self._opened(new_chunk, chunk, n_chunks, width, data.model_root), "arbiter: model chunk not committed"
    base: DynArray[int256, C.MAX_CHUNK] = []
    if round == 0:
        for c: uint256 in range(width, bound=C.MAX_CHUNK):
            base.append(0)
    else:
        assert leaves._round_commitment(job_id, round - 1, prev) == game.games[gid].context, "arbiter: not the previous round"
        assert self._opened(prev_chunk, chunk, n_chunks, width, prev.model_root), "arbiter: previous chunk not committed"
        base = prev_chunk.values
    if rule == C.RULE_SECURE_SUM:
        assert self._opened(correction, chunk, n_chunks, width, data.aux_root), "arbiter: correction uncommitted"
    assert staticcall game.RULES.root_ok(rule, data.count, (params >> game.P_TRIM) & game.MASK24, claim, lo_hints, hi_hints, base, new_chunk.values, correction.values), "arbiter: claim does not give the model"
    game.games[gid].claim = keccak256(abi_encode(claim))
    game.games[gid].context = keccak256(abi_encode(lo_hints, hi_hints))
    log game.ClaimMade(game_id=gid, lo=0, hi=data.count, claim=claim, lo_hints=lo_hints, hi_hints=hi_hints)
    if data.count == 0:
        game._resolve(gid, False, "empty round keeps the model")
        return
    game._turn(gid, C.TURN_DEFENDER)


@pure
@internal
def _opened(o: game.ChunkOpening, chunk: uint256, n_chunks: uint256, width: uint256, root: bytes32) -> bool:
    """Whether `o` is chunk `chunk` (of `width` values) of the vector committed as `root`."""
    return len(o.values) == width and leaves._verify(leaves._chunk_leaf(chunk, o.values), chunk, n_chunks, o.proof, root)


@view
@internal
def _check_update(gid: uint256, data: leaves.RoundData, o: UpdateOpening):
    """Reverts unless `o` is a valid committed update at its position of the disputed round."""
    job_id: uint256 = game.games[gid].job_id
    round: uint256 = game.games[gid].round
    params: uint256 = game.games[gid].params
    assert leaves._verify(leaves._update_leaf(o.provider, o.update_root, o.weight), o.index, data.count, o.proof, data.updates_root), "arbiter: leaf not committed"
    if o.index > 0:
        assert leaves._verify(leaves._update_leaf(o.prev_provider, o.prev_update_root, o.prev_weight), o.index - 1, data.count, o.prev_proof, data.updates_root), "arbiter: previous leaf not committed"
        assert convert(o.prev_provider, uint256) < convert(o.provider, uint256), "arbiter: leaves out of order"
    assert o.weight >= 1 and o.weight <= C.MAX_WEIGHT, "arbiter: weight out of bounds"
    assert (params >> game.P_DP) & 1 == 0 or o.weight == 1, "arbiter: private update weight not 1"
    assert S._signer(S._receipt(game.SEPARATOR, job_id, round, o.update_root, o.weight), o.signature) == o.provider, "arbiter: no signed receipt"
    role: uint256 = 0
    stage: uint256 = 0
    role, stage = staticcall game.MARKET.membership(job_id, o.provider)
    assert role & C.ROLE_MASK == C.ROLE_PROVIDER, "arbiter: not a provider of the job"
    assert role & C.SLASHED == 0 or round <= stage, "arbiter: slashed before round"
    per_round: uint256 = (params >> game.P_PER_ROUND) & game.MASK24
    if per_round > 0:
        ticket: uint256 = convert(keccak256(abi_encode(game.games[gid].seed, job_id, round, o.provider)), uint256) & game.MASK64
        assert ticket * ((params >> game.P_PROVIDERS) & game.MASK24) < per_round << 64, "arbiter: provider not selected"


@external
@nonreentrant
def defend_update(
    gid: uint256,
    data: leaves.RoundData,
    opening: UpdateOpening,
    chunk: game.ChunkOpening,
    claim: DynArray[int256, rules.MAX_CLAIM],
    lo_hints: DynArray[int256, C.MAX_CHUNK],
    hi_hints: DynArray[int256, C.MAX_CHUNK],
):
    """
    @notice The defender's last move in an aggregate or leaf game: the one update the game came
            down to, valid, and (aggregate games) its chunk giving exactly the claim made for it.
            The challenger's bond goes to the defender.
    @param gid The game.
    @param data The round's commitment in the clear.
    @param opening The update at the game's position, and the one before it.
    @param chunk The update's chunk and its proof (aggregate games).
    @param claim The claim over this one update (aggregate games).
    @param lo_hints The round's low order statistics (median, trimmed mean).
    @param hi_hints The round's high order statistics (median, trimmed mean).
    """
    kind: uint256 = game.games[gid].kind
    assert kind == C.GAME_AGGREGATE or kind == C.GAME_LEAF, "arbiter: no update to open"
    game._await(gid, kind, C.TURN_DEFENDER)
    lo: uint256 = game.games[gid].lo
    assert game.games[gid].hi == lo + 1 and opening.index == lo, "arbiter: not the disputed leaf"
    assert leaves._round_commitment(game.games[gid].job_id, game.games[gid].round, data) == game.games[gid].subject, "arbiter: not the disputed round"
    self._check_update(gid, data, opening)
    if kind == C.GAME_AGGREGATE:
        assert game.games[gid].claim != empty(bytes32), "arbiter: no claim made"
        assert keccak256(abi_encode(claim)) == game.games[gid].claim, "arbiter: not the claimed update"
        assert keccak256(abi_encode(lo_hints, hi_hints)) == game.games[gid].context, "arbiter: not the round's hints"
        params: uint256 = game.games[gid].params
        chunk_size: uint256 = (params >> game.P_CHUNK) & 255
        n_params: uint256 = (params >> game.P_PARAMS) & game.MASK40
        index: uint256 = game.games[gid].target
        assert self._opened(chunk, index, leaves._n_chunks(n_params, chunk_size), leaves._chunk_width(index, n_params, chunk_size), opening.update_root), "arbiter: chunk not in update"
        assert keccak256(abi_encode(staticcall game.RULES.leaf_claim(params & 255, chunk.values, opening.weight, lo_hints, hi_hints))) == game.games[gid].claim, "arbiter: update does not give the claim"
    game._resolve(gid, False, "update shown")


@external
@nonreentrant
def defend_inclusion(gid: uint256, data: leaves.RoundData, index: uint256, proof: DynArray[bytes32, C.MAX_CHUNK_PROOF]):
    """
    @notice The defender shows the acknowledged update in the round: the challenger's bond
            goes to the defender.
    @param gid The game.
    @param data The round's commitment in the clear.
    @param index The update's position in the round's updates tree.
    @param proof Its proof.
    """
    game._await(gid, C.GAME_INCLUSION, C.TURN_DEFENDER)
    assert leaves._round_commitment(game.games[gid].job_id, game.games[gid].round, data) == game.games[gid].subject, "arbiter: not the disputed round"
    assert leaves._verify(game.games[gid].context, index, data.count, proof, data.updates_root), "arbiter: update not in the round"
    game._resolve(gid, False, "update included")
