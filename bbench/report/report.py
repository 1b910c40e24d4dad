"""`bbench report`: the paper's tables and figures from finished run records, never re-running.

    python -m bbench report studies/NAME [more run or study dirs...] --out reports/NAME \
        --format md,latex,csv,html

Reads every record under the given directories (load.py; unusable ones are listed, not
fatal), groups the final results into seed groups, and writes into a fresh `--out`
directory: each table (study_tables.py) in each chosen format, the four figure kinds
(figures.py, PNG and SVG) when their records exist, `report.md` (every table, the figures
named, the statistics stated, the skipped records listed) and with `html` one
self-contained `report.html`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean
from typing import Callable, Literal, Sequence

import bbench
from bbench.methods.registry import METHODS, reference_method
from bbench.report import figures
from bbench.report.export import Figure, Table, html_page, markdown, write_table
from bbench.report.load import Loaded, SeedGroup, group_records, load, seed_of
from bbench.report.stats import METHOD_TEXT
from bbench.report.study_tables import (imbalance_table, paired_table, read_paper_values,
                                        robustness_table, selection_table, table2, table3)
from bbench.results.record import RunResult

PAPER_TABLE = Path(bbench.__file__).resolve().parents[1] / "cases" / "paper_table2.tsv"
"""The published Table 2 in a source checkout (absent from an installed package)."""


@dataclass
class ReportResult:
    out_dir: Path
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # records not used, with why
    not_drawn: list[str] = field(default_factory=list)  # figures left out, with why
    balance_points: list[str] = field(default_factory=list)
    records: int = 0
    seconds: float = 0.0


def check_out_dir(out: Path) -> None:
    """A report never overwrites: an existing non-empty directory is refused (as bench and run do)."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is an existing file; choose a directory that does not exist")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"report directory {out} already holds files; choose another --out")


def build_report(paths: Sequence[str | Path], out: str | Path, formats: Sequence[str],
                 paper: Path | None = PAPER_TABLE,
                 curves: Sequence[str] | Literal["auto", "all"] = "auto",
                 progress: bool = True) -> ReportResult:
    """Read, tabulate, draw and write; `paper` None (or a missing default file) leaves out the
    published values, `curves` names the methods whose validation curves are drawn ("all":
    every trained method; "auto": the reference method and each dataset's best balancing
    method, a figure that stays readable and quick to draw with twenty methods)."""
    started = time.perf_counter()
    out = Path(out)
    check_out_dir(out)
    paper_values = read_paper_values(paper) if paper is not None and (
        paper != PAPER_TABLE or paper.exists()) else None
    loaded = load(paths, progress=progress)
    final = loaded.with_role("final")
    groups, duplicates = group_records(final)
    skipped = [str(s) for s in loaded.skipped + duplicates]
    if not loaded.records:
        raise ValueError("no usable run record under " + ", ".join(map(str, paths))
                         + ("; skipped:\n  " + "\n  ".join(skipped) if skipped else ""))
    used = [r for g in groups for r in g.records]
    result = ReportResult(out, skipped=skipped, records=len(loaded.records))
    result.tables = _tables(groups, loaded, paper_values)
    out.mkdir(parents=True, exist_ok=True)
    (out / "figures").mkdir()
    chosen = _default_curves(groups) if curves == "auto" else None if curves == "all" else curves
    _figures(used, loaded, result, out / "figures", chosen)
    for table in result.tables:
        result.files += write_table(table, out, formats)
    if "md" in formats:
        (out / "report.md").write_text(_markdown_report(result))
        result.files.append(out / "report.md")
    if "html" in formats:
        page = html_page("bbench report", _intro(result), result.tables, result.figures,
                         result.skipped + [f"figure not drawn: {n}" for n in result.not_drawn])
        (out / "report.html").write_text(page)
        result.files.append(out / "report.html")
    result.seconds = time.perf_counter() - started
    return result


def _tables(groups: list[SeedGroup], loaded: Loaded,
            paper_values: dict[tuple[str, str], dict[str, float]] | None) -> list[Table]:
    """The tables whose records exist, in the report's order."""
    if paper_values is not None:  # paper columns only for datasets the paper reports
        reported = {d for (_, d) in paper_values}
        paper_values = paper_values if any(g.dataset in reported for g in groups) else None
    tables = [table2(groups, paper_values), paired_table(groups), table3(groups),
              imbalance_table(groups), robustness_table(groups)]
    selection = selection_table(loaded.selections)
    tables += [selection] if selection is not None else []
    return [t for t in tables if t.rows]


def _figures(records: list[RunResult], loaded: Loaded, result: ReportResult, folder: Path,
             curves: Sequence[str] | None) -> None:
    """Every figure kind whose records exist; a figure that cannot be drawn is named with why."""
    def draw(title: str, caption: str, stem: str, make: Callable[[Path], list[Path]]) -> None:
        try:
            paths = make(folder / stem)
        except ValueError as err:
            result.not_drawn.append(f"{title}: {err}")
            return
        result.files += paths
        result.figures.append(Figure(title, next(p for p in paths if p.suffix == ".png"), caption))

    if any(k.startswith("probe_acc_") for r in records for k in r.metrics):
        with_inputs = records + loaded.with_role("input")
        draw("Figure 2: encoders trained alone, probed inside the multimodal model, and z_m",
             "Per modality: the encoder trained alone, the linear probe of the jointly trained encoder, "
             "and the multimodal model's own z_m accuracy.", "figure2_probe",
             lambda stem: figures.probe_figure(with_inputs, stem))
    for (method, dataset, param), sweep in _sweeps(loaded).items():
        baseline = _reference_run(records, dataset)

        def balance(stem: Path, sweep: list[RunResult] = sweep, param: str = param,
                    baseline: RunResult | None = baseline) -> list[Path]:
            paths, points = figures.balance_figure(sweep, param, baseline, stem)
            result.balance_points.append(points.describe())
            return paths

        draw(f"Figure 3: {method} {param} sweep on {dataset}",
             "Imbalance I against accuracy per sweep value; both balance points marked.",
             f"figure3_{method}_{dataset}_{param}", balance)
    scored = [r for r in records if "acc" in r.metrics and "train_flops" in r.metrics]
    if scored:
        draw("Accuracy against training FLOPs", "One point per method (mean over seeds); the "
             "Pareto front drawn and its members named.", "pareto",
             lambda stem: figures.pareto_figure(scored, stem))
    if any("val_acc" in h for r in records for h in r.history):
        draw("Validation curves", "Per-epoch validation accuracy, fused (solid) and per modality.",
             "curves", lambda stem: figures.curves_figure(records, curves, stem))


def _default_curves(groups: Sequence[SeedGroup]) -> list[str] | None:
    """The reference method and, per dataset, the balancing method with the best mean accuracy."""
    chosen = [reference_method()] if any(g.method == reference_method() for g in groups) else []
    for dataset in dict.fromkeys(g.dataset for g in groups):
        balancing = [g for g in groups if g.dataset == dataset and g.values("acc")
                     and METHODS.get(g.method).family.balancing]
        if balancing:
            chosen.append(max(balancing, key=lambda g: mean(g.values("acc").values())).method)
    return list(dict.fromkeys(chosen)) or None


def _sweeps(loaded: Loaded) -> dict[tuple[str, str, str], list[RunResult]]:
    """Sweep jobs' records by (method, dataset, swept parameter), from the studies' jobs.json."""
    found: dict[tuple[str, str, str], list[RunResult]] = {}
    for r in loaded.with_role("sweep"):
        job = loaded.jobs.get(Path(r.run_dir).resolve(), {})
        param = (job.get("sweep") or {}).get("param")
        if param:
            found.setdefault((r.method, r.dataset, str(param)), []).append(r)
    return found


def _reference_run(records: Sequence[RunResult], dataset: str) -> RunResult | None:
    """The reference method's final run on the dataset with the lowest seed (the mark in Figure 3)."""
    runs = [r for r in records if r.method == reference_method() and r.dataset == dataset]
    return min(runs, key=seed_of, default=None)


def _intro(result: ReportResult) -> list[str]:
    lines = [f"{result.records} run records read; {len(result.skipped)} skipped.", METHOD_TEXT]
    lines += [f"Balance points: {p}" for p in result.balance_points]
    return lines


def _markdown_report(result: ReportResult) -> str:
    parts = ["# bbench report", *_intro(result)]
    parts += [markdown(t) for t in result.tables]
    if result.figures:
        parts.append("### Figures\n\n" + "\n".join(
            f"- {f.title}: `figures/{f.png.name}` (and `.svg`)" for f in result.figures))
    if result.not_drawn:
        parts.append("### Figures not drawn\n\n" + "\n".join(f"- {n}" for n in result.not_drawn))
    if result.skipped:
        parts.append("### Skipped records\n\n" + "\n".join(f"- {s}" for s in result.skipped))
    return "\n\n".join(parts) + "\n"
