"""The case DSL, grid expansion, profiles' plans, and the repository's declarations."""
from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from bbench.cases import case, dataset, floor, grid, paper, paper_dataset, refine
from bbench.cases.collect import expand, load_declarations, order_methods
from bbench.cases.dsl import DeclarationError, PaperValue, StandIn
from bbench.cases.profiles import CaseSkipped, PlanContext, find_miniature, get_profile
from bbench.data.registry import DATASETS

REPO = Path(__file__).resolve().parents[2]

SYN = dataset("synthetic", "Syn", smoke={"epochs": 2}, quick={"epochs": 9})


def cases_of(*items):
    return {c.id: c for c in expand(items, REPO / "x.py").cases}


def test_tokens_and_duplicate_ids_are_rejected():
    with pytest.raises(DeclarationError, match=r"token 'my-data' must match \[A-Za-z0-9_\]\+"):
        dataset("synthetic", "my-data")
    with pytest.raises(DeclarationError, match="share the token 'syn'"):
        grid(datasets=[SYN, dataset("mfeat", "syn")])
    with pytest.raises(DeclarationError, match="duplicate case id 'Baseline-Syn'"):
        cases_of(grid(methods=["Baseline"], datasets=[SYN], undeclared="ignore"), case("Baseline", SYN))
    with pytest.raises(DeclarationError, match="unknown profile 'smok'"):
        floor("acc", 0.5, profiles="smok")


def test_refine_layers_apply_per_profile_and_case_subsets_get_their_own_id():
    got = cases_of(grid(methods=["OGM"], datasets=[SYN], undeclared="ignore", params={"OGM": {"alpha": 0.1}}),
                   refine("OGM-*", params={"alpha": 0.2}, profiles="quick", expect=[floor("acc", 0.1)]),
                   case("Baseline", SYN, modalities=("b",), overrides={"epochs": 1}))
    ogm = got["OGM-Syn"]
    assert ogm.params_for("smoke") == {"alpha": 0.1} and ogm.params_for("quick") == {"alpha": 0.2}
    assert [e.describe() for e in ogm.expectations_for("paper")] == ["acc >= 0.1"]
    assert got["Baseline_b-Syn"].modalities == ("b",)


def test_paper_values_are_percent_with_tolerance_below_and_only_in_the_paper_profile():
    e = paper("acc", 65.5)
    assert e.value == pytest.approx(0.655) and e.below == pytest.approx(0.05) and e.profiles == ("paper",)


def test_stand_in_mimics_names_classes_and_dominance():
    s = StandIn(("audio", "visual"), 309, {"audio": 0.8, "visual": 0.5})
    o = s.overrides()
    assert o["modalities"] == ("audio", "visual")
    assert o["dataset.options"]["num_classes"] == 309 and o["dataset.options"]["n_train"] == 8 * 309
    assert s.overrides(("visual",))["dataset.options"]["informativeness"] == (0.5,)
    assert StandIn(("a", "b"), 2).overrides()["dataset.options"]["n_train"] == 128


def test_methods_are_ordered_unimodal_reference_families_evaluation():
    assert order_methods(["LinearProbe", "OGM", "Baseline", "MMPareto", "Unimodal", "OPM",
                          "ModalityValuation"], per_modality=["Unimodal"]) == [
        "Unimodal", "Baseline", "ModalityValuation", "OPM", "MMPareto", "OGM", "LinearProbe"]


def test_smoke_plan_starts_windows_at_zero_and_keeps_the_case_settings(tmp_path):
    got = cases_of(grid(methods=["OGM", "Baseline"], datasets=[SYN], undeclared="ignore"))
    ctx = PlanContext("smoke", workdir=tmp_path)
    plan = get_profile("smoke").plan(got["OGM-Syn"], ctx)
    assert plan.params == {"start": 0} and plan.overrides["epochs"] == 2 and plan.threads == 1
    assert plan.overrides["device"] == "cpu" and plan.overrides["progress"] is False
    quick = get_profile("quick").plan(got["OGM-Syn"], PlanContext("quick", workdir=tmp_path))
    assert quick.params == {} and quick.overrides["epochs"] == 9
    base = get_profile("smoke").plan(got["Baseline-Syn"], ctx)
    assert plan.for_method("Baseline", {}, "ref").key() == base.key()  # references hit the cache


def test_paper_profile_plans_real_data_with_its_root(tmp_path, monkeypatch):
    decl = paper_dataset("cremad", "CREMAD", modalities=("audio", "visual"), num_classes=6)
    (tmp_path / "CREMAD").mkdir()
    c = cases_of(grid(methods=["Baseline"], datasets=[decl], undeclared="ignore"))["Baseline-CREMAD"]
    plan = get_profile("paper").plan(c, PlanContext("paper", tmp_path, "cpu", tmp_path))
    assert plan.dataset == "cremad" and plan.overrides["dataset.root"] == str(tmp_path / "CREMAD")
    assert plan.threads is None and plan.data == "real"
    with pytest.raises(CaseSkipped, match="quick profile runs the embedded"):
        get_profile("quick").plan(c, PlanContext("quick", workdir=tmp_path))


def test_miniature_lookup_is_import_guarded_per_dataset(monkeypatch):
    fake = types.ModuleType("bbench.testing.fixtures")
    fake.MINIATURES = {"cremad": object()}
    fake.make_miniature = lambda dataset, root, seed=0: {}
    monkeypatch.setitem(sys.modules, "bbench.testing.fixtures", fake)
    assert find_miniature("cremad") is fake.make_miniature
    assert find_miniature("ucf101") is None  # this module offers no ucf101 miniature
    assert find_miniature("toyav") is None  # not registered
    monkeypatch.setitem(sys.modules, "bbench.testing.fixtures", None)  # import fails: ModuleNotFound
    monkeypatch.setitem(sys.modules, "bbench.testing", None)
    assert find_miniature("cremad") is None


# --- the repository's declarations ---------------------------------------------------------------

@pytest.fixture(scope="module")
def repo_cases():
    return load_declarations(REPO / "cases" / "cases_grid.py")


def test_stand_ins_match_the_registered_paper_datasets(repo_cases):
    for decl in {c.dataset.name: c.dataset for c in repo_cases.cases if c.dataset.kind == "paper"}.values():
        if decl.name in DATASETS:  # the stand-in must mimic the real thing
            entry = DATASETS.get(decl.name)
            assert decl.standin.modalities == tuple(entry.modalities), decl.name
            assert decl.standin.num_classes == entry.num_classes, decl.name


def test_paper_profile_carries_table2(repo_cases):
    by_id = {c.id: c for c in repo_cases.cases}
    described = [e.describe() for e in by_id["ModalityValuation-CREMAD"].expectations_for("paper")]
    assert any("0.7585" in d for d in described) and any("0.7668" in d for d in described)
    described = [e.describe() for e in by_id["Unimodal_text-CMUMOSEI"].expectations_for("paper")]
    assert any("0.8058" in d for d in described)  # Unimodal-3 of CMU-MOSEI is text
    assert not any(isinstance(e, PaperValue) for e in by_id["MMPareto-mfeat"].expectations_for("paper"))
    assert any(e.describe().startswith("train_flops >") for e in by_id["MMPareto-CREMAD"].expect)
