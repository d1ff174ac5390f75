"""Data files for the role processes: a bundled dataset split into one `.npz` (arrays `X`, `y`)
per provider, held-out files for the validators, and a test file for the requester
(`fedmarket data split`). Each file is what `--data` / `--test` read."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import ConfigError


def split_files(out: str | Path, *, dataset: str = "digits", providers: int = 3, validators: int = 0,
                partition: str = "iid", alpha: float = 0.5, seed: int = 0) -> dict[str, Path]:
    """Write `provider-I.npz` (the training split, partitioned), `validator-I.npz` (the second half
    of the test split, shared out) and `test.npz` (the rest of the test split) under `out`;
    returns {name: path}. The requester, the validators and the providers never share a sample."""
    from .runner import JobConfig

    cfg = JobConfig(providers=providers, validators=validators, dataset=dataset, partition=partition, alpha=alpha,
                    seed=seed)
    _, train, test, parts = cfg.split()
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {out}: {exc.strerror}") from None
    files: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for i, idx in enumerate(parts):
        files[f"provider-{i}"] = (train.X[idx], train.y[idx])
    keep = np.arange(test.n_samples)
    if validators:
        cut = test.n_samples // 2
        for i, held in enumerate(np.array_split(keep[cut:], validators)):
            files[f"validator-{i}"] = (test.X[held], test.y[held])
        keep = keep[:cut]
    files["test"] = (test.X[keep], test.y[keep])
    written = {}
    for name, (X, y) in files.items():
        written[name] = out / f"{name}.npz"
        np.savez(written[name], X=X, y=y)
    return written
