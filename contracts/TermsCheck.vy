# pragma version 0.4.3
# pragma evm-version cancun
"""
@title fedmarket terms check
@notice The bounds on every term of a job, as one call: `JobMarket.post_job` reverts with
        the reason this returns, and clients ask it before they post. Bounds keep every sum
        and product of a job's amounts, counts and periods far from overflow, no escrow or
        stake locked for longer than the periods allow, and every period long enough for a
        vote or a game move to land on this chain (`MIN_PERIOD`, set for the chain at deployment).
@license AGPL-3.0-only
"""

from modules import terms as T

# @dev The shortest round duration, response, challenge and claim period a job may set: enough
#      blocks of this chain for a transaction sent at the start of a period to be mined in it.
MIN_PERIOD: public(immutable(uint256))


@deploy
def __init__(min_period: uint256):
    """
    @notice Deploys the terms check of one chain.
    @param min_period The shortest period a job may set, in seconds (1 to 86,400).
    """
    assert min_period >= 1 and min_period <= 86_400, "terms: minimum period out of range"
    MIN_PERIOD = min_period


@view
@external
def problem(terms: T.JobTerms, requester: address, now: uint256) -> String[64]:
    """
    @notice The first term of `terms` out of its bounds, as a one-line reason; "" if none.
    @param terms The job's terms.
    @param requester Who posts them.
    @param now The posting time.
    @return The reason, or the empty string.
    """
    reason: String[64] = T._problem(terms, requester, now)
    if len(reason) > 0:
        return reason
    if min(min(terms.round_duration, terms.response_period), min(terms.challenge_period, terms.claim_period)) < MIN_PERIOD:
        return "market: a period is shorter than this chain allows"
    return ""
