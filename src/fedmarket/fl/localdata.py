"""A participant's own data files: CSV, Parquet and ``.npz`` tables and folders of images, read
against a job's data schema; a schema inferred from a sample; a file split for local trials.

Every problem with a file is a :class:`~fedmarket.errors.SchemaMismatch` (or, for a setting,
:class:`~fedmarket.errors.ConfigError`) whose message names the file and what is wrong with it in
one line; nothing is ever unpickled.
"""

from __future__ import annotations

import csv
import math
import os
import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedmarket.errors import ConfigError, SchemaMismatch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".pgm", ".ppm", ".tif", ".tiff", ".webp")
MAX_IMAGE_PIXELS = 2**24  # 16.7 Mpixel (4096x4096); Pillow's own refusal (DecompressionBombError) comes at 179 M
TABLE_SUFFIXES = (".csv", ".parquet", ".pq", ".npz")
PARQUET_HINT = "reading Parquet needs pyarrow: `pip install fedmarket[data]`"


@dataclass(frozen=True)
class LocalData:
    """What a data file holds, before it is matched to a job.

    Attributes
    ----------
    X : numpy.ndarray
        Features, float64 ``(n, d)`` (images flattened channel, row, column).
    labels : numpy.ndarray or None
        The label of each row as text (``"3"``, ``"cat"``), or None when the file has none.
    features : list of str or None
        Feature column names (tables with a header).
    label : str or None
        The label column's name.
    input_shape : tuple of int or None
        Shape of one sample (images: channels, height, width).
    """

    X: np.ndarray
    labels: np.ndarray | None
    features: list[str] | None
    label: str | None
    input_shape: tuple[int, ...] | None = None

    @property
    def n_samples(self) -> int:
        return int(self.X.shape[0])


def label_text(value) -> str:
    """A label as the text classes are named by: integral numbers without a fraction (``3.0`` -> ``"3"``)."""
    if isinstance(value, (bool, np.bool_)):
        return str(int(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            raise SchemaMismatch(f"label {value!r} is not a class")
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    text = value.decode() if isinstance(value, bytes) else str(value)
    return text.strip()


def _class_order(texts) -> list[str]:
    """Classes in a stable order: numerically when every one is an integer, else alphabetically."""
    uniq = sorted(set(texts))
    try:
        return sorted(uniq, key=int)
    except ValueError:
        return uniq


# ---- reading ---------------------------------------------------------------------------------------


def read_data(path: str | os.PathLike, label: str | None = None, *, shape: tuple[int, ...] | None = None,
              grey: bool | None = None) -> LocalData:
    """Read a data file or image folder.

    Parameters
    ----------
    path : path-like
        A ``.csv`` (header row, comma separated), ``.parquet`` or ``.npz`` (arrays ``X`` and ``y``)
        file, or a folder with one sub-folder of images per class.
    label : str, optional
        The label column of a table (a table without one yields ``labels=None``).
    shape : tuple of int, optional
        Images: the ``(channels, height, width)`` every image must have.
    grey : bool, optional
        Images: read as one grey channel (default: from ``shape``, else from the first image).

    Raises
    ------
    SchemaMismatch
        On a missing, unreadable or malformed file, naming what is wrong.
    """
    p = Path(path)
    if p.is_dir():
        return _read_images(p, shape, grey)
    if not p.exists():
        raise SchemaMismatch(f"data file {p} does not exist")
    suffix = p.suffix.lower()
    if suffix == ".csv":
        return _read_csv(p, label)
    if suffix in (".parquet", ".pq"):
        return _read_parquet(p, label)
    if suffix == ".npz":
        return _read_npz(p)
    raise SchemaMismatch(f"{p}: unknown data format '{suffix or p.name}'; use .csv, .parquet, .npz or a folder of "
                         "images (one sub-folder per class)")


def _read_csv(p: Path, label: str | None) -> LocalData:
    try:
        with open(p, newline="", encoding="utf-8-sig") as fh:
            header = next(csv.reader(fh), None)
    except UnicodeDecodeError:
        raise SchemaMismatch(f"{p} is not a text CSV file (not UTF-8)") from None
    except csv.Error as exc:  # a field past csv.field_size_limit(), a NUL byte
        raise SchemaMismatch(f"{p}: its header row is not CSV ({str(exc)[:100]})") from None
    except OSError as exc:
        raise SchemaMismatch(f"cannot read {p}: {exc.strerror}") from None
    if not header or not any(h.strip() for h in header):
        raise SchemaMismatch(f"{p} is empty: a CSV needs a header row naming its columns")
    names = [h.strip() for h in header]
    if len(set(names)) != len(names):
        raise SchemaMismatch(f"{p}: column names repeat in the header")
    if label is not None and label not in names:
        raise SchemaMismatch(f"{p} has no label column '{label}' (columns: {', '.join(names)})")
    feats = [i for i, n in enumerate(names) if n != label]
    if not feats:
        raise SchemaMismatch(f"{p} has no feature column besides the label")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # an empty table is reported below, in one line
            X = np.loadtxt(p, delimiter=",", skiprows=1, usecols=feats, dtype=np.float64, ndmin=2, encoding="utf-8-sig")
            y = np.loadtxt(p, delimiter=",", skiprows=1, usecols=[names.index(label)], dtype=str, ndmin=1,
                           encoding="utf-8-sig") if label is not None else None
    except ValueError as exc:
        raise SchemaMismatch(f"{p}: {_loadtxt_problem(str(exc), names, feats)}") from None
    if X.shape[0] == 0:
        raise SchemaMismatch(f"{p} has a header but no rows")
    labels = None if y is None else np.array([label_text(v) for v in y], dtype=object)
    if labels is not None and (labels == "").any():
        raise SchemaMismatch(f"{p}: {int((labels == '').sum())} row(s) have no label (first: data row "
                             f"{int(np.argmax(labels == '')) + 1})")
    return LocalData(X, labels, [names[i] for i in feats], label)


def _loadtxt_problem(msg: str, names: list[str], feats: list[int]) -> str:
    """numpy's parse error, its column index turned into the column's name."""
    first = msg.splitlines()[0].rstrip(".")
    m = re.search(r"at row (\d+), column (\d+)", first)
    if m:
        col = int(m.group(2)) - 1
        name = names[feats[col]] if 0 <= col < len(feats) else f"#{col + 1}"
        value = re.search(r"string '([^']*)'", first)
        what = f"value '{value.group(1)}'" if value else "a value"
        return f"{what} in data row {int(m.group(1)) + 1}, column '{name}', is not a number (features must be numeric)"
    if "number of columns changed" in first or "the number of columns" in first:
        return f"rows do not all have {len(names)} columns ({first})"
    return first


def _read_parquet(p: Path, label: str | None) -> LocalData:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError(PARQUET_HINT) from None
    try:
        table = pq.read_table(p)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises its own hierarchy for any malformed file
        raise SchemaMismatch(f"{p} is not a readable Parquet file: {str(exc).splitlines()[0]}") from None
    names = list(table.column_names)
    if label is not None and label not in names:
        raise SchemaMismatch(f"{p} has no label column '{label}' (columns: {', '.join(names)})")
    feats = [n for n in names if n != label]
    cols = []
    for n in feats:
        col = table.column(n).to_numpy(zero_copy_only=False)
        if col.dtype.kind not in "iufb":
            raise SchemaMismatch(f"{p}: column '{n}' is not numeric ({table.schema.field(n).type}); features must be numbers")
        cols.append(col.astype(np.float64))
    if not cols or table.num_rows == 0:
        raise SchemaMismatch(f"{p} has no rows or no feature column")
    labels = None
    if label is not None:
        values = table.column(label).to_pylist()
        if any(v is None for v in values):
            raise SchemaMismatch(f"{p}: {sum(v is None for v in values)} row(s) have no label")
        labels = np.array([label_text(v) for v in values], dtype=object)
    return LocalData(np.stack(cols, axis=1), labels, feats, label)


def check_unpacked_size(p: Path, what: str) -> None:
    """SchemaMismatch when an .npz archive's arrays, unpacked, would take more memory than this
    machine has available (a megabyte of zeros compressed is a gigabyte unpacked): checked from
    the archive's directory, before anything is unpacked. Each member's stored size is checked
    against what it unpacks to as it is read (zipfile), so the directory cannot understate it."""
    from ..memory import available_memory

    try:
        with zipfile.ZipFile(p) as zf:
            unpacked = sum(info.file_size for info in zf.infolist())
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as exc:
        raise SchemaMismatch(f"{p} is not a readable {what} ({type(exc).__name__})") from None
    have = available_memory()
    if have is not None and unpacked > have // 2:
        raise SchemaMismatch(f"{p}: its arrays take {unpacked / 2**30:.1f} GiB unpacked; this machine has "
                             f"{have / 2**30:.1f} GiB available")


def _read_npz(p: Path) -> LocalData:
    with open(p, "rb") as fh:
        if fh.read(4) != b"PK\x03\x04":
            raise SchemaMismatch(f"{p} is not an .npz archive (numpy.savez writes one, with arrays X and y)")
    check_unpacked_size(p, ".npz file")
    try:
        with np.load(p, allow_pickle=False) as doc:
            if "X" not in doc.files or "y" not in doc.files:
                raise SchemaMismatch(f"{p} must hold arrays 'X' and 'y' (has: {', '.join(doc.files) or 'none'})")
            X, y = np.asarray(doc["X"]), np.asarray(doc["y"])
    except SchemaMismatch:
        raise
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise SchemaMismatch(f"{p} holds Python objects, which fedmarket never loads: save numeric arrays "
                                 "X (samples x features) and y (labels)") from None
        raise SchemaMismatch(f"{p} is not a readable .npz file: {str(exc).splitlines()[0]}") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise SchemaMismatch(f"{p} is not a readable .npz file ({type(exc).__name__})") from None
    if y.ndim != 1 or X.ndim < 2 or len(X) != len(y) or not len(y):
        raise SchemaMismatch(f"{p}: X must be (samples, features...) and y (samples,), got {X.shape} and {y.shape}")
    if X.dtype.kind not in "iufb":
        raise SchemaMismatch(f"{p}: X must be numeric, got dtype {X.dtype}")
    shape = tuple(int(v) for v in X.shape[1:]) if X.ndim > 2 else None
    labels = np.array([label_text(v) for v in y.tolist()], dtype=object)
    return LocalData(X.reshape(len(X), -1).astype(np.float64), labels, None, None, shape)


def _read_images(root: Path, shape: tuple[int, ...] | None, grey: bool | None) -> LocalData:
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise ConfigError("reading image folders needs Pillow: `pip install pillow`") from None
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise SchemaMismatch(f"{root} holds no class folders: put each class's images in a sub-folder named after it")
    if grey is None and shape is not None:
        grey = shape[0] == 1
    rows, labels = [], []
    for cls in classes:
        for f in sorted((root / cls).iterdir()):
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(f) as im:  # reads the header only: the size is known before decoding
                    if im.width * im.height > MAX_IMAGE_PIXELS:
                        raise SchemaMismatch(f"{f} is {im.width}x{im.height} pixels, above the {MAX_IMAGE_PIXELS} "
                                             "pixels fedmarket reads in one image")
                    if shape is not None and len(shape) == 3 and (im.height, im.width) != tuple(shape[1:]):
                        raise SchemaMismatch(f"{f} is {im.width}x{im.height}; every image must be "
                                             f"{shape[2]}x{shape[1]} with {shape[0]} channel(s)")
                    if grey is None:
                        grey = im.mode in ("1", "L", "I", "I;16", "F")
                    a = np.asarray(im.convert("L" if grey else "RGB"), dtype=np.float64)
            except SchemaMismatch:
                raise
            except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as exc:
                raise SchemaMismatch(f"{f} is not a readable image ({type(exc).__name__}: {str(exc)[:100]})") from None
            a = a[None] if a.ndim == 2 else np.moveaxis(a, -1, 0)
            if shape is None:
                shape = tuple(int(v) for v in a.shape)
            if tuple(a.shape) != tuple(shape):
                raise SchemaMismatch(f"{f} is {a.shape[2]}x{a.shape[1]} with {a.shape[0]} channel(s); every image must be "
                                     f"{shape[2]}x{shape[1]} with {shape[0]}")
            rows.append(a.ravel())
            labels.append(cls)
    if not rows:
        raise SchemaMismatch(f"{root} holds no images ({', '.join(IMAGE_SUFFIXES)}) in its class folders")
    return LocalData(np.stack(rows), np.array(labels, dtype=object), None, None, tuple(shape))


# ---- matching a job's schema -----------------------------------------------------------------------


def load_for_schema(path: str | os.PathLike, schema, label: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read ``path`` as the job's schema says (its feature columns in order, its classes) and check it.

    Parameters
    ----------
    path : path-like
        A data file or image folder (see :func:`read_data`).
    schema : fedmarket.spec.DataSchema
        The job's data schema.
    label : str, optional
        The label column (default: the schema's).

    Returns
    -------
    tuple of numpy.ndarray
        ``(X, y)``: float64 features in the schema's column order, int64 class indices.
    """
    data = read_data(path, label if label is not None else schema.label,
                     shape=tuple(schema.input_shape) if schema.input_shape else None)
    if data.labels is None:
        raise SchemaMismatch(f"{path} has no labels: name the label column with --label"
                             + (f" (the job's is '{schema.label}')" if schema.label else ""))
    X = select_features(data, schema, path)
    y = encode_labels(data.labels, schema, path)
    schema.check(X, y)
    return X, y


def select_features(data: LocalData, schema, path) -> np.ndarray:
    """The schema's feature columns of ``data``, in the schema's order (all columns when the schema names none)."""
    if schema.features is None or data.features is None:
        if data.X.shape[1] != schema.n_features:
            raise SchemaMismatch(f"{path} has {data.X.shape[1]} features; the job's schema has {schema.n_features}")
        return data.X
    missing = [f for f in schema.features if f not in data.features]
    if missing:
        raise SchemaMismatch(f"{path} lacks the job's feature column(s): {', '.join(missing[:5])}"
                             + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    index = {n: i for i, n in enumerate(data.features)}
    return data.X[:, [index[f] for f in schema.features]]


def encode_labels(labels: np.ndarray, schema, path="data") -> np.ndarray:
    """Class indices of label texts: their position in the schema's ``classes``, or the integers
    themselves when the schema names no classes."""
    if schema.classes is not None:
        index = {c: i for i, c in enumerate(schema.classes)}
        out = np.fromiter((index.get(t, -1) for t in labels), dtype=np.int64, count=len(labels))
        if (out < 0).any():
            bad = labels[int(np.argmax(out < 0))]
            raise SchemaMismatch(f"{path}: label '{bad}' is not one of the job's classes ({', '.join(schema.classes[:10])}"
                                 f"{', ...' if len(schema.classes) > 10 else ''})")
        return out
    try:
        return np.array([int(t) for t in labels], dtype=np.int64)
    except ValueError:
        raise SchemaMismatch(f"{path}: labels must be class numbers 0..{schema.n_classes - 1} (the job names no "
                             "classes)") from None


def infer_schema(data: LocalData, margin: float = 0.1) -> dict:
    """A data schema (as a dict for ``DataSchema``) from a sample: its feature columns, its classes,
    and each feature's domain, the sample's range widened by ``margin`` of it on each side (images:
    the pixel domain [0, 255])."""
    if data.labels is None:
        raise SchemaMismatch("the sample has no labels: name its label column with --label")
    if not 0 <= margin <= 10:
        raise ConfigError(f"--margin must lie in [0, 10], got {margin}")
    classes = _class_order(data.labels.tolist())
    if len(classes) < 2:
        raise SchemaMismatch(f"the sample holds a single class ({classes[0]!r}): a classifier needs at least two")
    if not np.isfinite(data.X).all():
        raise SchemaMismatch(f"the sample has {int((~np.isfinite(data.X)).sum())} missing (NaN) or infinite feature value(s)")
    if data.input_shape is not None and data.features is None:
        low, high = np.zeros(data.X.shape[1]), np.full(data.X.shape[1], 255.0)
    else:
        lo, hi = data.X.min(axis=0), data.X.max(axis=0)
        span = np.where(hi > lo, hi - lo, np.maximum(1.0, np.abs(hi)))
        low, high = lo - margin * span, hi + margin * span
    out = {"n_features": int(data.X.shape[1]), "n_classes": len(classes),
           "feature_low": [float(v) for v in low], "feature_high": [float(v) for v in high], "classes": classes}
    if data.features is not None:
        out["features"] = list(data.features)
    if data.label is not None:
        out["label"] = data.label
    if data.input_shape is not None:
        out["input_shape"] = list(data.input_shape)
    return out


# ---- splitting for local trials --------------------------------------------------------------------


def split_indices(labels: np.ndarray, parts: int, *, test: float, alpha: float | None, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Row indices of ``parts`` provider shares and a held-out test share (a stratified ``test``
    fraction), the shares IID or label-skewed by Dirichlet(``alpha``)."""
    from fedmarket.fl.partition import dirichlet_partition, iid_partition

    if parts < 1:
        raise ConfigError(f"--parts must be at least 1 (got {parts})")
    if not 0 <= test < 1:
        raise ConfigError(f"--test must lie in [0, 1) (got {test})")
    classes = _class_order(labels.tolist())
    y = np.array([classes.index(t) for t in labels], dtype=np.int64)
    rng = np.random.default_rng(seed)
    test_idx = []
    for c in range(len(classes)):
        rows = rng.permutation(np.flatnonzero(y == c))
        test_idx.append(rows[: int(round(test * len(rows)))])
    test_rows = np.sort(np.concatenate(test_idx)) if test_idx else np.zeros(0, dtype=np.int64)
    rest = np.setdiff1d(np.arange(len(y)), test_rows)
    if len(rest) < parts:
        raise ConfigError(f"{len(rest)} training rows cannot make {parts} parts")
    shares = iid_partition(y[rest], parts, seed) if alpha is None else dirichlet_partition(y[rest], parts, alpha, seed)
    return [np.sort(rest[s]) for s in shares], test_rows


def split_file(path: str | os.PathLike, label: str | None, out: str | os.PathLike, *, providers: int,
               validators: int = 0, test: float = 0.2, alpha: float | None = None, seed: int = 0) -> dict[str, Path]:
    """Split a data file into ``provider-I``, ``validator-I`` and ``test`` files under ``out`` (the
    input's format; ``.npz`` for image folders): the providers' shares IID or Dirichlet(``alpha``)
    label-skewed, a stratified ``test`` share held out, half of it shared out among the validators.
    Returns {name: path}."""
    data = read_data(path, label)
    if data.labels is None:
        raise ConfigError("splitting needs the labels: name the label column with --label")
    shares, held = split_indices(data.labels, providers, test=test, alpha=alpha, seed=seed)
    suffix = ".npz" if Path(path).is_dir() else Path(path).suffix.lower()
    files = {f"provider-{i}": rows for i, rows in enumerate(shares)}
    if validators:
        cut = len(held) // 2
        if cut < validators:
            raise ConfigError(f"the test share has {len(held)} rows: too few for {validators} validator file(s); raise --test")
        for i, rows in enumerate(np.array_split(held[cut:], validators)):
            files[f"validator-{i}"] = rows
        held = held[:cut]
    if len(held):
        files["test"] = held
    return {name: write_rows(Path(out) / f"{name}{suffix}", data, rows) for name, rows in files.items()}


def write_rows(path: str | os.PathLike, data: LocalData, rows: np.ndarray) -> Path:
    """Write rows of ``data`` in the format ``path``'s suffix names (.csv, .parquet or .npz)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    X = data.X[rows]
    labels = data.labels[rows] if data.labels is not None else None
    names = data.features or [f"x{i}" for i in range(X.shape[1])]
    suffix = p.suffix.lower()
    if suffix == ".npz":
        y = np.array([int(t) for t in labels], dtype=np.int64) if labels is not None else np.zeros(len(X), np.int64)
        np.savez(p, X=X.reshape(len(X), *(data.input_shape or (X.shape[1],))), y=y)
    elif suffix in (".parquet", ".pq"):
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise ConfigError(PARQUET_HINT) from None
        cols = {n: X[:, i] for i, n in enumerate(names)}
        if labels is not None:
            cols[data.label or "label"] = [str(t) for t in labels]
        pq.write_table(pa.table(cols), p)
    else:
        with open(p, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow([*names, *([data.label or "label"] if labels is not None else [])])
            for i in range(len(X)):
                w.writerow([_num(v) for v in X[i]] + ([labels[i]] if labels is not None else []))
    return p


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 2**53 else repr(float(v))
