"""How people read the chain's numbers: token amounts in token units, times as local ISO dates,
states by name. Base units and Unix seconds stay what JSON output carries; this is only for eyes
(and for reading amounts people type)."""

from __future__ import annotations

import datetime as _dt
from decimal import Decimal, InvalidOperation

from .errors import ConfigError
from .protocol.rules import JobState, Role

DECIMALS = 18  # FedToken's; a deployment on another token passes its own
SYMBOL = "FED"


def tokens(amount: int, decimals: int = DECIMALS, symbol: str | None = SYMBOL, places: int = 6) -> str:
    """`1000000000000000000000` -> `1,000 FED`: base units as token units (at most `places`
    decimals, rounded down, trailing zeros dropped; dust below that shown in scientific form)."""
    amount = int(amount)
    whole, frac = divmod(abs(amount), 10**decimals)
    digits = f"{frac:0{decimals}d}"[:places].rstrip("0") if decimals else ""
    if whole == 0 and not digits and amount:
        text = f"{Decimal(amount).scaleb(-decimals):.3e}"  # dust: show it rather than a misleading 0
    else:
        text = ("-" if amount < 0 else "") + f"{whole:,}" + (f".{digits}" if digits else "")
    return f"{text} {symbol}" if symbol else text


def parse_tokens(text: str, decimals: int = DECIMALS, what: str = "amount") -> int:
    """`"10.5"` tokens -> base units; refuses negatives, garbage and more decimals than the token has."""
    try:
        value = Decimal(str(text).replace("_", "").replace(",", ""))
    except InvalidOperation:
        raise ConfigError(f"{what} is not a number: {text!r}") from None
    if not value.is_finite() or value < 0:
        raise ConfigError(f"{what} must be a non-negative number of tokens (got {text})")
    base = value.scaleb(decimals)
    if base != base.to_integral_value():
        raise ConfigError(f"{what} {text} has more than {decimals} decimal places")
    return int(base)


def iso(ts: int | None) -> str:
    """Unix seconds as a local ISO date with its UTC offset (`2026-11-29T05:40:00+01:00`); 0 or None: `-`."""
    if not ts:
        return "-"
    return _dt.datetime.fromtimestamp(int(ts)).astimezone().isoformat(timespec="seconds")


def duration(seconds: int) -> str:
    """A short human duration: `45s`, `12m 5s`, `3h 2m`, `4d 1h`."""
    s = abs(int(seconds))
    if s < 60:
        out = f"{s}s"
    elif s < 3600:
        out = f"{s // 60}m {s % 60}s"
    elif s < 86_400:
        out = f"{s // 3600}h {s % 3600 // 60}m"
    else:
        out = f"{s // 86_400}d {s % 86_400 // 3600}h"
    return out


def relative(ts: int, now: int) -> str:
    """`in 5m 0s` / `12s ago` for a deadline `ts` seen at `now`."""
    return f"in {duration(ts - now)}" if ts >= now else f"{duration(now - ts)} ago"


def state_name(state: int) -> str:
    """A job state's name: `Training` for 2."""
    try:
        return (JobState(int(state)).name or "NONE").capitalize()
    except ValueError:
        return f"unknown state {state}"


def role_name(role: int) -> str:
    """A member's role word as a name (`provider`, `validator (slashed)`)."""
    base = int(role) & 127
    name = Role(base).name.lower() if base in (1, 2, 3) else "none"
    return f"{name} (slashed)" if int(role) & 128 else name


def short(address: str) -> str:
    """`0x70997970…dc79C8`: an address shortened for tables (full ones go in links and JSON)."""
    return f"{address[:10]}…{address[-6:]}" if address and len(address) > 18 else address
