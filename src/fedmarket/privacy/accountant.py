"""RDP privacy accountant for federated rounds (Poisson or fixed-size client sampling), on Google's ``dp-accounting``.

One round of DP-FedAvg is a sampled Gaussian mechanism: each provider is in the round with
probability ``q`` (Poisson) or the round takes ``m`` of ``N`` providers uniformly without
replacement (fixed size), and the sum of clipped updates gets Gaussian noise of std ``z C``.

- Poisson sampling uses add/remove-one adjacency (Mironov, Talwar & Zhang 2019), noise
  multiplier ``z``.
- Fixed-size sampling uses replace-one adjacency (Wang, Balle & Kasiviswanathan 2019), under
  which the sum's sensitivity is ``2 C``: the accountant composes the mechanism with noise
  multiplier ``z / 2``.
- No sampling (every provider every round): the plain Gaussian mechanism, ``z``.

Local DP (each provider noises its own update with std ``2 z C``) is accounted per provider by
the same accountant with ``sampling="none"``; sampling then amplifies nothing the provider
does not already hide.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from fedmarket.errors import ConfigError, PrivacyBudgetExceeded

# dp_accounting (and SciPy under it) loads on first use: about a second that every role process
# (and every Flower ClientApp, once a round) would otherwise pay at start without accounting anything
_dpa = None
_rdp = None

SAMPLINGS = ("poisson", "fixed", "none")
ORDERS = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(11, 64)) + [128, 256, 512, 1024])


def _require() -> None:
    global _dpa, _rdp
    if _dpa is None:
        try:
            import dp_accounting
            from dp_accounting import rdp
        except ImportError:  # pragma: no cover - exercised only without the dependency
            raise ConfigError("the privacy accountant needs `dp-accounting`: pip install dp-accounting==0.6.0") from None
        _dpa, _rdp = dp_accounting, rdp


def _event(noise_multiplier: float, sampling: str, population: int | None, sample_size: int | None, rate: float | None):
    _require()
    g = _dpa.GaussianDpEvent(noise_multiplier)
    if sampling == "none":
        return g
    if sampling == "poisson":
        return _dpa.PoissonSampledDpEvent(rate, g)
    return _dpa.SampledWithoutReplacementDpEvent(population, sample_size, _dpa.GaussianDpEvent(noise_multiplier / 2.0))


def _new(sampling: str):
    _require()
    rel = _dpa.NeighboringRelation.REPLACE_ONE if sampling == "fixed" else _dpa.NeighboringRelation.ADD_OR_REMOVE_ONE
    return _rdp.RdpAccountant(list(ORDERS), rel)


def _check_sampling(sampling: str, population: int | None, sample_size: int | None, rate: float | None):
    if sampling not in SAMPLINGS:
        raise ConfigError(f"sampling must be one of {', '.join(SAMPLINGS)}, got {sampling!r}")
    if sampling == "poisson" and (rate is None or not 0.0 < float(rate) <= 1.0):
        raise ConfigError(f"Poisson sampling needs a rate in (0, 1], got {rate!r}")
    if sampling == "fixed" and (
        population is None or sample_size is None or not 1 <= int(sample_size) <= int(population)
    ):
        raise ConfigError(
            f"fixed-size sampling needs 1 <= sample_size <= population, got {sample_size!r} of {population!r}"
        )


# The keyword-only sampling parameters (sampling, rate, population, sample_size) are one group,
# shared by epsilon_for and noise_multiplier_for (which passes it on unchanged): one line each.


def epsilon_for(
    noise_multiplier: float, rounds: int, delta: float, *,
    sampling: str = "none", rate: float | None = None, population: int | None = None, sample_size: int | None = None,
    conversion: str = "tight",
) -> float:
    """ε after ``rounds`` identical rounds of the sampled Gaussian mechanism, at ``delta``.

    Parameters
    ----------
    noise_multiplier : float
        ``z > 0``: noise std over the clipping norm.
    rounds : int
        Number of rounds composed.
    delta : float
        Target δ in ``(0, 1)``.
    sampling : {"none", "poisson", "fixed"}
        Client sampling each round.
    rate : float, optional
        Poisson inclusion probability ``q``.
    population, sample_size : int, optional
        ``N`` and ``m`` of fixed-size sampling.
    conversion : {"tight", "classic"}
        RDP to (ε, δ): ``"tight"`` is dp-accounting's (Canonne, Kamath & Steinke 2020),
        ``"classic"`` is Mironov's ``min_a rdp(a) + ln(1/δ)/(a-1)`` (what TF Privacy's
        published tables used); the tight one is never larger.

    Returns
    -------
    float
        The ε spent after ``rounds`` rounds.

    Raises
    ------
    ConfigError
        On a bad sampling description, ``noise_multiplier``, ``delta`` or ``conversion``,
        or without ``dp-accounting``.
    """
    _require()
    _check_sampling(sampling, population, sample_size, rate)
    if not noise_multiplier > 0:
        raise ConfigError(f"noise_multiplier must be positive, got {noise_multiplier!r}")
    if not 0 < delta < 1:
        raise ConfigError(f"delta must lie in (0, 1), got {delta!r}")
    acc = _new(sampling)
    acc.compose(_event(float(noise_multiplier), sampling, population, sample_size, rate), int(rounds))
    if conversion == "classic":
        rdp = acc._rdp
        return float(min(r + math.log(1.0 / delta) / (a - 1.0) for a, r in zip(ORDERS, rdp)))
    if conversion != "tight":
        raise ConfigError(f"conversion must be 'tight' or 'classic', got {conversion!r}")
    return float(acc.get_epsilon(float(delta)))


def noise_multiplier_for(
    epsilon: float, delta: float, rounds: int, *,
    sampling: str = "none", rate: float | None = None, population: int | None = None, sample_size: int | None = None,
    tol: float = 1e-3,
) -> float:
    """Smallest noise multiplier (to ``tol`` relative) keeping ``rounds`` rounds within ``(epsilon, delta)``.

    Bisection on :func:`epsilon_for` (ε decreases with ``z``).

    Parameters
    ----------
    epsilon : float
        Target ε, ``> 0``.
    delta : float
        Target δ in ``(0, 1)``.
    rounds : int
        Number of rounds composed.
    sampling, rate, population, sample_size
        Client sampling each round, as in :func:`epsilon_for`.
    tol : float, optional
        Relative precision of the result (default ``1e-3``).

    Returns
    -------
    float
        A noise multiplier ``z`` with ``epsilon_for(z, rounds, delta, ...) <= epsilon``,
        at most ``tol * z`` above the smallest one.

    Raises
    ------
    ConfigError
        On a bad ``epsilon`` or sampling description, or when no ``z`` up to ``1e6`` is enough.
    """
    if not epsilon > 0:
        raise ConfigError(f"epsilon must be positive, got {epsilon!r}")
    kw = {"sampling": sampling, "rate": rate, "population": population, "sample_size": sample_size}
    lo, hi = 1e-2, 1.0
    while epsilon_for(hi, rounds, delta, **kw) > epsilon:
        lo, hi = hi, hi * 2
        if hi > 1e6:
            raise ConfigError(f"no noise multiplier reaches epsilon {epsilon} in {rounds} rounds")
    while hi - lo > tol * hi:
        mid = (lo + hi) / 2
        if epsilon_for(mid, rounds, delta, **kw) > epsilon:
            lo = mid
        else:
            hi = mid
    return hi


@dataclass
class PrivacyAccountant:
    """The privacy budget of one job: ``(epsilon, delta)`` from the spec, spent round by round.

    The aggregator calls :meth:`spend` before committing each round; it raises
    :class:`~fedmarket.errors.PrivacyBudgetExceeded` (and spends nothing) if the
    round would take the job past its budget, and returns the cumulative ε to
    commit with the round.

    Attributes
    ----------
    epsilon, delta : float
        The job's budget.
    sampling : {"none", "poisson", "fixed"}
        How providers are selected each round.
    population : int, optional
        ``N``, the number of providers of the job (fixed-size and Poisson sampling).
    """

    epsilon: float
    delta: float
    sampling: str = "none"
    population: int | None = None
    rounds: list[tuple[float, float | int | None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        _require()
        if not (isinstance(self.epsilon, (int, float)) and math.isfinite(self.epsilon) and self.epsilon > 0):
            raise ConfigError(f"epsilon must be positive and finite, got {self.epsilon!r}")
        if not (isinstance(self.delta, (int, float)) and 0 < self.delta < 1):
            raise ConfigError(f"delta must lie in (0, 1), got {self.delta!r}")
        if self.sampling not in SAMPLINGS:
            raise ConfigError(f"sampling must be one of {', '.join(SAMPLINGS)}, got {self.sampling!r}")
        if self.sampling != "none" and (self.population is None or int(self.population) < 1):
            raise ConfigError(f"{self.sampling} sampling needs the population size, got {self.population!r}")
        self._cache: dict = {}
        self._rdp = np.zeros(len(ORDERS))
        for r in self.rounds:
            self._rdp = self._rdp + self._curve(r)

    def _curve(self, r: tuple[float, float | int | None]) -> np.ndarray:
        """RDP curve (one value per order) of one round ``(z, sample)``, cached."""
        if r not in self._cache:
            z, sample = r
            acc = _new(self.sampling)
            rate = sample if self.sampling == "poisson" else None
            size = sample if self.sampling == "fixed" else None
            acc.compose(_event(z, self.sampling, self.population, size, rate))
            self._cache[r] = np.asarray(acc._rdp, dtype=np.float64)
        return self._cache[r]

    def _eps(self, rdp: np.ndarray) -> float:
        _require()
        return float(_rdp.compute_epsilon(list(ORDERS), rdp, self.delta)[0])

    def _check_round(self, noise_multiplier: float, sample: float | None) -> tuple[float, float | int | None]:
        if not (
            isinstance(noise_multiplier, (int, float)) and noise_multiplier > 0 and math.isfinite(noise_multiplier)
        ):
            raise ConfigError(f"noise_multiplier must be positive and finite, got {noise_multiplier!r}")
        rate = sample if self.sampling == "poisson" else None
        size = int(sample) if self.sampling == "fixed" and sample is not None else None
        _check_sampling(self.sampling, self.population, size, rate)
        return float(noise_multiplier), (rate if self.sampling == "poisson" else size)

    def spent(self) -> float:
        """ε spent so far at the job's δ (0 before the first round)."""
        return self._eps(self._rdp) if self.rounds else 0.0

    def epsilon_after(self, noise_multiplier: float, sample: float | None = None) -> float:
        """ε the job would have spent after one more round like this (nothing is spent)."""
        return self._eps(self._rdp + self._curve(self._check_round(noise_multiplier, sample)))

    def spend(self, noise_multiplier: float, sample: float | None = None) -> float:
        """Account one round, or refuse it.

        Parameters
        ----------
        noise_multiplier : float
            ``z`` of the round's Gaussian noise.
        sample : float or int, optional
            The Poisson rate ``q`` or the fixed sample size ``m`` (nothing when ``sampling="none"``).

        Returns
        -------
        float
            The cumulative ε after this round (what is committed with it).

        Raises
        ------
        PrivacyBudgetExceeded
            If the cumulative ε would exceed the budget; the round is not accounted.
        """
        r = self._check_round(noise_multiplier, sample)
        rdp = self._rdp + self._curve(r)
        eps = self._eps(rdp)
        if eps > self.epsilon:
            raise PrivacyBudgetExceeded(
                f"round {len(self.rounds)} would bring epsilon to {eps:.4g} > budget {self.epsilon:g} "
                f"(delta {self.delta:g}); round refused"
            )
        self.rounds.append(r)
        self._rdp = rdp
        return eps
