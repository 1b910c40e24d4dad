"""No import cycle anywhere in bbench/: every module's imports, walked with `ast`.

Every import counts, wherever it stands: module level, inside a function (a lazy import),
or under `if TYPE_CHECKING:` (a type-only cycle is still a design cycle). An import of a
package counts as an edge to its `__init__`; the implicit import of a module's parent
package does not (a package `__init__` importing its submodules to register them is the
registry pattern, not a cycle of design).
"""
from __future__ import annotations

import ast
from pathlib import Path

import bbench

PACKAGE = Path(bbench.__file__).resolve().parent


def module_files() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def import_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                graph[name] |= {a.name for a in node.names if a.name in mods}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[:len(package) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target not in mods:
                    continue
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    graph[name].add(sub if sub in mods else target)
        graph[name].discard(name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_bbench_has_no_import_cycle():
    found = cycles(import_graph(module_files()))
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_the_walk_sees_lazy_and_type_checking_imports(tmp_path):
    mods = {"p.a": tmp_path / "a.py", "p.b": tmp_path / "b.py", "p.c": tmp_path / "c.py"}
    mods["p.a"].write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from p.b import X\n")
    mods["p.b"].write_text("def f():\n    from p import c\n")
    mods["p.c"].write_text("from . import a\n")
    mods["p"] = tmp_path / "__init__.py"
    mods["p"].write_text("")
    assert cycles(import_graph(mods)) == [["p.a", "p.b", "p.c"]]
