"""A participant's own data files against a job's schema: CSV, Parquet, .npz and image folders, a schema
inferred from a sample, splits for local trials, and one clear line for every bad file."""

import csv

import numpy as np
import pytest

from fedmarket.errors import ConfigError, SchemaMismatch
from fedmarket.fl.localdata import infer_schema, load_for_schema, read_data, split_file, write_rows
from fedmarket.spec import DataSchema


def _csv(path, rows, header=("age", "bp", "y")):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture
def table(tmp_path):
    rng = np.random.default_rng(0)
    rows = [[int(rng.integers(20, 80)), round(float(rng.normal(120, 10)), 1), ["healthy", "sick"][i % 2]] for i in range(40)]
    return _csv(tmp_path / "t.csv", rows)


def test_a_csv_gives_its_schema_and_is_read_back_by_column_name(table, tmp_path):
    data = read_data(table, "y")
    schema = DataSchema(**infer_schema(data))
    assert schema.features == ["age", "bp"] and schema.classes == ["healthy", "sick"] and schema.label == "y"
    assert schema.feature_low[0] < data.X[:, 0].min() and schema.feature_high[1] > data.X[:, 1].max()  # widened
    # another provider's file with its columns in another order (and one more) reads the same way
    other = _csv(tmp_path / "o.csv", [["sick", 131.5, 7, 40], ["healthy", 118.0, 9, 33]], ("y", "bp", "extra", "age"))
    X, y = load_for_schema(other, schema)
    assert X.tolist() == [[40, 131.5], [33, 118.0]] and y.tolist() == [1, 0]


def test_parquet_npz_and_images_read_too(table, tmp_path):
    pytest.importorskip("pyarrow")
    from PIL import Image

    files = split_file(table, "y", tmp_path / "split", providers=2, test=0.25)
    assert set(files) == {"provider-0", "provider-1", "test"} and files["test"].suffix == ".csv"
    data = read_data(table, "y")
    pq = write_rows(tmp_path / "t.parquet", data, np.arange(data.n_samples))
    back = read_data(pq, "y")
    assert np.array_equal(back.X, data.X) and back.labels.tolist() == data.labels.tolist() and back.features == ["age", "bp"]
    np.savez(tmp_path / "d.npz", X=np.arange(12.0).reshape(3, 4), y=np.array([0, 1, 1]))
    assert read_data(tmp_path / "d.npz").labels.tolist() == ["0", "1", "1"]
    for cls, value in (("cat", 10), ("dog", 200)):
        (tmp_path / "img" / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((4, 5), value + i, dtype=np.uint8)).save(tmp_path / "img" / cls / f"{i}.png")
    images = read_data(tmp_path / "img")
    assert images.input_shape == (1, 4, 5) and images.X.shape == (4, 20) and images.labels.tolist() == ["cat"] * 2 + ["dog"] * 2
    schema = DataSchema(**infer_schema(images))
    assert schema.input_shape == [1, 4, 5] and schema.feature_high == [255.0] * 20
    Image.fromarray(np.zeros((6, 5), dtype=np.uint8)).save(tmp_path / "img" / "dog" / "big.png")
    with pytest.raises(SchemaMismatch, match="every image must be 5x4 with 1"):
        load_for_schema(tmp_path / "img", schema)


@pytest.mark.parametrize("content, words", [
    (b"age,bp,y\n1,2,sick\n3,x,healthy\n", "value 'x' in data row 2, column 'bp', is not a number"),
    (b"age,bp,y\n1,2,sick\n3,4\n", "columns"),
    (b"", "needs a header row"),
    (b"age,bp,y\n", "no rows"),
    (b"age,bp,y\n1,2,\n", "have no label"),
    (b"\xff\xfe\x00garbage", "not a text CSV"),
])
def test_bad_csv_files_get_one_line(tmp_path, content, words):
    p = tmp_path / "bad.csv"
    p.write_bytes(content)
    with pytest.raises(SchemaMismatch, match=words) as err:
        read_data(p, "y")
    assert "\n" not in str(err.value)


def test_bad_files_never_get_numpys_pickle_advice(tmp_path, table):
    np.savez(tmp_path / "obj.npz", X=np.array([{"a": 1}], dtype=object), y=np.array([1]))
    (tmp_path / "junk.npz").write_bytes(b"not an archive")
    np.savez(tmp_path / "noy.npz", X=np.zeros((2, 2)))
    for name, words in (("obj.npz", "holds Python objects"), ("junk.npz", "is not an .npz archive"),
                        ("noy.npz", "must hold arrays 'X' and 'y'")):
        with pytest.raises(SchemaMismatch, match=words) as err:
            read_data(tmp_path / name)
        assert "allow_pickle" not in str(err.value)
    with pytest.raises(SchemaMismatch, match="unknown data format '.txt'"):
        (tmp_path / "a.txt").write_text("x")
        read_data(tmp_path / "a.txt")
    with pytest.raises(SchemaMismatch, match="no label column 'nope'"):
        read_data(table, "nope")
    schema = DataSchema(**infer_schema(read_data(table, "y")))
    _csv(tmp_path / "new.csv", [[30, 120.0, "unknown"]])
    with pytest.raises(SchemaMismatch, match="label 'unknown' is not one of the job's classes"):
        load_for_schema(tmp_path / "new.csv", schema)
    _csv(tmp_path / "far.csv", [[300, 120.0, "sick"]])
    with pytest.raises(SchemaMismatch, match="outside the schema's domain"):
        load_for_schema(tmp_path / "far.csv", schema)
    _csv(tmp_path / "cols.csv", [[30, "sick"]], ("age", "y"))
    with pytest.raises(SchemaMismatch, match="lacks the job's feature column"):
        load_for_schema(tmp_path / "cols.csv", schema)
    with pytest.raises(ConfigError, match="too few"):
        split_file(table, "y", tmp_path / "s", providers=2, validators=9, test=0.1)
