# pragma version 0.4.3
"""
@title fedmarket stake ledger
@notice Stakes per account and role, their locks in jobs, and slashing. Free stake leaves
        only through `request_unbond` + `withdraw` after the unbonding delay. A job's stake is
        locked in one membership word per account (`stake << 8 | role`, one role per account
        and job) from joining until the job is over; it is slashable only while the job runs,
        so a stake released from a finished job is never owed to it, and a stake that backs a
        running job cannot move anywhere else.
@license AGPL-3.0-only
"""

from ethereum.ercs import IERC20
from modules import constants as C


struct Unbonding:
    amount: uint256
    release_time: uint256


event StakeDeposited:
    account: indexed(address)
    role: indexed(uint256)
    amount: uint256


event UnbondRequested:
    account: indexed(address)
    role: indexed(uint256)
    amount: uint256
    release_time: uint256


event StakeWithdrawn:
    account: indexed(address)
    role: indexed(uint256)
    amount: uint256


event StakeReleased:
    job_id: indexed(uint256)
    account: indexed(address)
    role: uint256
    amount: uint256


event StakeSlashed:
    job_id: indexed(uint256)
    account: indexed(address)
    role: uint256
    amount: uint256
    challenger: address
    challenger_share: uint256
    beneficiary: address


# @dev The ERC-20 token of escrows, stakes and rewards.
TOKEN: public(immutable(IERC20))
# @dev Seconds between an unbonding request and the withdrawal it allows.
UNBONDING_DELAY: public(immutable(uint256))
# @dev Receiver of the non-challenger share of every slashed stake.
TREASURY: public(immutable(address))

# @dev Stake deposited and not locked in any job, per account and role.
free_stake: public(HashMap[address, HashMap[uint256, uint256]])
# @dev Stake on its way out, per account and role.
unbonding: public(HashMap[address, HashMap[uint256, Unbonding]])
# @dev Membership of each account in each job: (stake << 8) | role, or (stage << 8) | role | SLASHED.
_member: HashMap[uint256, HashMap[address, uint256]]
# @dev Members slashed in each job so far: a reward root names the count it was derived with.
slashes: public(HashMap[uint256, uint256])


@deploy
def __init__(token: IERC20, treasury: address, unbonding_delay: uint256):
    TOKEN = token
    TREASURY = treasury
    UNBONDING_DELAY = unbonding_delay


@external
@nonreentrant
def deposit(role: uint256, amount: uint256):
    """
    @notice Deposits stake for a role; it stays free until a job locks it.
    @param role ROLE_PROVIDER, ROLE_AGGREGATOR or ROLE_VALIDATOR.
    @param amount Tokens to deposit (the market must be approved for them).
    """
    assert role >= C.ROLE_PROVIDER and role <= C.ROLE_VALIDATOR, "market: bad role"
    assert amount > 0 and amount <= C.MAX_AMOUNT, "market: bad amount"
    self.free_stake[msg.sender][role] += amount
    self._pull(msg.sender, amount)
    log StakeDeposited(account=msg.sender, role=role, amount=amount)


@external
@nonreentrant
def request_unbond(role: uint256, amount: uint256):
    """
    @notice Moves free stake into unbonding; it can be withdrawn after `UNBONDING_DELAY`.
            A new request adds to the pending amount and restarts the delay for all of it.
    @param role The role whose stake unbonds.
    @param amount Tokens to unbond.
    """
    assert role >= C.ROLE_PROVIDER and role <= C.ROLE_VALIDATOR, "market: bad role"
    assert amount > 0, "market: amount is zero"
    free: uint256 = self.free_stake[msg.sender][role]
    assert free >= amount, "market: not enough free stake"
    self.free_stake[msg.sender][role] = free - amount
    release: uint256 = block.timestamp + UNBONDING_DELAY
    self.unbonding[msg.sender][role].amount += amount
    self.unbonding[msg.sender][role].release_time = release
    log UnbondRequested(account=msg.sender, role=role, amount=amount, release_time=release)


@external
@nonreentrant
def withdraw(role: uint256):
    """
    @notice Withdraws unbonded stake once its delay has passed.
    @param role The role whose unbonded stake is withdrawn.
    """
    amount: uint256 = self.unbonding[msg.sender][role].amount
    assert amount > 0, "market: nothing unbonding"
    assert block.timestamp >= self.unbonding[msg.sender][role].release_time, "market: still unbonding"
    self.unbonding[msg.sender][role] = empty(Unbonding)
    self._push(msg.sender, amount)
    log StakeWithdrawn(account=msg.sender, role=role, amount=amount)


@view
@external
def membership(job_id: uint256, account: address) -> (uint256, uint256):
    """
    @notice Role of `account` in job `job_id` (0 if none, with the SLASHED bit once slashed)
            and its stake still locked there (once slashed: the stage at which it was).
    @param job_id The job.
    @param account The account.
    @return role The role word.
    @return stake The locked stake, or the slash stage.
    """
    word: uint256 = self._member[job_id][account]
    return word & 255, word >> C.ROLE_BITS


@view
@internal
def _role_of(job_id: uint256, account: address) -> uint256:
    return self._member[job_id][account] & 255


@internal
def _lock(job_id: uint256, account: address, role: uint256, amount: uint256):
    """Locks `amount` of the account's free stake for the job, pulling any shortfall."""
    assert self._member[job_id][account] == 0, "market: already a participant"
    free: uint256 = self.free_stake[account][role]
    if free >= amount:
        if amount > 0:
            self.free_stake[account][role] = free - amount
    else:
        if free > 0:
            self.free_stake[account][role] = 0
        self._pull(account, amount - free)
    self._member[job_id][account] = (amount << C.ROLE_BITS) | role


@internal
def _release(job_id: uint256, account: address) -> (uint256, uint256):
    """Unlocks the account's job stake; returns (role word, amount). A provider's stake is
    returned by the caller; an aggregator's or validator's goes to free stake."""
    word: uint256 = self._member[job_id][account]
    role: uint256 = word & 255
    if role & C.SLASHED != 0:
        return role, 0
    amount: uint256 = word >> C.ROLE_BITS
    if amount == 0:
        return role, 0
    self._member[job_id][account] = role
    if role != C.ROLE_PROVIDER:
        self.free_stake[account][role] += amount
        log StakeReleased(job_id=job_id, account=account, role=role, amount=amount)
    return role, amount


@internal
def _slash(job_id: uint256, account: address, stage: uint256, challenger: address) -> uint256:
    """Takes the account's locked job stake (at most once per job) and records the stage of the
    slash: `CHALLENGER_BPS` to the challenger, the rest to the treasury. Returns the amount."""
    word: uint256 = self._member[job_id][account]
    role: uint256 = word & 255
    assert role != 0 and role & C.SLASHED == 0, "market: not slashable"
    amount: uint256 = word >> C.ROLE_BITS
    self._member[job_id][account] = (stage << C.ROLE_BITS) | role | C.SLASHED
    self.slashes[job_id] += 1
    self._pay_slash(job_id, account, role, amount, challenger)
    return amount


@internal
def _pay_slash(job_id: uint256, account: address, role: uint256, amount: uint256, challenger: address):
    """Splits a slashed amount: `CHALLENGER_BPS` to whoever proved the fault, the rest to the treasury."""
    share: uint256 = amount * C.CHALLENGER_BPS // C.BPS
    self._push(challenger, share)
    self._push(TREASURY, amount - share)
    log StakeSlashed(
        job_id=job_id,
        account=account,
        role=role,
        amount=amount,
        challenger=challenger,
        challenger_share=share,
        beneficiary=TREASURY,
    )


@internal
def _pull(owner: address, amount: uint256):
    if amount > 0:
        assert extcall TOKEN.transferFrom(owner, self, amount, default_return_value=True), "market: transfer in failed"


@internal
def _push(to: address, amount: uint256):
    if amount > 0:
        assert extcall TOKEN.transfer(to, amount, default_return_value=True), "market: transfer out failed"
