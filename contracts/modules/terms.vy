# pragma version 0.4.3
"""
@title fedmarket job terms
@notice The structs in which a job's terms travel between the market and the contracts that
        judge it, so every contract reads the same fields by name.
@license AGPL-3.0-only
"""

from modules import constants as C


# @dev Immutable terms of a job, as posted (every field bounded by `JobMarket.post_job`).
struct JobTerms:
    spec_hash: bytes32
    aggregator: address
    escrow: uint256
    provider_stake: uint256
    aggregator_stake: uint256
    validator_stake: uint256
    min_providers: uint256
    max_providers: uint256
    min_validators: uint256
    max_validators: uint256
    rounds: uint256
    per_round: uint256
    join_deadline: uint256
    round_duration: uint256
    challenge_period: uint256
    claim_period: uint256
    response_period: uint256
    dispute_bond: uint256
    rule: uint256
    trim: uint256
    chunk_size: uint256
    n_params: uint256
    licence_price: uint256
    privacy_budget: uint256
    miss_payout_bps: uint256
    noise_multiplier: uint256
    delta_log: uint256
    aggregator_fee: uint256  # paid per committed round
    validator_fee: uint256  # paid per attestation of a round (the committed model, at quorum)
    licence_requester_bps: uint256  # the licence owner's share of licence revenue; of query revenue, the owner's and servers' together


# @dev A job's participants and settlement (JobMarket keeps its state, current round, round
#      deadline and quorum flag in one packed word, read by every round).
struct Progress:
    requester: address
    n_providers: uint256
    n_validators: uint256
    validator_total_stake: uint256
    accepted: bool
    start_seed: bytes32
    reward_root: bytes32
    reward_total: uint256
    value_total: uint256
    basis: uint256
    pool: uint256
    claimed_total: uint256
    challenge_deadline: uint256
    claim_deadline: uint256
    poster: address
    poster_bond: uint256


@pure
@internal
def _problem(terms: JobTerms, requester: address, now: uint256) -> String[64]:
    """The first term out of its bounds, as a one-line reason ("" when every term is in bounds)."""
    if not (terms.spec_hash != empty(bytes32)):
        return "market: empty spec hash"
    if not (terms.aggregator != empty(address)):
        return "market: aggregator is zero"
    if not (terms.aggregator != requester):
        return "market: requester cannot aggregate"
    if not (terms.escrow > 0 and terms.escrow <= C.MAX_AMOUNT):
        return "market: bad escrow"
    if not (terms.provider_stake <= C.MAX_AMOUNT and terms.aggregator_stake <= C.MAX_AMOUNT):
        return "market: stake too large"
    if not (terms.validator_stake <= C.MAX_AMOUNT and terms.dispute_bond <= C.MAX_AMOUNT):
        return "market: stake too large"
    if not (terms.licence_price <= C.MAX_AMOUNT):
        return "market: price too large"
    if not (terms.dispute_bond > 0):
        return "market: dispute bond is zero"
    if not (terms.rounds >= 1 and terms.rounds <= C.MAX_ROUNDS):
        return "market: bad round count"
    if not (terms.min_providers >= 1 and terms.min_providers <= terms.max_providers):
        return "market: bad provider range"
    if not (terms.max_providers <= C.MAX_PROVIDERS):
        return "market: too many providers"
    if not (terms.per_round <= terms.max_providers):
        return "market: per_round above max providers"
    if not (terms.min_validators <= terms.max_validators):
        return "market: bad validator range"
    if not (terms.max_validators <= C.MAX_VALIDATORS):
        return "market: too many validators"
    if terms.max_validators > 0:
        # a validated job names the validator set it needs, and no slot is free to squat
        if not (terms.min_validators >= 1):
            return "market: validated job needs min validators"
        if not (terms.validator_stake > 0):
            return "market: validated job needs validator stake"
    if not (terms.join_deadline > now):
        return "market: join deadline passed"
    if not (terms.join_deadline <= now + C.MAX_JOIN_WINDOW):
        return "market: join window too long"
    if not (terms.round_duration >= 1 and terms.round_duration <= C.MAX_ROUND_DURATION):
        return "market: bad round duration"
    if not (terms.rounds * terms.round_duration <= C.MAX_TRAINING_TIME):
        return "market: training too long"
    if not (terms.challenge_period >= 1 and terms.challenge_period <= C.MAX_CHALLENGE_PERIOD):
        return "market: bad challenge period"
    if not (terms.claim_period >= 1 and terms.claim_period <= C.MAX_CLAIM_PERIOD):
        return "market: bad claim period"
    if not (terms.response_period >= 1 and terms.response_period <= C.MAX_RESPONSE_PERIOD):
        return "market: bad response period"
    if not (terms.rule <= C.RULE_SECURE_SUM):
        return "market: unknown rule"
    if not (terms.rule != C.RULE_TRIMMED_MEAN or terms.trim > 0):
        return "market: trim is zero"
    if not (terms.rule == C.RULE_TRIMMED_MEAN or terms.trim == 0):
        return "market: trim without trimmed mean"
    if terms.rule == C.RULE_SECURE_SUM and terms.max_validators == 0:
        # a mask correction is re-derived from its transcript by validators, not on chain
        return "market: secure sum needs validators"
    if not (terms.trim <= C.MAX_PROVIDERS):
        return "market: trim too large"
    if not (terms.chunk_size >= 1 and terms.chunk_size <= C.MAX_CHUNK):
        return "market: bad chunk size"
    if not (terms.n_params >= 1 and terms.n_params <= C.MAX_PARAMS):
        return "market: bad model size"
    if not (terms.privacy_budget <= C.MAX_EPSILON):
        return "market: privacy budget too large"
    private: bool = terms.privacy_budget > 0
    if private != (terms.noise_multiplier > 0) or private != (terms.delta_log > 0):
        return "market: privacy terms incomplete"
    if not (terms.noise_multiplier <= C.MAX_NOISE and terms.delta_log <= C.MAX_DELTA_LOG):
        return "market: privacy parameter too large"
    if private and self._epsilon(terms.noise_multiplier, terms.delta_log, terms.rounds) > terms.privacy_budget:
        return "market: noise too low for the privacy budget"
    if not (terms.miss_payout_bps <= C.BPS):
        return "market: bad miss payout"
    if not (terms.miss_payout_bps == C.BPS or terms.max_validators > 0):
        return "market: quality gate needs validators"
    if not (terms.miss_payout_bps == C.BPS or terms.rule != C.RULE_SECURE_SUM):
        return "market: no quality gate on secure sum"  # no scores basis: the gate could never be met
    if not (terms.aggregator_fee <= C.MAX_AMOUNT and terms.validator_fee <= C.MAX_AMOUNT):
        return "market: fee too large"
    if not (terms.validator_fee == 0 or terms.max_validators > 0):
        return "market: validator fee without validators"
    if not (self._reserved(terms, terms.max_validators) <= terms.escrow - terms.escrow * C.MAX_FEE_BPS // C.BPS):
        return "market: role fees exceed the escrow"
    if not (terms.licence_requester_bps <= C.BPS - C.MAX_FEE_BPS):
        return "market: requester share too large"
    return ""


@pure
@internal
def _reserved(terms: JobTerms, n_validators: uint256) -> uint256:
    """
    @notice The escrow a job sets aside for its roles' fees: the aggregator's fee for every
            round and each joined validator's fee for an attestation of every round. What a
            role does not earn (a validator that missed a round, a member cut for a fault)
            returns to the requester at settlement. `protocol.rules.reserved_fees` mirrors it.
    """
    return terms.rounds * (terms.aggregator_fee + n_validators * terms.validator_fee)


@pure
@internal
def _epsilon(noise: uint256, delta_log: uint256, rounds: uint256) -> uint256:
    """
    @notice The epsilon (millionths, rounded up) a private job has spent after `rounds` rounds of
            Gaussian releases with noise multiplier `noise` / 10**6 at delta = exp(-`delta_log` /
            10**6): each round is (1 / (2 z**2))-zCDP, rounds compose additively, and rho-zCDP
            gives (rho + 2 sqrt(rho ln(1/delta)), delta)-DP (Bun and Steinke, 2016). Every party
            derives it from the terms; nobody declares it. `protocol.rules.epsilon_micro` mirrors it.
    """
    two_z2: uint256 = 2 * noise * noise
    rho: uint256 = (rounds * 10**18 + two_z2 - 1) // two_z2
    return rho + 2 * (isqrt(rho * delta_log) + 1)
