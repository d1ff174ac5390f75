"""Compile the Vyper contracts with the real compiler, once per source version (cached)."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from ..errors import ChainError
from .abi import ContractABI

EVM_VERSION = "cancun"
VYPER_VERSION = "0.4.3"


def contracts_dir() -> Path:
    """Where the Vyper sources are: inside the installed package, or at the repository root."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "contracts", here.parent.parent / "contracts"):
        if (candidate / "JobMarket.vy").is_file():
            return candidate
    raise ChainError("cannot find the Vyper sources (contracts/JobMarket.vy); reinstall fedmarket")


def cache_dir() -> Path:
    root = os.environ.get("FEDMARKET_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "fedmarket")
    return Path(root) / "artifacts"


@dataclass(frozen=True)
class Artifact:
    """Compiled contract: name, ABI and deployable bytecode."""

    name: str
    abi: ContractABI
    bytecode: bytes


def _source_key(name: str) -> str:
    import vyper

    h = hashlib.sha256(f"{vyper.__version__}|{EVM_VERSION}|{name}".encode())
    src = contracts_dir()
    for path in sorted(src.rglob("*.vy")) + sorted(src.rglob("*.vyi")):
        h.update(path.relative_to(src).as_posix().encode())
        h.update(path.read_bytes())
    try:
        from importlib.metadata import version

        h.update(version("snekmate").encode())
    except Exception:  # snekmate missing: compilation below reports it
        pass
    return h.hexdigest()[:24]


@cache
def load(name: str) -> Artifact:
    """The compiled artifact of `contracts/<name>.vy`, compiling it on first use."""
    import vyper

    if vyper.__version__ != VYPER_VERSION:
        raise ChainError(f"fedmarket needs vyper=={VYPER_VERSION}, found {vyper.__version__}")
    key = _source_key(name)
    cached = cache_dir() / f"{name.replace('/', '_')}-{key}.json"
    if cached.is_file():
        doc = json.loads(cached.read_text())
    else:
        doc = compile_contract(name)
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(doc))
            tmp.replace(cached)
        except OSError:  # read-only home: compile every time, still correct
            pass
    return Artifact(name.rsplit("/", 1)[-1], ContractABI(doc["abi"]), bytes.fromhex(doc["bytecode"].removeprefix("0x")))


def compile_contract(name: str) -> dict:
    """Run the Vyper compiler on one contract; returns {'abi': [...], 'bytecode': '0x..'}."""
    from vyper.cli.vyper_compile import compile_files
    from vyper.compiler.settings import OptimizationLevel, Settings

    src = contracts_dir()
    path = src / f"{name}.vy"
    if not path.is_file():
        raise ChainError(f"no contract named {name} in {src}")
    # gas-optimized, unless the source says otherwise (`# pragma optimize codesize` where EIP-170's
    # 24,576 bytes bind harder than gas); a setting here that differed from the pragma would be refused
    pragma = "# pragma optimize" in path.read_text()
    settings = Settings(optimize=None if pragma else OptimizationLevel.GAS, evm_version=EVM_VERSION)
    out = compile_files([str(path)], ["abi", "bytecode"], paths=[str(src)], settings=settings)
    result = next(iter(out.values()))
    return {"abi": result["abi"], "bytecode": result["bytecode"]}
