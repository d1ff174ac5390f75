"""`fedmarket node` (a local anvil) and `fedmarket deploy` (the protocol's contracts, to any chain)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import typer

from ..errors import ChainError, ConfigError, StorageError
from ..market import DEFAULT_FEE_BPS, DEFAULT_UNBONDING_DELAY
from .account import KEYSTORE_HELP, prompt_password
from .app import app, new_file


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@app.command()
def node(
    port: int = typer.Option(8545, "--port", help="Port on 127.0.0.1 (0: any free port)."),
    block_time: float = typer.Option(None, "--block-time", help="Mine a block every N seconds (default: one per transaction)."),
    accounts: int = typer.Option(10, "--accounts", help="Pre-funded development accounts (dev:0 .. dev:N-1)."),
) -> None:
    """Run a local development chain (the npm-pinned anvil, chain id 31337) until Ctrl-C or SIGTERM;
    anvil stops with it."""
    import signal
    import time

    from eth_utils import to_checksum_address

    from ..chain.anvil import AnvilNode
    from ..keys import DEV_CHAIN_ID

    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535 (got {port})")
    if block_time is not None and not (math.isfinite(block_time) and block_time > 0):
        raise ConfigError(f"--block-time must be positive (got {block_time})")
    if not 1 <= accounts <= 1000:
        raise ConfigError(f"--accounts must be between 1 and 1000 (got {accounts})")

    def terminate(*_args):
        raise KeyboardInterrupt  # leaves the `with` below, which stops anvil

    # SIGINT too, explicitly: a process started in the background of a script inherits SIGINT
    # ignored, and Python then installs no KeyboardInterrupt handler, so `kill -INT` did nothing
    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, terminate)
    with AnvilNode(port or None, chain_id=DEV_CHAIN_ID, block_time=block_time, fixed_interval=False,
                   accounts=accounts, die_with_parent=True) as n:
        try:  # a signal while the accounts are still being listed stops anvil just the same
            accounts = n.rpc("eth_accounts", [])
            print(f"anvil listening on {n.url} (chain id {DEV_CHAIN_ID})", flush=True)
            print("pre-funded development accounts (their keys are public: `--dev-account I` or dev:I, "
                  "this chain only; `fedmarket fund` funds any other):", flush=True)
            for i, address in enumerate(accounts):
                print(f"  ({i}) {to_checksum_address(address)}", flush=True)
            _say("Ctrl-C to stop")
            while n.proc.poll() is None:
                time.sleep(0.2)
        except KeyboardInterrupt:
            _say("stopping anvil")
            return
        raise ChainError(f"anvil exited unexpectedly (code {n.proc.returncode})")


def _existing_token(chain, token: str, deployer: str):
    """The --token contract, checked before anything is deployed: it has code and answers as an
    ERC-20 with EIP-2612 permit (anything else would take a whole deployment with it)."""
    from eth_utils import to_checksum_address

    from ..chain import artifacts

    if not chain.code(to_checksum_address(token)):
        raise ConfigError(f"--token {token} has no code on chain {chain.chain_id}")
    existing = chain.register(to_checksum_address(token), "FedToken", artifacts.load("FedToken").abi)
    for fn, *args in (("totalSupply",), ("decimals",), ("balanceOf", deployer), ("nonces", deployer),
                      ("DOMAIN_SEPARATOR",)):
        try:
            existing.call(fn, *args)
        except Exception:  # noqa: BLE001 - a revert, empty or undecodable return data
            raise ConfigError(f"--token {token} does not answer as an ERC-20 with permit ({fn} failed)") from None
    return existing


@app.command()
def deploy(
    rpc: str = typer.Option(..., "--rpc", help="JSON-RPC URL of the chain."),
    out: Path = typer.Option(Path("addresses.json"), "--out", "-o", help="Where to write the addresses (JSON)."),
    account: str = typer.Option(None, "--account", help="Deployer: an account of the keystore (password from $FEDMARKET_PASSWORD or a prompt)."),
    keystore: Path = typer.Option(None, "--keystore", help=KEYSTORE_HELP),
    dev_account: int = typer.Option(None, "--dev-account", help="Deployer: anvil's public dev account I (chain id 31337 only)."),
    treasury: str = typer.Option(None, "--treasury", help="Address receiving protocol fees (default: the deployer)."),
    fee_bps: int = typer.Option(DEFAULT_FEE_BPS, "--fee-bps", help="Protocol fee in basis points (at most 1000)."),
    unbonding_delay: int = typer.Option(DEFAULT_UNBONDING_DELAY, "--unbonding-delay", help="Seconds before withdrawn stake is released."),
    min_period: int = typer.Option(None, "--min-period", help="Shortest round, response and challenge period a job may set, in seconds (default: 1 on a development chain, 300 elsewhere: enough blocks for a vote or a game move to land)."),
    token: str = typer.Option(None, "--token", help="Use this existing ERC-20 (with EIP-2612 permit) instead of deploying FedToken."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --out file."),
) -> None:
    """Deploy FedToken (unless --token) and the protocol: TermsCheck, Rules, Disputes, both arbiters,
    JobMarket, ModelLicence and ModelMarket; write their addresses, chain id and block."""
    from eth_utils import is_address, to_checksum_address

    from ..chain.rpc_backend import RpcChain
    from ..keys import DEV_CHAIN_ID, load_account
    from ..keys import dev_account as dev_key
    from ..market import Deployment

    if (account is None) == (dev_account is None):
        raise ConfigError("give the deployer as exactly one of --account NAME or --dev-account I")
    if token is not None and not is_address(token):
        raise ConfigError(f"--token is not an address: {token!r}")
    if treasury is not None and not is_address(treasury):
        raise ConfigError(f"--treasury is not an address: {treasury!r}")
    if not 0 <= fee_bps <= 1000:
        raise ConfigError(f"--fee-bps must be between 0 and 1000 (got {fee_bps})")
    from ..protocol.rules import MAX_CLAIM_PERIOD

    if not 0 <= unbonding_delay <= MAX_CLAIM_PERIOD:
        raise ConfigError(f"--unbonding-delay must be between 0 and {MAX_CLAIM_PERIOD} seconds (got {unbonding_delay})")
    if min_period is not None and not 1 <= min_period <= 86_400:
        raise ConfigError(f"--min-period must be between 1 and 86400 seconds (got {min_period})")
    new_file(out, force, ": give the addresses file's path")

    from ..processes.base import retrying

    chain = retrying(lambda: RpcChain(rpc), attempts=6)  # a node started a moment ago gets a few seconds
    if dev_account is not None:
        if chain.chain_id != DEV_CHAIN_ID:
            raise ConfigError(f"--dev-account is only for development chains (chain id {DEV_CHAIN_ID}); "
                              f"{rpc} has chain id {chain.chain_id}: use --account")
        deployer = dev_key(dev_account)
    else:
        deployer = load_account(account, keystore, prompt=lambda: prompt_password(f"Password for account {account!r}"))
    balance = chain.native_balance(deployer.address)
    if balance == 0:
        raise ChainError(f"deployer {deployer.address} has no funds for gas on chain {chain.chain_id}")
    existing = _existing_token(chain, token, deployer.address) if token is not None else None
    _say(f"deploying from {deployer.address} to chain {chain.chain_id} at {rpc}")
    dep = Deployment.deploy(chain, deployer, to_checksum_address(treasury or deployer.address), fee_bps, unbonding_delay,
                            token=existing, min_period=min_period)
    # the first contract this command created (the token, unless an existing one was given)
    block = (dep.terms_check if existing else dep.token).from_block
    for key, address in dep.addresses().items():  # printed first: they are not lost if the file cannot be written
        print(f"{key:<9} {address}", flush=True)
    try:
        dep.save(out, chain_id=chain.chain_id, block=block, deployer=deployer.address)
    except OSError as exc:
        raise StorageError(f"deployed (addresses above, from block {block}) but cannot write {out}: "
                          f"{exc.strerror or exc}") from None
    print(f"chain id {chain.chain_id}, deployed from block {block}; addresses written to {out}")
