"""The report's figures: valid PNG and SVG files with the promised axes, drawn from the right
numbers (probe bars, balance points, Pareto front, validation curves), byte-reproducible."""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from statistics import mean, stdev
from typing import Any, Callable

import matplotlib.image
import matplotlib.pyplot as plt
import pytest
from hypothesis import given, settings, strategies as st

import bbench
from bbench.report.figures import (
    balance_figure, balance_points, cost_points, curves_figure, pareto_figure, pareto_front,
    probe_figure, probe_values, validation_curves)
from bbench.results.record import RunResult

TINY = {"dataset.options": {"subsample_per_class": 20}, "epochs": 2, "progress": False}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SVG_NS = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> dict[str, Any]:
    """A probe run (which trains its Baseline source and both Unimodal runs) and OGM on two
    seeds, all tiny mfeat runs."""
    root = tmp_path_factory.mktemp("figures")
    go = lambda method, **kw: bbench.run(method, "mfeat", output_root=str(root), **TINY, **kw)  # noqa: E731
    probe = go("LinearProbe", probe_epochs=2)
    others = [RunResult.load(p) for p in sorted(root.rglob("record.json"))
              if p.parent != probe.run_dir]
    ogm = [go("OGM", start=0, alpha=0.5, seed=seed) for seed in (0, 1)]
    return {"probe": probe, "inputs": others, "ogm": ogm, "all": [probe, *others, *ogm]}


def synthetic(method: str, *, seed: int = 0, dataset: str = "toy", params: dict | None = None,
              **metrics: Any) -> RunResult:
    spec = {"method": method, "method_params": params or {}, "dataset": {"name": dataset},
            "train": {"seed": seed}}
    return RunResult(Path(f"/nonexistent/{method}-{seed}-{sorted((params or {}).items())}"), spec,
                     metrics)


def svg_texts(path: Path) -> list[tuple[str, str]]:
    """(style, text) of every text element: SVG text stays text (svg.fonttype none)."""
    root = ET.parse(path).getroot()
    return [(t.get("style", ""), "".join(t.itertext())) for t in root.iter(f"{SVG_NS}text")]


def assert_valid_images(paths: list[Path], stem: Path) -> list[str]:
    """Both files exist as named, the PNG decodes, the SVG parses; returns the SVG's texts."""
    assert paths == [stem.parent / f"{stem.name}.png", stem.parent / f"{stem.name}.svg"]
    png, svg = paths
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    pixels = matplotlib.image.imread(png)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert pixels.std() > 0  # something is drawn
    assert ET.parse(svg).getroot().tag == f"{SVG_NS}svg"
    return [text for _, text in svg_texts(svg)]


def sweep_records(points: dict[float, list[tuple[float, float]]], method: str = "OGM",
                  dataset: str = "toy") -> list[RunResult]:
    """Sweep records: alpha value -> (acc, I) of each replicate."""
    return [synthetic(method, seed=seed, dataset=dataset, params={"alpha": value}, acc=acc,
                      imbalance=imb, train_flops=1e9)
            for value, reps in points.items() for seed, (acc, imb) in enumerate(reps)]


FIGURES: dict[str, tuple[Callable[[dict, Path], list[Path]], tuple[str, ...]]] = {
    "probe": (lambda real, stem: probe_figure(real["all"], stem), ("accuracy",)),
    "balance": (lambda real, stem: balance_figure(
        sweep_records({0.0: [(0.8, 0.4)], 0.5: [(0.85, 0.2)], 1.0: [(0.7, 0.05)]}), "alpha",
        synthetic("Baseline", dataset="toy", acc=0.8, imbalance=0.4), stem)[0],
        ("imbalance I", "accuracy")),
    "pareto": (lambda real, stem: pareto_figure(real["all"], stem), ("training FLOPs", "accuracy")),
    "curves": (lambda real, stem: curves_figure(real["all"], ["OGM", "Baseline"], stem),
               ("epoch", "validation accuracy")),
}


@pytest.mark.parametrize("kind", FIGURES)
def test_every_figure_is_a_valid_png_and_svg_with_its_axis_labels(real, tmp_path, kind):
    draw, labels = FIGURES[kind]
    stem = tmp_path / "out" / f"{kind}.v1"  # a dot in the stem is kept, not taken as a suffix
    texts = assert_valid_images(draw(real, stem), stem)
    for label in labels:
        assert label in texts, (label, texts)
    assert plt.get_fignums() == []  # the figure was closed


@pytest.mark.parametrize("kind", FIGURES)
def test_the_same_records_give_the_same_bytes(real, tmp_path, kind):
    draw, _ = FIGURES[kind]
    first = draw(real, tmp_path / "a" / kind)
    second = draw(real, tmp_path / "b" / kind)
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]


# -- Figure 2 ----------------------------------------------------------------------------------

def test_probe_bars_are_the_unimodal_probe_and_source_z_m_accuracies(real):
    probe = real["probe"]
    source = next(r for r in real["inputs"] if str(r.run_dir) == probe.metrics["source_run"])
    unimodal = {r.spec["method_params"]["modality"]: r.metrics["acc"] for r in real["inputs"]
                if r.method == "Unimodal"}
    expected = {"trained alone": {m: [unimodal[m]] for m in ("fac", "mor")},
                "probed in Baseline": {m: [probe.metrics[f"probe_acc_{m}"]] for m in ("fac", "mor")},
                "Baseline z_m": {m: [source.metrics[f"acc_{m}"]] for m in ("fac", "mor")}}
    assert probe_values(real["all"]) == {"mfeat": expected}
    # the probed run's record is found on disk when it is not among the records given
    assert probe_values([probe]) == {"mfeat": expected}


def test_probe_figure_without_a_probe_record_is_refused(real, tmp_path):
    with pytest.raises(ValueError, match="probe_acc_"):
        probe_figure(real["ogm"], tmp_path / "probe")


# -- Figure 3 ----------------------------------------------------------------------------------

grid = st.sampled_from([0.1, 0.2, 0.3])  # few distinct levels, so ties are common


@given(st.dictionaries(st.integers(0, 20).map(lambda v: v / 10), st.tuples(grid, grid),
                       min_size=1, max_size=8))
@settings(max_examples=60, deadline=None)
def test_balance_points_best_accuracy_and_lowest_imbalance_ties_to_the_lowest_value(sweep):
    values = list(sweep)  # any order: the lowest value wins a tie, not the first listed
    acc = [sweep[v][0] for v in values]
    imb = [sweep[v][1] for v in values]
    points = balance_points(values, acc, imb, "OGM", "toy", "alpha")
    assert points.relative_value == min(v for v in values if sweep[v][0] == max(acc))
    assert points.absolute_value == min(v for v in values if sweep[v][1] == min(imb))
    assert (points.relative_acc, points.relative_imbalance) == sweep[points.relative_value]
    assert (points.absolute_acc, points.absolute_imbalance) == sweep[points.absolute_value]


def test_balance_figure_averages_replicates_and_names_both_points(tmp_path):
    # alpha=0 has the best single replicate (0.95) but not the best mean; alpha=2 has the
    # lowest single I (0.01) but not the lowest mean
    sweep = sweep_records({0.0: [(0.95, 0.40), (0.70, 0.38)], 0.5: [(0.92, 0.20), (0.86, 0.22)],
                           1.0: [(0.88, 0.05), (0.88, 0.07)], 2.0: [(0.70, 0.01), (0.70, 0.15)]})
    baseline = synthetic("Baseline", acc=0.81, imbalance=0.39)
    paths, points = balance_figure(sweep, "alpha", baseline, tmp_path / "fig3")
    assert (points.param, points.relative_value, points.absolute_value) == ("alpha", 0.5, 1.0)
    assert (points.relative_acc, points.relative_imbalance) == pytest.approx((0.89, 0.21))
    assert (points.absolute_acc, points.absolute_imbalance) == pytest.approx((0.88, 0.06))
    texts = assert_valid_images(paths, tmp_path / "fig3")
    assert "relative balance point: alpha=0.5" in texts
    assert "absolute balance point: alpha=1" in texts
    assert "Baseline" in texts
    assert "relative balance point (best accuracy) at alpha=0.5" in points.describe()


def test_sweep_values_on_one_point_share_a_label(tmp_path):
    sweep = sweep_records({0.0: [(0.8, 0.4)], 0.5: [(0.8, 0.4)], 1.0: [(0.7, 0.1)]})
    paths, points = balance_figure(sweep, "alpha", None, tmp_path / "fig3")
    assert points.relative_value == 0.0  # tie on accuracy: the lowest value
    assert "alpha=0, 0.5" in assert_valid_images(paths, tmp_path / "fig3")


@pytest.mark.parametrize("records,baseline,message", [
    (sweep_records({0.0: [(0.8, 0.4)]}) + sweep_records({1.0: [(0.8, 0.4)]}, method="AGM"), None,
     "one method on one dataset"),
    ([synthetic("OGM", params={}, acc=0.8, imbalance=0.1)], None, "method parameter 'alpha'"),
    ([synthetic("OGM", params={"alpha": 0.5}, acc=0.8)], None, "metric 'imbalance'"),
    (sweep_records({0.0: [(0.8, 0.4)]}), synthetic("Baseline", dataset="other", acc=0.8, imbalance=0.1),
     "is on other"),
    ([], None, "no records"),
])
def test_bad_sweeps_are_refused_with_one_clear_message(tmp_path, records, baseline, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        balance_figure(records, "alpha", baseline, tmp_path / "fig3")
    assert not list(tmp_path.iterdir()) and plt.get_fignums() == []


# -- Pareto ------------------------------------------------------------------------------------

def dominates(q: tuple[float, float], p: tuple[float, float]) -> bool:
    return q[0] <= p[0] and q[1] >= p[1] and (q[0] < p[0] or q[1] > p[1])


@given(st.lists(st.tuples(st.integers(1, 6).map(float), st.integers(0, 5).map(lambda a: a / 5)),
                max_size=12))
@settings(max_examples=100, deadline=None)
def test_pareto_front_members_are_undominated_and_every_other_point_is_dominated(points):
    front = set(pareto_front(points))
    for i, p in enumerate(points):
        beaten = any(dominates(q, p) for q in points)
        assert beaten == (i not in front)


def test_pareto_figure_averages_seeds_and_names_the_front_in_bold(tmp_path):
    records = [synthetic("Baseline", seed=s, acc=a, train_flops=1e8) for s, a in ((0, 0.80), (1, 0.84))]
    records += [synthetic("OGM", acc=0.90, train_flops=4e8), synthetic("AGM", acc=0.81, train_flops=9e8),
                synthetic("Unimodal", params={"modality": "a"}, acc=0.60, train_flops=3e7)]
    records.append(synthetic("LinearProbe", probe_acc_a=0.5, train_flops=1e6))  # no fused acc: left out
    baseline = next(p for p in cost_points(records)["toy"] if p.label == "Baseline")
    assert (baseline.n, baseline.flops, baseline.flops_std) == (2, 1e8, 0.0)
    assert baseline.acc == pytest.approx(0.82) and baseline.acc_std == pytest.approx(stdev([0.80, 0.84]))
    paths = pareto_figure(records, tmp_path / "pareto")
    assert_valid_images(paths, tmp_path / "pareto")
    styles = {text: style for style, text in svg_texts(paths[1])}
    front = {"Unimodal-a (n=1)", "Baseline (n=2)", "OGM (n=1)"}
    assert front | {"AGM (n=1)"} <= set(styles) and not any(t.startswith("LinearProbe") for t in styles)
    assert all("font-weight: 700" in styles[t] for t in front)
    assert "font-weight: 700" not in styles["AGM (n=1)"]


def test_pareto_figure_draws_one_panel_per_dataset(tmp_path):
    records = [synthetic("Baseline", dataset=d, acc=0.8, train_flops=1e8) for d in ("d1", "d2")]
    texts = assert_valid_images(pareto_figure(records, tmp_path / "p"), tmp_path / "p")
    assert {"d1", "d2"} <= set(texts) and texts.count("training FLOPs") == 2


# -- curves ------------------------------------------------------------------------------------

def test_curves_are_the_mean_of_the_histories_validation_accuracies(real):
    ogm = real["ogm"]
    curves = validation_curves(ogm)
    assert list(curves) == ["fused", "fac", "mor"]
    for name, key in (("fused", "val_acc"), ("fac", "val_acc_fac"), ("mor", "val_acc_mor")):
        epochs, values = curves[name]
        assert epochs == [h["epoch"] for h in ogm[0].history] == [0, 1]
        assert values == [mean(r.history[i][key] for r in ogm) for i in range(2)]
    unimodal = next(r for r in real["inputs"] if r.method == "Unimodal")
    assert list(validation_curves([unimodal])) == ["fused"]  # its modality's own line is the fused one


def test_curves_figure_shows_the_chosen_methods_only(real, tmp_path):
    texts = assert_valid_images(curves_figure(real["all"], ["OGM"], tmp_path / "c"), tmp_path / "c")
    assert "OGM on mfeat (n=2)" in texts and {"fused", "fac", "mor"} <= set(texts)
    assert not any(t.startswith("Baseline on") for t in texts)
    with pytest.raises(ValueError, match="MMPareto"):
        curves_figure(real["all"], ["MMPareto"], tmp_path / "c2")
