"""A requester's packed module (a ``torch`` job) and a buyer's ``.pt`` model file, attacked through
their bytes: every role loads the pack before it stakes (``jobmodel.job_model`` -> ``load_packed``),
and ``torch.export.load`` runs code an archive carries (pickled sample inputs, weights and
constants, ``guards_code`` source, ``sympy.sympify`` of symbolic sizes). ``read_program`` checks
every byte before torch sees any; these tests hold it to that, to its resource limits, to the
training program being exercised before staking, and to one-line errors for bad inputs."""

from __future__ import annotations

import io
import json
import pickle
import resource
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fedmarket import jobmodel  # noqa: E402
from fedmarket.errors import SchemaMismatch  # noqa: E402
from fedmarket.fl.torch_models import load_packed, pack_module  # noqa: E402
from fedmarket.modelfile import Predictor  # noqa: E402
from fedmarket.spec import DataSchema, JobSpec, ParticipationSpec, RewardSpec, TrainingSpec  # noqa: E402
from fedmarket.storage import LocalBlobStore, cid_of  # noqa: E402

TOKEN = 10**18
GIB = 2**30


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = torch.nn.Linear(4, 8)
        self.bn = torch.nn.BatchNorm1d(8)
        self.l2 = torch.nn.Linear(8, 3)

    def forward(self, x):
        return self.l2(torch.relu(self.bn(self.l1(x))))


@pytest.fixture(scope="module")
def honest() -> bytes:
    torch.manual_seed(0)
    return pack_module(Net(), (4,), 3)


def rezip(raw: bytes, edit, add: dict[str, bytes] | None = None) -> bytes:
    """``raw`` with each member's data replaced by ``edit(name, data)`` (None drops it), plus ``add``."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(raw)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = edit(info.filename, src.read(info.filename))
            if data is not None:
                dst.writestr(zipfile.ZipInfo(info.filename, info.date_time), data)
        for name, data in (add or {}).items():
            dst.writestr(zipfile.ZipInfo(name), data)
    return out.getvalue()


def edit_programs(pack: bytes, edit, add: dict[str, bytes] | None = None) -> bytes:
    """``edit`` (and ``add``) applied to both torch.export archives inside a pack."""
    return rezip(pack, lambda n, d: rezip(d, edit, add) if n.endswith(".pt2") else d)


def edit_json(suffix: str, fn):
    def edit(name, data):
        if name.endswith(suffix):
            doc = json.loads(data)
            fn(doc)
            return json.dumps(doc).encode()
        return data
    return edit


class _Exec:
    def __init__(self, code):
        self.code = code

    def __reduce__(self):
        return (exec, (self.code,))


def pickled_exec(marker) -> bytes:
    return pickle.dumps(_Exec(f"open({str(marker)!r}, 'w').write('pwned')"), protocol=2)


def refused_unrun(raw: bytes, marker, match: str) -> None:
    """load_packed refuses ``raw`` in one line matching ``match`` and the payload never ran."""
    with pytest.raises(SchemaMismatch, match=match) as info:
        load_packed(raw, 4, 3)
    assert "\n" not in str(info.value)
    assert not marker.exists(), "the pack's code ran"


# ---- code execution (a) to (e) ---------------------------------------------------------------------


def test_a_pickled_sample_input_is_refused_and_never_unpickled(honest, tmp_path):
    """(a) torch.export.load unpickles archive/data/sample_inputs/model.pt with weights_only=False
    when weights_only=True fails: a pickle there runs code in every role. The pack must be refused
    (its sample inputs are not the zeros torch.export.save writes) and the pickle never loaded."""
    marker = tmp_path / "pwned"
    raw = edit_programs(honest, lambda n, d: pickled_exec(marker) if n.endswith("sample_inputs/model.pt") else d)
    refused_unrun(raw, marker, "sample inputs")


def test_a_weight_marked_use_pickle_is_refused_and_never_unpickled(honest, tmp_path):
    """(b) a weight whose model_weights_config entry says use_pickle=true is torch.load-ed with
    weights_only=False. The pack must be refused and the record never loaded."""
    marker = tmp_path / "pwned"

    def flag(doc):
        doc["config"]["l1.weight"]["use_pickle"] = True

    def edit(n, d):
        if n.endswith("weights/weight_0"):
            return pickled_exec(marker)
        return edit_json("model_weights_config.json", flag)(n, d)

    refused_unrun(edit_programs(honest, edit), marker, "weight l1.weight is pickled")


@pytest.mark.parametrize("prefix, use_pickle", [("opaque_obj_", True), ("custom_obj_", False), ("tensor_", True)])
def test_a_pickled_constant_is_refused_and_never_unpickled(honest, tmp_path, prefix, use_pickle):
    """(c) constants go through pickle.loads (opaque objects), torch's own pickle loader (custom
    objects) or torch.load(weights_only=False) (pickled tensor constants). A pack carrying any
    constant must be refused and the constant never loaded."""
    from torch.export.pt2_archive.constants import (
        CUSTOM_OBJ_FILENAME_PREFIX,
        OPAQUE_OBJ_FILENAME_PREFIX,
        TENSOR_CONSTANT_FILENAME_PREFIX,
    )

    prefix = {"opaque_obj_": OPAQUE_OBJ_FILENAME_PREFIX, "custom_obj_": CUSTOM_OBJ_FILENAME_PREFIX,
              "tensor_": TENSOR_CONSTANT_FILENAME_PREFIX}[prefix]
    marker = tmp_path / "pwned"
    name = f"{prefix}0"

    def edit(n, d):
        if n.endswith("model_constants_config.json"):
            return json.dumps({"config": {"c": {"path_name": name, "is_param": False, "use_pickle": use_pickle,
                                                "tensor_meta": None}}}).encode()
        return d

    raw = edit_programs(honest, edit, add={f"archive/data/constants/{name}": pickled_exec(marker)})
    refused_unrun(raw, marker, "constants|not one torch.export.save writes")


def test_guards_code_is_refused_and_never_run(honest, tmp_path):
    """(d) the program's guards_code strings are pasted into a function and exec'd by
    ExportedProgram.module() -- code execution without any pickle. The pack must be refused."""
    marker = tmp_path / "pwned"

    def inject(doc):
        doc["guards_code"] = [f"(open({str(marker)!r}, 'w').write('pwned')) > 0"]

    raw = edit_programs(honest, edit_json("models/model.json", inject))
    refused_unrun(raw, marker, "guards_code")
    with pytest.raises(SchemaMismatch):
        jobmodel._CACHE.clear()
        jobmodel.job_model(_spec(raw, 75), _store(tmp_path, raw))  # every role's pre-stake check
    assert not marker.exists()


def test_a_symbolic_size_that_is_python_is_refused_and_never_evaluated(honest, tmp_path):
    """(e) a symbolic size's expr_str goes through sympy.sympify, which evaluates Python. Only a
    batch-size symbol (``Symbol('s77', positive=True, integer=True)``) may pass."""
    marker = tmp_path / "pwned"

    def inject(doc):
        values = doc["graph_module"]["graph"]["tensor_values"].values()
        sizes = [s for v in values for s in v["sizes"] if "as_expr" in s]
        sizes[0]["as_expr"]["expr_str"] = f"__import__('builtins').open({str(marker)!r}, 'w').write('pwned')"

    refused_unrun(edit_programs(honest, edit_json("models/model.json", inject)), marker, "not a batch-size symbol")


def test_a_node_calling_anything_but_an_allowed_aten_operator_is_refused(honest, tmp_path):
    """torch's deserializer resolves a node's target as any attribute path under ``torch``
    (``torch.os.system``...), ``math`` or ``operator`` and the module calls it. Every target must be
    in ALLOWED_OPS."""
    marker = tmp_path / "pwned"

    def inject(doc):
        node = doc["graph_module"]["graph"]["nodes"][0]
        node["target"] = "torch.os.system"

    refused_unrun(edit_programs(honest, edit_json("models/model.json", inject)), marker, "not an allowed ATen")


@pytest.mark.parametrize("member", ["archive/data/aotinductor/model/model.so", "archive/extra/x.txt",
                                    "archive/data/weights/model.pt", "archive/serialized_exported_program.json"])
def test_members_pack_module_never_writes_are_refused(honest, tmp_path, member):
    """AOTInductor members load native libraries, extra files and legacy members take other
    loading paths: only the members pack_module's archives hold may be there."""
    refused_unrun(edit_programs(honest, lambda n, d: d, add={member: b"x"}), tmp_path / "none",
                  "not one torch.export.save writes")


def test_a_buyers_pt_file_with_a_pickle_is_refused_and_never_unpickled(tmp_path):
    """A buyer's Predictor called torch.export.load on the .pt file it was given: a pickled sample
    input there ran code. It must read the file through the same gate."""
    marker = tmp_path / "pwned"
    ep = torch.export.export(torch.nn.Linear(4, 3), (torch.zeros(2, 4),),
                             dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1 << 20)},))
    good = tmp_path / "good.pt"
    torch.export.save(ep, good, extra_files={"fedmarket.json": json.dumps({"classes": ["a", "b", "c"],
                                                                           "input_shape": [4]})})
    assert Predictor(good).predict(np.zeros((5, 4))).shape == (5,)  # an honest file still predicts
    bad = tmp_path / "model.pt"
    bad.write_bytes(rezip(good.read_bytes(), lambda n, d: pickled_exec(marker) if n.endswith("sample_inputs/model.pt")
                          else d))
    with pytest.raises(SchemaMismatch, match="sample inputs"):
        Predictor(bad)
    assert not marker.exists()


# ---- resources ---------------------------------------------------------------------------------------


def _maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def test_an_empty_weight_record_of_a_huge_declared_shape_is_refused_without_allocating(honest):
    """torch turns a 0-byte weight record into torch.zeros(declared sizes): a 20 KB pack made every
    role allocate 1 GiB before any check. Each record must hold exactly its declared shape's bytes."""
    n = GIB // 4

    def declare(doc):
        meta = doc["config"]["l1.weight"]["tensor_meta"] if "config" in doc else \
            doc["graph_module"]["graph"]["tensor_values"]["p_l1_weight"]
        meta["sizes"], meta["strides"] = [{"as_int": n}], [{"as_int": 1}]

    def edit(name, data):
        if name.endswith("weights/weight_0"):
            return b""
        data = edit_json("models/model.json", declare)(name, data)
        return edit_json("model_weights_config.json", declare)(name, data)

    raw = edit_programs(honest, edit)
    assert len(raw) < 100_000
    before = _maxrss()
    with pytest.raises(SchemaMismatch, match="record is 0 bytes"):
        load_packed(raw, 4, 3)
    assert _maxrss() - before < GIB // 4


def test_weights_beyond_the_specs_parameter_count_are_refused(tmp_path):
    """A pack whose weights hold far more values than the spec's n_params is refused while reading
    them (the cap comes from the spec), not after every tensor is built."""
    torch.manual_seed(0)
    big = pack_module(torch.nn.Sequential(torch.nn.Linear(4, 4096), torch.nn.Linear(4096, 3)), (4,), 3)
    with pytest.raises(SchemaMismatch, match="values the spec allows"):
        load_packed(big, 4, 3, n_params=75)
    jobmodel._CACHE.clear()
    with pytest.raises(SchemaMismatch, match="values the spec allows"):
        jobmodel.job_model(_spec(big, 75), _store(tmp_path, big))


def test_a_compressed_member_is_refused_before_it_is_inflated():
    """zf.read inflated a deflated member of any size (1 MB of blob, 1 GiB of memory). Members
    must be stored, so none is longer than the blob."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.writestr("fedmarket.json", json.dumps({"format": 1, "input_shape": [4], "n_classes": 3}))
        zf.writestr("train.pt2", b"\0" * (64 * 2**20))
        zf.writestr("eval.pt2", b"\0")
    raw = out.getvalue()
    assert len(raw) < 2**20
    with pytest.raises(SchemaMismatch, match="compressed"):
        load_packed(raw, 4, 3)


class OuterProduct(torch.nn.Module):
    """Scores from the batch's Gram matrix: (n, n) intermediates, tiny at the batch of 2 the old
    check ran, 4 TB at a provider's batch of a million rows."""

    def __init__(self):
        super().__init__()
        self.l1 = torch.nn.Linear(4, 8)
        self.l2 = torch.nn.Linear(1, 3)

    def forward(self, x):
        h = self.l1(x)
        return self.l2(torch.nn.functional.linear(h, h).mean(1, keepdim=True))


class Doubling(torch.nn.Module):
    """Twenty concatenations of a tensor with itself: 32 MB at a batch of 2, 16 GB at 1024."""

    def __init__(self):
        super().__init__()
        self.l1 = torch.nn.Linear(4, 4)
        self.l2 = torch.nn.Linear(1, 3)

    def forward(self, x):
        h = self.l1(x)
        for _ in range(20):
            h = torch.cat([h, h], 1)
        return self.l2(h.mean(1, keepdim=True))


@pytest.mark.parametrize("module, match", [(OuterProduct, "grow faster than its batch"),
                                           (Doubling, "more than 2048 MiB")])
def test_a_program_whose_activations_explode_is_refused_before_running(module, match):
    """Allowed operators can still allocate without bound (concatenation, an outer product of the
    batch). The program runs first on fake tensors (shapes only) at 1024, 2048 and 4096 inputs:
    above MAX_ACTIVATION_BYTES at 1024, or growing faster than the batch, it is refused."""
    torch.manual_seed(0)
    raw = pack_module(module(), (4,), 3)
    with pytest.raises(SchemaMismatch, match=match):
        load_packed(raw, 4, 3)


# ---- the training program is exercised before staking -------------------------------------------


class ZeroGrad(torch.nn.Module):
    """Scores through the parameters times zero: every gradient is 0, every honest update all zeros."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 3)

    def forward(self, x):
        return torch.nn.functional.linear(x, self.lin.weight * 0.0, self.lin.bias * 0.0)


def _spec(packed: bytes, n_params: int) -> JobSpec:
    return JobSpec(
        name="torch job",
        data=DataSchema(n_features=4, n_classes=3, feature_low=[0.0] * 4, feature_high=[1.0] * 4),
        model={"kind": "torch", "module_cid": cid_of(packed), "n_params": n_params},
        training=TrainingSpec(rounds=2, local_epochs=1, batch_size=8, learning_rate=0.1),
        reward=RewardSpec(escrow=100 * TOKEN, provider_stake=TOKEN, aggregator_stake=50 * TOKEN, validator_stake=0,
                          licence_requester_bps=3_000),
        participation=ParticipationSpec(min_providers=2, max_providers=2, max_validators=0),
    )


def _store(tmp_path, packed: bytes) -> LocalBlobStore:
    store = LocalBlobStore(tmp_path / "blobs")
    store.put(packed)
    return store


class Detached(torch.nn.Module):
    """The parameters used through .detach(): backward raises RuntimeError ("does not require grad")."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 3)

    def forward(self, x):
        return torch.nn.functional.linear(x, self.lin.weight.detach(), self.lin.bias.detach())


@pytest.mark.parametrize("module, match", [(Detached, "detach|does not load or run"),
                                           (ZeroGrad, "no gradient")])
def test_a_module_that_cannot_train_is_refused_before_staking(tmp_path, module, match):
    """load_packed ran only the evaluation program: a pack whose training program fails
    (RuntimeError on the first backward, outside every role's error handling) or gives every
    parameter a zero gradient (every honest provider's update all zeros: "the model sent back")
    passed every pre-stake check. job_model must refuse it in one line."""
    torch.manual_seed(0)
    packed = pack_module(module(), (4,), 3)
    jobmodel._CACHE.clear()
    with pytest.raises(SchemaMismatch, match=match) as info:
        jobmodel.job_model(_spec(packed, 15), _store(tmp_path, packed))
    assert "\n" not in str(info.value)


def test_a_train_program_that_raises_only_in_training_is_refused(honest, tmp_path):
    """The training program alone is broken (its BatchNorm's weight and a Linear's bias are
    swapped for tensors of other sizes): the evaluation program, the only one the old check ran, is
    fine, and every provider's first round fails after staking.
    Its torch RuntimeError must come out as one SchemaMismatch line before staking."""
    def shrink(doc):
        nodes = doc["graph_module"]["graph"]["nodes"]
        bn = next(n for n in nodes if n["target"] == "torch.ops.aten.batch_norm.default")
        bn["inputs"][1]["arg"] = {"as_tensor": {"name": "p_l1_bias"}}  # weight: fine in shape (8,)
        lin = next(n for n in nodes if n["target"] == "torch.ops.aten.linear.default")
        lin["inputs"][2]["arg"] = {"as_tensor": {"name": "p_l2_bias"}}  # a (3,) bias on an (n, 8) output

    raw = rezip(honest, lambda n, d: rezip(d, edit_json("models/model.json", shrink)) if n == "train.pt2" else d)
    with pytest.raises(SchemaMismatch, match="train program") as info:
        load_packed(raw, 4, 3)
    assert "\n" not in str(info.value)


# ---- one clear line, never a traceback ------------------------------------------------------------


def _image_bomb(tmp_path):
    from PIL import Image

    from fedmarket.fl.localdata import read_data

    d = tmp_path / "imgs" / "cat"
    d.mkdir(parents=True)
    Image.new("1", (20_000, 10_000)).save(d / "big.png")  # 200 Mpixel in a small file
    return lambda: read_data(tmp_path / "imgs")


def _npz_vector_job_id(tmp_path):
    from fedmarket.modelfile import read_npz

    p = tmp_path / "m.npz"
    np.savez(p, params=np.zeros(75), committed=np.zeros(75, np.int64),
             spec=np.frombuffer(_spec(b"x", 75).canonical(), np.uint8), module=np.zeros(0, np.uint8),
             job_id=np.arange(3), round=0, model_root=np.zeros(32, np.uint8))
    return lambda: read_npz(p)


def _csv_long_header(tmp_path):
    from fedmarket.fl.localdata import read_data

    p = tmp_path / "d.csv"
    p.write_text("a" * 200_000 + ",label\n1,0\n")
    return lambda: read_data(p, "label")


def _pack(edit):
    def make(tmp_path):
        torch.manual_seed(0)
        raw = edit(pack_module(Net(), (4,), 3))
        return lambda: load_packed(raw, 4, 3)
    return make


_HEADER = "fedmarket.json"
UNCLEAR = {
    "pack header is a list (was AttributeError)": (_pack(lambda p: rezip(p, lambda n, d: b"[]" if n == _HEADER else d)),
                                                   "header"),
    "pack input_shape of strings (was ValueError)": (
        _pack(lambda p: rezip(p, lambda n, d: json.dumps({"format": 1, "input_shape": ["x"], "n_classes": 3}).encode()
                              if n == _HEADER else d)), "input_shape"),
    "program without weights config (was AssertionError)": (
        _pack(lambda p: edit_programs(p, lambda n, d: None if n.endswith("model_weights_config.json") else d)),
        "model_weights_config"),
    "npz model file with a vector job_id (was TypeError)": (_npz_vector_job_id, "job_id"),
    "CSV header field over 131072 characters (was csv.Error)": (_csv_long_header, "header row"),
    "200-megapixel PNG (was DecompressionBombError)": (_image_bomb, "pixels"),
}


@pytest.mark.parametrize("case", sorted(UNCLEAR))
def test_bad_inputs_are_refused_in_one_clear_line(tmp_path, case):
    """Each of these inputs ended in a raw traceback (an exception type no caller turns into a
    one-line error). Each must raise SchemaMismatch, in one line naming the problem."""
    make, words = UNCLEAR[case]
    call = make(tmp_path)
    with pytest.raises(SchemaMismatch, match=words) as info:
        call()
    assert "\n" not in str(info.value)


def test_honest_packs_of_the_supported_layers_load_and_train(tmp_path):
    """The gate passes what pack_module writes for the layers a job's module is built from (conv,
    pooling, BatchNorm, dropout, LayerNorm, activations, residual adds): the allowlist is not
    narrower than the supported modules."""
    nn = torch.nn
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout2d(0.1),
                        nn.Conv2d(4, 8, 3), nn.GELU(), nn.AvgPool2d(2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Dropout(0.3), nn.LayerNorm(8), nn.Linear(8, 3), nn.LogSoftmax(dim=1))
    packed = pack_module(cnn, (1, 8, 8), 3)
    net = load_packed(packed, 64, 3, n_params=sum(p.numel() for p in cnn.parameters()) + 8)
    assert net.n_params == sum(p.numel() for p in cnn.parameters()) + 8  # and the BatchNorm's running statistics
    X = np.random.default_rng(0).random((6, 64))
    assert net.logits(net.init_params(), X).shape == (6, 3)
