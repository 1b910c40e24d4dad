"""A method defined only in the tests runs through bbench.run, bench, the tables and the case grid.

`ContractProbe` (contract_method.py) has a parameter-group hook, a gradient observer that
runs on every step, an auxiliary model built in set-up and a declared input run. It is
registered for these tests only; no file under bbench/ changes for it.
"""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

import bbench
from bbench.report.bench import run_bench
from bbench.report.table import comparison_table
from bbench.results import MACHINE_METRICS
from bbench.testing.resume import interrupted_and_resumed
from tests.contract import contract_method

pytest_plugins = ["pytester"]
FAST = {"epochs": 3, "progress": False}


@pytest.fixture
def registered():
    cls = contract_method.register()
    try:
        yield cls
    finally:
        contract_method.unregister()


def runs_of(root: Path, method: str) -> list[Path]:
    return sorted(p.parent for p in root.rglob("record.json")
                  if json.loads(p.read_text())["spec"]["method"] == method)


def test_run_finds_or_trains_its_input_once_and_uses_every_hook(registered, tmp_path):
    first = bbench.run(contract_method.NAME, "mfeat", output_root=str(tmp_path), **FAST)
    second = bbench.run(contract_method.NAME, "mfeat", output_root=str(tmp_path), **FAST)
    baselines = runs_of(tmp_path, "Baseline")
    assert len(baselines) == 1  # trained for the first run, found by spec hash for the second
    assert first.extra["inputs"] == {"teacher": [str(baselines[0])]} == second.extra["inputs"]
    assert first.metrics == {**second.metrics,
                             **{k: first.metrics[k] for k in MACHINE_METRICS if k in first.metrics}}
    history = first.history
    # the observer ran in every epoch: outside the window (epoch 0) and inside it
    assert [h["method"]["observed_active"] for h in history] == [0.0, 1.0, 1.0]
    assert all(h["method"]["gradnorm_fac"] > 0 for h in history)
    # parameter groups: group 0 (the encoders) at half the run's learning rate
    lr = first.spec["train"]["optimizer"]["lr"]
    assert history[0]["lr"] == pytest.approx(lr * 0.5)
    baseline = bbench.results.record.RunResult.load(baselines[0])
    assert first.metrics["train_flops"] > baseline.metrics["train_flops"]  # the teacher passes


def test_an_interrupted_run_resumed_ends_with_the_uninterrupted_metrics(registered, tmp_path):
    whole = bbench.run(contract_method.NAME, "mfeat", output_root=str(tmp_path), **FAST)

    resumed = interrupted_and_resumed(contract_method.NAME, "mfeat", 1,
                                      output_root=str(tmp_path), **FAST)
    for key in ("acc", "f1", "imbalance", "shapley", "train_flops", "best_epoch", "val_acc"):
        assert resumed.metrics[key] == whole.metrics[key], key
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in whole.history]
    assert [h["method"] for h in resumed.history] == [h["method"] for h in whole.history]
    assert resumed.extra["inputs"] == whole.extra["inputs"]  # the same teacher, not retrained
    assert len(runs_of(tmp_path, "Baseline")) == 1


def test_bench_runs_it_in_its_family_and_the_table_shows_it(registered, tmp_path):
    bench = run_bench("mfeat", [contract_method.NAME], {"epochs": 2, "progress": False,
                                                        "LinearProbe.probe_epochs": 1},
                      tmp_path / "bench")
    methods = [r.method for r in bench.runs]
    assert methods == ["Unimodal", "Unimodal", "Baseline", contract_method.NAME, "LinearProbe"]
    probe_run = next(r for r in bench.runs if r.method == contract_method.NAME)
    assert probe_run.extra["inputs"]["teacher"] == [str(bench.runs[2].run_dir)]  # bench's own
    table = comparison_table(bench)
    assert f"| {contract_method.NAME} " in table and "| Optimization avg " in table
    assert table.index("| Baseline ") < table.index(f"| {contract_method.NAME} ")


def test_the_case_grid_collects_and_runs_it(pytester):
    method_file = Path(contract_method.__file__)
    pytester.makepyfile(cases_probe=textwrap.dedent(f"""
        import importlib.util, sys
        from bbench.methods.registry import METHODS
        spec = importlib.util.spec_from_file_location("contract_method", {str(method_file)!r})
        module = sys.modules["contract_method"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if module.NAME not in METHODS:  # pytest also imports a .py file named on its command line
            module.register()
        from bbench.cases import dataset, grid
        SMOKE = {{"dataset.options": {{"subsample_per_class": 10}}, "epochs": 2, "batch_size": 16}}
        CASES = [grid(methods=[module.NAME], datasets=[dataset("mfeat", "mfeat", smoke=SMOKE)],
                      undeclared="ignore")]
    """))
    save = pytester.path / "junit.xml"
    result = pytester.runpytest_subprocess("cases_probe.py", "-p", "no:cacheprovider",
                                           "--bbench-out", str(pytester.path / "out"),
                                           f"--junitxml={save}", "-v")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*ContractProbe-mfeat PASSED*"])
    xml = save.read_text()
    # extra_passes gave it the "training FLOPs above the reference method's" expectation
    assert "train_flops &gt; Baseline's train_flops on the same data" in xml or \
           "train_flops > Baseline's train_flops on the same data" in xml
