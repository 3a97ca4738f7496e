"""The package's shape, checked from its source (docs/design.md, "Package map").

Walks every module of ``saetools`` with :mod:`ast` (nothing is imported) and fails on:

* an import cycle between saetools modules (imports inside functions count too: a cycle hidden
  in a function is still a cycle);
* an import of another module's ``_private`` name;
* a saetools import inside a function of a library module (lazy imports for start-up time belong
  in the command line, ``saetools/cli``);
* a file over 600 lines without a reason at its top (a line ``Long file: <why>`` in the module
  docstring), and a function over 100 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "saetools"
MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 100


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _target(module: str, path: Path, node: ast.ImportFrom) -> str | None:
    """The absolute module an ``ImportFrom`` reads from (None when outside saetools)."""
    if node.level == 0:
        name = node.module or ""
    else:
        base = module.split(".")
        if path.name != "__init__.py":
            base = base[:-1]
        base = base[: len(base) - (node.level - 1)]
        name = ".".join(base + ([node.module] if node.module else []))
    return name if name == "saetools" or name.startswith("saetools.") else None


def _imports(module: str, path: Path):
    """(target module, imported name or None, line, inside a function) for each saetools import."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    funcs = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    inner = {id(x) for f in funcs for x in ast.walk(f)}
    for node in ast.walk(tree):
        nested = id(node) in inner
        if isinstance(node, ast.ImportFrom):
            target = _target(module, path, node)
            if target is None:
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in MODULES:  # ``from . import steer`` imports a module
                    yield sub, None, node.lineno, nested
                else:
                    yield target, alias.name, node.lineno, nested
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("saetools"):
                    yield alias.name, None, node.lineno, nested


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for target, _, _, _ in _imports(module, path):
            if target in MODULES and target != module:
                graph[module].add(target)
    # importing a submodule first runs its parent packages' __init__
    for module in MODULES:
        for target in list(graph[module]):
            parent = target.rsplit(".", 1)[0]
            while parent != "saetools" and parent in MODULES:
                if not module.startswith(parent + ".") and module != parent:
                    graph[module].add(parent)
                parent = parent.rsplit(".", 1)[0]
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The non-trivial strongly connected components (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_walk_sees_the_package():
    assert "saetools.capture" in MODULES and "saetools.cli" in MODULES
    assert len(MODULES) > 40
    # the checker itself finds a planted cycle
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles between saetools modules:\n" + "\n".join(
        " <-> ".join(c) for c in cycles
    )


def test_no_private_names_across_modules():
    bad = []
    for module, path in MODULES.items():
        for target, name, line, _ in _imports(module, path):
            if name and name.startswith("_") and not name.startswith("__") and target != module:
                bad.append(f"{path.relative_to(ROOT.parent)}:{line}: {name} from {target}")
    assert not bad, "imports of another module's private names:\n" + "\n".join(bad)


def test_library_modules_import_saetools_at_top_level():
    bad = []
    for module, path in MODULES.items():
        if module == "saetools.cli" or module.startswith("saetools.cli."):
            continue
        for target, name, line, nested in _imports(module, path):
            if nested:
                bad.append(f"{path.relative_to(ROOT.parent)}:{line}: {target} {name or ''}")
    assert not bad, "saetools imports inside functions of library modules:\n" + "\n".join(bad)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_file_and_function_sizes(module):
    path = MODULES[module]
    text = path.read_text(encoding="utf-8")
    tree = ast.parse(text)
    n = len(text.splitlines())
    doc = ast.get_docstring(tree) or ""
    if n > MAX_FILE_LINES:
        assert "Long file:" in doc, (
            f"{path.relative_to(ROOT.parent)} has {n} lines (> {MAX_FILE_LINES}) and no "
            "'Long file: <why>' line in its docstring"
        )
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines, line {node.lineno})"
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines in {path.name}: {long}"
