# pragma version 0.4.3
# pragma evm-version cancun
"""
@title fedmarket terms check
@notice The bounds on every term of a job, as one pure call: `JobMarket.post_job` reverts with
        the reason this returns, and clients ask it before they post. Bounds keep every sum
        and product of a job's amounts, counts and periods far from overflow, and no escrow or
        stake locked for longer than the periods allow.
@license AGPL-3.0-only
"""

from modules import terms as T


@pure
@external
def problem(terms: T.JobTerms, requester: address, now: uint256) -> String[64]:
    """
    @notice The first term of `terms` out of its bounds, as a one-line reason; "" if none.
    @param terms The job's terms.
    @param requester Who posts them.
    @param now The posting time.
    @return The reason, or the empty string.
    """
    return T._problem(terms, requester, now)
