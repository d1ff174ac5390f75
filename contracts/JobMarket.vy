# pragma version 0.4.3
# pragma evm-version cancun
"""
@title fedmarket job market
@notice Registry, escrow and stake ledger of federated-learning jobs.
        A requester posts a job (committed by the hash of its spec) and locks
        the reward; the job's aggregator accepts it with a stake; providers and
        validators join with stakes; the aggregator commits every round in one
        transaction carrying the round's roots; after the last round it posts
        one Merkle root of `(index, account, amount, reputationDelta)` and, once
        the challenge window has passed, anyone settles the job. Every
        participant then pulls its reward in one claim, which also releases its
        stake and moves its (soulbound) reputation.

        State machine:  Open -> Training -> Finalizing -> Settled,
        side exits Open -> Cancelled and Training | Finalizing -> Failed.
        Every timeout can be triggered by anyone. Proofs of cheating are checked
        by the `Disputes` contract, the only address allowed to slash here.
        There is no admin: token, disputes contract, treasury, fee and
        unbonding delay are fixed at deployment.
@license AGPL-3.0-only
"""

from ethereum.ercs import IERC20
from snekmate.utils import merkle_proof_verification as merkle


interface IDisputes:
    def quorum_of(job_id: uint256, round: uint256, total_stake: uint256) -> bool: view
    def approved_of(job_id: uint256, reward_root: bytes32, reward_total: uint256, total_stake: uint256) -> bool: view


flag JobState:
    OPEN
    TRAINING
    FINALIZING
    SETTLED
    CANCELLED
    FAILED


# @dev Immutable terms of a job, as posted.
struct JobTerms:
    spec_hash: bytes32
    aggregator: address
    escrow: uint256
    provider_stake: uint256
    aggregator_stake: uint256
    validator_stake: uint256
    min_providers: uint256
    max_providers: uint256
    max_validators: uint256
    rounds: uint256
    join_deadline: uint256
    round_duration: uint256
    challenge_period: uint256
    claim_period: uint256
    rule: uint256
    trim: uint256
    chunk_size: uint256
    licence_price: uint256
    privacy_budget: uint256


struct Job:
    requester: address
    aggregator: address
    spec_hash: bytes32
    state: JobState
    escrow: uint256
    provider_stake: uint256
    aggregator_stake: uint256
    validator_stake: uint256
    min_providers: uint256
    max_providers: uint256
    n_providers: uint256
    max_validators: uint256
    n_validators: uint256
    validator_total_stake: uint256
    accepted: bool
    rounds: uint256
    current_round: uint256
    join_deadline: uint256
    round_duration: uint256
    round_deadline: uint256
    challenge_period: uint256
    claim_period: uint256
    rule: uint256
    trim: uint256
    chunk_size: uint256
    licence_price: uint256
    privacy_budget: uint256
    reward_root: bytes32
    reward_total: uint256
    claimed_total: uint256
    challenge_deadline: uint256
    claim_deadline: uint256


struct Unbonding:
    amount: uint256
    release_time: uint256


event JobPosted:
    job_id: indexed(uint256)
    requester: indexed(address)
    aggregator: indexed(address)
    spec_hash: bytes32
    spec_cid: String[128]
    escrow: uint256


event JobAccepted:
    job_id: indexed(uint256)
    aggregator: indexed(address)
    stake: uint256


event ProviderJoined:
    job_id: indexed(uint256)
    provider: indexed(address)
    stake: uint256
    n_providers: uint256


event ValidatorJoined:
    job_id: indexed(uint256)
    validator: indexed(address)
    stake: uint256
    n_validators: uint256


event TrainingStarted:
    job_id: indexed(uint256)
    n_providers: uint256
    round_deadline: uint256
    seed: bytes32


event RoundCommitted:
    job_id: indexed(uint256)
    round: indexed(uint256)
    model_root: bytes32
    updates_root: bytes32
    count: uint256
    metrics_hash: bytes32
    epsilon_spent: uint256
    next_seed: bytes32
    model_cid: String[128]


event RewardRootPosted:
    job_id: indexed(uint256)
    reward_root: bytes32
    reward_total: uint256
    challenge_deadline: uint256
    rewards_cid: String[128]


event JobSettled:
    job_id: indexed(uint256)
    fee: uint256
    refund: uint256
    claim_deadline: uint256


event JobCancelled:
    job_id: indexed(uint256)
    refund: uint256


event JobFailed:
    job_id: indexed(uint256)
    round: uint256
    refund: uint256
    reason: String[32]


event RewardClaimed:
    job_id: indexed(uint256)
    account: indexed(address)
    index: uint256
    amount: uint256
    stake_released: uint256


event ReputationChanged:
    account: indexed(address)
    delta: int256
    reputation: int256


event StakeDeposited:
    account: indexed(address)
    role: indexed(uint256)
    amount: uint256


event StakeReleased:
    job_id: indexed(uint256)
    account: indexed(address)
    role: uint256
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


event StakeSlashed:
    job_id: indexed(uint256)
    account: indexed(address)
    role: uint256
    amount: uint256
    challenger: address
    challenger_share: uint256
    beneficiary: address


event UnclaimedSwept:
    job_id: indexed(uint256)
    amount: uint256


# @dev Roles of a job participant.
ROLE_PROVIDER: public(constant(uint256)) = 1
ROLE_AGGREGATOR: public(constant(uint256)) = 2
ROLE_VALIDATOR: public(constant(uint256)) = 3
# @dev Aggregation rules a fraud proof recomputes.
RULE_WEIGHTED_MEAN: public(constant(uint256)) = 0
RULE_MEDIAN: public(constant(uint256)) = 1
RULE_TRIMMED_MEAN: public(constant(uint256)) = 2
RULE_SECURE_SUM: public(constant(uint256)) = 3
# @dev Fixed-point scale of privacy budgets and spent epsilon (millionths).
EPSILON_SCALE: public(constant(uint256)) = 1_000_000
# @dev Upper bound on the number of rounds of one job.
MAX_ROUNDS: public(constant(uint256)) = 10_000
# @dev Upper bound on the number of providers of one job (and on reward leaf indices).
MAX_PROVIDERS: public(constant(uint256)) = 1_000_000
# @dev Upper bound on the updates aggregated in one round (what one fraud proof can carry).
MAX_ROUND_UPDATES: public(constant(uint256)) = 128
# @dev Upper bound on the validators of one job (one attestation bitmap word).
MAX_VALIDATORS: public(constant(uint256)) = 32
# @dev Upper bound on the values in one Merkle chunk of a model or update.
MAX_CHUNK: public(constant(uint256)) = 64
# @dev Upper bound on the protocol fee, in basis points (10%).
MAX_FEE_BPS: public(constant(uint256)) = 1_000
# @dev Share of a slashed stake paid to whoever proved the fault, in basis points.
CHALLENGER_BPS: public(constant(uint256)) = 5_000
# @dev Basis-point denominator.
BPS: constant(uint256) = 10_000
# @dev Upper bound on the depth of a reward Merkle proof.
MAX_PROOF: constant(uint256) = 64
# @dev Bits of a membership word holding the role (the stake sits above them).
ROLE_BITS: constant(uint256) = 8

# @dev The ERC-20 token of escrows, stakes and rewards.
TOKEN: public(immutable(IERC20))
# @dev The contract that verifies proofs of cheating and attestations; the only slasher.
DISPUTES: public(immutable(address))
# @dev Receiver of the protocol fee and of slashed validator stakes.
TREASURY: public(immutable(address))
# @dev Protocol fee in basis points of each job's escrow, taken at settlement.
FEE_BPS: public(immutable(uint256))
# @dev Seconds between an unbonding request and the withdrawal it allows.
UNBONDING_DELAY: public(immutable(uint256))

# @dev Number of jobs posted so far; job ids are 1, 2, ...
job_count: public(uint256)
# @dev Every job by id.
jobs: public(HashMap[uint256, Job])
# @dev Membership of each account in each job: (stake still locked << 8) | role; 0 = not a member.
_member: HashMap[uint256, HashMap[address, uint256]]
# @dev Commitment of each committed round: keccak256(abi_encode(model_root, updates_root, count, metrics_hash)).
round_commitment: public(HashMap[uint256, HashMap[uint256, bytes32]])
# @dev Claimed bitmap of reward leaves, per job, 256 leaves per word.
_claimed: HashMap[uint256, HashMap[uint256, uint256]]
# @dev Soulbound reputation of every account; only claims move it.
reputation: public(HashMap[address, int256])
# @dev Stake deposited and not locked in any job, per account and role.
free_stake: public(HashMap[address, HashMap[uint256, uint256]])
# @dev Stake on its way out, per account and role.
unbonding: public(HashMap[address, HashMap[uint256, Unbonding]])


@deploy
def __init__(token: IERC20, disputes: address, treasury: address, fee_bps: uint256, unbonding_delay: uint256):
    """
    @notice Deploys the market; none of these can change later.
    @param token The ERC-20 token used for escrow, stakes and rewards.
    @param disputes The proof-checking contract allowed to slash and fail jobs.
    @param treasury Receiver of protocol fees and slashed validator stakes.
    @param fee_bps Protocol fee in basis points (at most `MAX_FEE_BPS`).
    @param unbonding_delay Seconds a stake stays slashable after an unbonding request.
    """
    assert token.address != empty(address), "market: token is zero"
    assert disputes != empty(address), "market: disputes is zero"
    assert treasury != empty(address), "market: treasury is zero"
    assert fee_bps <= MAX_FEE_BPS, "market: fee too high"
    TOKEN = token
    DISPUTES = disputes
    TREASURY = treasury
    FEE_BPS = fee_bps
    UNBONDING_DELAY = unbonding_delay


# ---------------------------------------------------------------- staking


@external
@nonreentrant
def deposit(role: uint256, amount: uint256):
    """
    @notice Deposits stake for a role; it stays free until a job locks it.
    @param role ROLE_PROVIDER, ROLE_AGGREGATOR or ROLE_VALIDATOR.
    @param amount Tokens to deposit (the market must be approved for them).
    """
    assert role >= ROLE_PROVIDER and role <= ROLE_VALIDATOR, "market: bad role"
    assert amount > 0, "market: amount is zero"
    self.free_stake[msg.sender][role] += amount
    self._pull(msg.sender, amount)
    log StakeDeposited(account=msg.sender, role=role, amount=amount)


@external
@nonreentrant
def request_unbond(role: uint256, amount: uint256):
    """
    @notice Moves free stake into unbonding; it can be withdrawn after `UNBONDING_DELAY`
            and stays slashable until then. A new request restarts the delay.
    @param role The role whose stake unbonds.
    @param amount Tokens to unbond.
    """
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
    @notice Role of `account` in job `job_id` (0 if none) and its stake still locked there.
    @param job_id The job.
    @param account The account.
    @return role The role.
    @return stake The locked stake.
    """
    word: uint256 = self._member[job_id][account]
    return word & 255, word >> ROLE_BITS


@view
@external
def is_provider(job_id: uint256, account: address) -> bool:
    """
    @notice Whether `account` joined job `job_id` as a provider.
    @param job_id The job.
    @param account The account.
    @return True if it did.
    """
    return self._member[job_id][account] & 255 == ROLE_PROVIDER


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
    self._member[job_id][account] = (amount << ROLE_BITS) | role


@internal
def _release(job_id: uint256, account: address) -> (uint256, uint256):
    """Unlocks the account's job stake; returns (role, amount). Provider stakes are returned by
    the caller with the reward; aggregator and validator stakes go to free stake, so they leave
    through the unbonding delay and stay slashable for faults proven later."""
    word: uint256 = self._member[job_id][account]
    amount: uint256 = word >> ROLE_BITS
    role: uint256 = word & 255
    if amount == 0:
        return role, 0
    self._member[job_id][account] = role
    if role != ROLE_PROVIDER:
        self.free_stake[account][role] += amount
        log StakeReleased(job_id=job_id, account=account, role=role, amount=amount)
    return role, amount


@external
@nonreentrant
def release_stake(job_id: uint256, account: address):
    """
    @notice Unlocks an account's stake once the job is over (settled, cancelled or failed):
            a provider's goes back to its wallet, an aggregator's or validator's to its free
            stake. Callable by anyone; funds only ever go to the account.
    @param job_id The job.
    @param account The participant.
    """
    state: JobState = self.jobs[job_id].state
    assert state in (JobState.SETTLED | JobState.CANCELLED | JobState.FAILED), "market: job still running"
    role: uint256 = 0
    amount: uint256 = 0
    role, amount = self._release(job_id, account)
    assert amount > 0, "market: no stake locked"
    if role == ROLE_PROVIDER:
        self._push(account, amount)
        log StakeReleased(job_id=job_id, account=account, role=role, amount=amount)


@external
@nonreentrant
def slash(job_id: uint256, account: address, challenger: address) -> uint256:
    """
    @notice Slashes a participant of a job for a fault proven to the disputes contract:
            its stake locked in the job, or if already released the same amount from its
            free and unbonding stake of that role. `CHALLENGER_BPS` goes to the challenger;
            the rest to the requester (aggregator faults) or the treasury (other roles).
    @dev Only `DISPUTES` may call. A participant is slashed at most once per job.
    @param job_id The job.
    @param account The cheater.
    @param challenger Who proved it.
    @return The amount slashed.
    """
    assert msg.sender == DISPUTES, "market: caller is not disputes"
    word: uint256 = self._member[job_id][account]
    role: uint256 = word & 255
    assert role != 0 and role < 128, "market: not slashable"
    amount: uint256 = word >> ROLE_BITS
    if amount == 0:
        # stake already released: take the job's stake size from what the role still holds
        target: uint256 = self._role_stake(job_id, role)
        free: uint256 = self.free_stake[account][role]
        take: uint256 = min(target, free)
        self.free_stake[account][role] = free - take
        amount = take
        if take < target:
            unb: uint256 = self.unbonding[account][role].amount
            more: uint256 = min(target - take, unb)
            self.unbonding[account][role].amount = unb - more
            amount += more
    # mark slashed (role bit 7) and clear the locked stake
    self._member[job_id][account] = role | 128
    if role == ROLE_VALIDATOR and word >> ROLE_BITS > 0:
        self.jobs[job_id].validator_total_stake -= word >> ROLE_BITS
    beneficiary: address = TREASURY
    if role == ROLE_AGGREGATOR:
        beneficiary = self.jobs[job_id].requester
    self._pay_slash(job_id, account, role, amount, challenger, beneficiary)
    return amount


@internal
def _pay_slash(job_id: uint256, account: address, role: uint256, amount: uint256, challenger: address, beneficiary: address):
    """Splits a slashed stake: `CHALLENGER_BPS` to whoever proved the fault, the rest to `beneficiary`."""
    share: uint256 = amount * CHALLENGER_BPS // BPS
    self._push(challenger, share)
    self._push(beneficiary, amount - share)
    log StakeSlashed(
        job_id=job_id,
        account=account,
        role=role,
        amount=amount,
        challenger=challenger,
        challenger_share=share,
        beneficiary=beneficiary,
    )


@view
@internal
def _role_stake(job_id: uint256, role: uint256) -> uint256:
    if role == ROLE_PROVIDER:
        return self.jobs[job_id].provider_stake
    if role == ROLE_AGGREGATOR:
        return self.jobs[job_id].aggregator_stake
    return self.jobs[job_id].validator_stake


# ---------------------------------------------------------------- jobs


@external
@nonreentrant
def post_job(terms: JobTerms, spec_cid: String[128]) -> uint256:
    """
    @notice Posts a job and locks `terms.escrow` tokens from the caller (the requester).
    @dev The caller must have approved the market for the escrow. The spec itself lives
         off-chain under `spec_cid`; only its hash binds the job, and nothing about the
         job can change afterwards.
    @param terms The job's immutable terms (stakes, sizes, deadlines, aggregation rule).
    @param spec_cid Content id of the job spec in the blob store.
    @return The new job id.
    @custom:security Tokens move in after all checks and state writes.
    """
    assert terms.spec_hash != empty(bytes32), "market: empty spec hash"
    assert len(spec_cid) > 0, "market: empty spec cid"
    assert terms.aggregator != empty(address), "market: aggregator is zero"
    assert terms.aggregator != msg.sender, "market: requester cannot aggregate"
    assert terms.escrow > 0, "market: escrow is zero"
    assert terms.rounds >= 1 and terms.rounds <= MAX_ROUNDS, "market: bad round count"
    assert terms.min_providers >= 1, "market: min providers is zero"
    assert terms.min_providers <= terms.max_providers, "market: min above max providers"
    assert terms.max_providers <= MAX_PROVIDERS, "market: too many providers"
    assert terms.max_validators <= MAX_VALIDATORS, "market: too many validators"
    assert terms.join_deadline > block.timestamp, "market: join deadline passed"
    assert terms.round_duration > 0, "market: round duration is zero"
    assert terms.claim_period > 0, "market: claim period is zero"
    assert terms.rule <= RULE_SECURE_SUM, "market: unknown rule"
    assert terms.chunk_size >= 1 and terms.chunk_size <= MAX_CHUNK, "market: bad chunk size"
    assert terms.rule != RULE_TRIMMED_MEAN or terms.trim > 0, "market: trim is zero"
    assert terms.rule == RULE_TRIMMED_MEAN or terms.trim == 0, "market: trim without trimmed mean"

    job_id: uint256 = self.job_count + 1
    self.job_count = job_id
    self.jobs[job_id] = Job(
        requester=msg.sender,
        aggregator=terms.aggregator,
        spec_hash=terms.spec_hash,
        state=JobState.OPEN,
        escrow=terms.escrow,
        provider_stake=terms.provider_stake,
        aggregator_stake=terms.aggregator_stake,
        validator_stake=terms.validator_stake,
        min_providers=terms.min_providers,
        max_providers=terms.max_providers,
        n_providers=0,
        max_validators=terms.max_validators,
        n_validators=0,
        validator_total_stake=0,
        accepted=False,
        rounds=terms.rounds,
        current_round=0,
        join_deadline=terms.join_deadline,
        round_duration=terms.round_duration,
        round_deadline=0,
        challenge_period=terms.challenge_period,
        claim_period=terms.claim_period,
        rule=terms.rule,
        trim=terms.trim,
        chunk_size=terms.chunk_size,
        licence_price=terms.licence_price,
        privacy_budget=terms.privacy_budget,
        reward_root=empty(bytes32),
        reward_total=0,
        claimed_total=0,
        challenge_deadline=0,
        claim_deadline=0,
    )
    self._pull(msg.sender, terms.escrow)
    log JobPosted(
        job_id=job_id,
        requester=msg.sender,
        aggregator=terms.aggregator,
        spec_hash=terms.spec_hash,
        spec_cid=spec_cid,
        escrow=terms.escrow,
    )
    return job_id


@external
@nonreentrant
def accept(job_id: uint256):
    """
    @notice The job's aggregator accepts it, locking its aggregator stake.
    @param job_id The job.
    """
    assert self.jobs[job_id].state == JobState.OPEN, "market: job not open"
    assert msg.sender == self.jobs[job_id].aggregator, "market: caller is not the aggregator"
    stake: uint256 = self.jobs[job_id].aggregator_stake
    self._lock(job_id, msg.sender, ROLE_AGGREGATOR, stake)
    self.jobs[job_id].accepted = True
    log JobAccepted(job_id=job_id, aggregator=msg.sender, stake=stake)


@external
@nonreentrant
def join(job_id: uint256):
    """
    @notice Joins an open job as a provider, locking the job's provider stake
            (from free stake, pulling any shortfall from the caller's wallet).
    @param job_id The job to join.
    """
    self._join(job_id, msg.sender, self.jobs[job_id].provider_stake)


@internal
def _join(job_id: uint256, provider: address, stake: uint256):
    assert self.jobs[job_id].state == JobState.OPEN, "market: job not open"
    assert block.timestamp < self.jobs[job_id].join_deadline, "market: join deadline passed"
    n: uint256 = self.jobs[job_id].n_providers + 1
    assert n <= self.jobs[job_id].max_providers, "market: job is full"
    self.jobs[job_id].n_providers = n
    self._lock(job_id, provider, ROLE_PROVIDER, stake)
    log ProviderJoined(job_id=job_id, provider=provider, stake=stake, n_providers=n)


@external
@nonreentrant
def join_with_permit(job_id: uint256, deadline: uint256, v: uint8, r: bytes32, s: bytes32):
    """
    @notice `join` in one transaction without a prior `approve`: the stake's allowance comes
            from the caller's EIP-2612 permit signature for exactly the job's provider stake.
    @dev A permit already used (e.g. front-run) is ignored; the join then needs an allowance.
    @param job_id The job to join.
    @param deadline Permit deadline.
    @param v Permit signature v.
    @param r Permit signature r.
    @param s Permit signature s.
    """
    stake: uint256 = self.jobs[job_id].provider_stake
    permitted: bool = raw_call(
        TOKEN.address,
        abi_encode(msg.sender, self, stake, deadline, v, r, s, method_id=method_id("permit(address,address,uint256,uint256,uint8,bytes32,bytes32)")),
        revert_on_failure=False,
    )
    # a failed permit is not fatal: an allowance given some other way still lets the join through
    self._join(job_id, msg.sender, stake)


@external
@nonreentrant
def join_validator(job_id: uint256, stake: uint256):
    """
    @notice Joins an open job as a validator with at least the job's validator stake;
            attestation quorum is two thirds of the validators' total stake.
    @param job_id The job.
    @param stake Stake to lock (>= the job's validator stake); weighs its attestations.
    """
    assert self.jobs[job_id].state == JobState.OPEN, "market: job not open"
    assert block.timestamp < self.jobs[job_id].join_deadline, "market: join deadline passed"
    assert msg.sender != self.jobs[job_id].requester, "market: requester cannot validate"
    assert stake > 0 and stake >= self.jobs[job_id].validator_stake, "market: stake below minimum"
    n: uint256 = self.jobs[job_id].n_validators + 1
    assert n <= self.jobs[job_id].max_validators, "market: validator set full"
    self.jobs[job_id].n_validators = n
    self.jobs[job_id].validator_total_stake += stake
    self._lock(job_id, msg.sender, ROLE_VALIDATOR, stake)
    log ValidatorJoined(job_id=job_id, validator=msg.sender, stake=stake, n_validators=n)


@external
@nonreentrant
def start(job_id: uint256):
    """
    @notice Closes joining and starts round 0 once the aggregator accepted and enough
            providers joined. The aggregator or requester may start early; anyone may
            start after the join deadline.
    @param job_id The job.
    """
    assert self.jobs[job_id].state == JobState.OPEN, "market: job not open"
    assert self.jobs[job_id].accepted, "market: aggregator has not accepted"
    n: uint256 = self.jobs[job_id].n_providers
    assert n >= self.jobs[job_id].min_providers, "market: too few providers"
    if block.timestamp < self.jobs[job_id].join_deadline:
        assert msg.sender == self.jobs[job_id].aggregator or msg.sender == self.jobs[job_id].requester, "market: join window still open"
    deadline: uint256 = block.timestamp + self.jobs[job_id].round_duration
    self.jobs[job_id].state = JobState.TRAINING
    self.jobs[job_id].round_deadline = deadline
    # the hash of the previous block seeds round 0's provider selection: fixed now, public to all
    log TrainingStarted(job_id=job_id, n_providers=n, round_deadline=deadline, seed=block.prevhash)


@external
@nonreentrant
def submit_round(
    job_id: uint256,
    round: uint256,
    model_root: bytes32,
    model_cid: String[128],
    updates_root: bytes32,
    count: uint256,
    metrics_hash: bytes32,
    epsilon_spent: uint256,
):
    """
    @notice Commits one round: the new global model (root + CID), the root of the
            aggregated updates, how many there were, the digest of the round's metrics
            and the job's cumulative privacy loss after this round.
    @dev One transaction per round whatever the number of providers: one new storage
         slot is written. With validators, the previous round must have reached quorum.
    @param job_id The job.
    @param round The round being committed; must be the current one.
    @param model_root Chunked Merkle root of the new global model.
    @param model_cid Content id of the new global model blob.
    @param updates_root Merkle root of the aggregated updates, sorted by provider.
    @param count Number of updates aggregated (at most `MAX_ROUND_UPDATES`).
    @param metrics_hash sha2-256 digest of the round's metrics document.
    @param epsilon_spent Cumulative epsilon of the job after this round, in millionths
           (0 for jobs without differential privacy); never above the job's budget. Its
           value follows from the spec, so anyone can check it.
    """
    assert msg.sender == self.jobs[job_id].aggregator, "market: caller is not the aggregator"
    assert self.jobs[job_id].state == JobState.TRAINING, "market: job not training"
    current: uint256 = self.jobs[job_id].current_round
    assert current < self.jobs[job_id].rounds, "market: all rounds committed"
    assert round == current, "market: wrong round"
    assert block.timestamp <= self.jobs[job_id].round_deadline, "market: round deadline passed"
    assert model_root != empty(bytes32) and updates_root != empty(bytes32), "market: empty root"
    assert len(model_cid) > 0, "market: empty model cid"
    assert count >= 1 and count <= MAX_ROUND_UPDATES, "market: bad update count"
    assert count <= self.jobs[job_id].n_providers, "market: bad update count"
    if epsilon_spent > 0:  # jobs without differential privacy skip the budget's storage read
        assert epsilon_spent <= self.jobs[job_id].privacy_budget, "market: privacy budget exceeded"
    if round > 0 and self.jobs[job_id].max_validators > 0:
        # the market passes its own validator stake total: one cross-contract read instead of two
        total: uint256 = self.jobs[job_id].validator_total_stake
        assert staticcall IDisputes(DISPUTES).quorum_of(job_id, round - 1, total), "market: previous round lacks quorum"
    self.round_commitment[job_id][round] = keccak256(abi_encode(model_root, updates_root, count, metrics_hash))
    self.jobs[job_id].current_round = current + 1
    self.jobs[job_id].round_deadline = block.timestamp + self.jobs[job_id].round_duration
    log RoundCommitted(
        job_id=job_id,
        round=round,
        model_root=model_root,
        updates_root=updates_root,
        count=count,
        metrics_hash=metrics_hash,
        epsilon_spent=epsilon_spent,
        next_seed=block.prevhash,
        model_cid=model_cid,
    )


@external
@nonreentrant
def post_rewards(job_id: uint256, reward_root: bytes32, reward_total: uint256, rewards_cid: String[128]):
    """
    @notice After the last round, posts the reward Merkle root and opens the challenge window.
            A job with validators needs two thirds of their stake to have signed this very
            root and total (`Disputes.approve_rewards`).
    @param job_id The job.
    @param reward_root Root over leaves `(index, account, amount, reputationDelta)`.
    @param reward_total Sum of all leaf amounts; at most escrow minus the protocol fee.
    @param rewards_cid Content id of the document listing every leaf (so anyone can build proofs).
    """
    assert msg.sender == self.jobs[job_id].aggregator, "market: caller is not the aggregator"
    assert self.jobs[job_id].state == JobState.TRAINING, "market: job not training"
    rounds: uint256 = self.jobs[job_id].rounds
    assert self.jobs[job_id].current_round == rounds, "market: rounds not finished"
    assert block.timestamp <= self.jobs[job_id].round_deadline, "market: round deadline passed"
    if self.jobs[job_id].max_validators > 0:
        total_stake: uint256 = self.jobs[job_id].validator_total_stake
        assert staticcall IDisputes(DISPUTES).quorum_of(job_id, rounds - 1, total_stake), "market: last round lacks quorum"
        # validators re-derive the rewards from the revealed scores and sign the root they get
        assert staticcall IDisputes(DISPUTES).approved_of(job_id, reward_root, reward_total, total_stake), "market: rewards not approved by validators"
    assert reward_root != empty(bytes32), "market: empty root"
    escrow: uint256 = self.jobs[job_id].escrow
    assert reward_total <= escrow - self._fee(escrow), "market: rewards exceed escrow"
    deadline: uint256 = block.timestamp + self.jobs[job_id].challenge_period
    self.jobs[job_id].state = JobState.FINALIZING
    self.jobs[job_id].reward_root = reward_root
    self.jobs[job_id].reward_total = reward_total
    self.jobs[job_id].challenge_deadline = deadline
    log RewardRootPosted(
        job_id=job_id,
        reward_root=reward_root,
        reward_total=reward_total,
        challenge_deadline=deadline,
        rewards_cid=rewards_cid,
    )


@external
@nonreentrant
def settle(job_id: uint256):
    """
    @notice Settles a job whose challenge window is over: pays the protocol fee,
            refunds the part of the escrow not assigned to rewards, opens claims.
    @dev Callable by anyone.
    @param job_id The job.
    """
    assert self.jobs[job_id].state == JobState.FINALIZING, "market: job not finalizing"
    assert block.timestamp >= self.jobs[job_id].challenge_deadline, "market: challenge window open"
    escrow: uint256 = self.jobs[job_id].escrow
    fee: uint256 = self._fee(escrow)
    refund: uint256 = escrow - fee - self.jobs[job_id].reward_total
    claim_deadline: uint256 = block.timestamp + self.jobs[job_id].claim_period
    self.jobs[job_id].state = JobState.SETTLED
    self.jobs[job_id].claim_deadline = claim_deadline
    self._push(TREASURY, fee)
    self._push(self.jobs[job_id].requester, refund)
    log JobSettled(job_id=job_id, fee=fee, refund=refund, claim_deadline=claim_deadline)


@external
@nonreentrant
def claim(
    job_id: uint256,
    index: uint256,
    account: address,
    amount: uint256,
    reputation_delta: int256,
    proof: DynArray[bytes32, MAX_PROOF],
):
    """
    @notice Pays `account` its reward, unlocks its job stake (paid back with the reward for a
            provider, moved to free stake otherwise), and applies its reputation change,
            proven by a Merkle proof against the reward root.
    @dev Anyone may submit a claim for any account; funds always go to `account`.
    @param job_id The job.
    @param index Leaf index (position in the claimed bitmap).
    @param account The rewarded account.
    @param amount Reward of `account`.
    @param reputation_delta Reputation change of `account`.
    @param proof Sibling hashes from the leaf to the root (sorted-pair hashing).
    @custom:security Bitmap set before any transfer; leaves are double-hashed so they
                     cannot be confused with inner nodes.
    """
    assert self.jobs[job_id].state == JobState.SETTLED, "market: job not settled"
    assert block.timestamp < self.jobs[job_id].claim_deadline, "market: claim period over"
    assert index < MAX_PROVIDERS, "market: bad index"
    word: uint256 = index >> 8
    bit: uint256 = 1 << (index & 255)
    bits: uint256 = self._claimed[job_id][word]
    assert bits & bit == 0, "market: already claimed"
    leaf: bytes32 = keccak256(keccak256(abi_encode(index, account, amount, reputation_delta)))
    assert merkle._verify(proof, self.jobs[job_id].reward_root, leaf), "market: invalid proof"
    self._claimed[job_id][word] = bits | bit
    # the root is the aggregator's word: never pay a job's claims beyond the total it reserved
    claimed: uint256 = self.jobs[job_id].claimed_total + amount
    assert claimed <= self.jobs[job_id].reward_total, "market: claims exceed rewards"
    self.jobs[job_id].claimed_total = claimed
    role: uint256 = 0
    released: uint256 = 0
    role, released = self._release(job_id, account)
    if reputation_delta != 0:
        rep: int256 = self.reputation[account] + reputation_delta
        self.reputation[account] = rep
        log ReputationChanged(account=account, delta=reputation_delta, reputation=rep)
    if role == ROLE_PROVIDER:
        self._push(account, amount + released)
    else:
        self._push(account, amount)
    log RewardClaimed(job_id=job_id, account=account, index=index, amount=amount, stake_released=released)


@view
@external
def is_claimed(job_id: uint256, index: uint256) -> bool:
    """
    @notice Whether reward leaf `index` of job `job_id` was claimed.
    @param job_id The job.
    @param index Leaf index.
    @return True if claimed.
    """
    return self._claimed[job_id][index >> 8] & (1 << (index & 255)) != 0


@external
@nonreentrant
def cancel(job_id: uint256):
    """
    @notice Cancels an open job with a full refund of its escrow: by anyone once the join
            deadline passed with too few providers or no accepting aggregator, or by the
            requester while no provider joined. Stakes become releasable.
    @param job_id The job.
    """
    assert self.jobs[job_id].state == JobState.OPEN, "market: job not open"
    n: uint256 = self.jobs[job_id].n_providers
    requester: address = self.jobs[job_id].requester
    if msg.sender != requester or n > 0:
        assert block.timestamp >= self.jobs[job_id].join_deadline, "market: join window still open"
        assert n < self.jobs[job_id].min_providers or not self.jobs[job_id].accepted, "market: enough providers joined"
    escrow: uint256 = self.jobs[job_id].escrow
    self.jobs[job_id].state = JobState.CANCELLED
    self._push(requester, escrow)
    log JobCancelled(job_id=job_id, refund=escrow)


@external
@nonreentrant
def fail(job_id: uint256):
    """
    @notice Fails a training job whose aggregator missed a deadline (a round or the reward
            root): refunds the escrow to the requester and slashes the aggregator's stake
            (half to the caller, half to the requester). Callable by anyone.
    @param job_id The job.
    """
    assert self.jobs[job_id].state == JobState.TRAINING, "market: job not training"
    assert block.timestamp > self.jobs[job_id].round_deadline, "market: deadline not missed"
    self._fail(job_id, self.jobs[job_id].current_round, "deadline missed")
    self._slash_aggregator(job_id, msg.sender)


@external
@nonreentrant
def fail_proven(job_id: uint256, round: uint256, challenger: address, reason: String[32]):
    """
    @notice Reverts a job to before `round` and fails it after the disputes contract
            proved the aggregator wrong about that round (wrong aggregate, censored
            update); the escrow is refunded and the aggregator slashed.
    @dev Only `DISPUTES` may call, before settlement.
    @param job_id The job.
    @param round The first round proven wrong.
    @param challenger Who proved it (receives the challenger share).
    @param reason Short description of the proven fault.
    """
    assert msg.sender == DISPUTES, "market: caller is not disputes"
    state: JobState = self.jobs[job_id].state
    assert state in (JobState.TRAINING | JobState.FINALIZING), "market: job not disputable"
    assert round < self.jobs[job_id].current_round, "market: round not committed"
    self.jobs[job_id].current_round = round
    self._fail(job_id, round, reason)
    self._slash_aggregator(job_id, challenger)


@internal
def _fail(job_id: uint256, round: uint256, reason: String[32]):
    escrow: uint256 = self.jobs[job_id].escrow
    self.jobs[job_id].state = JobState.FAILED
    self.jobs[job_id].reward_root = empty(bytes32)
    self._push(self.jobs[job_id].requester, escrow)
    log JobFailed(job_id=job_id, round=round, refund=escrow, reason=reason)


@internal
def _slash_aggregator(job_id: uint256, challenger: address):
    aggregator: address = self.jobs[job_id].aggregator
    word: uint256 = self._member[job_id][aggregator]
    amount: uint256 = word >> ROLE_BITS
    self._member[job_id][aggregator] = ROLE_AGGREGATOR | 128
    if amount == 0:
        return
    self._pay_slash(job_id, aggregator, ROLE_AGGREGATOR, amount, challenger, self.jobs[job_id].requester)


@external
@nonreentrant
def sweep(job_id: uint256):
    """
    @notice After the claim period, returns unclaimed rewards to the requester. Callable by anyone.
    @param job_id The job.
    """
    assert self.jobs[job_id].state == JobState.SETTLED, "market: job not settled"
    assert block.timestamp >= self.jobs[job_id].claim_deadline, "market: claim period open"
    left: uint256 = self.jobs[job_id].reward_total - self.jobs[job_id].claimed_total
    assert left > 0, "market: nothing to sweep"
    self.jobs[job_id].claimed_total += left
    self._push(self.jobs[job_id].requester, left)
    log UnclaimedSwept(job_id=job_id, amount=left)


@view
@external
def reward_terms(job_id: uint256) -> (JobState, bytes32, uint256, address, uint256):
    """
    @notice What the licence contract needs of a job: state, reward root and total,
            requester and licence price.
    @param job_id The job.
    @return state, reward_root, reward_total, requester, licence_price.
    """
    return (
        self.jobs[job_id].state,
        self.jobs[job_id].reward_root,
        self.jobs[job_id].reward_total,
        self.jobs[job_id].requester,
        self.jobs[job_id].licence_price,
    )


@view
@external
def dispute_terms(job_id: uint256) -> (JobState, address, uint256, uint256, uint256, uint256, uint256):
    """
    @notice What the disputes contract needs of a job: state, aggregator, committed
            rounds, aggregation rule, trim, chunk size, validators' total stake.
    @param job_id The job.
    @return state, aggregator, current_round, rule, trim, chunk_size, validator_total_stake.
    """
    return (
        self.jobs[job_id].state,
        self.jobs[job_id].aggregator,
        self.jobs[job_id].current_round,
        self.jobs[job_id].rule,
        self.jobs[job_id].trim,
        self.jobs[job_id].chunk_size,
        self.jobs[job_id].validator_total_stake,
    )


@view
@internal
def _fee(escrow: uint256) -> uint256:
    return escrow * FEE_BPS // BPS


@internal
def _pull(owner: address, amount: uint256):
    assert extcall TOKEN.transferFrom(owner, self, amount, default_return_value=True), "market: transfer in failed"


@internal
def _push(to: address, amount: uint256):
    if amount > 0:
        assert extcall TOKEN.transfer(to, amount, default_return_value=True), "market: transfer out failed"
