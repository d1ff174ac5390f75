# pragma version 0.4.3
# pragma evm-version cancun
"""
@title fedmarket model licence
@notice Each settled job's trained model is an ERC-721 token (id = job id) owned by the
        job's requester. Anyone may buy a licence to it at the job's licence price; the
        revenue goes to the job's contributors pro rata to their reward share, claimed
        with the job's own reward Merkle root (same leaf, same proof). No admin: nobody
        can mint except through a settled job.
@license AGPL-3.0-only
"""

from ethereum.ercs import IERC20
from snekmate.auth import ownable
from snekmate.tokens import erc721
from snekmate.utils import merkle_proof_verification as merkle

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
    def reward_terms(job_id: uint256) -> (uint256, bytes32, uint256, address, uint256): view
    def TOKEN() -> address: view


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


# @dev The market's SETTLED state flag.
SETTLED: constant(uint256) = 8
# @dev Upper bound on the depth of a reward Merkle proof.
MAX_PROOF: constant(uint256) = 64

# @dev The job market whose settled jobs this contract licenses.
MARKET: public(immutable(IMarket))
# @dev The token licences are paid in (the market's token).
TOKEN: public(immutable(IERC20))

# @dev Total licence revenue of each job's model.
revenue: public(HashMap[uint256, uint256])
# @dev Revenue already withdrawn through each reward leaf, per job (by leaf index, as the market pays).
withdrawn: public(HashMap[uint256, HashMap[uint256, uint256]])
# @dev Revenue already paid out per job: never more than the job's own revenue.
paid_out: public(HashMap[uint256, uint256])
# @dev Who holds a licence to each job's model.
licensed: public(HashMap[uint256, HashMap[address, bool]])


@deploy
def __init__(market: address):
    """
    @notice Deploys the licence registry for one market; no one keeps minting rights.
    @param market The job market.
    """
    MARKET = IMarket(market)
    TOKEN = IERC20(staticcall IMarket(market).TOKEN())
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
    state: uint256 = 0
    root: bytes32 = empty(bytes32)
    total: uint256 = 0
    requester: address = empty(address)
    price: uint256 = 0
    state, root, total, requester, price = staticcall MARKET.reward_terms(job_id)
    assert state == SETTLED, "licence: job not settled"
    assert not erc721._exists(job_id), "licence: already minted"
    erc721._mint(requester, job_id)
    log ModelMinted(job_id=job_id, owner=requester)


@external
@nonreentrant
def buy(job_id: uint256):
    """
    @notice Buys a licence to a job's model at the job's licence price.
    @param job_id The job whose model is licensed.
    """
    state: uint256 = 0
    root: bytes32 = empty(bytes32)
    total: uint256 = 0
    requester: address = empty(address)
    price: uint256 = 0
    state, root, total, requester, price = staticcall MARKET.reward_terms(job_id)
    assert erc721._exists(job_id), "licence: model not minted"
    assert total > 0, "licence: job has no rewards"  # nobody could ever claim the revenue
    assert not self.licensed[job_id][msg.sender], "licence: already licensed"
    self.licensed[job_id][msg.sender] = True
    self.revenue[job_id] += price
    if price > 0:
        assert extcall TOKEN.transferFrom(msg.sender, self, price, default_return_value=True), "licence: payment failed"
    log LicencePurchased(job_id=job_id, buyer=msg.sender, price=price)


@external
@nonreentrant
def claim_revenue(
    job_id: uint256,
    index: uint256,
    account: address,
    amount: uint256,
    reputation_delta: int256,
    proof: DynArray[bytes32, MAX_PROOF],
) -> uint256:
    """
    @notice Pays `account` its share of the model's licence revenue so far:
            revenue * amount / reward_total, minus what it already withdrew.
    @param job_id The job.
    @param index The account's reward leaf index.
    @param account The contributor.
    @param amount Its reward in the job (from its leaf).
    @param reputation_delta Its reputation delta (from its leaf).
    @param proof Merkle proof of the leaf in the job's reward root.
    @return The amount paid now.
    """
    state: uint256 = 0
    root: bytes32 = empty(bytes32)
    total: uint256 = 0
    requester: address = empty(address)
    price: uint256 = 0
    state, root, total, requester, price = staticcall MARKET.reward_terms(job_id)
    assert state == SETTLED and total > 0, "licence: job has no rewards"
    leaf: bytes32 = keccak256(keccak256(abi_encode(index, account, amount, reputation_delta)))
    assert merkle._verify(proof, root, leaf), "licence: invalid proof"
    entitled: uint256 = self.revenue[job_id] * amount // total
    due: uint256 = entitled - self.withdrawn[job_id][index]
    assert due > 0, "licence: nothing to claim"
    # the root is the aggregator's word: a job's claims never reach other jobs' revenue
    paid: uint256 = self.paid_out[job_id] + due
    assert paid <= self.revenue[job_id], "licence: claims exceed revenue"
    self.paid_out[job_id] = paid
    self.withdrawn[job_id][index] = entitled
    assert extcall TOKEN.transfer(account, due, default_return_value=True), "licence: transfer failed"
    log RevenueClaimed(job_id=job_id, account=account, amount=due)
    return due
