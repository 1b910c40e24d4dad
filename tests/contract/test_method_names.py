"""A method is one file of bbench/methods/: nothing else in bbench/ names it.

Architecture principle 1: no name-based special cases outside the method's own file.
Every file under bbench/ but bbench/methods/ is parsed; a registered method's name (or a
registry alias) may not appear as a string literal or an identifier there. Docstrings and
comments may mention methods (they explain, they do not decide); they are not checked.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import bbench
from bbench.methods.registry import METHODS

PACKAGE = Path(bbench.__file__).resolve().parent


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                ids.add(id(body[0].value))
    return ids


def method_name_uses(path: Path, names: set[str]) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    skip = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            hits = _words(node.value) & names
        elif isinstance(node, ast.Name):
            hits = {node.id} & names
        elif isinstance(node, ast.Attribute):
            hits = {node.attr} & names
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            hits = {node.name} & names
        else:
            continue
        found += [f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {h}" for h in sorted(hits)]
    return found


def _words(text: str) -> set[str]:
    return set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text))


def registered_names() -> set[str]:
    return set(METHODS.names()) | set(METHODS.aliases())


def test_no_file_outside_bbench_methods_names_a_registered_method():
    names = registered_names()
    files = [p for p in PACKAGE.rglob("*.py") if PACKAGE / "methods" not in p.parents]
    uses = [use for p in files for use in method_name_uses(p, names)]
    assert not uses, "method names outside bbench/methods/:\n" + "\n".join(uses)


def test_the_check_finds_a_name_where_there_is_one():
    probe = PACKAGE / "_probe_for_test.py"
    source = 'x = "OGM"\nif y.method == Baseline:\n    pass\n'
    probe.write_text(source)
    try:
        uses = method_name_uses(probe, {"OGM", "Baseline"})
    finally:
        probe.unlink()
    assert [u.split(": ")[1] for u in uses] == ["OGM", "Baseline"]
