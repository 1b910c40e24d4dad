"""The typed specs of one run: dataset, model, training, evaluation and the run itself.

A RunSpec is frozen and fully resolved (preset + overrides); it is saved with every
result so that a record says exactly what produced it. Method-, dataset- and
encoder-specific settings live in plain dicts here and are validated by the typed
parameter class of the method, dataset or encoder they belong to (see `resolve.py`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from bbench.config.fields import LogUniform, SpecError, param

DEVICE_FORM = re.compile(r"cpu|cuda(:\d+)?|\d+")
DEVICE_FORMS = "cpu, cuda, cuda:N (N = 0, 1, ...), or a bare GPU index N as BalanceMM's --device 0"


@dataclass(frozen=True)
class OptimizerSpec:
    """Optimizer of the run's model (all trainable parameters, method extras included)."""

    type: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = param(0.01, gt=0, search=LogUniform(1e-4, 1e-1))  # tuned on request only
    momentum: float = param(0.9, ge=0, lt=1, doc="SGD only")
    weight_decay: float = param(1e-4, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass(frozen=True)
class SchedulerSpec:
    """Learning-rate schedule, stepped once per epoch (methods.md §1.4)."""

    type: Literal["step", "none"] = "step"
    step_size: int = param(30, ge=1)
    gamma: float = param(0.1, gt=0, le=1)


@dataclass(frozen=True)
class TrainSpec:
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)
    epochs: int = param(70, ge=1)
    batch_size: int = param(64, ge=1)
    seed: int = param(0, ge=0)
    device: str = "cpu"
    num_workers: int = param(0, ge=0)
    prefetch_factor: int = param(2, ge=1, doc="batches each loader worker reads ahead")
    pin_memory: bool = param(True, doc="page-locked host batches, copied without blocking "
                                       "(CUDA runs only)")
    reuse_host_memory: bool = param(True, doc="glibc keeps freed large host buffers for the next "
                                              "step instead of unmapping them (same values; "
                                              "engine/host_memory.py)")
    progress: bool = True
    tensorboard: bool = param(True, doc="per-epoch TensorBoard scalars in <run>/tensorboard "
                                        "(when the tensorboard package is installed)")
    checkpoint_every: int = param(1, ge=0, doc="epochs between checkpoints; 0 = never")
    checkpoint_seconds: float = param(60.0, ge=0, doc="at least this much training time between "
                                      "checkpoints (the last epoch is always written); 0 = every "
                                      "checkpoint_every epochs")
    flops: Literal["signature", "all", "off"] = "signature"
    modality_train_acc: bool = param(
        False, doc="also count each modality's training accuracy (train_acc_<m>) every epoch: "
                   "a copy of the fusion head per step and M batched head products per epoch, "
                   "about 5 % of a small model's training time (docs/benchmarks.md)")
    precision: Literal["fp32", "bf16", "fp16"] = param(
        "fp32", doc="autocast dtype of the training forward; fp16 adds a gradient scaler")
    channels_last: bool = param(False, doc="convolutional encoders and image batches in NHWC")
    deterministic: Optional[bool] = param(
        None, doc="bit-identical reruns (no cudnn.benchmark); unset = true on CPU, false on CUDA")
    compile: bool = param(False, doc="torch.compile the encoders")

    def __post_init__(self) -> None:
        if not DEVICE_FORM.fullmatch(self.device):
            raise SpecError(f"run: device={self.device!r} is not a device bbench can train on; "
                            f"accepted: {DEVICE_FORMS}")


@dataclass(frozen=True)
class DatasetSpec:
    """Which data, which modalities (and their order), and dataset-specific options."""

    name: str = "mfeat"
    root: Optional[str] = None
    modalities: Optional[tuple[str, ...]] = None
    split_seed: int = param(0, ge=0)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EncoderSpec:
    type: str = "mlp"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelSpec:
    """Encoders per modality name ('*' = every modality without its own entry) and the fusion."""

    encoders: dict[str, EncoderSpec] = field(default_factory=lambda: {"*": EncoderSpec()})
    fusion: str = "concat"
    fusion_options: dict[str, Any] = field(default_factory=dict)

    def encoder_for(self, modality: str) -> EncoderSpec:
        if modality in self.encoders:
            return self.encoders[modality]
        if "*" in self.encoders:
            return self.encoders["*"]
        raise ValueError(f"model: no encoder configured for modality {modality!r} "
                         f"(configured: {', '.join(self.encoders)}; use '*' for a default)")


@dataclass(frozen=True)
class EvalSpec:
    mask: Literal["input", "feature"] = "input"
    shapley: bool = True
    batch_size: int = param(256, ge=1)


@dataclass(frozen=True)
class RunSpec:
    method: str = ""  # empty: the reference method (the one declaring comparison_reference)
    method_params: dict[str, Any] = field(default_factory=dict)
    dataset: DatasetSpec = field(default_factory=DatasetSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    eval: EvalSpec = field(default_factory=EvalSpec)
    output_root: str = "runs"
    run_dir: Optional[str] = None
