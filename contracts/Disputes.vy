# pragma version 0.4.3
# pragma evm-version cancun
"""
@title fedmarket disputes
@notice Checks the validators' signed statements for the job market: attestations of
        committed rounds (EIP-712, quorum by stake), equivocating validators, the validator
        supermajority's judgement of a provider (poisoning, free-riding), and the validators'
        approval of a reward root. Quorum is always two thirds of the validator stake fixed
        when the job started; a vote counts the voter's stake when it is cast, and a slashed
        validator casts no more votes. The interactive dispute games over rounds and reward
        roots live in `Arbiter`. Every statement is signed in this contract's EIP-712 domain.
@license AGPL-3.0-only
"""

from snekmate.utils import eip712_domain_separator as eip712
from modules import constants as C
from modules import leaves
from modules import statements as S
from modules import terms as T

initializes: eip712

exports: eip712.eip712Domain


interface IMarket:
    def job_status(job_id: uint256) -> (uint256, uint256, uint256, bool, address): view
    def terms(job_id: uint256) -> T.JobTerms: view
    def FEE_BPS() -> uint256: view
    def progress(job_id: uint256) -> T.Progress: view
    def membership(job_id: uint256, account: address) -> (uint256, uint256): view
    def verify_round(job_id: uint256, round: uint256, data: leaves.RoundData, proof: DynArray[bytes32, C.ROUNDS_DEPTH]) -> bool: view
    def slash(job_id: uint256, account: address, challenger: address) -> uint256: nonpayable
    def mark_quorum(job_id: uint256, round: uint256): nonpayable
    def fail_judged(job_id: uint256, aggregator_fault: bool, challenger: address): nonpayable
    def fail_proven(job_id: uint256, round: uint256, challenger: address, reason: String[32]): nonpayable
    def votes_close(job_id: uint256) -> uint256: view


event RoundAttested:
    job_id: indexed(uint256)
    round: indexed(uint256)
    validator: indexed(address)
    scores_root: bytes32
    stake: uint256


event QuorumReached:
    job_id: indexed(uint256)
    round: indexed(uint256)
    attested_stake: uint256
    total_stake: uint256


event RoundRejected:
    job_id: indexed(uint256)
    round: indexed(uint256)
    validator: indexed(address)
    stake: uint256


event EquivocationProven:
    job_id: indexed(uint256)
    round: indexed(uint256)
    validator: indexed(address)
    challenger: address


event SealEquivocationProven:
    job_id: indexed(uint256)
    round: indexed(uint256)
    aggregator: indexed(address)
    challenger: address


event ProviderSlashed:
    job_id: indexed(uint256)
    provider: indexed(address)
    attested_stake: uint256
    total_stake: uint256
    challenger: address


event RewardsApproved:
    job_id: indexed(uint256)
    validator: indexed(address)
    key: bytes32
    reward_root: bytes32
    reward_total: uint256
    value_total: uint256
    gate_met: bool
    stake: uint256


# @dev The job market this contract judges for.
MARKET: public(immutable(IMarket))

# @dev Stake that attested each round, per job.
attested_stake: public(HashMap[uint256, HashMap[uint256, uint256]])
# @dev Scores root each validator attested for each round (empty = none).
attestation_of: public(HashMap[uint256, HashMap[uint256, HashMap[address, bytes32]]])
# @dev Stake that rejected each round, per job.
rejected_stake: public(HashMap[uint256, HashMap[uint256, uint256]])
# @dev Whether a validator rejected a round (a validator votes once per round: attest or reject).
rejected: public(HashMap[uint256, HashMap[uint256, HashMap[address, bool]]])
# @dev Number of validators that voted (attested or rejected) on each round, per job.
voters: public(HashMap[uint256, HashMap[uint256, uint256]])
# @dev Votes cast on all of a job's rounds together (every validator on every round: the votes
#      may close before their time).
votes_cast: public(HashMap[uint256, uint256])
# @dev Validator stake that approved each reward statement of a job, keyed by its hash.
rewards_stake: public(HashMap[uint256, HashMap[bytes32, uint256]])
# @dev The most validator stake any one reward statement of a job has gathered.
top_approval: public(HashMap[uint256, uint256])
# @dev Whether a validator approved a reward statement of a job (keyed by its hash): one approval
#      per validator per statement, so that after a slash turns an approved statement stale the
#      validators can approve the one that replaces it.
rewards_signed: public(HashMap[uint256, HashMap[bytes32, HashMap[address, bool]]])


@deploy
def __init__(market: address):
    """
    @notice Deploys the disputes contract for one market (EIP-712 domain "fedmarket", "1").
    @param market The job market (its address is fixed before deployment).
    """
    assert market != empty(address), "disputes: market is zero"
    MARKET = IMarket(market)
    eip712.__init__("fedmarket", "1")


@view
@external
def separator() -> bytes32:
    """
    @notice The EIP-712 domain separator every protocol statement is signed under.
    @return The separator.
    """
    return eip712._domain_separator_v4()


@view
@internal
def _status(job_id: uint256) -> (uint256, uint256):
    """(state, current round) of a job."""
    state: uint256 = 0
    current: uint256 = 0
    deadline: uint256 = 0
    quorum: bool = False
    aggregator: address = empty(address)
    state, current, deadline, quorum, aggregator = staticcall MARKET.job_status(job_id)
    return state, current


@view
@internal
def _total_stake(job_id: uint256) -> uint256:
    """The job's validator stake, fixed when it started: every quorum is two thirds of it."""
    return (staticcall MARKET.progress(job_id)).validator_total_stake


@view
@internal
def _votes_closed(job_id: uint256, current: uint256, n_validators: uint256) -> bool:
    """Whether the validators' votes on the job are closed for good: its last round reached
    quorum, and a quarter of the last step's time has passed since (`JobMarket.votes_close`)
    or every validator voted on every round. From then on no attestation of any round counts,
    so the activity a reward root pays is fixed before anyone computes or approves one."""
    close: uint256 = staticcall MARKET.votes_close(job_id)
    return close != max_value(uint256) and (block.timestamp >= close or self.votes_cast[job_id] >= n_validators * current)


@view
@internal
def _voters(
    job_id: uint256, digest: bytes32, validators: DynArray[address, C.MAX_VALIDATORS], signatures: DynArray[Bytes[65], C.MAX_VALIDATORS]
) -> DynArray[uint256, C.MAX_VALIDATORS]:
    """The stake of each signer of `digest`: strictly ascending, each a validator of the job
    that was never slashed (a slashed validator casts no more votes)."""
    assert len(validators) == len(signatures) and len(validators) > 0, "disputes: bad signature list"
    stakes: DynArray[uint256, C.MAX_VALIDATORS] = []
    prev: uint256 = 0
    for i: uint256 in range(len(validators), bound=C.MAX_VALIDATORS):
        v: address = validators[i]
        assert convert(v, uint256) > prev, "disputes: validators not ascending"
        prev = convert(v, uint256)
        assert S._signer(digest, signatures[i]) == v, "disputes: bad signature"
        role: uint256 = 0
        stake: uint256 = 0
        role, stake = staticcall MARKET.membership(job_id, v)
        assert role == C.ROLE_VALIDATOR, "disputes: not a validator of the job"
        stakes.append(stake)
    return stakes


# ---------------------------------------------------------------- attestations


@external
@nonreentrant
def attest(
    job_id: uint256,
    round: uint256,
    data: leaves.RoundData,
    proof: DynArray[bytes32, C.ROUNDS_DEPTH],
    scores_root: bytes32,
    validators: DynArray[address, C.MAX_VALIDATORS],
    signatures: DynArray[Bytes[65], C.MAX_VALIDATORS],
):
    """
    @notice Records validators' signed attestations `(job, round, modelRoot, scoresRoot)` of a
            committed round while the job trains; anyone may submit them, any number at once.
            When the job's latest round reaches two thirds of the job's validator stake, the
            market is told (the next round may then be committed). Once the votes closed
            (`_votes_closed`: the last round at quorum, and every vote on every round in or a
            quarter of the last step's time gone) no attestation counts any more.
    @param job_id The job.
    @param round The attested round.
    @param data The round's commitment in the clear.
    @param proof Its proof in the market's round accumulator.
    @param scores_root Root of the validators' contribution scores for the round.
    @param validators Signers, strictly ascending.
    @param signatures Their EIP-712 signatures, in the same order.
    """
    # an empty root would read as "not attested yet" and could be counted twice
    assert scores_root != empty(bytes32), "disputes: empty scores root"
    state: uint256 = 0
    current: uint256 = 0
    state, current = self._status(job_id)
    assert state == C.TRAINING, "disputes: job not training"
    p: T.Progress = staticcall MARKET.progress(job_id)
    assert not self._votes_closed(job_id, current, p.n_validators), "disputes: votes closed"
    assert staticcall MARKET.verify_round(job_id, round, data, proof), "disputes: round data not committed"
    digest: bytes32 = S._attestation(eip712._domain_separator_v4(), job_id, round, data.model_root, scores_root)
    stakes: DynArray[uint256, C.MAX_VALIDATORS] = self._voters(job_id, digest, validators, signatures)
    added: uint256 = 0
    for i: uint256 in range(len(validators), bound=C.MAX_VALIDATORS):
        v: address = validators[i]
        assert self.attestation_of[job_id][round][v] == empty(bytes32) and not self.rejected[job_id][round][v], "disputes: already voted"
        self.attestation_of[job_id][round][v] = scores_root
        added += stakes[i]
        log RoundAttested(job_id=job_id, round=round, validator=v, scores_root=scores_root, stake=stakes[i])
    self.voters[job_id][round] += len(validators)
    self.votes_cast[job_id] += len(validators)
    before: uint256 = self.attested_stake[job_id][round]
    after: uint256 = before + added
    self.attested_stake[job_id][round] = after
    total: uint256 = p.validator_total_stake
    if before * 3 < total * 2 and after * 3 >= total * 2:
        log QuorumReached(job_id=job_id, round=round, attested_stake=after, total_stake=total)
        if round + 1 == current:
            extcall MARKET.mark_quorum(job_id, round)


@external
@nonreentrant
def reject(
    job_id: uint256,
    round: uint256,
    data: leaves.RoundData,
    proof: DynArray[bytes32, C.ROUNDS_DEPTH],
    validators: DynArray[address, C.MAX_VALIDATORS],
    signatures: DynArray[Bytes[65], C.MAX_VALIDATORS],
):
    """
    @notice Records validators' signed rejections `Rejection(jobId, round, modelRoot)` of a
            committed round they found wrong in a way no dispute game can prove (a secure
            round's mask correction that its transcript does not re-derive, unavailable data).
            Once more than a third of the job's validator stake rejected the job's latest
            round, it can never reach quorum and `fail_round` fails the job at the aggregator's
            cost. A validator votes once per round.
    @param job_id The job.
    @param round The rejected round.
    @param data The round's commitment in the clear.
    @param proof Its proof in the market's round accumulator.
    @param validators Signers, strictly ascending.
    @param signatures Their EIP-712 signatures, in the same order.
    """
    state: uint256 = 0
    current: uint256 = 0
    state, current = self._status(job_id)
    assert state == C.TRAINING, "disputes: job not training"
    assert staticcall MARKET.verify_round(job_id, round, data, proof), "disputes: round data not committed"
    digest: bytes32 = S._rejection(eip712._domain_separator_v4(), job_id, round, data.model_root)
    stakes: DynArray[uint256, C.MAX_VALIDATORS] = self._voters(job_id, digest, validators, signatures)
    added: uint256 = 0
    for i: uint256 in range(len(validators), bound=C.MAX_VALIDATORS):
        v: address = validators[i]
        assert self.attestation_of[job_id][round][v] == empty(bytes32) and not self.rejected[job_id][round][v], "disputes: already voted"
        self.rejected[job_id][round][v] = True
        added += stakes[i]
        log RoundRejected(job_id=job_id, round=round, validator=v, stake=stakes[i])
    self.rejected_stake[job_id][round] += added
    self.voters[job_id][round] += len(validators)
    self.votes_cast[job_id] += len(validators)


@external
@nonreentrant
def fail_round(job_id: uint256, absent: DynArray[address, C.MAX_VALIDATORS]):
    """
    @notice Fails a validated job whose latest committed round will not reach quorum, charging
            whoever failed: if more than a third of the validator stake rejected the round, the
            aggregator (slashed, half to the caller); otherwise, once the deadline passed, every
            validator that neither attested nor rejected the round (each slashed, half to the
            caller), while the aggregator keeps its stake. The escrow is refunded.
    @param job_id The job (training, its latest round without quorum).
    @param absent Every validator of the job that did not vote on the round, strictly ascending
           (with the voters, exactly the job's validators: no absentee escapes).
    """
    state: uint256 = 0
    current: uint256 = 0
    deadline: uint256 = 0
    quorum: bool = False
    aggregator: address = empty(address)
    state, current, deadline, quorum, aggregator = staticcall MARKET.job_status(job_id)
    assert state == C.TRAINING and current > 0 and not quorum, "disputes: round not in doubt"
    round: uint256 = current - 1
    total: uint256 = self._total_stake(job_id)
    assert total > 0, "disputes: job has no validators"
    if self.rejected_stake[job_id][round] * 3 > total:
        extcall MARKET.fail_judged(job_id, True, msg.sender)
        return
    assert block.timestamp > deadline, "disputes: deadline not passed"
    n: uint256 = (staticcall MARKET.progress(job_id)).n_validators
    assert len(absent) + self.voters[job_id][round] == n, "disputes: absent list incomplete"
    prev: uint256 = 0
    for v: address in absent:
        assert convert(v, uint256) > prev, "disputes: validators not ascending"
        prev = convert(v, uint256)
        role: uint256 = 0
        stake: uint256 = 0
        role, stake = staticcall MARKET.membership(job_id, v)
        assert role & C.ROLE_MASK == C.ROLE_VALIDATOR, "disputes: not a validator of the job"
        assert self.attestation_of[job_id][round][v] == empty(bytes32) and not self.rejected[job_id][round][v], "disputes: validator voted"
        if role & C.SLASHED == 0:
            extcall MARKET.slash(job_id, v, msg.sender)
    extcall MARKET.fail_judged(job_id, False, msg.sender)


@view
@external
def votes_closed(job_id: uint256) -> bool:
    """
    @notice Whether the validators' votes on the job are closed for good (`_votes_closed`):
            from then on no attestation counts, and reward statements may be approved and posted.
    @param job_id The job.
    @return True once closed.
    """
    state: uint256 = 0
    current: uint256 = 0
    state, current = self._status(job_id)
    return self._votes_closed(job_id, current, (staticcall MARKET.progress(job_id)).n_validators)


@view
@external
def has_quorum(job_id: uint256, round: uint256) -> bool:
    """
    @notice Whether two thirds of the job's validator stake (fixed at its start) attested round `round`.
    @param job_id The job.
    @param round The round.
    @return True at quorum.
    """
    return self.attested_stake[job_id][round] * 3 >= self._total_stake(job_id) * 2


@external
@nonreentrant
def prove_equivocation(
    job_id: uint256,
    round: uint256,
    validator: address,
    model_root_a: bytes32,
    scores_root_a: bytes32,
    signature_a: Bytes[65],
    model_root_b: bytes32,
    scores_root_b: bytes32,
    signature_b: Bytes[65],
):
    """
    @notice Proves that a validator signed two different attestations for one round of a
            running job; its job stake is slashed (half to the caller, half to the treasury).
    @param job_id The job.
    @param round The round.
    @param validator The equivocating validator.
    @param model_root_a First attestation's model root.
    @param scores_root_a First attestation's scores root.
    @param signature_a First signature.
    @param model_root_b Second attestation's model root.
    @param scores_root_b Second attestation's scores root.
    @param signature_b Second signature.
    """
    assert model_root_a != model_root_b or scores_root_a != scores_root_b, "disputes: attestations are identical"
    role: uint256 = 0
    stake: uint256 = 0
    role, stake = staticcall MARKET.membership(job_id, validator)
    assert role == C.ROLE_VALIDATOR, "disputes: not a validator of the job"
    sep: bytes32 = eip712._domain_separator_v4()
    assert S._signer(S._attestation(sep, job_id, round, model_root_a, scores_root_a), signature_a) == validator, "disputes: first signature invalid"
    assert S._signer(S._attestation(sep, job_id, round, model_root_b, scores_root_b), signature_b) == validator, "disputes: second signature invalid"
    extcall MARKET.slash(job_id, validator, msg.sender)
    log EquivocationProven(job_id=job_id, round=round, validator=validator, challenger=msg.sender)


@external
@nonreentrant
def prove_seal_equivocation(
    job_id: uint256, round: uint256, digest_a: bytes32, signature_a: Bytes[65], digest_b: bytes32, signature_b: Bytes[65]
):
    """
    @notice Proves that a job's aggregator signed two different seals of one round's update
            commitments (`CommitmentSeal(jobId, round, digest)`): a second seal lets in a
            commitment the first closed the round to (a copier's), and makes a validator that
            reviews after it reject a round others attested. The job fails back to before that
            round (the escrow is refunded) and the aggregator is slashed, half to the caller.
    @param job_id The job (training or finalizing, the round reached).
    @param round The sealed round.
    @param digest_a One seal's digest of its commitments.
    @param signature_a The aggregator's signature of it.
    @param digest_b Another digest.
    @param signature_b The aggregator's signature of that.
    """
    assert digest_a != digest_b, "disputes: seals are identical"
    state: uint256 = 0
    current: uint256 = 0
    deadline: uint256 = 0
    quorum: bool = False
    aggregator: address = empty(address)
    state, current, deadline, quorum, aggregator = staticcall MARKET.job_status(job_id)
    sep: bytes32 = eip712._domain_separator_v4()
    assert S._signer(S._seal(sep, job_id, round, digest_a), signature_a) == aggregator, "disputes: first seal not the aggregator's"
    assert S._signer(S._seal(sep, job_id, round, digest_b), signature_b) == aggregator, "disputes: second seal not the aggregator's"
    extcall MARKET.fail_proven(job_id, round, msg.sender, "seal equivocation")
    log SealEquivocationProven(job_id=job_id, round=round, aggregator=aggregator, challenger=msg.sender)


# ---------------------------------------------------------------- judgements


@view
@external
def misbehaviour_digest(job_id: uint256, provider: address) -> bytes32:
    """
    @notice EIP-712 digest a validator signs to report a provider's updates as poisoned or free-riding.
    @param job_id The job.
    @param provider The reported provider.
    @return The digest.
    """
    return S._misbehaviour(eip712._domain_separator_v4(), job_id, provider)


@external
@nonreentrant
def slash_provider(
    job_id: uint256,
    provider: address,
    validators: DynArray[address, C.MAX_VALIDATORS],
    signatures: DynArray[Bytes[65], C.MAX_VALIDATORS],
):
    """
    @notice Slashes a provider that two thirds of the job's validator stake reported, by signed
            `Misbehaviour(jobId, provider)` statements, as poisoning or free-riding, while the
            job trains: its job stake is split between the caller and the treasury; updates it
            sends from the next round on are invalid and its reward leaf pays nothing.
    @dev Not a proof but a supermajority judgement: a cartel above a third of the stake is
         outside the trust model (docs/security.md).
    @param job_id The job (training).
    @param provider The reported provider.
    @param validators Signers, strictly ascending.
    @param signatures Their EIP-712 signatures, in the same order.
    """
    state: uint256 = 0
    current: uint256 = 0
    state, current = self._status(job_id)
    assert state == C.TRAINING, "disputes: job not training"
    total: uint256 = self._total_stake(job_id)
    assert total > 0, "disputes: job has no validators"
    role: uint256 = 0
    stake: uint256 = 0
    role, stake = staticcall MARKET.membership(job_id, provider)
    assert role == C.ROLE_PROVIDER, "disputes: not a provider of the job"
    digest: bytes32 = S._misbehaviour(eip712._domain_separator_v4(), job_id, provider)
    stakes: DynArray[uint256, C.MAX_VALIDATORS] = self._voters(job_id, digest, validators, signatures)
    attested: uint256 = 0
    for s: uint256 in stakes:
        attested += s
    assert attested * 3 >= total * 2, "disputes: no validator supermajority"
    extcall MARKET.slash(job_id, provider, msg.sender)
    log ProviderSlashed(job_id=job_id, provider=provider, attested_stake=attested, total_stake=total, challenger=msg.sender)


@external
@nonreentrant
def approve_rewards(
    job_id: uint256,
    reward_root: bytes32,
    reward_total: uint256,
    value_total: uint256,
    gate_met: bool,
    validators: DynArray[address, C.MAX_VALIDATORS],
    signatures: DynArray[Bytes[65], C.MAX_VALIDATORS],
):
    """
    @notice Records validators' signed approvals `Rewards(jobId, rewardRoot, rewardTotal,
            valueTotal, gateMet)` of the scores-basis reward root they re-derived from the
            revealed scores, once the votes closed (`_votes_closed`: every round committed, the
            last at quorum, every vote in or a quarter of the last step's time gone, so the
            activity the statement pays can no longer change); anyone may submit them. The
            market accepts a scores-basis root only once two thirds of the validator stake
            approved exactly that statement. One approval per validator and statement: a
            statement made stale by a later slash is replaced by a new one, approved anew.
    @param job_id The job.
    @param reward_root The reward root.
    @param reward_total The sum of its amounts.
    @param value_total The sum of its unslashed providers' values.
    @param gate_met Whether the final model met the job's quality target.
    @param validators Signers, strictly ascending.
    @param signatures Their EIP-712 signatures, in the same order.
    """
    state: uint256 = 0
    current: uint256 = 0
    state, current = self._status(job_id)
    assert state == C.TRAINING, "disputes: job not training"
    digest: bytes32 = S._rewards(eip712._domain_separator_v4(), job_id, reward_root, reward_total, value_total, gate_met)
    key: bytes32 = keccak256(abi_encode(reward_root, reward_total, value_total, gate_met))
    stakes: DynArray[uint256, C.MAX_VALIDATORS] = self._voters(job_id, digest, validators, signatures)
    assert self._votes_closed(job_id, current, (staticcall MARKET.progress(job_id)).n_validators), "disputes: votes open"
    added: uint256 = 0
    for i: uint256 in range(len(validators), bound=C.MAX_VALIDATORS):
        v: address = validators[i]
        assert not self.rewards_signed[job_id][key][v], "disputes: already approved"
        self.rewards_signed[job_id][key][v] = True
        added += stakes[i]
        log RewardsApproved(
            job_id=job_id, validator=v, key=key, reward_root=reward_root, reward_total=reward_total,
            value_total=value_total, gate_met=gate_met, stake=stakes[i],
        )
    self.rewards_stake[job_id][key] += added
    self.top_approval[job_id] = max(self.top_approval[job_id], self.rewards_stake[job_id][key])


@view
@external
def reward_pool(job_id: uint256, reward_root: bytes32, reward_total: uint256, value_total: uint256, basis: uint256, gate_met: bool) -> uint256:
    """
    @notice The pool a reward root may pay, if it may be posted now; reverts with the reason
            otherwise. A job with validators needs its last round at quorum and the votes
            closed (`_votes_closed`), so a late validator's attestation is paid and none lands
            after the root was computed. Basis
            `BASIS_SCORES` (validated, unmasked jobs) needs two thirds of the validator stake to
            have approved exactly this statement, and pays the full pool or, if the validators
            found the quality target missed, the terms' miss payout. Basis `BASIS_WEIGHT` (every
            leaf provable) is open to unvalidated and secure jobs at once, and to validated
            unmasked jobs once half of the last step's time passed while no scores statement has
            two thirds of the validator stake; no
            validator judged the quality then, so a gated job pays its miss payout.
    @param job_id The job (training, every round committed).
    @param reward_root The root.
    @param reward_total The sum of its amounts.
    @param value_total The sum of its unslashed providers' values.
    @param basis BASIS_WEIGHT or BASIS_SCORES.
    @param gate_met Whether the quality target was met.
    @return The pool: escrow minus the protocol fee; if the gate was missed, the roles' reserved
            fees plus the miss payout's share of the rest.
    """
    t: T.JobTerms = staticcall MARKET.terms(job_id)
    state: uint256 = 0
    current: uint256 = 0
    deadline: uint256 = 0
    quorum: bool = False
    aggregator: address = empty(address)
    state, current, deadline, quorum, aggregator = staticcall MARKET.job_status(job_id)
    assert value_total <= C.MAX_AMOUNT, "disputes: value too large"
    validated: bool = t.max_validators > 0
    assert not validated or quorum, "disputes: last round lacks quorum"
    p: T.Progress = staticcall MARKET.progress(job_id)
    # the activity the root pays is fixed first: no validator's vote can land after it is computed
    assert not validated or self._votes_closed(job_id, current, p.n_validators), "disputes: votes open"
    scored: bool = validated and t.rule != C.RULE_SECURE_SUM
    total: uint256 = p.validator_total_stake
    if basis == C.BASIS_SCORES:
        assert scored, "disputes: no scores to approve"
        key: bytes32 = keccak256(abi_encode(reward_root, reward_total, value_total, gate_met))
        assert self.rewards_stake[job_id][key] * 3 >= total * 2, "disputes: rewards not approved"
    else:
        assert basis == C.BASIS_WEIGHT, "disputes: unknown basis"
        assert not scored or block.timestamp + t.round_duration // 2 >= deadline, "disputes: approval window open"
        # once two thirds of the validators approved a scores root, only that root can pay
        assert not scored or self.top_approval[job_id] * 3 < total * 2, "disputes: scores approved"
        assert gate_met == (t.miss_payout_bps == C.BPS), "disputes: gate must follow the terms"
    pool: uint256 = t.escrow - t.escrow * staticcall MARKET.FEE_BPS() // C.BPS
    if not gate_met:
        # the roles' fees pay for work done, whatever the model's quality; the providers' part shrinks
        reserved: uint256 = T._reserved(t, p.n_validators)
        pool = reserved + (pool - reserved) * t.miss_payout_bps // C.BPS
    return pool
