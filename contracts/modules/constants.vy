# pragma version 0.4.3
"""
@title fedmarket protocol constants
@notice One home for every id, state and bound the contracts share: roles, job states,
        aggregation rules, dispute kinds, and the limits under which no arithmetic can
        overflow and no funds can be locked. `fedmarket.protocol.rules` mirrors them in
        Python and a test compares the two.
@license AGPL-3.0-only
"""

# @dev Roles of a job participant (low bits of a membership word).
ROLE_PROVIDER: constant(uint256) = 1
ROLE_AGGREGATOR: constant(uint256) = 2
ROLE_VALIDATOR: constant(uint256) = 3
# @dev Mask of the role in a membership word, and the bit set once the member was slashed.
ROLE_MASK: constant(uint256) = 127
SLASHED: constant(uint256) = 128
# @dev Bits of a membership word below the stake (or, once slashed, the stage of the slash).
ROLE_BITS: constant(uint256) = 8
# @dev Slash stage of a member slashed after the reward root was posted.
STAGE_FINAL: constant(uint256) = 65_535

# @dev Job states (the values of the market's JobState flag).
OPEN: constant(uint256) = 1
TRAINING: constant(uint256) = 2
FINALIZING: constant(uint256) = 4
SETTLED: constant(uint256) = 8
CANCELLED: constant(uint256) = 16
FAILED: constant(uint256) = 32

# @dev Aggregation rules a dispute recomputes.
RULE_WEIGHTED_MEAN: constant(uint256) = 0
RULE_MEDIAN: constant(uint256) = 1
RULE_TRIMMED_MEAN: constant(uint256) = 2
RULE_SECURE_SUM: constant(uint256) = 3

# @dev Bases of a reward root: aggregated weight (provable leaf by leaf) or validator scores (approved).
BASIS_WEIGHT: constant(uint256) = 0
BASIS_SCORES: constant(uint256) = 1

# @dev Kinds of dispute game.
GAME_AGGREGATE: constant(uint256) = 1
GAME_LEAF: constant(uint256) = 2
GAME_INCLUSION: constant(uint256) = 3
GAME_REWARD_SUM: constant(uint256) = 4
GAME_REWARD_VALUE: constant(uint256) = 5
# @dev A walk down a round's committed model tree to the chunk it disputes, then an aggregate game there.
GAME_MODEL: constant(uint256) = 6
# @dev Whose move a game waits for.
TURN_NONE: constant(uint256) = 0
TURN_DEFENDER: constant(uint256) = 1
TURN_CHALLENGER: constant(uint256) = 2

# @dev Fixed-point scale of privacy budgets and spent epsilon (millionths).
EPSILON_SCALE: constant(uint256) = 1_000_000
# @dev Largest privacy budget a job may state (epsilon 1,000, in millionths).
MAX_EPSILON: constant(uint256) = 1_000_000_000
# @dev Largest noise multiplier of a private job (10,000, in millionths; 34 bits).
MAX_NOISE: constant(uint256) = 10_000_000_000
# @dev Largest ln(1/delta) of a private job (100, i.e. delta >= e^-100, in millionths; 27 bits).
MAX_DELTA_LOG: constant(uint256) = 100_000_000

# @dev Upper bounds of a job's sizes.
MAX_ROUNDS: constant(uint256) = 10_000
MAX_PROVIDERS: constant(uint256) = 1_000_000
MAX_VALIDATORS: constant(uint256) = 32
MAX_CHUNK: constant(uint256) = 64
# @dev Largest model: 2**32 values (a chunk proof has at most MAX_CHUNK_PROOF levels).
MAX_PARAMS: constant(uint256) = 2**32
# @dev Largest aggregation weight of one update (its sample count).
MAX_WEIGHT: constant(uint256) = 4_294_967_296
# @dev Largest amount of any escrow, stake, bond or price (so sums and products never overflow).
MAX_AMOUNT: constant(uint256) = 2**128
# @dev Reputation saturates here: no claim can ever revert on it.
MAX_REPUTATION: constant(int256) = 2**128

# @dev Upper bounds of a job's periods, in seconds (nothing is locked longer than these allow).
MAX_JOIN_WINDOW: constant(uint256) = 90 * 86_400
MAX_ROUND_DURATION: constant(uint256) = 30 * 86_400
MAX_TRAINING_TIME: constant(uint256) = 730 * 86_400
MAX_CHALLENGE_PERIOD: constant(uint256) = 30 * 86_400
MAX_CLAIM_PERIOD: constant(uint256) = 365 * 86_400
MAX_RESPONSE_PERIOD: constant(uint256) = 7 * 86_400

# @dev Depth of the Merkle accumulator of a job's round commitments (2**14 >= MAX_ROUNDS).
ROUNDS_DEPTH: constant(uint256) = 14
# @dev Deepest positional Merkle proof (2**20 >= MAX_PROVIDERS + MAX_VALIDATORS + 1 leaves).
MAX_DEPTH: constant(uint256) = 20
# @dev Sibling hashes of a model or update chunk proof (2**32 chunks).
MAX_CHUNK_PROOF: constant(uint256) = 32

# @dev Protocol fee ceiling and the challenger's share of a slashed stake, in basis points.
MAX_FEE_BPS: constant(uint256) = 1_000
CHALLENGER_BPS: constant(uint256) = 5_000
BPS: constant(uint256) = 10_000

# @dev Secure aggregation works in the ring of integers modulo 2**64.
RING: constant(uint256) = 2**64
