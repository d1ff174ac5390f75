# pragma version 0.4.3
# pragma evm-version cancun
"""
@title fedmarket model licence
@notice Each settled job's trained model is an ERC-721 token (id = job id) owned by the
        job's requester. Anyone may buy a licence to it at the job's licence price. Each
        price is split when paid: the market's protocol fee to the treasury, the job terms'
        `licence_requester_bps` to the model token's owner (the requester, or whoever it
        sold the token to), both as pull balances, and the rest to the job's contributors
        pro rata to their reward share, claimed with the job's own reward Merkle root (same
        leaf, same proof). No admin: nobody can mint except through a settled job.
@license AGPL-3.0-only
"""

from ethereum.ercs import IERC20
from snekmate.auth import ownable
from snekmate.tokens import erc721
from modules import constants as C
from modules import leaves
from modules import terms as T

initializes: ownable
initializes: erc721[ownable := ownable]

exports: (
    erc721.balanceOf,
    erc721.ownerOf,
    erc721.getApproved,
    erc721.isApprovedForAll,
    erc721.approve,
    erc721.setApprovalForAll,
    erc721.transferFrom,
    erc721.safeTransferFrom,
    erc721.tokenURI,
    erc721.totalSupply,
    erc721.supportsInterface,
    erc721.name,
    erc721.symbol,
)


interface IMarket:
    def job_status(job_id: uint256) -> (uint256, uint256, uint256, bool, address): view
    def terms(job_id: uint256) -> T.JobTerms: view
    def progress(job_id: uint256) -> T.Progress: view
    def TOKEN() -> address: view
    def TREASURY() -> address: view
    def FEE_BPS() -> uint256: view


event ModelMinted:
    job_id: indexed(uint256)
    owner: indexed(address)


event LicencePurchased:
    job_id: indexed(uint256)
    buyer: indexed(address)
    price: uint256


event RevenueClaimed:
    job_id: indexed(uint256)
    account: indexed(address)
    amount: uint256


event Withdrawn:
    account: indexed(address)
    amount: uint256


# @dev The job market whose settled jobs this contract licenses.
MARKET: public(immutable(IMarket))
# @dev The token licences are paid in (the market's token).
TOKEN: public(immutable(IERC20))

# @dev Receiver of the protocol fee (the market's treasury).
TREASURY: public(immutable(address))
# @dev Protocol fee in basis points (the market's).
FEE_BPS: public(immutable(uint256))

# @dev Licence revenue of each job's model due to its contributors (after the fee and the owner's share).
revenue: public(HashMap[uint256, uint256])
# @dev Revenue already withdrawn through each reward leaf, per job (by leaf index, as the market pays).
withdrawn: public(HashMap[uint256, HashMap[uint256, uint256]])
# @dev Revenue already paid out per job: never more than the job's own revenue.
paid_out: public(HashMap[uint256, uint256])
# @dev Who holds a licence to each job's model.
licensed: public(HashMap[uint256, HashMap[address, bool]])
# @dev Pull balances of model owners and the treasury.
owed: public(HashMap[address, uint256])


@deploy
def __init__(market: address):
    """
    @notice Deploys the licence registry for one market; no one keeps minting rights.
    @param market The job market.
    """
    MARKET = IMarket(market)
    TOKEN = IERC20(staticcall IMarket(market).TOKEN())
    TREASURY = staticcall IMarket(market).TREASURY()
    FEE_BPS = staticcall IMarket(market).FEE_BPS()
    ownable.__init__()
    erc721.__init__("fedmarket model", "FMM", "", "fedmarket model", "1")
    erc721.is_minter[msg.sender] = False
    log erc721.RoleMinterChanged(minter=msg.sender, status=False)
    ownable._transfer_ownership(empty(address))


@external
@nonreentrant
def mint(job_id: uint256):
    """
    @notice Mints the model token of a settled job to its requester. Callable by anyone, once.
    @param job_id The settled job.
    """
    assert self._state(job_id) == C.SETTLED, "licence: job not settled"
    assert not erc721._exists(job_id), "licence: already minted"
    requester: address = (staticcall MARKET.progress(job_id)).requester
    erc721._mint(requester, job_id)
    log ModelMinted(job_id=job_id, owner=requester)


@external
@nonreentrant
def buy(job_id: uint256):
    """
    @notice Buys a licence to a job's model at the job's licence price.
    @param job_id The job whose model is licensed.
    """
    assert erc721._exists(job_id), "licence: model not minted"
    # nobody could ever claim the revenue of a job without rewards
    assert (staticcall MARKET.progress(job_id)).reward_total > 0, "licence: job has no rewards"
    terms: T.JobTerms = staticcall MARKET.terms(job_id)
    price: uint256 = terms.licence_price
    assert not self.licensed[job_id][msg.sender], "licence: already licensed"
    self.licensed[job_id][msg.sender] = True
    fee: uint256 = price * FEE_BPS // C.BPS
    owner_share: uint256 = price * terms.licence_requester_bps // C.BPS
    self.owed[TREASURY] += fee
    self.owed[erc721._owner_of(job_id)] += owner_share
    self.revenue[job_id] += price - fee - owner_share
    if price > 0:
        assert extcall TOKEN.transferFrom(msg.sender, self, price, default_return_value=True), "licence: payment failed"
    log LicencePurchased(job_id=job_id, buyer=msg.sender, price=price)


@external
@nonreentrant
def claim_revenue(job_id: uint256, index: uint256, leaf: leaves.RewardLeaf, proof: DynArray[bytes32, C.MAX_CHUNK_PROOF]) -> uint256:
    """
    @notice Pays `leaf.account` its share of the model's licence revenue so far:
            revenue * amount / reward_total, minus what it already withdrew.
    @param job_id The job.
    @param index The account's reward leaf index.
    @param leaf Its reward leaf (as the market's claim takes it).
    @param proof Positional Merkle proof of the leaf in the job's reward root.
    @return The amount paid now.
    """
    assert self._state(job_id) == C.SETTLED, "licence: job not settled"
    p: T.Progress = staticcall MARKET.progress(job_id)
    assert p.reward_total > 0, "licence: job has no rewards"
    n_leaves: uint256 = p.n_providers + p.n_validators + 1
    assert leaves._verify(leaves._reward_leaf(leaf), index, n_leaves, proof, p.reward_root), "licence: invalid proof"
    entitled: uint256 = leaves._pro_rata(self.revenue[job_id], leaf.amount, p.reward_total)
    due: uint256 = entitled - self.withdrawn[job_id][index]
    assert due > 0, "licence: nothing to claim"
    # the root is proven or approved, but a job's claims never reach other jobs' revenue
    paid: uint256 = self.paid_out[job_id] + due
    assert paid <= self.revenue[job_id], "licence: claims exceed revenue"
    self.paid_out[job_id] = paid
    self.withdrawn[job_id][index] = entitled
    assert extcall TOKEN.transfer(leaf.account, due, default_return_value=True), "licence: transfer failed"
    log RevenueClaimed(job_id=job_id, account=leaf.account, amount=due)
    return due


@external
@nonreentrant
def withdraw() -> uint256:
    """
    @notice Pays the sender its pull balance (a model owner's share, the treasury's fee).
    @return The amount paid.
    """
    amount: uint256 = self.owed[msg.sender]
    assert amount > 0, "licence: nothing owed"
    self.owed[msg.sender] = 0
    assert extcall TOKEN.transfer(msg.sender, amount, default_return_value=True), "licence: transfer failed"
    log Withdrawn(account=msg.sender, amount=amount)
    return amount


@view
@internal
def _state(job_id: uint256) -> uint256:
    state: uint256 = 0
    current: uint256 = 0
    deadline: uint256 = 0
    quorum: bool = False
    aggregator: address = empty(address)
    state, current, deadline, quorum, aggregator = staticcall MARKET.job_status(job_id)
    return state
