# pragma version 0.4.3
# pragma evm-version cancun
"""
@title fedmarket job market
@notice Registry and escrow of federated-learning jobs. A requester posts a job
        (committed by the hash of its spec) and locks the reward; providers join
        with a stake; the job's aggregator commits every round in one
        transaction carrying the round's roots; after the last round it posts one
        Merkle root of `(index, account, amount, reputationDelta)` and, once the
        challenge window has passed, anyone settles the job. Every participant
        then pulls its reward and stake in one claim, which also moves its
        (soulbound) reputation.

        State machine:  Open -> Training -> Finalizing -> Settled,
        side exits Open -> Cancelled and Training -> Failed.
        Every timeout can be triggered by anyone. There is no admin: the token,
        treasury and fee are fixed at deployment.
@license AGPL-3.0-only
"""

from ethereum.ercs import IERC20
from snekmate.utils import merkle_proof_verification as merkle


flag JobState:
    OPEN
    TRAINING
    FINALIZING
    SETTLED
    CANCELLED
    FAILED


struct Job:
    requester: address
    aggregator: address
    spec_hash: bytes32
    state: JobState
    escrow: uint256
    provider_stake: uint256
    min_providers: uint256
    max_providers: uint256
    n_providers: uint256
    rounds: uint256
    current_round: uint256
    join_deadline: uint256
    round_duration: uint256
    round_deadline: uint256
    challenge_period: uint256
    claim_period: uint256
    reward_root: bytes32
    reward_total: uint256
    claimed_total: uint256
    challenge_deadline: uint256
    claim_deadline: uint256


event JobPosted:
    job_id: indexed(uint256)
    requester: indexed(address)
    aggregator: indexed(address)
    spec_hash: bytes32
    spec_cid: String[128]
    escrow: uint256


event ProviderJoined:
    job_id: indexed(uint256)
    provider: indexed(address)
    stake: uint256
    n_providers: uint256


event TrainingStarted:
    job_id: indexed(uint256)
    n_providers: uint256
    round_deadline: uint256


event RoundCommitted:
    job_id: indexed(uint256)
    round: indexed(uint256)
    model_root: bytes32
    updates_root: bytes32
    count: uint256
    metrics_hash: bytes32
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


event RewardClaimed:
    job_id: indexed(uint256)
    account: indexed(address)
    index: uint256
    amount: uint256
    stake_returned: uint256


event ReputationChanged:
    account: indexed(address)
    delta: int256
    reputation: int256


event StakeWithdrawn:
    job_id: indexed(uint256)
    provider: indexed(address)
    amount: uint256


event UnclaimedSwept:
    job_id: indexed(uint256)
    amount: uint256


# @dev Upper bound on the number of rounds of one job.
MAX_ROUNDS: public(constant(uint256)) = 10_000
# @dev Upper bound on the number of providers of one job (and on reward leaf indices).
MAX_PROVIDERS: public(constant(uint256)) = 1_000_000
# @dev Upper bound on the protocol fee, in basis points (10%).
MAX_FEE_BPS: public(constant(uint256)) = 1_000
# @dev Basis-point denominator.
BPS: constant(uint256) = 10_000
# @dev Upper bound on the depth of a reward Merkle proof (2**64 leaves).
MAX_PROOF: constant(uint256) = 64

# @dev The ERC-20 token of escrows, stakes and rewards.
TOKEN: public(immutable(IERC20))
# @dev Receiver of the protocol fee.
TREASURY: public(immutable(address))
# @dev Protocol fee in basis points of each job's escrow, taken at settlement.
FEE_BPS: public(immutable(uint256))

# @dev Number of jobs posted so far; job ids are 1, 2, ...
job_count: public(uint256)
# @dev Every job by id.
jobs: public(HashMap[uint256, Job])
# @dev Stake each provider still has locked in each job (0 once returned).
stake_of: public(HashMap[uint256, HashMap[address, uint256]])
# @dev Whether an account joined a job (kept after its stake is returned).
_member: HashMap[uint256, HashMap[address, bool]]
# @dev Commitment of each committed round: keccak256(abi_encode(model_root, updates_root, count, metrics_hash)).
round_commitment: public(HashMap[uint256, HashMap[uint256, bytes32]])
# @dev Claimed bitmap of reward leaves, per job, 256 leaves per word.
_claimed: HashMap[uint256, HashMap[uint256, uint256]]
# @dev Soulbound reputation of every account; only claims move it.
reputation: public(HashMap[address, int256])


@deploy
def __init__(token: IERC20, treasury: address, fee_bps: uint256):
    """
    @notice Deploys the market for one token, treasury and fee; none can change later.
    @param token The ERC-20 token used for escrow, stakes and rewards.
    @param treasury Receiver of protocol fees.
    @param fee_bps Protocol fee in basis points (at most `MAX_FEE_BPS`).
    """
    assert token.address != empty(address), "market: token is zero"
    assert treasury != empty(address), "market: treasury is zero"
    assert fee_bps <= MAX_FEE_BPS, "market: fee too high"
    TOKEN = token
    TREASURY = treasury
    FEE_BPS = fee_bps


@external
@nonreentrant
def post_job(
    spec_hash: bytes32,
    spec_cid: String[128],
    aggregator: address,
    escrow: uint256,
    provider_stake: uint256,
    min_providers: uint256,
    max_providers: uint256,
    rounds: uint256,
    join_deadline: uint256,
    round_duration: uint256,
    challenge_period: uint256,
    claim_period: uint256,
) -> uint256:
    """
    @notice Posts a job and locks `escrow` tokens from the caller (the requester).
    @dev The caller must have approved the market for `escrow`. The spec itself
         lives off-chain under `spec_cid`; only its hash binds the job.
    @param spec_hash keccak256 of the canonical job spec.
    @param spec_cid Content id of the job spec in the blob store.
    @param aggregator The account that commits rounds and the reward root.
    @param escrow Reward locked for the job (fee included).
    @param provider_stake Stake each provider locks when joining.
    @param min_providers Fewest providers for training to start.
    @param max_providers Most providers that may join.
    @param rounds Number of training rounds.
    @param join_deadline Timestamp after which no one can join.
    @param round_duration Seconds the aggregator has for each round (and for the reward root).
    @param challenge_period Seconds between the reward root and settlement.
    @param claim_period Seconds after settlement during which rewards can be claimed.
    @return The new job id.
    @custom:security Tokens move in after all checks and state writes (checks-effects-interactions).
    """
    assert spec_hash != empty(bytes32), "market: empty spec hash"
    assert len(spec_cid) > 0, "market: empty spec cid"
    assert aggregator != empty(address), "market: aggregator is zero"
    assert escrow > 0, "market: escrow is zero"
    assert rounds >= 1 and rounds <= MAX_ROUNDS, "market: bad round count"
    assert min_providers >= 1, "market: min providers is zero"
    assert min_providers <= max_providers, "market: min above max providers"
    assert max_providers <= MAX_PROVIDERS, "market: too many providers"
    assert join_deadline > block.timestamp, "market: join deadline passed"
    assert round_duration > 0, "market: round duration is zero"
    assert claim_period > 0, "market: claim period is zero"

    job_id: uint256 = self.job_count + 1
    self.job_count = job_id
    self.jobs[job_id] = Job(
        requester=msg.sender,
        aggregator=aggregator,
        spec_hash=spec_hash,
        state=JobState.OPEN,
        escrow=escrow,
        provider_stake=provider_stake,
        min_providers=min_providers,
        max_providers=max_providers,
        n_providers=0,
        rounds=rounds,
        current_round=0,
        join_deadline=join_deadline,
        round_duration=round_duration,
        round_deadline=0,
        challenge_period=challenge_period,
        claim_period=claim_period,
        reward_root=empty(bytes32),
        reward_total=0,
        claimed_total=0,
        challenge_deadline=0,
        claim_deadline=0,
    )
    self._pull(msg.sender, escrow)
    log JobPosted(
        job_id=job_id,
        requester=msg.sender,
        aggregator=aggregator,
        spec_hash=spec_hash,
        spec_cid=spec_cid,
        escrow=escrow,
    )
    return job_id


@external
@nonreentrant
def join(job_id: uint256):
    """
    @notice Joins an open job as a provider, locking the job's provider stake.
    @param job_id The job to join.
    """
    assert self.jobs[job_id].state == JobState.OPEN, "market: job not open"
    assert block.timestamp < self.jobs[job_id].join_deadline, "market: join deadline passed"
    assert not self._member[job_id][msg.sender], "market: already joined"
    n: uint256 = self.jobs[job_id].n_providers + 1
    assert n <= self.jobs[job_id].max_providers, "market: job is full"
    stake: uint256 = self.jobs[job_id].provider_stake
    self.jobs[job_id].n_providers = n
    self._member[job_id][msg.sender] = True
    self.stake_of[job_id][msg.sender] = stake
    if stake > 0:
        self._pull(msg.sender, stake)
    log ProviderJoined(job_id=job_id, provider=msg.sender, stake=stake, n_providers=n)


@view
@external
def is_provider(job_id: uint256, account: address) -> bool:
    """
    @notice Whether `account` joined job `job_id`.
    @param job_id The job.
    @param account The account.
    @return True if it joined.
    """
    return self._member[job_id][account]


@external
@nonreentrant
def start(job_id: uint256):
    """
    @notice Closes joining and starts round 0 once enough providers joined.
    @dev The aggregator or requester may start early; anyone may start after the join deadline.
    @param job_id The job.
    """
    assert self.jobs[job_id].state == JobState.OPEN, "market: job not open"
    n: uint256 = self.jobs[job_id].n_providers
    assert n >= self.jobs[job_id].min_providers, "market: too few providers"
    if block.timestamp < self.jobs[job_id].join_deadline:
        assert msg.sender == self.jobs[job_id].aggregator or msg.sender == self.jobs[job_id].requester, "market: join window still open"
    deadline: uint256 = block.timestamp + self.jobs[job_id].round_duration
    self.jobs[job_id].state = JobState.TRAINING
    self.jobs[job_id].round_deadline = deadline
    log TrainingStarted(job_id=job_id, n_providers=n, round_deadline=deadline)


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
):
    """
    @notice Commits one round: the new global model (root + CID), the root of the
            aggregated updates, how many there were, and a hash of the round's metrics.
    @dev One transaction per round whatever the number of providers; one new
         storage slot (the round commitment) is written.
    @param job_id The job.
    @param round The round being committed; must be the current one.
    @param model_root Chunked Merkle root of the new global model.
    @param model_cid Content id of the new global model blob.
    @param updates_root Merkle root of the aggregated updates (provider, update root, weight).
    @param count Number of updates aggregated.
    @param metrics_hash keccak256 of the round's canonical metrics document.
    """
    assert msg.sender == self.jobs[job_id].aggregator, "market: caller is not the aggregator"
    assert self.jobs[job_id].state == JobState.TRAINING, "market: job not training"
    current: uint256 = self.jobs[job_id].current_round
    assert current < self.jobs[job_id].rounds, "market: all rounds committed"
    assert round == current, "market: wrong round"
    assert block.timestamp <= self.jobs[job_id].round_deadline, "market: round deadline passed"
    assert model_root != empty(bytes32) and updates_root != empty(bytes32), "market: empty root"
    assert len(model_cid) > 0, "market: empty model cid"
    assert count >= 1 and count <= self.jobs[job_id].n_providers, "market: bad update count"
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
        model_cid=model_cid,
    )


@external
@nonreentrant
def post_rewards(job_id: uint256, reward_root: bytes32, reward_total: uint256, rewards_cid: String[128]):
    """
    @notice After the last round, posts the reward Merkle root and opens the challenge window.
    @param job_id The job.
    @param reward_root Root over leaves `(index, account, amount, reputationDelta)`.
    @param reward_total Sum of all leaf amounts; at most escrow minus the protocol fee.
    @param rewards_cid Content id of the document listing every leaf (so anyone can build proofs).
    """
    assert msg.sender == self.jobs[job_id].aggregator, "market: caller is not the aggregator"
    assert self.jobs[job_id].state == JobState.TRAINING, "market: job not training"
    assert self.jobs[job_id].current_round == self.jobs[job_id].rounds, "market: rounds not finished"
    assert block.timestamp <= self.jobs[job_id].round_deadline, "market: round deadline passed"
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
    @notice Pays `account` its reward and returns its stake, and applies its
            reputation change, proven by a Merkle proof against the job's reward root.
    @dev Anyone may submit a claim for any account; funds always go to `account`.
    @param job_id The job.
    @param index Leaf index (position in the claimed bitmap).
    @param account The rewarded account.
    @param amount Reward of `account`.
    @param reputation_delta Reputation change of `account`.
    @param proof Sibling hashes from the leaf to the root (sorted-pair hashing).
    @custom:security Bitmap set before any transfer; the leaf is double-hashed so it
                     cannot be confused with an inner node.
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
    self.jobs[job_id].claimed_total += amount
    stake: uint256 = self.stake_of[job_id][account]
    self.stake_of[job_id][account] = 0
    if reputation_delta != 0:
        rep: int256 = self.reputation[account] + reputation_delta
        self.reputation[account] = rep
        log ReputationChanged(account=account, delta=reputation_delta, reputation=rep)
    self._push(account, amount + stake)
    log RewardClaimed(job_id=job_id, account=account, index=index, amount=amount, stake_returned=stake)


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
def withdraw_stake(job_id: uint256):
    """
    @notice Returns the caller's provider stake once the job is over
            (settled, cancelled or failed) and it was not already returned by a claim.
    @param job_id The job.
    """
    state: JobState = self.jobs[job_id].state
    assert state in (JobState.SETTLED | JobState.CANCELLED | JobState.FAILED), "market: job still running"
    stake: uint256 = self.stake_of[job_id][msg.sender]
    assert stake > 0, "market: no stake"
    self.stake_of[job_id][msg.sender] = 0
    self._push(msg.sender, stake)
    log StakeWithdrawn(job_id=job_id, provider=msg.sender, amount=stake)


@external
@nonreentrant
def cancel(job_id: uint256):
    """
    @notice Cancels an open job with a full refund of its escrow: by anyone once the join
            deadline passed with too few providers, or by the requester while no one joined.
    @param job_id The job.
    """
    assert self.jobs[job_id].state == JobState.OPEN, "market: job not open"
    n: uint256 = self.jobs[job_id].n_providers
    requester: address = self.jobs[job_id].requester
    if msg.sender == requester and n == 0:
        pass
    else:
        assert block.timestamp >= self.jobs[job_id].join_deadline, "market: join window still open"
        assert n < self.jobs[job_id].min_providers, "market: enough providers joined"
    escrow: uint256 = self.jobs[job_id].escrow
    self.jobs[job_id].state = JobState.CANCELLED
    self._push(requester, escrow)
    log JobCancelled(job_id=job_id, refund=escrow)


@external
@nonreentrant
def fail(job_id: uint256):
    """
    @notice Marks a training job failed once the aggregator missed a deadline (a round or
            the reward root), refunding the escrow to the requester. Callable by anyone.
    @param job_id The job.
    """
    assert self.jobs[job_id].state == JobState.TRAINING, "market: job not training"
    assert block.timestamp > self.jobs[job_id].round_deadline, "market: deadline not missed"
    escrow: uint256 = self.jobs[job_id].escrow
    self.jobs[job_id].state = JobState.FAILED
    self._push(self.jobs[job_id].requester, escrow)
    log JobFailed(job_id=job_id, round=self.jobs[job_id].current_round, refund=escrow)


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
