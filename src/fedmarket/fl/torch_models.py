"""PyTorch networks on a flat parameter vector: McMahan et al.'s CNN and a user's own packed module, trained deterministically (optional: needs torch).

A :class:`TorchNet` sees a network's state as one float64 vector: every trainable parameter,
then every floating-point buffer (BatchNorm's running statistics), each flattened row-major in
``state_dict`` order. That vector is what a market job quantizes, commits and aggregates, so
buffers are averaged like weights; integer buffers (``num_batches_tracked``) are not part of it
and start every round from their packed values. Local training runs with one thread, PyTorch's
deterministic algorithms and a generator seeded by the round's seed, so a round is reproducible.

A user's module travels as a *packed module* (:func:`pack_module`): a zip holding two
``torch.export`` programs of it, one captured in training mode and one in evaluation mode
(batch dimension dynamic), with its initial weights, plus a small JSON header. A job names the
pack by its content id; every role loads it with :func:`load_packed` and checks it against the
spec before it stakes. Loading runs no Python code of the user's: ``torch_archive.read_program`` checks
every byte of each program against what ``torch.export.save`` writes (never ``torch.export.load``,
which unpickles and execs parts of an archive), its graph calls only ``torch_archive.ALLOWED_OPS``, its
intermediate tensors are bounded, and its training program takes one step before anyone stakes.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import zipfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from fedmarket.errors import ConfigError, SchemaMismatch
from fedmarket.fl.models import EVAL_BATCH, InputChecks
from fedmarket.fl.optim import LocalTraining
from fedmarket.fl.torch_archive import check_activations, pack_header, read_program, stored_zip, torch_errors

TORCH_HINT = "install PyTorch (CPU build) with the extra `pip install fedmarket[torch]`"
PACK_FORMAT = 1
_ZIP_TIME = (2020, 1, 1, 0, 0, 0)  # fixed member times: the same module packs to the same bytes


def torch_module() -> Any:
    """The ``torch`` package, or ConfigError saying how to install it."""
    try:
        import torch
    except ImportError:  # pragma: no cover - exercised only without torch
        raise ConfigError(f"this model needs PyTorch: {TORCH_HINT}") from None
    return torch


# ---- McMahan et al. (2017)'s CNN ----------------------------------------------------------------


def cnn_shapes(input_shape: Sequence[int], n_classes: int, channels: Sequence[int], kernel: int,
               dense: int) -> list[tuple[str, tuple[int, ...]]]:
    """Parameter names and shapes of :func:`mcmahan_cnn`, in ``state_dict`` order (no torch needed)."""
    c, h, w = (int(v) for v in input_shape)
    out: list[tuple[str, tuple[int, ...]]] = []
    for i, ch in enumerate(channels):
        out += [(f"convs.{2 * i}.weight", (int(ch), c, kernel, kernel)), (f"convs.{2 * i}.bias", (int(ch),))]
        c, h, w = int(ch), h // 2, w // 2
    if h < 1 or w < 1:
        raise ConfigError(f"input {tuple(input_shape)} is too small for {len(channels)} 2x2 poolings")
    out += [("fc.weight", (dense, c * h * w)), ("fc.bias", (dense,)), ("out.weight", (n_classes, dense)),
            ("out.bias", (n_classes,))]
    return out


def cnn_param_count(input_shape: Sequence[int], n_classes: int, channels: Sequence[int] = (32, 64), kernel: int = 5,
                    dense: int = 512) -> int:
    """Number of parameters of :func:`mcmahan_cnn` (1,663,370 for MNIST's 1x28x28 and 10 classes)."""
    return sum(math.prod(s) for _, s in cnn_shapes(input_shape, n_classes, channels, kernel, dense))


def cnn_init(input_shape: Sequence[int], n_classes: int, channels: Sequence[int], kernel: int, dense: int,
             seed: int) -> np.ndarray:
    """Initial flat parameters of the CNN: He-uniform weights (bound ``sqrt(6 / fan_in)``), zero
    biases, drawn by numpy from ``seed`` (the same on every machine and PyTorch release)."""
    rng = np.random.default_rng(seed)
    parts = []
    for name, shape in cnn_shapes(input_shape, n_classes, channels, kernel, dense):
        if name.endswith("bias"):
            parts.append(np.zeros(math.prod(shape)))
        else:
            fan_in = math.prod(shape[1:])
            bound = math.sqrt(6.0 / fan_in)
            parts.append(rng.uniform(-bound, bound, math.prod(shape)))
    return np.concatenate(parts)


def mcmahan_cnn(input_shape: Sequence[int], n_classes: int, channels: Sequence[int] = (32, 64), kernel: int = 5,
                dense: int = 512) -> Any:
    """The CNN of McMahan et al. (2017): 5x5 convolutions (32, then 64 channels, 'same' padding),
    each followed by ReLU and 2x2 max pooling, a ReLU layer of 512 units, and the class scores."""
    torch = torch_module()
    nn = torch.nn

    class CNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layers: list[Any] = []
            c = int(input_shape[0])
            for ch in channels:
                layers += [nn.Conv2d(c, int(ch), kernel, padding=kernel // 2), nn.ReLU(), nn.MaxPool2d(2)]
                c = int(ch)
            self.convs = nn.Sequential(*layers)
            _, (dense_, flat) = cnn_shapes(input_shape, n_classes, channels, kernel, dense)[-4]
            self.fc = nn.Linear(flat, dense_)
            self.out = nn.Linear(dense_, n_classes)

        def forward(self, x):
            x = self.convs(x.reshape(x.shape[0], *input_shape))
            return self.out(torch.relu(self.fc(x.flatten(1))))

    return CNN()


# ---- deterministic execution --------------------------------------------------------------------


@contextlib.contextmanager
def deterministic(seed: int):
    """One thread, deterministic algorithms and PyTorch's generator seeded by ``seed``; the
    previous settings and generator state come back afterwards."""
    torch = torch_module()
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed) % (2**63))
            yield torch
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det)


def _optimizer(torch: Any, cfg: LocalTraining, params: list, lr: float) -> Any:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)


# ---- a network as a flat vector -----------------------------------------------------------------


class TorchNet(InputChecks):
    """A PyTorch classifier whose parameters and floating buffers are one flat float64 vector.

    Parameters
    ----------
    train_module, eval_module : torch.nn.Module
        The network in training and in evaluation mode: the same module (switched with
        ``train()``/``eval()``) or two programs sharing parameter and buffer names (a packed
        module's). Each maps float32 input ``(n, *input_shape)`` to logits ``(n, n_classes)``.
    n_features, n_classes : int
        Width of the (flattened) input and number of classes.
    input_shape : sequence of int, optional
        Shape of one input (default ``(n_features,)``).
    l2 : float, optional
        L2 penalty on the trainable parameters.
    init : numpy.ndarray, optional
        Initial flat vector (default: the module's current values).
    """

    copy_labels = True

    def __init__(self, train_module: Any, eval_module: Any, n_features: int, n_classes: int,
                 input_shape: Sequence[int] | None = None, l2: float = 0.0, init: np.ndarray | None = None) -> None:
        torch = torch_module()
        self.n_features, self.n_classes, self.l2 = int(n_features), int(n_classes), float(l2)
        self.input_shape = tuple(int(v) for v in (input_shape or (n_features,)))
        if math.prod(self.input_shape) != self.n_features:
            raise ConfigError(f"input shape {self.input_shape} does not hold {self.n_features} features")
        self.train_module, self.eval_module = train_module, eval_module
        self.switch = train_module is eval_module  # a native module changes mode; exported programs are fixed
        self._train, self._trainable = _flat_entries(torch, train_module)
        self._eval = self._train if self.switch else _flat_entries(torch, eval_module)[0]
        if [(n, t.shape) for n, t in self._train] != [(n, t.shape) for n, t in self._eval]:
            raise ConfigError("the training and evaluation programs do not hold the same parameters and buffers")
        self._ints = {n: t.detach().clone() for n, t in _int_buffers(torch, train_module)}
        self.n_params = sum(int(t.numel()) for _, t in self._train)
        norms = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d, torch.nn.SyncBatchNorm)
        self.has_batchnorm = any(isinstance(m, norms) for m in train_module.modules()) \
            or any(n.endswith("running_var") for n, _ in self._train)
        self._init = self._get() if init is None else self.check_params(init).copy()

    def __repr__(self) -> str:
        return f"TorchNet(n_params={self.n_params}, input_shape={self.input_shape}, n_classes={self.n_classes})"

    @property
    def names(self) -> list[str]:
        """Names of the entries of the flat vector, in order."""
        return [n for n, _ in self._train]

    def init_params(self) -> np.ndarray:
        return self._init.copy()

    def _get(self) -> np.ndarray:
        torch = torch_module()
        with torch.no_grad():
            return torch.cat([t.detach().reshape(-1).to(torch.float64) for _, t in self._train]).numpy().copy()

    def _set(self, params: np.ndarray) -> None:
        torch = torch_module()
        flat = torch.from_numpy(self.check_params(params))
        with torch.no_grad():
            for entries in ((self._train,) if self.switch else (self._train, self._eval)):
                off = 0
                for _, t in entries:
                    k = t.numel()
                    t.copy_(flat[off : off + k].reshape(t.shape).to(t.dtype))
                    off += k
            for name, value in _int_buffers(torch, self.train_module):
                value.copy_(self._ints[name])

    def _inputs(self, X: np.ndarray) -> Any:
        torch = torch_module()
        return torch.from_numpy(self.check_X(X)).to(torch.float32).reshape(-1, *self.input_shape)

    def logits(self, params: np.ndarray, X: np.ndarray, batch: int = EVAL_BATCH) -> np.ndarray:
        """Class scores ``(n, n_classes)`` of the network in evaluation mode."""
        X = self.check_X(X)
        with deterministic(0) as torch:
            self._set(params)
            if self.switch:
                self.eval_module.eval()
            with torch.no_grad():
                outs = [self.eval_module(self._inputs(X[s : s + batch])) for s in range(0, X.shape[0], batch)]
        return torch.cat(outs).to(torch.float64).numpy()

    def predict(self, params: np.ndarray, X: np.ndarray) -> np.ndarray:
        return np.argmax(self.logits(params, X), axis=1).astype(np.int64)

    def evaluation_module(self, params: np.ndarray) -> Any:
        """The network in evaluation mode holding ``params`` (shared with this object: a later call
        with other parameters changes it)."""
        self._set(params)
        if self.switch:
            self.eval_module.eval()
        return self.eval_module

    def accuracy(self, params: np.ndarray, X: np.ndarray, y: np.ndarray) -> float:
        X = self.check_X(X)
        y = self.check_y(X, y)
        return float(np.mean(self.predict(params, X) == y))

    def loss_and_grad(self, params: np.ndarray, X: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        """Mean cross-entropy (plus the L2 term) in training mode and its gradient; buffers get 0."""
        X = self.check_X(X)
        y = self.check_y(X, y)
        with deterministic(0) as torch:
            self._set(params)
            if self.switch:
                self.train_module.train()
            for t in self._trainable:
                t.grad = None
            loss = self._loss(torch, self._inputs(X), torch.from_numpy(y), None)
            loss.backward()
            grads = [(t.grad if t.grad is not None and t.requires_grad else torch.zeros_like(t)).reshape(-1)
                     for _, t in self._train]
            return float(loss.detach()), torch.cat(grads).to(torch.float64).numpy().copy()

    def grad_fn(self, w: np.ndarray):
        return lambda X, y: self.loss_and_grad(w, X, y)

    def _loss(self, torch: Any, xb: Any, yb: Any, prox: tuple[float, list] | None) -> Any:
        loss = torch.nn.functional.cross_entropy(self.train_module(xb), yb)
        if self.l2:
            loss = loss + 0.5 * self.l2 * sum((p * p).sum() for p in self._trainable)
        if prox is not None:
            mu, anchors = prox
            loss = loss + 0.5 * mu * sum(((p - a) ** 2).sum() for p, a in zip(self._trainable, anchors))
        return loss

    def train_local(self, params: np.ndarray, X: np.ndarray, y: np.ndarray, cfg: LocalTraining, *, seed: int,
                    lr: float) -> np.ndarray:
        """One round of local training with the job's optimizer, deterministic given ``seed``.

        Mini-batches are the ones :func:`fedmarket.fl.train.local_sgd` draws with ``seed``; a
        network with BatchNorm skips a last batch of a single sample (its statistics need two).
        """
        X = self.check_X(X)
        y = self.check_y(X, y)
        n, bs = X.shape[0], int(cfg.batch_size)
        rng = np.random.default_rng(seed)
        with deterministic(seed) as torch:
            self._set(params)
            if self.switch:
                self.train_module.train()
            Xt, yt = self._inputs(X), torch.from_numpy(y)
            opt = _optimizer(torch, cfg, self._trainable, lr)
            prox = (cfg.prox_mu, [p.detach().clone() for p in self._trainable]) if cfg.prox_mu else None
            for _ in range(int(cfg.epochs)):
                perm = torch.from_numpy(rng.permutation(n))
                for s in range(0, n, bs):
                    idx = perm[s : s + bs]
                    if self.has_batchnorm and len(idx) == 1 and n > 1:
                        continue
                    opt.zero_grad(set_to_none=True)
                    self._loss(torch, Xt[idx], yt[idx], prox).backward()
                    opt.step()
            return self._get()


def _flat_entries(torch: Any, module: Any) -> tuple[list[tuple[str, Any]], list[Any]]:
    """(the flat vector's entries: trainable parameters, then floating buffers; the trainable tensors)."""
    params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    buffers = [(n, b) for n, b in module.named_buffers() if b.is_floating_point()]
    if not params:
        raise ConfigError("the module has no trainable parameters")
    return params + buffers, [p for _, p in params]


def _int_buffers(torch: Any, module: Any) -> list[tuple[str, Any]]:
    return [(n, b) for n, b in module.named_buffers() if not b.is_floating_point()]


def cnn_net(input_shape: Sequence[int], n_classes: int, channels: Sequence[int] = (32, 64), kernel: int = 5,
            dense: int = 512, seed: int = 0, l2: float = 0.0) -> TorchNet:
    """McMahan et al.'s CNN as a :class:`TorchNet`, initialised by :func:`cnn_init` from ``seed``."""
    module = mcmahan_cnn(input_shape, n_classes, channels, kernel, dense)
    init = cnn_init(input_shape, n_classes, channels, kernel, dense, seed)
    return TorchNet(module, module, math.prod(input_shape), n_classes, input_shape, l2, init)


# ---- a user's module, packed --------------------------------------------------------------------


def pack_module(module: Any, input_shape: Sequence[int], n_classes: int) -> bytes:
    """Pack a user's ``nn.Module`` (with its current weights as the initial ones) into the bytes a
    job commits by content id: two ``torch.export`` programs (training and evaluation mode, batch
    dimension dynamic) and a JSON header, in a zip with fixed member times.

    Raises
    ------
    ConfigError
        If the module cannot be exported, or does not map ``(n, *input_shape)`` to ``(n, n_classes)``.
    """
    torch = torch_module()
    if not isinstance(module, torch.nn.Module):
        raise ConfigError(f"expected a torch.nn.Module, got {type(module).__name__}")
    shape = tuple(int(v) for v in input_shape)
    example = (torch.zeros(2, *shape),)
    dims = ({0: torch.export.Dim("batch", min=1, max=1 << 20)},)
    programs = {}
    was_training = module.training
    try:
        for mode in ("train", "eval"):
            module.train(mode == "train")
            try:
                programs[mode] = torch.export.export(module, example, dynamic_shapes=dims, strict=False)
            except Exception as exc:  # noqa: BLE001 - torch raises many kinds here
                raise ConfigError(f"cannot export the module with torch.export ({mode} mode): "
                                  f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    finally:
        module.train(was_training)
    with torch.no_grad():
        out = programs["eval"].module()(*example)
    if tuple(out.shape) != (2, int(n_classes)):
        raise ConfigError(f"the module maps input (2, {', '.join(map(str, shape))}) to {tuple(out.shape)}, "
                          f"not (2, {n_classes}) class scores")
    members = {"fedmarket.json": json.dumps({"format": PACK_FORMAT, "input_shape": list(shape),
                                             "n_classes": int(n_classes)}, sort_keys=True).encode()}
    for mode, ep in programs.items():
        buf = io.BytesIO()
        torch.export.save(ep, buf)
        members[f"{mode}.pt2"] = buf.getvalue()
    out_buf = io.BytesIO()
    with zipfile.ZipFile(out_buf, "w", zipfile.ZIP_STORED) as zf:
        for name in sorted(members):
            zf.writestr(zipfile.ZipInfo(name, _ZIP_TIME), members[name])
    return out_buf.getvalue()


_PROBE_BATCH = 4
_MAX_INT_BUFFER_ELEMENTS = 4096  # BatchNorm's num_batches_tracked: integer buffers are outside the flat vector


def pack_byte_limit(n_params: int) -> int:
    """The most bytes a job's packed module of ``n_params`` parameters can take and still load: two
    programs, each with weights of at most 8 bytes a value and a few JSON members of at most 16 MiB
    (what :func:`read_program` reads), and the header. A role downloads no more than this."""
    return 2 * (8 * (int(n_params) + _MAX_INT_BUFFER_ELEMENTS) + 8 * 16 * 2**20) + 2**20

def load_packed(raw: bytes, n_features: int, n_classes: int, l2: float = 0.0, *,
                n_params: int | None = None) -> TorchNet:
    """The :class:`TorchNet` of a packed module, checked: its bytes by :func:`read_program` before
    torch sees any of them, its header, both programs, the same parameters in each, class scores of
    the right shape for ``n_features`` inputs, and one step of its training program (forward and
    backward on a tiny batch), so that a pack that cannot train is refused before anyone stakes.

    ``n_params`` (the spec's) caps the weights each program may carry; without it the pack's own
    length does.

    Raises
    ------
    SchemaMismatch
        If the pack is not one, is not what :func:`pack_module` writes, or does not fit
        ``n_features`` / ``n_classes``; always one line.
    """
    torch = torch_module()
    members = stored_zip(raw, "packed module", {"fedmarket.json", "train.pt2", "eval.pt2"})
    missing = {"fedmarket.json", "train.pt2", "eval.pt2"} - set(members)
    if missing:
        raise SchemaMismatch(f"not a packed module (see `fedmarket model pack`): no {', '.join(sorted(missing))}")
    shape, k = pack_header(members["fedmarket.json"], PACK_FORMAT)
    if math.prod(shape) != int(n_features) or k != int(n_classes):
        raise SchemaMismatch(f"the packed module takes input {shape} and gives {k} classes; "
                             f"the job has {n_features} features and {n_classes} classes")
    cap = None if n_params is None else int(n_params) + _MAX_INT_BUFFER_ELEMENTS
    programs = {m: read_program(torch, members[f"{m}.pt2"], f"the packed module's {m} program", max_numel=cap)[0]
                for m in ("train", "eval")}
    for mode, ep in programs.items():
        with torch_errors(f"the packed module's {mode} program"):
            check_activations(torch, ep, shape, f"the packed module's {mode} program")
    with torch_errors("the packed module"):
        net = TorchNet(programs["train"].module(), programs["eval"].module(), n_features, n_classes, shape, l2)
        w0 = net.init_params()
        if net.logits(w0, np.zeros((2, int(n_features)))).shape != (2, int(n_classes)):
            raise SchemaMismatch("the packed module's evaluation program does not give one score per class")
        X = np.random.default_rng(0).random((_PROBE_BATCH, int(n_features)))
        y = np.arange(_PROBE_BATCH, dtype=np.int64) % int(n_classes)
    with torch_errors("the packed module's train program"):
        loss, grad = net.loss_and_grad(w0, X, y)  # the training program, forward and backward
        if not (math.isfinite(loss) and np.all(np.isfinite(grad))):
            raise SchemaMismatch("the packed module's training program gives a loss or gradient that is not finite")
        if not np.any(grad):
            raise SchemaMismatch("the packed module's training program gives its parameters no gradient: "
                                 "every provider's update would be all zeros")
    return net


def inference_module(net_module: Any, low: np.ndarray, high: np.ndarray, input_shape: Sequence[int]) -> Any:
    """Wrap an evaluation-mode network so that it takes raw features: the job's schema scaling
    (``(x - low) / (high - low)`` clipped to [0, 1], features with ``high == low`` at 0) comes first."""
    torch = torch_module()
    span = np.asarray(high, dtype=np.float64) - np.asarray(low, dtype=np.float64)

    class Scaled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net_module
            self.register_buffer("low", torch.tensor(np.asarray(low, dtype=np.float32)))
            self.register_buffer("inv_span", torch.tensor(np.where(span > 0, 1.0 / np.where(span > 0, span, 1.0), 0.0).astype(np.float32)))

        def forward(self, x):
            z = torch.clamp((x.to(torch.float32) - self.low) * self.inv_span, 0.0, 1.0)
            return self.net(z.reshape(z.shape[0], *input_shape))

    return Scaled()


def linear_stack(params: np.ndarray, sizes: Sequence[int], activation: str) -> Any:
    """A ``torch.nn.Sequential`` of Linear layers from our flat layout (per layer ``(fan_in, fan_out)``
    weights row-major, then the bias), ``activation`` between layers: softmax regression and the MLP."""
    torch = torch_module()
    layers: list[Any] = []
    off = 0
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        lin = torch.nn.Linear(fan_in, fan_out)
        with torch.no_grad():
            W = params[off : off + fan_in * fan_out].reshape(fan_in, fan_out)
            off += fan_in * fan_out
            lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(W.T)))
            lin.bias.copy_(torch.from_numpy(params[off : off + fan_out].copy()))
            off += fan_out
        layers.append(lin)
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU() if activation == "relu" else torch.nn.Tanh())
    return torch.nn.Sequential(*layers).to(torch.float32)
