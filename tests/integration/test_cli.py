"""The command line, run in-process through `bbench.cli.main`."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bbench.cli import main
from bbench.methods.registry import METHODS

FAST = ["--epochs", "2", "--set", "dataset.options.subsample_per_class=20", "--quiet"]


def test_run_writes_a_record_with_every_metric(tmp_path: Path, capsys):
    out = tmp_path / "ogm"
    assert main(["run", "--method", "OGM", "--dataset", "mfeat", "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    assert "OGM on mfeat" in printed and "imbalance I" in printed and "training FLOPs" in printed
    metrics = json.loads((out / "record.json").read_text())["metrics"]
    for key in ("acc", "f1", "acc_fac", "acc_mor", "f1_fac", "f1_mor", "shapley", "imbalance", "train_flops"):
        assert key in metrics


def test_balancemm_style_flags(tmp_path: Path):
    out = tmp_path / "r"
    code = main(["run", "--trainer", "OGM", "--dataset", "UCImultifeature", "--alpha", "0.5",
                 "--device", "cpu", "--modulation_starts", "0", "--out", str(out), *FAST])
    assert code == 0
    spec = json.loads((out / "spec.json").read_text())
    assert spec["method"] == "OGM" and spec["dataset"]["name"] == "mfeat"
    assert spec["method_params"] == {"start": 0, "end": 80, "alpha": 0.5, "variant": "OGM_GE"}
    assert spec["train"]["device"] == "cpu"


@pytest.mark.parametrize("argv,message", [
    (["run", "--method", "OGMM"], "unknown method 'OGMM'. Did you mean 'OGM'"),
    (["run", "--dataset", "CREMAA"], "unknown dataset 'CREMAA'"),
    (["run", "--modalities", "fac,audio"], "unknown modality 'audio'"),
    (["run", "--method", "OGM", "--alpha", "-1"], "OGM: alpha=-1.0 is out of range; need alpha >= 0"),
    (["run", "--epochs", "many"], "epochs='many' must be an integer"),
    (["run", "--set", "lr"], "--set expects key=value"),
])
def test_bad_input_exits_2_with_a_clear_message(argv, message, capsys, tmp_path):
    assert main([*argv, "--set", f"output_root={tmp_path}"]) == 2
    assert message in capsys.readouterr().err


def test_existing_output_directory_is_refused(tmp_path: Path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("previous results")
    assert main(["run", "--out", str(out), *FAST]) == 2
    assert "never overwrites" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "previous results"


def test_list_shows_every_registry(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("Baseline", "Unimodal", "LinearProbe", "OGM", "MMPareto", "OPM", "ModalityValuation",
                 "mfeat", "synthetic", "mlp", "concat", "film"):
        assert name in out


def test_list_presets_shows_each_paper_preset_resolved(capsys):
    assert main(["list", "presets"]) == 0
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in capsys.readouterr().out.splitlines()[2:]}
    assert set(rows) == {"mfeat", "cremad", "kinetics_sounds", "balanced_av", "vggsound", "ucf101",
                         "food101", "cmu_mosei"}
    # optimizer, lr, momentum, weight decay, StepLR, batch, epochs, encoders, fusion (datasets.md §1)
    assert rows["vggsound"] == ["adamw", "0.001", "-", "0.001", "10/0.1", "32", "30",
                                "audio: resnet18, visual: resnet18", "concat"]
    assert rows["balanced_av"][1] == "0.005" and rows["ucf101"][1] == "0.01"
    assert rows["food101"][7] == "text: bert, visual: resnet18"
    assert rows["cmu_mosei"][7] == "audio: transformer, visual: transformer, text: transformer"


def test_bench_prints_the_comparison_and_probe_tables(tmp_path: Path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "--dataset", "mfeat", "--out", str(out), *FAST,
                 "--set", "LinearProbe.probe_epochs=2"]) == 0
    printed = capsys.readouterr().out
    for row in ("Unimodal-fac", "Unimodal-mor", "Baseline", "ModalityValuation", "Data avg", "OPM",
                "Feed-forward avg", "MMPareto", "Objective avg", "OGM", "Optimization avg"):
        assert f"| {row} " in printed, row
    assert "LinearProbe acc % (Baseline)" in printed
    bench = json.loads((out / "bench.json").read_text())
    # one run per registered method, Unimodal once per modality (2), LinearProbe last
    assert len(bench["runs"]) == len(METHODS) + 1
    probe = json.loads((Path(bench["runs"][-1]) / "record.json").read_text())
    assert probe["spec"]["method"] == "LinearProbe"
    assert probe["spec"]["method_params"]["probe_epochs"] == 2
    # its inputs are the bench's own Baseline and Unimodal runs, found by spec hash, not retrained
    assert probe["inputs"]["source"] == [bench["runs"][2]]
    assert probe["inputs"]["unimodal"] == bench["runs"][:2]
    assert len(list((out / "mfeat").iterdir())) == len(METHODS) + 1  # no input run trained twice
    assert (out / "table.md").read_text().count("|") > 50
