"""The `fedmarket` command-line application and what its commands share: the typer app, the
one-line error handling of `main`, and reading a deployment's addresses."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer

try:  # typer >= 0.21 vendors click and raises its own exception types
    from typer.exceptions import TyperException as _CliUsageError
except ImportError:  # older typer (the `flower` extra pins one) raises click's
    from click.exceptions import ClickException as _CliUsageError

from ..errors import ConfigError, FedMarketError

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="fedmarket: a decentralized marketplace for federated learning on EVM chains.",
)


def _version(value: bool) -> None:
    if value:
        from .. import __version__

        print(f"fedmarket {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_version, help="Print the version and exit."),
) -> None:
    """fedmarket: a decentralized marketplace for federated learning on EVM chains."""


def writable_dir(path: Path, what: str) -> Path:
    """`path`, created if needed, once a file could be written in it (ConfigError naming `what`)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".fedmarket-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"cannot write to {what} {path}: {exc.strerror or exc}") from None
    return path


def new_file(path: Path, force: bool, is_dir_hint: str = "") -> Path:
    """`path` as a command's `--out` file: not a directory, not an existing file unless `force`, in
    a directory that exists (ConfigError naming the problem, before any work is done)."""
    if path.is_dir():
        raise ConfigError(f"--out {path} is a directory{is_dir_hint}")
    if path.exists() and not force:
        raise ConfigError(f"{path} exists: choose another --out or pass --force")
    if not path.parent.is_dir():
        raise ConfigError(f"directory {path.parent} does not exist")
    return path


def read_addresses(path: Path) -> dict:
    """A deployment's contract addresses from a JSON file (a `fedmarket deploy` output or a demo report)."""
    try:
        doc = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read contract addresses from {path}: {exc.strerror}") from None
    except ValueError:
        raise ConfigError(f"{path} is not JSON") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path} must hold a JSON object of contract addresses, not a {type(doc).__name__}")
    addresses = doc.get("contracts", doc)
    if not isinstance(addresses, dict):
        raise ConfigError(f"{path}: 'contracts' must be a JSON object of contract addresses")
    from eth_utils import is_address

    from ..market import CONTRACTS, OPTIONAL

    keys = ("token", *(key for key, _ in CONTRACTS))
    missing = [k for k in keys if k not in addresses and k not in OPTIONAL]
    if missing:
        raise ConfigError(f"{path} lacks the address of: {', '.join(missing)}")
    for key in (*keys, "deployer"):
        if key in addresses and not (isinstance(addresses[key], str) and is_address(addresses[key])):
            raise ConfigError(f"{path}: {key!r} is not an address: {addresses[key]!r:.60}")
    return addresses


def attach(chain, contracts: Path):
    """The deployment named by an addresses file on `chain`, checked: same chain, market code present."""
    from ..market import Deployment
    from ..processes.base import retrying

    addresses = read_addresses(contracts)
    if "chain_id" in addresses and int(addresses["chain_id"]) != chain.chain_id:
        raise ConfigError(f"{contracts} is a deployment on chain {addresses['chain_id']}, but the node is chain {chain.chain_id}")
    dep = Deployment.attach(chain, addresses)
    if not retrying(lambda: chain.code(dep.market.address)):
        raise ConfigError(f"no market contract at {dep.market.address} on this node (wrong --contracts file?)")
    return dep


def run(argv: list[str] | None = None) -> int:
    """Runs the app and turns every expected error into one line on stderr."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    command = typer.main.get_command(app)
    try:
        rv = command.main(args=argv if argv is not None else sys.argv[1:], prog_name="fedmarket", standalone_mode=False)
        if isinstance(rv, int):  # a typer.Exit(code) comes back as the return value here
            return rv
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        print("fedmarket: aborted", file=sys.stderr)
        return 130
    except _CliUsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # help was printed: not an error
            return 0
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        print(f"fedmarket: error: {message}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"fedmarket: error: {exc}", file=sys.stderr)
        return 2
    except FedMarketError as exc:
        print(f"fedmarket: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fedmarket: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("fedmarket: error: out of memory (the input needs more than this machine has)", file=sys.stderr)
        return 1
    return 0
