"""`fedmarket account new|list`: encrypted keystores (see fedmarket.keys). Keys are never printed."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from ..errors import ConfigError, KeystoreError
from ..keys import ENV_KEYSTORE, ENV_PASSWORD, Keystore, password_from_env
from .app import app

account_app = typer.Typer(no_args_is_help=True, help="Encrypted account keystores (Web3 Secret Storage, scrypt).")
app.add_typer(account_app, name="account")

KEYSTORE_HELP = f"Keystore directory (default ${ENV_KEYSTORE}, else ~/.fedmarket/keystore)."


def prompt_password(what: str, confirm: bool = False) -> str:
    """${FEDMARKET_PASSWORD}, else a hidden prompt on a terminal; never a command argument."""

    def ask() -> str:
        if not sys.stdin.isatty():
            raise KeystoreError(f"no password: set {ENV_PASSWORD} or run in a terminal to be prompted")
        return typer.prompt(what, hide_input=True, confirmation_prompt=confirm)

    return password_from_env(ask)


@account_app.command("new")
def account_new(
    name: str = typer.Option(None, "--name", help="Account name (default: 'default', then 'account-N')."),
    keystore: Path = typer.Option(None, "--keystore", help=KEYSTORE_HELP),
) -> None:
    """Create a random account, encrypted with a password; prints its name and address."""
    store = Keystore(keystore)
    name = name or store.free_name()
    if store.path(name).exists():  # path() also validates the name, before any prompt
        raise KeystoreError(f"account {name!r} already exists in {store.root}")
    address = store.new(name, prompt_password(f"Password for new account {name!r}", confirm=True))
    print(f"{name}  {address}")
    print(f"keystore: {store.path(name)}", file=sys.stderr)


@account_app.command("list")
def account_list(keystore: Path = typer.Option(None, "--keystore", help=KEYSTORE_HELP)) -> None:
    """Names and addresses of the accounts in the keystore (no password needed)."""
    store = Keystore(keystore)
    accounts = store.list()
    if not accounts:
        print(f"no accounts in {store.root} (create one with `fedmarket account new`)", file=sys.stderr)
        return
    width = max(len(n) for n, _ in accounts)
    for name, address in accounts:
        print(f"{name:<{width}}  {address or 'CORRUPT keystore file'}")


def load_signer(account: str | None, keystore: Path | None, dev_account: int | None, chain):
    """The signing account of a command: a keystore account (password from $FEDMARKET_PASSWORD or a
    prompt) or, on a development chain only, anvil's public dev account `dev_account`."""
    from ..keys import DEV_CHAIN_ID, load_account
    from ..keys import dev_account as dev_key

    if (account is None) == (dev_account is None):
        raise ConfigError("give the signer as exactly one of --account NAME or --dev-account I")
    if dev_account is not None:
        if chain.chain_id != DEV_CHAIN_ID:
            raise ConfigError(f"--dev-account is only for development chains (chain id {DEV_CHAIN_ID}); "
                              f"this node is chain {chain.chain_id}: use --account")
        return dev_key(dev_account)
    return load_account(account, keystore, prompt=lambda: prompt_password(f"Password for account {account!r}"))
