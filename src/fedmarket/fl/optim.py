"""Local training settings (optimizer, weight decay, learning-rate schedule, FedProx) and the optimizers on a flat parameter vector."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedmarket.errors import ConfigError

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "exponential", "cosine")


@dataclass(frozen=True)
class LocalTraining:
    """How a client trains in one round: a pure value, the same for every participant of a job.

    Parameters
    ----------
    epochs : int
        Passes over the local data, ``>= 1``.
    batch_size : int
        Mini-batch size, ``>= 1``.
    lr : float
        Base learning rate, ``> 0``.
    optimizer : str, optional
        ``"sgd"`` (with optional heavy-ball ``momentum``), ``"adam"`` (weight decay added to the
        gradient, as ``torch.optim.Adam``) or ``"adamw"`` (decoupled weight decay).
    momentum : float, optional
        SGD momentum in ``[0, 1)``.
    weight_decay : float, optional
        ``>= 0``.
    prox_mu : float, optional
        FedProx coefficient: ``prox_mu / 2 * ||w - w_global||^2`` is added to the local objective.
    schedule : str, optional
        Learning rate across rounds: ``"constant"``, ``"step"`` (times ``gamma`` every
        ``step_rounds`` rounds), ``"exponential"`` (times ``gamma`` every round) or ``"cosine"``
        (from ``lr`` down to ``min_lr`` over ``total_rounds``).
    gamma, step_rounds, min_lr, total_rounds
        Parameters of the schedule.
    betas, eps
        Adam's moment decays and denominator term.

    Optimizer state (momentum, Adam moments) starts from zero in every round: only parameters
    travel between rounds, so every round is reproducible from the global model and the seeds.
    """

    epochs: int
    batch_size: int
    lr: float
    optimizer: str = "sgd"
    momentum: float = 0.0
    weight_decay: float = 0.0
    prox_mu: float = 0.0
    schedule: str = "constant"
    gamma: float = 1.0
    step_rounds: int = 1
    min_lr: float = 0.0
    total_rounds: int = 1
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "step_rounds", "total_rounds"):
            v = getattr(self, name)
            if isinstance(v, bool) or int(v) != v or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"learning rate must be a positive number, got {self.lr!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer '{self.optimizer}'; choose one of: {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown learning-rate schedule '{self.schedule}'; choose one of: {', '.join(SCHEDULES)}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must lie in [0, 1), got {self.momentum!r}")
        for name in ("weight_decay", "prox_mu", "min_lr"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ConfigError(f"{name} must be a non-negative number, got {v!r}")
        if not (math.isfinite(self.gamma) and 0 < self.gamma <= 1):
            raise ConfigError(f"gamma must lie in (0, 1], got {self.gamma!r}")
        if not all(0 <= b < 1 for b in self.betas) or not self.eps > 0:
            raise ConfigError(f"Adam needs betas in [0, 1) and eps > 0, got {self.betas!r}, {self.eps!r}")

    @property
    def plain_sgd(self) -> bool:
        """Whether a step is ``w -= lr * grad`` (what the vectorised many-client path computes)."""
        return self.optimizer == "sgd" and not self.momentum and not self.weight_decay

    def lr_at(self, round_: int) -> float:
        """The learning rate of round ``round_`` (0-based), a pure function of the round."""
        r = int(round_)
        if self.schedule == "step":
            return self.lr * _power(self.gamma, r // self.step_rounds)
        if self.schedule == "exponential":
            return self.lr * _power(self.gamma, r)
        if self.schedule == "cosine":
            t = min(r, self.total_rounds - 1) / max(1, self.total_rounds - 1)
            return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))
        return self.lr


def _power(x: float, k: int) -> float:
    """``x ** k`` by repeated multiplication: the same float on every machine."""
    out = 1.0
    for _ in range(int(k)):
        out *= x
    return out


class FlatOptimizer:
    """One of the job's optimizers on a flat float64 vector ``w``, updated in place by :meth:`step`.

    Parameters
    ----------
    cfg : LocalTraining
        The settings (optimizer, momentum, weight decay, Adam's betas and eps).
    w : numpy.ndarray
        The parameters it updates (in place).
    lr : float
        This round's learning rate.
    """

    def __init__(self, cfg: LocalTraining, w: np.ndarray, lr: float) -> None:
        self.cfg = cfg
        self.w = w
        self.lr = float(lr)
        self.t = 0
        self.m = np.zeros_like(w) if cfg.momentum or cfg.optimizer != "sgd" else None
        self.v = np.zeros_like(w) if cfg.optimizer != "sgd" else None

    def step(self, g: np.ndarray) -> None:
        """Take one step along the gradient ``g`` (``g`` may be overwritten)."""
        c, w = self.cfg, self.w
        if c.weight_decay and c.optimizer != "adamw":
            g += c.weight_decay * w
        if c.optimizer == "sgd":
            if self.m is not None:
                self.m *= c.momentum
                self.m += g
                g = self.m
            w -= self.lr * g
            return
        self.t += 1
        b1, b2 = c.betas
        self.m *= b1
        self.m += (1.0 - b1) * g
        self.v *= b2
        self.v += (1.0 - b2) * (g * g)
        if c.optimizer == "adamw" and c.weight_decay:
            w *= 1.0 - self.lr * c.weight_decay
        step = self.lr / (1.0 - _power(b1, self.t))
        denom = np.sqrt(self.v / (1.0 - _power(b2, self.t)))
        denom += c.eps
        w -= step * (self.m / denom)
