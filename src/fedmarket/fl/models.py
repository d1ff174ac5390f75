"""Models on a flat float64 parameter vector (softmax regression, MLP), their input checks, and schema-bound feature scaling."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import ClassVar

import numpy as np

from fedmarket.errors import ConfigError, SchemaMismatch

#: samples a model's class scores are computed for at once (numpy and torch alike)
EVAL_BATCH = 1024
#: the most bytes of intermediate values one forward pass of EVAL_BATCH samples may take: a job's
#: spec (built-in kinds) or packed module (`torch` jobs) past it is refused before anyone stakes
MAX_ACTIVATION_BYTES = 2**31


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


GradFn = Callable[[np.ndarray, np.ndarray], tuple[float, np.ndarray]]


class InputChecks:
    """Validators of a classifier's inputs: a flat parameter vector, features and labels.

    Shared by :class:`Model` and :class:`~fedmarket.fl.torch_adapter.TorchModel`,
    so that both reject bad inputs with the same error messages. A subclass
    defines ``n_features``, ``n_classes`` and ``n_params``.

    Attributes
    ----------
    copy_labels : bool
        Whether :meth:`check_y` always returns a fresh label array (default
        False: no copy when ``y`` already is int64).
    """

    n_features: int
    n_classes: int
    n_params: int
    copy_labels: ClassVar[bool] = False

    def check_params(self, params: np.ndarray) -> np.ndarray:
        """Validate a parameter vector.

        Parameters
        ----------
        params : numpy.ndarray
            Candidate parameter vector.

        Returns
        -------
        numpy.ndarray
            ``params`` as float64 (no copy when it already is).

        Raises
        ------
        ConfigError
            If its shape is not ``(n_params,)``.
        """
        params = np.asarray(params, dtype=np.float64)
        if params.shape != (self.n_params,):
            raise ConfigError(
                f"parameter vector must have shape ({self.n_params},), got {params.shape}"
            )
        return params

    def check_X(self, X: np.ndarray) -> np.ndarray:
        """Validate a feature matrix.

        Parameters
        ----------
        X : numpy.ndarray
            Candidate features.

        Returns
        -------
        numpy.ndarray
            ``X`` as float64 (no copy when it already is).

        Raises
        ------
        SchemaMismatch
            If ``X`` is not 2-D with ``n_features`` columns.
        """
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise SchemaMismatch(
                f"data has shape {X.shape} but the model expects {self.n_features} features"
            )
        return X

    def check_y(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Validate the labels of checked features ``X``.

        Parameters
        ----------
        X : numpy.ndarray or torch.Tensor
            Features, already checked by :meth:`check_X` (anything with a
            ``shape``).
        y : numpy.ndarray
            Candidate labels.

        Returns
        -------
        numpy.ndarray
            ``y`` as int64: no copy when it already is, unless the class sets
            :attr:`copy_labels`.

        Raises
        ------
        SchemaMismatch
            If ``y`` is not one label per row of ``X``, or a label lies outside
            ``[0, n_classes)``.
        ConfigError
            If there are no samples.
        """
        y = np.asarray(y)
        if y.shape != (X.shape[0],):
            raise SchemaMismatch(f"expected {X.shape[0]} labels, got shape {y.shape}")
        if X.shape[0] == 0:
            raise ConfigError("no samples given")
        if y.min() < 0 or y.max() >= self.n_classes:
            raise SchemaMismatch(
                f"labels must lie in [0, {self.n_classes}), got range [{y.min()}, {y.max()}]"
            )
        return y.astype(np.int64, copy=self.copy_labels)


class Model(InputChecks, ABC):
    """A classifier whose parameters are one flat float64 vector.

    Subclasses define ``n_features``, ``n_classes`` and ``n_params``, the
    unchecked class scores :meth:`_logits` and the unchecked gradient
    :meth:`grad_fn`. The validators :meth:`check_params`, :meth:`check_X`
    and :meth:`check_y` (from :class:`InputChecks`) are public so that
    callers running many unchecked steps (:func:`fedmarket.fl.train.local_sgd`)
    validate their inputs once, with the same error messages as the checked
    methods. A subclass that can train many clients at once also defines
    :meth:`batched_step` (see :func:`fedmarket.fl.train.local_sgd_many`).
    """

    @abstractmethod
    def init_params(self) -> np.ndarray:
        """Return the initial parameter vector, float64 of length ``n_params``."""

    @abstractmethod
    def _logits(self, params: np.ndarray, X: np.ndarray) -> np.ndarray:
        """Class scores for checked inputs, shape ``(n, n_classes)``."""

    @abstractmethod
    def grad_fn(self, w: np.ndarray) -> GradFn:
        """Return the unchecked loss-and-gradient function at ``w``.

        Parameters
        ----------
        w : numpy.ndarray
            Parameter vector of length ``n_params``. It is read live: the
            returned function sees in-place updates of ``w``.

        Returns
        -------
        callable
            ``f(X, y) -> (loss, grad)`` as :meth:`loss_and_grad`, for inputs
            already validated by :meth:`check_X` and :meth:`check_y`.
        """

    @property
    def supports_batched(self) -> bool:
        """Whether :meth:`batched_step` trains many clients in one vectorised step."""
        return type(self).batched_step is not Model.batched_step

    def batched_step(
        self, P: np.ndarray, Xb: np.ndarray, yb: np.ndarray, sw: np.ndarray, lr: float
    ) -> None:
        """One SGD step of many clients at once, in place (optional).

        Parameters
        ----------
        P : numpy.ndarray
            Parameters of ``a`` clients, shape ``(a, n_params)``; updated in place
            to ``P - lr * grad``.
        Xb : numpy.ndarray
            One mini-batch per client, shape ``(a, B, n_features)``.
        yb : numpy.ndarray
            Its labels, shape ``(a, B)``.
        sw : numpy.ndarray
            Sample weights ``(a, B)``: ``1 / batch size`` for real samples,
            0 for padding.
        lr : float
            Step size.

        Raises
        ------
        NotImplementedError
            If the model cannot train clients in a batch (see :attr:`supports_batched`).
        """
        raise NotImplementedError(f"{type(self).__name__} cannot train clients in a batch")

    def logits(self, params: np.ndarray, X: np.ndarray) -> np.ndarray:
        """Return the class scores of the model at ``params``.

        Parameters
        ----------
        params : numpy.ndarray
            Parameter vector of length ``n_params``.
        X : numpy.ndarray
            Features, shape ``(n, n_features)``.

        Returns
        -------
        numpy.ndarray
            float64 logits, shape ``(n, n_classes)``.
        """
        params, X = self.check_params(params), self.check_X(X)
        if X.shape[0] <= EVAL_BATCH:
            return self._logits(params, X)
        return np.concatenate([self._logits(params, X[s : s + EVAL_BATCH]) for s in range(0, X.shape[0], EVAL_BATCH)])

    def predict(self, params: np.ndarray, X: np.ndarray) -> np.ndarray:
        """Return the predicted labels (int64, shape ``(n,)``)."""
        return np.argmax(self.logits(params, X), axis=1).astype(np.int64)

    def loss_and_grad(
        self, params: np.ndarray, X: np.ndarray, y: np.ndarray
    ) -> tuple[float, np.ndarray]:
        """Mean cross-entropy plus the L2 penalty, and its gradient.

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
        params = self.check_params(params)
        X = self.check_X(X)
        y = self.check_y(X, y)
        return self.grad_fn(params)(X, y)

    def accuracy(self, params: np.ndarray, X: np.ndarray, y: np.ndarray) -> float:
        """Return the fraction of samples whose predicted label equals ``y``."""
        X = self.check_X(X)
        y = self.check_y(X, y)
        return float(np.mean(self.predict(params, X) == y))


def _log_softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax along the last axis (``z`` is overwritten)."""
    z -= z.max(axis=-1, keepdims=True)
    z -= np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return z


def _softmax_minus_onehot(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``softmax(z) - onehot(y)`` along the last axis, computed in place in ``z``."""
    z -= z.max(axis=-1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=-1, keepdims=True)
    np.put_along_axis(
        z, y[..., None], np.take_along_axis(z, y[..., None], axis=-1) - 1.0, axis=-1
    )
    return z


class SoftmaxRegression(Model):
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
        params = self.check_params(params)
        k = self.n_features * self.n_classes
        return params[:k].reshape(self.n_features, self.n_classes), params[k:]

    def _logits(self, params: np.ndarray, X: np.ndarray) -> np.ndarray:
        W, b = self._unpack(params)
        return X @ W + b

    def grad_fn(self, w: np.ndarray) -> GradFn:
        """Return the unchecked ``f(X, y) -> (loss, grad)`` at ``w`` (see :meth:`Model.grad_fn`)."""
        W, b = self._unpack(w)
        return lambda X, y: self._loss_and_grad(W, b, X, y)

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

    def batched_step(
        self, P: np.ndarray, Xb: np.ndarray, yb: np.ndarray, sw: np.ndarray, lr: float
    ) -> None:
        """One SGD step of many clients at once, in place (see :meth:`Model.batched_step`)."""
        a, d, c = P.shape[0], self.n_features, self.n_classes
        k = d * c
        W = P[:, :k].reshape(a, d, c)
        g = _softmax_minus_onehot(np.matmul(Xb, W) + P[:, None, k:], yb)
        g *= (lr * sw)[..., None]
        gW = np.matmul(np.swapaxes(Xb, 1, 2), g)
        W_flat = P[:, :k]  # contiguous rows: far faster in place than the 3-D view
        if self.l2:
            W_flat *= 1.0 - lr * self.l2
        W_flat -= gW.reshape(a, k)
        P[:, k:] -= g.sum(axis=1)


class MLP(Model):
    """Fully connected network with ReLU (or tanh) hidden layers and a softmax output.

    Parameters are a flat float64 vector: for each layer in turn its weight
    matrix ``(fan_in, fan_out)`` in row-major order, then its bias
    ``(fan_out,)``. McMahan et al.'s "2NN" is ``MLP(784, 10, hidden=(200, 200))``.

    Parameters
    ----------
    n_features : int
        Number of input features, ``>= 1``.
    n_classes : int
        Number of classes, ``>= 2``.
    hidden : sequence of int, optional
        Widths of the hidden layers, each ``>= 1`` (default one layer of 100).
    l2 : float, optional
        L2 penalty coefficient on the weight matrices (not the biases), ``>= 0``.
    seed : int, optional
        Seed of :meth:`init_params` (He-uniform weights, zero biases).
    activation : str, optional
        ``"relu"`` (default) or ``"tanh"``.
    """

    ACTIVATIONS = ("relu", "tanh")

    def __init__(
        self,
        n_features: int,
        n_classes: int,
        hidden: Sequence[int] = (100,),
        l2: float = 0.0,
        seed: int = 0,
        activation: str = "relu",
    ) -> None:
        if int(n_features) != n_features or n_features < 1:
            raise ConfigError(f"n_features must be a positive integer, got {n_features!r}")
        if int(n_classes) != n_classes or n_classes < 2:
            raise ConfigError(f"n_classes must be an integer >= 2, got {n_classes!r}")
        hidden = tuple(hidden)
        if not hidden or any(isinstance(h, bool) or int(h) != h or h < 1 for h in hidden):
            raise ConfigError(f"hidden must be a non-empty sequence of positive integers, got {hidden!r}")
        if not np.isfinite(l2) or l2 < 0:
            raise ConfigError(f"l2 must be a non-negative number, got {l2!r}")
        if activation not in self.ACTIVATIONS:
            raise ConfigError(f"unknown activation '{activation}'; choose one of: {', '.join(self.ACTIVATIONS)}")
        self.activation = activation
        self.n_features = int(n_features)
        self.n_classes = int(n_classes)
        self.hidden = tuple(int(h) for h in hidden)
        self.l2 = float(l2)
        self.seed = int(seed)
        sizes = (self.n_features, *self.hidden, self.n_classes)
        self._layers: list[tuple[int, int, int]] = []  # (offset, fan_in, fan_out)
        off = 0
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            self._layers.append((off, fan_in, fan_out))
            off += fan_in * fan_out + fan_out
        self.n_params = off

    def __repr__(self) -> str:
        return (
            f"MLP(n_features={self.n_features}, n_classes={self.n_classes}, "
            f"hidden={self.hidden}, l2={self.l2}, seed={self.seed}, activation={self.activation!r})"
        )

    def init_params(self) -> np.ndarray:
        """Return He-uniform weights (bound ``sqrt(6 / fan_in)``) and zero biases, seeded by ``seed``."""
        rng = np.random.default_rng(self.seed)
        w = np.zeros(self.n_params)
        for off, fan_in, fan_out in self._layers:
            bound = np.sqrt(6.0 / fan_in)
            w[off : off + fan_in * fan_out] = rng.uniform(-bound, bound, fan_in * fan_out)
        return w

    def _views(self, w: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """(W, b) views into a parameter vector ``(n_params,)`` or stack ``(a, n_params)``."""
        lead = w.shape[:-1]
        out = []
        for off, fan_in, fan_out in self._layers:
            k = off + fan_in * fan_out
            out.append((w[..., off:k].reshape(*lead, fan_in, fan_out), w[..., k : k + fan_out]))
        return out

    def _forward(self, layers, X: np.ndarray) -> list[np.ndarray]:
        """Activations of every layer; the last entry holds the logits."""
        acts = [X]
        for i, (W, b) in enumerate(layers):
            z = np.matmul(acts[-1], W)
            z += b[..., None, :] if W.ndim == 3 else b
            if i < len(layers) - 1:
                if self.activation == "relu":
                    np.maximum(z, 0.0, out=z)
                else:
                    np.tanh(z, out=z)
            acts.append(z)
        return acts

    def _logits(self, params: np.ndarray, X: np.ndarray) -> np.ndarray:
        return self._forward(self._views(params), X)[-1]

    def _backward(
        self, layers, acts: list[np.ndarray], g: np.ndarray, grad_layers=None, P=None, lr: float = 0.0
    ) -> None:
        """Back-propagate the output gradient ``g`` through every layer.

        With ``grad_layers`` the gradients are written there (``g`` includes
        the ``1 / n`` factor). Otherwise every layer of the stack ``P`` takes
        its SGD step in place (``g`` then also includes the learning rate
        ``lr``); the updates go through contiguous 2-D slices of ``P``, which
        numpy streams far faster than strided 3-D views.
        """
        for i in range(len(layers) - 1, -1, -1):
            W, b = layers[i]
            gW = np.matmul(np.swapaxes(acts[i], -1, -2), g, out=None if grad_layers is None else grad_layers[i][0])
            gb = g.sum(axis=-2)
            if i:  # propagate with the weights of before this step
                g = np.matmul(g, np.swapaxes(W, -1, -2))
                if self.activation == "relu":
                    g *= acts[i] > 0
                else:
                    g *= 1.0 - acts[i] * acts[i]
            if grad_layers is not None:
                grad_layers[i][1][...] = gb
                if self.l2:
                    gW += self.l2 * W
            else:
                off, fan_in, fan_out = self._layers[i]
                k = off + fan_in * fan_out
                W_flat = P[:, off:k]
                if self.l2:
                    W_flat *= 1.0 - lr * self.l2
                W_flat -= gW.reshape(gW.shape[0], -1)
                P[:, k : k + fan_out] -= gb

    def grad_fn(self, w: np.ndarray) -> GradFn:
        """Return the unchecked ``f(X, y) -> (loss, grad)`` at ``w`` (see :meth:`Model.grad_fn`)."""
        layers = self._views(self.check_params(w))

        def f(X: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
            n = X.shape[0]
            acts = self._forward(layers, X)
            log_p = _log_softmax(acts[-1].copy())
            loss = -float(log_p[np.arange(n), y].mean())
            if self.l2:
                loss += 0.5 * self.l2 * sum(float(np.vdot(W, W)) for W, _ in layers)
            g = np.exp(log_p)
            g[np.arange(n), y] -= 1.0
            g /= n
            grad = np.empty(self.n_params)
            self._backward(layers, acts, g, self._views(grad))
            return loss, grad

        return f

    def batched_step(
        self, P: np.ndarray, Xb: np.ndarray, yb: np.ndarray, sw: np.ndarray, lr: float
    ) -> None:
        """One SGD step of many clients at once, in place (see :meth:`Model.batched_step`)."""
        layers = self._views(P)
        acts = self._forward(layers, Xb)
        g = _softmax_minus_onehot(acts[-1], yb)
        g *= (lr * sw)[..., None]
        self._backward(layers, acts, g, P=P, lr=lr)
