"""Training-step throughput of the ResNet18 audio-visual model on CREMA-D-shaped inputs.

One timer, shared by the pytest-benchmark (`benchmarks/test_bench_training.py`, CPU) and the
GPU validation script (`bbench.benchmarking`), so both time the same thing: one
`method.train_step` built the way a run builds it. The spec is `resolve_spec(method, "cremad",
overrides)` (the preset's ResNet18 encoders, concat head, optimizer and batch size; the
training settings `train.precision`, `train.channels_last`, `train.compile` under test), the
method comes from the registry, the model from the method, the loop is bbench's `Trainer`, and
the batch is one of CREMA-D's shapes (audio fbank 1 x 300 x 128, 2 frames of 3 x 224 x 224,
6 classes) filled with random values, drawn through the Trainer's own loader and device move.
No dataset is read: the shapes come from the resolved spec's dataset options.

Figures: samples per second (batch / median step time) and each step as a multiple of the
Baseline step under the same training settings (what a method costs on top of plain training).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import torch

from bbench.benchmarking.timing import Timing, synchronize, time_calls
from bbench.config.fields import build
from bbench.config.resolve import resolve_spec
from bbench.config.specs import RunSpec
from bbench.data.base import DataInfo, TensorMultimodalDataset
from bbench.data.clips import clip_info
from bbench.data.registry import DATASETS, resolve_modalities
from bbench.engine.checkpoint import seed_everything
from bbench.engine.trainer import Trainer
from bbench.methods.base import Method, RunContext, StepOutput
from bbench.methods.loop import StepInfo, TrainingData
from bbench.methods.registry import METHODS, build_method, reference_method

DATASET = "cremad"


@dataclass(frozen=True)
class StepSetting:
    """A method and the training settings its step runs under."""

    method: str
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    reuse_host_memory: bool = True  # the default of a run (engine/host_memory.py)

    @property
    def variant(self) -> str:
        """The training settings alone: the steps compared with one Baseline share it."""
        return " + ".join([self.precision] + ["channels_last"] * self.channels_last
                          + ["compile"] * self.compile
                          + ["host memory unmapped"] * (not self.reuse_host_memory))

    def overrides(self) -> dict[str, Any]:
        return {"train.precision": self.precision, "train.channels_last": self.channels_last,
                "train.compile": self.compile, "train.reuse_host_memory": self.reuse_host_memory}


@dataclass(frozen=True)
class InputSize:
    """Batch and input sizes; None keeps the CREMA-D preset's value."""

    batch: int | None = None
    image_size: int | None = None
    audio_frames: int | None = None

    def overrides(self) -> dict[str, Any]:
        keys = {"train.batch_size": self.batch, "dataset.options.image_size": self.image_size,
                "dataset.options.audio_frames": self.audio_frames}
        return {k: v for k, v in keys.items() if v is not None}


CREMAD_SIZE = InputSize()  # the preset's batch of 64 at CREMA-D's input shapes
TINY_SIZE = InputSize(batch=2, image_size=32, audio_frames=32)  # seconds on a CPU: dry runs, tests


def settings_matrix(methods: Sequence[str], precisions: Sequence[str] = ("fp32", "bf16"),
                    channels_last: Sequence[bool] = (False, True),
                    compile: Sequence[bool] = (False,)) -> list[StepSetting]:
    """Every combination, grouped by training settings (the methods in the order given)."""
    return [StepSetting(m, p, cl, c) for c in compile for p in precisions for cl in channels_last
            for m in methods]


def step_spec(setting: StepSetting, size: InputSize, device: torch.device, seed: int = 0) -> RunSpec:
    """The resolved spec a CREMA-D run of `setting` would have; without loader workers, since
    the loader gives one batch, before the timing, and its workers would only cost start-up."""
    overrides = {**size.overrides(), **setting.overrides(), "train.device": str(device),
                 "train.seed": seed, "train.progress": False, "train.num_workers": 0}
    return resolve_spec(setting.method, DATASET, overrides)


def spec_info(spec: RunSpec) -> DataInfo:
    """The DataInfo a run of `spec` gets from the CREMA-D loader, computed without its files."""
    entry = DATASETS.get(spec.dataset.name)
    options = build(entry.options, spec.dataset.options, f"dataset {entry.name}")
    modalities = resolve_modalities(entry, spec.dataset.modalities)
    return clip_info(entry.name, modalities, entry.num_classes, options)


def random_split(info: DataInfo, n: int, seed: int) -> TensorMultimodalDataset:
    """n samples of the dataset's shapes: N(0, 1) inputs, uniform labels."""
    g = torch.Generator().manual_seed(seed)
    features = {m: torch.randn(n, *info.input_shapes[m], generator=g) for m in info.modalities}
    return TensorMultimodalDataset(features, torch.randint(0, info.num_classes, (n,), generator=g))


def first_active_epoch(method: Method, epochs: int) -> int:
    """The first epoch in which the method's own step runs (a windowed one is plain outside)."""
    for epoch in range(epochs):
        if method.active(epoch):
            return epoch
    raise ValueError(f"{method.name}: its window opens in none of the {epochs} epochs, so only "
                     f"the plain step would run")


class TrainStep:
    """One training step of a method, built as a run builds it, to be called repeatedly.

    The method's fit and epoch set-up hooks run first and the model is put in training mode, as
    in the Trainer; the step runs in the first epoch where the method is active (OGM's window
    opens at epoch 10), so a windowed method is timed doing its own work. Successive calls keep
    training (optimizer and method state carry on), as consecutive steps of a run do.
    """

    def __init__(self, setting: StepSetting, size: InputSize, device: torch.device,
                 seed: int = 0) -> None:
        self.setting = setting
        self.device = device
        self.spec = step_spec(setting, size, device, seed)
        info = spec_info(self.spec)
        seed_everything(seed)
        ctx = RunContext(info, self.spec.model, self.spec.train.seed, device, self.spec)
        self.method = build_method(self.spec.method, self.spec.method_params, ctx)
        self.samples = self.spec.train.batch_size
        split = random_split(info, self.samples, seed)
        self.trainer = Trainer(self.spec.train, TrainingData(info, split, split), self.method,
                               self.method.build_model(), count_flops=False)
        epoch = first_active_epoch(self.method, self.spec.train.epochs)
        self.method.on_fit_start(self.trainer)
        self.method.on_epoch_start(self.trainer, epoch)
        self.batch = self.trainer.to_device(next(iter(self.trainer.train_loader(split, epoch))))
        self.trainer.model.train()  # as the loop does once per pass
        self.info = StepInfo(epoch, 0, 1, 0, active=True)

    def __call__(self) -> StepOutput:
        """One step, returned once the device has finished it."""
        out = self.method.train_step(self.trainer, self.batch, self.info)
        synchronize(self.device)
        return out


@dataclass(frozen=True)
class StepResult:
    """The timing of one setting, or why it has none (`samples` None: not known, the step
    was never built)."""

    setting: StepSetting
    samples: int | None
    timing: Timing | None = None
    error: str | None = None

    @property
    def samples_per_second(self) -> float | None:
        if self.timing is None or self.samples is None:
            return None
        return self.samples / self.timing.median


def measure_step(setting: StepSetting, size: InputSize, device: torch.device, repeats: int,
                 warmup: int, seed: int = 0) -> StepResult:
    """Median time of one step of `setting` after `warmup` steps (compilation, autotuning)."""
    step = TrainStep(setting, size, device, seed)
    timing = time_calls(step, device, repeats, warmup)
    return StepResult(setting, step.samples, timing)


def baseline_multiples(results: Iterable[StepResult]) -> dict[StepSetting, float]:
    """Each timed step's median over the reference method's (Baseline's) step with the same
    training settings."""
    reference = reference_method()
    results = [r for r in results if r.timing is not None]
    base = {r.setting.variant: r.timing.median for r in results
            if METHODS.canonical(r.setting.method) == reference}
    return {r.setting: r.timing.median / base[r.setting.variant]
            for r in results if r.setting.variant in base}


def speedups_over_fp32(results: Iterable[StepResult]) -> dict[StepSetting, float]:
    """Each timed step's speed-up over the same method's plain fp32 step (no channels_last, no
    compile): what the training settings buy."""
    results = [r for r in results if r.timing is not None]
    plain = {r.setting.method: r.timing.median for r in results
             if r.setting == StepSetting(r.setting.method)}
    return {r.setting: plain[r.setting.method] / r.timing.median
            for r in results if r.setting.method in plain}


def result_rows(results: Sequence[StepResult]) -> list[dict[str, Any]]:
    """One plain dict per setting (JSON summaries, tables)."""
    multiples, speedups = baseline_multiples(results), speedups_over_fp32(results)
    rows = []
    for r in results:
        row: dict[str, Any] = {"method": r.setting.method, "precision": r.setting.precision,
                               "channels_last": r.setting.channels_last,
                               "compile": r.setting.compile,
                               "reuse_host_memory": r.setting.reuse_host_memory, "batch": r.samples}
        if r.timing is not None:
            row.update(r.timing.as_dict(), samples_per_second=r.samples_per_second,
                       baseline_multiple=multiples.get(r.setting),
                       speedup_over_fp32=speedups.get(r.setting))
        if r.error is not None:
            row["error"] = r.error
        rows.append(row)
    return rows


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows of `result_rows` as a Markdown table."""
    def num(value: Any, fmt: str, suffix: str = "") -> str:
        return "-" if value is None else format(value, fmt) + suffix

    lines = ["| method | settings | batch | samples/s | median ms per step (min-max) "
             f"| x {reference_method()} step | speed-up over fp32 |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        variant = StepSetting(row["method"], row["precision"], row["channels_last"],
                              row["compile"], row["reuse_host_memory"]).variant
        if "median_ms" in row:
            timing = f"{row['median_ms']:.2f} ({row['min_ms']:.2f}-{row['max_ms']:.2f})"
            lines.append(f"| {row['method']} | {variant} | {num(row['batch'], 'd')} | "
                         f"{num(row['samples_per_second'], '.1f')} | {timing} | "
                         f"{num(row.get('baseline_multiple'), '.2f', 'x')} | "
                         f"{num(row.get('speedup_over_fp32'), '.2f', 'x')} |")
        else:
            lines.append(f"| {row['method']} | {variant} | {num(row['batch'], 'd')} | failed: "
                         f"{row.get('error', '?')} | | | |")
    return "\n".join(lines)

