"""Secure aggregation (Bonawitz et al. 2017, SecAgg+ of Bell et al. 2020) in the fixed-point integer domain modulo 2**64.

Each provider ``u`` holds an int64 update ``x_u`` (``fl.quantize``). It sends

    y_u = x_u + PRG(b_u) + sum_{v in N(u), u < v} PRG(s_uv) - sum_{v in N(u), u > v} PRG(s_uv)   (mod 2**64)

where ``N(u)`` is its neighbourhood in a public random ``k``-regular graph (a random Harary
graph drawn from a public seed, ``k = O(log n)``), ``s_uv`` is the X25519 agreement of the two
providers' mask keys, and ``b_u`` a fresh self-mask seed. ``b_u`` and the mask private key are
Shamir-shared (threshold ``t``, prime field ``2**256 + 297``) among ``N(u)``; each share travels
encrypted and authenticated (AES-256-GCM under an X25519 channel key, the sender, receiver and
round bound as associated data) through the server. After the masked inputs, each surviving
neighbour reveals, for every ``u`` that shared with it, the share of ``b_u`` if ``u`` sent its
masked input and the share of its mask key otherwise, never both. The server rebuilds the
secrets it needs, checks each against the sender's commitment (``sha256`` of ``b_u``; the mask
public key), removes the masks, and reads the exact sum ``sum_u x_u`` back as int64 (exact when
the true sum fits in int64, which fixed-point updates of 20 fractional bits do by a wide margin).

Rounds (messages are dataclasses with ``nbytes()``, so traffic is counted exactly):

0. ``advertise()`` -> :class:`AdvertiseKeys` (two public keys, a commitment to ``b_u``);
1. ``share_keys(keys)`` -> list of :class:`EncryptedShare`, one per neighbour (once per round);
2. ``masked_input(x, shares)`` -> :class:`MaskedInput`, only with at least ``t`` authentic shares
   from distinct neighbours, and once per round;
3. ``confirm(survivors)``: the consistency check of Bonawitz et al. (the caller signs the set);
   one set per round, never one below ``min_survivors`` nor one that leaves the provider itself out
   (the server picks the set: leaving out a victim's partners, who would still answer, would let it
   isolate the victim);
4. ``unmask(survivors, confirmed_by)`` -> :class:`UnmaskResponse`, only for the set it confirmed,
   once at least ``min_survivors`` of its members confirmed it, and once per round.

Masks are ChaCha20 keystreams (``cryptography``) keyed by HKDF-SHA256 of the seed.

The server aborts (:class:`~fedmarket.errors.SecAggAbort`) when fewer than ``t`` of a needed
neighbourhood answer, or fewer than ``min_survivors`` masked inputs arrive; a share that fails
authentication or reconstructs to a secret that does not match its commitment raises
:class:`~fedmarket.errors.ShareTampered`. Either way no aggregate exists, so no round can be
committed and no funds move.

Threat model: honest-but-curious server and up to ``t - 1`` colluding providers per
neighbourhood learn nothing beyond the sum of the survivors' inputs. :func:`default_degree` sizes
``k`` and ``t`` so that a given share of colluding providers, placed anywhere before the graph's
seed is drawn, puts ``t`` of them around an honest provider with odds below ``PRIVACY_FAILURE``. Against an actively
malicious server (lying about who dropped) the protocol needs ``2t > k`` (the default), the
consistency check, and, as in Bonawitz et al.'s active variant, signed messages; the signatures
are the market's (``roles.secure_round``, see docs/privacy.md).
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import secrets
import time
from dataclasses import dataclass, field

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedmarket.errors import ConfigError, SecAggAbort, ShareTampered

PRIME = 2**256 + 297  # the smallest prime above 2**256: Shamir field, holds any 32-byte secret
FIELD_BYTES = 33
KEY_BYTES = 32
_RAW = serialization.Encoding.Raw
_RAW_PUB = serialization.PublicFormat.Raw
_RAW_PRIV = serialization.PrivateFormat.Raw
_NOENC = serialization.NoEncryption()


# ----------------------------------------------------------------------------- pure helpers


def _hkdf(secret: bytes, info: bytes, length: int = 32) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(secret)


def prg_mask(seed: bytes, d: int) -> np.ndarray:
    """``d`` pseudo-random uint64 words from a seed: the ChaCha20 keystream (RFC 8439, from
    ``cryptography``) under the key HKDF-SHA256(seed), counter and nonce zero, read little-endian.
    Every seed is used for one mask only (fresh keys per round), so the fixed nonce is safe."""
    enc = Cipher(algorithms.ChaCha20(_hkdf(seed, b"fedmarket-secagg-prg", 32), bytes(16)), mode=None).encryptor()
    return np.frombuffer(enc.update(bytes(8 * int(d))), dtype="<u8").astype(np.uint64, copy=False)


def shamir_split(secret: int, threshold: int, xs: list[int]) -> list[int]:
    """Shamir shares ``f(x)`` for each ``x`` in ``xs`` of a random degree ``threshold - 1`` polynomial with ``f(0) = secret``."""
    if not 1 <= threshold <= len(xs):
        raise ConfigError(f"threshold must lie in [1, {len(xs)}], got {threshold}")
    if not 0 <= secret < PRIME:
        raise ConfigError("secret out of the field")
    coeffs = [secret] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    out = []
    for x in xs:
        acc = 0
        for c in reversed(coeffs):
            acc = (acc * x + c) % PRIME
        out.append(acc)
    return out


def shamir_decode(points: list[tuple[int, int]], threshold: int) -> list[tuple[int, int]]:
    """The points that lie on the one polynomial of degree ``threshold - 1`` through all but at most
    ``(len(points) - threshold) // 2`` of them (Berlekamp-Welch over the field): the wrong ones are
    the roots of the error locator E, found by solving Q(x_i) = y_i E(x_i) for a monic E of that
    degree. Deterministic, so every party decoding one transcript drops the same shares."""
    m = len(points)
    e = (m - threshold) // 2
    if e <= 0:
        return list(points)
    n_q = threshold + e  # unknowns: Q's coefficients, then E's below its leading 1
    rows = []
    for x, y in points:
        x, y = x % PRIME, y % PRIME
        powers = [pow(x, j, PRIME) for j in range(n_q)]
        rows.append(powers + [(-y * powers[j]) % PRIME for j in range(e)] + [y * pow(x, e, PRIME) % PRIME])
    z = _solve_mod(rows, n_q + e)
    if z is None:
        return []
    locator = z[n_q:] + [1]

    def at(x: int) -> int:
        acc = 0
        for c in reversed(locator):
            acc = (acc * x + c) % PRIME
        return acc

    return [(x, y) for x, y in points if at(x % PRIME) != 0]


def _solve_mod(rows: list[list[int]], n: int) -> list[int] | None:
    """One solution (free unknowns 0) of the linear system whose augmented rows are ``rows`` over
    the field, or None if it has none."""
    rows = [r[:] for r in rows]
    pivots, r = [], 0
    for c in range(n):
        pivot = next((i for i in range(r, len(rows)) if rows[i][c]), None)
        if pivot is None:
            continue
        rows[r], rows[pivot] = rows[pivot], rows[r]
        inv = pow(rows[r][c], -1, PRIME)
        rows[r] = [v * inv % PRIME for v in rows[r]]
        for i in range(len(rows)):
            if i != r and rows[i][c]:
                f = rows[i][c]
                rows[i] = [(a - f * b) % PRIME for a, b in zip(rows[i], rows[r])]
        pivots.append(c)
        r += 1
    if any(row[n] for row in rows[r:]):
        return None
    z = [0] * n
    for i, c in enumerate(pivots):
        z[c] = rows[i][n]
    return z


def shamir_reconstruct(points: list[tuple[int, int]]) -> int:
    """Lagrange interpolation at 0 of the ``(x, y)`` points (distinct non-zero ``x``), one field inversion in all."""
    xs = [x % PRIME for x, _ in points]
    if len(set(xs)) != len(xs) or any(x == 0 for x in xs):
        raise ConfigError("Shamir points need distinct non-zero x")
    nums, dens = [], []
    for i, xi in enumerate(xs):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if j != i:
                num = num * xj % PRIME
                den = den * (xj - xi) % PRIME
        nums.append(num)
        dens.append(den)
    # Montgomery's trick: invert the product of the denominators once
    prefix = [1]
    for den in dens:
        prefix.append(prefix[-1] * den % PRIME)
    inv = pow(prefix[-1], -1, PRIME)
    total = 0
    for i in range(len(xs) - 1, -1, -1):
        inv_i = inv * prefix[i] % PRIME
        inv = inv * dens[i] % PRIME
        total = (total + points[i][1] * nums[i] % PRIME * inv_i) % PRIME
    return total


#: Odds per round, at most, that some honest provider has ``t`` colluding neighbours (its update
#: then open to them): the union bound over the honest providers of an exact hypergeometric tail.
PRIVACY_FAILURE = 1e-9


def sampled_share(n: int, population: int, dishonest: float, privacy_failure: float = PRIVACY_FAILURE) -> float:
    """The share of colluders a round of ``n`` providers drawn at random from ``population`` (of whom
    ``floor(dishonest * population)`` collude) is sized against: the fewest colluders ``c`` that the
    draw exceeds with odds below ``privacy_failure`` (exact hypergeometric tail), never below
    ``floor(dishonest * n)``, as a share whose ``floor(share * n)`` is ``c``. A share ``dishonest``
    of a job's providers puts more than ``floor(dishonest * n)`` in about half of its sampled rounds.
    At least 1 when the round could be all colluders."""
    from scipy.stats import hypergeom

    n, population = int(n), int(population)
    base = math.floor(dishonest * n + 1e-12)
    colluders = math.floor(dishonest * population + 1e-12)
    if n >= population or colluders == 0:
        return dishonest
    c = int(hypergeom.isf(privacy_failure, population, colluders, n))
    while c < n and hypergeom.sf(c, population, colluders, n) > privacy_failure:
        c += 1
    while c > base and hypergeom.sf(c - 1, population, colluders, n) <= privacy_failure:
        c -= 1
    c = max(c, base)
    return 1.0 if c >= n else (c + 0.5) / n


#: Odds per round, at most, that a job sampling its rounds draws a round size its spec did not
#: check (`sampled_shortfall`): such a round commits no update if it cannot be sized safely.
SAMPLED_SIZE_FAILURE = 1e-3


@functools.lru_cache(maxsize=64)
def sampled_shortfall(per_round: int, max_providers: int, dropout: float, dishonest: float) -> str | None:
    """Why some round a job sampling ``per_round`` of up to ``max_providers`` providers draws could
    not lose its dropout once sized for the colluders its draw can hold, or None. Each provider is
    picked on its own (`protocol.selection`), so a round's size varies around ``per_round``: every
    size within the `SAMPLED_SIZE_FAILURE` tails of Poisson(per_round) (wider than the draw from any
    pool) is checked, with the colluders a binomial draw of that size exceeds with odds below
    `PRIVACY_FAILURE` (at least what `sampled_share` gives from any pool)."""
    from scipy.stats import binom, poisson

    lo = max(3, int(poisson.ppf(SAMPLED_SIZE_FAILURE, per_round)))
    hi = min(int(max_providers), int(poisson.isf(SAMPLED_SIZE_FAILURE, per_round)) + 1)
    sizes = np.arange(lo, hi + 1)
    if dishonest == 0 or len(sizes) == 0:
        return None
    c = np.maximum(binom.isf(PRIVACY_FAILURE, sizes, dishonest), 0).astype(np.int64)
    c += binom.sf(c, sizes, dishonest) > PRIVACY_FAILURE  # never below the tail's count
    for n, held in zip(sizes.tolist(), c.tolist()):
        share = 1.0 if held >= n else (held + 0.5) / n
        problem = dropout_shortfall(n, n, dropout, share)
        if problem:
            return (f"a round sampling {per_round} of up to {max_providers} providers can draw {n} of them, of whom "
                    f"{min(held, n)} may collude (max_dishonest {dishonest:g} of the job's providers): too many for it "
                    f"to lose the dropout {dropout:g} it promises: sample more providers per round, lower dropout or "
                    "max_dishonest, or sample none")
    return None


def default_degree(n: int, dropout: float = 0.3, failure: float = 1e-3, dishonest: float = 1 / 3,
                   privacy_failure: float = PRIVACY_FAILURE) -> tuple[int, int]:
    """Neighbourhood degree ``k`` and threshold ``t`` (``k/2 < t <= k``) for ``n`` providers.

    Two tails bound the choice, for a graph whose ring order is uniformly random (a public seed
    fixed after everyone joined):

    - **privacy**: with ``floor(dishonest * n)`` providers colluding with the server, the odds
      that some honest provider has ``t`` or more of them among its ``k`` neighbours (who could
      then rebuild both of its secrets) is at most ``privacy_failure`` (exact hypergeometric tail,
      union bound over the honest providers);
    - **dropout**: with each provider dropping independently with probability ``dropout``, the
      odds that some neighbourhood keeps fewer than ``t`` survivors is at most ``failure`` (exact
      binomial tail, union bound over the ``n`` neighbourhoods).

    Returns the smallest even ``k`` for which a threshold meets both, with the smallest such
    threshold (the most dropout it tolerates); ``k`` grows like ``log(n / failure)``. Otherwise
    the complete graph, with ``t`` above both half the neighbours (the consistency argument) and
    the colluders, who are then every victim's neighbours.
    """
    return _degree(int(n), float(dropout), float(failure), float(dishonest), float(privacy_failure))


@functools.lru_cache(maxsize=256)
def _degree(n: int, dropout: float, failure: float, dishonest: float, privacy_failure: float) -> tuple[int, int]:
    from scipy.stats import binom, hypergeom

    if n < 2:
        raise ConfigError(f"secure aggregation needs at least 2 providers, got {n}")
    if not 0 <= dropout < 1:
        raise ConfigError(f"dropout must lie in [0, 1), got {dropout!r}")
    if not 0 <= dishonest < 1 or dropout + dishonest > 1 - 1e-9:
        raise ConfigError(f"dishonest must lie in [0, 1) and leave room for the dropout, got {dishonest!r} "
                          f"with dropout {dropout!r}")
    colluders = math.floor(dishonest * n + 1e-12)
    honest = n - colluders
    for k in range(2, n - 1, 2):
        ts = np.arange(k // 2 + 1, k + 1)
        private = honest * hypergeom.sf(ts - 1, n - 1, colluders, k) <= privacy_failure
        if not private.any():
            continue
        t = int(ts[np.argmax(private)])
        if n * binom.cdf(t - 1, k, 1 - dropout) <= failure:
            return k, t
    return n - 1, complete_threshold(n, dishonest)


def complete_threshold(n: int, dishonest: float) -> int:
    """The threshold on the complete graph of ``n`` providers: above half the ``n - 1`` neighbours
    (the consistency argument) and above the colluders, who are every honest provider's neighbours."""
    return min(n - 1, max((n - 1) // 2 + 1, math.floor(dishonest * n + 1e-12) + 1))


def confirmation_quorum(n: int, dishonest: float) -> int:
    """Fewest signed confirmations of one survivor set before an honest provider unmasks, in a round
    of ``n`` providers of which ``floor(dishonest * n)`` may collude with the server: more than half
    of ``n`` and the colluders together. Two different sets can then never both reach it: their
    honest confirmers would have to overlap, and an honest provider confirms one set. (With fewer, a
    server that hid the first set and its confirmations from late providers got a second set
    confirmed by them, and one group's self-mask shares and the other's mask-key shares opened a
    victim's update.)"""
    return (n + math.floor(dishonest * n + 1e-12)) // 2 + 1


def dropout_shortfall(lo: int, hi: int, dropout: float, dishonest: float) -> str | None:
    """Why some round of ``lo`` to ``hi`` providers could not lose ``floor(dropout * n)`` of them
    (the round would abort within the dropout it promises), or None: on the complete graph each
    survivor must keep as many surviving neighbours as the threshold, and the survivors must reach
    the `confirmation_quorum`. That needs ``2 dropout + dishonest < 1``; past
    ``max(2 / (1 - dropout - dishonest), 3 / (1 - 2 dropout), 4 / (1 - 2 dropout - dishonest))``
    providers every size fits, so at most that many sizes are looked at."""
    if 2 * dropout + dishonest >= 1:
        return (f"dropout {dropout:g} and max_dishonest {dishonest:g}: a secure round's survivors must outnumber half "
                "of its providers and the colluders together (2 dropout + max_dishonest < 1), or no survivor set "
                "can be confirmed safely")
    last = min(hi, math.ceil(max(2 / (1 - dropout - dishonest), 3 / (1 - 2 * dropout),
                                 4 / (1 - 2 * dropout - dishonest))) + 1)
    for n in range(max(lo, 3), last + 1):
        lost = math.floor(dropout * n)
        kept, t = n - 1 - lost, complete_threshold(n, dishonest)
        if kept < t:
            return (f"a secure round of {n} providers that loses {lost} of them (dropout {dropout:g}) "
                    f"leaves each survivor {kept} surviving neighbours, below the threshold {t} that the consistency "
                    f"check and max_dishonest {dishonest:g} need: lower dropout or max_dishonest, or raise min_providers")
        if n - lost < confirmation_quorum(n, dishonest):
            return (f"a secure round of {n} providers that loses {lost} of them (dropout {dropout:g}) keeps "
                    f"{n - lost} survivors, fewer than the {confirmation_quorum(n, dishonest)} confirmations a survivor "
                    f"set needs with max_dishonest {dishonest:g}: lower dropout or max_dishonest, or raise min_providers")
    return None


def neighbour_graph(n: int, k: int, seed: bytes) -> list[np.ndarray]:
    """Random Harary graph: providers on a ring in a public random order, each linked to ``k/2`` on each side.

    ``k >= n - 1`` gives the complete graph. Every provider gets exactly ``min(k, n - 1)``
    neighbours (``k`` rounded up to even); the result is sorted neighbour ids per provider.
    """
    if n < 2 or k < 1:
        raise ConfigError(f"need n >= 2 and k >= 1, got n={n}, k={k}")
    if k >= n - 1 or 2 * math.ceil(k / 2) >= n - 1:
        return [np.delete(np.arange(n), u) for u in range(n)]
    half = math.ceil(k / 2)
    key = int.from_bytes(_hkdf(seed, b"fedmarket-secagg-graph", 16), "little")
    order = np.random.Generator(np.random.Philox(key=key)).permutation(n)
    pos = np.empty(n, dtype=np.int64)
    pos[order] = np.arange(n)
    offs = np.concatenate([np.arange(1, half + 1), -np.arange(1, half + 1)])
    return [np.sort(order[(pos[u] + offs) % n]) for u in range(n)]


def to_ring(x: np.ndarray) -> np.ndarray:
    """int64 fixed-point values as uint64 ring elements (two's complement, no copy of meaning)."""
    x = np.asarray(x)
    if x.dtype.kind not in "iu":
        raise ConfigError(f"secure aggregation takes integer (fixed-point) updates, got dtype {x.dtype}")
    return x.astype(np.int64, copy=False).ravel().view(np.uint64)


def from_ring(y: np.ndarray) -> np.ndarray:
    """uint64 ring elements back to int64 (the exact sum when it lies in the int64 range)."""
    return np.asarray(y, dtype=np.uint64).view(np.int64)


def encode_weighted(q: np.ndarray, weight: int) -> np.ndarray:
    """``[w * q, w]``: what a provider masks so the sum gives ``fedavg_int`` (see :func:`decode_weighted`)."""
    w = int(weight)
    if w < 0:
        raise ConfigError(f"weight must be non-negative, got {weight}")
    q = np.asarray(q, dtype=np.int64).ravel()
    return np.concatenate([q * np.int64(w), np.array([w], dtype=np.int64)])


def decode_weighted(total: np.ndarray) -> np.ndarray:
    """``floor(sum w q / sum w)`` from the unmasked sum of :func:`encode_weighted` vectors: exactly ``fedavg_int``."""
    total = np.asarray(total, dtype=np.int64)
    w = int(total[-1])
    if w <= 0:
        raise ConfigError("weights must have a positive sum")
    return total[:-1] // np.int64(w)


# ----------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class SecAggConfig:
    """Public parameters of one secure-aggregation round.

    Attributes
    ----------
    n : int
        Providers selected for the round (ids ``0..n-1``).
    d : int
        Length of the integer vector each provider contributes.
    k, threshold : int
        Neighbourhood degree and Shamir threshold ``t``.
    min_survivors : int
        Fewest masked inputs the round accepts (at least ``threshold``).
    round_id : bytes
        Binds every key, share and mask to this round (e.g. job id || round || chain id).
    graph_seed : bytes
        Public seed of the neighbour graph (e.g. the previous block hash).
    dishonest : float
        Share of the round's providers it is sized against colluding with the server.
    """

    n: int
    d: int
    k: int
    threshold: int
    min_survivors: int
    round_id: bytes = b"fedmarket"
    graph_seed: bytes = b"fedmarket-graph"
    dishonest: float = 1 / 3

    @classmethod
    def for_population(
        cls,
        n: int,
        d: int,
        *,
        dropout: float = 0.3,
        failure: float = 1e-3,
        dishonest: float = 1 / 3,
        round_id: bytes = b"fedmarket",
        graph_seed: bytes = b"fedmarket-graph",
        min_survivors: int | None = None,
    ) -> SecAggConfig:
        """Parameters for ``n`` providers expecting up to ``dropout`` of them to drop and up to
        ``dishonest`` of them to collude with the server (see :func:`default_degree`)."""
        k, t = default_degree(n, dropout, failure, dishonest)
        return cls(n, d, k, t, t if min_survivors is None else int(min_survivors), round_id, graph_seed, dishonest)

    def __post_init__(self) -> None:
        if self.n < 2 or self.d < 1:
            raise ConfigError(f"need n >= 2 providers and d >= 1, got n={self.n}, d={self.d}")
        k_eff = min(self.k, self.n - 1)
        if not 1 <= self.threshold <= k_eff:
            raise ConfigError(f"threshold must lie in [1, {k_eff}], got {self.threshold}")
        if self.min_survivors < self.threshold:
            raise ConfigError(f"min_survivors ({self.min_survivors}) must be at least the threshold ({self.threshold})")


@dataclass(frozen=True)
class AdvertiseKeys:
    """Round 0, provider -> server: channel and mask public keys and a commitment to the self-mask seed."""

    uid: int
    c_pk: bytes
    s_pk: bytes
    b_commit: bytes

    def nbytes(self) -> int:
        return 4 + len(self.c_pk) + len(self.s_pk) + len(self.b_commit)


@dataclass(frozen=True)
class EncryptedShare:
    """Round 1, provider ``src`` -> server -> ``dst``: AES-GCM(nonce || ciphertext) of its two shares for ``dst``."""

    src: int
    dst: int
    blob: bytes

    def nbytes(self) -> int:
        return 8 + len(self.blob)


@dataclass(frozen=True)
class MaskedInput:
    """Round 2, provider -> server: the masked vector, uint64 little-endian."""

    uid: int
    data: bytes

    def nbytes(self) -> int:
        return 4 + len(self.data)


@dataclass(frozen=True)
class UnmaskResponse:
    """Round 3, provider -> server: per sharing neighbour, one share (of ``b_u`` if it survived, of its mask key otherwise)."""

    uid: int
    b_shares: dict[int, int] = field(default_factory=dict)
    sk_shares: dict[int, int] = field(default_factory=dict)

    def nbytes(self) -> int:
        return 4 + (4 + FIELD_BYTES) * (len(self.b_shares) + len(self.sk_shares))


def _aad(cfg: SecAggConfig, src: int, dst: int) -> bytes:
    return cfg.round_id + src.to_bytes(4, "big") + dst.to_bytes(4, "big")


def _commit(cfg: SecAggConfig, uid: int, b: bytes) -> bytes:
    return hashlib.sha256(b"fedmarket-secagg-b" + cfg.round_id + uid.to_bytes(4, "big") + b).digest()


def _pair_seed(cfg: SecAggConfig, sk: X25519PrivateKey, pk: bytes) -> bytes:
    return _hkdf(sk.exchange(X25519PublicKey.from_public_bytes(pk)), b"fedmarket-secagg-mask" + cfg.round_id)


def _channel(cfg: SecAggConfig, sk: X25519PrivateKey, pk: bytes) -> AESGCM:
    return AESGCM(_hkdf(sk.exchange(X25519PublicKey.from_public_bytes(pk)), b"fedmarket-secagg-channel" + cfg.round_id))


# ----------------------------------------------------------------------------- provider


class SecAggClient:
    """One provider's side of a round; call the four round methods in order."""

    def __init__(self, uid: int, cfg: SecAggConfig, neighbours: np.ndarray):
        self.uid, self.cfg = int(uid), cfg
        self.neighbours = [int(v) for v in neighbours]
        self._c_sk = X25519PrivateKey.generate()
        self._s_sk = X25519PrivateKey.generate()
        self._b = secrets.token_bytes(KEY_BYTES)
        self._keys: dict[int, AdvertiseKeys] = {}
        self._shares_in: dict[int, tuple[int, int]] = {}  # sender -> (mask-key share, self-mask share)
        self._masked = False
        self._confirmed: frozenset[int] | None = None
        self._response: UnmaskResponse | None = None
        self._channels: dict[int, AESGCM] = {}

    def _channel_to(self, v: int) -> AESGCM:
        # one agreement per neighbour serves both directions (the AAD names sender and receiver)
        if v not in self._channels:
            self._channels[v] = _channel(self.cfg, self._c_sk, self._keys[v].c_pk)
        return self._channels[v]

    def advertise(self) -> AdvertiseKeys:
        """Round 0."""
        return AdvertiseKeys(
            self.uid,
            self._c_sk.public_key().public_bytes(_RAW, _RAW_PUB),
            self._s_sk.public_key().public_bytes(_RAW, _RAW_PUB),
            _commit(self.cfg, self.uid, self._b),
        )

    def share_keys(self, keys: dict[int, AdvertiseKeys]) -> list[EncryptedShare]:
        """Round 1: Shamir-share ``b_u`` and the mask key among the neighbours that advertised keys."""
        if self._keys:
            raise SecAggAbort(f"provider {self.uid}: already shared its secrets this round")
        self._keys = {v: keys[v] for v in self.neighbours if v in keys}
        holders = sorted(self._keys)
        if len(holders) < self.cfg.threshold:
            raise SecAggAbort(
                f"provider {self.uid}: only {len(holders)} neighbours advertised keys, threshold {self.cfg.threshold}"
            )
        xs = [v + 1 for v in holders]
        sk_int = int.from_bytes(self._s_sk.private_bytes(_RAW, _RAW_PRIV, _NOENC), "big")
        sk_sh = shamir_split(sk_int, self.cfg.threshold, xs)
        b_sh = shamir_split(int.from_bytes(self._b, "big"), self.cfg.threshold, xs)
        out = []
        for v, s1, s2 in zip(holders, sk_sh, b_sh):
            nonce = os.urandom(12)
            pt = s1.to_bytes(FIELD_BYTES, "big") + s2.to_bytes(FIELD_BYTES, "big")
            ct = self._channel_to(v).encrypt(nonce, pt, _aad(self.cfg, self.uid, v))
            out.append(EncryptedShare(self.uid, v, nonce + ct))
        return out

    def masked_input(self, x: np.ndarray, shares: list[EncryptedShare]) -> MaskedInput:
        """Round 2: mask ``x`` (int64, length ``d``) with the self-mask and one pairwise mask per neighbour that shared.

        Refuses (SecAggAbort) with fewer than ``t`` authentic shares from distinct neighbours: a
        server that routed too few could otherwise learn ``b_u`` from the others and be left with
        masks that only its accomplices share. Masks at most once per round."""
        if self._masked:
            raise SecAggAbort(f"provider {self.uid}: already masked an input this round (one release per round)")
        y = to_ring(x)
        if y.size != self.cfg.d:
            raise ConfigError(f"provider {self.uid}: input has {y.size} entries, round expects {self.cfg.d}")
        self._shares_in = {}
        for s in shares:
            if s.dst != self.uid or s.src not in self._keys:
                continue
            if s.src in self._shares_in:
                raise SecAggAbort(f"provider {self.uid}: two shares from provider {s.src}")
            self._shares_in[s.src] = self._open_share(s)
        if len(self._shares_in) < self.cfg.threshold:
            raise SecAggAbort(
                f"provider {self.uid}: received {len(self._shares_in)} shares, threshold {self.cfg.threshold}; "
                "refusing to mask (its input would be recoverable)"
            )
        y = y + prg_mask(self._b, self.cfg.d)
        for v in sorted(self._shares_in):
            m = prg_mask(_pair_seed(self.cfg, self._s_sk, self._keys[v].s_pk), self.cfg.d)
            y = y + m if self.uid < v else y - m
        self._masked = True
        return MaskedInput(self.uid, y.tobytes())

    def _open_share(self, share: EncryptedShare) -> tuple[int, int]:
        """(mask-key share, self-mask share) that ``share.src`` sent this provider; ShareTampered if not authentic."""
        try:
            pt = self._channel_to(share.src).decrypt(share.blob[:12], share.blob[12:], _aad(self.cfg, share.src, self.uid))
        except InvalidTag:
            raise ShareTampered(f"provider {self.uid}: the share from provider {share.src} failed authentication") from None
        return int.from_bytes(pt[:FIELD_BYTES], "big"), int.from_bytes(pt[FIELD_BYTES:], "big")

    def confirm(self, survivors: set[int] | frozenset[int], seen_masked: set[int] | frozenset[int] = frozenset()
                ) -> frozenset[int]:
        """Consistency check (Bonawitz et al., round 3): the survivor set this provider vouches for
        (the caller signs it). One set per round: a second, different one is refused. So is a set
        that leaves out a neighbour whose masked input this provider saw before the set existed
        (``seen_masked``, uids): on a sparse graph a server dropping the live partners around a
        few providers could unmask their sum apart from the rest's, with a fraction of the noise
        (refused here, the dropped partner's mask key stays with its honest neighbours, and no sum
        of the round unmasks)."""
        survivors = frozenset(int(u) for u in survivors)
        cut = (frozenset(int(u) for u in seen_masked) & frozenset(self._shares_in or ())) - survivors
        if self._masked and cut:
            raise SecAggAbort(f"provider {self.uid}: the survivor set leaves out {len(cut)} neighbour(s) whose masked "
                              f"input it saw before the set (first {min(cut)}); refusing to confirm or unmask")
        if not self._masked:
            raise SecAggAbort(f"provider {self.uid}: asked to confirm survivors before masking")
        if self._confirmed is not None and self._confirmed != survivors:
            raise SecAggAbort(f"provider {self.uid}: already confirmed another survivor set this round")
        if self.uid not in survivors:
            # its masked input left out: answering would reveal the mask keys of its neighbours'
            # partners and the self-mask shares of survivors whose every other partner was left out
            # too, which isolates one of them (the server picks the set); it answers nothing
            raise SecAggAbort(f"provider {self.uid}: left out of the survivor set although it masked; refusing to "
                              "confirm or unmask")
        if len(survivors) < self.cfg.min_survivors:
            raise SecAggAbort(
                f"provider {self.uid}: survivor set of {len(survivors)} is below the round's {self.cfg.min_survivors}"
            )
        self._confirmed = survivors
        return survivors

    def unmask(self, survivors: set[int] | frozenset[int], confirmed_by: set[int] | frozenset[int]) -> UnmaskResponse:
        """Round 4: for each neighbour that shared, reveal its ``b`` share if it is in ``survivors``, its key share otherwise.

        Only for the survivor set this provider confirmed, once ``confirmed_by`` (providers whose
        signed confirmation of exactly that set the caller verified) holds at least
        ``min_survivors`` of its members; and only once per round (the same set gets the same answer)."""
        survivors = frozenset(int(u) for u in survivors)
        if not self._masked:
            raise SecAggAbort(f"provider {self.uid}: asked to unmask before masking")
        if self._confirmed != survivors:
            raise SecAggAbort(f"provider {self.uid}: asked to unmask for a survivor set it did not confirm")
        if self._response is not None:
            return self._response
        quorum = len(frozenset(confirmed_by) & survivors)
        if quorum < self.cfg.min_survivors:
            raise SecAggAbort(
                f"provider {self.uid}: only {quorum} survivors confirmed the survivor set, the round needs "
                f"{self.cfg.min_survivors}; refusing to unmask"
            )
        if len(survivors & set(self._keys)) < self.cfg.threshold:
            raise SecAggAbort(
                f"provider {self.uid}: fewer than {self.cfg.threshold} surviving neighbours, refusing to unmask"
            )
        resp = UnmaskResponse(self.uid)
        for u, (sk_share, b_share) in self._shares_in.items():
            if u in survivors:
                resp.b_shares[u] = b_share
            else:
                resp.sk_shares[u] = sk_share
        self._response = resp
        return resp


# ----------------------------------------------------------------------------- server


class SecAggServer:
    """The aggregator's side: routes messages, checks thresholds, removes the masks."""

    def __init__(self, cfg: SecAggConfig, graph: list[np.ndarray]):
        self.cfg, self.graph = cfg, graph
        self.keys: dict[int, AdvertiseKeys] = {}
        self.shared: set[int] = set()  # U1: providers whose shares were routed
        self.routed: dict[int, list[EncryptedShare]] = {}
        self.masked: dict[int, np.ndarray] = {}  # U2

    def collect_keys(self, msgs: list[AdvertiseKeys]) -> dict[int, dict[int, AdvertiseKeys]]:
        """Round 0: what each provider receives, its neighbours' advertisements."""
        self.keys = {m.uid: m for m in msgs}
        if len(self.keys) < self.cfg.min_survivors:
            raise SecAggAbort(
                f"only {len(self.keys)} providers advertised keys, the round needs {self.cfg.min_survivors}"
            )
        return {u: {v: self.keys[v] for v in self.graph[u] if v in self.keys} for u in self.keys}

    def route_shares(self, per_client: dict[int, list[EncryptedShare]]) -> dict[int, list[EncryptedShare]]:
        """Round 1: forward each encrypted share to its receiver."""
        self.shared = set(per_client)
        if len(self.shared) < self.cfg.min_survivors:
            raise SecAggAbort(
                f"only {len(self.shared)} providers shared their keys, the round needs {self.cfg.min_survivors}"
            )
        self.routed = {u: [] for u in self.shared}
        for u, shares in per_client.items():
            for s in shares:
                if s.src != u:
                    raise ShareTampered(f"provider {u} sent a share claiming to come from {s.src}")
                if s.dst in self.routed:
                    self.routed[s.dst].append(s)
        return self.routed

    def collect_masked(self, msgs: list[MaskedInput]) -> frozenset[int]:
        """Round 2: store the masked inputs; return the survivor set ``U2`` sent to everyone."""
        for m in msgs:
            if m.uid not in self.shared:
                continue
            y = np.frombuffer(m.data, dtype=np.uint64)
            if y.size != self.cfg.d:
                raise SecAggAbort(f"provider {m.uid} sent {y.size} masked values, the round expects {self.cfg.d}")
            self.masked[m.uid] = y
        if len(self.masked) < self.cfg.min_survivors:
            raise SecAggAbort(
                f"only {len(self.masked)} masked inputs arrived, below the threshold of {self.cfg.min_survivors} survivors; "
                "round aborted, nothing committed"
            )
        return frozenset(self.masked)

    def _rebuild(self, u: int, shares: dict[int, int], what: str, fits) -> int | None:
        """Provider `u`'s secret from its neighbours' shares: from the first `threshold` of them, or,
        if that misses what `fits` checks (its commitment, its public key), from the shares left
        once the wrong ones are decoded out (`shamir_decode`). One wrong share from one neighbour
        must not void the round while more than the threshold answered right. None if no
        reconstruction fits."""
        if len(shares) < self.cfg.threshold:
            raise SecAggAbort(
                f"cannot recover the {what} of provider {u}: {len(shares)} of its neighbours answered, threshold "
                f"{self.cfg.threshold}; round aborted, nothing committed"
            )
        pts = [(v + 1, s) for v, s in sorted(shares.items())]
        secret = shamir_reconstruct(pts[: self.cfg.threshold])
        if fits(secret):
            return secret
        good = shamir_decode(pts, self.cfg.threshold)
        if len(good) >= self.cfg.threshold:
            secret = shamir_reconstruct(good[: self.cfg.threshold])
            if fits(secret):
                return secret
        return None

    def _seed_fits(self, u: int, value: int) -> bool:
        return value < 2 ** (8 * KEY_BYTES) and _commit(self.cfg, u, value.to_bytes(KEY_BYTES, "big")) == self.keys[u].b_commit

    def _key_fits(self, u: int, value: int) -> bool:
        if not value < 2 ** (8 * KEY_BYTES):
            return False
        try:
            sk = X25519PrivateKey.from_private_bytes(value.to_bytes(KEY_BYTES, "big"))
        except ValueError:
            return False
        return sk.public_key().public_bytes(_RAW, _RAW_PUB) == self.keys[u].s_pk

    def unmask(self, responses: list[UnmaskResponse]) -> np.ndarray:
        """Round 3: rebuild the self-masks of ``U2`` and the mask keys of ``U1 \\ U2``; return the exact int64 sum over ``U2``."""
        survivors = set(self.masked)
        b_sh: dict[int, dict[int, int]] = {u: {} for u in survivors}
        sk_sh: dict[int, dict[int, int]] = {u: {} for u in self.shared - survivors}
        for r in responses:
            for u, s in r.b_shares.items():
                if u in b_sh and u in self.graph[r.uid]:
                    b_sh[u][r.uid] = s
            for u, s in r.sk_shares.items():
                if u in sk_sh and u in self.graph[r.uid]:
                    sk_sh[u][r.uid] = s
        total = np.zeros(self.cfg.d, dtype=np.uint64)
        for u in sorted(survivors):
            total += self.masked[u]
        for u in sorted(survivors):
            b_int = self._rebuild(u, b_sh[u], "self-mask seed", lambda v, u=u: self._seed_fits(u, v))
            if b_int is None:
                raise ShareTampered(f"the shares of provider {u}'s self-mask seed do not reconstruct the seed it "
                                    f"committed to (holders {sorted(b_sh[u])})")
            total -= prg_mask(b_int.to_bytes(KEY_BYTES, "big"), self.cfg.d)
        for u in sorted(self.shared - survivors):
            sk_int = self._rebuild(u, sk_sh[u], "mask key", lambda v, u=u: self._key_fits(u, v))
            if sk_int is None:
                raise ShareTampered(f"the shares of provider {u}'s mask key do not reconstruct its public key's "
                                    f"(holders {sorted(sk_sh[u])})")
            sk = X25519PrivateKey.from_private_bytes(sk_int.to_bytes(KEY_BYTES, "big"))
            # every surviving neighbour v that received u's shares masked with s_uv; undo v's sign
            for v in self.graph[u]:
                v = int(v)
                if v in survivors and v in self.keys:
                    m = prg_mask(_pair_seed(self.cfg, sk, self.keys[v].s_pk), self.cfg.d)
                    total = total - m if v < u else total + m
        return from_ring(total).copy()


# ----------------------------------------------------------------------------- one whole round, in process


@dataclass
class RoundResult:
    """What :func:`run_round` measured."""

    total: np.ndarray
    survivors: frozenset[int]
    client_bytes: dict[int, int]
    client_seconds: dict[int, float]
    server_seconds: float
    masked: dict[int, np.ndarray] = field(default_factory=dict)  # survivors' masked inputs, as the server holds them


def run_round(
    cfg: SecAggConfig,
    inputs: dict[int, np.ndarray],
    *,
    drop_before_share: set[int] = frozenset(),
    drop_before_mask: set[int] = frozenset(),
    drop_after_mask: set[int] = frozenset(),
    tamper: callable | None = None,
) -> RoundResult:
    """Run one round with every provider in process, dropping the given providers at the given stage.

    Parameters
    ----------
    cfg : SecAggConfig
    inputs : dict
        int64 vector of length ``cfg.d`` per provider id (ids ``0..n-1``; absent ids never show up).
    drop_before_share, drop_before_mask, drop_after_mask : set of int
        Providers that vanish after advertising keys, after sharing, and after sending their
        masked input (before confirming the survivor set and unmasking).
    tamper : callable, optional
        ``tamper(stage, message) -> message`` applied by a man in the middle to every
        ``EncryptedShare`` (stage ``"share"``) and ``UnmaskResponse`` (stage ``"unmask"``).

    Raises
    ------
    SecAggAbort
        Too few survivors anywhere it matters; :class:`ShareTampered` on a bad share.
    """
    graph = neighbour_graph(cfg.n, cfg.k, cfg.graph_seed)
    t_client: dict[int, float] = {u: 0.0 for u in inputs}
    nbytes: dict[int, int] = {u: 0 for u in inputs}

    def timed(u, fn, *a):
        t0 = time.perf_counter()
        out = fn(*a)
        t_client[u] += time.perf_counter() - t0
        return out

    server = SecAggServer(cfg, graph)
    t_server = 0.0
    clients = {u: SecAggClient(u, cfg, graph[u]) for u in inputs}
    adv = {u: timed(u, c.advertise) for u, c in clients.items()}
    for u, m in adv.items():
        nbytes[u] += m.nbytes()
    t0 = time.perf_counter()
    keys_for = server.collect_keys(list(adv.values()))
    t_server += time.perf_counter() - t0

    alive = [u for u in clients if u not in drop_before_share]
    shares = {u: timed(u, clients[u].share_keys, keys_for[u]) for u in alive}
    for u, ss in shares.items():
        nbytes[u] += sum(s.nbytes() for s in ss)
        if tamper is not None:
            shares[u] = [tamper("share", s) for s in ss]
    t0 = time.perf_counter()
    routed = server.route_shares(shares)
    t_server += time.perf_counter() - t0

    alive = [u for u in alive if u not in drop_before_mask]
    masked = [timed(u, clients[u].masked_input, inputs[u], routed[u]) for u in alive]
    for m in masked:
        nbytes[m.uid] += m.nbytes()
    t0 = time.perf_counter()
    survivors = server.collect_masked(masked)
    t_server += time.perf_counter() - t0

    alive = [u for u in alive if u not in drop_after_mask]
    confirmed = frozenset(u for u in alive if timed(u, clients[u].confirm, survivors) == survivors)
    responses = [timed(u, clients[u].unmask, survivors, confirmed) for u in alive]
    for r in responses:
        nbytes[r.uid] += r.nbytes()
    if tamper is not None:
        responses = [tamper("unmask", r) for r in responses]
    t0 = time.perf_counter()
    total = server.unmask(responses)
    t_server += time.perf_counter() - t0
    return RoundResult(total, survivors, nbytes, t_client, t_server, dict(server.masked))
