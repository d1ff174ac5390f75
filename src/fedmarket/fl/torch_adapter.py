"""Adapter giving any PyTorch ``nn.Module`` classifier the engine's flat-parameter-vector model interface (optional: needs torch)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from fedmarket.errors import ConfigError
from fedmarket.fl.models import InputChecks

TORCH_HINT = "install PyTorch (CPU build) with `pip install torch`, or the extra `pip install fedmarket[torch]`"


def _torch() -> Any:
    try:
        import torch
    except ImportError:  # pragma: no cover - exercised only without torch
        raise ConfigError(f"the PyTorch adapter needs torch: {TORCH_HINT}") from None
    return torch


class TorchModel(InputChecks):
    """A PyTorch classifier seen through ``init_params`` / ``loss_and_grad`` / ``predict`` / ``accuracy``.

    Parameters travel as one flat float64 vector: every trainable tensor of
    ``module.parameters()`` in order, flattened row-major. The loss is the
    mean cross-entropy of the module's outputs (logits) plus
    ``l2 / 2 * ||params||^2``. Like :class:`~fedmarket.fl.models.Model` it offers
    ``check_params`` / ``check_X`` / ``check_y`` (the same
    :class:`~fedmarket.fl.models.InputChecks`), ``logits`` and ``grad_fn``. Works with
    :func:`fedmarket.fl.train.local_sgd` and, by a per-client loop,
    :func:`fedmarket.fl.train.local_sgd_many`.

    Parameters
    ----------
    module : torch.nn.Module
        Maps a float tensor ``(n, n_features)`` to logits ``(n, n_classes)``.
        Its parameters are overwritten by every call; its initial values are
        :meth:`init_params`.
    n_features : int
        Input width (checked on the data).
    n_classes : int
        Number of classes, ``>= 2``.
    l2 : float, optional
        L2 penalty on all parameters, ``>= 0`` (default 0).
    """

    #: labels go to ``torch.from_numpy``, which shares memory: always hand it a fresh array
    copy_labels = True

    def __init__(self, module: Any, n_features: int, n_classes: int, l2: float = 0.0) -> None:
        torch = _torch()
        if not isinstance(module, torch.nn.Module):
            raise ConfigError(f"module must be a torch.nn.Module, got {type(module).__name__}")
        if int(n_features) != n_features or n_features < 1:
            raise ConfigError(f"n_features must be a positive integer, got {n_features!r}")
        if int(n_classes) != n_classes or n_classes < 2:
            raise ConfigError(f"n_classes must be an integer >= 2, got {n_classes!r}")
        if not np.isfinite(l2) or l2 < 0:
            raise ConfigError(f"l2 must be a non-negative number, got {l2!r}")
        self.module = module
        self.n_features = int(n_features)
        self.n_classes = int(n_classes)
        self.l2 = float(l2)
        self._params = [p for p in module.parameters() if p.requires_grad]
        if not self._params:
            raise ConfigError("the module has no trainable parameters")
        self._dtype = self._params[0].dtype
        self.n_params = int(sum(p.numel() for p in self._params))
        self._init = self._get()

    def __repr__(self) -> str:
        return f"TorchModel({type(self.module).__name__}, n_params={self.n_params})"

    def _get(self) -> np.ndarray:
        torch = _torch()
        with torch.no_grad():
            return torch.cat([p.detach().reshape(-1) for p in self._params]).to(torch.float64).numpy().copy()

    def _set(self, params: np.ndarray) -> None:
        torch = _torch()
        flat = torch.from_numpy(self.check_params(params))
        with torch.no_grad():
            off = 0
            for p in self._params:
                k = p.numel()
                p.copy_(flat[off : off + k].reshape(p.shape).to(p.dtype))
                off += k

    def _tensor(self, X: np.ndarray) -> Any:
        return _torch().from_numpy(self.check_X(X)).to(self._dtype)

    @property
    def supports_batched(self) -> bool:
        """Always False: clients train one after another (see :func:`fedmarket.fl.train.local_sgd_many`)."""
        return False

    def grad_fn(self, w: np.ndarray) -> Callable[[np.ndarray, np.ndarray], tuple[float, np.ndarray]]:
        """Return ``f(X, y) -> (loss, grad)`` at ``w``, as :meth:`loss_and_grad` (checked; ``w`` read live).

        Parameters
        ----------
        w : numpy.ndarray
            Parameter vector of length ``n_params``; in-place updates are seen.

        Returns
        -------
        callable
            The loss-and-gradient function of a batch.
        """
        return lambda X, y: self.loss_and_grad(w, X, y)

    def init_params(self) -> np.ndarray:
        """The module's parameters when the adapter was made, float64 of length ``n_params``."""
        return self._init.copy()

    def logits(self, params: np.ndarray, X: np.ndarray) -> np.ndarray:
        """Return the module's outputs, float64 ``(n, n_classes)``."""
        torch = _torch()
        self._set(params)
        self.module.eval()
        with torch.no_grad():
            return self.module(self._tensor(X)).to(torch.float64).numpy()

    def predict(self, params: np.ndarray, X: np.ndarray) -> np.ndarray:
        """Return the predicted labels (int64, shape ``(n,)``)."""
        return np.argmax(self.logits(params, X), axis=1).astype(np.int64)

    def loss_and_grad(self, params: np.ndarray, X: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        """Mean cross-entropy plus ``l2 / 2 * ||params||^2`` and its gradient (float64, length ``n_params``)."""
        torch = _torch()
        Xt = self._tensor(X)
        y = self.check_y(Xt, y)
        self._set(params)
        self.module.train()
        for p in self._params:
            p.grad = None
        loss = torch.nn.functional.cross_entropy(self.module(Xt), torch.from_numpy(y))
        if self.l2:
            loss = loss + 0.5 * self.l2 * sum((p * p).sum() for p in self._params)
        loss.backward()
        grad = torch.cat([p.grad.reshape(-1) for p in self._params]).to(torch.float64).numpy().copy()
        return float(loss.detach()), grad

    def accuracy(self, params: np.ndarray, X: np.ndarray, y: np.ndarray) -> float:
        """Return the fraction of samples whose predicted label equals ``y``."""
        return float(np.mean(self.predict(params, X) == np.asarray(y)))
