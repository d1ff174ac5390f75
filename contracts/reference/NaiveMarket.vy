# pragma version 0.4.3
# pragma evm-version cancun
"""
@title Naive federated-learning market (benchmark reference only)
@notice The design fedmarket avoids, kept as a baseline for `benchmarks/gas.py`: every
        provider commits every update in its own transaction, the contract tallies
        weights on chain, and each provider claims a share computed from those tallies.
        Joining, stakes and claims mirror JobMarket, so the gas difference is the round
        ledger. Not part of the protocol; never deploy it for real funds.
@license AGPL-3.0-only
"""

from ethereum.ercs import IERC20


struct Job:
    requester: address
    aggregator: address
    escrow: uint256
    stake: uint256
    rounds: uint256
    current_round: uint256
    n_providers: uint256
    max_providers: uint256
    total_weight: uint256
    settled: bool


event JobPosted:
    job_id: indexed(uint256)
    requester: indexed(address)
    escrow: uint256


event ProviderJoined:
    job_id: indexed(uint256)
    provider: indexed(address)


event UpdateCommitted:
    job_id: indexed(uint256)
    round: indexed(uint256)
    provider: indexed(address)
    update_root: bytes32
    weight: uint256


event RoundCommitted:
    job_id: indexed(uint256)
    round: indexed(uint256)
    model_root: bytes32
    count: uint256


event RewardClaimed:
    job_id: indexed(uint256)
    provider: indexed(address)
    amount: uint256


BPS: constant(uint256) = 10_000

TOKEN: public(immutable(IERC20))
TREASURY: public(immutable(address))
FEE_BPS: public(immutable(uint256))

job_count: public(uint256)
jobs: public(HashMap[uint256, Job])
stake_of: public(HashMap[uint256, HashMap[address, uint256]])
weight_of: public(HashMap[uint256, HashMap[address, uint256]])
rounds_of: public(HashMap[uint256, HashMap[address, uint256]])
update_of: public(HashMap[uint256, HashMap[uint256, HashMap[address, bytes32]]])
round_count: public(HashMap[uint256, HashMap[uint256, uint256]])
model_of: public(HashMap[uint256, HashMap[uint256, bytes32]])
claimed: public(HashMap[uint256, HashMap[address, bool]])
reputation: public(HashMap[address, int256])


@deploy
def __init__(token: IERC20, treasury: address, fee_bps: uint256):
    TOKEN = token
    TREASURY = treasury
    FEE_BPS = fee_bps


@external
@nonreentrant
def post_job(aggregator: address, escrow: uint256, stake: uint256, max_providers: uint256, rounds: uint256) -> uint256:
    job_id: uint256 = self.job_count + 1
    self.job_count = job_id
    self.jobs[job_id] = Job(
        requester=msg.sender, aggregator=aggregator, escrow=escrow, stake=stake, rounds=rounds,
        current_round=0, n_providers=0, max_providers=max_providers, total_weight=0, settled=False,
    )
    assert extcall TOKEN.transferFrom(msg.sender, self, escrow, default_return_value=True)
    log JobPosted(job_id=job_id, requester=msg.sender, escrow=escrow)
    return job_id


@external
@nonreentrant
def join(job_id: uint256):
    assert self.stake_of[job_id][msg.sender] == 0, "naive: already joined"
    n: uint256 = self.jobs[job_id].n_providers + 1
    assert n <= self.jobs[job_id].max_providers, "naive: full"
    self.jobs[job_id].n_providers = n
    stake: uint256 = self.jobs[job_id].stake
    self.stake_of[job_id][msg.sender] = stake
    assert extcall TOKEN.transferFrom(msg.sender, self, stake, default_return_value=True)
    log ProviderJoined(job_id=job_id, provider=msg.sender)


@external
@nonreentrant
def submit_update(job_id: uint256, round: uint256, update_root: bytes32, weight: uint256):
    assert self.stake_of[job_id][msg.sender] > 0, "naive: not a provider"
    assert round == self.jobs[job_id].current_round, "naive: wrong round"
    assert self.update_of[job_id][round][msg.sender] == empty(bytes32), "naive: already submitted"
    self.update_of[job_id][round][msg.sender] = update_root
    self.weight_of[job_id][msg.sender] += weight
    self.rounds_of[job_id][msg.sender] += 1
    self.jobs[job_id].total_weight += weight
    self.round_count[job_id][round] += 1
    log UpdateCommitted(job_id=job_id, round=round, provider=msg.sender, update_root=update_root, weight=weight)


@external
@nonreentrant
def commit_round(job_id: uint256, round: uint256, model_root: bytes32):
    assert msg.sender == self.jobs[job_id].aggregator, "naive: not the aggregator"
    assert round == self.jobs[job_id].current_round, "naive: wrong round"
    count: uint256 = self.round_count[job_id][round]
    assert count > 0, "naive: empty round"
    self.model_of[job_id][round] = model_root
    self.jobs[job_id].current_round = round + 1
    log RoundCommitted(job_id=job_id, round=round, model_root=model_root, count=count)


@external
@nonreentrant
def settle(job_id: uint256):
    assert self.jobs[job_id].current_round == self.jobs[job_id].rounds, "naive: rounds not finished"
    assert not self.jobs[job_id].settled, "naive: settled"
    self.jobs[job_id].settled = True
    fee: uint256 = self.jobs[job_id].escrow * FEE_BPS // BPS
    assert extcall TOKEN.transfer(TREASURY, fee, default_return_value=True)


@external
@nonreentrant
def claim(job_id: uint256):
    assert self.jobs[job_id].settled, "naive: not settled"
    assert not self.claimed[job_id][msg.sender], "naive: claimed"
    self.claimed[job_id][msg.sender] = True
    escrow: uint256 = self.jobs[job_id].escrow
    pool: uint256 = escrow - escrow * FEE_BPS // BPS
    amount: uint256 = pool * self.weight_of[job_id][msg.sender] // self.jobs[job_id].total_weight
    stake: uint256 = self.stake_of[job_id][msg.sender]
    self.stake_of[job_id][msg.sender] = 0
    self.reputation[msg.sender] += convert(self.rounds_of[job_id][msg.sender], int256)
    assert extcall TOKEN.transfer(msg.sender, amount + stake, default_return_value=True)
    log RewardClaimed(job_id=job_id, provider=msg.sender, amount=amount)
