"""docs/python-api.md's code, run as written: every Python block in order, in one namespace, from a
directory holding the repository's examples/ (so `examples/spec.json` resolves as in the guide)."""

from __future__ import annotations

import shutil
from pathlib import Path

from doc_blocks import blocks

ROOT = Path(__file__).resolve().parents[2]


def test_python_api_guide_runs(tmp_path, monkeypatch, capsys):
    code = blocks("python-api.md", "python")
    assert len(code) >= 6
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "guide"}
    for i, block in enumerate(code):
        exec(compile(block, f"docs/python-api.md block {i + 1}", "exec"), namespace)
    out = capsys.readouterr().out
    dep, job = namespace["dep"], namespace["job"]
    assert dep.job(job)["state"].name == "SETTLED" and "OPEN 100000000000000000000" in out
    assert namespace["accuracy"] > 0.8 and namespace["rounds_done"] == namespace["spec"].training.rounds
    held = namespace["spec"].reward.provider_funds
    assert all(dep.balance(a.address) > held for a in namespace["provider_accts"])  # stake and bond back plus a reward
    assert dep.licence.call("ownerOf", job) == namespace["requester_acct"].address
