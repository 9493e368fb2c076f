"""The import graph of the library (``condiff/``) and of the recipes that reproduce its weights (``training/``).

Read from the source with :mod:`ast` (nothing is imported), so modules added later are covered without
changing this file. What is checked:

* **No cycles among module-level imports**, in ``condiff`` and in ``training``. A module-level import is
  one that runs when the module is imported: top-level statements, including those under ``if``/``try``
  and class bodies, but not the blocks under ``if TYPE_CHECKING:`` (never run) or
  ``if __name__ == "__main__":`` (run only as a program). Importing ``a.b.c`` also runs the packages
  ``a.b`` and ``a`` (their ``__init__``), so those edges count too, except the root package's own.
* **Imports inside functions** (deferred until the function runs: heavy optional dependencies, plugin
  lookups by name) are not part of the cycle check: they cannot make importing a module fail, and a
  command or pipeline may legitimately reach "sideways" at run time. (``graph(…, lazy=True)`` includes
  them, for review.)
* **The library never imports the training package**, at module level or in a function, by ``import``
  or by ``importlib.import_module("training…")`` — with one documented exception: the ``condiff train
  job`` command (:data:`TRAINING_ENTRY`), which imports it inside its function, from a source checkout.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBRARY, RECIPES = "condiff", "training"
#: the only library module that may import the training package (inside a function)
TRAINING_ENTRY = {"condiff.commands.train"}


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported module (resolved to a module of the scanned package where possible)
    lazy: bool  # inside a function body


def package_modules(package: str) -> dict[str, Path]:
    """``{dotted module name: file}`` of every ``.py`` file under ``ROOT/package``."""
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _skipped_block(node: ast.If) -> bool:
    test = node.test
    if isinstance(test, ast.Name) and test.id == "TYPE_CHECKING":
        return True
    if isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING":
        return True
    return (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__"
            and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in test.comparators))


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _targets(node: ast.AST, module: str, is_package: bool, known: set[str]) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        base = _resolve(module, is_package, node)
        # ``from pkg import sub`` imports the submodule pkg.sub where there is one
        return [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"
            and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
        return [node.args[0].value]  # importlib.import_module("pkg.mod")
    return []


def file_imports(module: str, path: Path, known: set[str]) -> list[Import]:
    """Every import of one file, marked lazy when it sits inside a function."""
    is_package = path.name == "__init__.py"
    found: list[Import] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        if isinstance(node, ast.If) and _skipped_block(node):
            for child in node.orelse:
                visit(child, lazy)
            return
        for target in _targets(node, module, is_package, known):
            found.append(Import(module, target, lazy))
        inner = lazy or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(ast.parse(path.read_text(), str(path)), False)
    return found


def all_imports(package: str, also_known: tuple[str, ...] = ()) -> list[Import]:
    modules = package_modules(package)
    known = set(modules)
    for other in also_known:
        known |= set(package_modules(other))
    return [imp for name, path in modules.items() for imp in file_imports(name, path, known)]


def graph(package: str, *, lazy: bool) -> dict[str, set[str]]:
    """Edges between the package's own modules (with the parent-package edges an import implies)."""
    modules = set(package_modules(package))
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for imp in all_imports(package):
        if imp.lazy and not lazy:
            continue
        parts = imp.target.split(".")
        for k in range(2, len(parts) + 1):  # a.b.c runs a.b and a.b.c (the root package's own __init__ excluded)
            target = ".".join(parts[:k])
            if target in modules and target != imp.source and not imp.source.startswith(target + "."):
                edges[imp.source].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_library_has_no_import_cycle():
    assert cycles(graph(LIBRARY, lazy=False)) == []


def test_the_training_package_has_no_import_cycle():
    assert cycles(graph(RECIPES, lazy=False)) == []


def test_the_library_never_imports_the_training_package():
    into = [imp for imp in all_imports(LIBRARY)
            if imp.target == RECIPES or imp.target.startswith(RECIPES + ".")]
    assert {imp.source for imp in into} <= TRAINING_ENTRY, into
    assert all(imp.lazy for imp in into), "the job command imports the training package only when it runs"


def test_the_walker_sees_module_level_lazy_and_dynamic_imports(tmp_path, monkeypatch):
    """The checks above can fail: a two-module cycle and an import of the recipes are found."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n\ndef f():\n    import training.job\n")
    (pkg / "b.py").write_text("from .a import f\nif __name__ == '__main__':\n    from . import c\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import f\n"
                              "import importlib\nimportlib.import_module('pkg.a')\n")
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    assert cycles(graph("pkg", lazy=False)) == [["pkg.a", "pkg.b"]]
    assert graph("pkg", lazy=False)["pkg.c"] == {"pkg.a"}  # dynamic import counted, TYPE_CHECKING block not
    assert [(i.source, i.lazy) for i in all_imports("pkg") if i.target == "training.job"] == [("pkg.a", True)]
