"""Benchmarks of whole method steps (pytest-benchmark; see conftest.py for how to run).

Groups ``agm_step/<model>/M=<m>``, each with three members timing one full ``train_step``
(forward, backward, the method's gradient hooks, optimizer step) of a registered method on a
fixed model and batch, run the way the Trainer runs it:

- ``baseline``: Baseline's step;
- ``one-pass``: AGM's step with its default ``logits_path`` (None: ``choose_path`` picks the
  one-pass path, i.e. one eval-mode encoder pass over the batch plus M batch-1 passes on a zero
  input, and the head on the 2^M stacked feature variants);
- ``masked``: AGM's step with ``logits_path = "masked-passes"`` (one eval-mode pass of the
  whole model per modality subset, the absent modalities' raw inputs zeroed).

Models: ``resnet18-av`` (bbench's ``resnet18`` encoders with random weights, concat head to the
6 CREMA-D classes, batch 16; audio spectrogram (1, T, 128), visual frames (T, 3, H, W) and, for
M = 3, a 2-channel flow-like clip (T, 2, H, W); the shapes are AV_INPUTS below) and
``mlp-mfeat`` (the mfeat preset's MLP d -> 128 -> 64 per view, concat head to 10 classes, batch
64; M = 2: fac, mor; M = 3: fac, fou, mor). Optimizers as in the presets (SGD with momentum
0.9, weight decay 1e-4; lr 1e-3 for CREMA-D, 1e-2 for mfeat).

Every round starts from the same parameters, optimizer state and AGM running means (restored in
the untimed setup). ``extra_info`` holds the FLOPs of one step (torch's FlopCounterMode via
``bbench.engine.flops``: 2 x multiply-adds, backward included).

    pytest benchmarks/test_bench_methods.py --benchmark-only --benchmark-json=agm.json
    python benchmarks/test_bench_methods.py agm.json     # the tables of docs/benchmarks.md
"""
from __future__ import annotations

import copy
import json
import re
import sys
from collections import defaultdict

import pytest
import torch

from bbench.config.specs import EncoderSpec, ModelSpec, OptimizerSpec, TrainSpec
from bbench.data.base import DataInfo, TensorMultimodalDataset
from bbench.engine.flops import count_forward_flops
from bbench.engine.trainer import Trainer
from bbench.methods.base import RunContext
from bbench.methods.loop import StepInfo, TrainingData
from bbench.methods.registry import build_method
from bbench.metrics.shapley import choose_path, subset_logits

CPU = torch.device("cpu")
IMPLS = ("baseline", "one-pass", "masked")

# The CREMA-D preset's inputs: audio (1, 300, 128) fbank, 2 frames of 3 x 224 x 224; for M = 3 a
# flow-like stream of 2 frames of 2 x 224 x 224 (a Baseline step of the pair: about 2.6 s on a
# 2-core CPU).
AV_INPUTS = {"audio": (1, 300, 128), "visual": (2, 3, 224, 224), "flow": (2, 2, 224, 224)}
MFEAT_DIMS = {"fac": 216, "fou": 76, "mor": 6}
MFEAT_VIEWS = {2: ("fac", "mor"), 3: ("fac", "fou", "mor")}

CASES = {
    "resnet18-av": dict(batch=16, classes=6, lr=1e-3, rounds=3, warmup=1),
    "mlp-mfeat": dict(batch=64, classes=10, lr=1e-2, rounds=200, warmup=10),
}


def case_info(kind: str, m: int) -> tuple[DataInfo, ModelSpec]:
    if kind == "resnet18-av":
        names = tuple(AV_INPUTS)[:m]
        shapes = {n: AV_INPUTS[n] for n in names}
        spec = ModelSpec(encoders={n: EncoderSpec("resnet18", {"in_channels": AV_INPUTS[n][-3]})
                                   for n in names})
    else:
        names = MFEAT_VIEWS[m]
        shapes = {n: (MFEAT_DIMS[n],) for n in names}
        spec = ModelSpec(encoders={"*": EncoderSpec("mlp", {"hidden": [128, 64]})})
    info = DataInfo(f"bench-{kind}", names, CASES[kind]["classes"], shapes,
                    {n: torch.float32 for n in names})
    return info, spec


def random_batch(info: DataInfo, n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    batch = {m: torch.randn(n, *info.input_shapes[m], generator=g) for m in info.modalities}
    batch["label"] = torch.randint(0, info.num_classes, (n,), generator=g)
    batch["index"] = torch.arange(n)
    return batch


def step_setup(kind: str, m: int, impl: str):
    """(trainer, method, batch, step info) of one member; the model's init is the same for all
    three members of a group (seed 0), as is the batch."""
    info, spec = case_info(kind, m)
    ctx = RunContext(info, spec, 0, CPU)
    method = build_method("Baseline" if impl == "baseline" else "AGM", {}, ctx)
    if impl == "masked":
        method.logits_path = "masked-passes"
    torch.manual_seed(0)
    model = method.build_model()
    batch = random_batch(info, CASES[kind]["batch"])
    split = TensorMultimodalDataset({n: batch[n] for n in info.modalities}, batch["label"])
    optimizer = OptimizerSpec(lr=CASES[kind]["lr"], momentum=0.9, weight_decay=1e-4)
    train = TrainSpec(optimizer=optimizer, epochs=1, batch_size=CASES[kind]["batch"], progress=False)
    trainer = Trainer(train, TrainingData(info, split, split), method, model, count_flops=False)
    step = StepInfo(0, 0, 1, 0, active=method.active(0))
    return trainer, method, batch, step


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("m", [2, 3], ids=lambda m: f"M={m}")
@pytest.mark.parametrize("kind", ["resnet18-av", "mlp-mfeat"])
def test_agm_step(benchmark, kind, m, impl):
    benchmark.group = f"agm_step/{kind}/M={m}"
    trainer, method, batch, step = step_setup(kind, m, impl)
    model = trainer.model

    def run():
        method.train_step(trainer, batch, step)

    params0 = copy.deepcopy(model.state_dict())
    method_state0 = copy.deepcopy(method.extra_state())
    # One untimed step (its FLOPs counted) creates the optimizer's momentum buffers; every round
    # then starts from the initial parameters, that optimizer state and the initial AGM state.
    flops = count_forward_flops(run)
    optim0 = copy.deepcopy(trainer.optimizer.state_dict())

    def reset():
        model.load_state_dict(params0)
        trainer.optimizer.load_state_dict(optim0)
        method.load_extra_state(method_state0)

    path = None if impl == "baseline" else (method.logits_path or choose_path(method, model))
    if impl == "one-pass":
        assert path != "masked-passes", path
    benchmark.extra_info.update(
        flops=flops, modalities=m, batch=CASES[kind]["batch"], logits_path=path,
        inputs={n: list(batch[n].shape[1:]) for n in method.modalities},
        parameters=sum(p.numel() for p in model.parameters()))
    case = CASES[kind]
    benchmark.pedantic(run, setup=reset, rounds=case["rounds"], warmup_rounds=case["warmup"])

    if impl == "masked":  # both paths must give the same subset logits on this model
        reset()
        one = subset_logits(method, model, batch, path=None)
        masked = subset_logits(method, model, batch, path="masked-passes")
        torch.testing.assert_close(one, masked, rtol=1e-4, atol=1e-4)


# ---- tables -------------------------------------------------------------------------------------

def main(path: str) -> None:
    """Per group: median ms per step, each as a multiple of the Baseline step, and AGM's
    one-pass speed-up over the masked passes; FLOPs per step (G)."""
    data = json.load(open(path))
    groups: dict[str, dict[str, dict]] = defaultdict(dict)
    for b in data["benchmarks"]:
        groups[b["group"]][b["params"]["impl"]] = b
    mi = data.get("machine_info", {})
    print(f"machine: {mi.get('cpu', {}).get('brand_raw', '?')}, "
          f"{mi.get('torch_threads', '?')} torch threads, torch {mi.get('torch', '?')}\n")

    def key(g: str):
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", g)]

    for g in sorted(groups, key=key):
        impls = groups[g]
        base = impls["baseline"]["stats"]["median"]
        print(f"{g}\n")
        print("| step | median (ms) | min–max (ms) | × Baseline step | GFLOPs per step |")
        print("|---|---:|---:|---:|---:|")
        for impl in IMPLS:
            if impl not in impls:
                continue
            s = impls[impl]["stats"]
            flops = impls[impl]["extra_info"].get("flops")
            gf = f"{flops / 1e9:.3f}" if flops else "-"
            spread = f"{s['min'] * 1e3:.2f}–{s['max'] * 1e3:.2f}"
            print(f"| {impl} | {s['median'] * 1e3:.2f} | {spread} | {s['median'] / base:.2f}× | {gf} |")
        if "one-pass" in impls and "masked" in impls:
            ratio = impls["masked"]["stats"]["median"] / impls["one-pass"]["stats"]["median"]
            print(f"\none-pass speed-up over masked: {ratio:.2f}×\n")


if __name__ == "__main__":
    main(sys.argv[1])
