# pragma version 0.4.3
"""
@title fedmarket aggregation rules
@notice Each aggregation rule, once, as the dispute game needs it. A rule is an additive
        *claim* per update (a vector that sums over any range of a round's updates) and a
        *root check* that turns the claim over all of a round's updates into the new model
        chunk. The aggregator defends a chunk of a round by claiming the sum over every range
        the challenger bisects down to, so no step ever reads more than one update.

        Claims per chunk of width w:
        - weighted mean:   [w_i * q_i[0..w), w_i]  ->  new = prev + floor(S / W)
        - secure sum:      [y_i[0..w) mod 2**64, w_i] -> new = prev + floor(int64((S - correction) mod 2**64) / W)
        - median, trimmed mean (order statistics `lo`, `hi` named once for the round), per
          coordinate: [v < lo, v == lo, v < hi, v == hi, v if lo < v < hi]: the counts prove
          `lo` and `hi` are the values at the kept ranks, and the kept sum follows from them.
        `fedmarket.protocol.rules` computes the same claims in Python, byte for byte.
@license AGPL-3.0-only
"""

from modules import constants as C

# @dev Longest claim: five words per coordinate of a 64-value chunk.
MAX_CLAIM: constant(uint256) = 320
# @dev Largest magnitude of a fixed-point value (int64).
INT64_LIMIT: constant(int256) = 2**63


@pure
@internal
def _claim_length(rule: uint256, width: uint256) -> uint256:
    if rule == C.RULE_MEDIAN or rule == C.RULE_TRIMMED_MEAN:
        return 5 * width
    return width + 1


@pure
@internal
def _in_int64(values: DynArray[int256, C.MAX_CHUNK]) -> bool:
    for v: int256 in values:
        if v < -INT64_LIMIT or v >= INT64_LIMIT:
            return False
    return True


@pure
@internal
def _leaf_claim(
    rule: uint256,
    chunk: DynArray[int256, C.MAX_CHUNK],
    weight: uint256,
    lo: DynArray[int256, C.MAX_CHUNK],
    hi: DynArray[int256, C.MAX_CHUNK],
) -> DynArray[int256, MAX_CLAIM]:
    """The claim of one update: its contribution to the round's sum at this chunk."""
    out: DynArray[int256, MAX_CLAIM] = []
    w: int256 = convert(weight, int256)
    if rule == C.RULE_WEIGHTED_MEAN:
        for v: int256 in chunk:
            out.append(v * w)
        out.append(w)
    elif rule == C.RULE_SECURE_SUM:
        for v: int256 in chunk:
            out.append(v if v >= 0 else v + convert(C.RING, int256))
        out.append(w)
    else:
        for c: uint256 in range(len(chunk), bound=C.MAX_CHUNK):
            v: int256 = chunk[c]
            out.append(1 if v < lo[c] else 0)
            out.append(1 if v == lo[c] else 0)
            out.append(1 if v < hi[c] else 0)
            out.append(1 if v == hi[c] else 0)
            out.append(v if (v > lo[c] and v < hi[c]) else 0)
    return out


@pure
@internal
def _right(width: uint256, parent: DynArray[int256, MAX_CLAIM], left: DynArray[int256, MAX_CLAIM]) -> DynArray[int256, MAX_CLAIM]:
    """The claim of the right half of a range, given the claims of the range and of its left half.
    The first `width` lanes (a secure sum's values; zero for every other game) live modulo 2**64,
    each in [0, 2**64): a left claim outside it (the same in the ring, another integer) would send
    an honest challenger after the wrong half."""
    out: DynArray[int256, MAX_CLAIM] = []
    for i: uint256 in range(len(parent), bound=MAX_CLAIM):
        d: int256 = parent[i] - left[i]
        if i < width:
            # both in [0, 2**64) (a parent is a root claim `_root_ok` bounds, or a half checked here)
            assert convert(convert(left[i], bytes32), uint256) < C.RING, "arbiter: claim outside the ring"
            if d < 0:
                d += convert(C.RING, int256)
        out.append(d)
    return out


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
def _ranks(rule: uint256, count: uint256, trim: uint256) -> (uint256, uint256):
    """The lowest and highest kept rank of a ranked rule over `count` values. A trimmed mean of
    `count <= 2 * trim` values trims as many as it can and still keep one or two (`(count - 1) // 2`
    from each end): a round the silence of providers has shrunk is still one the rule defines."""
    if rule == C.RULE_MEDIAN:
        return (count - 1) // 2, count // 2
    t: uint256 = min(trim, (count - 1) // 2)
    return t, count - 1 - t


@pure
@internal
def _root_ok(
    rule: uint256,
    count: uint256,
    trim: uint256,
    claim: DynArray[int256, MAX_CLAIM],
    lo: DynArray[int256, C.MAX_CHUNK],
    hi: DynArray[int256, C.MAX_CHUNK],
    prev: DynArray[int256, C.MAX_CHUNK],
    new: DynArray[int256, C.MAX_CHUNK],
    correction: DynArray[int256, C.MAX_CHUNK],
) -> bool:
    """Whether the claim over all `count` updates of a round turns `prev` into `new` by the rule."""
    width: uint256 = len(new)
    if len(prev) != width or len(claim) != self._claim_length(rule, width):
        return False
    if count == 0:
        # an empty round keeps the model: the claim over no update is zero
        for x: int256 in claim:
            if x != 0:
                return False
        for c: uint256 in range(width, bound=C.MAX_CHUNK):
            if prev[c] != new[c]:
                return False
        return True
    if rule == C.RULE_WEIGHTED_MEAN or rule == C.RULE_SECURE_SUM:
        total: int256 = claim[width]
        if total <= 0:
            return False
        if rule == C.RULE_SECURE_SUM and len(correction) != width:
            return False
        for c: uint256 in range(width, bound=C.MAX_CHUNK):
            s: int256 = claim[c]
            if rule == C.RULE_SECURE_SUM:
                ring: int256 = convert(C.RING, int256)
                if s < 0 or s >= ring:
                    return False
                s = (s - correction[c]) % ring
                if s < 0:
                    s += ring
                if s >= INT64_LIMIT:
                    s -= ring
            if prev[c] + self._floor_div(s, total) != new[c]:
                return False
        return True
    if len(lo) != width or len(hi) != width:
        return False
    lo_rank: uint256 = 0
    hi_rank: uint256 = 0
    lo_rank, hi_rank = self._ranks(rule, count, trim)
    kept: int256 = convert(hi_rank - lo_rank + 1, int256)
    lr: int256 = convert(lo_rank, int256)
    hr: int256 = convert(hi_rank, int256)
    for c: uint256 in range(width, bound=C.MAX_CHUNK):
        a: int256 = lo[c]
        b: int256 = hi[c]
        lo_less: int256 = claim[5 * c]
        lo_eq: int256 = claim[5 * c + 1]
        hi_less: int256 = claim[5 * c + 2]
        hi_eq: int256 = claim[5 * c + 3]
        between: int256 = claim[5 * c + 4]
        if a > b or lo_less < 0 or lo_eq < 0 or hi_less < 0 or hi_eq < 0:
            return False
        # `a` and `b` are the order statistics at the kept ranks
        if not (lo_less <= lr and lr < lo_less + lo_eq and hi_less <= hr and hr < hi_less + hi_eq):
            return False
        total: int256 = 0
        if a == b:
            total = a * kept
        else:
            total = between + a * (lo_less + lo_eq - lr) + b * (hr - hi_less + 1)
        if prev[c] + self._floor_div(total, kept) != new[c]:
            return False
    return True
