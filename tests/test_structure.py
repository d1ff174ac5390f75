"""The code's shape, checked: no import cycle inside `fedmarket` (function-local imports count),
no function in `src/` longer than 80 lines, no module reaching into another module's private
attributes, the test harness kept out of the product, and pyflakes-clean code. Every allow-list is empty."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "fedmarket"
MAX_FUNCTION_LINES = 80

#: allowed exceptions to each rule: empty, and a test keeps them so
ALLOWED_CYCLES: set[frozenset[str]] = set()
ALLOWED_LONG_FUNCTIONS: set[str] = set()
ALLOWED_PRIVATE_ACCESS: set[str] = set()


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, path: Path) -> set[str]:
    """Every fedmarket module `module` imports, at any depth of its code."""
    tree = ast.parse(path.read_text())
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_package, node)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in MODULES:
                t = t.rpartition(".")[0]
            if t.startswith("fedmarket") and t != module:
                found.add(t)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[frozenset[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(frozenset(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_inside_fedmarket():
    # a package's __init__ re-exporting its modules is not a dependency of those modules on it
    graph = {m: {t for t in _imports(m, p) if not (MODULES[t].name == "__init__.py" and m.startswith(t + "."))}
             for m, p in MODULES.items()}
    cycles = [c for c in _cycles(graph) if c not in ALLOWED_CYCLES]
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(sorted(c)) for c in cycles)


def test_no_function_longer_than_80_lines():
    long = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                key = f"{module}.{node.name}"
                if lines > MAX_FUNCTION_LINES and key not in ALLOWED_LONG_FUNCTIONS:
                    long.append(f"{key} ({lines} lines)")
    assert not long, "functions over 80 lines: " + ", ".join(long)


def _own_names(tree: ast.Module) -> set[str]:
    """Private names a module defines: module-level ones, class members, and `self._x` attributes."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.alias):
            names.add(node.asname or node.name)
    return {n for n in names if n.startswith("_")}


def test_no_access_to_another_modules_private_attributes():
    """`x._name` is allowed on `self`/`cls`, or when this module defines `_name` (its own classes'
    objects); anything else reaches into another module's privates."""
    bad = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        own = _own_names(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute) or not node.attr.startswith("_") or node.attr.startswith("__"):
                continue
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            if node.attr in own:
                continue
            key = f"{module}:{ast.unparse(node)}"
            if key not in ALLOWED_PRIVATE_ACCESS:
                bad.append(f"{key} (line {node.lineno})")
    assert not bad, "private attributes of other modules: " + ", ".join(bad)


def test_the_product_never_imports_the_test_harness():
    users = [m for m, p in MODULES.items() if not m.startswith("fedmarket.testing")
             and any(t.startswith("fedmarket.testing") for t in _imports(m, p))]
    assert not users, f"product modules import fedmarket.testing: {users}"


@pytest.mark.parametrize("allowed", [ALLOWED_CYCLES, ALLOWED_LONG_FUNCTIONS, ALLOWED_PRIVATE_ACCESS])
def test_allow_lists_are_empty(allowed):
    assert not allowed


def test_pyflakes_clean():
    """No undefined name, unused import or variable, or shadowed definition anywhere in the repository's
    Python (ruff's pyflakes rules, `F`): the installed ruff from the test extra."""
    import subprocess
    import sys

    root = SRC.parent
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "--select", "F", "--no-cache", "--output-format",
                          "concise", "src", "tests", "benchmarks"], cwd=root, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
