# pragma version 0.4.3
# pragma evm-version cancun
# pragma optimize codesize
"""
@title fedmarket usage rollup
@notice Optimistic settlement of pay-per-query usage, at a cost per period that does not grow
        with the number of callers. A caller prepays a tab at one server of a listed model and
        signs, with each query, `Tab(jobId, server, queries, spent)`: its cumulative queries and
        tokens spent at that server. Each period the server posts one root: a Merkle sum tree of
        every caller's latest `(caller, queries, spent)`, sorted by caller, whose total spent less
        the last final root's is the period's revenue. The leaves and signatures are published
        by content id. After `CHALLENGE_WINDOW` with no open challenge the root is final and
        the revenue goes to the ModelMarket's split (fee, owner, server, contributors).
        Until then anyone can show it wrong, and the server loses its bond:
        - `challenge` a leaf, or `challenge_caller` a caller's place: the server must show the
          leaf with its caller's signature (or the caller's absence) within `ANSWER_WINDOW`, so
          a caller can check its own usage even when the leaves are withheld;
        - `challenge_leaves`: the server must reveal every leaf on chain, in order, each within
          its tab and signed (for leaves withheld);
        - `prove_unsorted`: two neighbouring leaves out of order (a caller counted twice);
        - `prove_overdraft`: a leaf spending more than the caller's tab;
        - `prove_rollback`: a caller's queries or spending lower than in the final root.
        A caller that cannot open its place in the roots (their leaves withheld, the root final
        before anyone challenged) `declare_spent`s the most it signed there instead; within
        `REFUND_DELAY` the server (or anyone with the leaves) raises a declaration below a Tab
        the caller signed.
        A root's total is its leaves' sum by construction (every node commits its children's
        sums), and a server is paid only from its own callers' tabs.
@license AGPL-3.0-only
"""

from ethereum.ercs import IERC20
from modules import constants as C
from modules import statements


# @dev ModelMarket.Offer, field for field.
struct Offer:
    query_price: uint256
    access_price: uint256
    access_period: uint256
    owner_bps: uint256
    server_bps: uint256
    server_stake: uint256


interface IModelMarket:
    def model_root(job_id: uint256) -> bytes32: view
    def offer(job_id: uint256) -> Offer: view
    def pay(job_id: uint256, server: address, amount: uint256, owner_bps: uint256, server_bps: uint256): nonpayable
    def TOKEN() -> address: view
    def TREASURY() -> address: view


# @dev A caller's cumulative usage at one server.
struct Leaf:
    caller: address
    queries: uint256
    spent: uint256


# @dev A node of the sum tree: its hash and the sums below it.
struct Node:
    h: bytes32
    queries: uint256
    spent: uint256


# @dev A leaf, its index and its siblings from the bottom (none where a level's odd last node is carried up).
struct Position:
    index: uint256
    leaf: Leaf
    siblings: DynArray[Node, MAX_DEPTH]


# @dev Where a caller stands in a root of `n` leaves: its leaf at `a`; or, absent, the leaf just
# below it at `a` and the one just above at `b` (either end: `a` alone).
struct Opening:
    n: uint256
    a: Position
    b: Position


event TabFunded:
    job_id: indexed(uint256)
    server: indexed(address)
    caller: indexed(address)
    amount: uint256


event TabRefundRequested:
    job_id: indexed(uint256)
    server: indexed(address)
    caller: indexed(address)
    release_time: uint256


event TabRefunded:
    job_id: indexed(uint256)
    server: indexed(address)
    caller: indexed(address)
    amount: uint256


event SpentDeclared:
    job_id: indexed(uint256)
    server: indexed(address)
    caller: indexed(address)
    spent: uint256
    release_time: uint256


event Bonded:
    job_id: indexed(uint256)
    server: indexed(address)
    amount: uint256


event UnbondRequested:
    job_id: indexed(uint256)
    server: indexed(address)
    release_time: uint256


event Unbonded:
    job_id: indexed(uint256)
    server: indexed(address)
    amount: uint256


event UsagePosted:
    job_id: indexed(uint256)
    server: indexed(address)
    epoch: indexed(uint256)
    root: bytes32
    queries: uint256
    spent: uint256
    n: uint256
    data_cid: String[128]


event UsageFinalized:
    job_id: indexed(uint256)
    server: indexed(address)
    epoch: indexed(uint256)
    queries: uint256
    amount: uint256


# @dev slot: a challenged leaf's index, or 2**160 + a challenged caller.
event Challenged:
    job_id: indexed(uint256)
    server: indexed(address)
    epoch: indexed(uint256)
    slot: uint256
    challenger: address


event ChallengeAnswered:
    job_id: indexed(uint256)
    server: indexed(address)
    epoch: indexed(uint256)
    slot: uint256


event LeavesRevealed:
    job_id: indexed(uint256)
    server: indexed(address)
    epoch: indexed(uint256)
    chunk: uint256
    leaves: DynArray[Leaf, CHUNK]


event CallerOpened:
    job_id: indexed(uint256)
    server: indexed(address)
    epoch: indexed(uint256)
    caller: address
    queries: uint256
    spent: uint256


event UsageRejected:
    job_id: indexed(uint256)
    server: indexed(address)
    epoch: indexed(uint256)
    reason: String[32]
    challenger: address
    slashed: uint256


event Withdrawn:
    account: indexed(address)
    amount: uint256


TAB_TYPEHASH: constant(bytes32) = keccak256("Tab(uint256 jobId,address server,uint256 queries,uint256 spent)")
# @dev Deepest sum tree (2**24 callers per server).
MAX_DEPTH: constant(uint256) = 24
MASK32: constant(uint256) = 2**32 - 1
MASK64: constant(uint256) = 2**64 - 1
MASK160: constant(uint256) = 2**160 - 1
# @dev Leaves per revealed chunk, the challenge slot of a whole root's leaves, and its bond in challenge bonds.
CHUNK: public(constant(uint256)) = 256
CHUNK_LEVELS: constant(uint256) = 8
REVEAL_SLOT: public(constant(uint256)) = 2**161
REVEAL_BONDS: constant(uint256) = 100
# @dev `_reveal` of a root whose leaves were all revealed: this bit and the root's epoch.
REVEALED: constant(uint256) = 2**255
SECP_N: constant(uint256) = 115792089237316195423570985008687907852837564279074904382605163141518161494337
SECP_HALF_N: constant(uint256) = 57896044618658097711785492504343953926418782139537452191302581570759080747168
# @dev Most leaves per root: as many as a server can reveal on chain within ANSWER_WINDOW (256
# chunks of about 2.8M gas each).
MAX_LEAVES: public(constant(uint256)) = 2**16
# @dev Seconds a posted root can be challenged, and a server has to answer a challenge.
CHALLENGE_WINDOW: public(constant(uint256)) = 3_600
ANSWER_WINDOW: public(constant(uint256)) = 4 * 3_600
# @dev Seconds between a tab refund request and the refund. A server posts its callers' usage in
# between: it must post at least every REFUND_DELAY - CHALLENGE_WINDOW - ANSWER_WINDOW seconds.
REFUND_DELAY: public(constant(uint256)) = 86_400
# @dev Seconds between an unbond request and the withdrawal.
UNBOND_DELAY: public(constant(uint256)) = 7 * 86_400

# @dev The model market whose listed models are paid for here, and its token and treasury.
MODEL_MARKET: public(immutable(IModelMarket))
TOKEN: public(immutable(IERC20))
TREASURY: public(immutable(address))
# @dev What a challenger puts up per challenge: the server's if it answers, returned if not.
CHALLENGE_BOND: public(immutable(uint256))
# @dev What a challenger of a whole root's leaves puts up per chunk (the server's gas to reveal it).
REVEAL_BOND: public(immutable(uint256))

# @dev Each caller's tab per job and server: tokens deposited less tokens refunded.
tab: public(HashMap[uint256, HashMap[address, HashMap[address, uint256]]])
# @dev A caller's tab refund request per job and server (0: none): when it may be taken, and above
# bit 64 the spending declared for it plus one (`declare_spent`; 0: none, the roots are opened).
refund_request: public(HashMap[uint256, HashMap[address, HashMap[address, uint256]]])
# @dev Tokens held for each server's tabs (deposits less refunds and revenue paid).
pool: public(HashMap[uint256, HashMap[address, uint256]])
# @dev Each server's bond per job, and when its requested unbond may be withdrawn.
bond: public(HashMap[uint256, HashMap[address, uint256]])
unbond_time: public(HashMap[uint256, HashMap[address, uint256]])
# @dev Each server's final and pending roots per job, each with its totals packed:
# spent << 128 | queries << 64 | n << 32 | posted time.
final_root: public(HashMap[uint256, HashMap[address, bytes32]])
_final: HashMap[uint256, HashMap[address, uint256]]
pending_root: public(HashMap[uint256, HashMap[address, bytes32]])
_pending: HashMap[uint256, HashMap[address, uint256]]
# @dev Roots posted per job and server (the pending root's epoch), and its open challenges.
epoch: public(HashMap[uint256, HashMap[address, uint256]])
open_challenges: public(HashMap[uint256, HashMap[address, uint256]])
# @dev Challenges per job, server and leaf index: challenger << 96 | epoch << 32 | time.
_challenge: HashMap[uint256, HashMap[address, HashMap[uint256, uint256]]]
# @dev A whole-leaves challenge under way per job and server: next chunk << 160 | last caller
# revealed; and the bond it put up (REVEAL_BOND per chunk).
_reveal: HashMap[uint256, HashMap[address, uint256]]
_reveal_bond: HashMap[uint256, HashMap[address, uint256]]
# @dev Queries paid through final roots per job (the model's record, with ModelMarket.queries_settled).
queries_settled: public(HashMap[uint256, uint256])
# @dev Callers who funded a tab at each server (counted when a tab goes from nothing to something):
# a root has no more leaves.
tabs_opened: public(HashMap[uint256, HashMap[address, uint256]])
# @dev The owner's and the server's shares when the pending root was posted (owner << 16 | server):
# the period is split by the terms it was served under.
_shares: HashMap[uint256, HashMap[address, uint256]]
# @dev Each server's share per job: the offer's `server_bps` when it last bonded (as ModelMarket
# keeps it per staked server), so the model owner cannot cut it.
server_share: public(HashMap[uint256, HashMap[address, uint256]])
# @dev Pull balances: challenge bonds won, slashed bonds, the treasury's share.
owed: public(HashMap[address, uint256])


@deploy
def __init__(model_market: address, challenge_bond: uint256):
    """
    @notice Deploys the usage rollup of one model market.
    @param model_market The ModelMarket that lists the models and splits their revenue.
    @param challenge_bond Tokens a challenger puts up per challenged leaf.
    """
    assert model_market != empty(address), "rollup: zero address"
    assert challenge_bond > 0 and challenge_bond <= C.MAX_AMOUNT, "rollup: bad challenge bond"
    MODEL_MARKET = IModelMarket(model_market)
    TOKEN = IERC20(staticcall IModelMarket(model_market).TOKEN())
    TREASURY = staticcall IModelMarket(model_market).TREASURY()
    CHALLENGE_BOND = challenge_bond
    REVEAL_BOND = challenge_bond * REVEAL_BONDS


# ---------------------------------------------------------------- tabs


@external
@nonreentrant
def fund_tab(job_id: uint256, server: address, amount: uint256):
    """
    @notice Adds `amount` tokens to the sender's tab at `server` for a listed model; cancels a
            pending refund request.
    @param job_id The listed job.
    @param server The server the tab pays.
    @param amount Tokens.
    """
    assert staticcall MODEL_MARKET.model_root(job_id) != empty(bytes32), "rollup: model not listed"
    assert server != empty(address) and server != msg.sender, "rollup: bad server"
    assert amount > 0, "rollup: no amount"
    old: uint256 = self.tab[job_id][server][msg.sender]
    total: uint256 = old + amount
    assert total <= C.MAX_AMOUNT, "rollup: tab too large"
    if old == 0:
        self.tabs_opened[job_id][server] += 1
    self.tab[job_id][server][msg.sender] = total
    self.pool[job_id][server] += amount
    self.refund_request[job_id][server][msg.sender] = 0
    self._pull(msg.sender, amount)
    log TabFunded(job_id=job_id, server=server, caller=msg.sender, amount=amount)


@external
@nonreentrant
def request_refund(job_id: uint256, server: address):
    """
    @notice Asks for the unspent part of the sender's tab back; the server answers no more
            queries on it and posts its usage before the refund is due.
    @param job_id The job.
    @param server The tab's server.
    """
    assert self.tab[job_id][server][msg.sender] > 0, "rollup: no tab"
    release: uint256 = block.timestamp + REFUND_DELAY
    self.refund_request[job_id][server][msg.sender] = release
    log TabRefundRequested(job_id=job_id, server=server, caller=msg.sender, release_time=release)


@external
@nonreentrant
def declare_spent(job_id: uint256, server: address, caller: address, queries: uint256, spent: uint256,
                  signature: Bytes[65]):
    """
    @notice A caller's refund request (the sender's own: `caller` is the sender) declaring what it
            spent at `server`, for a caller that cannot open its place in the server's roots (their
            leaves withheld): the refund, due `REFUND_DELAY` from now, keeps back `spent` in place
            of what the roots say. Or anyone raising such a declaration with a Tab the caller
            signed at `server` spending more: the server holds them all, and so does anyone who
            reads the published leaves. The refund stays due when it was. A plain request
            (`request_refund`) cannot be raised into a declaration.
    @param job_id The job.
    @param server The tab's server.
    @param caller The caller declaring (the sender), or whose declaration is raised.
    @param queries The signed Tab's queries (a raise; ignored otherwise).
    @param spent The most the caller signed at the server (above the declaration, for a raise).
    @param signature The caller's Tab signature (a raise; ignored otherwise).
    @custom:security Declaring less than it signed only gets the declaration raised; a server that
                     lets one stand pays what it takes from its callers' pool out of its bond
                     (`refund`).
    """
    word: uint256 = self.refund_request[job_id][server][caller]
    release: uint256 = block.timestamp + REFUND_DELAY
    if msg.sender != caller:
        # a raise only lifts a declaration: turning a plain request (due already, maybe) into one
        # would give nobody the time to raise it
        assert word >> 64 != 0 and spent >= word >> 64, "rollup: not a raise"
        self._check_tab(job_id, server, Leaf(caller=caller, queries=queries, spent=spent), signature)
        release = word & MASK64
    self.refund_request[job_id][server][caller] = (spent + 1) * 2**64 | release  # checked: no wrap past 2**192
    log SpentDeclared(job_id=job_id, server=server, caller=caller, spent=spent, release_time=release)


@external
@nonreentrant
def refund(job_id: uint256, server: address, final: Opening, pending: Opening) -> uint256:
    """
    @notice Pays back the tab less the most the final and the pending root say the sender spent,
            or less the spending declared for the request (`declare_spent`; openings ignored).
    @param job_id The job.
    @param server The tab's server.
    @param final Where the sender stands in the server's final root (its leaf, or its absence).
    @param pending The same in the pending root (ignored if none is pending).
    @return The amount refunded.
    @custom:security Spending the pending root claims is kept back, so a refund never takes what
                     a root about to be final pays; if that root is rejected, a later refund
                     returns the difference.
    """
    word: uint256 = self.refund_request[job_id][server][msg.sender]
    assert word != 0, "rollup: no refund requested"
    assert block.timestamp >= word & MASK64, "rollup: refund not due yet"
    spent: uint256 = word >> 64
    if spent != 0:
        spent -= 1
    else:
        spent = self._lookup(self.final_root[job_id][server], final, msg.sender)[1]
        root: bytes32 = self.pending_root[job_id][server]
        if root != empty(bytes32):
            spent = max(spent, self._lookup(root, pending, msg.sender)[1])
    deposit: uint256 = self.tab[job_id][server][msg.sender]
    amount: uint256 = 0
    if deposit > spent:
        amount = deposit - spent
        pool: uint256 = self.pool[job_id][server]
        if amount > pool:
            # only a declaration left standing below what the roots were paid leaves the pool short
            # of this: the server's bond answers for the rest as far as it goes, and what it does
            # not cover is this caller's loss, never a claim on later deposits
            cover: uint256 = min(amount - pool, self.bond[job_id][server])
            self.bond[job_id][server] -= cover
            amount = pool + cover
            pool = amount
        self.tab[job_id][server][msg.sender] = spent
        self.pool[job_id][server] = pool - amount
    self.refund_request[job_id][server][msg.sender] = 0
    self._push(msg.sender, amount)
    log TabRefunded(job_id=job_id, server=server, caller=msg.sender, amount=amount)
    return amount


# ---------------------------------------------------------------- server bond


@external
@nonreentrant
def post_bond(job_id: uint256, amount: uint256):
    """
    @notice Adds to the sender's bond as a server of a listed model, at the offer's server share,
            which the roots it posts from now on are split at; cancels a pending unbond.
    @param job_id The listed job.
    @param amount Tokens.
    """
    assert staticcall MODEL_MARKET.model_root(job_id) != empty(bytes32), "rollup: model not listed"
    assert amount > 0, "rollup: no amount"
    total: uint256 = self.bond[job_id][msg.sender] + amount
    assert total <= C.MAX_AMOUNT, "rollup: bond too large"
    self.bond[job_id][msg.sender] = total
    self.unbond_time[job_id][msg.sender] = 0
    self.server_share[job_id][msg.sender] = (staticcall MODEL_MARKET.offer(job_id)).server_bps
    self._pull(msg.sender, amount)
    log Bonded(job_id=job_id, server=msg.sender, amount=amount)


@external
@nonreentrant
def request_unbond(job_id: uint256):
    """
    @notice Stops posting usage: the bond leaves after `UNBOND_DELAY` and once no root is pending.
    @param job_id The job.
    """
    assert self.bond[job_id][msg.sender] > 0, "rollup: no bond"
    release: uint256 = block.timestamp + UNBOND_DELAY
    self.unbond_time[job_id][msg.sender] = release
    log UnbondRequested(job_id=job_id, server=msg.sender, release_time=release)


@external
@nonreentrant
def unbond(job_id: uint256) -> uint256:
    """
    @notice Withdraws the bond once the unbond delay has passed and no root is pending.
    @param job_id The job.
    @return The amount withdrawn.
    """
    release: uint256 = self.unbond_time[job_id][msg.sender]
    assert release != 0, "rollup: no unbond requested"
    assert block.timestamp >= release, "rollup: still unbonding"
    assert self.pending_root[job_id][msg.sender] == empty(bytes32), "rollup: a root is pending"
    amount: uint256 = self.bond[job_id][msg.sender]
    self.bond[job_id][msg.sender] = 0
    self.unbond_time[job_id][msg.sender] = 0
    self._push(msg.sender, amount)
    log Unbonded(job_id=job_id, server=msg.sender, amount=amount)
    return amount


# ---------------------------------------------------------------- posting and finalizing


@external
@nonreentrant
def post_usage(job_id: uint256, top: Node, n: uint256, data_cid: String[128]):
    """
    @notice Posts the sender's usage root: the top node of the sum tree of its callers' latest
            usage (`n` leaves, sorted by caller), with the leaves and signatures at `data_cid`.
    @param job_id The listed job.
    @param top The tree's top node (its hash and total queries and spent).
    @param n Number of leaves.
    @param data_cid Content id of the leaves and their signatures (for anyone checking).
    """
    assert self._bonded(job_id, msg.sender), "rollup: not bonded"
    assert self.pending_root[job_id][msg.sender] == empty(bytes32), "rollup: a root is pending"
    assert n >= 1 and n <= min(MAX_LEAVES, self.tabs_opened[job_id][msg.sender]), "rollup: bad leaf count"
    last: uint256 = self._final[job_id][msg.sender]
    assert top.spent < C.MAX_AMOUNT and top.queries <= MASK64, "rollup: totals too large"
    assert top.queries >= (last >> 64) & MASK64, "rollup: fewer queries than final"
    assert top.spent > last >> 128, "rollup: nothing new spent"
    assert top.spent - (last >> 128) <= self.pool[job_id][msg.sender], "rollup: more than the tabs hold"
    # a forged root risks the whole bond for at most the bond
    assert top.spent - (last >> 128) <= self.bond[job_id][msg.sender], "rollup: more than bond covers"
    # ModelMarket.pay keeps the owner's share within what the job's terms leave beside the server's
    self._shares[job_id][msg.sender] = ((staticcall MODEL_MARKET.offer(job_id)).owner_bps << 16) | self.server_share[job_id][msg.sender]
    root: bytes32 = self._commit(top, n)
    self.pending_root[job_id][msg.sender] = root
    self._pending[job_id][msg.sender] = (top.spent << 128) | (top.queries << 64) | (n << 32) | block.timestamp
    e: uint256 = self.epoch[job_id][msg.sender] + 1
    self.epoch[job_id][msg.sender] = e
    log UsagePosted(job_id=job_id, server=msg.sender, epoch=e, root=root, queries=top.queries, spent=top.spent, n=n,
                    data_cid=data_cid)


@external
@nonreentrant
def finalize(job_id: uint256, server: address) -> uint256:
    """
    @notice Makes a server's pending root final once its challenge window passed with no open
            challenge, and pays the period's revenue into the model market's split.
    @param job_id The job.
    @param server The server.
    @return The revenue paid.
    """
    root: bytes32 = self.pending_root[job_id][server]
    assert root != empty(bytes32), "rollup: no root pending"
    word: uint256 = self._pending[job_id][server]
    assert block.timestamp >= (word & MASK32) + CHALLENGE_WINDOW, "rollup: challenge window open"
    assert self.open_challenges[job_id][server] == 0, "rollup: challenges open"
    last: uint256 = self._final[job_id][server]
    amount: uint256 = (word >> 128) - (last >> 128)
    queries: uint256 = ((word >> 64) & MASK64) - ((last >> 64) & MASK64)
    # only a refund by a declaration nobody raised can have left the pool short of the period's
    # revenue: the server, which could have raised it, is paid what is there, and the root goes final
    amount = min(amount, self.pool[job_id][server])
    self.pool[job_id][server] -= amount
    self.final_root[job_id][server] = root
    self._final[job_id][server] = word
    self.pending_root[job_id][server] = empty(bytes32)
    self._pending[job_id][server] = 0
    self.queries_settled[job_id] += queries
    assert extcall TOKEN.approve(MODEL_MARKET.address, amount, default_return_value=True), "rollup: approve failed"
    shares: uint256 = self._shares[job_id][server]
    extcall MODEL_MARKET.pay(job_id, server, amount, shares >> 16, shares & 65535)
    log UsageFinalized(job_id=job_id, server=server, epoch=self.epoch[job_id][server], queries=queries, amount=amount)
    return amount


@view
@external
def reveal_next(job_id: uint256, server: address) -> uint256:
    """
    @notice The next chunk a server revealing its pending root's leaves must send.
    @param job_id The job.
    @param server The server.
    @return The chunk.
    """
    return self._reveal[job_id][server] >> 160


@view
@external
def totals(job_id: uint256, server: address, pending: bool) -> (uint256, uint256, uint256, uint256):
    """
    @notice A server's final (or pending) root's totals.
    @param job_id The job.
    @param server The server.
    @param pending The pending root rather than the final one.
    @return queries, spent, n (leaves) and the time it was posted.
    """
    word: uint256 = self._final[job_id][server]
    if pending:
        word = self._pending[job_id][server]
    return (word >> 64) & MASK64, word >> 128, (word >> 32) & MASK32, word & MASK32


# ---------------------------------------------------------------- challenges and fraud proofs


@external
@nonreentrant
def challenge(job_id: uint256, server: address, index: uint256):
    """
    @notice Challenges leaf `index` of a server's pending root, putting up `CHALLENGE_BOND`: the
            server must show that leaf and its caller's signature within `ANSWER_WINDOW`.
    @param job_id The job.
    @param server The server.
    @param index The leaf.
    """
    word: uint256 = self._pending_word(job_id, server)
    assert index < (word >> 32) & MASK32, "rollup: no such leaf"
    self._challenge_slot(job_id, server, index, CHALLENGE_BOND)


@external
@nonreentrant
def answer(job_id: uint256, position: Position, signature: Bytes[65]):
    """
    @notice Answers a challenge of one of the sender's leaves: the leaf in its pending root and the
            caller's Tab signature of exactly that usage. The challenger's bond goes to the sender.
    @param job_id The job.
    @param position The challenged leaf and its siblings.
    @param signature The caller's Tab(jobId, server, queries, spent) signature (any form its key makes).
    """
    word: uint256 = self._open(job_id, msg.sender, position.index)
    assert self._at(self.pending_root[job_id][msg.sender], (word >> 32) & MASK32, position), "rollup: leaf not in the root"
    self._check_tab(job_id, msg.sender, position.leaf, signature)
    self._answered(job_id, position.index)


@external
@nonreentrant
def challenge_caller(job_id: uint256, server: address, caller: address):
    """
    @notice Challenges a server to show where `caller` stands in its pending root (whether it
            published its leaves or not), putting up `CHALLENGE_BOND`: it must answer with the
            caller's signed leaf, or the neighbours that show it absent, within `ANSWER_WINDOW`.
            The challenge's slot (for `timeout` and `reclaim_bond`) is `2**160 + caller`.
    @param job_id The job.
    @param server The server.
    @param caller The caller.
    """
    self._challenge_slot(job_id, server, (1 << 160) | convert(caller, uint256), CHALLENGE_BOND)


@external
@nonreentrant
def answer_caller(job_id: uint256, caller: address, opening: Opening, signature: Bytes[65]):
    """
    @notice Answers a challenge of a caller's place in the sender's pending root: its leaf with its
            Tab signature, or its absence (no signature needed). The challenger's bond goes to the sender.
    @param job_id The job.
    @param caller The challenged caller.
    @param opening Where it stands in the pending root.
    @param signature Its Tab signature of its leaf (ignored for an absence).
    """
    slot: uint256 = (1 << 160) | convert(caller, uint256)
    self._open(job_id, msg.sender, slot)
    usage: uint256[2] = self._lookup(self.pending_root[job_id][msg.sender], opening, caller)
    if opening.a.leaf.caller == caller:
        self._check_tab(job_id, msg.sender, opening.a.leaf, signature)
    self._answered(job_id, slot)
    log CallerOpened(job_id=job_id, server=msg.sender, epoch=self.epoch[job_id][msg.sender], caller=caller,
                     queries=usage[0], spent=usage[1])


@external
@nonreentrant
def challenge_leaves(job_id: uint256, server: address):
    """
    @notice Challenges a server to reveal every leaf of its pending root, with its caller's
            signature, in chunks of `CHUNK` (`reveal_leaves`), within `ANSWER_WINDOW`, putting up
            `REVEAL_BOND` per chunk. For leaves withheld: the chain then checks their order, tabs
            and signatures itself, and the root gets a fresh challenge window once they are all
            out. Its slot is `REVEAL_SLOT`.
    @param job_id The job.
    @param server The server.
    """
    word: uint256 = self._pending_word(job_id, server)
    # once all out, a root's leaves are in the logs for good: forced open once per root (again and
    # again, each reveal's fresh window kept the root pending past a caller's refund)
    assert self._reveal[job_id][server] != REVEALED | self.epoch[job_id][server], "rollup: leaves revealed"
    bond: uint256 = REVEAL_BOND * ((((word >> 32) & MASK32) + CHUNK - 1) // CHUNK)
    self._challenge_slot(job_id, server, REVEAL_SLOT, bond)
    self._reveal_bond[job_id][server] = bond
    self._reveal[job_id][server] = 0


@external
@nonreentrant
def reveal_leaves(job_id: uint256, chunk: uint256, leaves: DynArray[Leaf, CHUNK], signatures: DynArray[Bytes[65], CHUNK],
                  siblings: DynArray[Node, MAX_DEPTH]):
    """
    @notice Reveals chunk `chunk` (leaves `chunk * CHUNK` on) of the sender's challenged pending
            root, in order: each leaf above the last revealed (sorted, each caller once), within
            its caller's tab and signed by it, and the chunk's subtree in the root. The last chunk
            answers the challenge (its bond goes to the sender).
    @param job_id The job.
    @param chunk The chunk, the next one due.
    @param leaves Its leaves.
    @param signatures Their callers' Tab signatures.
    @param siblings The chunk subtree's siblings up to the root.
    """
    word: uint256 = self._open(job_id, msg.sender, REVEAL_SLOT)
    n: uint256 = (word >> 32) & MASK32
    state: uint256 = self._reveal[job_id][msg.sender]
    assert chunk == state >> 160, "rollup: not the next chunk"
    count: uint256 = min(CHUNK, n - chunk * CHUNK)
    assert len(leaves) == count and len(signatures) == count, "rollup: wrong chunk size"
    last: uint256 = state & MASK160
    nodes: DynArray[Node, CHUNK] = []
    for i: uint256 in range(count, bound=CHUNK):
        leaf: Leaf = leaves[i]
        assert convert(leaf.caller, uint256) > last, "rollup: leaves out of order"
        assert leaf.spent <= self.tab[job_id][msg.sender][leaf.caller], "rollup: leaf past its tab"
        self._check_tab(job_id, msg.sender, leaf, signatures[i])
        last = convert(leaf.caller, uint256)
        nodes.append(Node(h=keccak256(abi_encode(leaf.caller, leaf.queries, leaf.spent)), queries=leaf.queries,
                          spent=leaf.spent))
    for level: uint256 in range(CHUNK_LEVELS):
        if len(nodes) == 1:
            break
        up: DynArray[Node, CHUNK] = []
        for j: uint256 in range(CHUNK // 2):
            if 2 * j + 1 < len(nodes):
                up.append(self._parent(nodes[2 * j], nodes[2 * j + 1]))
            elif 2 * j < len(nodes):
                up.append(nodes[2 * j])
        nodes = up
    top: Node = self._fold(nodes[0], chunk, (n + CHUNK - 1) // CHUNK, siblings)
    assert self._commit(top, n) == self.pending_root[job_id][msg.sender], "rollup: chunk not in the root"
    log LeavesRevealed(job_id=job_id, server=msg.sender, epoch=self.epoch[job_id][msg.sender], chunk=chunk, leaves=leaves)
    if (chunk + 1) * CHUNK >= n:
        self._reveal[job_id][msg.sender] = REVEALED | self.epoch[job_id][msg.sender]
        self._answered(job_id, REVEAL_SLOT)
        # the leaves are out now: everyone gets a whole challenge window to prove what they show
        self._pending[job_id][msg.sender] = (word & ~MASK32) | block.timestamp
    else:
        self._reveal[job_id][msg.sender] = ((chunk + 1) << 160) | last


@external
@nonreentrant
def timeout(job_id: uint256, server: address, slot: uint256) -> uint256:
    """
    @notice Rejects a server's pending root whose challenge went unanswered for `ANSWER_WINDOW`,
            and slashes its bond; the challenger gets its bond back and half.
    @param job_id The job.
    @param server The server.
    @param slot The challenge: a leaf index, or 2**160 + a caller.
    @return The bond slashed.
    """
    self._open(job_id, server, slot)
    c: uint256 = self._challenge[job_id][server][slot]
    assert block.timestamp >= (c & MASK32) + ANSWER_WINDOW, "rollup: answer window open"
    challenger: address = convert(c >> 96, address)
    self._challenge[job_id][server][slot] = 0
    self.owed[challenger] += self._bond_of(job_id, server, slot)
    return self._reject(job_id, server, challenger, "unanswered challenge")


@external
@nonreentrant
def reclaim_bond(job_id: uint256, server: address, slot: uint256):
    """
    @notice Returns a challenge bond whose root was rejected before the challenge was answered.
    @param job_id The job.
    @param server The server.
    @param slot The challenge: a leaf index, or 2**160 + a caller.
    """
    c: uint256 = self._challenge[job_id][server][slot]
    assert c != 0, "rollup: no challenge"
    e: uint256 = (c >> 32) & MASK64
    assert e != self.epoch[job_id][server] or self.pending_root[job_id][server] == empty(bytes32), "rollup: challenge still open"
    self._challenge[job_id][server][slot] = 0
    self.owed[convert(c >> 96, address)] += self._bond_of(job_id, server, slot)


@external
@nonreentrant
def prove_unsorted(job_id: uint256, server: address, a: Position, b: Position) -> uint256:
    """
    @notice Rejects a pending root with two neighbouring leaves out of caller order (a caller
            counted twice, or a false absence), and slashes the server.
    @param job_id The job.
    @param server The server.
    @param a Leaf `i` of the pending root.
    @param b Leaf `i + 1`.
    @return The bond slashed, half to the sender.
    """
    word: uint256 = self._pending_word(job_id, server)
    root: bytes32 = self.pending_root[job_id][server]
    n: uint256 = (word >> 32) & MASK32
    assert b.index == a.index + 1, "rollup: leaves not neighbours"
    assert self._at(root, n, a) and self._at(root, n, b), "rollup: leaf not in the root"
    assert convert(a.leaf.caller, uint256) >= convert(b.leaf.caller, uint256), "rollup: leaves in order"
    return self._reject(job_id, server, msg.sender, "unsorted leaves")


@external
@nonreentrant
def prove_overdraft(job_id: uint256, server: address, a: Position) -> uint256:
    """
    @notice Rejects a pending root with a leaf spending more than its caller's tab, and slashes the server.
    @param job_id The job.
    @param server The server.
    @param a The leaf.
    @return The bond slashed, half to the sender.
    """
    word: uint256 = self._pending_word(job_id, server)
    assert self._at(self.pending_root[job_id][server], (word >> 32) & MASK32, a), "rollup: leaf not in the root"
    assert a.leaf.spent > self.tab[job_id][server][a.leaf.caller], "rollup: within the tab"
    return self._reject(job_id, server, msg.sender, "overdraft")


@external
@nonreentrant
def prove_rollback(job_id: uint256, server: address, caller: address, final: Opening, pending: Opening) -> uint256:
    """
    @notice Rejects a pending root in which a caller has fewer queries or spent less than in the
            final root (or is missing), and slashes the server.
    @param job_id The job.
    @param server The server.
    @param caller The caller.
    @param final Where the caller stands in the final root.
    @param pending Where it stands in the pending root.
    @return The bond slashed, half to the sender.
    """
    self._pending_word(job_id, server)
    before: uint256[2] = self._lookup(self.final_root[job_id][server], final, caller)
    after: uint256[2] = self._lookup(self.pending_root[job_id][server], pending, caller)
    assert after[0] < before[0] or after[1] < before[1], "rollup: no rollback"
    return self._reject(job_id, server, msg.sender, "rollback")


# ---------------------------------------------------------------- payouts


@external
@nonreentrant
def withdraw() -> uint256:
    """
    @notice Pays the sender its pull balance (challenge bonds, slashed bonds, the treasury's share).
    @return The amount paid.
    """
    amount: uint256 = self.owed[msg.sender]
    assert amount > 0, "rollup: nothing owed"
    self.owed[msg.sender] = 0
    self._push(msg.sender, amount)
    log Withdrawn(account=msg.sender, amount=amount)
    return amount


# ---------------------------------------------------------------- internals


@view
@internal
def _bonded(job_id: uint256, server: address) -> bool:
    amount: uint256 = self.bond[job_id][server]
    return amount > 0 and self.unbond_time[job_id][server] == 0


@view
@internal
def _pending_word(job_id: uint256, server: address) -> uint256:
    assert self.pending_root[job_id][server] != empty(bytes32), "rollup: no root pending"
    return self._pending[job_id][server]


@internal
def _challenge_slot(job_id: uint256, server: address, slot: uint256, bond: uint256):
    """Opens a challenge in `slot` (a leaf index, or 2**160 + a caller) of the pending root."""
    word: uint256 = self._pending_word(job_id, server)
    assert block.timestamp < (word & MASK32) + CHALLENGE_WINDOW, "rollup: challenge window closed"
    e: uint256 = self.epoch[job_id][server]
    old: uint256 = self._challenge[job_id][server][slot]
    if old != 0:  # a challenge of a rejected root: its bond goes back
        assert (old >> 32) & MASK64 != e, "rollup: already challenged"
        self.owed[convert(old >> 96, address)] += self._bond_of(job_id, server, slot)
    self._challenge[job_id][server][slot] = (convert(msg.sender, uint256) << 96) | (e << 32) | block.timestamp
    self.open_challenges[job_id][server] += 1
    self._pull(msg.sender, bond)
    log Challenged(job_id=job_id, server=server, epoch=e, slot=slot, challenger=msg.sender)


@view
@internal
def _bond_of(job_id: uint256, server: address, slot: uint256) -> uint256:
    if slot == REVEAL_SLOT:
        return self._reveal_bond[job_id][server]
    return CHALLENGE_BOND


@view
@internal
def _open(job_id: uint256, server: address, slot: uint256) -> uint256:
    """The pending root's packed word, after checking `slot` is challenged in it."""
    word: uint256 = self._pending_word(job_id, server)
    c: uint256 = self._challenge[job_id][server][slot]
    assert c != 0 and (c >> 32) & MASK64 == self.epoch[job_id][server], "rollup: not challenged"
    return word


@internal
def _answered(job_id: uint256, slot: uint256):
    """Closes the sender's challenge in `slot`; its bond goes to the sender."""
    self._challenge[job_id][msg.sender][slot] = 0
    self.open_challenges[job_id][msg.sender] -= 1
    self.owed[msg.sender] += self._bond_of(job_id, msg.sender, slot)
    log ChallengeAnswered(job_id=job_id, server=msg.sender, epoch=self.epoch[job_id][msg.sender], slot=slot)


@view
@internal
def _check_tab(job_id: uint256, server: address, leaf: Leaf, signature: Bytes[65]):
    """The leaf's caller signed Tab(jobId, server, queries, spent); a signature with v in {0, 1} or
    a high s (forms its key makes too, accepted off chain) is read in its canonical form."""
    assert leaf.caller != empty(address), "rollup: no caller"
    assert len(signature) == 65, "rollup: not signed by the caller"
    r: uint256 = convert(slice(signature, 0, 32), uint256)
    s: uint256 = convert(slice(signature, 32, 32), uint256)
    v: uint256 = convert(slice(signature, 64, 1), uint256)
    if v < 27:
        v += 27
    if s > SECP_HALF_N:
        s = SECP_N - s
        v = 55 - v
    digest: bytes32 = statements._digest(statements._separator(chain.id, self), keccak256(abi_encode(
        TAB_TYPEHASH, job_id, server, leaf.queries, leaf.spent)))
    sig: Bytes[65] = concat(convert(r, bytes32), convert(s, bytes32), convert(convert(v, uint8), bytes1))
    assert statements._signer(digest, sig) == leaf.caller, "rollup: not signed by the caller"


@internal
def _reject(job_id: uint256, server: address, challenger: address, reason: String[32]) -> uint256:
    """Drops the pending root and slashes the whole bond: half to `challenger`, half to the treasury."""
    amount: uint256 = self.bond[job_id][server]
    self.bond[job_id][server] = 0
    self.pending_root[job_id][server] = empty(bytes32)
    self._pending[job_id][server] = 0
    self.open_challenges[job_id][server] = 0
    self._reveal[job_id][server] = 0
    share: uint256 = amount * C.CHALLENGER_BPS // C.BPS
    self.owed[challenger] += share
    self.owed[TREASURY] += amount - share
    log UsageRejected(job_id=job_id, server=server, epoch=self.epoch[job_id][server], reason=reason,
                      challenger=challenger, slashed=amount)
    return amount


@pure
@internal
def _commit(top: Node, n: uint256) -> bytes32:
    """A root: the top node with the number of leaves."""
    return keccak256(abi_encode(top.h, top.queries, top.spent, n))


@pure
@internal
def _at(root: bytes32, n: uint256, p: Position) -> bool:
    """Whether `p.leaf` is leaf `p.index` of the `n`-leaf sum tree `root`. Each level pairs its
    nodes from the left and carries an odd last one up unchanged, so every node sums real leaves."""
    if p.index >= n:
        return False
    node: Node = Node(h=keccak256(abi_encode(p.leaf.caller, p.leaf.queries, p.leaf.spent)),
                      queries=p.leaf.queries, spent=p.leaf.spent)
    return self._commit(self._fold(node, p.index, n, p.siblings), n) == root


@pure
@internal
def _parent(l: Node, r: Node) -> Node:
    return Node(h=keccak256(abi_encode(l.h, l.queries, l.spent, r.h, r.queries, r.spent)),
                queries=l.queries + r.queries, spent=l.spent + r.spent)


@pure
@internal
def _fold(start: Node, index: uint256, width: uint256, siblings: DynArray[Node, MAX_DEPTH]) -> Node:
    """The top node reached from node `index` of a level `width` nodes wide through `siblings`
    (one per level where the node has a sibling; all of them used)."""
    node: Node = start
    i: uint256 = index
    w: uint256 = width
    used: uint256 = 0
    for level: uint256 in range(MAX_DEPTH + 1):
        if w == 1:
            break
        if i != w - 1 or w % 2 == 0:
            assert used < len(siblings), "rollup: proof too short"
            if i % 2 == 0:
                node = self._parent(node, siblings[used])
            else:
                node = self._parent(siblings[used], node)
            used += 1
        i //= 2
        w = (w + 1) // 2
    assert used == len(siblings), "rollup: proof too long"
    return node


@pure
@internal
def _lookup(root: bytes32, o: Opening, caller: address) -> uint256[2]:
    """The caller's (queries, spent) in `root`: its leaf, or zero where the opening shows it absent."""
    if root == empty(bytes32):
        return [0, 0]
    assert self._at(root, o.n, o.a), "rollup: opening not in the root"
    if o.a.leaf.caller == caller:
        return [o.a.leaf.queries, o.a.leaf.spent]
    who: uint256 = convert(caller, uint256)
    if convert(o.a.leaf.caller, uint256) > who:
        assert o.a.index == 0, "rollup: not the first leaf"
    elif o.a.index + 1 != o.n:
        assert o.b.index == o.a.index + 1 and self._at(root, o.n, o.b), "rollup: neighbour not in root"
        assert convert(o.b.leaf.caller, uint256) > who, "rollup: caller not between them"
    return [0, 0]


@internal
def _pull(owner: address, amount: uint256):
    if amount > 0:
        assert extcall TOKEN.transferFrom(owner, self, amount, default_return_value=True), "rollup: payment failed"


@internal
def _push(to: address, amount: uint256):
    if amount > 0:
        assert extcall TOKEN.transfer(to, amount, default_return_value=True), "rollup: transfer failed"
