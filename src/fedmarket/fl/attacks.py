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


_REGISTRY: Registry[Attack] = Registry(
    "attack", Attack, (LabelFlip, SignFlip, Scaling, GaussianNoise, ALIE, Backdoor, FreeRider, Sybil), nested="base"
)
#: the catalogue, name to class (the registry's own dict)
ATTACKS: dict[str, type[Attack]] = _REGISTRY.classes


def make_attack(name: str, **params: Any) -> Attack:
    """Build the attack registered as ``name`` with its keyword parameters.

    Parameters
    ----------
    name : str
        A key of ``ATTACKS`` (e.g. ``"label_flip"``, ``"sybil"``).
    **params
        Passed to the attack's constructor; for ``sybil``, ``base`` may itself be a name.

    Raises
    ------
    ConfigError
        On an unknown name or parameters the attack does not take.
    """
    return _REGISTRY.make(name, **params)
