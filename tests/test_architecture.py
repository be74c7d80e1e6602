"""The shape of the house, read from the source (docs/ARCHITECTURE.md): imports point down the layer order,
no module imports itself back through others, and no module, function or recipe outgrows its limit.

Every check parses ``src/cryolens`` with :mod:`ast`; none imports the package. Each check also runs on a
small synthetic tree written to a temporary folder, so that it is shown to fail on a violation.
"""

from __future__ import annotations

import ast
import hashlib
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "cryolens"

# docs/ARCHITECTURE.md, "Layers": a module may import from its own layer and the layers before it.
LAYERS = {"errors": 0, "memory": 0, "__init__": 0, "imaging": 1, "io": 2, "volumes": 2, "metrics": 2,
          "simulate": 3, "inference": 4, "methods": 5, "analysis": 6, "bench": 7, "cli": 8}
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60          # in inference/ and methods/
MAX_RECIPE_LINES = 150           # methods/*.py but the registry, the config machinery and the package
NOT_RECIPES = {"__init__.py", "registry.py", "config.py"}
DUPLICATE_LINES = 6


def _modules(root: Path) -> dict[str, Path]:
    """``{dotted name: path}`` of every module below ``root`` (a package called ``cryolens``)."""
    out = {}
    for p in sorted(root.rglob("*.py")):
        parts = list(p.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(["cryolens", *parts])] = p
    return out


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The cryolens modules that ``name`` imports anywhere in its file (function-local imports too)."""
    package = name if _is_package(name, modules) else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names]
        for t in targets:
            while t and t not in modules and "." in t:
                t = t.rsplit(".", 1)[0]
            if t in modules and t != name:
                found.add(t)
    return found


def _layer(name: str) -> tuple[str, int]:
    parts = name.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    return top, LAYERS.get(top, -1)


def upward_imports(root: Path) -> list[str]:
    """``"a -> b"`` for every import of a module from a later layer (or from a folder with no layer)."""
    modules = _modules(root)
    bad = []
    for name, path in modules.items():
        top, rank = _layer(name)
        for target in sorted(_imports(name, path, modules)):
            ttop, trank = _layer(target)
            if rank < 0 or trank < 0 or trank > rank:
                bad.append(f"{name} ({top}) -> {target} ({ttop})")
    return bad


def import_cycles(root: Path) -> list[list[str]]:
    """The strongly connected groups of more than one module in the import graph (Tarjan). An import of a
    module's own enclosing package is left out: Python imports that package first in any case."""
    modules = _modules(root)
    graph = {n: {t for t in _imports(n, p, modules) if not n.startswith(t + ".")} for n, p in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    return groups


def long_modules(root: Path) -> list[str]:
    return [f"{p.relative_to(root)}: {n} lines" for p in sorted(root.rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES]


def long_functions(root: Path, folders: tuple[str, ...] = ("inference", "methods")) -> list[str]:
    bad = []
    for folder in folders:
        for p in sorted((root / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(p.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    n = node.end_lineno - node.lineno + 1
                    if n > MAX_FUNCTION_LINES:
                        bad.append(f"{p.relative_to(root)}:{node.lineno} {node.name}: {n} lines")
    return bad


def long_recipes(root: Path) -> list[str]:
    return [f"{p.relative_to(root)}: {n} lines" for p in sorted((root / "methods").glob("*.py"))
            if p.name not in NOT_RECIPES and (n := len(p.read_text().splitlines())) > MAX_RECIPE_LINES]


_SKIP = re.compile(r"^(#|import |from \S+ import |[\W_]*$)")


def duplicate_runs(root: Path, n: int = DUPLICATE_LINES) -> list[str]:
    """Places where ``n`` consecutive code lines (white space folded; blank, comment, import and
    punctuation-only lines passed over) stand again elsewhere in the tree, to the letter."""
    seen: dict[str, tuple[Path, int]] = {}
    bad = []
    for p in sorted(root.rglob("*.py")):
        lines = [(i + 1, " ".join(s.split())) for i, s in enumerate(p.read_text().splitlines())]
        code = [(i, s) for i, s in lines if not _SKIP.match(s)]
        last_hit = -10**9
        for k in range(len(code) - n + 1):
            key = hashlib.sha1("\n".join(s for _, s in code[k:k + n]).encode()).hexdigest()
            first = seen.setdefault(key, (p, code[k][0]))
            if first != (p, code[k][0]) and not (first[0] == p and code[k][0] - first[1] < n):
                if k > last_hit + n:  # one row per run, not one per window
                    bad.append(f"{p.relative_to(root)}:{code[k][0]} repeats {first[0].relative_to(root)}:{first[1]}")
                last_hit = k
    return bad


# --- the checks on the real tree -------------------------------------------------------------------------


def test_imports_point_down_the_layers():
    """No module imports from a layer after its own (docs/ARCHITECTURE.md's order)."""
    assert upward_imports(SRC) == []


def test_no_import_cycles():
    """No two modules import each other, directly or through others."""
    assert import_cycles(SRC) == []


def test_size_limits():
    """Modules ≤ 400 lines, functions of inference/ and methods/ ≤ 60 lines, recipe modules ≤ 150 lines."""
    assert long_modules(SRC) == []
    assert long_functions(SRC) == []
    assert long_recipes(SRC) == []


def test_no_repeated_code():
    """No run of six code lines stands twice in src/ (one idea, one function)."""
    assert duplicate_runs(SRC) == []


# --- each check fails on a tree that breaks its rule --------------------------------------------------------


@pytest.fixture
def bad_tree(tmp_path: Path) -> Path:
    root = tmp_path / "cryolens"
    for folder in ("imaging", "methods", "inference", "analysis"):
        (root / folder).mkdir(parents=True)
        (root / folder / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "imaging" / "a.py").write_text("from ..methods import b\n")          # upward
    (root / "methods" / "b.py").write_text("from . import c\n")
    (root / "methods" / "c.py").write_text("def f():\n    from .b import x\n")  # cycle b <-> c
    body = "".join(f"    v{i} = {i} * w + {i}\n" for i in range(70))
    (root / "inference" / "d.py").write_text(f"def long(w):\n{body}    return w\n")   # 72-line function
    (root / "inference" / "e.py").write_text(f"def other(w):\n{body}    return 0\n")  # repeats d.py
    (root / "analysis" / "f.py").write_text("".join(f"x{i} = {i}\n" for i in range(401)))  # 401-line module
    (root / "methods" / "g.py").write_text("".join(f"y{i} = {i}\n" for i in range(151)))  # 151-line recipe
    return root


def test_checks_catch_violations(bad_tree: Path):
    """Each check reports the violation planted in a synthetic tree (so the checks above can fail)."""
    assert upward_imports(bad_tree) == ["cryolens.imaging.a (imaging) -> cryolens.methods.b (methods)"]
    assert import_cycles(bad_tree) == [["cryolens.methods.b", "cryolens.methods.c"]]
    assert [s.split(":")[0] for s in long_modules(bad_tree)] == ["analysis/f.py"]
    assert long_functions(bad_tree) == ["inference/d.py:1 long: 72 lines", "inference/e.py:1 other: 72 lines"]
    assert [s.split(":")[0] for s in long_recipes(bad_tree)] == ["methods/g.py"]
    dups = duplicate_runs(bad_tree)
    assert len(dups) == 1 and dups[0].startswith("inference/e.py:2 repeats inference/d.py:2")
