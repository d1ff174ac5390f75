"""The architecture and protocol docs name real files, and every role, process and contract is in
the architecture doc: a moved or renamed module fails here instead of leaving the doc behind."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "fedmarket"
DOCS = ["architecture.md", "protocol.md", "security.md", "privacy.md"]
# `dir/file.py` or `contracts/X.vy`-like references written in backticks
REF = re.compile(r"`((?:[a-z_]+/)+[A-Za-z_]+\.(?:py|vy))`")


def _exists(ref: str) -> bool:
    return any(p.exists() for p in (ROOT / ref, SRC / ref, ROOT / "contracts" / ref, ROOT / "tests" / ref))


@pytest.mark.parametrize("doc", DOCS)
def test_every_file_a_doc_names_exists(doc):
    text = (ROOT / "docs" / doc).read_text()
    missing = sorted({ref for ref in REF.findall(text) if not _exists(ref)})
    assert not missing, f"docs/{doc} names files that do not exist: {missing}"


def test_the_architecture_doc_names_every_role_process_and_contract():
    text = (ROOT / "docs" / "architecture.md").read_text()
    roles = [p.name for p in (SRC / "roles").glob("*.py") if p.stem != "__init__"]
    processes = [p.stem for p in (SRC / "processes").glob("*.py") if p.stem not in ("__init__", "base")]
    commands = re.search(r"`fedmarket ([a-z|]+)`\)", text)
    contracts = [p.name for p in (ROOT / "contracts").glob("*.vy")]
    absent = [r for r in roles if r not in text] + [c for c in contracts if c not in text]
    absent += [f"fedmarket {p}" for p in processes if commands is None or p not in commands.group(1).split("|")]
    assert not absent, f"docs/architecture.md does not mention: {absent}"


def test_the_threat_model_names_exactly_the_attacker_tests():
    """docs/security.md names every test of tests/security (file::name), and only tests that exist."""
    import ast

    doc = (ROOT / "docs" / "security.md").read_text()
    named = set(re.findall(r"`(test_\w+\.py)::(\w+)", doc))
    tests = set()
    for path in (ROOT / "tests" / "security").glob("test_*.py"):
        tree = ast.parse(path.read_text())
        tests |= {(path.name, f.name) for f in tree.body if isinstance(f, ast.FunctionDef) and f.name.startswith("test_")}
    assert not tests - named, f"attacker tests missing from docs/security.md: {sorted(tests - named)}"
    assert not named - tests, f"docs/security.md names tests that do not exist: {sorted(named - tests)}"


def test_every_test_a_doc_names_by_path_exists():
    """A `tests/.../test_x.py::test_name` reference in any doc names a test function that exists
    (a renamed test would otherwise leave the threat model pointing at nothing)."""
    import ast

    missing = []
    for doc in sorted((ROOT / "docs").glob("*.md")):
        for path, name in set(re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", doc.read_text())):
            file = ROOT / path
            defined = set()
            if file.is_file():
                tree = ast.parse(file.read_text())
                defined = {f.name for f in ast.walk(tree) if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)}
            if name not in defined:
                missing.append(f"{doc.name}: {path}::{name}")
    assert not missing, f"docs name tests that do not exist: {missing}"
