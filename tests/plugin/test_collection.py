"""Collection: ids, markers, declared and generic skips, -k / -m selection, the real grid."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from bbench.data.registry import DATASETS
from bbench.methods.baseline import Baseline
from bbench.methods.registry import METHODS

REPO = Path(__file__).resolve().parents[2]

pytest_plugins = ["pytester"]

GRID = """
SYN3 = dataset("synthetic", "Syn3", modalities=("a", "b", "c"), smoke=SMALL)
CASES = [
    grid(methods=["Baseline", "OGM", "Unimodal", "TwoOnly"], datasets=[SYN, SYN3],
         undeclared="ignore", per_modality={"Unimodal": "modality"},
         skip={("OGM", "Syn3"): "declared: not this one"}),
]
"""


@pytest.fixture
def two_only(monkeypatch):
    """A registered method that declares it handles two modalities at most."""

    class TwoOnly(Baseline):
        name = "TwoOnly"
        max_modalities = 2

    monkeypatch.setitem(METHODS._items, "TwoOnly", TwoOnly)
    monkeypatch.setitem(METHODS._canonical, "twoonly", "TwoOnly")
    return TwoOnly


def collected(result) -> list[str]:
    return [line.split("::", 1)[1] for line in result.outlines if "::" in line]


def test_collect_only_lists_ids_in_grid_order(cases, two_only):
    cases.declare(GRID)
    result = cases("--collect-only", "-q")
    assert collected(result) == [
        "Unimodal_a-Syn", "Unimodal_b-Syn", "Baseline-Syn", "TwoOnly-Syn", "OGM-Syn",
        "Unimodal_a-Syn3", "Unimodal_b-Syn3", "Unimodal_c-Syn3", "Baseline-Syn3", "TwoOnly-Syn3",
        "OGM-Syn3"]
    assert all(re.fullmatch(r"[A-Za-z0-9_]+-[A-Za-z0-9_]+", i) for i in collected(result))


def test_inapplicable_and_declared_pairs_are_skipped_rows_with_their_reason(cases, two_only):
    cases.declare(GRID)
    result = cases("-rs", "-k", "TwoOnly-Syn3 or OGM-Syn3")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines([
        "*TwoOnly handles at most 2 modalities; this dataset has 3 (a, b, c)*",
        "*declared: not this one*"])


def test_a_registered_dataset_nobody_declared_is_a_skipped_row_not_absent(cases):
    cases.declare("""
    CASES = [grid(methods=["Baseline"], datasets=[SYN], exclude_datasets={"mfeat-pix-zer": "not now"})]
    """)
    result = cases("--collect-only", "-q")
    ids = collected(result)
    assert "Baseline-mfeat" in ids and "Baseline-mfeat_fou_zer" in ids
    assert not any("pix_zer" in i and "mor" not in i for i in ids)  # excluded with a reason
    result = cases("-rs", "-k", "Baseline-mfeat_fou_zer")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*'mfeat-fou-zer' is registered but not declared in cases_demo.py*"])


def test_k_and_m_select_exactly(cases, two_only):
    cases.declare(GRID)
    # -k: case-insensitive substrings of the id; a skipped row is still selected (and reported)
    assert collected(cases("--collect-only", "-q", "-k", "OGM and Syn3")) == ["OGM-Syn3"]
    assert collected(cases("--collect-only", "-q", "-k", "unimodal_b")) == ["Unimodal_b-Syn",
                                                                            "Unimodal_b-Syn3"]
    assert collected(cases("--collect-only", "-q", "-m", "case(method='OGM')")) == ["OGM-Syn", "OGM-Syn3"]
    assert collected(cases("--collect-only", "-q", "-m", "case(method='Unimodal', modality='c')")) == [
        "Unimodal_c-Syn3"]
    assert collected(cases("--collect-only", "-q", "-m", "case(family='Optimization')")) == [
        "OGM-Syn", "OGM-Syn3"]
    assert collected(cases("--collect-only", "-q", "-k", "Baseline and Syn3")) == ["Baseline-Syn3"]


def test_declaration_errors_are_collection_errors_with_the_reason(cases):
    cases.declare("""
    CASES = [grid(methods=["Baseline"], datasets=[SYN], undeclared="ignore"),
             refine("Basline-*", expect=[floor("acc", 0.5)])]
    """)
    result = cases("--collect-only", "-q")
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*refine('Basline-*') at *cases_demo.py:* matches no case*"])


def test_plain_collection_without_the_plugin_ignores_case_files(cases):
    cases.declare("CASES = [grid(methods=['Baseline'], datasets=[SYN], undeclared='ignore')]")
    result = cases.pytester.runpytest_inprocess("--collect-only", "-q", "-p", "no:bbench")
    assert "Baseline-Syn" not in result.stdout.str()


# --- the repository's grid ---------------------------------------------------------------------

def repo_collect(cases, *args):
    return cases.pytester.runpytest_inprocess(*cases.args, str(REPO / "cases"), "--collect-only", "-q",
                                              *args)


def test_repository_grid_is_every_method_times_every_dataset(cases):
    from bbench.cases.collect import load_declarations

    ids = collected(repo_collect(cases))
    decls = load_declarations(REPO / "cases" / "cases_grid.py")
    assert ids == [c.id for c in decls.cases]
    datasets = {c.dataset.name for c in decls.cases}
    assert datasets | set(decls.excluded) == set(DATASETS)
    for name in datasets:
        rows = [c for c in decls.cases if c.dataset.name == name]
        modalities = rows[0].dataset.modalities()
        assert len(rows) == len(METHODS) - 1 + len(modalities)  # Unimodal once per modality
    paper_tokens = ["CREMAD", "KineticsSounds", "BalancedAV", "VGGSound", "UCF101", "FOOD101", "CMUMOSEI"]
    for token in paper_tokens + ["mfeat", "UCI_fac_fou_mor"]:
        assert f"MMPareto-{token}" in ids and f"Baseline-{token}" in ids
    assert "Unimodal_text-CMUMOSEI" in ids and "Unimodal_flow-UCF101" in ids


@pytest.mark.parametrize("expr,expected", [("MMPareto and CREMAD", ["MMPareto-CREMAD"]),
                                           ("MMPareto and mfeat", ["MMPareto-mfeat"])])
def test_done_when_selections_pick_exactly_one_case(cases, expr, expected):
    assert collected(repo_collect(cases, "-k", expr)) == expected


def loads_torch(code: str) -> bool:
    import subprocess

    code += "; import sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         env={"PYTHONPATH": str(REPO), "PATH": ""}, check=True)
    return out.stdout.strip() == "True"


def test_plugin_and_compare_modules_do_not_import_torch():
    # bbench's package __init__ is replaced by an empty package: what the plugin itself imports
    stub = ("import sys, types; p = types.ModuleType('bbench'); p.__path__ = ['bbench']; "
            "sys.modules['bbench'] = p; ")
    assert not loads_torch(stub + "import bbench.pytest_plugin")
    assert not loads_torch(stub + "import bbench.report.compare, bbench.cases.dsl")


def test_plain_pytest_start_up_does_not_import_torch():
    assert not loads_torch("import bbench")
    assert not loads_torch("import bbench.pytest_plugin")
