"""The protocol's rules in one place: ids, states and bounds shared with the contracts, the
aggregation rule of each job in exact integer arithmetic, and the additive claims the dispute
game bisects (`contracts/modules/rules.vy`, byte for byte).

The spec, the roles, the auditor, the dispute drivers and the tests all take their rule from
here; an unknown rule is an error, never a fall-through.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError, FedMarketError, ModelOutOfRange
from ..fl.quantize import QMAX

# ---- ids, states and bounds (contracts/modules/constants.vy; tests/protocol compare them) -----

ROLE_MASK = 127
SLASHED = 128
STAGE_FINAL = 65_535
EPSILON_SCALE = 1_000_000
MAX_EPSILON = 1_000_000_000
MAX_NOISE = 10_000_000_000  # noise multiplier 10,000 in millionths
MAX_DELTA_LOG = 100_000_000  # ln(1/delta) = 100 in millionths
MAX_ROUNDS = 10_000
MAX_PROVIDERS = 1_000_000
MAX_VALIDATORS = 32
MAX_CHUNK = 64
MAX_PARAMS = 2**32
MAX_WEIGHT = 2**32
# The largest magnitude of a value of an unmasked update or of a round's delta: the fixed-point
# range every honest update keeps (quantization refuses more). Within it no model leaves int64 in
# MAX_ROUNDS rounds (10,000 * 2**47 < 2**63), where numpy's arithmetic and the chain's int256 agree.
MAX_VALUE = QMAX
MAX_AMOUNT = 2**128
MAX_JOIN_WINDOW = 90 * 86_400
MAX_ROUND_DURATION = 30 * 86_400
MAX_TRAINING_TIME = 730 * 86_400
MAX_CHALLENGE_PERIOD = 30 * 86_400
MAX_CLAIM_PERIOD = 365 * 86_400
# the roles' own floor (a spec's, not the chain's): a day for every member to claim its leaf before
# the requester may sweep what is unclaimed (a claim period of seconds let it sweep everyone's pay)
MIN_CLAIM_PERIOD = 86_400
MAX_RESPONSE_PERIOD = 7 * 86_400
ROUNDS_DEPTH = 14
MAX_FEE_BPS = 1_000
CHALLENGER_BPS = 5_000
BPS = 10_000
RING = 2**64
INT64_LIMIT = 2**63


#: a job member's role (the low bits of its membership word)
Role = enum.IntEnum("Role", [("PROVIDER", 1), ("AGGREGATOR", 2), ("VALIDATOR", 3)])
#: the market's job states (the values of its JobState flag)
JobState = enum.IntFlag("JobState", [("NONE", 0), ("OPEN", 1), ("TRAINING", 2), ("FINALIZING", 4), ("SETTLED", 8),
                                     ("CANCELLED", 16), ("FAILED", 32)])
#: what a reward root's values measure: aggregated weight (provable) or validator scores (approved)
Basis = enum.IntEnum("Basis", [("WEIGHT", 0), ("SCORES", 1)])
#: kinds of dispute game (RoundArbiter: 1-3 and 6, RewardArbiter: 4-5); MODEL walks the model tree to a
#: chunk and then plays AGGREGATE there
Game = enum.IntEnum("Game", [("AGGREGATE", 1), ("LEAF", 2), ("INCLUSION", 3), ("REWARD_SUM", 4), ("REWARD_VALUE", 5),
                             ("MODEL", 6)])
#: whose move a game waits for
Turn = enum.IntEnum("Turn", [("NONE", 0), ("DEFENDER", 1), ("CHALLENGER", 2)])


class Rule(enum.IntEnum):
    """The aggregation rules a dispute recomputes, by on-chain id."""

    WEIGHTED_MEAN = 0
    MEDIAN = 1
    TRIMMED_MEAN = 2
    SECURE_SUM = 3

    @property
    def ranked(self) -> bool:
        return self in (Rule.MEDIAN, Rule.TRIMMED_MEAN)


#: the spec's strategy names and the rule each one is
STRATEGIES = {"fedavg": Rule.WEIGHTED_MEAN, "median": Rule.MEDIAN, "trimmed_mean": Rule.TRIMMED_MEAN}
#: strategies the validators attest: no contract recomputes them, so the aggregator commits each
#: round's result as the secure-sum rule's correction (the contracts then check the arithmetic,
#: validators holding two thirds of the job's validator stake the rule); every update has weight 1
ATTESTED = ("centered_clip", "norm_bounding")
#: |an attested rule's result| is capped here, so that count * result fits the secure sum's int64
ATTESTED_CAP = 2**42


def rule_for(strategy: str, secure: bool = False) -> Rule:
    """The on-chain rule of a job: its strategy, the secure sum when updates are masked, or the
    secure sum carrying an attested strategy's result (`ATTESTED`)."""
    if strategy in ATTESTED:
        if secure:
            raise ConfigError(f"masked updates can only be summed: strategy {strategy} cannot run securely")
        return Rule.SECURE_SUM
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy '{strategy}'; the market can prove {', '.join(STRATEGIES)} "
                          f"and its validators attest {', '.join(ATTESTED)}")
    if secure:
        if STRATEGIES[strategy] != Rule.WEIGHTED_MEAN:
            raise ConfigError(f"masked updates can only be summed: strategy {strategy} cannot run securely")
        return Rule.SECURE_SUM
    return STRATEGIES[strategy]


def as_rule(rule: int) -> Rule:
    try:
        return Rule(int(rule))
    except ValueError:
        raise ConfigError(f"unknown aggregation rule id {rule}") from None


def startable(job: dict) -> bool:
    """`JobMarket.start`'s condition on an open job: accepted, with its minimum providers and
    validators joined (before the join deadline only the aggregator or requester may start it;
    after it anyone, and a job that is not startable may be cancelled by anyone)."""
    return bool(job["accepted"]) and job["n_providers"] >= job["min_providers"] and job["n_validators"] >= job["min_validators"]


def is_slashed(role_word: int) -> bool:
    return int(role_word) & SLASHED != 0


def role_of(role_word: int) -> int:
    return int(role_word) & ROLE_MASK


def provider_in_round(role_word: int, stage: int, round_: int) -> bool:
    """Whether a member's update can count in round ``round_`` (`RoundArbiter._check_update`): it is
    a provider of the job, not slashed before that round (a provider slashed during the round, after
    its update was acknowledged, still has it counted)."""
    return role_of(role_word) == Role.PROVIDER and (not is_slashed(role_word) or round_ <= int(stage))


# ---- the aggregation rules, exact ------------------------------------------------------------


def ring_sum(vectors: Sequence[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """The sum of int64 vectors in the ring of integers modulo 2**64 (as uint64)."""
    acc = np.zeros(shape, dtype=np.uint64)
    for v in vectors:
        acc += np.asarray(v).view(np.uint64)
    return acc


def values_problem(q: np.ndarray, what: str) -> str:
    """'' if every value of `q` is within ±MAX_VALUE; else what is wrong. An aggregator takes no
    update outside it (so its model never wraps in int64 while the chain's does not), and
    validators reject a round that holds one."""
    q = np.asarray(q)
    if q.size and (int(q.max()) > MAX_VALUE or int(q.min()) < -MAX_VALUE):
        return f"{what} has values outside ±2**47, the fixed-point range"
    return ""


def sent_back(q: np.ndarray) -> bool:
    """Whether an update is the model sent back (every value zero): what validators may slash a
    provider for. It is absolute on purpose: a flag relative to the round (a norm far below or
    above the median) is set by whoever else is in the round, so a colluding majority could make an
    honest update look like it, and such flags only cost the round's pay."""
    return not np.any(q)


def apply_delta(model: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """``model + delta`` exactly, as the chain adds them (in int256): ModelOutOfRange at the first
    value whose sum leaves int64, where numpy would wrap."""
    new = model + delta
    wrapped = np.flatnonzero(((delta > 0) & (new < model)) | ((delta < 0) & (new > model)))
    if wrapped.size:
        raise ModelOutOfRange(int(wrapped[0]))
    return new


def secure_mean(masked: Sequence[np.ndarray], correction: np.ndarray, weights: Sequence[int]) -> np.ndarray:
    """``floor(int64((sum(masked) - correction) mod 2**64) / sum(weights))``: the secure-sum rule."""
    acc = ring_sum(masked, np.asarray(correction).shape) - np.asarray(correction).view(np.uint64)
    total = int(sum(weights))
    if total <= 0:
        raise FedMarketError("a secure round needs a positive total weight")
    return acc.view(np.int64) // np.int64(total)


def attested_delta(strategy: str, deltas: Sequence[np.ndarray]) -> np.ndarray:
    """An attested strategy's result over a round's quantized updates (int64, capped to
    ``ATTESTED_CAP``): what validators recompute."""
    from ..fl.attested import centered_clip_int, norm_bounded_mean_int

    rules = {"centered_clip": centered_clip_int, "norm_bounding": norm_bounded_mean_int}
    if strategy not in rules:
        raise ConfigError(f"strategy '{strategy}' is not one the validators attest ({', '.join(ATTESTED)})")
    if len(deltas) == 0:
        raise FedMarketError("no update to aggregate")
    return np.clip(rules[strategy](deltas), -ATTESTED_CAP, ATTESTED_CAP)


def attested_correction(strategy: str, deltas: Sequence[np.ndarray], weights: Sequence[int]) -> np.ndarray:
    """The correction that makes the secure-sum rule give an attested strategy's result:
    ``(sum(deltas) - total_weight * result) mod 2**64`` as int64, so that `secure_mean` over the
    round's updates is exactly `attested_delta`."""
    total = int(sum(int(w) for w in weights))
    if total <= 0 or total > 2**20:
        raise FedMarketError(f"an attested round needs a total weight in [1, 2**20], got {total}")
    result = attested_delta(strategy, deltas)
    shape = np.asarray(deltas[0]).shape
    scaled = (result * np.int64(total)).view(np.uint64)  # |total * result| <= 2**62
    return (ring_sum(deltas, shape) - scaled).view(np.int64)


def aggregate(rule: int, deltas: Sequence[np.ndarray], weights: Sequence[int], trim: int = 0,
              correction: np.ndarray | None = None) -> np.ndarray:
    """The job's rule over a round's quantized updates, in exact integer arithmetic: what the
    aggregator adds to the model and the dispute game recomputes."""
    from ..fl import aggregate as agg

    rule = as_rule(rule)
    if len(deltas) == 0:
        raise FedMarketError("no update to aggregate")
    if rule == Rule.WEIGHTED_MEAN:
        return agg.fedavg_int(deltas, list(weights))
    if rule == Rule.MEDIAN:
        return agg.median_int(deltas)
    if rule == Rule.TRIMMED_MEAN:
        return agg.trimmed_mean_int(deltas, effective_trim(len(deltas), trim))
    if correction is None:
        raise FedMarketError("a secure round needs its mask correction")
    return secure_mean(deltas, correction, weights)


# ---- the dispute game's additive claims ------------------------------------------------------


def effective_trim(count: int, trim: int) -> int:
    """How many values a trimmed mean of ``count`` values drops from each end: ``trim``, or as many
    as still keep one or two when the round is smaller (`rules._ranks`)."""
    return min(int(trim), (int(count) - 1) // 2)


def ranks(rule: int, count: int, trim: int) -> tuple[int, int]:
    """The lowest and highest kept rank of a ranked rule over ``count`` values."""
    if as_rule(rule) == Rule.MEDIAN:
        return (count - 1) // 2, count // 2
    t = effective_trim(count, trim)
    return t, count - 1 - t


def hints(rule: int, values: np.ndarray, trim: int) -> tuple[list[int], list[int]]:
    """Order statistics at the kept ranks of each coordinate (rows: updates; columns: coordinates)."""
    if not as_rule(rule).ranked or values.shape[0] == 0:
        return [], []
    lo_rank, hi_rank = ranks(rule, values.shape[0], trim)
    s = np.sort(values, axis=0)
    return [int(v) for v in s[lo_rank]], [int(v) for v in s[hi_rank]]


def leaf_claim(rule: int, chunk: Sequence[int], weight: int, lo: Sequence[int] = (), hi: Sequence[int] = ()) -> list[int]:
    """The claim of one update at one chunk (`rules._leaf_claim`)."""
    rule = as_rule(rule)
    if rule == Rule.WEIGHTED_MEAN:
        return [int(v) * int(weight) for v in chunk] + [int(weight)]
    if rule == Rule.SECURE_SUM:
        return [int(v) % RING for v in chunk] + [int(weight)]
    out: list[int] = []
    for c, v in enumerate(chunk):
        v = int(v)
        a, b = int(lo[c]), int(hi[c])
        out += [int(v < a), int(v == a), int(v < b), int(v == b), v if a < v < b else 0]
    return out


def range_claim(rule: int, chunks: np.ndarray, weights: Sequence[int], lo: Sequence[int] = (),
                hi: Sequence[int] = ()) -> list[int]:
    """The claim over several updates (rows of ``chunks``): the sum of their leaf claims, the
    secure sum's value lanes modulo 2**64. Vectorised, exact (Python integers where needed)."""
    rule = as_rule(rule)
    chunks = np.asarray(chunks, dtype=np.int64)
    if chunks.ndim != 2:
        chunks = chunks.reshape(len(weights), -1)
    width = chunks.shape[1]
    if rule == Rule.WEIGHTED_MEAN:
        w = np.asarray([int(x) for x in weights], dtype=object)
        sums = (chunks.astype(object) * w[:, None]).sum(axis=0) if len(weights) else [0] * width
        return [int(x) for x in sums] + [int(sum(int(x) for x in weights))]
    if rule == Rule.SECURE_SUM:
        sums = chunks.view(np.uint64).sum(axis=0, dtype=np.uint64) if len(weights) else np.zeros(width, np.uint64)
        return [int(x) for x in sums] + [int(sum(int(x) for x in weights))]
    if not len(weights):  # no rows: nothing below, at or between any hints (the chain ignores them at count 0)
        return [0] * 5 * width
    # hints are the defender's int256 words: past int64 they are compared as Python integers (exact),
    # else a hint of -2**63 - 1 raised out of the watcher's every move, and it lost every game by timeout
    wide = any(not -INT64_LIMIT <= int(v) < INT64_LIMIT for v in (*lo, *hi))
    a = np.asarray([int(v) for v in lo], dtype=object if wide else np.int64)
    b = np.asarray([int(v) for v in hi], dtype=object if wide else np.int64)
    if wide:
        chunks = chunks.astype(object)
    between = np.where((chunks > a) & (chunks < b), chunks, 0).astype(object).sum(axis=0)
    parts = [(chunks < a).sum(axis=0), (chunks == a).sum(axis=0), (chunks < b).sum(axis=0), (chunks == b).sum(axis=0)]
    out: list[int] = []
    for c in range(width):
        out += [int(parts[0][c]), int(parts[1][c]), int(parts[2][c]), int(parts[3][c]), int(between[c])]
    return out


def right(width: int, parent: Sequence[int], left: Sequence[int]) -> list[int]:
    """The right half's claim from its range's and its left half's (`rules._right`); ``width`` > 0
    only for a secure round's aggregate game, whose first ``width`` lanes live modulo 2**64, each
    in [0, 2**64): ValueError for a left claim outside it (the chain reverts)."""
    out = []
    for i, (p, q) in enumerate(zip(parent, left)):
        d = int(p) - int(q)
        if i < width:
            if not 0 <= int(q) < RING:
                raise ValueError(f"claim lane {i} outside the ring")
            d %= RING
        out.append(d)
    return out


def root_ok(rule: int, count: int, trim: int, claim: Sequence[int], lo: Sequence[int], hi: Sequence[int],
            prev: Sequence[int], new: Sequence[int], correction: Sequence[int] = ()) -> bool:
    """Whether a claim over all of a round's updates turns ``prev`` into ``new`` (`rules._root_ok`)."""
    rule = as_rule(rule)
    width = len(new)
    length = 5 * width if rule.ranked else width + 1
    if len(prev) != width or len(claim) != length:
        return False
    if count == 0:
        return all(x == 0 for x in claim) and list(prev) == list(new)
    if not rule.ranked:
        total = claim[width]
        if total <= 0 or (rule == Rule.SECURE_SUM and len(correction) != width):
            return False
        for c in range(width):
            s = claim[c]
            if rule == Rule.SECURE_SUM:
                if not 0 <= s < RING:
                    return False
                s = (s - correction[c]) % RING
                if s >= INT64_LIMIT:
                    s -= RING
            if prev[c] + s // total != new[c]:
                return False
        return True
    if len(lo) != width or len(hi) != width:
        return False
    lr, hr = ranks(rule, count, trim)
    kept = hr - lr + 1
    for c in range(width):
        a, b = lo[c], hi[c]
        lo_less, lo_eq, hi_less, hi_eq, between = claim[5 * c : 5 * c + 5]
        if a > b or min(lo_less, lo_eq, hi_less, hi_eq) < 0:
            return False
        if not (lo_less <= lr < lo_less + lo_eq and hi_less <= hr < hi_less + hi_eq):
            return False
        total = a * kept if a == b else between + a * (lo_less + lo_eq - lr) + b * (hr - hi_less + 1)
        if prev[c] + total // kept != new[c]:
            return False
    return True


# ---- the reward rule (`RewardArbiter._leaf_ok`) ----------------------------------------------


@dataclass(frozen=True)
class RoleFees:
    """The fees a job's terms pay its roles (`JobTerms.aggregator_fee`, `validator_fee`): the
    aggregator's per committed round, a validator's per attestation of a round's committed
    model. ``reserved`` is what the escrow sets aside for them (`terms._reserved`)."""

    aggregator: int = 0
    validator: int = 0
    rounds: int = 0
    n_validators: int = 0

    @property
    def reserved(self) -> int:
        return int(self.rounds) * (int(self.aggregator) + int(self.n_validators) * int(self.validator))

    @classmethod
    def of(cls, terms, n_validators: int) -> RoleFees:
        """The fees of a job's terms (`market.JobTerms`) with ``n_validators`` joined validators."""
        return cls(int(terms.aggregator_fee), int(terms.validator_fee), int(terms.rounds), int(n_validators))


def pool(escrow: int, fee_bps: int, miss_payout_bps: int, gate_met: bool, reserved: int = 0) -> int:
    """What a reward root may pay: the escrow less the protocol fee; when the quality target was
    missed, the roles' reserved fees plus the miss payout's share of the rest (`Disputes.reward_pool`)."""
    out = escrow - escrow * fee_bps // BPS
    return out if gate_met else reserved + (out - reserved) * miss_payout_bps // BPS


def final_stage(challenge_deadline: int) -> int:
    """The stage of a slash made under the reward root that stands (`JobMarket.slash`): STAGE_FINAL
    plus that root's challenge deadline (0 while no root stands, so every slash is a cut then)."""
    return STAGE_FINAL + int(challenge_deadline)


def relative_stage(stage: int, final: int) -> int:
    """A slash stage as seen by the standing root: STAGE_FINAL if slashed under it, else a stage
    that is a cut (so the default `final` of the functions below applies)."""
    return STAGE_FINAL if int(stage) == int(final) else min(int(stage), STAGE_FINAL - 1)


def cut_before_root(role_word: int, stage: int, final: int = STAGE_FINAL) -> bool:
    """Whether a member was slashed before the standing reward root was posted, or under a root
    since discarded (it then earns nothing); `final` is `final_stage` of the job."""
    return is_slashed(role_word) and int(stage) != int(final)


def counted_value(leaf: dict, role_word: int, stage: int, final: int = STAGE_FINAL) -> int:
    """A leaf's share of the root's value total: an unslashed provider's value, else 0."""
    if role_of(role_word) == Role.PROVIDER and not cut_before_root(role_word, stage, final):
        return int(leaf["value"])
    return 0


def leaf_due(role: int, value: int, activity: int, rounds: int, basis: int, pool_: int, value_total: int,
             cut: bool, fees: RoleFees = RoleFees()) -> tuple[int, int]:
    """(amount, reputation delta) a member's leaf must carry: a provider's share of what the
    roles' fees leave of the pool, a validator's fee per attestation, the aggregator's fee per
    round (weight basis; in the scores basis a validator's delta is the validators' judgement
    within +-rounds)."""
    if cut:
        return 0, -max(activity, 1)
    if role == Role.PROVIDER:
        return ((pool_ - fees.reserved) * value // value_total if value_total > 0 else 0), activity
    if role == Role.VALIDATOR:
        return fees.validator * activity, 2 * activity - rounds
    return fees.aggregator * rounds, rounds


def leaf_ok(leaf: dict, role_word: int, stage: int, basis: int, pool_: int, value_total: int, rounds: int,
            final: int = STAGE_FINAL, fees: RoleFees = RoleFees()) -> bool:
    """Whether a reward leaf follows the reward rule for the member it names."""
    role = role_of(role_word)
    if role == 0 or role != int(leaf["role"]):
        return False
    value, activity = int(leaf["value"]), int(leaf["activity"])
    amount, delta = int(leaf["amount"]), int(leaf["reputation_delta"])
    if activity > rounds or value > MAX_AMOUNT:
        return False
    cut = cut_before_root(role_word, stage, final)
    due, due_delta = leaf_due(role, value, activity, rounds, basis, pool_, value_total, cut, fees)
    if cut or role == Role.PROVIDER:
        return amount == due and delta == due_delta
    if amount != due or value != 0:
        return False
    if basis == Basis.SCORES:
        return -rounds <= delta <= rounds
    if role == Role.AGGREGATOR:
        return activity == rounds and delta == rounds
    return delta == due_delta


# ---- privacy loss (`terms._epsilon`) -----------------------------------------------------------


def epsilon_micro(noise: int, delta_log: int, rounds: int) -> int:
    """Epsilon (millionths, rounded up) after ``rounds`` Gaussian releases of noise multiplier
    ``noise / 10**6`` at ``delta = exp(-delta_log / 10**6)``: rho-zCDP with ``rho = rounds / (2 z**2)``,
    converted to ``(rho + 2 sqrt(rho ln(1/delta)), delta)``-DP (Bun & Steinke 2016), exactly as
    `modules/terms.vy::_epsilon` computes it on chain."""
    two_z2 = 2 * int(noise) * int(noise)
    rho = (int(rounds) * 10**18 + two_z2 - 1) // two_z2
    return rho + 2 * (math.isqrt(rho * int(delta_log)) + 1)


def delta_log_micro(delta: float) -> int:
    """``ln(1/delta)`` in millionths, rounded up (a larger value only makes epsilon larger)."""
    if not 0 < delta < 1:
        raise ConfigError(f"delta must be in (0, 1), got {delta}")
    return math.ceil(-math.log(delta) * EPSILON_SCALE)


def noise_micro_for(budget_micro: int, delta_log: int, rounds: int) -> int:
    """The smallest noise multiplier (millionths) whose epsilon after ``rounds`` rounds is within
    ``budget_micro``: what a private job's terms carry when its spec fixes only the budget."""
    if epsilon_micro(MAX_NOISE, delta_log, rounds) > budget_micro:
        raise ConfigError(f"no noise multiplier up to {MAX_NOISE / EPSILON_SCALE:g} keeps {rounds} rounds within "
                          f"epsilon {budget_micro / EPSILON_SCALE:g}")
    lo, hi = 1, MAX_NOISE
    while lo < hi:
        mid = (lo + hi) // 2
        if epsilon_micro(mid, delta_log, rounds) <= budget_micro:
            hi = mid
        else:
            lo = mid + 1
    return lo
