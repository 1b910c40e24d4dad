"""Report tables (bbench/report/study_tables.py, export.py) checked against the records.

Synthetic records (a real record's spec and history with chosen metrics) fix exactly which
mean, interval, emphasis and significance mark each cell must show; tiny real runs check
that tables of actual records agree with those records. `real_runs` and `synthetic` are
shared with the other report test files.
"""
from __future__ import annotations

import copy
import csv
import io
from pathlib import Path
from typing import Any

import pytest

from bbench import run
from bbench.report.export import csv_text, latex, markdown
from bbench.report.load import group_records, load
from bbench.report.stats import summarize
from bbench.report.study_tables import (imbalance_table, paired_table, read_paper_values,
                                        robustness_table, table2, table3)
from bbench.results.record import RunResult

TINY: dict[str, Any] = {"progress": False, "epochs": 2,
                        "dataset.options": {"subsample_per_class": 20}}
PLAN = [("Baseline", {}), ("Unimodal", {"modality": "fac"}), ("Unimodal", {"modality": "mor"}),
        ("OGM", {"start": 0}), ("OPM", {})]


def real_runs(root: Path, seeds: tuple[int, ...] = (0, 1, 2)) -> list[RunResult]:
    """Tiny real runs (mfeat, 20 samples per class, 2 epochs) of PLAN for each seed."""
    return [run(method, "mfeat", output_root=str(root), seed=seed, **TINY, **params)
            for seed in seeds for method, params in PLAN]


def synthetic(root: Path, template: RunResult, method: str, seed: int, acc: float,
              params: dict[str, Any] | None = None, dataset: str | None = None,
              **metrics: Any) -> RunResult:
    """A record like `template` with the given method, seed and metrics, saved under root."""
    spec = copy.deepcopy(template.spec)
    spec["method"], spec["method_params"] = method, dict(params or {})
    spec["train"]["seed"] = seed
    if dataset is not None:
        spec["dataset"]["name"] = dataset
    tag = "-".join(f"{k}{v}" for k, v in sorted((params or {}).items()))
    run_dir = root / (dataset or template.dataset) / f"{method}{tag}-s{seed}"
    run_dir.mkdir(parents=True)
    spec["run_dir"] = str(run_dir)
    record = RunResult(run_dir, spec, {**template.metrics, "acc": acc, "f1": acc - 0.05, **metrics},
                       template.history, template.environment, {})
    record.save()
    return record


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("real")
    real_runs(root)
    return root


ACC = {  # method label -> per-seed accuracy
    "Baseline": [0.50, 0.60, 0.70],
    "OPM": [0.60, 0.705, 0.795],      # +10, +10.5, +9.5 points: best, significant (p = 0.0008)
    "OGM": [0.52, 0.58, 0.75],        # second; +2, -2, +5: not significant
    "Unimodal-fac": [0.90, 0.90, 0.90],  # highest, but a reference row: never emphasized
    "Unimodal-mor": [0.30, 0.31, 0.32],
}


@pytest.fixture(scope="module")
def controlled(real: Path, tmp_path_factory) -> tuple[Path, list]:
    template = RunResult.load(next(real.rglob("record.json")))
    root = tmp_path_factory.mktemp("controlled")
    for label, accs in ACC.items():
        method, _, modality = label.partition("-")
        for seed, acc in enumerate(accs):
            synthetic(root, template, method, seed, acc, {"modality": modality} if modality else {},
                      imbalance=0.1 * seed, shapley={"fac": acc / 2, "mor": acc / 4},
                      train_flops=1e6 * (2 if method == "OPM" else 1), train_seconds=1.0 + seed,
                      peak_memory_bytes=2 ** 20 * (100 + seed),
                      subset_acc={"∅": 0.1, "fac": acc - 0.2, "mor": acc - 0.3, "fac+mor": acc}
                      if not modality else {"∅": 0.1, modality: acc})
    groups, _ = group_records(load([root], progress=False).records)
    return root, groups


def row(table, label: str):
    return next(r for r in table.rows if r[0].text == label)


def test_table2_cells_are_mean_std_and_seed_count_of_the_records(controlled):
    t = table2(controlled[1])
    assert t.headers == ["Method", "Family", "mfeat ACC %", "mfeat F1 %"]
    assert [r[0].text for r in t.rows] == ["Unimodal-fac", "Unimodal-mor", "Baseline", "OPM",
                                           "Feed-forward avg", "OGM", "Optimization avg"]
    for label, accs in ACC.items():
        acc, f1 = row(t, label)[2:4]
        s = summarize([100 * a for a in accs])
        assert acc.text == f"{s.mean:.2f} ± {s.std:.2f} (3)"
        assert acc.stats == s
        assert f1.stats.mean == pytest.approx(s.mean - 5)


def test_table2_bold_best_underlined_second_among_compared_methods(controlled):
    t = table2(controlled[1])
    emphasis = {r[0].text: (r[2].bold, r[2].underline) for r in t.rows}
    assert emphasis["OPM"] == (True, False)
    assert emphasis["OGM"] == (False, True)
    assert emphasis["Baseline"] == (False, False)
    assert emphasis["Unimodal-fac"] == (False, False)  # higher, but a reference row
    md = markdown(t)
    assert "**70.00 ± 9.76 (3)†**" in md and "<u>61.67 ± 11.93 (3)</u>" in md
    tex = latex(t)
    assert r"\textbf{70.00 $\pm$ 9.76 (3)$^\dagger$}" in tex
    assert r"\underline{61.67 $\pm$ 11.93 (3)}" in tex
    assert tex.count(r"\toprule") == tex.count(r"\midrule") == tex.count(r"\bottomrule") == 1


def test_table2_marks_only_significant_positive_wins_over_the_reference(controlled):
    t = table2(controlled[1])
    marks = {r[0].text: r[2].mark for r in t.rows}
    assert marks["OPM"] == "†" and row(t, "OPM")[2].p_value < 0.05
    assert marks["OGM"] == "" and row(t, "OGM")[2].p_value > 0.05
    assert marks["Baseline"] == marks["Unimodal-fac"] == ""


def test_family_averages_are_means_of_member_means(controlled):
    t = table2(controlled[1])
    assert row(t, "Feed-forward avg")[2].text == "70.00"
    assert row(t, "Optimization avg")[2].stats.mean == pytest.approx(100 * sum(ACC["OGM"]) / 3)


def test_paired_table_against_reference_and_best_unimodal_row(controlled):
    t = paired_table(controlled[1])
    opm = next(r for r in t.rows if r[0].text == "OPM" and r[2].text == "ACC")
    assert opm[3].text == "+10.00 [+9.50, +10.50] (3)" and opm[3].mark == "†"
    assert opm[4].text == "0.000832" and opm[5].text == "1.00"
    assert opm[6].stats.mean == pytest.approx(-20.0) and opm[9].text == "Unimodal-fac"
    ogm = next(r for r in t.rows if r[0].text == "OGM" and r[2].text == "ACC")
    assert ogm[5].text == "0.67" and ogm[3].mark == ""
    assert {r[0].text for r in t.rows} == {"OPM", "OGM"}  # no reference row compared with itself


def test_csv_holds_plain_numbers_of_every_statistic(controlled):
    t = table2(controlled[1])
    lines = list(csv.DictReader(io.StringIO(csv_text(t))))
    assert list(lines[0]) == ["Method", "Family", "column", "mean", "std", "n", "ci_low", "ci_high",
                              "p_value"]
    opm = next(x for x in lines if x["Method"] == "OPM" and x["column"] == "mfeat ACC %")
    s = summarize([100 * a for a in ACC["OPM"]])
    assert [float(opm[k]) for k in ("mean", "std", "ci_low", "ci_high")] == \
        pytest.approx([s.mean, s.std, s.ci_low, s.ci_high])
    assert opm["n"] == "3" and float(opm["p_value"]) == pytest.approx(0.000832, rel=1e-3)
    assert not any(ch in csv_text(t) for ch in "*†±<")


def test_paper_values_beside_measured_ones(controlled, tmp_path: Path):
    tsv = tmp_path / "paper.tsv"
    tsv.write_text("# comment\nmethod\tdataset\tacc\tf1\nBaseline\tmfeat\t65.50\t65.07\n"
                   "Unimodal-2\tmfeat\t58.10\t\nForward Avg\tmfeat\t66.00\t65.00\n")
    t = table2(controlled[1], read_paper_values(tsv))
    assert t.headers[2:] == ["mfeat ACC %", "mfeat ACC % (paper)", "mfeat F1 %", "mfeat F1 % (paper)"]
    assert [c.text for c in row(t, "Baseline")[3::2]] == ["65.50", "65.07"]
    assert row(t, "Unimodal-mor")[3].text == "58.10"  # the dataset's 2nd modality
    assert row(t, "Unimodal-mor")[5].text == "" and row(t, "OGM")[3].text == ""
    assert row(t, "Feed-forward avg")[3].text == "66.00"


def test_bad_paper_table_is_one_clear_error(tmp_path: Path):
    bad = tmp_path / "paper.tsv"
    bad.write_text("method\tdataset\tacc\nBaseline\tmfeat\tabc\n")
    with pytest.raises(ValueError, match="paper.tsv: not a paper table"):
        read_paper_values(bad)


def test_table3_imbalance_and_robustness_from_the_records(controlled):
    groups = controlled[1]
    t3 = table3(groups)
    assert row(t3, "OPM")[2].stats.mean == 2e6 and row(t3, "OGM")[2].stats.mean == 1e6
    assert row(t3, "OGM")[3].text == "2.00 ± 1.00 (3)"  # train seconds 1, 2, 3
    assert row(t3, "OGM")[4].text == "101.0 ± 1.0 (3)"  # peak MiB 100, 101, 102
    imb = imbalance_table(groups)
    assert imb.headers[2:] == ["mfeat φ[fac]", "mfeat φ[mor]", "mfeat I"]
    assert row(imb, "OPM")[2].stats.mean == pytest.approx(0.35)
    assert row(imb, "OPM")[4].text == "0.1000 ± 0.1000 (3)"
    rob = robustness_table(groups)
    assert rob.headers == ["Method", "Dataset", "eval mask", "all present acc %",
                           "without fac acc %", "without mor acc %"]
    assert [r[0].text for r in rob.rows] == ["Unimodal-fac", "Unimodal-mor", "Baseline", "OPM", "OGM"]
    opm = row(rob, "OPM")
    assert opm[3].stats.mean == pytest.approx(70) and opm[4].stats.mean == pytest.approx(40)
    assert opm[5].stats.mean == pytest.approx(50) and row(rob, "Unimodal-fac")[4].text == ""


def test_tables_of_real_runs_agree_with_their_records(real: Path):
    records = load([real], progress=False).records
    groups, duplicates = group_records(records)
    assert len(records) == 15 and len(groups) == 5 and not duplicates
    t = table2(groups)
    for g in groups:
        label = g.first.method + (f"-{g.first.spec['method_params']['modality']}"
                                  if "modality" in g.first.spec["method_params"] else "")
        accs = [100 * r.metrics["acc"] for r in g.records]
        s = summarize(accs)
        assert row(t, label)[2].text == f"{s.mean:.2f} ± {s.std:.2f} (3)"
        assert g.seeds == (0, 1, 2)
    flops = row(table3(groups), "OGM")[2].stats
    assert flops.mean == next(r.metrics["train_flops"] for r in records if r.method == "OGM")


def test_configurations_of_one_method_are_told_apart_by_their_parameters(real: Path, tmp_path: Path):
    template = RunResult.load(next(real.rglob("record.json")))
    for seed in (0, 1):
        synthetic(tmp_path, template, "OGM", seed, 0.5, {"alpha": 0.1, "start": 0})
        synthetic(tmp_path, template, "OGM", seed, 0.6, {"alpha": 0.9, "start": 0})
    groups, _ = group_records(load([tmp_path], progress=False).records)
    labels = [r[0].text for r in table2(groups).rows]
    assert labels == ["OGM (alpha=0.1)", "OGM (alpha=0.9)", "Optimization avg"]


def test_seeded_bench_table_shows_intervals_and_marks_significant_wins(controlled):
    from bbench.report.bench import BenchResult
    from bbench.report.table import interval_text, seeded_comparison_table

    runs = [r for g in controlled[1] for r in g.records]
    printed = seeded_comparison_table(BenchResult("mfeat", ("fac", "mor"), runs=runs))
    lines = {line.split("|")[1].strip(): line for line in printed.splitlines() if line.startswith("| ")}
    assert f"| {interval_text(ACC['OPM'])}† " in lines["OPM"]
    assert f"| {interval_text(ACC['OGM'])} " in lines["OGM"] and "†" not in lines["OGM"]
    assert "| 70.00 " in lines["Feed-forward avg"]
    assert "†" not in lines["Unimodal-fac"]  # +20 to +40 over Baseline, but a reference row
