"""Differential-privacy mechanisms as pure functions: L2 clipping and calibrated Gaussian noise (central, local, distributed).

Every random draw comes from an explicit ``numpy.random.Generator``; nothing here keeps state.

Calibration. With updates clipped to L2 norm ``C``:

- central (the aggregator adds noise to the *sum* of clipped updates): the sum's L2 sensitivity
  under add/remove-one-provider is ``C``, so the noise std is ``z * C`` for noise multiplier ``z``;
- local (each provider noises its own clipped update before sending it): the release is one
  provider's update, which can change to any other update of norm ``<= C``, so its sensitivity is
  ``2 C`` and the noise std is ``2 z * C``;
- distributed (with secure aggregation: each of ``m`` providers adds ``N(0, (z C)^2 / m)``, so the
  unmasked sum carries exactly the central noise ``N(0, (z C)^2)``).

- distributed discrete (what ``secagg_dp`` jobs run): the clipped update is rounded to the
  fixed-point integers and each provider adds Skellam noise ``Poisson(mu) - Poisson(mu)`` there
  (Agarwal, Kairouz & Liu 2021). Skellam noise sums to Skellam noise, so the honest providers'
  shares add up to one Skellam mechanism on the exact integer sum; ``mu`` is sized so that the
  *honest minimum* (the fewest honest survivors a round accepts, :func:`honest_minimum`) alone
  gives the promised variance, whatever the dishonest survivors add or subtract.

``gaussian_sigma`` gives the classical single-shot calibration
``sigma = sqrt(2 ln(1.25 / delta)) * sensitivity / epsilon`` (Dwork & Roth 2014, Thm A.1,
valid for ``epsilon < 1``); multi-round jobs use :mod:`fedmarket.privacy.accountant` instead.
"""

from __future__ import annotations

import math

import numpy as np

from fedmarket.errors import ConfigError


def _positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ConfigError(f"{name} must be {'non-negative' if allow_zero else 'positive'} and finite, got {value!r}")
    return v


def _check_rng(rng: object) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise ConfigError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    return rng


def clip_update(update: np.ndarray, clip_norm: float) -> np.ndarray:
    """Scale ``update`` down to L2 norm at most ``clip_norm`` (unchanged when already within it).

    Parameters
    ----------
    update : numpy.ndarray
        One flat (or any-shape) float update.
    clip_norm : float
        ``C > 0``.

    Returns
    -------
    numpy.ndarray
        float64 copy, ``update * min(1, C / ||update||_2)``.

    Raises
    ------
    ConfigError
        On a non-positive ``clip_norm`` or a non-finite update.
    """
    C = _positive("clip_norm", clip_norm)
    u = np.array(update, dtype=np.float64, copy=True)
    if not np.all(np.isfinite(u)):
        raise ConfigError("cannot clip an update with non-finite values")
    norm = float(np.linalg.norm(u.ravel()))
    if norm > C:
        u *= C / norm
    return u


def clip_updates(U: np.ndarray, clip_norm: float) -> np.ndarray:
    """Clip every row of a matrix ``(n, d)`` of updates to L2 norm ``clip_norm`` (vectorised :func:`clip_update`)."""
    C = _positive("clip_norm", clip_norm)
    U = np.array(U, dtype=np.float64, copy=True)
    if U.ndim != 2:
        raise ConfigError(f"clip_updates expects a matrix (n, d), got shape {U.shape}")
    if not np.all(np.isfinite(U)):
        raise ConfigError("cannot clip updates with non-finite values")
    norms = np.linalg.norm(U, axis=1)
    scale = np.minimum(1.0, C / np.maximum(norms, np.finfo(np.float64).tiny))
    U *= scale[:, None]
    return U


def gaussian_sigma(epsilon: float, delta: float, sensitivity: float) -> float:
    """Noise std of the classical Gaussian mechanism: ``sqrt(2 ln(1.25/delta)) * sensitivity / epsilon``.

    Valid for one release with ``0 < epsilon < 1`` (Dwork & Roth 2014, Thm A.1).

    Raises
    ------
    ConfigError
        If ``epsilon`` is not in ``(0, 1)``, ``delta`` not in ``(0, 1)`` or ``sensitivity <= 0``.
    """
    eps = _positive("epsilon", epsilon)
    if not eps < 1:
        raise ConfigError(f"the classical Gaussian calibration needs epsilon < 1, got {epsilon!r}; use the accountant")
    d = _positive("delta", delta)
    if not d < 1:
        raise ConfigError(f"delta must lie in (0, 1), got {delta!r}")
    return math.sqrt(2.0 * math.log(1.25 / d)) * _positive("sensitivity", sensitivity) / eps


def central_gaussian(
    updates: np.ndarray,
    clip_norm: float,
    noise_multiplier: float,
    rng: np.random.Generator,
    *,
    denominator: float | None = None,
) -> np.ndarray:
    """Central DP-FedAvg: clip every update, sum, add ``N(0, (z C)^2)`` per coordinate, divide.

    Parameters
    ----------
    updates : numpy.ndarray
        ``(n, d)`` float updates of the providers in the round.
    clip_norm : float
        ``C``.
    noise_multiplier : float
        ``z >= 0`` (0: clipping only).
    rng : numpy.random.Generator
        Source of the noise.
    denominator : float, optional
        What the noisy sum is divided by. Must not depend on the data: the expected
        number of sampled providers under Poisson sampling, the fixed sample size
        otherwise (default ``n``, right for fixed-size sampling).

    Returns
    -------
    numpy.ndarray
        The noisy mean update, float64 ``(d,)``.
    """
    rng = _check_rng(rng)
    z = _positive("noise_multiplier", noise_multiplier, allow_zero=True)
    U = clip_updates(updates, clip_norm)
    den = float(U.shape[0]) if denominator is None else _positive("denominator", denominator)
    total = U.sum(axis=0)
    if z > 0:
        total += rng.normal(0.0, z * float(clip_norm), size=total.shape)
    return total / den


def local_gaussian(
    update: np.ndarray, clip_norm: float, noise_multiplier: float, rng: np.random.Generator
) -> np.ndarray:
    """Local DP at the provider: clip its update to ``C`` and add ``N(0, (2 z C)^2)`` (sensitivity ``2C``).

    Returns
    -------
    numpy.ndarray
        The update as released, float64 of the input's shape.
    """
    rng = _check_rng(rng)
    z = _positive("noise_multiplier", noise_multiplier, allow_zero=True)
    u = clip_update(update, clip_norm)
    if z > 0:
        u += rng.normal(0.0, 2.0 * z * float(clip_norm), size=u.shape)
    return u


def distributed_noise_std(clip_norm: float, noise_multiplier: float, n_contributors: int) -> float:
    """Per-provider noise std so that the sum of ``n_contributors`` shares carries ``N(0, (z C)^2)``.

    Used with secure aggregation: the aggregator never sees one update, so the
    noise is split among the providers (``z C / sqrt(m)`` each). If fewer than
    ``m`` survive, the sum carries less noise; take ``m`` as the minimum number
    of survivors the round accepts (the SecAgg threshold).
    """
    if isinstance(n_contributors, bool) or int(n_contributors) != n_contributors or n_contributors < 1:
        raise ConfigError(f"n_contributors must be a positive integer, got {n_contributors!r}")
    z = _positive("noise_multiplier", noise_multiplier, allow_zero=True)
    return z * _positive("clip_norm", clip_norm) / math.sqrt(int(n_contributors))


def distributed_gaussian(
    update: np.ndarray, clip_norm: float, noise_multiplier: float, n_contributors: int, rng: np.random.Generator
) -> np.ndarray:
    """Clip one provider's update and add its share of the central noise (see :func:`distributed_noise_std`)."""
    rng = _check_rng(rng)
    std = distributed_noise_std(clip_norm, noise_multiplier, n_contributors)
    u = clip_update(update, clip_norm)
    if std > 0:
        u += rng.normal(0.0, std, size=u.shape)
    return u


# ---------------------------------------------------------------------------- distributed discrete noise

SKELLAM_SLACK = 1e-3  # the least variance margin over the Gaussian's; more where `skellam_slack` needs it
#: above this margin the fixed-point grid is too coarse for the job's noise (a tiny clip_norm, or a
#: huge epsilon): refused rather than paid for with ever more noise
MAX_SKELLAM_SLACK = 1.0


def honest_minimum(min_survivors: int, max_dishonest: float, selected: int | None = None) -> int:
    """The fewest honest providers in any survivor set of at least ``min_survivors`` when at most a
    ``max_dishonest`` share of the round's ``selected`` providers (default: ``min_survivors``)
    collude: ``m - floor(f n)``. The bound is on the selected providers, not on the survivors: the
    aggregator picks the survivor set (it may leave honest uploaders out as dropped), so the
    colluders may all be in it while the honest ones are not."""
    m = int(min_survivors)
    n = m if selected is None else int(selected)
    if m < 1 or n < m or not 0 <= max_dishonest < 1:
        raise ConfigError(f"need 1 <= min_survivors <= selected and max_dishonest in [0, 1), got {min_survivors}, "
                          f"{selected}, {max_dishonest}")
    h = m - math.floor(max_dishonest * n + 1e-12)
    if h < 1:
        raise ConfigError(f"a round of {n} selected providers accepting {m} survivors has no honest survivor when "
                          f"{max_dishonest:g} of them collude: raise the survivors (lower dropout) or lower max_dishonest")
    return h


def skellam_slack(z: float, delta: float, d: int) -> float:
    """The variance margin ``s`` (at least `SKELLAM_SLACK`) under which the Skellam mechanism of
    total variance ``(z Delta)^2 (1 + s)`` has RDP at most the Gaussian's ``alpha / (2 z^2)`` at every
    order ``alpha >= 1`` (what the chain's zCDP accounting charges), for L2 sensitivity ``Delta`` and
    L1 sensitivity ``sqrt(d) Delta``. `skellam_rdp` exceeds the Gaussian's by at most
    ``A (2 alpha - 1) + B`` (``A = Delta^2 / (16 mu^2)``, ``B = 6 L1 / (16 mu^2)``, ``mu`` half the
    variance), while the margin buys ``alpha s / (2 z^2 (1 + s))``: both hold for every order once the
    margin covers the excess at ``alpha = 1`` and grows at least as fast. That excess shrinks like
    ``1 / (z Delta)^2``, so a fine grid needs only the least margin; ConfigError above
    `MAX_SKELLAM_SLACK` (the grid too coarse for the noise: raise clip_norm or lower epsilon)."""
    l2, l1 = float(delta), math.sqrt(int(d)) * float(delta)

    def holds(s: float) -> bool:
        mu = (z * l2) ** 2 * (1.0 + s) / 2.0
        a, b = l2**2 / (16.0 * mu**2), 6.0 * l1 / (16.0 * mu**2)
        bought = s / (2.0 * z * z * (1.0 + s))  # per unit of alpha
        return bought >= a + b and bought >= 2.0 * a

    if holds(SKELLAM_SLACK):
        return SKELLAM_SLACK
    if not holds(MAX_SKELLAM_SLACK):
        raise ConfigError(f"the Skellam noise (z {z:g}) is too coarse for the fixed-point grid (sensitivity {l2:.4g} "
                          f"units): it would need over {MAX_SKELLAM_SLACK:g}x the Gaussian's variance to be as private; "
                          "raise clip_norm or lower epsilon")
    lo, hi = SKELLAM_SLACK, MAX_SKELLAM_SLACK
    for _ in range(60):
        mid = (lo + hi) / 2.0
        lo, hi = (lo, mid) if holds(mid) else (mid, hi)
    return hi


def skellam_mu(noise_multiplier: float, clip_norm: float, scale_bits: int, d: int, honest: int) -> float:
    """One provider's Skellam parameter: ``honest`` providers together add variance ``2 honest mu =
    (z Delta)^2 (1 + s)`` in fixed-point units, ``Delta = 2 C 2^scale_bits + sqrt(d)`` the
    replace-one L2 sensitivity of the rounded sum (two rounded updates differ by at most ``2C`` plus
    ``sqrt(d) / 2`` of rounding each) and ``s`` the margin `skellam_slack` sizes for it."""
    z = _positive("noise_multiplier", noise_multiplier)
    delta = 2.0 * _positive("clip_norm", clip_norm) * 2.0**scale_bits + math.sqrt(int(d))
    if int(honest) < 1:
        raise ConfigError(f"the honest minimum must be at least 1, got {honest}")
    return (z * delta) ** 2 * (1.0 + skellam_slack(z, delta, int(d))) / (2.0 * int(honest))


def skellam_noise(mu: float, shape: tuple[int, ...] | int, rng: np.random.Generator) -> np.ndarray:
    """int64 Skellam draws ``Poisson(mu) - Poisson(mu)`` (mean 0, variance ``2 mu``)."""
    rng = _check_rng(rng)
    return rng.poisson(mu, shape).astype(np.int64) - rng.poisson(mu, shape).astype(np.int64)


def skellam_rdp(alpha: float, mu_total: float, l1: float, l2: float) -> float:
    """RDP of order ``alpha`` of the Skellam mechanism of total parameter ``mu_total`` for an integer
    query of L1 / L2 sensitivity ``l1`` / ``l2`` (Agarwal, Kairouz & Liu 2021, Theorem 3.5)."""
    base = alpha * l2**2 / (4.0 * mu_total)
    extra = min(((2.0 * alpha - 1.0) * l2**2 + 6.0 * l1) / (16.0 * mu_total**2), 3.0 * l1 / (4.0 * mu_total))
    return base + extra


def distributed_skellam(q_clipped: np.ndarray, mu: float, rng: np.random.Generator) -> np.ndarray:
    """A provider's fixed-point (int64) clipped update plus its Skellam share of the noise."""
    q = np.asarray(q_clipped, dtype=np.int64)
    return q + skellam_noise(mu, q.shape, rng)
