"""Deterministic fixed-point encoding of float vectors as int64 (SCALE_BITS fractional bits)."""

from __future__ import annotations

import numpy as np

from fedmarket.errors import ConfigError

SCALE_BITS = 20
SCALE = 1 << SCALE_BITS
QMAX = 2**47


def quantize(x: np.ndarray) -> np.ndarray:
    """Encode floats as fixed-point integers ``rint(x * SCALE)``.

    Rounding is half-to-even, so the result is identical on every IEEE-754
    machine.

    Parameters
    ----------
    x : array_like of float
        Values to encode.

    Returns
    -------
    numpy.ndarray
        int64 array of the same shape, every entry at most ``QMAX`` in magnitude.

    Raises
    ------
    ConfigError
        If a value is NaN or infinite, or ``|x| * SCALE`` exceeds ``QMAX``.
    """
    x = np.asarray(x, dtype=np.float64)
    bad = ~np.isfinite(x)
    if bad.any():
        raise ConfigError(f"cannot quantize {int(bad.sum())} non-finite value(s) (NaN or inf)")
    with np.errstate(over="ignore"):  # overflow to inf is caught just below
        q = np.rint(x * SCALE)
    too_big = np.abs(q) > QMAX
    if too_big.any():
        raise ConfigError(
            f"cannot quantize {int(too_big.sum())} value(s) of magnitude above "
            f"{QMAX / SCALE:g} (largest is {float(np.abs(x).max()):g})"
        )
    return q.astype(np.int64)


def dequantize(q: np.ndarray) -> np.ndarray:
    """Decode fixed-point integers back to float64 (``q / SCALE``, exact for ``|q| <= 2**53``).

    Parameters
    ----------
    q : array_like of int
        Fixed-point values.

    Returns
    -------
    numpy.ndarray
        float64 array of the same shape.
    """
    q = np.asarray(q)
    if q.dtype.kind not in "iu" and not (q.dtype == object or q.size == 0):
        raise ConfigError(f"dequantize expects integers, got dtype {q.dtype}")
    return q.astype(np.float64) / SCALE
