"""Paper presets, and one Baseline epoch on every miniature through `bbench.run` (CPU)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import bbench
from bbench.config.resolve import load_preset, resolve_spec
from bbench.data.file_splits import FileSplit
from bbench.models.encoders import ENCODERS
from bbench.testing import MINIATURES

MLP = {"model.encoders": {"*": {"type": "mlp", "options": {"hidden": [16]}}}}
"""Encoder override for CPU runs that do not depend on the backbone encoders."""

PAPER = {  # datasets.md §1: optimizer, lr, weight decay, step size, batch, epochs
    "cremad": ("sgd", 1e-3, 1e-4, 30, 64, 70),
    "kinetics_sounds": ("sgd", 1e-3, 1e-4, 30, 64, 70),
    "balanced_av": ("sgd", 5e-3, 1e-4, 30, 64, 70),
    "vggsound": ("adamw", 1e-3, 1e-3, 10, 32, 30),
    "ucf101": ("sgd", 1e-2, 1e-4, 30, 64, 70),
    "food101": ("sgd", 1e-3, 1e-4, 30, 64, 70),
    "cmu_mosei": ("sgd", 1e-2, 1e-4, 30, 64, 70),
}
ENCODER_TYPES = {
    "cremad": {"audio": "resnet18", "visual": "resnet18"},
    "kinetics_sounds": {"audio": "resnet18", "visual": "resnet18"},
    "balanced_av": {"audio": "resnet18", "visual": "resnet18"},
    "vggsound": {"audio": "resnet18", "visual": "resnet18"},
    "ucf101": {"flow": "resnet18", "visual": "resnet18"},
    "food101": {"text": "bert", "visual": "resnet18"},
    "cmu_mosei": {"audio": "transformer", "visual": "transformer", "text": "transformer"},
}


def with_mlp(mini: dict[str, Any]) -> dict[str, Any]:
    overrides = dict(mini)
    overrides.update(MLP)
    return overrides


@pytest.mark.parametrize("name", sorted(PAPER))
def test_preset_holds_the_paper_settings(name: str, miniature) -> None:
    preset = load_preset(name)
    opt, lr, wd, step, batch, epochs = PAPER[name]
    assert preset["train"]["optimizer"]["type"] == opt
    assert preset["train"]["optimizer"]["lr"] == lr
    assert preset["train"]["optimizer"]["weight_decay"] == wd
    assert preset["train"]["optimizer"].get("momentum", 0.9) == 0.9
    assert preset["train"]["scheduler"] == {"type": "step", "step_size": step, "gamma": 0.1}
    assert (preset["train"]["batch_size"], preset["train"]["epochs"]) == (batch, epochs)
    assert {m: e["type"] for m, e in preset["model"]["encoders"].items()} == ENCODER_TYPES[name]
    # the preset applies to the dataset automatically; dataset options validate
    spec = resolve_spec("Baseline", name, overrides={**MLP, "dataset.root": "/nowhere"})
    assert spec.train.optimizer.lr == lr and spec.train.epochs == epochs
    assert spec.train.scheduler.step_size == step and spec.train.batch_size == batch
    if name in ("cremad",):
        assert spec.dataset.options["frames_per_clip"] == 2
        assert spec.dataset.options["audio_frames"] == 300


@pytest.mark.parametrize("name", sorted(PAPER))
def test_preset_encoders_validate_when_registered(name: str) -> None:
    missing = sorted(set(ENCODER_TYPES[name].values()) - set(ENCODERS))
    if missing:
        pytest.skip(f"encoders not registered yet: {', '.join(missing)}")
    spec = resolve_spec("Baseline", name, overrides={"dataset.root": "/nowhere"})
    assert {m: e.type for m, e in spec.model.encoders.items() if m != "*"} == ENCODER_TYPES[name]


@pytest.mark.parametrize("name", sorted(MINIATURES))
def test_baseline_epoch_on_miniature(name: str, miniature, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    mini = miniature(name)
    result = bbench.run("Baseline", name, output_root=str(tmp_path / "runs"), **with_mlp(mini))
    metrics = result.metrics
    assert 0.0 <= metrics["acc"] <= 1.0 and metrics["train_steps"] >= 1
    assert result.record_path.is_file()
    assert result.spec["dataset"]["name"] == name
    assert result.spec["dataset"]["options"]["image_size" if name != "cmu_mosei" else "verify_samples"]
    if name in ("cremad", "kinetics_sounds", "vggsound", "ucf101", "food101"):  # no public val split
        assert [p.name for p in (result.run_dir / "splits").iterdir()] == [f"{name}-val-seed0.txt"]


def test_trainer_keys_augmentation_on_epoch(miniature, tmp_path: Path, monkeypatch) -> None:
    """The trainer calls set_epoch on the training split before each epoch."""
    seen: list[tuple[str, int]] = []
    original = FileSplit.set_epoch

    def spy(self: FileSplit, epoch: int) -> None:
        seen.append((self.split, epoch))
        original(self, epoch)

    monkeypatch.setattr(FileSplit, "set_epoch", spy)
    overrides = with_mlp(miniature("ucf101"))
    overrides["epochs"] = 2
    bbench.run("Baseline", "ucf101", output_root=str(tmp_path / "runs"), **overrides)
    assert ("train", 0) in seen and ("train", 1) in seen


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MINIATURES))
def test_baseline_epoch_with_real_backbones(name: str, miniature, tmp_path: Path) -> None:
    """The miniature's own (tiny) backbone settings, once the backbone encoders exist."""
    missing = sorted(set(ENCODER_TYPES[name].values()) - set(ENCODERS))
    if missing:
        pytest.skip(f"encoders not registered yet: {', '.join(missing)}")
    torch.set_num_threads(1)
    result = bbench.run("Baseline", name, output_root=str(tmp_path / "runs"), **miniature(name))
    assert 0.0 <= result.metrics["acc"] <= 1.0
