"""`fedmarket spec init`, `data split --data`, `model pack` and `model predict` from the command line:
what they write, and one line on stderr for every bad input."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from fedmarket.cli import main
from fedmarket.spec import JobSpec


@pytest.fixture
def table(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "clinic.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["age", "bp", "chol", "outcome"])
        for i in range(60):
            w.writerow([int(rng.integers(20, 80)), round(float(rng.normal(120, 10)), 1), int(rng.integers(150, 250)),
                        ["ok", "ill", "icu"][i % 3]])
    return path


def _run(capsys, *argv):
    rc = main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return rc, out, err


def test_spec_init_writes_a_spec_from_a_sample(table, tmp_path, capsys):
    rc, out, err = _run(capsys, "spec", "init", "--data", table, "--label", "outcome", "--out", tmp_path / "s.json",
                        "--hidden", "16,8", "--strategy", "centered_clip", "--validators", "1")
    assert rc == 0, err
    spec = JobSpec.parse((tmp_path / "s.json").read_bytes())
    assert spec.data.features == ["age", "bp", "chol"] and spec.data.classes == ["icu", "ill", "ok"]
    assert spec.model.kind == "mlp" and spec.model.hidden == [16, 8] and spec.attested
    assert "3 features, 3 classes" in out


@pytest.mark.parametrize("args, code, words", [
    (["--label", "nope"], 1, "has no label column 'nope'"),
    (["--label", "outcome", "--model", "cnn"], 2, "--model cnn needs images"),
    (["--label", "outcome", "--hidden", "a,b"], 2, "--hidden must be comma-separated"),
    (["--label", "outcome", "--strategy", "centered_clip"], 2, "needs max_validators"),
])
def test_spec_init_refuses_bad_input_in_one_line(table, tmp_path, capsys, args, code, words):
    rc, _, err = _run(capsys, "spec", "init", "--data", table, "--out", tmp_path / "s.json", *args)
    assert rc == code and words in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_data_split_keeps_the_files_format(table, tmp_path, capsys):
    rc, out, err = _run(capsys, "data", "split", "--data", table, "--label", "outcome", "--providers", 2,
                        "--validators", 1, "--out", tmp_path / "shares")
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / "shares").iterdir()) == ["provider-0.csv", "provider-1.csv", "test.csv",
                                                                       "validator-0.csv"]
    rows = sum(len(list(csv.reader(open(p)))) - 1 for p in (tmp_path / "shares").iterdir())
    assert rows == 60


def test_model_pack_points_the_spec_at_the_users_module(table, tmp_path, capsys):
    pytest.importorskip("torch")
    assert _run(capsys, "spec", "init", "--data", table, "--label", "outcome", "--out", tmp_path / "s.json")[0] == 0
    (tmp_path / "net.py").write_text(
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.a = torch.nn.Linear(3, 4)\n"
        "        self.bn = torch.nn.BatchNorm1d(4)\n"
        "        self.b = torch.nn.Linear(4, 3)\n"
        "    def forward(self, x):\n"
        "        return self.b(torch.relu(self.bn(self.a(x))))\n")
    rc, out, err = _run(capsys, "model", "pack", "--module", f"{tmp_path / 'net.py'}:Net", "--spec", tmp_path / "s.json",
                        "--store", tmp_path / "blobs")
    assert rc == 0, err
    spec = JobSpec.parse((tmp_path / "s.json").read_bytes())
    assert spec.model.kind == "torch" and spec.model.n_params == 3 * 4 + 4 + 4 + 4 + 4 * 3 + 3 + 8
    assert (tmp_path / "blobs" / spec.model.module_cid).is_file()
    rc, _, err = _run(capsys, "model", "pack", "--module", f"{tmp_path / 'net.py'}:Nope", "--spec", tmp_path / "s.json")
    assert rc == 2 and "defines no Nope" in err


def test_model_predict_refuses_what_it_cannot_read(tmp_path, capsys, table):
    rc, _, err = _run(capsys, "model", "predict", "--model", tmp_path / "none.npz", "--data", table)
    assert rc == 2 and "does not exist" in err
    (tmp_path / "m.npz").write_bytes(json.dumps({}).encode())
    rc, _, err = _run(capsys, "model", "predict", "--model", tmp_path / "m.npz", "--data", table)
    assert rc == 1 and "is not a fedmarket model file" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("args, words", [
    (["--server", "0xnot-an-address"], "--server: not an address"),
    (["--server", "0x" + "11" * 20, "--declare", "-5"], "cannot be negative"),
])
def test_model_refund_refuses_bad_input_in_one_line(tmp_path, capsys, args, words):
    contracts = tmp_path / "c.json"
    contracts.write_text("{}")
    rc, out, err = _run(capsys, "model", "refund", "1", "--rpc", "http://127.0.0.1:9", "--contracts", contracts,
                        "--dev-account", "1", *args)
    assert rc == 2 and words in err and len(err.strip().splitlines()) == 1 and out == "", err
