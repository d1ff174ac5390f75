"""A job's model as every role sees it: built from the spec (a torch job's packed module fetched
by its content id and checked), the fixed-point starting point the spec commits to, and the
parameters a committed vector stands for.

Rounds commit the model *relative to its initial weights*: the chain's round-0 base is the zero
vector, and the spec (hashed on chain) fixes the initial weights ``w0`` (zeros for softmax
regression, seeded He-uniform weights for the MLP and the CNN, the packed weights of a user's
module). The model a committed vector ``q`` stands for is ``dequantize(base + q)`` with
``base = quantize(w0)``: every aggregation rule acts on updates (differences), so the offset
changes nothing a dispute game recomputes, and anyone holding the spec reproduces the model
from the on-chain model root.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .errors import SchemaMismatch
from .fl.quantize import dequantize, quantize
from .fl.train import local_train
from .spec import JobSpec
from .storage import BlobStore

_CACHE: OrderedDict[bytes, JobModel] = OrderedDict()
_CACHE_SIZE = 8


class JobModel:
    """The model of one job spec: the engine model, its committed base, and the conversions.

    Parameters
    ----------
    spec : JobSpec
        The job.
    model : object
        The engine model (``init_params``, ``accuracy``, ``predict``, ``logits``, and
        ``train_local`` or ``grad_fn``) whose initial parameters are the job's ``w0``.
    """

    def __init__(self, spec: JobSpec, model) -> None:
        if model.n_params != spec.n_params:
            raise SchemaMismatch(f"the model has {model.n_params} parameters; the spec says {spec.n_params}")
        self.spec = spec
        self.model = model
        self.base = quantize(model.init_params())

    @property
    def n_params(self) -> int:
        return self.spec.n_params

    def params(self, q: np.ndarray) -> np.ndarray:
        """The float64 parameters a committed vector ``q`` stands for: ``dequantize(base + q)``."""
        return dequantize(self.base + np.asarray(q, dtype=np.int64))

    def committed(self, params: np.ndarray) -> np.ndarray:
        """The committed vector of parameters (``quantize(params) - base``), the inverse of :meth:`params`."""
        return quantize(params) - self.base

    def features(self, X: np.ndarray) -> np.ndarray:
        """Features scaled to [0, 1] with the schema's bounds, as the model takes them."""
        return self.spec.normalize(X)

    def train(self, q_global: np.ndarray, X: np.ndarray, y: np.ndarray, *, seed: int, round_: int,
              scaled: bool = False) -> np.ndarray:
        """One round of local training from the committed global model with the job's settings;
        returns the float delta (new parameters minus the round's starting parameters). ``X`` is
        raw, or already :meth:`features` when ``scaled``."""
        start = self.params(q_global)
        Xn = X if scaled else self.features(X)
        local = local_train(self.model, start, Xn, y, self.spec.training.local(), seed=seed, round_=round_)
        return local - start

    def accuracy(self, q: np.ndarray, X: np.ndarray, y: np.ndarray) -> float:
        """Accuracy of the model ``q`` stands for on raw features ``X`` and labels ``y``."""
        return float(self.model.accuracy(self.params(q), self.features(X), y))

    def predict(self, q: np.ndarray, X: np.ndarray) -> np.ndarray:
        """Predicted class indices of the model ``q`` stands for on raw features ``X``."""
        return np.asarray(self.model.predict(self.params(q), self.features(X)), dtype=np.int64)


def job_model(spec: JobSpec, store: BlobStore | None = None) -> JobModel:
    """The job's model, checked against its spec (cached per spec hash). A ``torch`` job's packed
    module is read from ``store`` by the content id the spec names (the store verifies the bytes
    against it) and must have the spec's parameter count and shapes.

    Raises
    ------
    SchemaMismatch
        If the packed module is missing from the spec's blob or does not fit the spec.
    ConfigError
        If the model needs PyTorch and it is not installed.
    """
    key = spec.hash()
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    if spec.model.kind == "torch":
        from .errors import StorageError
        from .fl.torch_models import load_packed, pack_byte_limit

        if store is None:
            raise SchemaMismatch("a torch job's model is a packed module in the blob store: no store given")
        try:
            raw = store.get_capped(spec.model.module_cid, pack_byte_limit(spec.n_params))
        except StorageError as exc:
            raise SchemaMismatch(f"the job's packed module {spec.model.module_cid} is unavailable: {exc}") from None
        model = load_packed(raw, spec.data.n_features, spec.data.n_classes, spec.model.l2,
                            n_params=spec.n_params)  # caps the weights it reads
        if spec.data.input_shape is not None and tuple(model.input_shape) != spec.data.shape:
            raise SchemaMismatch(f"the packed module takes input {model.input_shape}; the schema's is {spec.data.shape}")
    else:
        model = spec.make_model()
    jm = JobModel(spec, model)
    _CACHE[key] = jm
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return jm
