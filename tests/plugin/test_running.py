"""Running cases: passing, reporting (table, user_properties, JUnit XML), failure rendering,
references and inputs from the session cache, stand-in and miniature data, profiles."""
from __future__ import annotations

import json
import sys
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch

from bbench.config.specs import DatasetSpec
from bbench.data.base import DataInfo, DataModule, TensorMultimodalDataset
from bbench.data.registry import DATASETS, DatasetEntry
from bbench.results.record import RunResult

pytest_plugins = ["pytester"]

GRID = """
CASES = [grid(methods=["Baseline", "Unimodal", "MMPareto", "LinearProbe"], datasets=[SYN],
              undeclared="ignore", per_modality={"Unimodal": "modality"},
              inputs={"LinearProbe": {"source_run": run_of("Baseline"),
                                      "unimodal_runs": runs_per_modality("Unimodal")}},
              expect={"MMPareto": [above("train_flops", "Baseline")]}),
         refine("LinearProbe-*", params={"probe_epochs": 2})]
"""


def records(out: Path) -> list[Path]:
    return sorted(out.rglob("record.json"))


def test_cases_pass_and_report_through_user_properties_and_junit(cases):
    cases.declare(GRID)
    xml = cases.pytester.path / "junit.xml"
    result = cases(f"--junitxml={xml}")
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines([
        "*bbench: smoke profile, 5 case(s)*",
        "case*result*data*acc*F1*I*train FLOPs*vs baseline*",
        "Unimodal_a-Syn*passed*embedded*", "MMPareto-Syn*passed*", "LinearProbe-Syn*passed*probe *"])
    # the LinearProbe case and the FLOPs reference reused the Baseline and Unimodal cases' runs
    assert len(records(cases.out)) == 5 and not (cases.out / "main" / "_shared").exists()
    tree = ET.parse(xml)
    props = {(tc.get("name"), p.get("name")): p.get("value")
             for tc in tree.iter("testcase") for p in tc.iter("property")}
    assert float(props[("MMPareto-Syn", "bbench.acc")]) >= 0
    assert int(props[("MMPareto-Syn", "bbench.train_flops")]) > int(props[("Baseline-Syn", "bbench.train_flops")])
    record = Path(props[("MMPareto-Syn", "bbench.record")])
    assert record.is_file() and RunResult.load(record).method == "MMPareto"
    payload = json.loads(props[("LinearProbe-Syn", "bbench.result")])
    assert payload["case"] == "LinearProbe-Syn" and "probe_acc_a" in payload["metrics"]
    assert all(c["ok"] for c in payload["checks"])


def test_a_failing_property_names_itself_observed_expected_and_the_record(cases):
    path = cases.declare("""
    CASES = [grid(methods=["Baseline"], datasets=[SYN], undeclared="ignore"),
             refine("Baseline-Syn", expect=[floor("acc", 0.999), ceiling("imbalance", 1.0)])]
    """)
    result = cases()
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "Baseline-Syn: acc >= 0.999: observed 0." in out
    assert "FAIL [declared] acc >= 0.999: observed 0." in out and ", expected >= 0.999" in out
    assert "1 of 8 properties failed" in out  # 6 generic + 2 declared
    record = next(line.split("record: ", 1)[1] for line in result.outlines if "record: " in line)
    assert (cases.pytester.path / record).is_file() or Path(record).is_file()
    assert f"declared at: {path.name}:" in out
    assert "run: bbench.run('Baseline', 'synthetic'," in out
    result.stdout.fnmatch_lines(["*Baseline-Syn*failed*"])  # the summary table


def test_an_error_in_the_run_shows_the_exception_and_the_run_call(cases):
    cases.declare("""
    CASES = [grid(methods=["OGM"], datasets=[SYN], undeclared="ignore", params={"OGM": {"alpha": -1}})]
    """)
    result = cases()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*case OGM-Syn (profile smoke) raised SpecError: OGM: alpha=-1*",
                                 "*run: bbench.run('OGM', 'synthetic', *'alpha': -1*"])
    assert "pluggy/_" not in result.stdout.str()  # the traceback starts at the case


def test_reportinfo_points_at_the_declaration(cases):
    path = cases.declare(GRID)
    items, _ = cases.pytester.inline_genitems(*cases.args)
    item = next(i for i in items if i.name == "MMPareto-Syn")
    where, line, domain = item.reportinfo()
    assert Path(where) == path and domain == "case MMPareto-Syn"
    assert path.read_text().splitlines()[line].lstrip().startswith("CASES = [grid(")
    assert item.location[0] == path.name
    marker = item.get_closest_marker("case")
    assert marker.kwargs == {"method": "MMPareto", "dataset": "synthetic", "family": "Objective"}


# --- data: stand-in and miniature ----------------------------------------------------------------

PAPERISH = """
TOY = paper_dataset("toyav", "ToyAV", modalities=("audio", "visual"), num_classes=3,
                    informativeness={"audio": 0.9, "visual": 0.4}, smoke={"epochs": 2, "batch_size": 16})
CASES = [grid(methods=["Baseline", "OPM"], datasets=[TOY], undeclared="ignore")]
"""


def data_of(result) -> dict[str, str]:
    return {r.nodeid.split("::")[1]: dict(r.user_properties).get("bbench.data")
            for r in result.reprec.getreports("pytest_runtest_logreport") if r.when == "call"}


def test_a_paper_dataset_without_miniature_runs_on_a_synthetic_stand_in(cases):
    cases.declare(PAPERISH)
    result = cases()
    result.assert_outcomes(passed=2)
    assert data_of(result) == {"Baseline-ToyAV": "stand-in", "OPM-ToyAV": "stand-in"}
    spec = RunResult.load(records(cases.out)[0]).spec
    assert spec["dataset"]["name"] == "synthetic"
    assert tuple(spec["dataset"]["modalities"]) == ("audio", "visual")
    assert spec["dataset"]["options"]["num_classes"] == 3


@pytest.fixture
def toyav(monkeypatch, tmp_path):
    """A registered 'toyav' loader reading `data.npz` from its root, and a fake fixtures module
    whose make_miniature writes that file (the real on-disk-format path, in miniature)."""
    calls = []

    def build(spec: DatasetSpec, options) -> DataModule:
        arrays = np.load(Path(spec.root) / "data.npz")
        info = DataInfo("toyav", ("audio", "visual"), 3, {"audio": (4,), "visual": (5,)},
                        {"audio": torch.float32, "visual": torch.float32})
        splits = {s: TensorMultimodalDataset(
            {m: torch.from_numpy(arrays[f"{s}_{m}"]) for m in info.modalities},
            torch.from_numpy(arrays[f"{s}_y"])) for s in ("train", "val", "test")}
        return DataModule(info=info, **splits)

    @__import__("dataclasses").dataclass(frozen=True)
    class NoOptions:
        pass

    entry = DatasetEntry("toyav", build, NoOptions, ("audio", "visual"), ("audio", "visual"), 3)
    monkeypatch.setitem(DATASETS._items, "toyav", entry)
    monkeypatch.setitem(DATASETS._canonical, "toyav", "toyav")

    def make_miniature(dataset: str, root: Path, seed: int = 0) -> dict:
        calls.append((dataset, Path(root)))
        rng = np.random.default_rng(seed)
        arrays = {}
        for split, n in (("train", 48), ("val", 12), ("test", 24)):
            y = np.arange(n) % 3
            arrays[f"{split}_y"] = y.astype(np.int64)
            arrays[f"{split}_audio"] = (np.eye(3, 4)[y] * 3 + rng.standard_normal((n, 4))).astype(np.float32)
            arrays[f"{split}_visual"] = rng.standard_normal((n, 5)).astype(np.float32)
        np.savez(Path(root) / "data.npz", **arrays)
        return {"dataset.root": str(root), "batch_size": 8, "epochs": 1}

    fake = types.ModuleType("bbench.testing.fixtures")
    fake.MINIATURES = {"toyav": make_miniature}
    fake.make_miniature = make_miniature
    monkeypatch.setitem(sys.modules, "bbench.testing.fixtures", fake)
    return calls


def test_a_paper_dataset_with_a_miniature_runs_on_it_generated_once(cases, toyav):
    cases.declare(PAPERISH)
    result = cases()
    result.assert_outcomes(passed=2)
    assert data_of(result) == {"Baseline-ToyAV": "miniature", "OPM-ToyAV": "miniature"}
    assert len(toyav) == 1 and toyav[0][0] == "toyav"
    assert toyav[0][1].is_relative_to(cases.out) and (toyav[0][1] / "data.npz").is_file()
    spec = RunResult.load(records(cases.out)[0]).spec
    assert spec["dataset"]["name"] == "toyav" and spec["dataset"]["root"] == str(toyav[0][1])
    assert spec["train"]["batch_size"] == 8 and spec["train"]["epochs"] == 1  # the miniature's settings


# --- profiles ----------------------------------------------------------------------------------

def test_paper_profile_skips_naming_the_missing_data_or_gpu(cases, tmp_path):
    cases.declare("""
    CRE = paper_dataset("cremad", "CREMAD", modalities=("audio", "visual"), num_classes=6)
    CASES = [grid(methods=["Baseline"], datasets=[CRE], undeclared="ignore")]
    """)
    result = cases("--bbench-profile", "paper", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*no data root: pass --bbench-data-root DIR or set BBENCH_DATA*"])
    root = tmp_path / "data"
    result = cases("--bbench-profile", "paper", "-rs", "--bbench-data-root", str(root))
    result.stdout.fnmatch_lines([f"*no data for cremad at {root / 'cremad'} (also looked for {root / 'CREMAD'})*"])
    (root / "cremad").mkdir(parents=True)
    if not torch.cuda.is_available():
        result = cases("--bbench-profile", "paper", "-rs", "--bbench-data-root", str(root))
        result.stdout.fnmatch_lines(["*no CUDA device: the paper profile trains cremad on a GPU*"])


def test_quick_profile_runs_declared_data_and_skips_the_rest(cases, monkeypatch):
    monkeypatch.setenv("BBENCH_DATA", "/nonexistent")
    cases.declare("""
    QS = dataset("synthetic", "Syn", smoke=SMALL, quick={**SMALL, "epochs": 3})
    TOY = paper_dataset("toyav", "ToyAV", modalities=("audio", "visual"), num_classes=3)
    CASES = [grid(methods=["Baseline"], datasets=[QS, TOY], undeclared="ignore")]
    """)
    result = cases("--bbench-profile", "quick", "-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*the quick profile runs the embedded (mfeat) cases only*"])
    assert RunResult.load(records(cases.out)[0]).spec["train"]["epochs"] == 3
