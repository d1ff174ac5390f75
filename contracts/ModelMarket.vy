# pragma version 0.4.3
# pragma evm-version cancun
"""
@title fedmarket model market
@notice Pay-per-use access to a settled job's trained model. The model's licence owner (the
        ModelLicence token of the job) lists it with its final model root (proven against the
        market's round accumulator) and sets the terms: a price per query (prepaid credits),
        a price per period of time-bound access, its own share and the share of the server
        that answers the queries. Every payment is split when it is earned: the protocol fee
        to the treasury, the owner's and the server's shares as pull balances, and the rest
        to the job's contributors, claimed with the job's own reward leaf and proof.
        Servers stake per job; a server settles the usage its callers signed (a cumulative
        count per caller and server, so one receipt pays any number of queries and none can
        be paid twice), and loses its stake to anyone who shows a signed answer of a listed
        linear model that on-chain re-execution proves wrong.
@license AGPL-3.0-only
"""

from ethereum.ercs import IERC20
from modules import constants as C
from modules import leaves
from modules import statements
from modules import terms as T


interface IMarket:
    def job_status(job_id: uint256) -> (uint256, uint256, uint256, bool, address): view
    def terms(job_id: uint256) -> T.JobTerms: view
    def progress(job_id: uint256) -> T.Progress: view
    def verify_round(job_id: uint256, round: uint256, data: leaves.RoundData, proof: DynArray[bytes32, C.ROUNDS_DEPTH]) -> bool: view
    def TOKEN() -> address: view
    def membership(job_id: uint256, account: address) -> (uint256, uint256): view


interface ILicence:
    def ownerOf(token_id: uint256) -> address: view


# @dev What the licence owner offers: prices, shares and the stake a server must hold.
struct Offer:
    query_price: uint256
    access_price: uint256
    access_period: uint256
    owner_bps: uint256
    server_bps: uint256
    server_stake: uint256


# @dev A caller's signed cumulative usage at one server (Usage(jobId, server, count)).
struct Usage:
    count: uint256
    signature: Bytes[65]


event ModelListed:
    job_id: indexed(uint256)
    owner: indexed(address)
    model_root: bytes32
    n_features: uint256
    n_classes: uint256


event OfferSet:
    job_id: indexed(uint256)
    query_price: uint256
    access_price: uint256
    access_period: uint256
    owner_bps: uint256
    server_bps: uint256
    server_stake: uint256


event CreditsBought:
    job_id: indexed(uint256)
    buyer: indexed(address)
    queries: uint256
    cost: uint256


event RefundRequested:
    job_id: indexed(uint256)
    buyer: indexed(address)
    release_time: uint256


event CreditsRefunded:
    job_id: indexed(uint256)
    buyer: indexed(address)
    queries: uint256
    amount: uint256


event AccessBought:
    job_id: indexed(uint256)
    buyer: indexed(address)
    until: uint256
    cost: uint256


event ServerStaked:
    job_id: indexed(uint256)
    server: indexed(address)
    amount: uint256


event UnstakeRequested:
    job_id: indexed(uint256)
    server: indexed(address)
    release_time: uint256


event ServerUnstaked:
    job_id: indexed(uint256)
    server: indexed(address)
    amount: uint256


event UsageSettled:
    job_id: indexed(uint256)
    server: indexed(address)
    callers: uint256
    queries: uint256
    amount: uint256


event RevenueSplit:
    job_id: indexed(uint256)
    amount: uint256
    fee: uint256
    owner_share: uint256
    server_share: uint256
    contributors: uint256


event RevenueClaimed:
    job_id: indexed(uint256)
    account: indexed(address)
    amount: uint256


event Withdrawn:
    account: indexed(address)
    amount: uint256


event VerifierRegistered:
    job_id: indexed(uint256)
    verifier: indexed(address)
    codehash: bytes32
    attesters: uint256


event AnswerProven:
    job_id: indexed(uint256)
    instances_hash: bytes32


event AnswerSlashed:
    job_id: indexed(uint256)
    server: indexed(address)
    challenger: indexed(address)
    amount: uint256
    challenger_share: uint256


USAGE_TYPEHASH: constant(bytes32) = keccak256("Usage(uint256 jobId,address server,uint256 count)")
ANSWER_TYPEHASH: constant(bytes32) = keccak256("Answer(uint256 jobId,bytes32 inputHash,uint256 answer)")
VERIFIER_TYPEHASH: constant(bytes32) = keccak256("VerifierAttestation(uint256 jobId,bytes32 modelRoot,address verifier,bytes32 codehash)")
PROVEN_TYPEHASH: constant(bytes32) = keccak256("ProvenAnswer(uint256 jobId,bytes32 proofHash,bytes32 instancesHash)")
# @dev Public values of one inference proof, and the bytes of the proof.
MAX_INSTANCES: constant(uint256) = 512
MAX_PROOF: constant(uint256) = 16_384
# @dev Receipts settled in one transaction.
MAX_BATCH: constant(uint256) = 256
# @dev Largest number of queries bought at once, and held by one caller.
MAX_QUERIES: constant(uint256) = 2**64 - 1
# @dev Longest time-bound access that can be held ahead (10 years).
MAX_ACCESS: constant(uint256) = 3_650 * 86_400
# @dev Seconds between a refund request and the refund (servers settle usage in between).
REFUND_DELAY: public(constant(uint256)) = 86_400
# @dev Seconds between an unstake request and the withdrawal (wrong answers are disputed in between).
UNSTAKE_DELAY: public(constant(uint256)) = 7 * 86_400
# @dev Bounds of a linear (softmax) model that disputes re-execute on chain.
MAX_FEATURES: constant(uint256) = 256
MAX_CLASSES: constant(uint256) = 16
MAX_MODEL_CHUNKS: constant(uint256) = 96
MAX_MODEL_DEPTH: constant(uint256) = 7
# @dev Fixed-point scale of model parameters and inputs (2**20, `fl.quantize.SCALE`).
ONE: constant(int256) = 2**20

# @dev The job market whose settled jobs are sold here.
MARKET: public(immutable(IMarket))
# @dev The licence registry: its token owner sets a model's terms.
LICENCE: public(immutable(ILicence))
# @dev Payment token (the market's).
TOKEN: public(immutable(IERC20))
# @dev Receiver of the protocol fee and of the non-challenger share of a slashed stake.
TREASURY: public(immutable(address))
# @dev Protocol fee on every payment, in basis points.
FEE_BPS: public(immutable(uint256))
# @dev The usage rollup whose final roots pay usage here (deployed next, at an address known now).
ROLLUP: public(immutable(address))

# @dev Final model root of each listed job (empty: not listed).
model_root: public(HashMap[uint256, bytes32])
# @dev Shape a dispute re-executes the model with: features and classes of a linear model (0: not provable).
shape: public(HashMap[uint256, uint256[2]])
# @dev The licence owner's current offer per job.
offer: public(HashMap[uint256, Offer])
# @dev Prepaid credits per job and caller: (escrowed value << 64) | queries.
_credit: HashMap[uint256, HashMap[address, uint256]]
# @dev When a caller's requested refund may be taken (0: none requested).
refund_time: public(HashMap[uint256, HashMap[address, uint256]])
# @dev Cumulative queries settled per job, caller and server (the last receipt's count).
used: public(HashMap[uint256, HashMap[address, HashMap[address, uint256]]])
# @dev End of each caller's time-bound access per job.
access_until: public(HashMap[uint256, HashMap[address, uint256]])
# @dev Stake of each server per job.
stake: public(HashMap[uint256, HashMap[address, uint256]])
# @dev Each server's share per job: the offer's `server_bps` when the server last staked.
server_share: public(HashMap[uint256, HashMap[address, uint256]])
# @dev When a server's requested unstake may be withdrawn (0: none requested).
unstake_time: public(HashMap[uint256, HashMap[address, uint256]])
# @dev Contributors' part of each job's revenue, and what each reward leaf and the job withdrew.
revenue: public(HashMap[uint256, uint256])
withdrawn: public(HashMap[uint256, HashMap[uint256, uint256]])
paid_out: public(HashMap[uint256, uint256])
# @dev Pull balances of owners, servers, challengers and the treasury.
owed: public(HashMap[address, uint256])
# @dev Proof verifier of each job's model (an EZKL Halo2 verifier with the weights fixed in its
# circuit), attested by a majority of the job's validators, and its code hash then.
verifier: public(HashMap[uint256, address])
verifier_codehash: public(HashMap[uint256, bytes32])
# @dev Proofs of inference verified on chain per job.
answers_proven: public(HashMap[uint256, uint256])
# @dev Each model's record: queries settled, gross revenue, answers proven wrong.
queries_settled: public(HashMap[uint256, uint256])
gross_revenue: public(HashMap[uint256, uint256])
disputes_lost: public(HashMap[uint256, uint256])


@deploy
def __init__(market: address, licence: address, treasury: address, fee_bps: uint256, rollup: address):
    """
    @notice Deploys the model market of one job market and licence registry.
    @param market The job market.
    @param licence The ModelLicence of that market.
    @param treasury Receiver of the protocol fee.
    @param fee_bps Protocol fee in basis points (at most `MAX_FEE_BPS`).
    @param rollup The usage rollup of this model market.
    """
    assert market != empty(address) and licence != empty(address) and treasury != empty(address), "model: zero address"
    assert fee_bps <= C.MAX_FEE_BPS, "model: fee too high"
    MARKET = IMarket(market)
    LICENCE = ILicence(licence)
    TOKEN = IERC20(staticcall IMarket(market).TOKEN())
    TREASURY = treasury
    FEE_BPS = fee_bps
    ROLLUP = rollup


# ---------------------------------------------------------------- listing and terms


@external
@nonreentrant
def list_model(job_id: uint256, round: uint256, data: leaves.RoundData, proof: DynArray[bytes32, C.ROUNDS_DEPTH],
               n_features: uint256, n_classes: uint256, terms: Offer):
    """
    @notice Lists a settled job's model with its final round and sets its first offer. Only the
            owner of the job's model token; once per job.
    @param job_id The settled job.
    @param round Its last committed round.
    @param data That round's commitment in the clear.
    @param proof Its proof in the market's round accumulator.
    @param n_features Features of a linear (softmax) model, 0 if the model is not linear.
    @param n_classes Classes of a linear model, 0 if it is not.
    @param terms The offer.
    @custom:security A wrong shape only lets disputes re-execute another function: servers check
                     the shape against the job's spec before they stake.
    """
    assert msg.sender == staticcall LICENCE.ownerOf(job_id), "model: not the model owner"
    assert self.model_root[job_id] == empty(bytes32), "model: already listed"
    state: uint256 = 0
    current: uint256 = 0
    deadline: uint256 = 0
    quorum: bool = False
    agg: address = empty(address)
    state, current, deadline, quorum, agg = staticcall MARKET.job_status(job_id)
    assert state == C.SETTLED, "model: job not settled"
    assert (staticcall MARKET.progress(job_id)).reward_total > 0, "model: job has no rewards"
    assert round + 1 == current, "model: not the final round"
    assert staticcall MARKET.verify_round(job_id, round, data, proof), "model: round not committed"
    if n_features != 0 or n_classes != 0:
        assert n_features >= 1 and n_features <= MAX_FEATURES and n_classes >= 2 and n_classes <= MAX_CLASSES, "model: shape out of bounds"
        jt: T.JobTerms = self._terms(job_id)
        assert jt.n_params == (n_features + 1) * n_classes, "model: shape does not fit"
        assert leaves._n_chunks(jt.n_params, jt.chunk_size) <= MAX_MODEL_CHUNKS, "model: too large to dispute"
    self.model_root[job_id] = data.model_root
    self.shape[job_id] = [n_features, n_classes]
    log ModelListed(job_id=job_id, owner=msg.sender, model_root=data.model_root, n_features=n_features, n_classes=n_classes)
    self._set_offer(job_id, terms)


@external
@nonreentrant
def set_offer(job_id: uint256, terms: Offer):
    """
    @notice Changes a listed model's offer. Credits and access already bought keep their price;
            a server keeps the server share it staked (or bonded) under, so a new share is for
            servers that stake from now on.
    @param job_id The listed job.
    @param terms The new offer.
    """
    assert msg.sender == staticcall LICENCE.ownerOf(job_id), "model: not the model owner"
    assert self.model_root[job_id] != empty(bytes32), "model: not listed"
    self._set_offer(job_id, terms)


@internal
def _set_offer(job_id: uint256, terms: Offer):
    assert terms.query_price <= C.MAX_AMOUNT and terms.access_price <= C.MAX_AMOUNT, "model: price too high"
    assert terms.server_stake <= C.MAX_AMOUNT, "model: stake too high"
    assert terms.access_period <= MAX_ACCESS, "model: access period too long"
    assert (terms.access_price == 0) == (terms.access_period == 0), "model: access needs both"
    # the contributors agreed, when they joined the job, to what the owner and its servers take together
    # (a server share outside it would let the owner serve its own model and take the contributors' part);
    # the terms keep it within the whole less the highest fee (TermsCheck), so the shares and fee fit too
    assert terms.owner_bps + terms.server_bps <= self._cap(job_id), "model: shares above job terms"
    self.offer[job_id] = terms
    log OfferSet(job_id=job_id, query_price=terms.query_price, access_price=terms.access_price,
                 access_period=terms.access_period, owner_bps=terms.owner_bps, server_bps=terms.server_bps,
                 server_stake=terms.server_stake)


# ---------------------------------------------------------------- buying


@view
@external
def credit(job_id: uint256, caller: address) -> (uint256, uint256):
    """
    @notice A caller's unused prepaid credits for a job's model.
    @param job_id The job.
    @param caller The caller.
    @return queries Queries left, value Tokens escrowed for them.
    """
    word: uint256 = self._credit[job_id][caller]
    return word & MAX_QUERIES, word >> 64


@external
@nonreentrant
def buy_credits(job_id: uint256, queries: uint256, max_cost: uint256):
    """
    @notice Prepays `queries` queries at the current query price; cancels a pending refund.
    @param job_id The listed job.
    @param queries Number of queries.
    @param max_cost The most the sender pays: a price raised after it looked is refused.
    """
    price: uint256 = self._listed_offer(job_id).query_price
    assert price > 0, "model: credits not offered"
    assert queries > 0, "model: no queries"
    word: uint256 = self._credit[job_id][msg.sender]
    count: uint256 = (word & MAX_QUERIES) + queries
    assert count <= MAX_QUERIES, "model: too many credits"
    cost: uint256 = queries * price
    assert cost <= max_cost, "model: past buyer bounds"
    value: uint256 = (word >> 64) + cost
    assert value <= C.MAX_AMOUNT, "model: credit value too large"
    self._credit[job_id][msg.sender] = (value << 64) | count
    self.refund_time[job_id][msg.sender] = 0
    self._pull(msg.sender, cost)
    log CreditsBought(job_id=job_id, buyer=msg.sender, queries=queries, cost=cost)


@external
@nonreentrant
def request_refund(job_id: uint256):
    """
    @notice Asks for the unused credits back; they can be taken after `REFUND_DELAY`, while
            servers settle the usage already signed.
    @param job_id The job.
    """
    assert self._credit[job_id][msg.sender] & MAX_QUERIES > 0, "model: no credits"
    release: uint256 = block.timestamp + REFUND_DELAY
    self.refund_time[job_id][msg.sender] = release
    log RefundRequested(job_id=job_id, buyer=msg.sender, release_time=release)


@external
@nonreentrant
def refund(job_id: uint256):
    """
    @notice Pays back the unused credits once the refund delay has passed.
    @param job_id The job.
    """
    release: uint256 = self.refund_time[job_id][msg.sender]
    assert release != 0, "model: no refund requested"
    assert block.timestamp >= release, "model: refund not due yet"
    word: uint256 = self._credit[job_id][msg.sender]
    self._credit[job_id][msg.sender] = 0
    self.refund_time[job_id][msg.sender] = 0
    self._push(msg.sender, word >> 64)
    log CreditsRefunded(job_id=job_id, buyer=msg.sender, queries=word & MAX_QUERIES, amount=word >> 64)


@external
@nonreentrant
def buy_access(job_id: uint256, periods: uint256, max_cost: uint256, min_until: uint256):
    """
    @notice Buys `periods` periods of time-bound access, from now or from the end of the access held.
    @param job_id The listed job.
    @param periods Number of access periods.
    @param max_cost The most the sender pays, and `min_until` the earliest end of access it accepts:
           terms changed after it looked (a higher price, a shorter period) are refused.
    """
    terms: Offer = self._listed_offer(job_id)
    assert terms.access_price > 0, "model: access not offered"
    assert periods > 0 and periods <= MAX_ACCESS, "model: bad periods"
    start: uint256 = max(block.timestamp, self.access_until[job_id][msg.sender])
    until: uint256 = start + periods * terms.access_period
    assert until <= block.timestamp + MAX_ACCESS, "model: access too long"
    cost: uint256 = periods * terms.access_price
    assert cost <= C.MAX_AMOUNT, "model: cost too high"
    assert cost <= max_cost and until >= min_until, "model: past buyer bounds"
    self.access_until[job_id][msg.sender] = until
    self._split(job_id, cost, empty(address), terms.owner_bps, 0)
    self._pull(msg.sender, cost)
    log AccessBought(job_id=job_id, buyer=msg.sender, until=until, cost=cost)


@view
@external
def has_access(job_id: uint256, caller: address) -> bool:
    """
    @notice Whether `caller` holds time-bound access to the job's model now.
    @param job_id The job.
    @param caller The caller.
    @return True while its access lasts.
    """
    return self.access_until[job_id][caller] > block.timestamp


# ---------------------------------------------------------------- serving


@external
@nonreentrant
def stake_server(job_id: uint256, amount: uint256):
    """
    @notice Stakes for serving a listed model at the offer's server share, which the sender's
            usage settles at from now on; cancels a pending unstake.
    @param job_id The listed job.
    @param amount Tokens added to the stake.
    """
    terms: Offer = self._listed_offer(job_id)
    assert amount > 0, "model: no amount"
    total: uint256 = self.stake[job_id][msg.sender] + amount
    assert total <= C.MAX_AMOUNT, "model: stake too high"
    self.stake[job_id][msg.sender] = total
    self.server_share[job_id][msg.sender] = terms.server_bps
    self.unstake_time[job_id][msg.sender] = 0
    self._pull(msg.sender, amount)
    log ServerStaked(job_id=job_id, server=msg.sender, amount=amount)


@external
@nonreentrant
def request_unstake(job_id: uint256):
    """
    @notice Stops serving: no more settlements, the stake leaves after `UNSTAKE_DELAY`.
    @param job_id The job.
    """
    assert self.stake[job_id][msg.sender] > 0, "model: not staked"
    release: uint256 = block.timestamp + UNSTAKE_DELAY
    self.unstake_time[job_id][msg.sender] = release
    log UnstakeRequested(job_id=job_id, server=msg.sender, release_time=release)


@external
@nonreentrant
def unstake(job_id: uint256):
    """
    @notice Withdraws the stake once the unstake delay has passed.
    @param job_id The job.
    """
    release: uint256 = self.unstake_time[job_id][msg.sender]
    assert release != 0, "model: no unstake requested"
    assert block.timestamp >= release, "model: still unstaking"
    amount: uint256 = self.stake[job_id][msg.sender]
    self.stake[job_id][msg.sender] = 0
    self.unstake_time[job_id][msg.sender] = 0
    self._push(msg.sender, amount)
    log ServerUnstaked(job_id=job_id, server=msg.sender, amount=amount)


@view
@external
def serving(job_id: uint256, server: address) -> bool:
    """
    @notice Whether `server` may settle usage of the job's model now.
    @param job_id The job.
    @param server The server.
    @return True if staked at least the offer's server stake and not unstaking.
    """
    return self._serving(job_id, server)


@external
@nonreentrant
def settle_usage(job_id: uint256, receipts: DynArray[Usage, MAX_BATCH]) -> uint256:
    """
    @notice Settles the usage callers signed for the sender, a serving server: each receipt is a
            caller's cumulative count of queries at this server, and pays the queries past the
            last settled count from the caller's credits, at the average price they were bought at.
    @param job_id The listed job.
    @param receipts One receipt per caller (its latest).
    @return The tokens the usage paid.
    @custom:security A receipt at or below the settled count is refused, so none pays twice;
                     a server serves past a caller's credit at its own risk.
    """
    self._listed_offer(job_id)
    # a staked server settles what it answered, whatever stake the offer asks of new servers now
    assert self.stake[job_id][msg.sender] > 0 and self.unstake_time[job_id][msg.sender] == 0, "model: not serving"
    assert len(receipts) > 0, "model: no receipts"
    separator: bytes32 = statements._separator(chain.id, self)
    total: uint256 = 0
    queries: uint256 = 0
    for r: Usage in receipts:
        digest: bytes32 = statements._digest(separator, keccak256(abi_encode(USAGE_TYPEHASH, job_id, msg.sender, r.count)))
        caller: address = statements._signer(digest, r.signature)
        last: uint256 = self.used[job_id][caller][msg.sender]
        assert r.count > last, "model: receipt already settled"
        word: uint256 = self._credit[job_id][caller]
        count: uint256 = word & MAX_QUERIES
        # usage past the caller's credit (spent at another server meanwhile) is not paid; the receipt is consumed
        due: uint256 = min(r.count - last, count)
        value: uint256 = 0
        if count > 0:
            value = (word >> 64) * due // count
        self._credit[job_id][caller] = (((word >> 64) - value) << 64) | (count - due)
        self.used[job_id][caller][msg.sender] = r.count
        total += value
        queries += due
    self.queries_settled[job_id] += queries
    server_bps: uint256 = self.server_share[job_id][msg.sender]
    self._split(job_id, total, msg.sender, self._owner_share(job_id, self.offer[job_id].owner_bps, server_bps), server_bps)
    log UsageSettled(job_id=job_id, server=msg.sender, callers=len(receipts), queries=queries, amount=total)
    return total


@external
@nonreentrant
def pay(job_id: uint256, server: address, amount: uint256, owner_bps: uint256, server_bps: uint256):
    """
    @notice Pays usage of the job's model that `server` answered, split like settled usage with
            the owner's and server's shares of the offer it was served under. Only the usage rollup
            (its final roots).
    @param job_id The listed job.
    @param server The server that answered.
    @param amount Tokens, taken from the sender.
    @param owner_bps The owner's share then.
    @param server_bps The server's share then.
    """
    assert msg.sender == ROLLUP, "model: not the usage rollup"
    self._listed_offer(job_id)
    self._split(job_id, amount, server, self._owner_share(job_id, owner_bps, server_bps), server_bps)
    self._pull(msg.sender, amount)


# ---------------------------------------------------------------- disputes


@external
@nonreentrant
def dispute_answer(job_id: uint256, server: address, x: DynArray[int256, MAX_FEATURES], answer: uint256,
                   signature: Bytes[65], chunks: DynArray[DynArray[int256, C.MAX_CHUNK], MAX_MODEL_CHUNKS],
                   proofs: DynArray[DynArray[bytes32, MAX_MODEL_DEPTH], MAX_MODEL_CHUNKS]) -> uint256:
    """
    @notice Slashes a server whose signed answer to the fixed-point input `x` is not the class
            the listed linear model gives: argmax over c of b[c] * ONE + sum_i x[i] * W[i][c]
            (the first on ties), re-executed here with the model's chunks proven against its root.
    @param job_id The listed job (a linear model).
    @param server The server that signed the answer.
    @param x The input, each feature in [0, ONE].
    @param answer The class the server answered.
    @param signature The server's Answer(jobId, inputHash, answer) signature.
    @param chunks Every chunk of the model's committed vector.
    @param proofs Each chunk's proof in the model root.
    @return The stake slashed; half to the sender, the rest to the treasury.
    """
    shape: uint256[2] = self.shape[job_id]
    assert shape[0] != 0, "model: answers not provable"
    assert len(x) == shape[0], "model: bad input length"
    digest: bytes32 = statements._digest(statements._separator(chain.id, self),
                                         keccak256(abi_encode(ANSWER_TYPEHASH, job_id, keccak256(abi_encode(x)), answer)))
    assert statements._signer(digest, signature) == server, "model: not the server's answer"
    jt: T.JobTerms = self._terms(job_id)
    self._check_chunks(self.model_root[job_id], jt.n_params, jt.chunk_size, chunks, proofs)
    assert answer != self._argmax(x, shape[1], jt.chunk_size, chunks), "model: answer is right"
    return self._slash_server(job_id, server)


@external
@nonreentrant
def register_verifier(job_id: uint256, verifier: address, signatures: DynArray[Bytes[65], C.MAX_VALIDATORS]):
    """
    @notice Registers the proof verifier of a listed job's model: more than half of the job's
            validators sign VerifierAttestation(jobId, modelRoot, verifier, codehash), stating that
            the verifier's circuit is the model they re-derived from the model root. Once.
    @param job_id The listed job.
    @param verifier The verifier contract (`verifyProof(bytes, uint256[]) -> bool`).
    @param signatures Validators' attestations, each from a distinct unslashed validator of the job.
    @custom:security The chain cannot compare a circuit with a model root: the validators' stake
                     backs the attestation, as it backs their round attestations.
    """
    root: bytes32 = self.model_root[job_id]
    assert root != empty(bytes32), "model: not listed"
    assert self.verifier[job_id] == empty(address), "model: verifier registered"
    assert verifier.is_contract, "model: verifier has no code"
    codehash: bytes32 = verifier.codehash
    digest: bytes32 = statements._digest(statements._separator(chain.id, self),
                                         keccak256(abi_encode(VERIFIER_TYPEHASH, job_id, root, verifier, codehash)))
    seen: DynArray[address, C.MAX_VALIDATORS] = []
    for sig: Bytes[65] in signatures:
        signer: address = statements._signer(digest, sig)
        assert signer not in seen, "model: attester counted twice"
        role: uint256 = 0
        stake: uint256 = 0
        role, stake = staticcall MARKET.membership(job_id, signer)
        assert role == C.ROLE_VALIDATOR, "model: attester not a validator"
        seen.append(signer)
    n: uint256 = (staticcall MARKET.progress(job_id)).n_validators
    assert n > 0 and len(seen) * 2 > n, "model: not a validator majority"
    self.verifier[job_id] = verifier
    self.verifier_codehash[job_id] = codehash
    log VerifierRegistered(job_id=job_id, verifier=verifier, codehash=codehash, attesters=len(seen))


@external
@nonreentrant
def prove_answer(job_id: uint256, proof: Bytes[MAX_PROOF], instances: DynArray[uint256, MAX_INSTANCES]):
    """
    @notice Checks a proof of inference of the job's model (its public inputs and outputs in
            `instances`) with the registered verifier and counts it in the model's record.
    @param job_id The job.
    @param proof The proof.
    @param instances Its public values.
    """
    assert self._proof_valid(job_id, proof, instances), "model: proof rejected"
    self.answers_proven[job_id] += 1
    log AnswerProven(job_id=job_id, instances_hash=keccak256(abi_encode(instances)))


@external
@nonreentrant
def dispute_proof(job_id: uint256, server: address, proof: Bytes[MAX_PROOF], instances: DynArray[uint256, MAX_INSTANCES],
                  signature: Bytes[65]) -> uint256:
    """
    @notice Slashes a server that signed ProvenAnswer(jobId, proofHash, instancesHash) for a proof
            the job's verifier rejects (a proof of another model, or of another answer).
    @param job_id The job.
    @param server The server that signed it.
    @param proof The proof it gave.
    @param instances The public values it gave.
    @param signature Its signature.
    @return The stake slashed; half to the sender, the rest to the treasury.
    """
    digest: bytes32 = statements._digest(statements._separator(chain.id, self), keccak256(abi_encode(
        PROVEN_TYPEHASH, job_id, keccak256(proof), keccak256(abi_encode(instances)))))
    assert statements._signer(digest, signature) == server, "model: not the server's proof"
    assert not self._proof_valid(job_id, proof, instances), "model: proof is valid"
    return self._slash_server(job_id, server)


@internal
def _proof_valid(job_id: uint256, proof: Bytes[MAX_PROOF], instances: DynArray[uint256, MAX_INSTANCES]) -> bool:
    """Whether the registered verifier (its code unchanged) accepts the proof; a revert is a no."""
    verifier: address = self.verifier[job_id]
    assert verifier != empty(address), "model: no verifier registered"
    assert verifier.codehash == self.verifier_codehash[job_id], "model: verifier code changed"
    ok: bool = False
    out: Bytes[32] = b""
    before: uint256 = msg.gas
    ok, out = raw_call(verifier, abi_encode(proof, instances, method_id=method_id("verifyProof(bytes,uint256[])")),
                       max_outsize=32, revert_on_failure=False)
    # a call starved of gas (the sender's limit too low) is no verdict: one that ran out, or whose own
    # inner call (a precompile) ran out, leaves 1/64 of `before` per call level at most; a verdict
    # needs a sixteenth left, which honest disputers give with 7% more gas than the verifier uses
    assert ok or msg.gas > before // 16, "model: verifier out of gas"
    return ok and len(out) == 32 and convert(out, uint256) == 1


@internal
def _slash_server(job_id: uint256, server: address) -> uint256:
    amount: uint256 = self.stake[job_id][server]
    assert amount > 0, "model: nothing to slash"
    self.stake[job_id][server] = 0
    self.disputes_lost[job_id] += 1
    share: uint256 = amount * C.CHALLENGER_BPS // C.BPS
    self.owed[msg.sender] += share
    self.owed[TREASURY] += amount - share
    log AnswerSlashed(job_id=job_id, server=server, challenger=msg.sender, amount=amount, challenger_share=share)
    return amount


@pure
@internal
def _check_chunks(root: bytes32, n_params: uint256, chunk_size: uint256,
                  chunks: DynArray[DynArray[int256, C.MAX_CHUNK], MAX_MODEL_CHUNKS],
                  proofs: DynArray[DynArray[bytes32, MAX_MODEL_DEPTH], MAX_MODEL_CHUNKS]):
    n: uint256 = leaves._n_chunks(n_params, chunk_size)
    assert len(chunks) == n and len(proofs) == n, "model: wrong number of chunks"
    for i: uint256 in range(n, bound=MAX_MODEL_CHUNKS):
        assert len(chunks[i]) == leaves._chunk_width(i, n_params, chunk_size), "model: bad chunk width"
        p: DynArray[bytes32, C.MAX_CHUNK_PROOF] = []
        for h: bytes32 in proofs[i]:
            p.append(h)
        assert leaves._verify(leaves._chunk_leaf(i, chunks[i]), i, n, p, root), "model: chunk not in the model"


@pure
@internal
def _argmax(x: DynArray[int256, MAX_FEATURES], n_classes: uint256, chunk_size: uint256,
            chunks: DynArray[DynArray[int256, C.MAX_CHUNK], MAX_MODEL_CHUNKS]) -> uint256:
    """Class of the linear model (W row-major features x classes, then b) at the fixed-point input."""
    n_features: uint256 = len(x)
    best: uint256 = 0
    best_score: int256 = min_value(int256)
    for c: uint256 in range(n_classes, bound=MAX_CLASSES):
        k: uint256 = n_features * n_classes + c
        score: int256 = chunks[k // chunk_size][k % chunk_size] * ONE
        for i: uint256 in range(n_features, bound=MAX_FEATURES):
            assert x[i] >= 0 and x[i] <= ONE, "model: input out of range"
            k = i * n_classes + c
            score += x[i] * chunks[k // chunk_size][k % chunk_size]
        if score > best_score:
            best_score = score
            best = c
    return best


# ---------------------------------------------------------------- payouts


@external
@nonreentrant
def withdraw() -> uint256:
    """
    @notice Pays the sender its pull balance (owner, server, challenger or treasury shares).
    @return The amount paid.
    """
    amount: uint256 = self.owed[msg.sender]
    assert amount > 0, "model: nothing owed"
    self.owed[msg.sender] = 0
    self._push(msg.sender, amount)
    log Withdrawn(account=msg.sender, amount=amount)
    return amount


@external
@nonreentrant
def claim(job_id: uint256, index: uint256, leaf: leaves.RewardLeaf, proof: DynArray[bytes32, C.MAX_CHUNK_PROOF]) -> uint256:
    """
    @notice Pays `leaf.account` its share of the contributors' revenue so far:
            revenue * amount / reward_total, minus what it already withdrew.
    @param job_id The job.
    @param index The account's reward leaf index.
    @param leaf Its reward leaf (as the market's claim takes it).
    @param proof Positional Merkle proof of the leaf in the job's reward root.
    @return The amount paid now.
    """
    assert self.model_root[job_id] != empty(bytes32), "model: not listed"
    p: T.Progress = staticcall MARKET.progress(job_id)
    n_leaves: uint256 = p.n_providers + p.n_validators + 1
    assert leaves._verify(leaves._reward_leaf(leaf), index, n_leaves, proof, p.reward_root), "model: invalid proof"
    entitled: uint256 = leaves._pro_rata(self.revenue[job_id], leaf.amount, p.reward_total)
    due: uint256 = entitled - self.withdrawn[job_id][index]
    assert due > 0, "model: nothing to claim"
    paid: uint256 = self.paid_out[job_id] + due
    assert paid <= self.revenue[job_id], "model: claims exceed revenue"
    self.paid_out[job_id] = paid
    self.withdrawn[job_id][index] = entitled
    self._push(leaf.account, due)
    log RevenueClaimed(job_id=job_id, account=leaf.account, amount=due)
    return due


# ---------------------------------------------------------------- internals


@view
@internal
def _listed_offer(job_id: uint256) -> Offer:
    assert self.model_root[job_id] != empty(bytes32), "model: not listed"
    return self.offer[job_id]


@view
@internal
def _owner_share(job_id: uint256, owner_bps: uint256, server_bps: uint256) -> uint256:
    # a server keeps the share it staked under; beside it, the owner's stays within the job's terms
    # (which the offer in force is, so the terms are read only when the server's share is above it)
    if owner_bps + server_bps <= self.offer[job_id].owner_bps + self.offer[job_id].server_bps:
        return owner_bps
    return min(owner_bps, self._cap(job_id) - server_bps)


@view
@internal
def _cap(job_id: uint256) -> uint256:
    # what the contributors agreed, when they joined, that the owner and its servers take together
    return self._terms(job_id).licence_requester_bps


@view
@internal
def _terms(job_id: uint256) -> T.JobTerms:
    return staticcall MARKET.terms(job_id)


@view
@internal
def _serving(job_id: uint256, server: address) -> bool:
    amount: uint256 = self.stake[job_id][server]
    return amount > 0 and amount >= self.offer[job_id].server_stake and self.unstake_time[job_id][server] == 0


@internal
def _split(job_id: uint256, amount: uint256, server: address, owner_bps: uint256, server_bps: uint256):
    """Credits a payment: the fee to the treasury, the owner's and the server's shares (none
    without a server: `server_bps` 0), the rest to the job's contributors."""
    fee: uint256 = amount * FEE_BPS // C.BPS
    owner_share: uint256 = amount * owner_bps // C.BPS
    server_share: uint256 = amount * server_bps // C.BPS
    rest: uint256 = amount - fee - owner_share - server_share
    self.owed[TREASURY] += fee
    self.owed[staticcall LICENCE.ownerOf(job_id)] += owner_share
    if server_share > 0:
        self.owed[server] += server_share
    self.revenue[job_id] += rest
    self.gross_revenue[job_id] += amount
    log RevenueSplit(job_id=job_id, amount=amount, fee=fee, owner_share=owner_share, server_share=server_share,
                     contributors=rest)


@internal
def _pull(owner: address, amount: uint256):
    if amount > 0:
        assert extcall TOKEN.transferFrom(owner, self, amount, default_return_value=True), "model: payment failed"


@internal
def _push(to: address, amount: uint256):
    if amount > 0:
        assert extcall TOKEN.transfer(to, amount, default_return_value=True), "model: transfer failed"
