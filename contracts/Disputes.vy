# pragma version 0.4.3
# pragma evm-version cancun
"""
@title fedmarket disputes
@notice Checks every signed statement and every proof of cheating for the job market:
        validator attestations (EIP-712, quorum by stake), equivocating validators,
        censored updates (a provider's signed receipt countersigned by the aggregator
        but missing from the round), and wrong aggregates (one chunk of one round
        recomputed in integer arithmetic: weighted mean, coordinate median,
        trimmed mean, or the weighted mean of securely aggregated (masked) updates). A proven fault makes the market slash the cheater, pay the
        challenger and, for aggregator faults, revert the round and fail the job.
@license AGPL-3.0-only
"""

from snekmate.utils import ecdsa
from snekmate.utils import eip712_domain_separator as eip712
from snekmate.utils import merkle_proof_verification as merkle

initializes: eip712

exports: eip712.eip712Domain


interface IMarket:
    def round_commitment(job_id: uint256, round: uint256) -> bytes32: view
    def membership(job_id: uint256, account: address) -> (uint256, uint256): view
    def dispute_terms(job_id: uint256) -> (uint256, address, uint256, uint256, uint256, uint256, uint256): view
    def slash(job_id: uint256, account: address, challenger: address) -> uint256: nonpayable
    def fail_proven(job_id: uint256, round: uint256, challenger: address, reason: String[32]): nonpayable


# @dev One update of a round, opened at one chunk: its leaf in the updates tree and the chunk.
struct Opening:
    provider: address
    update_root: bytes32
    weight: uint256
    next: address
    leaf_proof: DynArray[bytes32, 16]
    chunk: DynArray[int256, 64]
    chunk_proof: DynArray[bytes32, 32]


# @dev A round's commitment, in the clear.
struct RoundData:
    model_root: bytes32
    updates_root: bytes32
    count: uint256
    metrics_hash: bytes32


# @dev A leaf of a round's updates tree (leaves sorted by provider; `next` is the following provider).
struct UpdateLeaf:
    index: uint256
    provider: address
    update_root: bytes32
    weight: uint256
    next: address


event RoundAttested:
    job_id: indexed(uint256)
    round: indexed(uint256)
    validator: indexed(address)
    scores_root: bytes32
    stake: uint256


event QuorumReached:
    job_id: indexed(uint256)
    round: indexed(uint256)
    attested_stake: uint256
    total_stake: uint256


event EquivocationProven:
    job_id: indexed(uint256)
    round: indexed(uint256)
    validator: indexed(address)
    challenger: address


event CensorshipProven:
    job_id: indexed(uint256)
    round: indexed(uint256)
    provider: indexed(address)
    challenger: address


event ProviderSlashed:
    job_id: indexed(uint256)
    provider: indexed(address)
    attested_stake: uint256
    total_stake: uint256
    challenger: address


event RewardsApproved:
    job_id: indexed(uint256)
    validator: indexed(address)
    reward_root: bytes32
    reward_total: uint256
    stake: uint256


event FraudProven:
    job_id: indexed(uint256)
    round: indexed(uint256)
    chunk: uint256
    challenger: indexed(address)


# @dev States of the market's JobState flag this contract compares against.
TRAINING: constant(uint256) = 2
FINALIZING: constant(uint256) = 4
# @dev Market roles.
ROLE_VALIDATOR: constant(uint256) = 3
ROLE_PROVIDER: constant(uint256) = 1
# @dev Aggregation rules.
RULE_WEIGHTED_MEAN: constant(uint256) = 0
RULE_MEDIAN: constant(uint256) = 1
RULE_TRIMMED_MEAN: constant(uint256) = 2
RULE_SECURE_SUM: constant(uint256) = 3
# @dev Secure aggregation works in the ring of integers modulo 2**64.
RING: constant(int256) = 2**64
HALF_RING: constant(int256) = 2**63
# @dev Bounds (match the market's).
MAX_VALIDATORS: constant(uint256) = 32
MAX_ROUND_UPDATES: constant(uint256) = 128
MAX_CHUNK: constant(uint256) = 64
# @dev Sentinel `next` of the last leaf of an updates tree.
LAST: constant(address) = 0xFFfFfFffFFfffFFfFFfFFFFFffFFFffffFfFFFfF

# @dev EIP-712 type hashes.
UPDATE_RECEIPT_TYPEHASH: public(constant(bytes32)) = keccak256(
    "UpdateReceipt(uint256 jobId,uint256 round,bytes32 updateRoot,uint256 weight)"
)
RECEIPT_ACK_TYPEHASH: public(constant(bytes32)) = keccak256(
    "ReceiptAck(uint256 jobId,uint256 round,address provider,bytes32 updateRoot,uint256 weight)"
)
ATTESTATION_TYPEHASH: public(constant(bytes32)) = keccak256(
    "Attestation(uint256 jobId,uint256 round,bytes32 modelRoot,bytes32 scoresRoot)"
)
MISBEHAVIOUR_TYPEHASH: public(constant(bytes32)) = keccak256(
    "Misbehaviour(uint256 jobId,address provider)"
)
REWARDS_TYPEHASH: public(constant(bytes32)) = keccak256(
    "Rewards(uint256 jobId,bytes32 rewardRoot,uint256 rewardTotal)"
)

# @dev The job market this contract judges for.
MARKET: public(immutable(IMarket))

# @dev Stake that attested each round, per job.
attested_stake: public(HashMap[uint256, HashMap[uint256, uint256]])
# @dev Scores root each validator attested for each round (empty = none yet).
attestation_of: public(HashMap[uint256, HashMap[uint256, HashMap[address, bytes32]]])
# @dev Validator stake that signed each (reward root, total) of a job, keyed by their hash.
rewards_stake: public(HashMap[uint256, HashMap[bytes32, uint256]])
# @dev Whether a validator already signed a reward root for a job (one approval each).
rewards_signed: public(HashMap[uint256, HashMap[address, bool]])


@deploy
def __init__(market: address):
    """
    @notice Deploys the disputes contract for one market (EIP-712 domain "fedmarket", "1").
    @param market The job market (its address is fixed before deployment).
    """
    assert market != empty(address), "disputes: market is zero"
    MARKET = IMarket(market)
    eip712.__init__("fedmarket", "1")


# ---------------------------------------------------------------- signed statements


@view
@external
def receipt_digest(job_id: uint256, round: uint256, update_root: bytes32, weight: uint256) -> bytes32:
    """
    @notice EIP-712 digest a provider signs for its update.
    @param job_id The job.
    @param round The round.
    @param update_root Chunked Merkle root of the update.
    @param weight The update's aggregation weight (its sample count).
    @return The digest.
    """
    return self._receipt_digest(job_id, round, update_root, weight)


@view
@internal
def _receipt_digest(job_id: uint256, round: uint256, update_root: bytes32, weight: uint256) -> bytes32:
    return eip712._hash_typed_data_v4(keccak256(abi_encode(UPDATE_RECEIPT_TYPEHASH, job_id, round, update_root, weight)))


@view
@internal
def _ack_digest(job_id: uint256, round: uint256, provider: address, update_root: bytes32, weight: uint256) -> bytes32:
    return eip712._hash_typed_data_v4(
        keccak256(abi_encode(RECEIPT_ACK_TYPEHASH, job_id, round, provider, update_root, weight))
    )


@view
@internal
def _attestation_digest(job_id: uint256, round: uint256, model_root: bytes32, scores_root: bytes32) -> bytes32:
    return eip712._hash_typed_data_v4(keccak256(abi_encode(ATTESTATION_TYPEHASH, job_id, round, model_root, scores_root)))


@view
@internal
def _check_round(job_id: uint256, round: uint256, data: RoundData):
    committed: bytes32 = staticcall MARKET.round_commitment(job_id, round)
    assert committed != empty(bytes32), "disputes: round not committed"
    assert committed == keccak256(abi_encode(data.model_root, data.updates_root, data.count, data.metrics_hash)), "disputes: round data does not match commitment"


# ---------------------------------------------------------------- attestations


@external
@nonreentrant
def attest(
    job_id: uint256,
    round: uint256,
    data: RoundData,
    scores_root: bytes32,
    validators: DynArray[address, MAX_VALIDATORS],
    signatures: DynArray[Bytes[65], MAX_VALIDATORS],
):
    """
    @notice Records validators' signed attestations `(job, round, modelRoot, scoresRoot)` of a
            committed round; anyone may submit them, any number at once. The round reaches
            quorum when two thirds of the job's validator stake attested its model root.
    @param job_id The job.
    @param round The attested round.
    @param data The round's commitment in the clear (must match the market's).
    @param scores_root Root of the validators' contribution scores for the round.
    @param validators Signers, strictly ascending.
    @param signatures Their EIP-712 signatures, in the same order.
    """
    assert len(validators) == len(signatures) and len(validators) > 0, "disputes: bad signature list"
    # an empty root would read as "not attested yet" and could be counted twice
    assert scores_root != empty(bytes32), "disputes: empty scores root"
    self._check_round(job_id, round, data)
    digest: bytes32 = self._attestation_digest(job_id, round, data.model_root, scores_root)
    added: uint256 = 0
    prev: uint256 = 0
    for i: uint256 in range(len(validators), bound=MAX_VALIDATORS):
        v: address = validators[i]
        assert convert(v, uint256) > prev, "disputes: validators not ascending"
        prev = convert(v, uint256)
        assert ecdsa._recover_sig(digest, signatures[i]) == v, "disputes: bad attestation signature"
        role: uint256 = 0
        stake: uint256 = 0
        role, stake = staticcall MARKET.membership(job_id, v)
        assert role == ROLE_VALIDATOR, "disputes: not a validator of the job"
        assert self.attestation_of[job_id][round][v] == empty(bytes32), "disputes: already attested"
        self.attestation_of[job_id][round][v] = scores_root
        added += stake
        log RoundAttested(job_id=job_id, round=round, validator=v, scores_root=scores_root, stake=stake)
    before: uint256 = self.attested_stake[job_id][round]
    after: uint256 = before + added
    self.attested_stake[job_id][round] = after
    total: uint256 = self._total_stake(job_id)
    if before * 3 < total * 2 and after * 3 >= total * 2:
        log QuorumReached(job_id=job_id, round=round, attested_stake=after, total_stake=total)


@view
@internal
def _total_stake(job_id: uint256) -> uint256:
    state: uint256 = 0
    aggregator: address = empty(address)
    current: uint256 = 0
    rule: uint256 = 0
    trim: uint256 = 0
    chunk_size: uint256 = 0
    total: uint256 = 0
    state, aggregator, current, rule, trim, chunk_size, total = staticcall MARKET.dispute_terms(job_id)
    return total


@view
@external
def quorum_of(job_id: uint256, round: uint256, total_stake: uint256) -> bool:
    """
    @notice Whether attestations of round `round` reach two thirds of `total_stake` (the market
            passes the job's validator stake from its own storage; `has_quorum` reads it here).
    @param job_id The job.
    @param round The round.
    @param total_stake The job's validator stake.
    @return True at quorum.
    """
    return self.attested_stake[job_id][round] * 3 >= total_stake * 2


@view
@external
def has_quorum(job_id: uint256, round: uint256) -> bool:
    """
    @notice Whether two thirds of the job's validator stake attested round `round`
            (always true for a job without validator stake).
    @param job_id The job.
    @param round The round.
    @return True at quorum.
    """
    return self.attested_stake[job_id][round] * 3 >= self._total_stake(job_id) * 2


@external
@nonreentrant
def prove_equivocation(
    job_id: uint256,
    round: uint256,
    validator: address,
    model_root_a: bytes32,
    scores_root_a: bytes32,
    signature_a: Bytes[65],
    model_root_b: bytes32,
    scores_root_b: bytes32,
    signature_b: Bytes[65],
):
    """
    @notice Proves that a validator signed two different attestations for one round;
            its stake is slashed (half to the caller, half to the treasury).
    @param job_id The job.
    @param round The round.
    @param validator The equivocating validator.
    @param model_root_a First attestation's model root.
    @param scores_root_a First attestation's scores root.
    @param signature_a First signature.
    @param model_root_b Second attestation's model root.
    @param scores_root_b Second attestation's scores root.
    @param signature_b Second signature.
    """
    assert model_root_a != model_root_b or scores_root_a != scores_root_b, "disputes: attestations are identical"
    role: uint256 = 0
    stake: uint256 = 0
    role, stake = staticcall MARKET.membership(job_id, validator)
    assert role == ROLE_VALIDATOR, "disputes: not a validator of the job"
    digest_a: bytes32 = self._attestation_digest(job_id, round, model_root_a, scores_root_a)
    digest_b: bytes32 = self._attestation_digest(job_id, round, model_root_b, scores_root_b)
    assert ecdsa._recover_sig(digest_a, signature_a) == validator, "disputes: first signature invalid"
    assert ecdsa._recover_sig(digest_b, signature_b) == validator, "disputes: second signature invalid"
    extcall MARKET.slash(job_id, validator, msg.sender)
    log EquivocationProven(job_id=job_id, round=round, validator=validator, challenger=msg.sender)


@view
@external
def misbehaviour_digest(job_id: uint256, provider: address) -> bytes32:
    """
    @notice EIP-712 digest a validator signs to report a provider's updates as poisoned or free-riding.
    @param job_id The job.
    @param provider The reported provider.
    @return The digest.
    """
    return self._misbehaviour_digest(job_id, provider)


@view
@internal
def _misbehaviour_digest(job_id: uint256, provider: address) -> bytes32:
    return eip712._hash_typed_data_v4(keccak256(abi_encode(MISBEHAVIOUR_TYPEHASH, job_id, provider)))


@external
@nonreentrant
def slash_provider(
    job_id: uint256,
    provider: address,
    validators: DynArray[address, MAX_VALIDATORS],
    signatures: DynArray[Bytes[65], MAX_VALIDATORS],
):
    """
    @notice Slashes a provider that two thirds of the job's validator stake reported, by signed
            `Misbehaviour(jobId, provider)` statements, as poisoning or free-riding: its job stake
            is split between the caller and the treasury, and from then on it is no provider of
            the job (its updates are refused and its reward leaf is zero).
    @dev Not a proof but a supermajority judgement: validators that sign falsely risk their
         reputation, and a cartel above two thirds of the stake is outside the trust model.
    @param job_id The job (training or finalizing).
    @param provider The reported provider.
    @param validators Signers, strictly ascending.
    @param signatures Their EIP-712 signatures, in the same order.
    """
    assert len(validators) == len(signatures) and len(validators) > 0, "disputes: bad signature list"
    state: uint256 = 0
    aggregator: address = empty(address)
    current: uint256 = 0
    rule: uint256 = 0
    trim: uint256 = 0
    chunk_size: uint256 = 0
    total: uint256 = 0
    state, aggregator, current, rule, trim, chunk_size, total = staticcall MARKET.dispute_terms(job_id)
    assert state == TRAINING or state == FINALIZING, "disputes: job not disputable"
    assert total > 0, "disputes: job has no validators"
    role: uint256 = 0
    stake: uint256 = 0
    role, stake = staticcall MARKET.membership(job_id, provider)
    assert role == ROLE_PROVIDER, "disputes: not a provider of the job"
    digest: bytes32 = self._misbehaviour_digest(job_id, provider)
    attested: uint256 = 0
    prev: uint256 = 0
    for i: uint256 in range(len(validators), bound=MAX_VALIDATORS):
        v: address = validators[i]
        assert convert(v, uint256) > prev, "disputes: validators not ascending"
        prev = convert(v, uint256)
        assert ecdsa._recover_sig(digest, signatures[i]) == v, "disputes: bad misbehaviour signature"
        role, stake = staticcall MARKET.membership(job_id, v)
        assert role == ROLE_VALIDATOR, "disputes: not a validator of the job"
        attested += stake
    assert attested * 3 >= total * 2, "disputes: no validator supermajority"
    extcall MARKET.slash(job_id, provider, msg.sender)
    log ProviderSlashed(job_id=job_id, provider=provider, attested_stake=attested, total_stake=total, challenger=msg.sender)


@external
@nonreentrant
def approve_rewards(
    job_id: uint256,
    reward_root: bytes32,
    reward_total: uint256,
    validators: DynArray[address, MAX_VALIDATORS],
    signatures: DynArray[Bytes[65], MAX_VALIDATORS],
):
    """
    @notice Records validators' signed approvals `Rewards(jobId, rewardRoot, rewardTotal)` of the
            reward root they re-derived from the revealed scores; anyone may submit them. The
            market accepts a job's reward root only once two thirds of its validator stake
            approved exactly that root and total.
    @param job_id The job.
    @param reward_root The reward Merkle root.
    @param reward_total The sum of its leaves.
    @param validators Signers, strictly ascending.
    @param signatures Their EIP-712 signatures, in the same order.
    """
    assert len(validators) == len(signatures) and len(validators) > 0, "disputes: bad signature list"
    digest: bytes32 = eip712._hash_typed_data_v4(keccak256(abi_encode(REWARDS_TYPEHASH, job_id, reward_root, reward_total)))
    key: bytes32 = keccak256(abi_encode(reward_root, reward_total))
    prev: uint256 = 0
    added: uint256 = 0
    for i: uint256 in range(len(validators), bound=MAX_VALIDATORS):
        v: address = validators[i]
        assert convert(v, uint256) > prev, "disputes: validators not ascending"
        prev = convert(v, uint256)
        assert ecdsa._recover_sig(digest, signatures[i]) == v, "disputes: bad rewards signature"
        role: uint256 = 0
        stake: uint256 = 0
        role, stake = staticcall MARKET.membership(job_id, v)
        assert role == ROLE_VALIDATOR, "disputes: not a validator of the job"
        assert not self.rewards_signed[job_id][v], "disputes: already approved"
        self.rewards_signed[job_id][v] = True
        added += stake
        log RewardsApproved(job_id=job_id, validator=v, reward_root=reward_root, reward_total=reward_total, stake=stake)
    self.rewards_stake[job_id][key] += added


@view
@external
def approved_of(job_id: uint256, reward_root: bytes32, reward_total: uint256, total_stake: uint256) -> bool:
    """
    @notice Whether approvals of this reward root and total reach two thirds of `total_stake`
            (the market passes the job's validator stake; `rewards_approved` reads it here).
    @param job_id The job.
    @param reward_root The reward Merkle root.
    @param reward_total The sum of its leaves.
    @param total_stake The job's validator stake.
    @return True if approved.
    """
    return self.rewards_stake[job_id][keccak256(abi_encode(reward_root, reward_total))] * 3 >= total_stake * 2


@view
@external
def rewards_approved(job_id: uint256, reward_root: bytes32, reward_total: uint256) -> bool:
    """
    @notice Whether two thirds of the job's validator stake approved this reward root and total
            (always true for a job without validator stake).
    @param job_id The job.
    @param reward_root The reward Merkle root.
    @param reward_total The sum of its leaves.
    @return True if approved.
    """
    key: bytes32 = keccak256(abi_encode(reward_root, reward_total))
    return self.rewards_stake[job_id][key] * 3 >= self._total_stake(job_id) * 2


# ---------------------------------------------------------------- aggregator faults


@view
@internal
def _update_leaf(leaf: UpdateLeaf) -> bytes32:
    return keccak256(keccak256(abi_encode(leaf.index, leaf.provider, leaf.update_root, leaf.weight, leaf.next)))


@view
@internal
def _check_disputable(job_id: uint256, round: uint256) -> (address, uint256, uint256, uint256):
    """Returns (aggregator, rule, trim, chunk_size) of a job whose round `round` can still be disputed."""
    state: uint256 = 0
    aggregator: address = empty(address)
    current: uint256 = 0
    rule: uint256 = 0
    trim: uint256 = 0
    chunk_size: uint256 = 0
    total: uint256 = 0
    state, aggregator, current, rule, trim, chunk_size, total = staticcall MARKET.dispute_terms(job_id)
    assert state == TRAINING or state == FINALIZING, "disputes: job not disputable"
    assert round < current, "disputes: round not committed"
    return aggregator, rule, trim, chunk_size


@external
@nonreentrant
def prove_censorship(
    job_id: uint256,
    round: uint256,
    data: RoundData,
    provider: address,
    update_root: bytes32,
    weight: uint256,
    provider_signature: Bytes[65],
    aggregator_signature: Bytes[65],
    leaf: UpdateLeaf,
    leaf_proof: DynArray[bytes32, 16],
):
    """
    @notice Proves that the aggregator acknowledged a provider's update and then left it
            out of (or altered it in) the round: the updates tree is sorted by provider and
            each leaf names the next provider, so one leaf whose interval skips the
            provider (or that carries a different update for it) is the proof. The round
            is reverted, the job fails with a refund, and the aggregator is slashed.
    @param job_id The job.
    @param round The round.
    @param data The round's commitment in the clear.
    @param provider The censored provider.
    @param update_root Root of its update.
    @param weight Its weight.
    @param provider_signature Its EIP-712 UpdateReceipt signature.
    @param aggregator_signature The aggregator's EIP-712 ReceiptAck signature of the same receipt.
    @param leaf A leaf of the round's updates tree that shows the omission.
    @param leaf_proof Merkle proof of `leaf` in `data.updates_root`.
    """
    aggregator: address = empty(address)
    rule: uint256 = 0
    trim: uint256 = 0
    chunk_size: uint256 = 0
    aggregator, rule, trim, chunk_size = self._check_disputable(job_id, round)
    self._check_round(job_id, round, data)
    role: uint256 = 0
    stake: uint256 = 0
    role, stake = staticcall MARKET.membership(job_id, provider)
    assert role & 127 == ROLE_PROVIDER, "disputes: not a provider of the job"
    assert ecdsa._recover_sig(self._receipt_digest(job_id, round, update_root, weight), provider_signature) == provider, "disputes: bad provider signature"
    assert ecdsa._recover_sig(self._ack_digest(job_id, round, provider, update_root, weight), aggregator_signature) == aggregator, "disputes: bad aggregator signature"
    assert leaf.index < data.count, "disputes: leaf index out of range"
    assert merkle._verify(leaf_proof, data.updates_root, self._update_leaf(leaf)), "disputes: leaf not in round"
    p: uint256 = convert(provider, uint256)
    lp: uint256 = convert(leaf.provider, uint256)
    omitted: bool = (leaf.index == 0 and p < lp) or (lp < p and p < convert(leaf.next, uint256))
    altered: bool = lp == p and (leaf.update_root != update_root or leaf.weight != weight)
    assert omitted or altered, "disputes: update is in the round"
    extcall MARKET.fail_proven(job_id, round, msg.sender, "censored update")
    log CensorshipProven(job_id=job_id, round=round, provider=provider, challenger=msg.sender)


@pure
@internal
def _floor_div(a: int256, b: int256) -> int256:
    """Division rounding toward minus infinity (b > 0), as Python's `//`."""
    q: int256 = a // b
    if a % b != 0 and a < 0:
        q -= 1
    return q


@pure
@internal
def _chunk_leaf(index: uint256, chunk: DynArray[int256, MAX_CHUNK]) -> bytes32:
    return keccak256(keccak256(abi_encode(index, chunk)))


@external
@nonreentrant
def prove_fraud(
    job_id: uint256,
    round: uint256,
    chunk_index: uint256,
    data: RoundData,
    prev: RoundData,
    prev_chunk: DynArray[int256, MAX_CHUNK],
    prev_proof: DynArray[bytes32, 32],
    new_chunk: DynArray[int256, MAX_CHUNK],
    new_proof: DynArray[bytes32, 32],
    openings: DynArray[Opening, MAX_ROUND_UPDATES + 1],
    lo_hints: DynArray[int256, MAX_CHUNK],
    hi_hints: DynArray[int256, MAX_CHUNK],
):
    """
    @notice Proves a wrong aggregate at one chunk of one round. The contract checks that
            `openings` are exactly the round's `count` updates (leaves 0..count-1 of the
            updates tree), that each opened chunk is in its update's root, that the
            previous model's chunk (zeros at round 0) and the new model's chunk are in their
            model roots, then recomputes `previous + rule(updates)` in integer arithmetic.
            On any difference the round is reverted, the job fails with a refund and the
            aggregator is slashed; if the aggregate is right the call reverts.
    @dev For the median and the trimmed mean, `lo_hints` and `hi_hints` name the order
         statistics at the kept ranks of each coordinate; the contract verifies them by
         counting (O(n) per coordinate instead of sorting).
    @param job_id The job.
    @param round The disputed round.
    @param chunk_index Which chunk of the model is disputed.
    @param data The round's commitment in the clear.
    @param prev The previous round's commitment in the clear (ignored at round 0).
    @param prev_chunk The previous global model's chunk.
    @param prev_proof Its proof in `prev.model_root`.
    @param new_chunk The committed new model's chunk.
    @param new_proof Its proof in `data.model_root`.
    @param openings Every update of the round at this chunk, in leaf order.
    @param lo_hints Per coordinate, the lowest kept order statistic (median/trimmed mean).
    @param hi_hints Per coordinate, the highest kept order statistic (median/trimmed mean).
    """
    aggregator: address = empty(address)
    rule: uint256 = 0
    trim: uint256 = 0
    chunk_size: uint256 = 0
    aggregator, rule, trim, chunk_size = self._check_disputable(job_id, round)
    self._check_round(job_id, round, data)
    n: uint256 = data.count
    # a secure-sum round lists one more leaf after its updates: the published mask correction
    extra: uint256 = 1 if rule == RULE_SECURE_SUM else 0
    assert len(openings) == n + extra, "disputes: need every update of the round"
    width: uint256 = len(new_chunk)
    assert width >= 1 and width <= chunk_size, "disputes: bad chunk width"
    assert merkle._verify(new_proof, data.model_root, self._chunk_leaf(chunk_index, new_chunk)), "disputes: model chunk not in round"
    base: DynArray[int256, MAX_CHUNK] = []
    if round == 0:
        for c: uint256 in range(width, bound=MAX_CHUNK):
            base.append(0)
    else:
        self._check_round(job_id, round - 1, prev)
        assert len(prev_chunk) == width, "disputes: previous chunk width differs"
        assert merkle._verify(prev_proof, prev.model_root, self._chunk_leaf(chunk_index, prev_chunk)), "disputes: previous chunk not in model"
        base = prev_chunk

    last: uint256 = 0
    for i: uint256 in range(n + extra, bound=MAX_ROUND_UPDATES + 1):
        o: Opening = openings[i]
        if i < n:
            assert i == 0 or convert(o.provider, uint256) > last, "disputes: openings not sorted"
            last = convert(o.provider, uint256)
        else:
            assert o.provider == empty(address) and o.weight == 0 and o.next == empty(address), "disputes: bad correction leaf"
        leaf: UpdateLeaf = UpdateLeaf(index=i, provider=o.provider, update_root=o.update_root, weight=o.weight, next=o.next)
        assert merkle._verify(o.leaf_proof, data.updates_root, self._update_leaf(leaf)), "disputes: update not in round"
        assert len(o.chunk) == width, "disputes: update chunk width differs"
        assert merkle._verify(o.chunk_proof, o.update_root, self._chunk_leaf(chunk_index, o.chunk)), "disputes: chunk not in update"

    expected: DynArray[int256, MAX_CHUNK] = []
    if rule == RULE_WEIGHTED_MEAN:
        expected = self._weighted_mean(openings, n, width)
    elif rule == RULE_SECURE_SUM:
        expected = self._secure_mean(openings, n, width)
    else:
        if rule == RULE_MEDIAN:
            expected = self._ranked_mean(openings, n, width, (n - 1) // 2, n // 2, lo_hints, hi_hints)
        else:
            if 2 * trim >= n:
                # the round could not have been aggregated with this rule at all
                extcall MARKET.fail_proven(job_id, round, msg.sender, "wrong aggregate")
                log FraudProven(job_id=job_id, round=round, chunk=chunk_index, challenger=msg.sender)
                return
            expected = self._ranked_mean(openings, n, width, trim, n - 1 - trim, lo_hints, hi_hints)

    wrong: bool = False
    for c: uint256 in range(width, bound=MAX_CHUNK):
        value: int256 = base[c] + expected[c]
        expected[c] = value
        if value != new_chunk[c]:
            wrong = True
    assert wrong, "disputes: aggregate is correct"
    extcall MARKET.fail_proven(job_id, round, msg.sender, "wrong aggregate")
    log FraudProven(job_id=job_id, round=round, chunk=chunk_index, challenger=msg.sender)


@pure
@internal
def _secure_mean(openings: DynArray[Opening, MAX_ROUND_UPDATES + 1], n: uint256, width: uint256) -> DynArray[int256, MAX_CHUNK]:
    """
    @dev Secure aggregation: each update is a provider's masked `weight * delta` (ring
         elements as two's-complement int64), the last opening the mask correction. The
         sum of the updates minus the correction, modulo 2**64, is the exact weighted sum;
         divided (floor) by the total weight of the receipts it is the weighted mean.
    """
    total: int256 = 0
    for i: uint256 in range(n, bound=MAX_ROUND_UPDATES):
        total += convert(openings[i].weight, int256)
    assert total > 0, "disputes: zero total weight"
    out: DynArray[int256, MAX_CHUNK] = []
    for c: uint256 in range(width, bound=MAX_CHUNK):
        acc: int256 = -openings[n].chunk[c]
        for i: uint256 in range(n, bound=MAX_ROUND_UPDATES):
            acc += openings[i].chunk[c]
        acc = acc % RING
        if acc < 0:
            acc += RING
        if acc >= HALF_RING:
            acc -= RING
        out.append(self._floor_div(acc, total))
    return out


@pure
@internal
def _weighted_mean(openings: DynArray[Opening, MAX_ROUND_UPDATES + 1], n: uint256, width: uint256) -> DynArray[int256, MAX_CHUNK]:
    total: int256 = 0
    for i: uint256 in range(n, bound=MAX_ROUND_UPDATES):
        total += convert(openings[i].weight, int256)
    assert total > 0, "disputes: zero total weight"
    out: DynArray[int256, MAX_CHUNK] = []
    for c: uint256 in range(width, bound=MAX_CHUNK):
        acc: int256 = 0
        for i: uint256 in range(n, bound=MAX_ROUND_UPDATES):
            acc += convert(openings[i].weight, int256) * openings[i].chunk[c]
        out.append(self._floor_div(acc, total))
    return out


@pure
@internal
def _ranked_mean(
    openings: DynArray[Opening, MAX_ROUND_UPDATES + 1],
    n: uint256,
    width: uint256,
    lo_rank: uint256,
    hi_rank: uint256,
    lo_hints: DynArray[int256, MAX_CHUNK],
    hi_hints: DynArray[int256, MAX_CHUNK],
) -> DynArray[int256, MAX_CHUNK]:
    """Per coordinate: floor(mean of the sorted values at ranks lo_rank..hi_rank), from verified hints."""
    assert len(lo_hints) == width and len(hi_hints) == width, "disputes: need one hint per coordinate"
    kept: int256 = convert(hi_rank - lo_rank + 1, int256)
    out: DynArray[int256, MAX_CHUNK] = []
    for c: uint256 in range(width, bound=MAX_CHUNK):
        lo: int256 = lo_hints[c]
        hi: int256 = hi_hints[c]
        assert lo <= hi, "disputes: bad hint"
        lo_less: uint256 = 0
        lo_eq: uint256 = 0
        hi_less: uint256 = 0
        hi_eq: uint256 = 0
        between: int256 = 0
        for i: uint256 in range(n, bound=MAX_ROUND_UPDATES):
            v: int256 = openings[i].chunk[c]
            if v < lo:
                lo_less += 1
            elif v == lo:
                lo_eq += 1
            if v < hi:
                hi_less += 1
            elif v == hi:
                hi_eq += 1
            if v > lo and v < hi:
                between += v
        # the hints are the order statistics at lo_rank and hi_rank
        assert lo_less <= lo_rank and lo_rank < lo_less + lo_eq, "disputes: bad low hint"
        assert hi_less <= hi_rank and hi_rank < hi_less + hi_eq, "disputes: bad high hint"
        total: int256 = 0
        if lo == hi:
            total = lo * kept
        else:
            total = between + lo * convert(lo_less + lo_eq - lo_rank, int256) + hi * convert(hi_rank - hi_less + 1, int256)
        out.append(self._floor_div(total, kept))
    return out
