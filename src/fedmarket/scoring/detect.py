"""Free-rider, Sybil and poisoning detection on one round's updates, feeding the contribution scores."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fedmarket.errors import ConfigError


@dataclass
class DetectionReport:
    """What :func:`detect` found in one round.

    Attributes
    ----------
    free_riders : numpy.ndarray
        Boolean ``(n,)``: update (nearly) zero, i.e. the global model sent back.
    sybils : numpy.ndarray
        Boolean ``(n,)``: update (nearly) identical to another provider's.
    sybil_pairs : list of tuple of int
        The near-identical pairs ``(i, j)``, ``i < j``.
    poisoners : numpy.ndarray
        Boolean ``(n,)``: pointing away from the robust aggregate, far too long,
        or with a contribution value below ``-neg_tol`` of the total.
    cosine : numpy.ndarray
        float64 ``(n,)``: cosine of each update with the coordinate-wise median.
    norm_ratio : numpy.ndarray
        float64 ``(n,)``: each update's norm over the median norm.
    reasons : dict of int to list of str
        Why each flagged provider was flagged.
    """

    free_riders: np.ndarray
    sybils: np.ndarray
    sybil_pairs: list[tuple[int, int]]
    poisoners: np.ndarray
    cosine: np.ndarray
    norm_ratio: np.ndarray
    reasons: dict[int, list[str]] = field(default_factory=dict)
    norm_factor: float = 10.0

    @property
    def flagged(self) -> np.ndarray:
        """Boolean ``(n,)``: flagged for any reason (exclude these from the rewards)."""
        return self.free_riders | self.sybils | self.poisoners


def detect(
    updates: np.ndarray,
    *,
    values: np.ndarray | None = None,
    zero_tol: float = 0.05,
    sybil_tol: float = 0.01,
    cos_threshold: float = 0.0,
    norm_factor: float = 10.0,
    neg_tol: float = 0.25,
    rel_sybil_tol: float = 0.25,
) -> DetectionReport:
    """Flag free-riders, Sybil copies and poisoners among one round's updates.

    Norms are compared with the median update norm ``m`` so the thresholds
    do not depend on the learning rate or the model size.

    - free-rider: ``||u_i|| <= zero_tol * m`` (submitted the global model, or tiny noise);
    - Sybil: ``||u_i - u_j|| <= sybil_tol * m``, or (with four updates or more)
      ``||u_i - u_j|| <= rel_sybil_tol`` times the median over updates of the distance to
      their nearest other update, for some ``j != i`` that is not a free-rider (independent training on
      different data never comes that close; the relative test catches copies jittered
      with noise); both members of the pair are flagged;
    - poisoner: cosine with the coordinate-wise median of the updates below
      ``cos_threshold`` (sign flipping, pushing the model away), norm above
      ``norm_factor * m`` (boosting), or a contribution value (Shapley or LOO)
      below ``-neg_tol * sum(|values|)``.

    Parameters
    ----------
    updates : numpy.ndarray
        Deltas (submitted model minus the round's global model), ``(n, d)``, ``n >= 1``. A lone
        update is its own median: only the absolute tests can flag it (all zero, or a negative
        contribution value).
    values : numpy.ndarray, optional
        Per-provider contribution values for the round ``(n,)``.
    zero_tol, sybil_tol, cos_threshold, norm_factor, neg_tol, rel_sybil_tol : float, optional
        Thresholds as above.

    Returns
    -------
    DetectionReport

    Raises
    ------
    ConfigError
        On no updates, non-finite data or mismatched values.
    """
    U = _check_updates(updates)
    n = U.shape[0]
    norms = np.linalg.norm(U, axis=1)
    m = _reference_norm(norms)
    ratio = norms / m
    free = ratio <= zero_tol
    close = _near_copies(U, norms, m, sybil_tol, rel_sybil_tol) & ~free[:, None] & ~free[None, :]
    np.fill_diagonal(close, False)
    pairs = [(int(i), int(j)) for i, j in zip(*np.nonzero(np.triu(close)))]
    sybil = close.any(axis=1)
    cos = _median_cosine(U, norms)
    reasons: dict[int, list[str]] = {}
    for i in np.flatnonzero(free):
        _add_reason(reasons, i, f"free-rider: update norm {ratio[i]:.3g} x median")
    for i, j in pairs:
        _add_reason(reasons, i, f"sybil: copy of provider {j}")
        _add_reason(reasons, j, f"sybil: copy of provider {i}")
    poison = _geometric_poisoners(free, cos, ratio, cos_threshold, norm_factor, reasons)
    if values is not None:
        poison |= _negative_contributors(values, n, neg_tol, reasons)
    return DetectionReport(free, sybil, pairs, poison, cos, ratio, reasons, norm_factor)


def _add_reason(reasons: dict[int, list[str]], i: int, why: str) -> None:
    reasons.setdefault(int(i), []).append(why)


def _check_updates(updates: np.ndarray) -> np.ndarray:
    """The updates as a float64 ``(n, d)`` array, ``n >= 1``, all finite."""
    U = np.asarray(updates, dtype=np.float64)
    if U.ndim != 2 or U.shape[0] < 1:
        raise ConfigError(f"detection needs updates as an (n, d) array with n >= 1, got shape {U.shape}")
    if not np.all(np.isfinite(U)):
        raise ConfigError("updates must be finite")
    return U


def _reference_norm(norms: np.ndarray) -> float:
    """The median update norm ``m`` the thresholds scale with (the largest norm, or 1, when it is 0)."""
    m = float(np.median(norms))
    if m == 0.0:
        m = float(norms.max()) or 1.0
    return m


def _near_copies(U: np.ndarray, norms: np.ndarray, m: float, sybil_tol: float, rel_sybil_tol: float) -> np.ndarray:
    """Boolean ``(n, n)``: pairs of updates within ``sybil_tol * m`` or (``n >= 4``) the relative Sybil tolerance."""
    n = U.shape[0]
    gram = U @ U.T
    sq = norms**2
    dist = np.sqrt(np.clip(sq[:, None] + sq[None, :] - 2 * gram, 0.0, None))
    near = dist <= sybil_tol * m
    if n >= 4:  # also near-copies relative to how far apart this round's updates typically are
        # the typical gap is the median distance of each update to its nearest other update: copies
        # (distance ~0 to their twin) and outliers (far from everyone) do not move it while honest
        # updates are the majority
        nn = np.where(np.eye(n, dtype=bool), np.inf, dist).min(axis=1)
        near |= dist <= rel_sybil_tol * float(np.median(nn))
    return near


def _median_cosine(U: np.ndarray, norms: np.ndarray) -> np.ndarray:
    """Cosine of each update with the coordinate-wise median update (0 when that median is 0)."""
    med = np.median(U, axis=0)
    mn = float(np.linalg.norm(med))
    return (U @ med) / np.maximum(norms * mn, 1e-300) if mn > 0 else np.zeros(U.shape[0])


def _geometric_poisoners(
    free: np.ndarray,
    cos: np.ndarray,
    ratio: np.ndarray,
    cos_threshold: float,
    norm_factor: float,
    reasons: dict[int, list[str]],
) -> np.ndarray:
    """Boolean ``(n,)``: non-free-riders pointing away from the median or far too long; reasons added."""
    poison = np.zeros(free.shape[0], dtype=bool)
    for i in range(free.shape[0]):
        if free[i]:
            continue
        if cos[i] < cos_threshold:
            poison[i] = True
            _add_reason(reasons, i, f"poisoning: cosine {cos[i]:.3f} with the robust aggregate")
        if ratio[i] > norm_factor:
            poison[i] = True
            _add_reason(reasons, i, f"poisoning: update norm {ratio[i]:.3g} x median")
    return poison


def _negative_contributors(
    values: np.ndarray, n: int, neg_tol: float, reasons: dict[int, list[str]]
) -> np.ndarray:
    """Boolean ``(n,)``: contribution value below ``-neg_tol * sum(|values|)``; reasons added."""
    v = np.asarray(values, dtype=np.float64)
    if v.shape != (n,) or not np.all(np.isfinite(v)):
        raise ConfigError(f"values must be {n} finite numbers")
    scale = float(np.abs(v).sum())
    neg = v < -neg_tol * scale if scale > 0 else np.zeros(n, dtype=bool)
    for i in np.flatnonzero(neg):
        _add_reason(reasons, i, f"poisoning: negative contribution {v[i]:.4g}")
    return neg
