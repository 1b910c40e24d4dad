"""Training-step throughput of the ResNet18 audio-visual model (pytest-benchmark; see conftest.py).

Groups ``train_step/resnet18-av/<settings>`` for the settings fp32, fp32 + channels_last, bf16
and bf16 + channels_last (``train.precision``, ``train.channels_last``), each with the members
``Baseline``, ``OGM`` (its default variant, OGM-GE) and ``MMPareto``: one whole
``method.train_step`` built the way a run builds it (``bbench.testing.throughput``: the CREMA-D
preset's ResNet18 encoders, concat head and SGD; CREMA-D's input shapes, audio 1 x 300 x 128 and
2 frames of 3 x 224 x 224, random values; OGM in its window). On this 2-core CPU the batch is
BATCH (the preset's 64 would take minutes per step) and each member runs ROUNDS steps after one
warm-up step; consecutive steps keep training, as in a run. The GPU script
(``bash benchmarks/gpu/run.sh``) times the same step at the preset's batch, compiled too.

Group ``train_step/resnet18-av/host-memory``: the fp32 Baseline step at batch HOST_BATCH with
``train.reuse_host_memory`` on (a run's default: glibc keeps freed large buffers) and off
(every large buffer a fresh mmap, page-faulted anew each step), side by side in one process.

    pytest benchmarks/test_bench_training.py --benchmark-only --benchmark-json=train.json
    python benchmarks/test_bench_training.py train.json   # samples/s, x Baseline step (Markdown)
"""
from __future__ import annotations

import json
import sys

import pytest
import torch

from bbench.benchmarking.timing import Timing
from bbench.engine import host_memory
from bbench.testing.throughput import (
    InputSize,
    StepResult,
    StepSetting,
    TrainStep,
    markdown_table,
    result_rows,
)

METHODS = ("Baseline", "OGM", "MMPareto")  # OGM in its default variant, OGM-GE; as run.sh
BATCH = 4
ROUNDS = 3
SIZE = InputSize(batch=BATCH)  # CREMA-D's input shapes, a small batch
CPU = torch.device("cpu")
VARIANTS = [(p, cl) for p in ("fp32", "bf16") for cl in (False, True)]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("precision,channels_last", VARIANTS,
                         ids=[StepSetting("", p, cl).variant.replace(" + ", "+") for p, cl in VARIANTS])
def test_train_step(benchmark, precision, channels_last, method):
    setting = StepSetting(method, precision, channels_last)
    benchmark.group = f"train_step/resnet18-av/{setting.variant}"
    step = TrainStep(setting, SIZE, CPU)
    benchmark.extra_info.update(
        batch=step.samples, inputs={m: list(step.batch[m].shape[1:]) for m in step.method.modalities},
        parameters=sum(p.numel() for p in step.trainer.model.parameters()))
    out = benchmark.pedantic(step, rounds=ROUNDS, warmup_rounds=1)
    assert torch.isfinite(out.loss)  # the timed steps trained on finite losses
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    assert out.out.logits.dtype == dtype  # the forward ran in the configured precision


HOST_BATCH = 8


@pytest.mark.skipif(not host_memory.available(), reason="host memory reuse needs glibc")
@pytest.mark.parametrize("reuse", [True, False], ids=["reused", "unmapped"])
def test_train_step_host_memory(benchmark, reuse: bool) -> None:
    setting = StepSetting("Baseline", reuse_host_memory=reuse)
    benchmark.group = "train_step/resnet18-av/host-memory"
    step = TrainStep(setting, InputSize(batch=HOST_BATCH), CPU)  # its Trainer sets the switch
    assert host_memory.reusing() == reuse
    benchmark.extra_info.update(batch=step.samples)
    out = benchmark.pedantic(step, rounds=ROUNDS, warmup_rounds=1)
    assert torch.isfinite(out.loss)


def main(path: str) -> None:
    """The Markdown table of docs/benchmarks.md from a --benchmark-json file."""
    data = json.load(open(path))
    results = []
    for b in data["benchmarks"]:
        p = b["params"]
        if "reuse" in p:  # its own batch (HOST_BATCH): not a member of the table's Baseline groups
            print(f"host memory {'reused' if p['reuse'] else 'unmapped'}: batch "
                  f"{b['extra_info']['batch']}, median {b['stats']['median'] * 1e3:.0f} ms/step")
            continue
        setting = StepSetting(p["method"], p["precision"], p["channels_last"])
        results.append(StepResult(setting, b["extra_info"]["batch"], Timing(tuple(b["stats"]["data"]))))
    mi = data.get("machine_info", {})
    print(f"machine: {mi.get('cpu', {}).get('brand_raw', '?')}, "
          f"{mi.get('torch_threads', '?')} torch threads, torch {mi.get('torch', '?')}\n")
    order = {s: i for i, s in enumerate(StepSetting(m, p, cl) for p, cl in VARIANTS for m in METHODS)}
    print(markdown_table(result_rows(sorted(results, key=lambda r: order[r.setting]))))


if __name__ == "__main__":
    main(sys.argv[1])
