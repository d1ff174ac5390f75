# pragma version 0.4.3
# pragma evm-version cancun
"""
@title fedmarket rules
@notice The aggregation rules of `modules/rules.vy` as pure calls: what the round arbiter
        recomputes, and what clients can ask a node to check their own claims against.
@license AGPL-3.0-only
"""

from modules import constants as C
from modules import rules


@pure
@external
def leaf_claim(
    rule: uint256,
    chunk: DynArray[int256, C.MAX_CHUNK],
    weight: uint256,
    lo: DynArray[int256, C.MAX_CHUNK],
    hi: DynArray[int256, C.MAX_CHUNK],
) -> DynArray[int256, rules.MAX_CLAIM]:
    """
    @notice The claim of one update at one chunk (its contribution to the round's sum).
    @param rule The job's rule id.
    @param chunk The update's values at the chunk.
    @param weight The update's weight.
    @param lo The round's low order statistics (ranked rules).
    @param hi The round's high order statistics (ranked rules).
    @return The claim.
    """
    return rules._leaf_claim(rule, chunk, weight, lo, hi)


@pure
@external
def root_ok(
    rule: uint256,
    count: uint256,
    trim: uint256,
    claim: DynArray[int256, rules.MAX_CLAIM],
    lo: DynArray[int256, C.MAX_CHUNK],
    hi: DynArray[int256, C.MAX_CHUNK],
    prev: DynArray[int256, C.MAX_CHUNK],
    new: DynArray[int256, C.MAX_CHUNK],
    correction: DynArray[int256, C.MAX_CHUNK],
) -> bool:
    """
    @notice Whether a claim over all `count` updates of a round turns `prev` into `new` by the rule.
    @param rule The job's rule id.
    @param count The round's number of updates.
    @param trim The job's trim (trimmed mean).
    @param claim The claim.
    @param lo The claimed low order statistics (ranked rules).
    @param hi The claimed high order statistics (ranked rules).
    @param prev The previous model's chunk (zeros at round 0).
    @param new The committed model's chunk.
    @param correction A secure round's mask correction chunk.
    @return True if the claim gives the model.
    """
    return rules._root_ok(rule, count, trim, claim, lo, hi, prev, new, correction)
