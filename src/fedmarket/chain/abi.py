"""Contract ABI codec shared by every chain backend: calls, return values, events, reverts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import eth_abi
from eth_utils import keccak, to_checksum_address

_ERROR_SELECTOR = keccak(text="Error(string)")[:4]
_PANIC_SELECTOR = keccak(text="Panic(uint256)")[:4]


def canonical_type(param: dict) -> str:
    """ABI type string of one parameter, expanding tuples (structs) recursively."""
    typ = param["type"]
    if typ.startswith("tuple"):
        inner = ",".join(canonical_type(c) for c in param["components"])
        return f"({inner}){typ[len('tuple'):]}"
    return typ


def _normalise(value: Any, typ: str) -> Any:
    """Turn decoded values into plain Python: checksum addresses, tuples as tuples."""
    if typ == "address":
        return to_checksum_address(value)
    if typ.endswith("]"):
        base = typ[: typ.rindex("[")]
        return [_normalise(v, base) for v in value]
    if typ.startswith("("):
        return tuple(_normalise(v, t) for v, t in zip(value, _split_tuple(typ)))
    return value


def _split_tuple(typ: str) -> list[str]:
    """Split '(a,(b,c),d)' into ['a', '(b,c)', 'd']."""
    body, parts, depth, cur = typ[1:-1], [], 0, ""
    for ch in body:
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += ch == "("
        depth -= ch == ")"
        cur += ch
    if cur:
        parts.append(cur)
    return parts


@dataclass(frozen=True)
class Function:
    """One ABI function: name, input and output types, 4-byte selector."""

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    selector: bytes
    mutability: str
    struct_fields: tuple[str, ...] = ()  # names of a single struct output's members

    def encode(self, args: tuple) -> bytes:
        if len(args) != len(self.inputs):
            raise TypeError(f"{self.name} takes {len(self.inputs)} arguments, got {len(args)}")
        return self.selector + eth_abi.encode(list(self.inputs), list(args))

    def decode(self, data: bytes) -> Any:
        values = eth_abi.decode(list(self.outputs), data)
        values = [_normalise(v, t) for v, t in zip(values, self.outputs)]
        if len(values) == 1:
            if self.struct_fields:
                return dict(zip(self.struct_fields, values[0]))
            return values[0]
        return tuple(values) if values else None


@dataclass(frozen=True)
class EventSpec:
    """One ABI event: name, topic0 and its fields with their indexed flags."""

    name: str
    topic0: bytes
    fields: tuple[tuple[str, str, bool], ...]  # (name, type, indexed)

    def decode(self, topics: list[bytes], data: bytes) -> dict[str, Any]:
        indexed = [(n, t) for n, t, i in self.fields if i]
        plain = [(n, t) for n, t, i in self.fields if not i]
        out: dict[str, Any] = {}
        for (name, typ), topic in zip(indexed, topics[1:]):
            # dynamic indexed values are stored as their hash
            if typ in ("string", "bytes") or typ.endswith("]") or typ.startswith("("):
                out[name] = topic
            else:
                out[name] = _normalise(eth_abi.decode([typ], topic)[0], typ)
        values = eth_abi.decode([t for _, t in plain], data)
        for (name, typ), value in zip(plain, values):
            out[name] = _normalise(value, typ)
        return out


@dataclass(frozen=True)
class Event:
    """A decoded event log."""

    name: str
    address: str
    args: dict[str, Any]
    block: int

    def __getitem__(self, key: str) -> Any:
        return self.args[key]


class ContractABI:
    """Index of a contract's functions and events, built from its JSON ABI."""

    def __init__(self, abi: list[dict]):
        self.abi = abi
        self.functions: dict[str, Function] = {}
        self.events: dict[bytes, EventSpec] = {}
        self.events_by_name: dict[str, EventSpec] = {}
        for item in abi:
            if item.get("type") == "function":
                inputs = tuple(canonical_type(p) for p in item["inputs"])
                outputs = tuple(canonical_type(p) for p in item.get("outputs", []))
                selector = keccak(text=f"{item['name']}({','.join(inputs)})")[:4]
                outs = item.get("outputs", [])
                struct = ()
                if len(outs) == 1 and outs[0]["type"] == "tuple":
                    struct = tuple(c["name"] for c in outs[0]["components"])
                self.functions[item["name"]] = Function(
                    item["name"], inputs, outputs, selector, item.get("stateMutability", "nonpayable"), struct
                )
            elif item.get("type") == "event":
                fields = tuple((p["name"], canonical_type(p), bool(p.get("indexed"))) for p in item["inputs"])
                topic0 = keccak(text=f"{item['name']}({','.join(t for _, t, _ in fields)})")
                spec = EventSpec(item["name"], topic0, fields)
                self.events[topic0] = spec
                self.events_by_name[item["name"]] = spec

    def function(self, name: str) -> Function:
        try:
            return self.functions[name]
        except KeyError:
            raise AttributeError(f"contract has no function '{name}'") from None

    def constructor_types(self) -> list[str]:
        for item in self.abi:
            if item.get("type") == "constructor":
                return [canonical_type(p) for p in item["inputs"]]
        return []


def decode_revert(data: bytes) -> str:
    """Human-readable reason from revert data (Error(string), Panic(uint256) or empty)."""
    if data[:4] == _ERROR_SELECTOR:
        try:
            return eth_abi.decode(["string"], data[4:])[0]
        except Exception:  # malformed reason: fall through to raw bytes
            pass
    if data[:4] == _PANIC_SELECTOR and len(data) >= 36:
        return f"panic 0x{int.from_bytes(data[4:36], 'big'):02x}"
    if not data:
        return "reverted without a reason"
    return f"reverted with data 0x{data.hex()}"


def intrinsic_gas(data: bytes, create: bool = False) -> int:
    """Base cost of a transaction: 21,000 plus calldata (4 per zero byte, 16 per other)."""
    zeros = data.count(0)
    gas = 21_000 + 4 * zeros + 16 * (len(data) - zeros)
    if create:
        gas += 32_000 + 2 * ((len(data) + 31) // 32)  # EIP-3860 initcode word cost
    return gas
