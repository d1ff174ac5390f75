# pragma version 0.4.3
# pragma evm-version cancun
"""
@title fedmarket job market
@notice Registry, escrow and stake ledger of federated-learning jobs.
        A requester posts a job (committed by the hash of its spec) and locks the reward;
        the job's aggregator accepts it with a stake; providers and validators join with
        stakes; the aggregator commits every round in one transaction that appends the
        round's commitment to the job's Merkle accumulator; after the last round it posts
        one reward root; once the challenge window has passed and no dispute is open, anyone
        settles the job, and every participant pulls its reward in one claim, which also
        releases its stake and moves its (soulbound) reputation.

        State machine:  Open -> Training -> Finalizing -> Settled,
        side exits Open -> Cancelled and Training | Finalizing -> Failed; a reward root
        proven wrong sends the job from Finalizing back to Training for a new root.
        Every timeout can be triggered by anyone. `Disputes` (attestations, equivocation,
        misbehaviour), `RoundArbiter` and `RewardArbiter` (dispute games over rounds and
        reward roots) are the only addresses that can slash. There is no admin.
@license AGPL-3.0-only
"""

from ethereum.ercs import IERC20
from modules import constants as C
from modules import leaves
from modules import stakes
from modules import terms as T

initializes: stakes

exports: (
    stakes.deposit,
    stakes.request_unbond,
    stakes.withdraw,
    stakes.membership,
    stakes.slashes,
    stakes.free_stake,
    stakes.unbonding,
    stakes.TOKEN,
    stakes.TREASURY,
    stakes.UNBONDING_DELAY,
)


interface IDisputes:
    def reward_pool(job_id: uint256, root: bytes32, total: uint256, value_total: uint256, basis: uint256, gate_met: bool) -> uint256: view


interface ITermsCheck:
    def problem(terms: T.JobTerms, requester: address, now: uint256) -> String[64]: view


interface IArbiter:
    def open_games(job_id: uint256) -> uint256: view


flag JobState:
    OPEN
    TRAINING
    FINALIZING
    SETTLED
    CANCELLED
    FAILED


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
    n_validators: uint256
    validator_total_stake: uint256
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
    aux_root: bytes32
    next_seed: bytes32


event QuorumMarked:
    job_id: indexed(uint256)
    round: indexed(uint256)
    round_deadline: uint256


event RewardRootPosted:
    job_id: indexed(uint256)
    reward_root: bytes32
    reward_total: uint256
    value_total: uint256
    basis: uint256
    gate_met: bool
    poster: address
    challenge_deadline: uint256
    rewards_cid: String[128]


event RewardRootRejected:
    job_id: indexed(uint256)
    reward_root: bytes32
    poster: address
    challenger: address
    round_deadline: uint256


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


event UnclaimedSwept:
    job_id: indexed(uint256)
    amount: uint256


# @dev Bit layout of a job's hot word: state | current round | round deadline | quorum | aggregator.
_STATE_MASK: constant(uint256) = 255
_ROUND_SHIFT: constant(uint256) = 8
_ROUND_MASK: constant(uint256) = 65_535
_DEADLINE_SHIFT: constant(uint256) = 24
_DEADLINE_MASK: constant(uint256) = 2**40 - 1
_QUORUM: constant(uint256) = 2**64
_AGGREGATOR_SHIFT: constant(uint256) = 96
_AGGREGATOR_BITS: constant(uint256) = 115792089237316195423570985008687907853269984665561335876943319670319585689600
# @dev Bit layout of a job's round word: rounds | round duration | providers | validated | dp.
_DURATION_SHIFT: constant(uint256) = 16
_PROVIDERS_SHIFT: constant(uint256) = 48
_VALIDATED: constant(uint256) = 2**72
_DP: constant(uint256) = 2**73
_NOISE_SHIFT: constant(uint256) = 80
_DELTA_LOG_SHIFT: constant(uint256) = 120
_MASK40: constant(uint256) = 2**40 - 1
# @dev Placeholder of an accumulator slot allocated at the start (never read as a node).
_ALLOCATED: constant(bytes32) = 0x0000000000000000000000000000000000000000000000000000000000000001

# @dev The contract that verifies attestations, equivocation, misbehaviour and reward approvals.
DISPUTES: public(immutable(address))
# @dev The contract that runs the dispute games over committed rounds.
ROUND_ARBITER: public(immutable(address))
# @dev The contract that runs the dispute games over reward roots.
REWARD_ARBITER: public(immutable(address))
# @dev Protocol fee in basis points of each job's escrow, taken at settlement.
FEE_BPS: public(immutable(uint256))
# @dev The pure contract that bounds every term of a job (`modules/terms.vy`).
TERMS_CHECK: public(immutable(address))

# @dev Number of jobs posted so far; job ids are 1, 2, ...
job_count: public(uint256)
# @dev Every job's terms, as posted.
terms: public(HashMap[uint256, T.JobTerms])
# @dev Every job's participants and settlement.
progress: public(HashMap[uint256, T.Progress])
# @dev Packed state, current round, round deadline, quorum flag and aggregator of each job.
_hot: HashMap[uint256, uint256]
# @dev Packed rounds, round duration, provider count and flags of each job (what a round reads).
_round_word: HashMap[uint256, uint256]
# @dev Frontier of each job's round accumulator (incremental Merkle tree of depth ROUNDS_DEPTH).
_frontier: HashMap[uint256, HashMap[uint256, bytes32]]
# @dev Claimed bitmap of reward leaves, per job, 256 leaves per word.
_claimed: HashMap[uint256, HashMap[uint256, uint256]]
# job -> a bonded poster whose reward root was discarded (it posts no more in the job)
_discarded: HashMap[uint256, HashMap[address, bool]]
# @dev Soulbound reputation of every account; only claims move it (saturating).
reputation: public(HashMap[address, int256])


@deploy
def __init__(
    token: IERC20,
    disputes: address,
    round_arbiter: address,
    reward_arbiter: address,
    terms_check: address,
    treasury: address,
    fee_bps: uint256,
    unbonding_delay: uint256,
):
    """
    @notice Deploys the market; none of these can change later.
    @param token The ERC-20 token used for escrow, stakes and rewards.
    @param disputes The contract allowed to slash for attestation faults and to mark quorum.
    @param round_arbiter The contract allowed to fail a job whose round was proven wrong.
    @param reward_arbiter The contract allowed to reject a reward root proven wrong.
    @param terms_check The contract that names the first out-of-bounds term of a job.
    @param treasury Receiver of protocol fees and of the non-challenger share of slashed stakes.
    @param fee_bps Protocol fee in basis points (at most `MAX_FEE_BPS`).
    @param unbonding_delay Seconds between an unbonding request and the withdrawal.
    """
    assert token.address != empty(address), "market: zero address"
    assert disputes != empty(address) and round_arbiter != empty(address) and reward_arbiter != empty(address), "market: zero address"
    assert terms_check != empty(address), "market: zero address"
    assert treasury != empty(address), "market: zero address"
    assert fee_bps <= C.MAX_FEE_BPS, "market: fee too high"
    assert unbonding_delay <= C.MAX_CLAIM_PERIOD, "market: unbonding too long"
    DISPUTES = disputes
    ROUND_ARBITER = round_arbiter
    REWARD_ARBITER = reward_arbiter
    TERMS_CHECK = terms_check
    FEE_BPS = fee_bps
    stakes.__init__(token, treasury, unbonding_delay)


# ---------------------------------------------------------------- views


@view
@external
def job_status(job_id: uint256) -> (uint256, uint256, uint256, bool, address):
    """
    @notice The live part of a job: state, current round, round deadline, whether the last
            committed round reached quorum, and the aggregator.
    @param job_id The job.
    @return state, current_round, round_deadline, quorum, aggregator.
    """
    hot: uint256 = self._hot[job_id]
    return (
        hot & _STATE_MASK,
        (hot >> _ROUND_SHIFT) & _ROUND_MASK,
        (hot >> _DEADLINE_SHIFT) & _DEADLINE_MASK,
        hot & _QUORUM != 0,
        convert(convert(hot >> _AGGREGATOR_SHIFT, uint160), address),
    )


@view
@external
def votes_close(job_id: uint256) -> uint256:
    """
    @notice When the validators' votes on a job close for good: a quarter of the last step's
            time after its last round reached quorum (`Disputes` then takes no more attestations,
            of any round, so the activity a reward root pays is fixed before anyone computes it;
            the scores statement then has until the half, where the weight basis opens).
            max_value(uint256) while a round is still to come or the last lacks quorum.
    @param job_id The job.
    @return The timestamp from which no attestation counts.
    """
    hot: uint256 = self._hot[job_id]
    word: uint256 = self._round_word[job_id]
    if hot & _QUORUM == 0 or (hot >> _ROUND_SHIFT) & _ROUND_MASK != word & _ROUND_MASK:
        return max_value(uint256)
    duration: uint256 = (word >> _DURATION_SHIFT) & 4_294_967_295
    return ((hot >> _DEADLINE_SHIFT) & _DEADLINE_MASK) - duration + duration // 4


@view
@external
def verify_round(job_id: uint256, round: uint256, data: leaves.RoundData, proof: DynArray[bytes32, C.ROUNDS_DEPTH]) -> bool:
    """
    @notice Whether `data` is what round `round` of the job committed.
    @param job_id The job.
    @param round A committed round.
    @param data The round's commitment in the clear.
    @param proof Its proof in the round accumulator (ROUNDS_DEPTH siblings).
    @return True if it is.
    """
    current: uint256 = (self._hot[job_id] >> _ROUND_SHIFT) & _ROUND_MASK
    if round >= current or len(proof) != C.ROUNDS_DEPTH:
        return False
    leaf: bytes32 = leaves._round_commitment(job_id, round, data)
    return leaves._root(leaf, round, proof) == self._rounds_root(job_id, current)


@view
@internal
def _rounds_root(job_id: uint256, count: uint256) -> bytes32:
    """Root of the accumulator holding `count` leaves (empty leaves are zero)."""
    node: bytes32 = empty(bytes32)
    zero: bytes32 = empty(bytes32)
    size: uint256 = count
    for h: uint256 in range(C.ROUNDS_DEPTH):
        if size & 1 == 1:
            node = keccak256(concat(self._frontier[job_id][h], node))
        else:
            node = keccak256(concat(node, zero))
        zero = keccak256(concat(zero, zero))
        size >>= 1
    return node


@internal
def _accumulate(job_id: uint256, index: uint256, leaf: bytes32):
    """Appends leaf `index` to the job's accumulator: writes exactly one frontier slot."""
    node: bytes32 = leaf
    size: uint256 = index + 1
    for h: uint256 in range(C.ROUNDS_DEPTH):
        if size & 1 == 1:
            self._frontier[job_id][h] = node
            return
        node = keccak256(concat(self._frontier[job_id][h], node))
        size >>= 1
    raise "market: accumulator full"


# ---------------------------------------------------------------- jobs


@external
@nonreentrant
def post_job(terms: T.JobTerms, spec_cid: String[128]) -> uint256:
    """
    @notice Posts a job and locks `terms.escrow` tokens from the caller (the requester).
    @dev The spec itself lives off-chain under `spec_cid`; only its hash binds the job, and
         nothing about the job can change afterwards. Every role checks these terms against
         the spec before it stakes.
    @param terms The job's immutable terms.
    @param spec_cid Content id of the job spec in the blob store.
    @return The new job id.
    @custom:security Tokens move in after all checks and state writes.
    """
    assert len(spec_cid) > 0, "market: empty spec cid"
    problem: String[64] = staticcall ITermsCheck(TERMS_CHECK).problem(terms, msg.sender, block.timestamp)
    assert len(problem) == 0, problem
    job_id: uint256 = self.job_count + 1
    self.job_count = job_id
    self.terms[job_id] = terms
    self.progress[job_id].requester = msg.sender
    self._hot[job_id] = (convert(terms.aggregator, uint256) << _AGGREGATOR_SHIFT) | C.OPEN
    flags: uint256 = 0
    if terms.max_validators > 0:
        flags |= _VALIDATED
    if terms.privacy_budget > 0:
        flags |= _DP | (terms.noise_multiplier << _NOISE_SHIFT) | (terms.delta_log << _DELTA_LOG_SHIFT)
    self._round_word[job_id] = flags | (terms.round_duration << _DURATION_SHIFT) | terms.rounds
    stakes._pull(msg.sender, terms.escrow)
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
    assert self._hot[job_id] & _STATE_MASK == C.OPEN, "market: job not open"
    assert msg.sender == self.terms[job_id].aggregator, "market: not the aggregator"
    stake: uint256 = self.terms[job_id].aggregator_stake
    stakes._lock(job_id, msg.sender, C.ROLE_AGGREGATOR, stake)
    self.progress[job_id].accepted = True
    log JobAccepted(job_id=job_id, aggregator=msg.sender, stake=stake)


@internal
def _joinable(job_id: uint256):
    """The caller may join the job: it is open, its join deadline not passed, the caller not its requester."""
    assert self._hot[job_id] & _STATE_MASK == C.OPEN, "market: job not open"
    assert block.timestamp < self.terms[job_id].join_deadline, "market: join deadline passed"
    assert msg.sender != self.progress[job_id].requester, "market: requester cannot join"


@internal
def _join(job_id: uint256, provider: address, stake: uint256):
    self._joinable(job_id)
    n: uint256 = self.progress[job_id].n_providers + 1
    assert n <= self.terms[job_id].max_providers, "market: job is full"
    self.progress[job_id].n_providers = n
    stakes._lock(job_id, provider, C.ROLE_PROVIDER, stake)
    log ProviderJoined(job_id=job_id, provider=provider, stake=stake, n_providers=n)


@external
@nonreentrant
def join(job_id: uint256):
    """
    @notice Joins an open job as a provider, locking the job's provider stake
            (from free stake, pulling any shortfall from the caller's wallet).
    @param job_id The job to join.
    """
    self._join(job_id, msg.sender, self.terms[job_id].provider_stake)


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
    stake: uint256 = self.terms[job_id].provider_stake
    permitted: bool = raw_call(
        stakes.TOKEN.address,
        abi_encode(msg.sender, self, stake, deadline, v, r, s, method_id=method_id("permit(address,address,uint256,uint256,uint8,bytes32,bytes32)")),
        revert_on_failure=False,
    )
    self._join(job_id, msg.sender, stake)


@external
@nonreentrant
def join_validator(job_id: uint256, stake: uint256):
    """
    @notice Joins an open job as a validator with at least the job's validator stake;
            quorum is two thirds of the validators' total stake as it stands at `start`.
    @param job_id The job.
    @param stake Stake to lock (>= the job's validator stake); weighs its votes.
    """
    self._joinable(job_id)
    assert stake > 0 and stake >= self.terms[job_id].validator_stake, "market: stake below minimum"
    assert stake <= C.MAX_AMOUNT, "market: stake too large"
    n: uint256 = self.progress[job_id].n_validators + 1
    assert n <= self.terms[job_id].max_validators, "market: validator set full"
    self.progress[job_id].n_validators = n
    self.progress[job_id].validator_total_stake += stake
    stakes._lock(job_id, msg.sender, C.ROLE_VALIDATOR, stake)
    log ValidatorJoined(job_id=job_id, validator=msg.sender, stake=stake, n_validators=n)


@external
@nonreentrant
def start(job_id: uint256):
    """
    @notice Closes joining and starts round 0 once the aggregator accepted and the job's
            minimum providers and validators joined; fixes the validator stake every quorum
            is measured against. The aggregator or requester may start early; anyone may start
            after the join deadline.
    @param job_id The job.
    """
    hot: uint256 = self._hot[job_id]
    assert hot & _STATE_MASK == C.OPEN, "market: job not open"
    assert self.progress[job_id].accepted, "market: not accepted yet"
    n_providers: uint256 = self.progress[job_id].n_providers
    assert n_providers >= self.terms[job_id].min_providers, "market: too few providers"
    assert self.progress[job_id].n_validators >= self.terms[job_id].min_validators, "market: too few validators"
    if block.timestamp < self.terms[job_id].join_deadline:
        assert msg.sender == self.terms[job_id].aggregator or msg.sender == self.progress[job_id].requester, "market: join window still open"
    deadline: uint256 = block.timestamp + self.terms[job_id].round_duration
    # the hash of the previous block seeds round 0's provider selection: fixed now, public to all
    self.progress[job_id].start_seed = block.prevhash
    self._hot[job_id] = (hot & ~_STATE_MASK & ~(_DEADLINE_MASK << _DEADLINE_SHIFT)) | (deadline << _DEADLINE_SHIFT) | C.TRAINING
    self._round_word[job_id] |= n_providers << _PROVIDERS_SHIFT
    # allocate the accumulator slots the job's rounds will write, so every round costs the same
    levels: uint256 = leaves._depth(self.terms[job_id].rounds + 1)
    for h: uint256 in range(C.ROUNDS_DEPTH):
        if h >= levels:
            break
        self._frontier[job_id][h] = _ALLOCATED
    log TrainingStarted(
        job_id=job_id,
        n_providers=n_providers,
        n_validators=self.progress[job_id].n_validators,
        validator_total_stake=self.progress[job_id].validator_total_stake,
        round_deadline=deadline,
        seed=block.prevhash,
    )


@external
def submit_round(
    job_id: uint256,
    round: uint256,
    model_root: bytes32,
    updates_root: bytes32,
    count: uint256,
    metrics_hash: bytes32,
    epsilon_spent: uint256,
    aux_root: bytes32,
):
    """
    @notice Commits one round: the new global model's root, the root of the aggregated updates
            (positional, sorted by provider), how many there were (0 keeps the model), the
            digest of the round's metrics document (which names the model's content id), the
            job's cumulative privacy loss, and for a secure round the mask correction's root.
    @dev One transaction per round whatever the number of providers: one frontier slot of the
         round accumulator and the job's packed word are written. With validators, the
         previous round must have reached quorum. The commitment also binds the hash of the
         previous block, which seeds the next round's provider selection.
    @param job_id The job.
    @param round The round being committed; must be the current one.
    @param model_root Chunked positional Merkle root of the new global model.
    @param updates_root Positional Merkle root of the aggregated updates.
    @param count Number of updates aggregated (at most the job's providers).
    @param metrics_hash sha2-256 digest of the round's metrics document.
    @param epsilon_spent Cumulative epsilon after this round, in millionths: exactly what the
           job's noise multiplier, delta and round count give (`terms._epsilon`), 0 without DP.
    @param aux_root Root of a secure round's mask correction (zero otherwise).
    """
    hot: uint256 = self._hot[job_id]
    assert msg.sender == convert(convert(hot >> _AGGREGATOR_SHIFT, uint160), address), "market: not the aggregator"
    assert hot & _STATE_MASK == C.TRAINING, "market: job not training"
    current: uint256 = (hot >> _ROUND_SHIFT) & _ROUND_MASK
    assert round == current, "market: wrong round"
    word: uint256 = self._round_word[job_id]
    assert current < word & _ROUND_MASK, "market: all rounds committed"
    assert block.timestamp <= (hot >> _DEADLINE_SHIFT) & _DEADLINE_MASK, "market: round deadline passed"
    assert model_root != empty(bytes32), "market: empty model root"
    assert count <= (word >> _PROVIDERS_SHIFT) & 16_777_215, "market: bad update count"
    if word & _DP != 0:
        # a private job's epsilon follows from its noise, delta and rounds: nobody declares it
        noise: uint256 = (word >> _NOISE_SHIFT) & _MASK40
        assert epsilon_spent == T._epsilon(noise, (word >> _DELTA_LOG_SHIFT) & _MASK40, current + 1), "market: bad epsilon"
    else:
        assert epsilon_spent == 0, "market: epsilon without privacy"
    if current > 0 and word & _VALIDATED != 0:
        assert hot & _QUORUM != 0, "market: no quorum yet"
    seed: bytes32 = block.prevhash
    self._accumulate(job_id, current, keccak256(abi_encode(
        job_id, round, model_root, updates_root, count, metrics_hash, epsilon_spent, aux_root, seed
    )))
    deadline: uint256 = block.timestamp + ((word >> _DURATION_SHIFT) & 4_294_967_295)
    self._hot[job_id] = (hot & _AGGREGATOR_BITS) | (deadline << _DEADLINE_SHIFT) | ((current + 1) << _ROUND_SHIFT) | C.TRAINING
    log RoundCommitted(
        job_id=job_id,
        round=round,
        model_root=model_root,
        updates_root=updates_root,
        count=count,
        metrics_hash=metrics_hash,
        epsilon_spent=epsilon_spent,
        aux_root=aux_root,
        next_seed=seed,
    )


@external
def mark_quorum(job_id: uint256, round: uint256):
    """
    @notice Records that the job's latest committed round reached quorum; the aggregator's
            deadline for the next step starts now.
    @dev Only `DISPUTES` may call, when an attestation brings the round to quorum.
    @param job_id The job.
    @param round The round that reached quorum.
    """
    assert msg.sender == DISPUTES, "market: caller is not disputes"
    hot: uint256 = self._hot[job_id]
    if hot & _STATE_MASK != C.TRAINING or round + 1 != (hot >> _ROUND_SHIFT) & _ROUND_MASK or hot & _QUORUM != 0:
        return
    deadline: uint256 = block.timestamp + self.terms[job_id].round_duration
    self._hot[job_id] = (hot & ~(_DEADLINE_MASK << _DEADLINE_SHIFT)) | (deadline << _DEADLINE_SHIFT) | _QUORUM
    log QuorumMarked(job_id=job_id, round=round, round_deadline=deadline)


# ---------------------------------------------------------------- rewards


@external
@nonreentrant
def post_rewards(
    job_id: uint256,
    reward_root: bytes32,
    reward_total: uint256,
    value_total: uint256,
    basis: uint256,
    gate_met: bool,
    rewards_cid: String[128],
    slashes: uint256,
):
    """
    @notice After the last round, posts the reward root and opens the challenge window.
            Basis `BASIS_WEIGHT`: leaves follow the aggregated weights and are provable leaf by
            leaf (`RewardArbiter`); basis `BASIS_SCORES`: the root two thirds of the validator
            stake approved. `Disputes.reward_pool` says which basis may be posted when, and
            the pool the root may pay.
            The aggregator posts; once it was slashed (for a wrong root, or for posting none),
            an unslashed provider or validator of the job whose job stake is at least the
            dispute bond may post the root, that stake slashable for a wrong one, and anyone
            else by locking a bond of the aggregator's stake (at least the dispute bond).
    @param job_id The job.
    @param reward_root Positional root over the reward leaves, one per member, sorted by account.
    @param reward_total Sum of all leaf amounts; at most the pool.
    @param value_total Sum of the values of unslashed providers' leaves.
    @param basis BASIS_WEIGHT or BASIS_SCORES.
    @param gate_met Whether the validators found the quality target met (scores basis).
    @param rewards_cid Content id of the document listing every leaf.
    @param slashes The job's slash count (`slashes`) the leaves were derived with: a member
           slashed before the root lands is a cut (`RewardArbiter`), so a slash landing first
           reverts the post instead of making an honest root wrong.
    """
    hot: uint256 = self._hot[job_id]
    assert hot & _STATE_MASK == C.TRAINING, "market: job not training"
    assert (hot >> _ROUND_SHIFT) & _ROUND_MASK == self.terms[job_id].rounds, "market: rounds not finished"
    assert block.timestamp <= (hot >> _DEADLINE_SHIFT) & _DEADLINE_MASK, "market: round deadline passed"
    assert reward_root != empty(bytes32), "market: empty root"
    assert slashes == stakes.slashes[job_id], "market: slashed since"
    # the judge of rewards says whether this basis may be posted now and what pool it pays
    pool: uint256 = staticcall IDisputes(DISPUTES).reward_pool(job_id, reward_root, reward_total, value_total, basis, gate_met)
    poster: address = self.terms[job_id].aggregator
    bond: uint256 = 0
    slashed: bool = stakes._role_of(job_id, poster) & C.SLASHED != 0
    if slashed:
        # the aggregator proven wrong is out: a provider or validator of the job may post, its
        # stake in the job standing behind the root; anyone else at the cost of a bond
        assert msg.sender != poster, "market: aggregator was slashed"
        poster = msg.sender
        word: uint256 = stakes._member[job_id][poster]
        # a poster whose root was discarded (or a member slashed) posts no more: its root again
        # would bring back to life the games against its first posting, which it had let lapse
        assert word & C.SLASHED == 0 and not self._discarded[job_id][poster], "market: poster was slashed"
        role: uint256 = word & 255
        if (role != C.ROLE_PROVIDER and role != C.ROLE_VALIDATOR) or word >> C.ROLE_BITS < self.terms[job_id].dispute_bond:
            bond = max(self.terms[job_id].aggregator_stake, self.terms[job_id].dispute_bond)
    else:
        assert msg.sender == poster, "market: not the aggregator"
    assert reward_total <= pool, "market: rewards exceed pool"
    challenge: uint256 = block.timestamp + self.terms[job_id].challenge_period
    self.progress[job_id].reward_root = reward_root
    self.progress[job_id].reward_total = reward_total
    self.progress[job_id].value_total = value_total
    self.progress[job_id].basis = basis
    self.progress[job_id].pool = pool
    self.progress[job_id].challenge_deadline = challenge
    self.progress[job_id].poster = poster
    self.progress[job_id].poster_bond = bond
    self._hot[job_id] = (hot & ~_STATE_MASK) | C.FINALIZING
    stakes._pull(poster, bond)
    log RewardRootPosted(
        job_id=job_id,
        reward_root=reward_root,
        reward_total=reward_total,
        value_total=value_total,
        basis=basis,
        gate_met=gate_met,
        poster=poster,
        challenge_deadline=challenge,
        rewards_cid=rewards_cid,
    )


@external
@nonreentrant
def reward_fault(job_id: uint256, challenger: address):
    """
    @notice A reward root was proven to break the reward rule: its poster is slashed (the
            aggregator's job stake, or a later poster's bond), the root is discarded and the job
            awaits a new root for one round duration.
    @dev Only `REWARD_ARBITER` may call.
    @param job_id The job.
    @param challenger Who proved it (receives the challenger share).
    """
    assert msg.sender == REWARD_ARBITER, "market: caller is not the arbiter"
    hot: uint256 = self._hot[job_id]
    assert hot & _STATE_MASK == C.FINALIZING, "market: no reward root"
    root: bytes32 = self.progress[job_id].reward_root
    poster: address = self.progress[job_id].poster
    bond: uint256 = self.progress[job_id].poster_bond
    if bond > 0:
        stakes._pay_slash(job_id, poster, 0, bond, challenger)
        self._discarded[job_id][poster] = True  # a bonded poster (its stake, if any, stays its own) posts no more
    elif stakes._member[job_id][poster] & C.SLASHED == 0:
        stakes._slash(job_id, poster, C.STAGE_FINAL + self.progress[job_id].challenge_deadline, challenger)
    # (a poster slashed since it posted, a validator proven to equivocate, has no stake left: its
    # root is discarded all the same, or the game against it could never end and the job stayed locked)
    deadline: uint256 = block.timestamp + self.terms[job_id].round_duration
    # slashes made under the discarded root (stage STAGE_FINAL + its challenge deadline) are cuts now
    self.progress[job_id].challenge_deadline = 0
    self.progress[job_id].reward_root = empty(bytes32)
    self.progress[job_id].poster = empty(address)
    self.progress[job_id].poster_bond = 0
    self._hot[job_id] = (hot & ~_STATE_MASK & ~(_DEADLINE_MASK << _DEADLINE_SHIFT)) | (deadline << _DEADLINE_SHIFT) | C.TRAINING
    log RewardRootRejected(job_id=job_id, reward_root=root, poster=poster, challenger=challenger, round_deadline=deadline)


@external
@nonreentrant
def settle(job_id: uint256):
    """
    @notice Settles a job whose challenge window is over and whose disputes are all closed:
            pays the protocol fee, refunds the escrow not assigned to rewards, returns a
            poster's bond, opens claims.
    @dev Callable by anyone.
    @param job_id The job.
    """
    hot: uint256 = self._hot[job_id]
    assert hot & _STATE_MASK == C.FINALIZING, "market: job not finalizing"
    assert block.timestamp >= self.progress[job_id].challenge_deadline, "market: challenge window open"
    assert staticcall IArbiter(ROUND_ARBITER).open_games(job_id) + staticcall IArbiter(REWARD_ARBITER).open_games(job_id) == 0, "market: disputes open"
    escrow: uint256 = self.terms[job_id].escrow
    fee: uint256 = self._fee(escrow)
    refund: uint256 = escrow - fee - self.progress[job_id].reward_total
    claim_deadline: uint256 = block.timestamp + self.terms[job_id].claim_period
    self._hot[job_id] = (hot & ~_STATE_MASK) | C.SETTLED
    self.progress[job_id].claim_deadline = claim_deadline
    stakes._push(stakes.TREASURY, fee)
    stakes._push(self.progress[job_id].requester, refund)
    stakes._push(self.progress[job_id].poster, self.progress[job_id].poster_bond)
    log JobSettled(job_id=job_id, fee=fee, refund=refund, claim_deadline=claim_deadline)


@external
@nonreentrant
def claim(job_id: uint256, index: uint256, leaf: leaves.RewardLeaf, proof: DynArray[bytes32, C.MAX_CHUNK_PROOF]):
    """
    @notice Pays `leaf.account` its reward, unlocks its job stake (paid back with the reward
            for a provider, moved to free stake otherwise) and applies its reputation change
            (saturating), proven by a positional Merkle proof against the reward root.
    @dev Anyone may submit a claim for any account; funds always go to the account.
    @param job_id The job.
    @param index Leaf index (position in the reward tree and in the claimed bitmap).
    @param leaf The reward leaf.
    @param proof Sibling hashes from the leaf up to the root.
    @custom:security Bitmap set before any transfer; claims never exceed the job's reward total.
    """
    assert self._hot[job_id] & _STATE_MASK == C.SETTLED, "market: job not settled"
    assert block.timestamp < self.progress[job_id].claim_deadline, "market: claim period over"
    n_leaves: uint256 = self.progress[job_id].n_providers + self.progress[job_id].n_validators + 1
    assert leaves._verify(leaves._reward_leaf(leaf), index, n_leaves, proof, self.progress[job_id].reward_root), "market: invalid proof"
    word: uint256 = index >> 8
    bit: uint256 = 1 << (index & 255)
    bits: uint256 = self._claimed[job_id][word]
    assert bits & bit == 0, "market: already claimed"
    self._claimed[job_id][word] = bits | bit
    claimed: uint256 = self.progress[job_id].claimed_total + leaf.amount
    assert claimed <= self.progress[job_id].reward_total, "market: claims exceed rewards"
    self.progress[job_id].claimed_total = claimed
    role: uint256 = 0
    released: uint256 = 0
    role, released = stakes._release(job_id, leaf.account)
    if leaf.reputation_delta != 0:
        rep: int256 = self.reputation[leaf.account] + max(min(leaf.reputation_delta, C.MAX_REPUTATION), -C.MAX_REPUTATION)
        rep = max(min(rep, C.MAX_REPUTATION), -C.MAX_REPUTATION)
        self.reputation[leaf.account] = rep
        log ReputationChanged(account=leaf.account, delta=leaf.reputation_delta, reputation=rep)
    if role == C.ROLE_PROVIDER:
        stakes._push(leaf.account, leaf.amount + released)
    else:
        stakes._push(leaf.account, leaf.amount)
    log RewardClaimed(job_id=job_id, account=leaf.account, index=index, amount=leaf.amount, stake_released=released)


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
def release_stake(job_id: uint256, account: address):
    """
    @notice Unlocks an account's stake once the job is over (settled, cancelled or failed):
            a provider's goes back to its wallet, an aggregator's or validator's to its free
            stake. Callable by anyone; funds only ever go to the account.
    @param job_id The job.
    @param account The participant.
    """
    state: uint256 = self._hot[job_id] & _STATE_MASK
    assert state == C.SETTLED or state == C.CANCELLED or state == C.FAILED, "market: job still running"
    role: uint256 = 0
    amount: uint256 = 0
    role, amount = stakes._release(job_id, account)
    assert amount > 0, "market: no stake locked"
    if role == C.ROLE_PROVIDER:
        stakes._push(account, amount)
        log stakes.StakeReleased(job_id=job_id, account=account, role=role, amount=amount)


@external
@nonreentrant
def sweep(job_id: uint256):
    """
    @notice After the claim period, returns unclaimed rewards to the requester. Callable by anyone.
    @param job_id The job.
    """
    assert self._hot[job_id] & _STATE_MASK == C.SETTLED, "market: job not settled"
    assert block.timestamp >= self.progress[job_id].claim_deadline, "market: claim period open"
    left: uint256 = self.progress[job_id].reward_total - self.progress[job_id].claimed_total
    assert left > 0, "market: nothing to sweep"
    self.progress[job_id].claimed_total += left
    stakes._push(self.progress[job_id].requester, left)
    log UnclaimedSwept(job_id=job_id, amount=left)


# ---------------------------------------------------------------- exits and faults


@external
@nonreentrant
def cancel(job_id: uint256):
    """
    @notice Cancels an open job with a full refund of its escrow: by anyone once the join
            deadline passed without the aggregator, providers or validators the job needs, or
            by the requester while no provider or validator joined. Stakes become releasable.
    @param job_id The job.
    """
    hot: uint256 = self._hot[job_id]
    assert hot & _STATE_MASK == C.OPEN, "market: job not open"
    requester: address = self.progress[job_id].requester
    escrow: uint256 = self.terms[job_id].escrow
    n_providers: uint256 = self.progress[job_id].n_providers
    n_validators: uint256 = self.progress[job_id].n_validators
    if msg.sender != requester or n_providers > 0 or n_validators > 0:
        assert block.timestamp >= self.terms[job_id].join_deadline, "market: join window still open"
        assert n_providers < self.terms[job_id].min_providers or n_validators < self.terms[job_id].min_validators or not self.progress[job_id].accepted, "market: job can start"
    self._hot[job_id] = (hot & ~_STATE_MASK) | C.CANCELLED
    stakes._push(requester, escrow)
    log JobCancelled(job_id=job_id, refund=escrow)


@external
@nonreentrant
def fail(job_id: uint256):
    """
    @notice Fails a training job whose aggregator missed its deadline: the escrow is refunded
            and the aggregator slashed (half to the caller). When the last committed round of a
            validated job lacks quorum, the validators' votes decide who failed instead
            (`Disputes.fail_round`). When every round is in and only the reward root is missing,
            the job does not fail at first: the aggregator is slashed and anyone may post the
            root for one more round duration (its providers are owed for a model that exists).
    @param job_id The job.
    """
    hot: uint256 = self._hot[job_id]
    assert hot & _STATE_MASK == C.TRAINING, "market: job not training"
    assert block.timestamp > (hot >> _DEADLINE_SHIFT) & _DEADLINE_MASK, "market: deadline not missed"
    current: uint256 = (hot >> _ROUND_SHIFT) & _ROUND_MASK
    validated: bool = self._round_word[job_id] & _VALIDATED != 0
    assert current == 0 or not validated or hot & _QUORUM != 0, "market: round lacks quorum"
    aggregator: address = self.terms[job_id].aggregator
    if current == self.terms[job_id].rounds and stakes._role_of(job_id, aggregator) & C.SLASHED == 0:
        # every round is in, so the model exists and the providers are owed: the aggregator that
        # posted no reward root is slashed and, for one more round duration, anyone may post it
        self._slash_aggregator(job_id, msg.sender)
        deadline: uint256 = block.timestamp + self.terms[job_id].round_duration
        self._hot[job_id] = (hot & ~(_DEADLINE_MASK << _DEADLINE_SHIFT)) | (deadline << _DEADLINE_SHIFT)
        log RewardRootRejected(job_id=job_id, reward_root=empty(bytes32), poster=aggregator, challenger=msg.sender,
                               round_deadline=deadline)
        return
    self._fail(job_id, current, "deadline missed")
    self._slash_aggregator(job_id, msg.sender)


@external
@nonreentrant
def fail_judged(job_id: uint256, aggregator_fault: bool, challenger: address):
    """
    @notice Fails a validated training job whose last committed round will not reach quorum:
            a third of the validator stake rejected it (the aggregator's fault: it is slashed,
            half to `challenger`), or its deadline passed without enough votes (the absent
            validators' fault: `Disputes` slashed them; the aggregator keeps its stake).
    @dev Only `DISPUTES` may call. The escrow is refunded.
    @param job_id The job.
    @param aggregator_fault Whether the validators rejected the round.
    @param challenger Who called for the failure.
    """
    assert msg.sender == DISPUTES, "market: caller is not disputes"
    hot: uint256 = self._hot[job_id]
    assert hot & _STATE_MASK == C.TRAINING and hot & _QUORUM == 0, "market: round not in doubt"
    current: uint256 = (hot >> _ROUND_SHIFT) & _ROUND_MASK
    if aggregator_fault:
        self._fail(job_id, current, "round rejected")
        self._slash_aggregator(job_id, challenger)
    else:
        self._fail(job_id, current, "validators absent")


@external
@nonreentrant
def slash(job_id: uint256, account: address, challenger: address) -> uint256:
    """
    @notice Slashes a provider or validator of a running job for a fault proven to a judge:
            its stake locked in the job (at most once per job), half to the challenger and the
            rest to the treasury. The slash stage is recorded: the current round while
            training, `STAGE_FINAL` plus the root's challenge deadline once a reward root is
            posted (a member slashed under a root that stands is judged by it unslashed; once
            that root is discarded, its slash is a cut like any other).
    @dev Only `DISPUTES` may call.
    @param job_id The job (training or finalizing).
    @param account The cheater (never the aggregator: its faults fail the job).
    @param challenger Who proved it.
    @return The amount slashed.
    """
    assert msg.sender == DISPUTES, "market: caller is not disputes"
    hot: uint256 = self._hot[job_id]
    state: uint256 = hot & _STATE_MASK
    assert state == C.TRAINING or state == C.FINALIZING, "market: job not disputable"
    assert stakes._role_of(job_id, account) != C.ROLE_AGGREGATOR, "market: aggregator not slashable"
    stage: uint256 = C.STAGE_FINAL + self.progress[job_id].challenge_deadline
    if state == C.TRAINING:
        stage = (hot >> _ROUND_SHIFT) & _ROUND_MASK
    return stakes._slash(job_id, account, stage, challenger)


@external
@nonreentrant
def fail_proven(job_id: uint256, round: uint256, challenger: address, reason: String[32]):
    """
    @notice Reverts a job to before `round` and fails it after a dispute game proved the
            aggregator wrong about that round, or `DISPUTES` that it signed two seals of the
            round's commitments; the escrow is refunded and the aggregator slashed.
    @dev Only `ROUND_ARBITER` or `DISPUTES` may call, before settlement.
    @param job_id The job.
    @param round The round proven wrong.
    @param challenger Who proved it (receives the challenger share).
    @param reason Short description of the proven fault.
    """
    assert msg.sender == ROUND_ARBITER or msg.sender == DISPUTES, "market: caller is not a judge"
    hot: uint256 = self._hot[job_id]
    state: uint256 = hot & _STATE_MASK
    assert state == C.TRAINING or state == C.FINALIZING, "market: job not disputable"
    # the round being trained may be proven wrong too (a second seal of its commitments)
    assert round <= (hot >> _ROUND_SHIFT) & _ROUND_MASK, "market: round not reached"
    self._hot[job_id] = (hot & ~(_ROUND_MASK << _ROUND_SHIFT)) | (round << _ROUND_SHIFT)
    self._fail(job_id, round, reason)
    self._slash_aggregator(job_id, challenger)


@internal
def _fail(job_id: uint256, round: uint256, reason: String[32]):
    escrow: uint256 = self.terms[job_id].escrow
    hot: uint256 = self._hot[job_id]
    self._hot[job_id] = (hot & ~_STATE_MASK) | C.FAILED
    self.progress[job_id].reward_root = empty(bytes32)
    poster: address = self.progress[job_id].poster
    bond: uint256 = self.progress[job_id].poster_bond
    if bond > 0:
        self.progress[job_id].poster_bond = 0
        stakes._push(poster, bond)
    stakes._push(self.progress[job_id].requester, escrow)
    log JobFailed(job_id=job_id, round=round, refund=escrow, reason=reason)


@internal
def _slash_aggregator(job_id: uint256, challenger: address):
    aggregator: address = self.terms[job_id].aggregator
    if stakes._role_of(job_id, aggregator) & C.SLASHED != 0:
        return  # already slashed for a wrong reward root
    stakes._slash(job_id, aggregator, (self._hot[job_id] >> _ROUND_SHIFT) & _ROUND_MASK, challenger)


@view
@internal
def _fee(escrow: uint256) -> uint256:
    return escrow * FEE_BPS // C.BPS
