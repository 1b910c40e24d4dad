"""`bbench.run`: one benchmark run from spec to JSON record (architecture.md, data flow).

RunSpec → DataModule → Method (+ its model) → Trainer.fit on train/val → best-validation
model → test evaluation once (accuracy, macro-F1, Shapley, imbalance) → RunResult → record.
"""
from __future__ import annotations

import json
import logging
import resource
import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import torch

from bbench.config.fields import to_dict
from bbench.config.resolve import resolve_spec
from bbench.config.specs import RunSpec
from bbench.data.registry import build_datamodule
from bbench.engine.checkpoint import CHECKPOINT_NAME, seed_everything
from bbench.engine.evaluate import eval_loader, predict, split_metrics
from bbench.engine.flops import count_forward_flops
from bbench.engine.tensorboard import TensorBoardLogger, tensorboard_available
from bbench.engine.trainer import Trainer, TrainingData
from bbench.methods.base import RunContext
from bbench.methods.registry import build_method
from bbench.metrics.shapley import compute_shapley
from bbench.results.record import RECORD_NAME, RunResult, environment

log = logging.getLogger("bbench")
SPEC_NAME = "spec.json"
BEST_MODEL_NAME = "best_model.pt"


class RunDirectoryExistsError(FileExistsError):
    """A run would write into a directory that already holds results."""


def resolve_device(name: str) -> torch.device:
    """'cpu', 'cuda', 'cuda:1', or a bare GPU index as BalanceMM's `--device 0`."""
    if name.isdigit():
        name = f"cuda:{name}"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} was requested but no CUDA device is available "
                           f"(torch {torch.__version__}); use --device cpu")
    return device


def new_run_dir(spec: RunSpec, label: str) -> Path:
    """A fresh directory for the run; an explicit directory that exists is never reused."""
    if spec.run_dir:
        path = Path(spec.run_dir)
        if path.exists() and any(path.iterdir()):
            raise RunDirectoryExistsError(
                f"run directory {path} already exists and holds results; bbench never overwrites a "
                f"previous run: choose another output directory, or pass --resume {path} to continue it")
        path.mkdir(parents=True, exist_ok=True)
        return path
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    parent = Path(spec.output_root) / spec.dataset.name
    parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1000):
        path = parent / f"{label}-{stamp}" if attempt == 0 else parent / f"{label}-{stamp}-{attempt}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RunDirectoryExistsError(f"could not create a fresh run directory under {parent}")


def run(method: str = "Baseline", dataset: str = "mfeat", *, preset: str | None = None,
        resume: str | Path | None = None,
        callbacks: list[Callable[[Trainer, int, dict[str, Any]], None]] | None = None,
        **overrides: Any) -> RunResult:
    """Train `method` on `dataset` and return its result (also written to the run directory).

    Overrides are bare method hyper-parameters (`alpha=0.5`), shorthands (`epochs=3`) or
    dotted keys (`**{"train.optimizer.lr": 0.1}`); `resume=RUN_DIR` continues an
    interrupted run from its last checkpoint.
    """
    if resume is not None:
        run_dir = Path(resume)
        if (run_dir / RECORD_NAME).exists():
            raise RunDirectoryExistsError(f"{run_dir} is a finished run ({RECORD_NAME} exists); "
                                          f"nothing to resume")
        spec_path = run_dir / SPEC_NAME
        if not spec_path.is_file():
            raise FileNotFoundError(f"cannot resume {run_dir}: expected the run's {SPEC_NAME}")
        spec = resolve_spec(base=json.loads(spec_path.read_text()))
        return execute(spec, run_dir, resume=True, callbacks=callbacks)
    spec = resolve_spec(method, dataset, overrides, preset)
    return execute(spec, None, resume=False, callbacks=callbacks)


def execute(spec: RunSpec, run_dir: Path | None, resume: bool = False,
            callbacks: list[Callable] | None = None) -> RunResult:
    seed_everything(spec.train.seed)
    device = resolve_device(spec.train.device)
    data = build_datamodule(spec.dataset)
    ctx = RunContext(data.info, spec.model, spec.train.seed, device, spec)
    method = build_method(spec.method, spec.method_params, ctx)
    if run_dir is None:
        run_dir = new_run_dir(spec, method.run_label())
        (run_dir / SPEC_NAME).write_text(json.dumps(to_dict(spec), indent=1))
    _keep_split_lists(data, run_dir)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    if method.procedure:
        metrics, extra, history = method.run_procedure(data, run_dir, device), {}, []
    else:
        metrics, extra, history = _train_and_evaluate(spec, data, method, run_dir, device,
                                                      resume, callbacks)
    metrics["wall_seconds"] = time.perf_counter() - started
    metrics["peak_memory_bytes"] = _peak_memory(device)
    result = RunResult(run_dir, to_dict(spec), metrics, history, environment(device), extra)
    result.save()
    log.info("%s on %s: acc=%.4f, record %s", spec.method, spec.dataset.name,
             metrics.get("acc", float("nan")), result.record_path)
    return result


def _train_and_evaluate(spec: RunSpec, data, method, run_dir: Path, device: torch.device,
                        resume: bool, callbacks) -> tuple[dict[str, Any], dict[str, Any], list]:
    model = method.build_model()
    training = TrainingData(data.info, data.train, data.val, data.collate, data.train_eval)
    callbacks = list(callbacks or [])
    board = TensorBoardLogger(run_dir / "tensorboard") if tensorboard_available() else None
    if board is not None:
        callbacks.append(board)
    trainer = Trainer(spec.train, training, method, model, run_dir, callbacks=callbacks)
    try:
        fit = trainer.fit(resume=run_dir / CHECKPOINT_NAME if resume else None)
    finally:
        if board is not None:
            board.close()
    model.load_state_dict(fit.best_state)
    torch.save(fit.best_state, run_dir / BEST_MODEL_NAME)

    eval_started = time.perf_counter()
    test_loader = eval_loader(data.test, spec.eval.batch_size, data.collate, spec.train.num_workers)
    metrics: dict[str, Any] = split_metrics(predict(method, model, test_loader, device),
                                            data.info.num_classes)
    extra: dict[str, Any] = {}
    if spec.eval.shapley:
        shapley = compute_shapley(method, model, test_loader, device, mask=spec.eval.mask)
        metrics["shapley"] = shapley.values
        metrics["imbalance"] = shapley.imbalance
        extra["shapley"] = {"subset_accuracy": shapley.subset_accuracy, "path": shapley.path,
                            "mask": spec.eval.mask, "samples": shapley.samples}
    metrics["eval_seconds"] = time.perf_counter() - eval_started
    metrics.update({
        "train_flops": fit.train_flops,
        "train_flops_by_region": fit.flops_by_region,
        "train_flops_mode": spec.train.flops,
        "train_flops_estimated": fit.flops_estimated,
        "train_seconds": fit.train_seconds,
        "train_samples": fit.samples_seen,
        "train_steps": fit.steps,
        "samples_per_second": fit.samples_seen / fit.train_seconds if fit.train_seconds else 0.0,
        "best_epoch": fit.best_epoch,
        "val_acc": fit.best_val.get("acc"),
        "num_params": sum(p.numel() for p in model.parameters()),
        **forward_flops(method, model, data, device),
    })
    return metrics, extra, fit.history


@torch.no_grad()
def forward_flops(method, model, data, device: torch.device) -> dict[str, Any]:
    """Forward FLOPs per sample: the fused evaluation forward and each encoder on its own."""
    batch = next(iter(eval_loader(data.val, 1, data.collate)))
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    was_training = model.training
    model.eval()
    try:
        per_encoder = {m: count_forward_flops(model.encoders[m], batch[m])
                       for m in method.eval_modalities(model)}
        total = count_forward_flops(method.eval_logits, model, batch, unimodal=False)
    finally:
        model.train(was_training)
    return {"forward_flops_per_sample": total, "encoder_forward_flops": per_encoder}


def _keep_split_lists(data, run_dir: Path) -> None:
    """Copy a carved-out validation id list next to the record (datasets.md §0.3)."""
    listing = getattr(data.val, "id_list_path", None)
    if listing is not None and Path(listing).is_file():
        (run_dir / "splits").mkdir(exist_ok=True)
        shutil.copy2(listing, run_dir / "splits" / Path(listing).name)


def _peak_memory(device: torch.device) -> int:
    """CUDA max allocated on a GPU; the process's peak resident set size on the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
