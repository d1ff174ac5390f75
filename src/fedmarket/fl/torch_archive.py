"""Reading a ``torch.export`` archive without running it: the one gate between untrusted bytes (a
requester's packed module, a model file a buyer got) and torch. ``fl.torch_models.load_packed`` and
``modelfile.Predictor`` read every archive through :func:`read_program`."""

from __future__ import annotations

import contextlib
import io
import json
import keyword
import math
import re
import zipfile
from collections.abc import Sequence
from typing import Any

from fedmarket.errors import SchemaMismatch

# ---- reading a torch.export archive: the one gate between untrusted bytes and torch --------------
#
# ``torch.export.load`` is not safe on untrusted bytes: it unpickles sample inputs, weights and
# constants (``weights_only=False`` fallbacks, ``pickle.loads`` of opaque objects), execs the
# program's ``guards_code``, evaluates symbolic sizes with ``sympy.sympify``, resolves node targets
# as any attribute of ``torch``/``math``/``operator``, pastes node names into generated Python,
# loads AOTInductor libraries and allocates the declared size of an empty weight record.
# :func:`read_program` therefore never calls it: it reads the zip itself (stored members only,
# names from a fixed list), checks every field of the program's JSON against what
# ``torch.export.save`` writes for the modules :func:`pack_module` supports, rebuilds a canonical
# copy of that JSON (node metadata dropped), turns each weight record into a tensor itself after
# checking its length against its declared shape and dtype, and hands torch's deserializer only
# that JSON and those tensors (no sample inputs, no constants, no extra files).

from fedmarket.fl.models import EVAL_BATCH as ACTIVATION_BATCH  # TorchNet.logits' batch
from fedmarket.fl.models import MAX_ACTIVATION_BYTES  # every intermediate tensor of one pass at that batch, summed

_ACTIVATION_SLACK = 2**16  # bytes of second difference tolerated (none for a module of batch x fixed shapes)
_MAX_JSON_BYTES = 16 * 2**20
_MAX_MEMBERS = 100_000
_MAX_NODES = 10_000
_MAX_DIM = 2**31
_MAX_INT = 2**62

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,199}\Z")
_FQN = re.compile(r"(?!__)[A-Za-z0-9_]{1,200}(?:\.(?!__)[A-Za-z0-9_]{1,200}){0,31}\Z")
_RESERVED = frozenset({"self", "torch", "math", "operator", "builtins", "fx_pytree", "pytree", "getattr", "inf",
                       "nan", "device", "NoneType", "_guards_fn", "_assert", "forward", "print"})
_ROOT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}\Z")
_SYMBOL = re.compile(r"s[0-9]{1,6}\Z")
_SYM_EXPR = re.compile(r"Symbol\('(s[0-9]{1,6})', positive=True, integer=True\)\Z"
                       r"|(?:[1-9][0-9]{0,8}\*)?(s[0-9]{1,6})\Z")
_WEIGHT = re.compile(r"weight_[0-9]{1,9}\Z")
_STRING_ARG = re.compile(r"[A-Za-z0-9_]{0,32}\Z")  # gelu's approximate, conv's padding="same"
_VERSION = re.compile(r"[0-9A-Za-z.+_-]{1,64}\Z")

#: The ATen operators a program may call: what ``torch.export`` (training dialect, torch 2.13) makes
#: of the layers a job's module is built from -- Linear, Conv1d/2d/3d, max/average/adaptive-average
#: pooling, BatchNorm, LayerNorm, GroupNorm, Dropout (and its feature/alpha forms), Flatten and
#: reshapes, the usual activations, (log-)softmax, residual adds, concatenation -- plus the few
#: operators of the inference wrapper :func:`inference_module` (dtype cast, scaling, clamp). No
#: operator here does I/O or runs Python; creation and tiling operators (``zeros``, ``full``,
#: ``expand``, ``repeat``...) are left out, and :func:`check_activations` bounds what the rest allocate.
ALLOWED_OPS = frozenset("torch.ops.aten." + op for op in (
    "linear.default", "matmul.default", "mm.default", "addmm.default", "t.default",
    "conv1d.default", "conv2d.default", "conv3d.default", "conv1d.padding", "conv2d.padding", "conv3d.padding",
    "max_pool1d.default", "max_pool2d.default", "max_pool3d.default",
    "avg_pool1d.default", "avg_pool2d.default", "avg_pool3d.default",
    "adaptive_avg_pool1d.default", "adaptive_avg_pool2d.default", "adaptive_avg_pool3d.default",
    "batch_norm.default", "layer_norm.default", "group_norm.default",
    "dropout.default", "feature_dropout.default", "alpha_dropout.default", "feature_alpha_dropout.default",
    "relu.default", "relu_.default", "relu6.default", "leaky_relu.default", "leaky_relu_.default", "elu.default",
    "elu_.default", "selu.default", "celu.default", "gelu.default", "silu.default", "silu_.default",
    "mish.default", "tanh.default", "sigmoid.default", "hardtanh.default", "hardtanh_.default",
    "hardswish.default", "hardsigmoid.default", "softplus.default", "prelu.default",
    "softmax.int", "log_softmax.int",
    "flatten.using_ints", "reshape.default", "view.default", "sym_size.int", "unsqueeze.default",
    "squeeze.dim", "squeeze.dims", "permute.default", "transpose.int", "contiguous.default",
    "add.Tensor", "add_.Tensor", "sub.Tensor", "mul.Tensor", "div.Tensor", "neg.default",
    "mean.dim", "sum.dim_IntList", "cat.default", "clamp.default", "to.dtype", "_assert_tensor_metadata.default",
))

_IN_SPEC = [1, {"type": "builtins.tuple", "context": "null", "children_spec": [
    {"type": "builtins.tuple", "context": "null",
     "children_spec": [{"type": None, "context": None, "children_spec": []}]},
    {"type": "builtins.dict", "context": "[]", "children_spec": []}]}]
_OUT_SPEC = [1, {"type": None, "context": None, "children_spec": []}]
_ARCHIVE_FILES = {"archive_format": b"pt2", "archive_version": b"0", "byteorder": b"little"}
_FREE_FILES = {".data/version", ".data/serialization_id", "data/sample_inputs/model.pt"}  # torch gets none of them
_DTYPES = {1: "uint8", 2: "int8", 3: "int16", 4: "int32", 5: "int64", 6: "float16", 7: "float32", 8: "float64",
           12: "bool", 13: "bfloat16"}
_STRIDED, _CONTIGUOUS_FORMATS = 7, (1, 4)


class _Bad(Exception):
    """A field of an archive that is not what torch.export.save writes for a packable module."""


@contextlib.contextmanager
def torch_errors(what: str):
    """Any exception of torch (deserializing, unlifting, running) as one SchemaMismatch line."""
    try:
        yield
    except SchemaMismatch:
        raise
    except _Bad as exc:
        raise SchemaMismatch(f"{what}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - torch raises every kind; none may escape as a traceback
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise SchemaMismatch(f"{what} does not load or run: {type(exc).__name__}: {first}") from None


def stored_zip(raw: bytes, what: str, names: set[str] | None = None) -> dict[str, bytes]:
    """The members of a zip whose members are all stored (not compressed, so none is longer than the
    zip itself), unique and, when ``names`` is given, among them."""
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            infos = zf.infolist()
            if len(infos) > _MAX_MEMBERS:
                raise SchemaMismatch(f"{what} has {len(infos)} members")
            seen: set[str] = set()
            total = 0
            for info in infos:
                if info.filename in seen:
                    raise SchemaMismatch(f"{what} has two members named {info.filename[:100]!r}")
                seen.add(info.filename)
                if names is not None and info.filename not in names:
                    raise SchemaMismatch(f"not a {what} (see `fedmarket model pack`): "
                                         f"unexpected member {info.filename[:100]!r}")
                if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1 \
                        or info.compress_size != info.file_size:
                    raise SchemaMismatch(f"{what}: member {info.filename[:100]!r} is compressed or encrypted; "
                                         "fedmarket reads stored members only")
                total += info.file_size
                if total > len(raw):
                    raise SchemaMismatch(f"{what}: its members are longer than the archive")
            return {info.filename: zf.read(info) for info in infos}
    except SchemaMismatch:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError, NotImplementedError) as exc:
        raise SchemaMismatch(f"not a {what} (see `fedmarket model pack`): {type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:200] if str(exc) else ''}") from None


def _json(data: bytes, what: str) -> Any:
    if len(data) > _MAX_JSON_BYTES:
        raise _Bad(f"{what} is {len(data)} bytes")
    from fedmarket.protocol.encoding import untrusted_json  # bounded depth, finite numbers

    try:
        return untrusted_json(data)
    except ValueError as exc:  # MalformedMessage
        raise _Bad(f"{what} is not JSON: {str(exc)[:100]}") from None




def _int(v: Any, lo: int = -_MAX_INT, hi: int = _MAX_INT) -> bool:
    return type(v) is int and lo <= v <= hi


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise _Bad(msg)


def _exact(d: Any, keys: set[str], where: str, optional: set[str] = frozenset()) -> dict:
    _need(isinstance(d, dict) and keys <= set(d) <= keys | optional,
          f"{where} is not an object of exactly {', '.join(sorted(keys))}")
    return d


def _one_of(d: Any, kinds: set[str], where: str) -> tuple[str, Any]:
    _need(isinstance(d, dict) and len(d) == 1 and next(iter(d)) in kinds,
          f"{where} is not one of {', '.join(sorted(kinds))}")
    return next(iter(d.items()))


def _ident(v: Any, where: str) -> str:
    """A name torch pastes into the Python source of the module it generates: a plain identifier,
    no keyword, no dunder, none of the globals that source uses."""
    _need(isinstance(v, str) and _IDENT.match(v) is not None and not keyword.iskeyword(v)
          and not v.startswith("__") and v not in _RESERVED, f"{where} {str(v)[:60]!r} is not a plain identifier")
    return v


def read_program(torch: Any, raw: bytes, what: str, *, extra: bool = False, max_numel: int | None = None) -> tuple[Any, str | None]:
    """The ``torch.export`` program in ``raw`` (an archive of ``torch.export.save``), checked before
    torch sees any of it (see the comment above), and the text of its ``extra/fedmarket.json``
    when ``extra`` (a model file's metadata). ``max_numel`` caps its weights' total size (else the
    archive's own length does: weight records must hold exactly their declared shape).

    Raises
    ------
    SchemaMismatch
        One line naming what is wrong.
    """
    files = stored_zip(raw, what)
    roots = {n.split("/", 1)[0] for n in files}
    if len(roots) != 1 or not _ROOT.match(next(iter(roots))) or any("/" not in n for n in files):
        raise SchemaMismatch(f"{what} is not a torch.export archive (its members are not under one folder)")
    root = next(iter(roots))
    files = {n[len(root) + 1:]: d for n, d in files.items()}
    with torch_errors(what):
        for name in files:
            _need(name in _ARCHIVE_FILES or name in _FREE_FILES or name in (
                "models/model.json", "data/weights/model_weights_config.json",
                "data/constants/model_constants_config.json") or (extra and name == "extra/fedmarket.json")
                or (name.startswith("data/weights/") and _WEIGHT.match(name[13:]) is not None),
                f"member {name[:100]!r} is not one torch.export.save writes for a plain module "
                "(no pickled, custom or opaque objects, constants, AOTInductor code or extra files)")
        for name, value in _ARCHIVE_FILES.items():
            _need(files.get(name) == value, f"its {name} is not {value.decode()}")
        for name in ("models/model.json", "data/weights/model_weights_config.json",
                     "data/constants/model_constants_config.json"):
            _need(name in files, f"it has no {name}")
        constants = _json(files["data/constants/model_constants_config.json"], "its constants config")
        _need(constants == {"config": {}}, "it carries constants (tensor constants, custom or opaque objects)")
        doc = _json(files["models/model.json"], "its program")
        program, inputs = _program(doc)
        state = _weights(torch, files, _json(files["data/weights/model_weights_config.json"], "its weights config"),
                         inputs, max_numel)
        _check_sample_inputs(torch, files.get("data/sample_inputs/model.pt"), program)
        meta = None
        if extra:
            _need("extra/fedmarket.json" in files, "it carries no fedmarket.json")
            try:
                meta = files["extra/fedmarket.json"].decode("utf-8")
            except UnicodeDecodeError:
                raise _Bad("its fedmarket.json is not UTF-8") from None
        from torch._export.serde import schema
        from torch._export.serde.serialize import ExportedProgramDeserializer, _dict_to_dataclass

        ep = ExportedProgramDeserializer().deserialize(_dict_to_dataclass(schema.ExportedProgram, program), state, {},
                                                       None)
    return ep, meta


def _check_sample_inputs(torch: Any, data: bytes | None, program: dict) -> None:
    """The archive's sample inputs (a pickle torch.export.load would unpickle) must be, byte for
    byte, what torch.export.save writes for the zeros pack_module and export_program trace with;
    torch never reads them (the program is rebuilt without them)."""
    _need(data is not None, "it has no sample inputs")
    graph = program["graph_module"]["graph"]
    meta = graph["tensor_values"].get(graph["inputs"][-1]["as_tensor"]["name"]) if graph["inputs"] else None
    _need(meta is not None, "its input has no tensor metadata")
    dims = [d["as_int"] if "as_int" in d else (d["as_expr"]["hint"] or {}).get("as_int", -1) for d in meta["sizes"]]
    dtype = getattr(torch, _DTYPES[meta["dtype"]])
    _need(all(d >= 0 for d in dims) and math.prod(dims) * torch.empty(0, dtype=dtype).element_size() <= len(data),
          "its sample inputs are not the zeros the program was traced with")
    buf = io.BytesIO()
    torch.save(((torch.zeros(dims, dtype=dtype),), {}), buf, pickle_protocol=2)
    _need(buf.getvalue() == data, "its sample inputs are not the zeros torch.export.save writes for the program "
                                  "(a pickle torch.export.load would run)")


def _program(doc: Any) -> tuple[dict, dict[str, dict]]:
    """A canonical copy of a program's JSON, every field checked; and its parameters' and buffers'
    tensor metadata by state-dict name."""
    _exact(doc, {"graph_module", "opset_version", "range_constraints", "schema_version", "verifiers",
                 "torch_version", "guards_code"}, "the program")
    _need(doc["guards_code"] == [], "the program carries guards_code (Python source torch would run)")
    _need(doc["verifiers"] == ["TRAINING"], "the program's dialect is not TRAINING")
    opset = _exact(doc["opset_version"], {"aten"}, "opset_version")
    _need(_int(opset["aten"], 0, 10_000), "opset_version is not an integer")
    version = _exact(doc["schema_version"], {"major", "minor"}, "schema_version")
    _need(_int(version["major"], 0, 10_000) and _int(version["minor"], 0, 10_000), "schema_version is not integers")
    _need(isinstance(doc["torch_version"], str) and _VERSION.match(doc["torch_version"]) is not None,
          "torch_version is not a version")
    ranges = doc["range_constraints"]
    _need(isinstance(ranges, dict) and len(ranges) <= 64, "range_constraints is not an object")
    for sym, r in ranges.items():
        _need(_SYMBOL.match(sym) is not None, f"range constraint {sym[:40]!r} is not on a size symbol")
        _exact(r, {"min_val", "max_val"}, "a range constraint")
        _need(all(v is None or _int(v, 0, _MAX_INT) for v in r.values()), "a range constraint is not integers")
    gm = _exact(doc["graph_module"], {"graph", "signature", "module_call_graph", "metadata",
                                      "treespec_namedtuple_fields"}, "graph_module")
    _need(gm["metadata"] == {} and gm["treespec_namedtuple_fields"] == {}, "graph_module carries metadata")
    graph, inputs = _graph(gm["graph"], gm["signature"])
    calls = gm["module_call_graph"]
    _need(isinstance(calls, list) and 1 <= len(calls) <= 10_000, "module_call_graph is not a list")
    head = _exact(calls[0], {"fqn", "signature"}, "module_call_graph's root")
    sig = _exact(head["signature"], {"inputs", "outputs", "in_spec", "out_spec", "forward_arg_names"},
                 "module_call_graph's root signature")
    _need(head["fqn"] == "" and sig["inputs"] == [] and sig["outputs"] == [],
          "module_call_graph's root is not the module")
    for key, spec in (("in_spec", _IN_SPEC), ("out_spec", _OUT_SPEC)):
        try:
            ok = isinstance(sig[key], str) and len(sig[key]) < 4096 and json.loads(sig[key]) == spec
        except ValueError:
            ok = False
        _need(ok, f"the program's {key} is not one tensor {'in' if key == 'in_spec' else 'out'}")
    names = sig["forward_arg_names"]
    _need(isinstance(names, list) and len(names) == 1, "the program does not take one argument")
    root = {"fqn": "", "signature": {"inputs": [], "outputs": [], "in_spec": json.dumps(_IN_SPEC),
                                     "out_spec": json.dumps(_OUT_SPEC),
                                     "forward_arg_names": [_ident(names[0], "the argument")]}}
    rest = []
    for c in calls[1:]:
        _exact(c, {"fqn", "signature"}, "a module_call_graph entry")
        _need(isinstance(c["fqn"], str) and _FQN.match(c["fqn"]) is not None and c["signature"] is None,
              "a module_call_graph entry is not a submodule's name")
        rest.append({"fqn": c["fqn"], "signature": None})
    canonical = {
        "graph_module": {"graph": graph[0], "signature": graph[1], "module_call_graph": [root, *rest],
                         "metadata": {}, "treespec_namedtuple_fields": {}},
        "opset_version": {"aten": opset["aten"]},
        "range_constraints": {k: {"min_val": v["min_val"], "max_val": v["max_val"]} for k, v in ranges.items()},
        "schema_version": {"major": version["major"], "minor": version["minor"]},
        "verifiers": ["TRAINING"], "torch_version": doc["torch_version"], "guards_code": [],
    }
    return canonical, inputs


def _sym_int(v: Any, where: str, exprs: bool) -> dict:
    kind, val = _one_of(v, {"as_int", "as_expr"} if exprs else {"as_int"}, where)
    if kind == "as_int":
        _need(_int(val, -_MAX_DIM, _MAX_DIM), f"{where} is not an integer size")
        return {"as_int": val}
    e = _exact(val, {"expr_str", "hint"}, where)
    _need(isinstance(e["expr_str"], str) and _SYM_EXPR.match(e["expr_str"]) is not None,
          f"{where}: symbolic size {str(e['expr_str'])[:60]!r} is not a batch-size symbol")
    hint = e["hint"]
    if hint is not None:
        _, h = _one_of(hint, {"as_int"}, f"{where}'s hint")
        _need(_int(h, 0, _MAX_DIM), f"{where}'s hint is not an integer")
        hint = {"as_int": h}
    return {"as_expr": {"expr_str": e["expr_str"], "hint": hint}}


def _tensor_meta(m: Any, where: str, exprs: bool = True) -> dict:
    m = _exact(m, {"dtype", "sizes", "requires_grad", "device", "strides", "storage_offset", "layout"}, where)
    _need(m["dtype"] in _DTYPES and type(m["dtype"]) is int, f"{where} has an unsupported dtype")
    _need(m["layout"] == _STRIDED and type(m["layout"]) is int, f"{where} is not a strided tensor")
    _need(m["device"] == {"type": "cpu", "index": None}, f"{where} is not on the CPU")
    _need(type(m["requires_grad"]) is bool, f"{where}: requires_grad is not a boolean")
    _need(isinstance(m["sizes"], list) and isinstance(m["strides"], list) and len(m["sizes"]) == len(m["strides"]) <= 8,
          f"{where} has no sizes and strides")
    return {"dtype": m["dtype"], "sizes": [_sym_int(s, where, exprs) for s in m["sizes"]],
            "requires_grad": m["requires_grad"],
            "device": {"type": "cpu", "index": None}, "strides": [_sym_int(s, where, exprs) for s in m["strides"]],
            "storage_offset": _sym_int(m["storage_offset"], where, False), "layout": _STRIDED}


def _tensor_ref(v: Any, where: str) -> dict:
    return {"name": _ident(_exact(v, {"name"}, where)["name"], where)}


def _arg(a: Any, where: str) -> dict:
    """One argument of a node, of a kind an ATen call of a packable module takes."""
    kind, v = _one_of(a, {"as_tensor", "as_tensors", "as_optional_tensors", "as_int", "as_ints", "as_float",
                          "as_floats", "as_bool", "as_bools", "as_none", "as_string", "as_scalar_type", "as_layout",
                          "as_memory_format", "as_device", "as_sym_int", "as_sym_ints"}, where)
    num = (lambda x: (type(x) is float and math.isfinite(x)) or _int(x))  # noqa: E731
    if kind == "as_tensor":
        return {kind: _tensor_ref(v, where)}
    if kind == "as_tensors":
        _need(isinstance(v, list) and len(v) <= 1024, f"{where} is not a list")
        return {kind: [_tensor_ref(x, where) for x in v]}
    if kind == "as_optional_tensors":
        _need(isinstance(v, list) and len(v) <= 1024, f"{where} is not a list")
        out = []
        for x in v:
            k, t = _one_of(x, {"as_tensor", "as_none"}, where)
            out.append({"as_tensor": _tensor_ref(t, where)} if k == "as_tensor" else {"as_none": True})
        return {kind: out}
    if kind in ("as_int", "as_ints", "as_float", "as_floats", "as_bool", "as_bools"):
        ok = {"as_int": _int, "as_float": num, "as_bool": lambda x: type(x) is bool}[kind.rstrip("s")]
        if kind.endswith("s"):
            _need(isinstance(v, list) and len(v) <= 64 and all(ok(x) for x in v),
                  f"{where} is not a list of {kind[3:]}")
        else:
            _need(ok(v), f"{where} is not {kind[3:]}")
        return {kind: v}
    if kind == "as_none":
        return {kind: True}
    if kind == "as_string":
        _need(isinstance(v, str) and _STRING_ARG.match(v) is not None, f"{where} is not a short word")
        return {kind: v}
    if kind == "as_scalar_type":
        _need(v in _DTYPES and type(v) is int, f"{where} is not a supported dtype")
        return {kind: v}
    if kind == "as_layout":
        _need(v == _STRIDED and type(v) is int, f"{where} is not the strided layout")
        return {kind: v}
    if kind == "as_memory_format":
        _need(v in _CONTIGUOUS_FORMATS and type(v) is int, f"{where} is not a contiguous memory format")
        return {kind: v}
    if kind == "as_device":
        _need(v == {"type": "cpu", "index": None}, f"{where} is not the CPU")
        return {kind: {"type": "cpu", "index": None}}
    items = [v] if kind == "as_sym_int" else v
    _need(isinstance(items, list) and len(items) <= 64, f"{where} is not a list")
    out = []
    for x in items:
        k, s = _one_of(x, {"as_int", "as_name"}, where)
        _need(_int(s, -_MAX_DIM, _MAX_DIM) if k == "as_int" else _ident(s, where) == s, f"{where} is not a size")
        out.append({k: s})
    return {kind: out[0] if kind == "as_sym_int" else out}


def _node(n: Any) -> dict:
    """A canonical copy of one node: an allowed operator, its arguments and outputs checked, its
    metadata (stack traces, module paths: never needed, partly resolved as torch attributes) dropped."""
    n = _exact(n, {"target", "inputs", "outputs", "metadata", "name"}, "a node", {"is_hop_single_tensor_return"})
    _need(n.get("is_hop_single_tensor_return") is None, "a node is a higher-order operator")
    _need(n["target"] in ALLOWED_OPS, f"node target {str(n['target'])[:80]!r} is not an allowed ATen operator")
    where = f"node {_ident(n['name'], 'a node name')}"
    _need(isinstance(n["metadata"], dict), f"{where}: metadata is not an object")  # dropped, never read
    _need(isinstance(n["inputs"], list) and len(n["inputs"]) <= 64 and isinstance(n["outputs"], list)
          and len(n["outputs"]) <= 64, f"{where} has no inputs and outputs lists")
    ins = []
    for i in n["inputs"]:
        i = _exact(i, {"name", "arg", "kind"}, f"{where}'s argument")
        _need(i["kind"] in (1, 2) and type(i["kind"]) is int, f"{where}'s argument kind is not 1 or 2")
        _need(isinstance(i["name"], str) and _IDENT.match(i["name"]) is not None,  # an operator's parameter
              f"{where}'s argument name is not an identifier")
        ins.append({"name": i["name"], "arg": _arg(i["arg"], f"{where}'s argument"), "kind": i["kind"]})
    outs = []
    for o in n["outputs"]:
        k, v = _one_of(o, {"as_tensor", "as_tensors", "as_sym_int"}, f"{where}'s output")
        if k == "as_tensor":
            outs.append({k: _tensor_ref(v, f"{where}'s output")})
        elif k == "as_tensors":
            _need(isinstance(v, list) and len(v) <= 64, f"{where}'s output is not a list")
            outs.append({k: [_tensor_ref(x, f"{where}'s output") for x in v]})
        else:
            outs.append({k: {"as_name": _ident(_exact(v, {"as_name"}, f"{where}'s output")["as_name"], where)}})
    return {"target": n["target"], "inputs": ins, "outputs": outs, "metadata": {},
            "is_hop_single_tensor_return": None, "name": n["name"]}


def _graph(g: Any, sig: Any) -> tuple[tuple[dict, dict], dict[str, dict]]:
    g = _exact(g, {"inputs", "outputs", "nodes", "tensor_values", "sym_int_values", "sym_bool_values",
                   "is_single_tensor_return", "custom_obj_values", "sym_float_values"}, "the graph")
    _need(g["sym_bool_values"] == {} and g["sym_float_values"] == {} and g["custom_obj_values"] == {},
          "the graph holds symbolic booleans, floats or custom objects")
    _need(type(g["is_single_tensor_return"]) is bool, "the graph's is_single_tensor_return is not a boolean")
    for key in ("inputs", "outputs", "nodes"):
        _need(isinstance(g[key], list) and len(g[key]) <= _MAX_NODES,
              f"the graph's {key} is not a list of at most {_MAX_NODES}")
    for key in ("tensor_values", "sym_int_values"):
        _need(isinstance(g[key], dict), f"the graph's {key} is not an object")
    tensors = {_ident(n, "a tensor"): _tensor_meta(m, f"tensor {n}") for n, m in g["tensor_values"].items()}
    syms = {_ident(n, "a size"): _sym_int(v, f"size {n}", True) for n, v in g["sym_int_values"].items()}
    inputs = [{"as_tensor": _tensor_ref(_one_of(i, {"as_tensor"}, "a graph input")[1], "a graph input")}
              for i in g["inputs"]]
    outputs = [{"as_tensor": _tensor_ref(_one_of(o, {"as_tensor"}, "a graph output")[1], "a graph output")}
               for o in g["outputs"]]
    nodes = [_node(n) for n in g["nodes"]]
    sig = _exact(sig, {"input_specs", "output_specs"}, "the signature")
    _need(isinstance(sig["input_specs"], list) and isinstance(sig["output_specs"], list), "the signature is not lists")
    _need(len(sig["input_specs"]) == len(inputs), "the signature does not name every graph input")
    in_specs, state = [], {}
    for spec, graph_in in zip(sig["input_specs"], inputs):
        kind, v = _one_of(spec, {"parameter", "buffer", "user_input"}, "an input of the signature")
        if kind == "user_input":
            v = _exact(v, {"arg"}, "the user input")
            _need(_one_of(v["arg"], {"as_tensor"}, "the user input")[1] == graph_in["as_tensor"],
                  "the signature's user input is not the graph's")
            in_specs.append({kind: {"arg": {"as_tensor": dict(graph_in["as_tensor"])}}})
            continue
        key = "parameter_name" if kind == "parameter" else "buffer_name"
        v = _exact(v, {"arg", key} | ({"persistent"} if kind == "buffer" else set()), f"a {kind} of the signature")
        _need(_tensor_ref(v["arg"], f"a {kind}") == graph_in["as_tensor"], f"a {kind} is not its graph input")
        _need(isinstance(v[key], str) and _FQN.match(v[key]) is not None and v[key] not in state,
              f"a {kind}'s name {str(v[key])[:60]!r} is not a module attribute")
        _need(graph_in["as_tensor"]["name"] in tensors, f"{kind} {v[key]} has no tensor metadata")
        state[v[key]] = tensors[graph_in["as_tensor"]["name"]]
        entry = {"arg": dict(graph_in["as_tensor"]), key: v[key]}
        if kind == "buffer":
            _need(v["persistent"] is True, f"buffer {v[key]} is not persistent")
            entry["persistent"] = True
        in_specs.append({kind: entry})
    _need([next(iter(s)) for s in in_specs].count("user_input") == 1 and "user_input" in in_specs[-1],
          "the program does not take one input after its parameters and buffers")
    _need(len(sig["output_specs"]) == 1 == len(outputs), "the program does not give one output")
    kind, v = _one_of(sig["output_specs"][0], {"user_output"}, "the signature's output")
    _need(_one_of(_exact(v, {"arg"}, "the output")["arg"], {"as_tensor"}, "the output")[1] == outputs[0]["as_tensor"],
          "the signature's output is not the graph's")
    out_specs = [{"user_output": {"arg": {"as_tensor": dict(outputs[0]["as_tensor"])}}}]
    graph = {"inputs": inputs, "outputs": outputs, "nodes": nodes, "tensor_values": tensors, "sym_int_values": syms,
             "sym_bool_values": {}, "is_single_tensor_return": g["is_single_tensor_return"], "custom_obj_values": {},
             "sym_float_values": {}}
    return (graph, {"input_specs": in_specs, "output_specs": out_specs}), state


def _weights(torch: Any, files: dict[str, bytes], cfg: Any, expected: dict[str, dict], max_numel: int | None) -> dict:
    """The program's parameters and buffers, each built from its own record of exactly its declared
    shape and dtype (contiguous, no pickle, no sharing)."""
    cfg = _exact(cfg, {"config"}, "the weights config")["config"]
    _need(isinstance(cfg, dict), "the weights config is not an object")
    _need(set(cfg) == set(expected), "the weights config does not hold exactly the program's parameters and buffers")
    used: set[str] = set()
    total = 0
    state = {}
    for fqn, entry in cfg.items():
        entry = _exact(entry, {"path_name", "is_param", "use_pickle", "tensor_meta"}, f"weight {fqn}")
        _need(entry["use_pickle"] is False, f"weight {fqn} is pickled")
        _need(type(entry["is_param"]) is bool, f"weight {fqn}: is_param is not a boolean")
        path = entry["path_name"]
        _need(isinstance(path, str) and _WEIGHT.match(path) is not None and path not in used
              and f"data/weights/{path}" in files, f"weight {fqn} has no record of its own")
        used.add(path)
        meta = _tensor_meta(entry["tensor_meta"], f"weight {fqn}", exprs=False)
        sizes = [s["as_int"] for s in meta["sizes"]]
        _need(all(s >= 0 for s in sizes), f"weight {fqn} has a negative size")
        _need([s["as_int"] for s in meta["strides"]] == [math.prod(sizes[i + 1:]) for i in range(len(sizes))]
              and meta["storage_offset"]["as_int"] == 0, f"weight {fqn} is not a contiguous tensor")
        want = expected[fqn]
        _need(meta["dtype"] == want["dtype"] and meta["sizes"] == want["sizes"],
              f"weight {fqn} is not the shape and dtype the program declares")
        dtype = getattr(torch, _DTYPES[meta["dtype"]])
        numel = math.prod(sizes)
        total += numel
        _need(max_numel is None or total <= max_numel,
              f"its weights hold more than the {max_numel} values the spec allows")
        data = files[f"data/weights/{path}"]
        _need(len(data) == numel * torch.empty(0, dtype=dtype).element_size(),
              f"weight {fqn}'s record is {len(data)} bytes, not its declared shape {tuple(sizes)} "
              f"of {_DTYPES[meta['dtype']]}")
        t = torch.frombuffer(bytearray(data), dtype=dtype) if numel else torch.empty(0, dtype=dtype)
        t = t.reshape(sizes)
        if entry["is_param"]:
            _need(t.is_floating_point() or not meta["requires_grad"],
                  f"weight {fqn} is an integer parameter with a gradient")
            t = torch.nn.Parameter(t, requires_grad=meta["requires_grad"])
        state[fqn] = t
    records = {n[13:] for n in files if n.startswith("data/weights/")} - {"model_weights_config.json"}
    _need(used == records,
          "it carries weight records no weight uses")
    return state


def check_activations(torch: Any, ep: Any, shape: Sequence[int], what: str) -> None:
    """Refuse a program whose forward pass would allocate more than MAX_ACTIVATION_BYTES of
    intermediate tensors (summed) for ACTIVATION_BATCH inputs, or whose intermediates grow faster
    than the batch (an outer product of the batch with itself: small at the checked batch, a bomb at
    a provider's). Found by running the graph on fake tensors (shapes only, nothing allocated) at
    1, 2 and 4 times ACTIVATION_BATCH: for a module whose every intermediate is batch x fixed shape,
    or fixed, ``t(4b) - 3 t(2b) + 2 t(b)`` is 0."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    gm = ep.graph_module
    params = [ep.state_dict[s.target] for s in ep.graph_signature.input_specs if s.target is not None]
    totals = []
    for batch in (ACTIVATION_BATCH, 2 * ACTIVATION_BATCH, 4 * ACTIVATION_BATCH):
        total = 0
        cap = MAX_ACTIVATION_BYTES * batch // ACTIVATION_BATCH

        class Counting(torch.fx.Interpreter):
            def run_node(self, n):
                nonlocal total
                out = super().run_node(n)
                if n.op == "call_function":
                    for t in (out if isinstance(out, (tuple, list)) else (out,)):
                        if isinstance(t, torch.Tensor):
                            total += t.numel() * t.element_size()
                    if total > cap:
                        raise SchemaMismatch(f"{what} would allocate more than {MAX_ACTIVATION_BYTES >> 20} MiB "
                                             f"of intermediate tensors for {ACTIVATION_BATCH} inputs")
                return out

        with FakeTensorMode(allow_non_fake_inputs=False) as mode:
            args = [mode.from_tensor(p) for p in params] + [torch.empty(batch, *shape)]
            with torch.no_grad():
                Counting(gm).run(*args)
        totals.append(total)
    if totals[2] - 3 * totals[1] + 2 * totals[0] > _ACTIVATION_SLACK:  # 0 for c*batch + d, 6*a*batch**2 more
        raise SchemaMismatch(f"{what}'s intermediate tensors grow faster than its batch "
                             f"({totals[0] >> 20}, {totals[1] >> 20}, {totals[2] >> 20} MiB for "
                             f"{ACTIVATION_BATCH}, {2 * ACTIVATION_BATCH}, {4 * ACTIVATION_BATCH} inputs)")


# ---- model out: a self-contained inference module -----------------------------------------------


def pack_header(data: bytes, pack_format: int) -> tuple[tuple[int, ...], int]:
    """(input shape, number of classes) of a packed module's ``fedmarket.json`` (of format ``pack_format``)."""
    try:
        header = _json(data, "its header fedmarket.json")
    except _Bad as exc:
        raise SchemaMismatch(f"not a packed module (see `fedmarket model pack`): {exc}") from None
    if not isinstance(header, dict) or set(header) != {"format", "input_shape", "n_classes"}:
        raise SchemaMismatch("not a packed module (see `fedmarket model pack`): its header fedmarket.json is not "
                             "an object of format, input_shape and n_classes")
    if header["format"] != pack_format:
        raise SchemaMismatch(f"packed module format {str(header['format'])[:20]!r}; this release reads {pack_format}")
    shape, k = header["input_shape"], header["n_classes"]
    if not (isinstance(shape, list) and 1 <= len(shape) <= 8 and all(_int(v, 1, 2**24) for v in shape)):
        raise SchemaMismatch("the packed module's input_shape is not a list of 1 to 8 positive integers")
    if not _int(k, 2, 2**20):
        raise SchemaMismatch("the packed module's n_classes is not an integer of at least 2")
    return tuple(shape), k
