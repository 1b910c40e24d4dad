"""Reading records for a report (bbench/report/load.py): seed groups, study roles, bad records."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bbench.report.load import group_key, group_records, load
from bbench.results.record import RunResult
from tests.unit.test_report_tables import real_runs, synthetic


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("real")
    real_runs(root, seeds=(0, 1))
    return root


@pytest.fixture
def template(real: Path) -> RunResult:
    return RunResult.load(next(real.rglob("record.json")))


def test_group_key_ignores_the_seed_only(template: RunResult, tmp_path: Path):
    a = synthetic(tmp_path, template, "OGM", 0, 0.5, {"alpha": 0.3})
    b = synthetic(tmp_path, template, "OGM", 7, 0.6, {"alpha": 0.3})
    c = synthetic(tmp_path, template, "OGM", 0, 0.5, {"alpha": 0.4})
    assert group_key(a) == group_key(b) != group_key(c)
    assert a.spec["train"]["seed"] == 0  # the key does not edit the record
    groups, duplicates = group_records([b, a, c, RunResult.load(a.record_path)])
    assert [g.seeds for g in groups] == [(0, 7), (0,)]
    assert len(duplicates) == 1 and "same configuration and seed" in duplicates[0].reason


def test_real_replicates_group_by_configuration(real: Path):
    groups, _ = group_records(load([real], progress=False).records)
    assert sorted(len(g.records) for g in groups) == [2] * 5
    assert all(g.seeds == (0, 1) for g in groups)


def test_bad_records_are_skipped_with_one_line_naming_the_file(real: Path, tmp_path: Path):
    good = next(real.rglob("record.json"))
    cases = {
        "truncated": good.read_text()[:200],
        "not_json": "this is not json",
        "foreign": json.dumps({"schema": "someone.else/3", "spec": {}}),
        "no_fields": json.dumps({"schema": "bbench.run/1"}),
        "unknown_method": json.dumps({"schema": "bbench.run/1", "spec": {
            "method": "NoSuchMethod", "dataset": {"name": "mfeat"}, "train": {"seed": 0}},
            "metrics": {}}),
        "no_seed": json.dumps({"schema": "bbench.run/1", "spec": {"method": "OGM", "dataset":
                                                                  {"name": "mfeat"}, "train": {}},
                               "metrics": {}}),
    }
    for name, text in cases.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "record.json").write_text(text)
    loaded = load([real, tmp_path], progress=False)
    assert len(loaded.records) == 10
    reasons = {s.path.parent.name: s.reason for s in loaded.skipped}
    assert set(reasons) == set(cases)
    assert "not valid JSON" in reasons["truncated"] and "not valid JSON" in reasons["not_json"]
    assert "'someone.else/3' is not 'bbench.run/1'" in reasons["foreign"]
    assert "lacks" in reasons["no_fields"] and "train.seed" in reasons["no_seed"]
    assert "method 'NoSuchMethod' is not registered" in reasons["unknown_method"]
    for s in loaded.skipped:
        assert str(s).startswith(str(s.path)) and "\n" not in str(s)


def test_a_missing_path_is_one_clear_error(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="nothing to report at .*nowhere"):
        load([tmp_path / "nowhere"])


def write_study(root: Path, template: RunResult) -> None:
    """A study directory as the study runner writes it: jobs/<id>, jobs.json, selection.json."""
    jobs = []
    for seed in (0, 1):
        for role, params, acc in (("final", {"alpha": 0.3}, 0.5), ("tune", {"alpha": 2.0}, 0.9),
                                  ("sweep", {"alpha": 0.0}, 0.4), ("sweep", {"alpha": 1.0}, 0.45)):
            tag = f"{role}-{params['alpha']}-{seed}"
            record = synthetic(root / "scratch", template, "OGM", seed, acc, params)
            target = root / "jobs" / tag
            target.parent.mkdir(parents=True, exist_ok=True)
            record.run_dir.rename(target)
            jobs.append({"id": tag, "dir": f"jobs/{tag}", "method": "OGM", "dataset": "mfeat",
                         "role": role, "trial": 0 if role == "tune" else None, "replicate": seed,
                         "seed": seed, "params": params,
                         "sweep": {"param": "alpha", "value": params["alpha"]} if role == "sweep"
                         else None})
    jobs.append({"id": "unfinished", "dir": "jobs/unfinished", "method": "OGM", "dataset": "mfeat",
                 "role": "final", "trial": None, "replicate": 2, "seed": 2, "params": {},
                 "sweep": None})
    shutil.rmtree(root / "scratch")
    (root / "jobs.json").write_text(json.dumps(jobs))
    (root / "selection.json").write_text(json.dumps({"metric": "val_acc", "selections": [
        {"method": "OGM", "label": "OGM", "dataset": "mfeat",
         "space": {"alpha": "log-uniform(0.05, 2)"},
         "trials": [{"trial": 0, "params": {"alpha": 2.0}, "val_acc": 0.55},
                    {"trial": 1, "params": {"alpha": 0.3}, "val_acc": 0.61}],
         "selected": {"trial": 1, "params": {"alpha": 0.3}, "val_acc": 0.61}}], "untuned": []}))


def test_study_roles_and_unfinished_jobs(template: RunResult, tmp_path: Path):
    study = tmp_path / "study"
    write_study(study, template)
    loaded = load([study], progress=False)
    roles = sorted(loaded.role(r) for r in loaded.records)
    assert roles == ["final"] * 2 + ["sweep"] * 4 + ["tune"] * 2
    assert {r.spec["method_params"]["alpha"] for r in loaded.with_role("final")} == {0.3}
    assert [str(s.path.parent.name) for s in loaded.skipped] == ["unfinished"]
    assert "has not finished" in loaded.skipped[0].reason
    assert loaded.selections[0]["selection"]["selections"][0]["selected"]["params"] == {"alpha": 0.3}


def test_a_damaged_job_list_is_skipped_and_its_records_count_as_final(template: RunResult,
                                                                      tmp_path: Path):
    study = tmp_path / "study"
    write_study(study, template)
    (study / "jobs.json").write_text("[{")
    loaded = load([study], progress=False)
    assert len(loaded.with_role("final")) == 8
    assert loaded.skipped[0].path.name == "jobs.json"


def test_progress_bar_when_reading_many_records(real: Path, monkeypatch, capsys):
    import bbench.report.load as load_module

    monkeypatch.setattr(load_module, "PROGRESS_FROM", 5)
    load([real], progress=True)
    assert "reading records" in capsys.readouterr().err
    load([real], progress=False)
    assert "reading records" not in capsys.readouterr().err
