"""Operating a job from the command line: `fedmarket status`, `fedmarket fund` (development
nodes), `fedmarket requester cancel|withdraw` and `fedmarket stake show|release|unbond|withdraw`.

Human output shows token units, local ISO times and state names; `--json` keeps base units and
Unix seconds.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from ..errors import ChainError, ConfigError, ContractRevert, FedMarketError
from .account import KEYSTORE_HELP, load_signer
from .app import app, attach
from .roles import requester_app

data_app = typer.Typer(no_args_is_help=True, help="Data files (.npz with X, y) for providers, validators and the requester.")
app.add_typer(data_app, name="data")
stake_app = typer.Typer(no_args_is_help=True, help="Stake outside jobs: show it, release it from finished jobs, unbond and withdraw it.")
app.add_typer(stake_app, name="stake")

RPC = typer.Option(..., "--rpc", help="JSON-RPC URL of the chain.")
CONTRACTS = typer.Option(..., "--contracts", help="Addresses file written by `fedmarket deploy`.")
ACCOUNT = typer.Option(None, "--account", help="Signer: an account of the keystore (password from $FEDMARKET_PASSWORD or a prompt).")
KEYSTORE = typer.Option(None, "--keystore", help=KEYSTORE_HELP)
DEV = typer.Option(None, "--dev-account", help="Signer: anvil's public dev account I (chain id 31337 only).")
JOB = typer.Option(..., "--job", min=1, help="The job id (from 1).")
ROLES = {"provider": 1, "aggregator": 2, "validator": 3}
#: `fedmarket status` exit code of a stuck job (1 is an error, 2 bad usage)
STUCK_EXIT = 3


def _connect(rpc: str, contracts: Path):
    from ..chain.rpc_backend import RpcChain

    chain = RpcChain(rpc)
    return attach(chain, contracts)


def _units(dep) -> tuple[int, str]:
    """(decimals, symbol) of the deployment's token."""
    try:
        return int(dep.token.call("decimals")), str(dep.token.call("symbol"))
    except FedMarketError:
        return 18, "tokens"


def _now(dep) -> int:
    """What the next transaction will roughly see: the latest block's time, or the wall clock if later."""
    return max(int(dep.chain.timestamp()), int(time.time()))


def _out(message: str) -> None:
    print(message, flush=True)


# ---- status ---------------------------------------------------------------------------------


@app.command()
def status(
    job_id: int = typer.Argument(..., help="The job."),
    rpc: str = RPC, contracts: Path = CONTRACTS,
    as_json: bool = typer.Option(False, "--json", help="One JSON object (base units, Unix seconds)."),
    wait: bool = typer.Option(False, "--wait", help="First wait until the job is over with every stake back (or stuck)."),
    timeout: float = typer.Option(600.0, "--timeout", help="With --wait: seconds before giving up (exit 1)."),
    grace: int = typer.Option(30, "--grace", help="Seconds past a deadline before a job counts as stuck."),
) -> None:
    """Where a job stands: phase, round, deadlines, stakes, who is late, each role's next action.
    Exits 3 when the job is stuck (a deadline passed --grace seconds ago and the action it calls
    for was not taken)."""
    from ..market import JobState
    from ..status import assess, read_facts

    dep = _connect(rpc, contracts)
    deadline = time.monotonic() + timeout
    while True:
        facts = read_facts(dep, job_id)
        if facts.state == JobState.NONE and not wait:
            raise FedMarketError(f"job {job_id} does not exist on market {dep.market.address}")
        a = assess(facts, _now(dep), grace)
        over = facts.state in (JobState.SETTLED, JobState.CANCELLED, JobState.FAILED)
        locked = a.stakes["aggregator"] + a.stakes["providers"] + a.stakes["validators"]
        if not wait or a.stuck and facts.state != JobState.NONE or over and not locked:
            break
        if time.monotonic() > deadline:
            raise FedMarketError(f"job {job_id} is still {facts.state.name.lower()} after {timeout:.0f} s")
        time.sleep(1.0)
    if as_json:
        doc = a.to_json()
        doc.update(escrow=int(facts.job["escrow"]), requester=facts.job["requester"], aggregator=facts.job["aggregator"],
                   providers=len(facts.providers), validators=len(facts.validators))
        _out(json.dumps(doc, indent=2))
    else:
        _print_status(dep, facts, a)
    if a.stuck:
        raise typer.Exit(STUCK_EXIT)


def _print_status(dep, facts, a) -> None:
    from ..display import iso, relative, state_name, tokens

    dec, sym = _units(dep)
    tok = lambda v: tokens(v, dec, sym)
    j = facts.job
    _out(f"job {a.job_id}: {state_name(a.state)}, round {a.round} of {a.rounds}")
    _out(f"  requester   {j['requester']}  escrow {tok(j['escrow'])}")
    _out(f"  aggregator  {j['aggregator']}  {'accepted' if j['accepted'] else 'has not accepted'}")
    _out(f"  members     {len(facts.providers)} provider(s) (min {j['min_providers']}, max {j['max_providers']}), "
         f"{len(facts.validators)} validator(s) (min {j['min_validators']}, max {j['max_validators']})")
    first = True
    for name, ts in a.deadlines.items():
        if ts:
            _out(f"  {'deadlines' if first else '':<11} {name:<9} {iso(ts)}  ({relative(ts, a.now)})")
            first = False
    s = a.stakes
    _out(f"  stakes      aggregator {tok(s['aggregator'])}, providers {tok(s['providers'])}, "
         f"validators {tok(s['validators'])} locked; {s['slashed_accounts']} account(s) slashed")
    if j["reward_total"]:
        _out(f"  rewards     {tok(j['reward_total'])} posted, {tok(j['claimed_total'])} claimed")
    for i, (who, what) in enumerate(a.late or [("nobody", "")]):
        _out(f"  {'late' if i == 0 else '':<11} {who}{': ' + what if what else ''}")
    for i, (role, action) in enumerate(a.next.items()):
        _out(f"  {'next' if i == 0 else '':<11} {role:<11} {action}")
    _out(f"  stuck       {'YES: ' + a.stuck if a.stuck else 'no'}")


# ---- data -----------------------------------------------------------------------------------


@data_app.command("split")
def data_split(
    out: Path = typer.Option(Path("data"), "--out", "-o", help="Directory for the .npz files."),
    dataset: str = typer.Option("digits", "--dataset", help="digits, iris, wine or breast_cancer (scikit-learn's bundled sets)."),
    providers: int = typer.Option(3, "--providers", "-n", help="One training file per provider."),
    validators: int = typer.Option(0, "--validators", help="One held-out file per validator."),
    partition: str = typer.Option("iid", "--partition", help="iid or dirichlet."),
    alpha: float = typer.Option(0.5, "--alpha", help="Dirichlet concentration (smaller = more skewed)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split."),
    data: Path = typer.Option(None, "--data", help="Split this file instead (.csv, .parquet, .npz, or a folder of images): the files keep its format."),
    label: str = typer.Option(None, "--label", help="With --data: the label column of a table."),
    test: float = typer.Option(0.2, "--test", help="With --data: share held out (stratified) for test and validator files."),
) -> None:
    """Split a bundled dataset (or your own file, --data) into provider-I, validator-I and test files."""
    import numpy as np

    from ..datafiles import split_files

    if seed < 0:
        raise ConfigError(f"--seed must not be negative (got {seed})")
    if data is not None:
        from ..fl.localdata import split_file

        files = split_file(data, label, out, providers=providers, validators=validators, test=test,
                           alpha=alpha if partition == "dirichlet" else None, seed=seed)
        for path in files.values():
            _out(f"{path}")
        return

    for path in split_files(out, dataset=dataset, providers=providers, validators=validators,
                            partition=partition, alpha=alpha, seed=seed).values():
        with np.load(path) as doc:
            _out(f"{path}  {len(doc['y'])} samples")


# ---- fund -----------------------------------------------------------------------------------


def _target(text: str) -> str:
    from eth_utils import is_address, to_checksum_address

    from ..keys import dev_account

    if text.startswith("dev:") and text[4:].isdigit():
        return dev_account(int(text[4:])).address
    if not is_address(text):
        raise ConfigError(f"not an address (nor dev:N): {text!r}")
    return to_checksum_address(text)


def _minter(dep, account, keystore, dev_account, recorded: str | None):
    """Who mints: the given signer, else the deployer recorded in the addresses file if it is a dev account."""
    from ..keys import dev_account as dev_key

    if account is not None or dev_account is not None:
        return load_signer(account, keystore, dev_account, dep.chain)
    for i in range(20):
        if recorded and dev_key(i).address.lower() == recorded.lower():
            return load_signer(None, None, i, dep.chain)
    raise ConfigError("cannot mint: the deployer is not a development account; sign with the token owner's "
                      "--account NAME or --dev-account I")


#: the largest amount a uint256 holds (token amounts and balances)
MAX_UINT = 2**256 - 1


def _amount(text: str, decimals: int, what: str) -> int:
    """`parse_tokens`, bounded: an amount no uint256 holds is refused in one line (and one of
    absurd exponent before it is expanded into an integer)."""
    from decimal import Decimal, InvalidOperation

    from ..display import parse_tokens

    try:
        value = Decimal(str(text).replace("_", "").replace(",", ""))
        huge = value.is_finite() and value > 0 and value.adjusted() + decimals > 78
    except InvalidOperation:
        huge = False  # parse_tokens names the problem
    amount = None if huge else parse_tokens(text, decimals, what)
    if amount is None or amount > MAX_UINT:
        raise ConfigError(f"{what} {text} is too large (at most {MAX_UINT} base units)")
    return amount


@app.command()
def fund(
    targets: list[str] = typer.Argument(..., help="Addresses to fund, or dev:N for anvil's dev account N."),
    rpc: str = RPC,
    contracts: Path = typer.Option(None, "--contracts", help="Addresses file (needed for --tokens)."),
    tokens_: str = typer.Option("0", "--tokens", help="Tokens to mint to each target (token units, e.g. 1000)."),
    ether: str = typer.Option("10", "--ether", help="Ether to add to each target's balance, for gas."),
    account: str = ACCOUNT, keystore: Path = KEYSTORE, dev_account: int = DEV,
) -> None:
    """Development nodes only: give ether (for gas) and the deployment's tokens to any addresses."""
    from ..chain.rpc_backend import RpcChain
    from ..display import tokens
    from ..keys import DEV_CHAIN_ID

    wei, addresses = _amount(ether, 18, "--ether"), [_target(t) for t in targets]
    chain = RpcChain(rpc)
    if chain.chain_id != DEV_CHAIN_ID:
        raise ConfigError(f"fund is for development nodes (chain id {DEV_CHAIN_ID}); {rpc} is chain {chain.chain_id}")
    dep = attach(chain, contracts) if contracts is not None else None
    dec, sym = _units(dep) if dep else (18, "tokens")
    amount = _amount(tokens_, dec, "--tokens")
    if amount and dep is None:
        raise ConfigError("--tokens needs --contracts (which token to mint)")
    minter = _minter(dep, account, keystore, dev_account, json.loads(contracts.read_text()).get("deployer")) if amount else None
    for address in addresses:
        if wei:
            if chain.native_balance(address) + wei > MAX_UINT:
                raise ConfigError(f"--ether {ether} is too large: {address}'s balance would exceed {MAX_UINT} wei")
            try:
                chain.fund(address, chain.native_balance(address) + wei)
            except ChainError as exc:
                raise ChainError(f"this node cannot set balances ({exc}); fund {address} with a transfer instead") from None
        if amount:
            dep.token.transact("mint", address, amount, sender=minter)
        _out(f"{address}  +{tokens(wei, 18, 'ETH')}  +{tokens(amount, dec, sym)}")


# ---- requester: cancel, withdraw ------------------------------------------------------------


@requester_app.command("cancel")
def requester_cancel(
    job: int = JOB, rpc: str = RPC, contracts: Path = CONTRACTS,
    account: str = ACCOUNT, keystore: Path = KEYSTORE, dev_account: int = DEV,
) -> None:
    """Cancel an open job and get the whole escrow back: at once while nobody joined, or by anyone
    after the join deadline if the job cannot start."""
    from ..display import iso, tokens
    from ..market import JobState

    dep = _connect(rpc, contracts)
    signer = load_signer(account, keystore, dev_account, dep.chain)
    j = dep.job(job)
    if j["state"] != JobState.OPEN:
        raise FedMarketError(f"job {job} is {j['state'].name.lower()}, not open: only open jobs can be cancelled"
                             + ("" if j["state"] == JobState.NONE else " (see `fedmarket requester withdraw`)"))
    joined = j["n_providers"] or j["n_validators"]
    if (signer.address != j["requester"] or joined) and _now(dep) < int(j["join_deadline"]):
        who = "others joined" if joined else f"{signer.address} is not its requester"
        raise FedMarketError(f"job {job} cannot be cancelled before its join deadline {iso(j['join_deadline'])}: {who}")
    receipt = dep.market.transact("cancel", job, sender=signer)
    dec, sym = _units(dep)
    _out(f"job {job} cancelled: {tokens(receipt.event('JobCancelled')['refund'], dec, sym)} refunded to "
         f"{j['requester']} (tx {receipt.tx_hash})")


@app.command()
def start(
    job: int = JOB, rpc: str = RPC, contracts: Path = CONTRACTS,
    account: str = ACCOUNT, keystore: Path = KEYSTORE, dev_account: int = DEV,
) -> None:
    """Start an open job's training: anyone may once its join deadline passed (its aggregator or
    requester before), if its aggregator accepted and its minimum providers and validators joined.
    An aggregator that never starts its job cannot keep the stakes and the escrow locked."""
    from ..display import iso
    from ..market import JobState
    from ..protocol import rules as R

    dep = _connect(rpc, contracts)
    signer = load_signer(account, keystore, dev_account, dep.chain)
    j = dep.job(job)
    if j["state"] != JobState.OPEN:
        raise FedMarketError(f"job {job} is {j['state'].name.lower()}, not open: only an open job can be started")
    if not R.startable(j):
        need = (f"{j['n_providers']}/{j['min_providers']} providers, {j['n_validators']}/{j['min_validators']} validators"
                + ("" if j["accepted"] else ", not accepted by its aggregator"))
        raise FedMarketError(f"job {job} cannot start ({need}); after its join deadline anyone may cancel it "
                             "(`fedmarket requester cancel`)")
    if _now(dep) < int(j["join_deadline"]) and signer.address not in (j["aggregator"], j["requester"]):
        raise FedMarketError(f"job {job}'s join window is open until {iso(j['join_deadline'])}: only its aggregator or "
                             "requester may start it before then")
    receipt = dep.market.transact("start", job, sender=signer)
    ev = receipt.event("TrainingStarted")
    _out(f"job {job} started with {ev['n_providers']} providers and {ev['n_validators']} validators: round 0 is due "
         f"by {iso(ev['round_deadline'])} (tx {receipt.tx_hash})")


@requester_app.command("withdraw")
def requester_withdraw(
    job: int = JOB, rpc: str = RPC, contracts: Path = CONTRACTS,
    account: str = ACCOUNT, keystore: Path = KEYSTORE, dev_account: int = DEV,
) -> None:
    """Get back what the contracts owe the requester now: fail a job whose aggregator (or validators)
    missed a deadline (full refund), settle a job past its challenge window (the escrow not
    assigned to rewards), or sweep rewards nobody claimed in the claim period."""
    dep = _connect(rpc, contracts)
    signer = load_signer(account, keystore, dev_account, dep.chain)
    _out(_withdraw(dep, signer, job))


def _withdraw(dep, signer, job: int) -> str:
    from ..display import iso, tokens
    from ..market import JobState
    from ..roles.common import fail_job

    j, now = dep.job(job), _now(dep)
    dec, sym = _units(dep)
    state, tok = j["state"], lambda v: tokens(v, dec, sym)
    if state == JobState.NONE:
        raise FedMarketError(f"job {job} does not exist on market {dep.market.address}")
    if state in (JobState.CANCELLED, JobState.FAILED):
        raise FedMarketError(f"job {job} is {state.name.lower()}: its escrow was refunded then; nothing is left to withdraw")
    if state == JobState.OPEN:
        raise FedMarketError(f"job {job} is open: cancel it (`fedmarket requester cancel`) to get the escrow back")
    if state == JobState.TRAINING:
        if now <= int(j["round_deadline"]):
            raise FedMarketError(f"job {job} is training on time (round {j['current_round']}, deadline "
                                 f"{iso(j['round_deadline'])}): the escrow is locked until the job ends")
        receipt = fail_job(dep, signer, job)
        failed = [e for e in receipt.events if e.name == "JobFailed"]
        refund = failed[0]["refund"] if failed else 0
        return f"job {job} failed ({failed[0]['reason'] if failed else 'deadline'}): {tok(refund)} refunded (tx {receipt.tx_hash})"
    if state == JobState.FINALIZING:
        if now < int(j["challenge_deadline"]):
            raise FedMarketError(f"job {job} is finalizing: it can be settled after {iso(j['challenge_deadline'])}")
        receipt = dep.market.transact("settle", job, sender=signer)
        ev = receipt.event("JobSettled")
        return f"job {job} settled: {tok(ev['refund'])} refunded to the requester, fee {tok(ev['fee'])} (tx {receipt.tx_hash})"
    left = int(j["reward_total"]) - int(j["claimed_total"])
    if left <= 0:
        raise FedMarketError(f"job {job} is settled and every reward was claimed (or swept): nothing to withdraw")
    if now < int(j["claim_deadline"]):
        raise FedMarketError(f"job {job}: {tok(left)} not claimed yet; unclaimed rewards return after {iso(j['claim_deadline'])}")
    receipt = dep.market.transact("sweep", job, sender=signer)
    return f"job {job}: {tok(receipt.event('UnclaimedSwept')['amount'])} of unclaimed rewards swept back (tx {receipt.tx_hash})"


# ---- stake ----------------------------------------------------------------------------------


def _roles(role: str | None) -> dict[str, int]:
    if role is None:
        return ROLES
    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r}; choose one of: {', '.join(ROLES)}")
    return {role: ROLES[role]}


def _locked_jobs(dep, address: str) -> list[tuple[int, str, int]]:
    """(job, role name, stake) of every job `address` still has stake locked in."""
    from ..display import role_name

    jobs = {int(e["job_id"]) for e in dep.market.events("ProviderJoined", provider=address)}
    jobs |= {int(e["job_id"]) for e in dep.market.events("ValidatorJoined", validator=address)}
    jobs |= {int(e["job_id"]) for e in dep.market.events("JobAccepted", aggregator=address)}
    out = []
    for job in sorted(jobs):
        word, stake = dep.market.call("membership", job, address)
        if not int(word) & 128 and int(stake):
            out.append((job, role_name(word), int(stake)))
    return out


@stake_app.command("show")
def stake_show(
    address: str = typer.Argument(None, help="Whose stake (default: the signer's)."),
    rpc: str = RPC, contracts: Path = CONTRACTS,
    account: str = ACCOUNT, keystore: Path = KEYSTORE, dev_account: int = DEV,
) -> None:
    """Wallet balance, free and unbonding stake per role, and stake locked in jobs."""
    from ..display import iso, state_name, tokens

    dep = _connect(rpc, contracts)
    who = _target(address) if address else load_signer(account, keystore, dev_account, dep.chain).address
    dec, sym = _units(dep)
    _out(f"{who}: wallet {tokens(dep.balance(who), dec, sym)}")
    for name, role in ROLES.items():
        free = int(dep.market.call("free_stake", who, role))
        ub = dep.market.call("unbonding", who, role)
        if free or ub["amount"]:
            _out(f"  {name:<10} free {tokens(free, dec, sym)}, unbonding {tokens(ub['amount'], dec, sym)}"
                 + (f" (withdrawable from {iso(ub['release_time'])})" if ub["amount"] else ""))
    for job, role, stake in _locked_jobs(dep, who):
        _out(f"  job {job:<6} {role}: {tokens(stake, dec, sym)} locked ({state_name(dep.job(job)['state'])})")


@stake_app.command("release")
def stake_release(
    job: int = JOB, rpc: str = RPC, contracts: Path = CONTRACTS,
    of: str = typer.Option(None, "--of", help="Whose stake to release (default: the signer's; anyone may release anyone's)."),
    account: str = ACCOUNT, keystore: Path = KEYSTORE, dev_account: int = DEV,
) -> None:
    """Unlock stake from a finished job (settled, cancelled or failed): a provider's goes to its
    wallet, an aggregator's or validator's to its free stake (then `stake unbond`)."""
    from ..display import tokens

    from ..market import JobState

    dep = _connect(rpc, contracts)
    signer = load_signer(account, keystore, dev_account, dep.chain)
    who = _target(of) if of else signer.address
    if dep.job(job)["state"] == JobState.NONE:
        raise FedMarketError(f"job {job} does not exist on market {dep.market.address}")
    receipt = dep.market.transact("release_stake", job, who, sender=signer)
    released = [e for e in receipt.events if e.name == "StakeReleased"]
    dec, sym = _units(dep)
    amount = sum(int(e["amount"]) for e in released)
    _out(f"job {job}: {tokens(amount, dec, sym)} of {who}'s stake released (tx {receipt.tx_hash})")


@stake_app.command("unbond")
def stake_unbond(
    rpc: str = RPC, contracts: Path = CONTRACTS,
    role: str = typer.Option(None, "--role", help="provider, aggregator or validator (default: every role with free stake)."),
    amount: str = typer.Option(None, "--amount", help="Tokens to unbond (default: all the free stake of the role)."),
    account: str = ACCOUNT, keystore: Path = KEYSTORE, dev_account: int = DEV,
) -> None:
    """Start the unbonding delay of free stake; `stake withdraw` moves it to the wallet afterwards."""
    from ..display import iso, parse_tokens, tokens

    dep = _connect(rpc, contracts)
    signer = load_signer(account, keystore, dev_account, dep.chain)
    dec, sym = _units(dep)
    done = 0
    for name, r in _roles(role).items():
        free = int(dep.market.call("free_stake", signer.address, r))
        want = parse_tokens(amount, dec, "--amount") if amount is not None else free
        if want == 0 or (free == 0 and role is None):
            continue
        if want > free:
            raise FedMarketError(f"{signer.address} has {tokens(free, dec, sym)} of free {name} stake, less than {tokens(want, dec, sym)}")
        ev = dep.market.transact("request_unbond", r, want, sender=signer).event("UnbondRequested")
        _out(f"{name}: {tokens(want, dec, sym)} unbonding, withdrawable from {iso(ev['release_time'])}")
        done += 1
    if not done:
        raise FedMarketError(f"{signer.address} has no free stake to unbond (release stake from finished jobs first: `stake release`)")


@stake_app.command("withdraw")
def stake_withdraw(
    rpc: str = RPC, contracts: Path = CONTRACTS,
    role: str = typer.Option(None, "--role", help="provider, aggregator or validator (default: every role whose delay passed)."),
    account: str = ACCOUNT, keystore: Path = KEYSTORE, dev_account: int = DEV,
) -> None:
    """Move unbonded stake whose delay has passed to the wallet."""
    from ..display import iso, tokens

    dep = _connect(rpc, contracts)
    signer = load_signer(account, keystore, dev_account, dep.chain)
    dec, sym = _units(dep)
    done, waiting = 0, []
    for name, r in _roles(role).items():
        ub = dep.market.call("unbonding", signer.address, r)
        if not ub["amount"]:
            continue
        try:
            ev = dep.market.transact("withdraw", r, sender=signer).event("StakeWithdrawn")
        except ContractRevert as exc:
            if "still unbonding" not in str(exc):
                raise
            waiting.append(f"{name} {tokens(ub['amount'], dec, sym)} from {iso(ub['release_time'])}")
            continue
        _out(f"{name}: {tokens(ev['amount'], dec, sym)} withdrawn to {signer.address}")
        done += 1
    if not done:
        raise FedMarketError(f"nothing to withdraw for {signer.address}"
                             + (f": still unbonding ({'; '.join(waiting)})" if waiting else " (unbond first: `stake unbond`)"))
