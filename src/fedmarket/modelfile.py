"""Model out: a job's trained model as a file (``.npz``, ``.pt`` or ONNX), read back for predictions.

- ``.npz`` (no PyTorch needed for softmax and MLP jobs): the parameters, the committed fixed-point
  vector, the job's spec and, for a ``torch`` job, its packed module; it rebuilds the very model
  the job's roles used (:func:`fedmarket.jobmodel.job_model`).
- ``.pt``: a ``torch.export`` program of the model in evaluation mode that takes raw features
  (the schema's scaling is part of it): ``torch.export.load(path).module()(x)`` gives class scores.
- ``.onnx``: the same program exported to ONNX (needs ``onnx`` and ``onnxscript``).

``.pt`` and ``.onnx`` files carry the class names and feature columns as metadata
(``fedmarket.json``), so predictions come out as class names.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ConfigError, SchemaMismatch
from .jobmodel import JobModel, job_model
from .spec import JobSpec
from .storage import BlobStore, cid_of

FORMATS = (".npz", ".pt", ".onnx")
ONNX_HINT = "ONNX export needs onnx and onnxscript: `pip install fedmarket[onnx]`"


@dataclass(frozen=True)
class TrainedModel:
    """A job's trained model: its spec, the committed vector it came from, and where."""

    spec: JobSpec
    q: np.ndarray
    job_id: int
    round: int
    model_root: bytes
    packed: bytes = b""

    @property
    def job_model(self) -> JobModel:
        return job_model(self.spec, _PackStore(self.packed) if self.packed else None)

    @property
    def params(self) -> np.ndarray:
        return self.job_model.params(self.q)

    def meta(self) -> dict:
        d = self.spec.data
        return {"job_id": self.job_id, "round": self.round, "model_root": "0x" + self.model_root.hex(),
                "classes": d.classes or [str(i) for i in range(d.n_classes)], "features": d.features,
                "input_shape": list(d.shape), "model": self.spec.model.kind}


class _PackStore(BlobStore):
    """The one blob a model file carries (a torch job's packed module), verified like any store's."""

    def __init__(self, packed: bytes) -> None:
        self.packed = packed

    def put(self, data: bytes) -> str:
        raise ConfigError("a model file's store is read-only")

    def _read(self, cid: str) -> bytes:
        if cid_of(self.packed) != cid:
            raise SchemaMismatch(f"the model file carries no blob {cid}")
        return self.packed


# ---- writing ---------------------------------------------------------------------------------------


def save(model: TrainedModel, path: str | os.PathLike) -> Path:
    """Write ``model`` in the format ``path``'s suffix names (.npz, .pt or .onnx)."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in FORMATS:
        raise ConfigError(f"unknown model format '{suffix or p.name}'; use one of: {', '.join(FORMATS)}")
    p.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".npz":
        np.savez(p, params=model.params, committed=model.q, spec=np.frombuffer(model.spec.canonical(), np.uint8),
                 module=np.frombuffer(model.packed, np.uint8), job_id=model.job_id, round=model.round,
                 model_root=np.frombuffer(model.model_root, np.uint8))
        return p
    program = export_program(model)
    meta = json.dumps(model.meta(), sort_keys=True)
    if suffix == ".pt":
        import torch

        torch.export.save(program, p, extra_files={"fedmarket.json": meta})
        return p
    try:
        import onnx
        import onnxscript  # noqa: F401 - torch's ONNX exporter imports it
    except ImportError:
        raise ConfigError(ONNX_HINT) from None
    import torch

    onnx_program = torch.onnx.export(program, dynamo=True, verbose=False)
    proto = onnx_program.model_proto
    onnx.helper.set_model_props(proto, {"fedmarket.json": meta})
    onnx.save(proto, p)
    return p


def export_program(model: TrainedModel):
    """The trained model as a ``torch.export`` program in evaluation mode that takes raw features
    ``(batch, n_features)`` (float32) and returns class scores."""
    from .fl.torch_models import inference_module, linear_stack, torch_module

    torch = torch_module()
    spec, jm = model.spec, model.job_model
    params = model.params
    m = spec.model
    if m.kind == "softmax":
        net = linear_stack(params, [spec.data.n_features, spec.data.n_classes], "relu")
    elif m.kind == "mlp":
        net = linear_stack(params, [spec.data.n_features, *m.hidden, spec.data.n_classes], m.activation)
    else:
        net = jm.model.evaluation_module(params)
    shape = spec.data.shape if m.kind in ("cnn", "torch") else (spec.data.n_features,)
    wrapper = inference_module(net, np.asarray(spec.data.feature_low), np.asarray(spec.data.feature_high), shape).eval()
    example = (torch.zeros(2, spec.data.n_features),)
    dims = ({0: torch.export.Dim("batch", min=1, max=1 << 20)},)
    with torch.no_grad():
        return torch.export.export(wrapper, example, dynamic_shapes=dims, strict=False)


# ---- reading and predicting ------------------------------------------------------------------------


class Predictor:
    """Class predictions of a model file on raw features."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ConfigError(f"model file {self.path} does not exist")
        suffix = self.path.suffix.lower()
        if suffix not in FORMATS:
            raise ConfigError(f"unknown model format '{suffix}'; fedmarket writes {', '.join(FORMATS)}")
        self.kind = suffix
        self.meta, self._scores = {".npz": self._npz, ".pt": self._pt, ".onnx": self._onnx}[suffix]()

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def features(self) -> list[str] | None:
        return self.meta.get("features")

    def scores(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != int(np.prod(self.meta["input_shape"])):
            raise SchemaMismatch(f"the model takes {int(np.prod(self.meta['input_shape']))} features; the data has "
                                 f"{X.shape[1] if X.ndim == 2 else X.shape}")
        return self._scores(X)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Class indices."""
        return np.argmax(self.scores(X), axis=1).astype(np.int64)

    def _npz(self):
        trained = read_npz(self.path)
        jm = trained.job_model
        return trained.meta(), lambda X: np.asarray(jm.model.logits(trained.params, jm.features(X)))

    def _pt(self):
        from .fl.torch_archive import check_activations, read_program, torch_errors
        from .fl.torch_models import torch_module

        torch = torch_module()
        # never torch.export.load: it runs code an archive carries (pickles, guards, sympy strings);
        # read_program checks every byte of the file before torch sees any of it
        program, raw_meta = read_program(torch, self.path.read_bytes(), f"{self.path}", extra=True)
        meta = _meta(raw_meta, self.path)
        with torch_errors(str(self.path)):
            check_activations(torch, program, (int(np.prod(meta["input_shape"])),), str(self.path))
            module = program.module()

        def scores(X):
            with torch_errors(str(self.path)), torch.no_grad():
                return module(torch.from_numpy(X.astype(np.float32))).double().numpy()

        return meta, scores

    def _onnx(self):
        try:
            import onnx
            from onnx.reference import ReferenceEvaluator
        except ImportError:
            raise ConfigError(ONNX_HINT) from None
        try:
            proto = onnx.load(self.path)
        except Exception as exc:  # noqa: BLE001 - protobuf's decode errors
            raise SchemaMismatch(f"{self.path} is not an ONNX model ({type(exc).__name__})") from None
        meta = _meta({p.key: p.value for p in proto.metadata_props}.get("fedmarket.json", ""), self.path)
        session = _onnx_session(proto, ReferenceEvaluator)
        name = proto.graph.input[0].name
        return meta, lambda X: np.asarray(session(name, X.astype(np.float32)), dtype=np.float64)


def _onnx_session(proto, reference):
    """Run with onnxruntime when it is installed, else with onnx's reference evaluator."""
    try:
        import onnxruntime as ort

        sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        return lambda name, X: sess.run(None, {name: X})[0]
    except ImportError:
        ev = reference(proto)
        return lambda name, X: ev.run(None, {name: X})[0]


def _meta(raw: str, path: Path) -> dict:
    try:
        meta = json.loads(raw)
        classes, shape = meta["classes"], meta["input_shape"]
        if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)
                and isinstance(shape, list) and shape and all(type(v) is int and v >= 1 for v in shape)):
            raise ValueError
        return meta
    except (ValueError, KeyError, TypeError):
        raise SchemaMismatch(f"{path} carries no fedmarket metadata (write it with `fedmarket model get`)") from None


def read_npz(path: str | os.PathLike) -> TrainedModel:
    """A model file written by :func:`save` as ``.npz``, its parameters checked against its spec."""
    p = Path(path)
    with open(p, "rb") as fh:
        if fh.read(4) != b"PK\x03\x04":
            raise SchemaMismatch(f"{p} is not a fedmarket model file (write one with `fedmarket model get --out FILE.npz`)")
    from .fl.localdata import check_unpacked_size

    check_unpacked_size(p, "fedmarket model file")
    try:
        with np.load(p, allow_pickle=False) as doc:
            spec = JobSpec.parse(doc["spec"].tobytes())
            scalars = {}
            for key in ("job_id", "round"):
                v = doc[key]
                if v.shape != () or v.dtype.kind not in "iu":
                    raise ValueError(f"its {key} is not one integer")
                scalars[key] = int(v)
            for key in ("committed", "model_root", "module", "params"):
                if doc[key].ndim != 1:
                    raise ValueError(f"its {key} is not a vector")
            trained = TrainedModel(spec, doc["committed"].astype(np.int64), scalars["job_id"], scalars["round"],
                                   doc["model_root"].tobytes(), doc["module"].tobytes())
            params = doc["params"]
    except (KeyError, ValueError, TypeError, OSError, EOFError) as exc:
        raise SchemaMismatch(f"{p} is not a fedmarket model file ({type(exc).__name__}: {str(exc)[:80]})") from None
    if trained.q.shape != (spec.n_params,) or not np.array_equal(trained.params, params):
        raise SchemaMismatch(f"{p}: its parameters do not match its committed vector and spec")
    return trained


def trained_model(dep, store: BlobStore, job_id: int, round_: int | None = None) -> TrainedModel:
    """A job's model after round ``round_`` (the last committed one by default), verified: the spec
    against its on-chain hash, the round against the market's accumulator, the model blob against
    the round's model root (and a torch job's packed module against its content id)."""
    from .roles.common import fetch_model, load_spec, verified_round

    spec = load_spec(dep, store, job_id)
    committed = verified_round(dep, job_id, round_)
    q = fetch_model(store, spec, committed)
    packed = b""
    if spec.model.kind == "torch":
        from .fl.torch_models import pack_byte_limit

        packed = store.get_capped(spec.model.module_cid, pack_byte_limit(spec.n_params))
    return TrainedModel(spec, q, job_id, committed.round, committed.model_root, packed)
