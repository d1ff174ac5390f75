"""Encrypted keystores (fedmarket.keys) and `fedmarket account new|list`.

Most tests run the CLI in-process (`main(argv)`) with a light scrypt work factor so they stay
fast; one runs the real entry point in a subprocess with the production factor.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fedmarket import keys
from fedmarket.chain.base import Account
from fedmarket.cli import main
from fedmarket.errors import KeystoreError
from fedmarket.keys import Keystore, dev_account, load_account

PW = "correct horse battery staple"


@pytest.fixture(autouse=True)
def light_kdf(monkeypatch):
    monkeypatch.setattr(keys, "SCRYPT_N", 2**10)
    monkeypatch.delenv(keys.ENV_PASSWORD, raising=False)
    monkeypatch.delenv(keys.ENV_KEYSTORE, raising=False)


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


# ---- the library ---------------------------------------------------------------------------
def test_new_then_load_round_trip(tmp_path):
    store = Keystore(tmp_path)
    key = bytes(range(1, 33))
    address = store.new("alice", PW, key=key)
    assert address == Account.from_key(key).address
    acct = store.load("alice", PW)
    assert acct == Account.from_key(key)
    doc = json.loads((tmp_path / "alice.json").read_text())
    assert doc["version"] == 3 and doc["crypto"]["kdf"] == "scrypt"
    assert key.hex() not in (tmp_path / "alice.json").read_text()
    assert (tmp_path / "alice.json").stat().st_mode & 0o077 == 0  # owner-only
    assert store.list() == [("alice", address)]


def test_account_repr_never_shows_the_key():
    key = bytes(range(1, 33))
    acct = Account.from_key(key)
    for text in (repr(acct), str(acct), f"{acct}"):
        assert key.hex() not in text and acct.address in text


def test_wrong_password_missing_and_corrupt_are_clear(tmp_path):
    store = Keystore(tmp_path)
    store.new("bob", PW)
    with pytest.raises(KeystoreError, match="wrong password for account 'bob'"):
        store.load("bob", "guess")
    with pytest.raises(KeystoreError, match=r"no account 'carol' in keystore .* \(accounts: bob\)"):
        store.load("carol", PW)
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(KeystoreError, match="junk.json is corrupt"):
        store.load("junk", PW)
    doc = json.loads((tmp_path / "bob.json").read_text())
    doc["crypto"]["ciphertext"] = "zz" + doc["crypto"]["ciphertext"][2:]
    (tmp_path / "broken.json").write_text(json.dumps(doc))
    with pytest.raises(KeystoreError, match="broken.json is corrupt"):
        store.load("broken", PW)
    doc = json.loads((tmp_path / "bob.json").read_text())
    doc["address"] = "00" * 20
    (tmp_path / "swapped.json").write_text(json.dumps(doc))
    with pytest.raises(KeystoreError, match="does not match its address"):
        store.load("swapped", PW)
    assert ("junk", None) in store.list()


def test_names_are_checked_and_never_overwritten(tmp_path):
    store = Keystore(tmp_path)
    for bad in ("../evil", "", ".hidden", "a/b", "x" * 65):
        with pytest.raises(KeystoreError, match="bad account name"):
            store.new(bad, PW)
    store.new("dave", PW)
    with pytest.raises(KeystoreError, match="already exists"):
        store.new("dave", PW)
    with pytest.raises(KeystoreError, match="empty password"):
        store.new("erin", "")


def test_keystore_dir_and_password_from_env(tmp_path, monkeypatch):
    assert keys.keystore_dir(None) == keys.DEFAULT_KEYSTORE.expanduser()
    monkeypatch.setenv(keys.ENV_KEYSTORE, str(tmp_path / "ks"))
    assert keys.keystore_dir(None) == tmp_path / "ks"
    assert keys.keystore_dir(tmp_path / "other") == tmp_path / "other"
    Keystore().new("frank", PW)
    assert (tmp_path / "ks" / "frank.json").exists()
    with pytest.raises(KeystoreError, match="set FEDMARKET_PASSWORD"):
        load_account("frank")
    monkeypatch.setenv(keys.ENV_PASSWORD, PW)
    assert load_account("frank").address == Keystore().address("frank")
    assert load_account("frank", prompt=lambda: "ignored: env wins").address == Keystore().address("frank")


@pytest.mark.parametrize("index", [0, 1, 7, 19, 255, 2**31 - 1])
def test_dev_accounts_are_eth_accounts_hd_wallet_keys(index):
    """`dev_account` derives BIP-32 keys itself: the same as eth_account's HD wallet at m/44'/60'/0'/0/i."""
    from eth_account import Account as EthAccount

    from fedmarket.keys import DEV_MNEMONIC

    EthAccount.enable_unaudited_hdwallet_features()
    theirs = EthAccount.from_mnemonic(DEV_MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}")
    ours = dev_account(index)
    assert (ours.address, ours.key) == (theirs.address, bytes(theirs.key))


def test_dev_accounts_are_anvils():
    # anvil's first two pre-funded accounts (public test mnemonic)
    assert dev_account(0).address == "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
    assert dev_account(1).address == "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"


# ---- the commands --------------------------------------------------------------------------
def test_account_new_and_list(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(keys.ENV_PASSWORD, PW)
    ks = str(tmp_path / "ks")
    code, out, err = cli(capsys, "account", "new", "--keystore", ks)
    assert code == 0, err
    name, address = out.split()
    assert name == "default" and address.startswith("0x")
    code, out, _ = cli(capsys, "account", "new", "--keystore", ks, "--name", "ops")
    assert code == 0 and out.split()[0] == "ops"
    code, out, _ = cli(capsys, "account", "new", "--keystore", ks)
    assert code == 0 and out.split()[0] == "account-1"
    code, out, _ = cli(capsys, "account", "list", "--keystore", ks)
    assert code == 0
    assert [line.split()[0] for line in out.strip().splitlines()] == ["account-1", "default", "ops"]
    assert address in out
    key = Keystore(ks).load("default", PW).key
    assert key.hex() not in out + err


def test_account_errors_are_one_line(tmp_path, capsys, monkeypatch):
    ks = str(tmp_path / "ks")
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False)
    code, _, err = cli(capsys, "account", "new", "--keystore", ks)
    assert code == 2 and err.strip().splitlines() == [
        "fedmarket: error: no password: set FEDMARKET_PASSWORD or run in a terminal to be prompted"]
    monkeypatch.setenv(keys.ENV_PASSWORD, PW)
    assert cli(capsys, "account", "new", "--keystore", ks, "--name", "x")[0] == 0
    code, _, err = cli(capsys, "account", "new", "--keystore", ks, "--name", "x")
    assert code == 2 and err.strip() == f"fedmarket: error: account 'x' already exists in {ks}"
    code, _, err = cli(capsys, "account", "new", "--keystore", ks, "--name", "../x")
    assert code == 2 and "bad account name" in err and len(err.strip().splitlines()) == 1
    code, out, err = cli(capsys, "account", "list", "--keystore", str(tmp_path / "empty"))
    assert code == 0 and out == "" and "no accounts in" in err


def test_account_new_prompts_hidden_when_interactive(tmp_path, capsys, monkeypatch):
    import typer

    asked = []

    def fake_prompt(text, **kw):
        asked.append(kw)
        return PW

    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr(typer, "prompt", fake_prompt)
    code, out, _ = cli(capsys, "account", "new", "--keystore", str(tmp_path), "--name", "p")
    assert code == 0 and asked == [{"hide_input": True, "confirmation_prompt": True}]
    assert Keystore(tmp_path).load("p", PW).address == out.split()[1]


def test_real_entry_point_with_default_kdf(tmp_path):
    """The installed command, production scrypt factor, password from the environment only."""
    import os

    env = {**os.environ, "FEDMARKET_PASSWORD": PW, "FEDMARKET_KEYSTORE": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "fedmarket", "account", "new", "--name", "real"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "real.json").read_text())
    assert doc["crypto"]["kdfparams"]["n"] == 2**18
    assert PW not in proc.stdout + proc.stderr
    listed = subprocess.run([sys.executable, "-m", "fedmarket", "account", "list"], capture_output=True, text=True,
                            env=env, timeout=120)
    assert listed.stdout.split() == proc.stdout.split()
