"""Encrypted account keystores: one Web3 Secret Storage (V3 JSON) file per named account.

A keystore directory (default `~/.fedmarket/keystore`, or $FEDMARKET_KEYSTORE, or
`--keystore DIR`) holds `NAME.json` files in the standard format geth, foundry's `cast wallet`
and eth-account read: scrypt-derived key, AES-128-CTR, MAC. The password comes from
$FEDMARKET_PASSWORD or an interactive hidden prompt, never from a command argument.

Private keys exist only in memory, inside `chain.base.Account` (whose repr omits the key);
they are never written anywhere but the encrypted file, nor logged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path

from coincurve import PrivateKey
from eth_utils import to_checksum_address

from .chain.base import Account
from .errors import KeystoreError
from .protocol.ecdsa import SECP256K1_N

ENV_KEYSTORE = "FEDMARKET_KEYSTORE"
ENV_PASSWORD = "FEDMARKET_PASSWORD"
DEFAULT_KEYSTORE = Path("~/.fedmarket/keystore")

#: scrypt work factor for new keystores (geth's "standard" 2**18: about a second per unlock).
#: Tests lower it; decryption always uses the factor recorded in the file.
SCRYPT_N = 2**18

_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$")


def keystore_dir(path: str | os.PathLike | None = None) -> Path:
    """The keystore directory: `path` if given, else $FEDMARKET_KEYSTORE, else ~/.fedmarket/keystore."""
    if path is None or str(path) == "":
        path = os.environ.get(ENV_KEYSTORE) or DEFAULT_KEYSTORE
    return Path(path).expanduser()


def password_from_env(prompt: Callable[[], str] | None = None) -> str:
    """$FEDMARKET_PASSWORD if set, else what `prompt` returns (a hidden interactive prompt)."""
    pw = os.environ.get(ENV_PASSWORD)
    if pw is not None:
        return pw
    if prompt is None:
        raise KeystoreError(f"no password: set {ENV_PASSWORD} or run interactively")
    return prompt()


class Keystore:
    """A directory of encrypted accounts, each `NAME.json`."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = keystore_dir(root)

    def path(self, name: str) -> Path:
        if not _NAME.match(name):
            raise KeystoreError(f"bad account name {name!r}: use letters, digits, '.', '_' or '-' (at most 64)")
        return self.root / f"{name}.json"

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.stem for p in self.root.glob("*.json") if _NAME.match(p.stem))

    def free_name(self) -> str:
        """`default` if unused, else the first unused `account-N`."""
        taken = set(self.names())
        if "default" not in taken:
            return "default"
        n = 1
        while f"account-{n}" in taken:
            n += 1
        return f"account-{n}"

    def new(self, name: str, password: str, *, key: bytes | None = None, scrypt_n: int | None = None) -> str:
        """Encrypt a fresh random key (or `key`) under `name`; returns its address. Never overwrites."""
        if not password:
            raise KeystoreError("refusing an empty password")
        path = self.path(name)
        key = secrets.token_bytes(32) if key is None else key
        from eth_account import Account as EthAccount  # imported when needed: about 0.5 s

        doc = EthAccount.encrypt(key, password, kdf="scrypt", iterations=scrypt_n or SCRYPT_N)
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            # O_EXCL: two `account new` racing for one name cannot overwrite each other's key
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise KeystoreError(f"account {name!r} already exists in {self.root}") from None
        except OSError as exc:
            raise KeystoreError(f"cannot write keystore {path}: {exc.strerror or exc}") from None
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f)
        return to_checksum_address(doc["address"])

    def _doc(self, name: str) -> dict:
        path = self.path(name)
        try:
            text = path.read_text()
        except FileNotFoundError:
            known = ", ".join(self.names()) or "none"
            raise KeystoreError(f"no account {name!r} in keystore {self.root} (accounts: {known})") from None
        except OSError as exc:
            raise KeystoreError(f"cannot read keystore {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise KeystoreError(f"keystore {path} is corrupt (not a version 3 keystore JSON: binary data)") from None
        try:
            doc = json.loads(text)
            crypto = doc.get("crypto") or doc.get("Crypto")
            if int(doc.get("version", 0)) != 3 or not isinstance(crypto, dict) or "ciphertext" not in crypto:
                raise ValueError
        except (ValueError, TypeError, AttributeError):
            raise KeystoreError(f"keystore {path} is corrupt (not a version 3 keystore JSON)") from None
        return doc

    def address(self, name: str) -> str | None:
        """Address recorded in the file (no password needed); None if the file does not say."""
        addr = self._doc(name).get("address")
        try:
            return to_checksum_address(addr) if addr else None
        except ValueError:
            raise KeystoreError(f"keystore {self.path(name)} is corrupt (bad address)") from None

    def list(self) -> list[tuple[str, str | None]]:
        """(name, address) of every account; a corrupt file is listed with address None."""
        out = []
        for name in self.names():
            try:
                out.append((name, self.address(name)))
            except KeystoreError:
                out.append((name, None))
        return out

    def load(self, name: str, password: str) -> Account:
        """Decrypt account `name`."""
        doc = self._doc(name)
        from eth_account import Account as EthAccount  # imported when needed: about 0.5 s

        try:
            key = bytes(EthAccount.decrypt(doc, password))
        except ValueError as exc:  # eth-keyfile's errors are ValueErrors
            if "mac mismatch" in str(exc).lower():
                raise KeystoreError(f"wrong password for account {name!r}") from None
            raise KeystoreError(f"keystore {self.path(name)} is corrupt ({exc})") from None
        except Exception as exc:  # missing fields, bad hex, unknown kdf: a damaged file
            raise KeystoreError(f"keystore {self.path(name)} is corrupt ({type(exc).__name__})") from None
        account = Account.from_key(key)
        recorded = doc.get("address")
        if recorded and account.address.lower() != "0x" + str(recorded).lower().removeprefix("0x"):
            raise KeystoreError(f"keystore {self.path(name)} is corrupt: its key does not match its address")
        return account


def load_account(name: str, keystore: str | os.PathLike | None = None, password: str | None = None,
                 prompt: Callable[[], str] | None = None) -> Account:
    """Account `name` from the keystore, unlocked with `password` or $FEDMARKET_PASSWORD or `prompt`."""
    store = Keystore(keystore)
    store._doc(name)  # a missing or corrupt file is reported before asking for a password
    return store.load(name, password if password is not None else password_from_env(prompt))


# anvil's (and hardhat's) development accounts: the public mnemonic every dev node funds.
DEV_MNEMONIC = "test test test test test test test test test test test junk"
DEV_CHAIN_ID = 31337


def dev_account(index: int) -> Account:
    """Development account `index` of anvil's public mnemonic. Its key is public: dev chains only."""
    if not 0 <= index < 2**31:
        raise KeystoreError(f"dev account index must be between 0 and 2**31-1 (got {index})")
    return Account.from_key(_bip32_key(_bip39_seed(DEV_MNEMONIC), (44 | _HARDENED, 60 | _HARDENED, _HARDENED, 0, index)))


_HARDENED = 2**31


def _bip39_seed(mnemonic: str, passphrase: str = "") -> bytes:
    """BIP-39 seed of a mnemonic (PBKDF2-HMAC-SHA512, 2,048 rounds)."""
    return hashlib.pbkdf2_hmac("sha512", mnemonic.encode(), ("mnemonic" + passphrase).encode(), 2048)


def _bip32_key(seed: bytes, path: tuple[int, ...]) -> bytes:
    """BIP-32 private key at `path` (indices, hardened ones with 2**31 set) below the master key of
    `seed`. The same keys as eth_account's HD wallet (a test holds them together), without its
    import of about half a second, which every dev-account process paid at start."""
    digest = hmac.digest(b"Bitcoin seed", seed, "sha512")
    key, chain = digest[:32], digest[32:]
    for i in path:
        data = b"\0" + key if i >= _HARDENED else PrivateKey(key).public_key.format(compressed=True)
        digest = hmac.digest(chain, data + i.to_bytes(4, "big"), "sha512")
        tweak = int.from_bytes(digest[:32], "big")
        child = (tweak + int.from_bytes(key, "big")) % SECP256K1_N
        if tweak >= SECP256K1_N or child == 0:  # probability below 2**-127: BIP-32 skips to the next index
            raise KeystoreError(f"BIP-32 index {i} gives no valid key")
        key, chain = child.to_bytes(32, "big"), digest[32:]
    return key
