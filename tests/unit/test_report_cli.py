"""`bbench report` and `bbench bench --seeds` end to end, and the report's time on many records."""
from __future__ import annotations

import contextlib
import io
import json
import re
import time
from pathlib import Path

import pytest

from bbench.cli import main
from bbench.methods.registry import methods_in_table_order
from bbench.report.load import group_records
from bbench.report.report import _default_curves, build_report
from bbench.report.table import interval_text
from bbench.results.record import RunResult
from tests.unit.test_report_load import write_study
from tests.unit.test_report_tables import synthetic

FAST = ["--epochs", "2", "--set", "dataset.options.subsample_per_class=20", "--quiet"]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> tuple[Path, str]:
    """`bench --seeds 2` with one balancing method (reference rows and LinearProbe always run)."""
    out = tmp_path_factory.mktemp("bench") / "b"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["bench", "--dataset", "mfeat", "--seeds", "2", "--methods", "OGM", "--out",
                     str(out), *FAST, "--set", "LinearProbe.probe_epochs=1",
                     "--set", "OGM.start=0"]) == 0
    return out, printed.getvalue()


def records_of(bench_dir: Path) -> list[RunResult]:
    return [RunResult.load(p) for p in json.loads((bench_dir / "bench.json").read_text())["runs"]]


def test_bench_with_seeds_runs_every_row_per_seed_and_prints_intervals(bench):
    out, printed = bench
    index = json.loads((out / "bench.json").read_text())
    assert index["seeds"] == [0, 1]
    records = records_of(out)
    labels = ["Unimodal-fac", "Unimodal-mor", "Baseline", "OGM", "LinearProbe"]
    assert [(r.spec["train"]["seed"]) for r in records] == [0] * 5 + [1] * 5
    # each seed's probe reads the Baseline of its own seed
    for probe in (r for r in records if "probe_acc_fac" in r.metrics):
        source = RunResult.load(probe.metrics["source_run"])
        assert source.spec["train"]["seed"] == probe.spec["train"]["seed"]
    assert "seeds 0, 1" in printed and "95 % bootstrap interval" in printed
    baseline = [r.metrics["acc"] for r in records if r.method == "Baseline"]
    line = next(x for x in printed.splitlines() if x.startswith("| Baseline "))
    assert interval_text(baseline) in line and "(2)" in line
    assert all(f"| {label}" in printed for label in labels[:4])
    assert "LinearProbe acc % (Baseline)" in printed


def test_report_writes_every_table_format_figure_and_page(bench, tmp_path: Path, capsys):
    bench_dir, _ = bench
    study = tmp_path / "study"
    write_study(study, records_of(bench_dir)[3])
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "record.json").write_text('{"schema": "bbench.run/1", "spec": ')
    out = tmp_path / "report"
    assert main(["report", str(bench_dir), str(study), str(tmp_path / "broken"),
                 "--out", str(out), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert f"{tmp_path / 'broken' / 'record.json'}: the run record is not valid JSON" in captured.err
    assert "has not finished" in captured.err  # the study's unfinished job
    assert "relative balance point (best accuracy) at alpha=" in captured.out
    assert str(out) in captured.out
    for table in ("table2", "paired", "table3", "imbalance", "robustness", "selection"):
        for ext in ("md", "tex", "csv"):
            assert (out / f"{table}.{ext}").stat().st_size > 0, (table, ext)
    figures = {p.name for p in (out / "figures").iterdir()}
    for stem in ("figure2_probe", "figure3_OGM_mfeat_alpha", "pareto", "curves"):
        assert {f"{stem}.png", f"{stem}.svg"} <= figures, stem
        assert (out / "figures" / f"{stem}.png").read_bytes().startswith(PNG)
    page = (out / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 4
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing to fetch
    assert "<b>" in page and "Skipped records" in page
    report = (out / "report.md").read_text()
    assert "Table 2" in report and "percentile bootstrap" in report and "alpha=2.0" not in report
    assert "| OGM" in (out / "selection.md").read_text()  # tuning selection listed
    assert (out / "selection.csv").read_text().splitlines()[1] == \
        'OGM,mfeat,alpha=0.3,61.00,1,2,"alpha: log-uniform(0.05, 2)"'
    assert "alpha=2.0" not in (out / "table2.md").read_text()  # tuning trials are not results


def test_report_refuses_an_existing_output_and_bad_arguments(bench, tmp_path: Path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.md").write_text("x")
    assert main(["report", str(bench[0]), "--out", str(tmp_path / "out")]) == 2
    assert "already holds files; choose another --out" in capsys.readouterr().err
    assert main(["report", str(bench[0]), "--out", str(tmp_path / "new"), "--format", "pdf"]) == 2
    assert "unknown report format pdf" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "none"), "--out", str(tmp_path / "new")]) == 2
    assert "nothing to report at" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_default_curves_are_the_reference_and_each_datasets_best_balancing_method(bench):
    groups, _ = group_records(records_of(bench[0]))
    assert _default_curves(groups) == ["Baseline", "OGM"]


def test_each_format_alone(bench, tmp_path: Path):
    for fmt, ext in (("md", "md"), ("latex", "tex"), ("csv", "csv")):
        out = tmp_path / fmt
        build_report([bench[0]], out, [fmt], progress=False)
        assert {p.suffix for p in out.iterdir() if p.is_file()} == {f".{ext}"}


@pytest.mark.slow
def test_report_over_a_study_sized_record_set_is_fast(bench, tmp_path: Path):
    """2 datasets × every registered method × 5 seeds (the issue's study has 3), all figures."""
    template = records_of(bench[0])[2]
    methods = [m for m in methods_in_table_order() if m not in ("LinearProbe", "Unimodal")]
    count = 0
    for d, dataset in enumerate(("mfeat", "mfeat-fac-fou-mor")):
        for i, method in enumerate(methods):
            for seed in range(5):
                synthetic(tmp_path / "records", template, method, seed, 0.5 + 0.01 * i + 0.02 * seed,
                          dataset=dataset, train_flops=1e7 * (1 + i))
                count += 1
    started = time.perf_counter()
    result = build_report([tmp_path / "records"], tmp_path / "out", ["md", "latex", "csv", "html"],
                          progress=False)
    seconds = time.perf_counter() - started
    assert result.records == count and not result.skipped
    assert seconds < 30, f"report of {count} records took {seconds:.1f}s"
