"""Softmax regression on a flat float64 parameter vector, and schema-bound feature scaling."""

from __future__ import annotations

import numpy as np

from fedmarket.errors import ConfigError, SchemaMismatch


def normalize(X: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Map features to [0, 1] using fixed domain bounds.

    Parameters
    ----------
    X : numpy.ndarray
        Features, shape ``(n, d)``.
    low, high : numpy.ndarray
        Per-feature domain bounds, shape ``(d,)``, with ``low <= high``.

    Returns
    -------
    numpy.ndarray
        float64 array ``(X - low) / (high - low)`` clipped to [0, 1]; features
        with ``high == low`` map to 0.

    Raises
    ------
    SchemaMismatch
        If the number of features of ``X`` differs from the bounds.
    ConfigError
        If the bounds are not finite or ``low > high`` somewhere.
    """
    X = np.asarray(X, dtype=np.float64)
    low = np.asarray(low, dtype=np.float64)
    high = np.asarray(high, dtype=np.float64)
    if low.ndim != 1 or low.shape != high.shape:
        raise ConfigError(
            f"feature bounds must be 1-D of equal length, got {low.shape} and {high.shape}"
        )
    if X.ndim != 2 or X.shape[1] != low.shape[0]:
        raise SchemaMismatch(
            f"data has shape {X.shape} but the schema has {low.shape[0]} features"
        )
    if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
        raise ConfigError("feature bounds must be finite")
    span = high - low
    if np.any(span < 0):
        raise ConfigError(
            f"feature lower bound exceeds upper bound for features {np.flatnonzero(span < 0).tolist()}"
        )
    safe = np.where(span > 0, span, 1.0)
    out = np.clip((X - low) / safe, 0.0, 1.0)
    out[:, span == 0] = 0.0
    return out


class SoftmaxRegression:
    """Multinomial logistic regression with L2 penalty on the weights.

    Parameters are a flat float64 vector: the weight matrix ``W`` of shape
    ``(n_features, n_classes)`` in row-major order, followed by the bias ``b``
    of shape ``(n_classes,)``.

    Parameters
    ----------
    n_features : int
        Number of input features, ``>= 1``.
    n_classes : int
        Number of classes, ``>= 2``.
    l2 : float, optional
        L2 penalty coefficient on ``W`` (not on ``b``), ``>= 0``.
    """

    def __init__(self, n_features: int, n_classes: int, l2: float = 1e-4) -> None:
        if int(n_features) != n_features or n_features < 1:
            raise ConfigError(f"n_features must be a positive integer, got {n_features!r}")
        if int(n_classes) != n_classes or n_classes < 2:
            raise ConfigError(f"n_classes must be an integer >= 2, got {n_classes!r}")
        if not np.isfinite(l2) or l2 < 0:
            raise ConfigError(f"l2 must be a non-negative number, got {l2!r}")
        self.n_features = int(n_features)
        self.n_classes = int(n_classes)
        self.l2 = float(l2)
        self.n_params = self.n_features * self.n_classes + self.n_classes

    def __repr__(self) -> str:
        return (
            f"SoftmaxRegression(n_features={self.n_features}, "
            f"n_classes={self.n_classes}, l2={self.l2})"
        )

    def init_params(self) -> np.ndarray:
        """Return the initial parameter vector (all zeros), float64 of length ``n_params``."""
        return np.zeros(self.n_params, dtype=np.float64)

    def _unpack(self, params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        params = np.asarray(params, dtype=np.float64)
        if params.shape != (self.n_params,):
            raise ConfigError(
                f"parameter vector must have shape ({self.n_params},), got {params.shape}"
            )
        k = self.n_features * self.n_classes
        return params[:k].reshape(self.n_features, self.n_classes), params[k:]

    def _check_X(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise SchemaMismatch(
                f"data has shape {X.shape} but the model expects {self.n_features} features"
            )
        return X

    def _check_y(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        y = np.asarray(y)
        if y.shape != (X.shape[0],):
            raise SchemaMismatch(f"expected {X.shape[0]} labels, got shape {y.shape}")
        if X.shape[0] == 0:
            raise ConfigError("no samples given")
        if y.min() < 0 or y.max() >= self.n_classes:
            raise SchemaMismatch(
                f"labels must lie in [0, {self.n_classes}), got range [{y.min()}, {y.max()}]"
            )
        return y.astype(np.int64, copy=False)

    def logits(self, params: np.ndarray, X: np.ndarray) -> np.ndarray:
        """Return the class scores ``X @ W + b``, shape ``(n, n_classes)``."""
        W, b = self._unpack(params)
        return self._check_X(X) @ W + b

    def predict(self, params: np.ndarray, X: np.ndarray) -> np.ndarray:
        """Return the predicted labels (int64, shape ``(n,)``)."""
        return np.argmax(self.logits(params, X), axis=1).astype(np.int64)

    def loss_and_grad(
        self, params: np.ndarray, X: np.ndarray, y: np.ndarray
    ) -> tuple[float, np.ndarray]:
        """Mean cross-entropy plus ``l2 / 2 * ||W||^2`` and its gradient.

        Parameters
        ----------
        params : numpy.ndarray
            Parameter vector of length ``n_params``.
        X : numpy.ndarray
            Features, shape ``(n, n_features)``, ``n >= 1``.
        y : numpy.ndarray
            Labels in ``[0, n_classes)``, shape ``(n,)``.

        Returns
        -------
        loss : float
            The objective value.
        grad : numpy.ndarray
            Its gradient with respect to ``params``, same shape as ``params``.
        """
        W, b = self._unpack(params)
        X = self._check_X(X)
        y = self._check_y(X, y)
        return self._loss_and_grad(W, b, X, y)

    def _loss_and_grad(
        self, W: np.ndarray, b: np.ndarray, X: np.ndarray, y: np.ndarray
    ) -> tuple[float, np.ndarray]:
        """Unchecked core of :meth:`loss_and_grad` (inputs already validated)."""
        n = X.shape[0]
        z = X @ W + b
        z -= z.max(axis=1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        rows = np.arange(n)
        loss = -log_p[rows, y].mean() + 0.5 * self.l2 * float(np.vdot(W, W))
        g = np.exp(log_p)
        g[rows, y] -= 1.0
        g /= n
        grad = np.empty(self.n_params)
        k = self.n_features * self.n_classes
        np.matmul(X.T, g, out=grad[:k].reshape(self.n_features, self.n_classes))
        grad[:k] += self.l2 * W.ravel()
        grad[k:] = g.sum(axis=0)
        return float(loss), grad

    def accuracy(self, params: np.ndarray, X: np.ndarray, y: np.ndarray) -> float:
        """Return the fraction of samples whose predicted label equals ``y``."""
        X = self._check_X(X)
        y = self._check_y(X, y)
        return float(np.mean(self.predict(params, X) == y))
