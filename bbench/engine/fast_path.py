"""The speed options of a run that do not change what is computed, only how fast.

One job: turn `train.channels_last`, `train.compile`, `train.deterministic`,
`train.reuse_host_memory`, `train.pin_memory`, `train.num_workers` and
`train.prefetch_factor` into the model layout, the process-wide switches (cuDNN, the host
allocator) and the DataLoader options of the run, and say which took effect (the
run record's environment holds `FastPath.describe()`, so a figure can be traced to them).

`deterministic` unset means true on CPU, where bbench promises bit-identical reruns, and
false on CUDA, where cuDNN's autotuner (`cudnn.benchmark`) picks the fastest convolution
algorithms at the price of run-to-run differences in the last bits.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from bbench.config.specs import TrainSpec
from bbench.data.base import Batch
from bbench.engine import host_memory


@dataclass(frozen=True)
class FastPath:
    channels_last: bool
    compile: bool
    deterministic: bool
    cudnn_benchmark: bool
    reuse_host_memory: bool
    pin_memory: bool
    num_workers: int
    prefetch_factor: int | None

    @classmethod
    def for_spec(cls, spec: TrainSpec, device: torch.device) -> "FastPath":
        cuda = device.type == "cuda"
        deterministic = (not cuda) if spec.deterministic is None else spec.deterministic
        workers = spec.num_workers
        return cls(channels_last=spec.channels_last, compile=spec.compile,
                   deterministic=deterministic, cudnn_benchmark=cuda and not deterministic,
                   reuse_host_memory=spec.reuse_host_memory and host_memory.available(),
                   pin_memory=cuda and spec.pin_memory, num_workers=workers,
                   prefetch_factor=spec.prefetch_factor if workers > 0 else None)

    def describe(self) -> dict[str, Any]:
        return asdict(self)

    def apply_process_settings(self) -> None:
        """Set the process-wide switches, cuDNN's and the host allocator's, for the run being
        built (a later run of the same process sets its own)."""
        if torch.backends.cudnn.is_available():
            torch.backends.cudnn.benchmark = self.cudnn_benchmark
            torch.backends.cudnn.deterministic = self.deterministic
        host_memory.set_host_memory_reuse(self.reuse_host_memory)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Apply the process settings, then the layout and compilation options to a model
        already on its device.

        `compile` compiles each encoder in place (`nn.Module.compile`), so parameter names,
        state dicts and checkpoints are the same as without it.
        """
        self.apply_process_settings()
        if self.channels_last and any(isinstance(m, nn.Conv2d) for m in model.modules()):
            model = model.to(memory_format=torch.channels_last)  # 4-D weights only
        if self.compile:
            encoders = getattr(model, "encoders", None)
            for encoder in (encoders.values() if encoders is not None else [model]):
                encoder.compile()
        return model

    def batch_layout(self, batch: Batch) -> Batch:
        """Image batches (4-D tensors) in the channels-last layout when it is on."""
        if not self.channels_last:
            return batch
        return {k: v.contiguous(memory_format=torch.channels_last)
                if isinstance(v, torch.Tensor) and v.ndim == 4 else v for k, v in batch.items()}

    def loader_options(self, persistent: bool = False) -> dict[str, Any]:
        """DataLoader keyword arguments: workers, their read-ahead, pinned host memory;
        `persistent`: the workers outlive an iteration (a loader the run reuses every epoch,
        whose workers would otherwise start again, and fork the split, each time)."""
        options: dict[str, Any] = {"num_workers": self.num_workers, "pin_memory": self.pin_memory}
        if self.num_workers > 0:
            options["prefetch_factor"] = self.prefetch_factor
            options["persistent_workers"] = persistent
        return options
