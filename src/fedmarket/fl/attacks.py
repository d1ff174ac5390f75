"""Attack catalogue for simulations: data poisoning, model poisoning, free-riders and Sybils.

An :class:`Attack` acts at two points of a malicious client's round: on its
local data before training (``poison_data``; label flipping, backdoor) and on
the updates it submits (``poison_updates``; sign flipping, scaling, noise,
"a little is enough", free-riding, Sybil copies). The math is in pure
functions; the classes only hold parameters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist
from typing import Any, ClassVar

import numpy as np

from fedmarket.errors import ConfigError
from fedmarket.fl.registry import Registry

# ---------------------------------------------------------------- pure functions


def flip_labels(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Map every label ``c`` to ``n_classes - 1 - c`` (Tolpegin et al., 2020)."""
    return (int(n_classes) - 1 - np.asarray(y)).astype(np.int64)


def alie_z(n: int, m: int) -> float:
    """The z of "a little is enough" (Baruch et al., 2019) for ``n`` clients of which ``m`` are malicious.

    ``s = floor(n / 2 + 1) - m`` honest clients must be won over;
    ``z = Phi^-1((n - s) / n)``. At least 0 (when no honest client need be won over).
    """
    s = math.floor(n / 2 + 1) - m
    p = (n - s) / n
    if p <= 0.5:
        return 0.0
    return NormalDist().inv_cdf(min(p, 1 - 1e-12))


def alie_update(U: np.ndarray, z: float) -> np.ndarray:
    """``mean - z * std`` per coordinate of the updates ``U`` ``(m, d)``: as far off as a robust rule still accepts."""
    return U.mean(axis=0) - z * U.std(axis=0)


def default_trigger(n_features: int) -> np.ndarray:
    """Feature indices of a backdoor trigger: a 4x4 patch in the bottom-right corner of square images
    (``n_features = s * s``, ``s >= 8``), otherwise the last ``max(1, n_features // 16)`` features."""
    s = math.isqrt(n_features)
    if s * s == n_features and s >= 8:
        rows, cols = np.meshgrid(np.arange(s - 5, s - 1), np.arange(s - 5, s - 1), indexing="ij")
        return (rows * s + cols).ravel().astype(np.int64)
    k = max(1, n_features // 16)
    return np.arange(n_features - k, n_features, dtype=np.int64)


def stamp_trigger(X: np.ndarray, trigger: np.ndarray, value: float) -> np.ndarray:
    """Return a copy of ``X`` with the trigger features set to ``value``."""
    out = np.array(X, dtype=np.float64, copy=True)
    out[:, trigger] = value
    return out


# ---------------------------------------------------------------- the catalogue


class Attack:
    """An attack run by every malicious client (colluding where the attack says so).

    Attributes
    ----------
    name : str
        Catalogue name.
    """

    name: ClassVar[str] = ""
    #: whether the attack needs the round's honest updates (see :class:`Adaptive`)
    omniscient: ClassVar[bool] = False

    def poison_data(
        self, X: np.ndarray, y: np.ndarray, n_classes: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return the data a malicious client trains on (default: its own, unchanged)."""
        return X, y

    def poison_updates(self, U: np.ndarray, n_total: int, rng: np.random.Generator) -> np.ndarray:
        """Return the updates the malicious clients submit.

        Parameters
        ----------
        U : numpy.ndarray
            What the ``m`` malicious clients' honest training (on their
            possibly poisoned data) produced this round, ``(m, d)``.
        n_total : int
            Number of clients taking part in the round (honest included).
        rng : numpy.random.Generator
            Randomness of the attack.

        Returns
        -------
        numpy.ndarray
            ``(m, d)`` submitted updates (default: ``U`` unchanged).
        """
        return U

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


class LabelFlip(Attack):
    """Train honestly on flipped labels (``c -> n_classes - 1 - c``)."""

    name = "label_flip"

    def poison_data(self, X, y, n_classes, rng):
        return X, flip_labels(y, n_classes)


class SignFlip(Attack):
    """Submit ``-scale`` times the honest update (pushes the model uphill)."""

    name = "sign_flip"

    def __init__(self, scale: float = 4.0) -> None:
        if not np.isfinite(scale) or scale <= 0:
            raise ConfigError(f"scale must be a positive number, got {scale!r}")
        self.scale = float(scale)

    def poison_updates(self, U, n_total, rng):
        return -self.scale * U


class Scaling(Attack):
    """Submit ``factor`` times the honest update (boosting, to dominate an average)."""

    name = "scaling"

    def __init__(self, factor: float = 20.0) -> None:
        if not np.isfinite(factor):
            raise ConfigError(f"factor must be finite, got {factor!r}")
        self.factor = float(factor)

    def poison_updates(self, U, n_total, rng):
        return self.factor * U


class GaussianNoise(Attack):
    """Submit pure Gaussian noise ``N(0, sigma^2 I)`` instead of an update."""

    name = "gaussian"

    def __init__(self, sigma: float = 1.0) -> None:
        if not np.isfinite(sigma) or sigma <= 0:
            raise ConfigError(f"sigma must be a positive number, got {sigma!r}")
        self.sigma = float(sigma)

    def poison_updates(self, U, n_total, rng):
        return rng.normal(0.0, self.sigma, size=U.shape)


class ALIE(Attack):
    """"A little is enough" (Baruch et al., 2019): all malicious clients submit ``mean - z * std`` of their honest updates.

    Parameters
    ----------
    z : float, optional
        The shift in standard deviations; by default :func:`alie_z` of the
        round's client count and malicious count.
    """

    name = "alie"

    def __init__(self, z: float | None = None) -> None:
        if z is not None and not np.isfinite(z):
            raise ConfigError(f"z must be finite, got {z!r}")
        self.z = None if z is None else float(z)

    def poison_updates(self, U, n_total, rng):
        z = alie_z(n_total, U.shape[0]) if self.z is None else self.z
        return np.tile(alie_update(U, z), (U.shape[0], 1))


class Backdoor(Attack):
    """Backdoor (Bagdasaryan et al., 2020): train with a trigger patch stamped on part of the data, relabelled.

    Parameters
    ----------
    target : int, optional
        Label the trigger should produce (default 0).
    fraction : float, optional
        Fraction of the local samples that are copied, stamped and relabelled,
        in ``(0, 1]`` (default 0.5); the copies are added to the clean data.
    trigger : sequence of int, optional
        Feature indices of the trigger (default :func:`default_trigger`).
    value : float, optional
        Value written into the trigger features (default 1.0, the top of the
        normalised pixel range).
    boost : float, optional
        Factor applied to the submitted update (default 1: no boosting).
    """

    name = "backdoor"

    def __init__(
        self,
        target: int = 0,
        fraction: float = 0.5,
        trigger: Sequence[int] | None = None,
        value: float = 1.0,
        boost: float = 1.0,
    ) -> None:
        if not 0.0 < fraction <= 1.0:
            raise ConfigError(f"fraction must lie in (0, 1], got {fraction!r}")
        if int(target) != target or target < 0:
            raise ConfigError(f"target must be a non-negative integer label, got {target!r}")
        self.target = int(target)
        self.fraction = float(fraction)
        self.trigger = None if trigger is None else np.asarray(trigger, dtype=np.int64)
        self.value = float(value)
        self.boost = float(boost)

    def trigger_for(self, n_features: int) -> np.ndarray:
        """The trigger's feature indices for data with ``n_features`` features."""
        return default_trigger(n_features) if self.trigger is None else self.trigger

    def poison_data(self, X, y, n_classes, rng):
        if self.target >= n_classes:
            raise ConfigError(f"backdoor target {self.target} is not one of the {n_classes} classes")
        k = max(1, int(round(self.fraction * X.shape[0])))
        pick = rng.choice(X.shape[0], size=k, replace=False)
        Xp = stamp_trigger(X[pick], self.trigger_for(X.shape[1]), self.value)
        return np.concatenate([X, Xp]), np.concatenate([y, np.full(k, self.target, dtype=np.int64)])

    def poison_updates(self, U, n_total, rng):
        return self.boost * U if self.boost != 1.0 else U

    def success_rate(self, model: Any, params: np.ndarray, X: np.ndarray, y: np.ndarray) -> float:
        """Fraction of samples not of the target class that the trigger turns into the target class."""
        keep = np.asarray(y) != self.target
        Xt = stamp_trigger(np.asarray(X)[keep], self.trigger_for(X.shape[1]), self.value)
        return float(np.mean(model.predict(params, Xt) == self.target))


class FreeRider(Attack):
    """Free-riders: do not train, submit the global model back (``mode="global"``: a zero update)
    or small noise made to look like work (``mode="noise"``)."""

    name = "free_rider"

    def __init__(self, mode: str = "global", sigma: float = 1e-3) -> None:
        if mode not in ("global", "noise"):
            raise ConfigError(f"free-rider mode must be 'global' or 'noise', got {mode!r}")
        if not np.isfinite(sigma) or sigma <= 0:
            raise ConfigError(f"sigma must be a positive number, got {sigma!r}")
        self.mode = mode
        self.sigma = float(sigma)

    def poison_updates(self, U, n_total, rng):
        if self.mode == "global":
            return np.zeros_like(U)
        return rng.normal(0.0, self.sigma, size=U.shape)


class Sybil(Attack):
    """Sybils: the malicious clients are copies of one attacker and all submit its (poisoned) update.

    Parameters
    ----------
    base : Attack, optional
        What the attacker does (default :class:`LabelFlip`); every Sybil
        submits a copy of the first malicious client's result.
    """

    name = "sybil"

    def __init__(self, base: Attack | None = None) -> None:
        if base is not None and not isinstance(base, Attack):
            raise ConfigError(f"base must be an Attack, got {base!r}")
        self.base = base if base is not None else LabelFlip()

    def poison_data(self, X, y, n_classes, rng):
        return self.base.poison_data(X, y, n_classes, rng)

    def poison_updates(self, U, n_total, rng):
        first = self.base.poison_updates(U, n_total, rng)[:1]
        return np.repeat(first, U.shape[0], axis=0)


# ---------------------------------------------------------------- adaptive attacks
# They know every honest update of the round (an omniscient colluding minority) and craft theirs
# against it: `craft` gets the honest updates and, for the rule-aware one, the aggregation rule.


def perturbations(B: np.ndarray) -> dict[str, np.ndarray]:
    """Shejwalkar and Houmansadr (2021)'s directions away from the honest mean of ``B`` ``(h, d)``:
    the inverse unit vector, the inverse standard deviation and the inverse sign."""
    mu = B.mean(axis=0)
    norm = float(np.linalg.norm(mu)) or 1.0
    return {"unit": -mu / norm, "std": -B.std(axis=0), "sign": -np.sign(mu)}


def _largest_gamma(ok, start: float = 1.0, steps: int = 30) -> float:
    """The largest ``gamma >= 0`` with ``ok(gamma)`` (``ok`` monotone: true up to a point), by doubling then bisection."""
    lo, hi = 0.0, start
    while ok(hi) and hi < 1e12:
        lo, hi = hi, 2 * hi
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


class Adaptive(Attack):
    """Base of the attacks that see the round's honest updates (``omniscient``)."""

    omniscient: ClassVar[bool] = True

    def poison_updates(self, U, n_total, rng):
        raise ConfigError(f"attack {self.name} needs the round's honest updates: use craft()")

    def craft(self, U: np.ndarray, honest: np.ndarray, n_total: int, rng: np.random.Generator,
              aggregate=None) -> np.ndarray:
        """The malicious clients' updates ``(m, d)`` given their own ``U`` and the ``honest`` ones
        ``(h, d)``; ``aggregate(updates) -> delta`` is the round's rule (for rule-aware attacks)."""
        raise NotImplementedError


class _BallAttack(Adaptive):
    """``mean + gamma * p`` with the largest ``gamma`` keeping the update inside the honest spread
    (the best of the three directions of :func:`perturbations` for the rule, when it is known)."""

    def inside(self, m: np.ndarray, B: np.ndarray) -> bool:
        raise NotImplementedError

    def craft(self, U, honest, n_total, rng, aggregate=None):
        B = np.asarray(honest, dtype=np.float64)
        mu = B.mean(axis=0)
        best, best_dev = None, -np.inf
        for p in perturbations(B).values():
            g = _largest_gamma(lambda gamma: self.inside(mu + gamma * p, B))
            cand = np.tile(mu + g * p, (U.shape[0], 1))
            dev = float(np.linalg.norm(aggregate(np.vstack([B, cand])) - mu)) if aggregate else float(np.linalg.norm(g * p))
            if dev > best_dev:
                best, best_dev = cand, dev
        return best


class MinMax(_BallAttack):
    """Min-max (Shejwalkar and Houmansadr, 2021): no further from any honest update than the two
    furthest honest updates are from each other."""

    name = "min_max"

    def inside(self, m, B):
        if not hasattr(self, "_cache") or self._cache[0] is not B:
            sq = (B * B).sum(axis=1)
            d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * B @ B.T, 0.0)
            self._cache = (B, float(d2.max()))
        return float(((B - m) ** 2).sum(axis=1).max()) <= self._cache[1]


class MinSum(_BallAttack):
    """Min-sum (Shejwalkar and Houmansadr, 2021): its summed squared distance to the honest updates
    no larger than any honest update's."""

    name = "min_sum"

    def inside(self, m, B):
        if not hasattr(self, "_cache") or self._cache[0] is not B:
            sq = (B * B).sum(axis=1)
            d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * B @ B.T, 0.0)
            self._cache = (B, float(d2.sum(axis=1).max()))
        return float(((B - m) ** 2).sum()) <= self._cache[1]


class Fang(Adaptive):
    """Fang et al. (2020)'s full-knowledge attack on coordinate-wise rules (trimmed mean, median):
    per coordinate, values just beyond the honest extreme opposite to the honest mean's direction,
    drawn from ``[min / b, min]`` or ``[b * min, min]`` (and likewise above the maximum)."""

    name = "fang"

    def __init__(self, b: float = 2.0) -> None:
        if not np.isfinite(b) or b <= 1:
            raise ConfigError(f"b must be a number above 1, got {b!r}")
        self.b = float(b)

    def craft(self, U, honest, n_total, rng, aggregate=None):
        B = np.asarray(honest, dtype=np.float64)
        s = np.sign(B.mean(axis=0))
        lo, hi = B.min(axis=0), B.max(axis=0)
        below = np.where(lo > 0, lo / self.b, lo * self.b)
        above = np.where(hi > 0, hi * self.b, hi / self.b)
        u = rng.uniform(size=(U.shape[0], B.shape[1]))
        return np.where(s > 0, below + u * (lo - below), hi + u * (above - hi))


class Tailored(Adaptive):
    """Rule-aware (Shejwalkar and Houmansadr, 2021, "AGR-tailored"): knowing the honest updates and
    the aggregation rule, submit ``mean + gamma * p`` for the direction ``p`` and the ``gamma`` (a
    grid of ``steps`` scales from 1e-3 to 1e3 times the honest spread) that push the rule's result
    furthest along ``p``."""

    name = "tailored"

    def __init__(self, steps: int = 25) -> None:
        if isinstance(steps, bool) or int(steps) != steps or steps < 2:
            raise ConfigError(f"steps must be an integer >= 2, got {steps!r}")
        self.steps = int(steps)

    def craft(self, U, honest, n_total, rng, aggregate=None):
        if aggregate is None:
            raise ConfigError("the tailored attack needs the round's aggregation rule")
        B = np.asarray(honest, dtype=np.float64)
        mu = B.mean(axis=0)
        spread = float(np.linalg.norm(B - mu, axis=1).mean()) or 1.0
        best, best_push = None, -np.inf
        for p in perturbations(B).values():
            pn = p / (float(np.linalg.norm(p)) or 1.0)
            for g in np.geomspace(1e-3, 1e3, self.steps) * spread:
                cand = np.tile(mu + g * pn, (U.shape[0], 1))
                push = float((aggregate(np.vstack([B, cand])) - mu) @ pn)
                if push > best_push:
                    best, best_push = cand, push
        return best


_REGISTRY: Registry[Attack] = Registry(
    "attack", Attack, (LabelFlip, SignFlip, Scaling, GaussianNoise, ALIE, Backdoor, FreeRider, Sybil), nested="base"
)
_ADAPTIVE: Registry[Attack] = Registry("adaptive attack", Attack, (MinMax, MinSum, Fang, Tailored))
#: the adaptive attacks, name to class: they need the round's honest updates (``craft``), so a
#: simulation runs them (`fl.simulation.federate`), not a market provider acting alone
ADAPTIVE_ATTACKS: dict[str, type[Attack]] = _ADAPTIVE.classes
#: the catalogue, name to class (the registry's own dict)
ATTACKS: dict[str, type[Attack]] = _REGISTRY.classes


def make_attack(name: str, **params: Any) -> Attack:
    """Build the attack registered as ``name`` with its keyword parameters.

    Parameters
    ----------
    name : str
        A key of ``ATTACKS`` (e.g. ``"label_flip"``, ``"sybil"``) or of ``ADAPTIVE_ATTACKS``.
    **params
        Passed to the attack's constructor; for ``sybil``, ``base`` may itself be a name.

    Raises
    ------
    ConfigError
        On an unknown name or parameters the attack does not take.
    """
    if name in ADAPTIVE_ATTACKS:
        return _ADAPTIVE.make(name, **params)
    return _REGISTRY.make(name, **params)
