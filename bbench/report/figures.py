"""The report's figures, drawn from run records only: PNG for pages, SVG for papers.

- `probe_figure` (the paper's Figure 2): per modality, its encoder trained alone, the same
  encoder probed inside the multimodal model, and the multimodal model's own z_m accuracy;
  do jointly trained encoders fall behind?
- `balance_figure` (the paper's Figure 3): one method's strength swept; imbalance I against
  accuracy, with the relative balance point (best accuracy) and the absolute balance point
  (lowest I) marked and named. Less imbalance is not the goal in itself: the two points
  differ whenever balancing further costs accuracy.
- `pareto_figure`: accuracy against training FLOPs, one point per method, and the Pareto
  front: the methods that no other method beats on both at once.
- `curves_figure`: per-epoch validation accuracy, fused and per modality.

Every figure is a function of the records alone, so a report never re-runs anything, and
the files are byte-for-byte reproducible (fixed SVG ids, no timestamps), so a report
regenerated from the same records does not change under version control. Replicates (the
seeds of one configuration) are averaged, with their standard deviation as error bars.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from statistics import mean, stdev
from typing import Any, Iterable, Sequence

import matplotlib

# Files only: no display, and no GUI backend picked up from the environment.
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator, NullFormatter  # noqa: E402

from bbench.report.table import row_label  # noqa: E402
from bbench.results.record import RunResult  # noqa: E402

# Text stays text in the SVG (searchable, small), and element ids come from a fixed salt
# instead of a random one, so the same records give the same bytes.
_SVG_RC = {"svg.fonttype": "none", "svg.hashsalt": "bbench"}
_DPI = 150
_PROBE_KEY = "probe_acc_"


def _save(fig: Figure, out_stem: Path) -> list[Path]:
    """Write `<stem>.png` and `<stem>.svg` and close the figure (pyplot keeps it otherwise)."""
    out_stem = Path(out_stem)
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    png, svg = (out_stem.parent / f"{out_stem.name}.{ext}" for ext in ("png", "svg"))
    try:
        with matplotlib.rc_context(_SVG_RC):
            fig.savefig(png, format="png", dpi=_DPI, bbox_inches="tight")
            fig.savefig(svg, format="svg", bbox_inches="tight", metadata={"Date": None})
    finally:
        plt.close(fig)
    return [png, svg]


def _spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value): the replicate spread."""
    return mean(values), (stdev(values) if len(values) > 1 else 0.0)


def _errors(spreads: Sequence[tuple[float, float]]) -> list[float] | None:
    """Error bar lengths, or None when no point has replicates that differ (no empty caps)."""
    errors = [s[1] for s in spreads]
    return errors if any(errors) else None


def _by_dataset(records: Iterable[RunResult]) -> dict[str, list[RunResult]]:
    """Records per dataset, in order of first appearance: one panel per dataset."""
    found: dict[str, list[RunResult]] = {}
    for r in records:
        found.setdefault(r.dataset, []).append(r)
    return found


def _by_label(records: Iterable[RunResult]) -> dict[str, list[RunResult]]:
    """Records per table row label (`Unimodal-mor` style): the replicates of one method."""
    found: dict[str, list[RunResult]] = {}
    for r in records:
        found.setdefault(row_label(r), []).append(r)
    return found


def _panels(count: int, rows: int = 1, width: float = 5.0, height: float = 3.8
            ) -> tuple[Figure, np.ndarray]:
    """A figure of rows x count panels, always as a 2-D array (one code path for one panel)."""
    fig, axes = plt.subplots(rows, count, figsize=(width * count, height * rows), squeeze=False)
    return fig, axes


def _number(record: RunResult, key: str) -> float:
    value = record.metrics.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{record.record_path}: metric {key!r} is {value!r}, not a finite number")
    return float(value)


# -- Figure 2: probes -------------------------------------------------------------------------

def _source_record(probe: RunResult, known: dict[Path, RunResult]) -> RunResult | None:
    """The probed run: among the given records, else its record on disk, else unknown."""
    source = probe.metrics.get("source_run")
    if not source:
        return None
    path = Path(source).resolve()
    if path in known:
        return known[path]
    return RunResult.load(path) if (path / "record.json").is_file() else None


def probe_values(records: Sequence[RunResult]) -> dict[str, dict[str, dict[str, list[float]]]]:
    """dataset -> bar series -> modality -> one value per probe record that holds it.

    The probe records (those with `probe_acc_<m>`) carry the probe accuracy and the test
    accuracy of the Unimodal run they were compared with (`unimodal_acc_<m>`, copied from
    that run); the multimodal model's own z_m accuracy is `acc_<m>` of the probed (source)
    run, looked up among `records` or, failing that, on disk.
    """
    probes = [r for r in records if any(k.startswith(_PROBE_KEY) for k in r.metrics)]
    if not probes:
        raise ValueError("probe_figure: none of the records is a probe run (a record with "
                         "probe_acc_<modality> metrics)")
    known = {Path(r.run_dir).resolve(): r for r in records}
    found: dict[str, dict[str, dict[str, list[float]]]] = {}
    for dataset, runs in _by_dataset(probes).items():
        modalities = list(dict.fromkeys(k[len(_PROBE_KEY):] for r in runs for k in r.metrics
                                        if k.startswith(_PROBE_KEY)))
        series: dict[str, dict[str, list[float]]] = {}
        for r in runs:
            source = _source_record(r, known)
            name = r.metrics.get("source_method") or "source"
            for m in modalities:
                for label, value in (
                        ("trained alone", r.metrics.get(f"unimodal_acc_{m}")),
                        (f"probed in {name}", r.metrics.get(f"{_PROBE_KEY}{m}")),
                        (f"{name} z_m", source.metrics.get(f"acc_{m}") if source else None)):
                    values = series.setdefault(label, {}).setdefault(m, [])
                    if value is not None:
                        values.append(float(value))
        found[dataset] = series
    return found


def probe_figure(records: Sequence[RunResult], out_stem: Path) -> list[Path]:
    """Per dataset panel and modality: trained alone vs probed inside the multimodal model vs
    z_m (`probe_values`), replicates averaged; a bar no record holds a value for is left out."""
    groups = probe_values(records)
    fig, axes = _panels(len(groups))
    for ax, (dataset, series) in zip(axes[0], groups.items()):
        modalities = list(dict.fromkeys(m for per_modality in series.values() for m in per_modality))
        x = np.arange(len(modalities))
        width = 0.8 / len(series)
        for i, (name, per_modality) in enumerate(series.items()):
            stats = [_spread(per_modality[m]) if per_modality.get(m) else (math.nan, 0.0)
                     for m in modalities]
            ax.bar(x + (i - (len(series) - 1) / 2) * width, [s[0] for s in stats], width,
                   yerr=_errors(stats), capsize=3, label=name)
        n = max(len(v) for per_modality in series.values() for v in per_modality.values())
        ax.set_xticks(x, modalities)
        ax.set_xlabel("modality")
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1)
        ax.set_title(f"{dataset} (n={n})")
        ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.15), ncols=3)
    return _save(fig, out_stem)


# -- Figure 3: relative balance -----------------------------------------------------------------

@dataclass(frozen=True)
class BalancePoints:
    """The sweep values at the two balance points of one method's sweep on one dataset."""

    method: str
    dataset: str
    param: str
    relative_value: float  # best accuracy
    relative_acc: float
    relative_imbalance: float
    absolute_value: float  # lowest imbalance I
    absolute_acc: float
    absolute_imbalance: float

    def describe(self) -> str:
        """One sentence for the report."""
        return (f"{self.method} on {self.dataset}: relative balance point (best accuracy) at "
                f"{self.param}={self.relative_value:g} (acc {self.relative_acc:.4f}, I "
                f"{self.relative_imbalance:.4f}); absolute balance point (lowest I) at "
                f"{self.param}={self.absolute_value:g} (acc {self.absolute_acc:.4f}, I "
                f"{self.absolute_imbalance:.4f})")


def _sweep_value(record: RunResult, param: str) -> float:
    value = record.spec.get("method_params", {}).get(param)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{record.record_path}: method parameter {param!r} is {value!r}; a "
                         f"balance sweep needs a number for it in every record")
    return float(value)


def balance_points(values: Sequence[float], acc: Sequence[float], imbalance: Sequence[float],
                   method: str, dataset: str, param: str) -> BalancePoints:
    """Relative point: best accuracy; absolute point: lowest I; ties go to the lowest value
    (the weakest setting that reaches it)."""
    relative = min(range(len(values)), key=lambda i: (-acc[i], values[i]))
    absolute = min(range(len(values)), key=lambda i: (imbalance[i], values[i]))
    return BalancePoints(method, dataset, param, values[relative], acc[relative],
                         imbalance[relative], values[absolute], acc[absolute], imbalance[absolute])


def balance_figure(sweep: Sequence[RunResult], param: str, baseline: RunResult | None,
                   out_stem: Path) -> tuple[list[Path], BalancePoints]:
    """I (x) against accuracy (y) per sweep value of `param`, replicates averaged.

    `sweep` is one method on one dataset (a report draws one figure per sweep); `baseline`,
    when given, is marked as the point the sweep is read against.
    """
    if not sweep:
        raise ValueError(f"balance_figure: no records in the sweep of {param!r}")
    configs = {(r.method, r.dataset) for r in sweep}
    if len(configs) != 1:
        raise ValueError(f"balance_figure: a sweep is one method on one dataset; the records mix "
                         f"{sorted(configs)}")
    method, dataset = configs.pop()
    if baseline is not None and baseline.dataset != dataset:
        raise ValueError(f"balance_figure: the reference run {baseline.record_path} is on "
                         f"{baseline.dataset}, the sweep on {dataset}")
    grouped: dict[float, list[RunResult]] = {}
    for r in sweep:
        grouped.setdefault(_sweep_value(r, param), []).append(r)
    values = sorted(grouped)
    acc = [_spread([_number(r, "acc") for r in grouped[v]]) for v in values]
    imb = [_spread([_number(r, "imbalance") for r in grouped[v]]) for v in values]
    points = balance_points(values, [a[0] for a in acc], [i[0] for i in imb], method, dataset, param)

    fig, axes = _panels(1, width=6.0, height=4.5)
    ax: Axes = axes[0, 0]
    ax.errorbar([i[0] for i in imb], [a[0] for a in acc], xerr=_errors(imb), yerr=_errors(acc),
                fmt="o-", color="tab:blue", capsize=3,
                label=f"{method}, {param} swept")
    at: dict[tuple[float, float], list[str]] = {}  # values that land on one point share a label
    for v, a, i in zip(values, acc, imb):
        at.setdefault((i[0], a[0]), []).append(f"{v:g}")
    for xy, names in at.items():
        ax.annotate(f"{param}={', '.join(names)}", xy, textcoords="offset points", xytext=(5, 5),
                    fontsize="x-small")
    if baseline is not None:
        ax.plot([_number(baseline, "imbalance")], [_number(baseline, "acc")], "k*", markersize=12,
                label=row_label(baseline))
    ax.plot([points.relative_imbalance], [points.relative_acc], "o", markersize=14,
            markerfacecolor="none", markeredgecolor="tab:green", markeredgewidth=2,
            label=f"relative balance point: {param}={points.relative_value:g}")
    ax.plot([points.absolute_imbalance], [points.absolute_acc], "s", markersize=14,
            markerfacecolor="none", markeredgecolor="tab:red", markeredgewidth=2,
            label=f"absolute balance point: {param}={points.absolute_value:g}")
    ax.set_xlabel("imbalance I")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{method} on {dataset}")
    ax.legend(fontsize="small")
    return _save(fig, out_stem), points


# -- accuracy vs cost -----------------------------------------------------------------------------

def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the (cost, accuracy) points that no other point dominates (no more cost and
    no less accuracy, and better in one of the two); equal points do not dominate each other."""
    if not points:
        return []
    cost, acc = np.asarray(points, dtype=float).T
    no_worse = (cost[None, :] <= cost[:, None]) & (acc[None, :] >= acc[:, None])
    better = (cost[None, :] < cost[:, None]) | (acc[None, :] > acc[:, None])
    dominated = (no_worse & better).any(axis=1)  # row i: is some j no worse and better?
    return [int(i) for i in np.flatnonzero(~dominated)]


@dataclass(frozen=True)
class CostPoint:
    """One method on one dataset: mean and spread over its records of FLOPs and accuracy."""

    label: str
    n: int
    flops: float
    flops_std: float
    acc: float
    acc_std: float


def cost_points(records: Sequence[RunResult]) -> dict[str, list[CostPoint]]:
    """dataset -> one point per method (row label), replicates averaged. Records without a
    fused accuracy or training FLOPs (evaluation procedures) are no methods to compare."""
    scored = [r for r in records if "acc" in r.metrics and r.metrics.get("train_flops")]
    if not scored:
        raise ValueError("pareto_figure: no record has both a test accuracy and training FLOPs")
    return {dataset: [CostPoint(label, len(reps),
                                *_spread([_number(r, "train_flops") for r in reps]),
                                *_spread([_number(r, "acc") for r in reps]))
                      for label, reps in _by_label(runs).items()]
            for dataset, runs in _by_dataset(scored).items()}


def pareto_figure(records: Sequence[RunResult], out_stem: Path) -> list[Path]:
    """Accuracy against training FLOPs (log x), one point per method (`cost_points`) and one
    panel per dataset; the Pareto front is drawn as the best accuracy reachable at each cost,
    and its members' names are bold."""
    groups = cost_points(records)
    fig, axes = _panels(len(groups), width=6.0, height=4.5)
    for ax, (dataset, points) in zip(axes[0], groups.items()):
        front = pareto_front([(p.flops, p.acc) for p in points])
        ax.errorbar([p.flops for p in points], [p.acc for p in points],
                    xerr=_errors([(p.flops, p.flops_std) for p in points]),
                    yerr=_errors([(p.acc, p.acc_std) for p in points]), fmt="o", color="tab:gray",
                    capsize=3, label="method (mean ± std over seeds)")
        order = sorted(front, key=lambda i: points[i].flops)
        ax.plot([points[i].flops for i in order], [points[i].acc for i in order], "-",
                drawstyle="steps-post", color="tab:red", marker="o", zorder=3, label="Pareto front")
        for i, p in enumerate(points):
            ax.annotate(f"{p.label} (n={p.n})", (p.flops, p.acc), textcoords="offset points",
                        xytext=(4, 4), fontsize="x-small",
                        fontweight="bold" if i in front else "normal")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # labelled minor ticks overlap
        ax.set_xlabel("training FLOPs")
        ax.set_ylabel("accuracy")
        ax.set_title(dataset)
        ax.legend(fontsize="small", loc="lower right")
    return _save(fig, out_stem)


# -- validation curves ------------------------------------------------------------------------------

def validation_curves(replicates: Sequence[RunResult]) -> dict[str, tuple[list[Any], list[float]]]:
    """Series name (`fused`, or a modality) -> (epochs, mean over the replicates that logged
    it): the history's `val_acc` and `val_acc_<m>`. With one modality its own prediction is
    the fused one, so only the fused series is drawn."""
    per_modality = list(dict.fromkeys(k for r in replicates for h in r.history for k in h
                                      if k.startswith("val_acc_")))
    keys = ["val_acc"] + (per_modality if len(per_modality) > 1 else [])
    curves = {}
    for key in keys:
        per_epoch: dict[Any, list[float]] = {}
        for r in replicates:
            for h in r.history:
                if key in h:
                    per_epoch.setdefault(h["epoch"], []).append(float(h[key]))
        epochs = sorted(per_epoch)
        curves["fused" if key == "val_acc" else key[len("val_acc_"):]] = (
            epochs, [mean(per_epoch[e]) for e in epochs])
    return curves


def curves_figure(records: Sequence[RunResult], methods: Sequence[str] | None,
                  out_stem: Path) -> list[Path]:
    """Per-epoch validation accuracy (`val_acc`, and `val_acc_<m>` per modality) for the
    chosen methods (a method name or a row label such as `Unimodal-mor`; None: every method
    with a training history), one panel per method and dataset, replicates averaged."""
    trained = [r for r in records if any("val_acc" in h for h in r.history)]
    if methods is not None:
        chosen = set(methods)
        unknown = chosen - {r.method for r in trained} - {row_label(r) for r in trained}
        if unknown:
            raise ValueError(f"curves_figure: no training history for {sorted(unknown)} among "
                             f"the records (methods with one: "
                             f"{sorted({row_label(r) for r in trained}) or 'none'})")
        trained = [r for r in trained if r.method in chosen or row_label(r) in chosen]
    if not trained:
        raise ValueError("curves_figure: no record has a per-epoch validation history")
    labels = list(_by_label(trained))
    curves = {dataset: {label: (len(reps), validation_curves(reps))
                        for label, reps in _by_label(runs).items()}
              for dataset, runs in _by_dataset(trained).items()}
    fig, axes = _panels(len(labels), rows=len(curves))
    for row, (dataset, by_label) in zip(axes, curves.items()):
        for ax, label in zip(row, labels):
            n, series = by_label.get(label, (0, {}))
            for name, (epochs, values) in series.items():
                ax.plot(epochs, values, "-" if name == "fused" else "--", marker=".", label=name)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel("validation accuracy")
            ax.set_title(f"{label} on {dataset} (n={n})")
            if series:
                ax.legend(fontsize="small")
    return _save(fig, out_stem)
