"""`bbench.run`: one benchmark run from spec to JSON record (architecture.md, data flow).

RunSpec → DataModule → Method (+ its model) → Trainer.fit on train/val → best-validation
model → test evaluation once (accuracy, macro-F1, Shapley, imbalance) → RunResult → record.
"""
from __future__ import annotations

import json
import logging
import resource
import shlex
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import torch

from bbench.config.fields import SpecError, to_dict
from bbench.config.identity import RESUME_MAY_CHANGE, spec_differences, spec_hash
from bbench.config.resolve import resolve_spec
from bbench.config.specs import RunSpec
from bbench.data.base import move_batch
from bbench.data.registry import DATASETS, build_datamodule, resolve_modalities
from bbench.engine import checkpoint as ckpt
from bbench.engine.checkpoint import CHECKPOINT_NAME, seed_everything
from bbench.engine.evaluate import eval_loader, predict, split_metrics
from bbench.engine.flops import count_forward_flops
from bbench.engine.selected import BEST_MODEL_NAME
from bbench.engine.tensorboard import TensorBoardLogger, tensorboard_available
from bbench.engine.fast_path import FastPath
from bbench.engine.trainer import Trainer
from bbench.methods.base import RunContext
from bbench.methods.facts import RunInput
from bbench.methods.loop import TrainingData
from bbench.methods.registry import METHODS, build_method, method_params
from bbench.metrics.classification import evaluation_size
from bbench.metrics.shapley import compute_shapley
from bbench.models.modes import eval_mode
from bbench.results.files import MalformedFileError, OutputWriteError, read_json, write_json
from bbench.results.lock import RunLock
from bbench.results.record import RECORD_NAME, RunResult, environment

log = logging.getLogger("bbench")
SPEC_NAME = "spec.json"


class RunDirectoryExistsError(FileExistsError):
    """A run would write into a directory that already holds results."""


class ResumeMismatchError(ValueError):
    """A resume asked for settings other than those the run was started with."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run: says how far it got and how to continue it."""

    def __init__(self, run_dir: Path, epochs_done: int | None, epochs: int,
                 checkpointed: int) -> None:
        super().__init__(str(run_dir))
        self.run_dir, self.epochs_done, self.epochs = run_dir, epochs_done, epochs
        self.checkpointed = checkpointed

    def message(self) -> str:
        where = (f"after {self.epochs_done} of {self.epochs} epochs" if self.epochs_done is not None
                 else "before training started")
        if self.checkpointed:
            return (f"interrupted {where} in {self.run_dir}; its checkpoint holds the first "
                    f"{self.checkpointed}, and resuming from it ends exactly as an uninterrupted "
                    f"run would. Continue with:\n  python -m bbench run --resume "
                    f"{shlex.quote(str(self.run_dir))}")
        return (f"interrupted {where} in {self.run_dir}; no checkpoint had been written yet (one "
                f"is written after an epoch once train.checkpoint_seconds of training have passed, "
                f"and after the last; never with train.checkpoint_every = 0), so there is "
                f"nothing to resume: start the run again")


def resolve_device(name: str) -> torch.device:
    """'cpu', 'cuda', 'cuda:1', or a bare GPU index as BalanceMM's `--device 0`."""
    if name.isdigit():
        name = f"cuda:{name}"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} was requested but no CUDA device is available "
                           f"(torch {torch.__version__}); use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise RuntimeError(f"device {name!r} was requested but this machine has "
                           f"{torch.cuda.device_count()} CUDA device(s): use cuda:0 … "
                           f"cuda:{torch.cuda.device_count() - 1}")
    return device


def _make_dir(path: Path, parents: bool) -> None:
    """mkdir whose failure is one sentence (permission, read-only or full file system)."""
    try:
        path.mkdir(parents=parents, exist_ok=parents)
    except FileExistsError:
        raise
    except OSError as err:
        raise OutputWriteError(f"cannot create the run directory {path}: {err.strerror or err}; "
                               f"choose a writable --out DIR or --set output_root=DIR") from None


def new_run_dir(spec: RunSpec, label: str) -> Path:
    """A fresh directory for the run; an explicit directory that exists is never reused."""
    if spec.run_dir:
        path = Path(spec.run_dir)
        if path.exists() and not path.is_dir():
            raise RunDirectoryExistsError(f"--out {path} is an existing file, not a directory; "
                                          f"choose a directory path that does not exist yet")
        if path.exists() and any(path.iterdir()):
            raise RunDirectoryExistsError(
                f"run directory {path} already exists and holds results; bbench never overwrites a "
                f"previous run: choose another output directory, or pass --resume {path} to continue it")
        _make_dir(path, parents=True)
        return path
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    parent = Path(spec.output_root) / spec.dataset.name
    if parent.exists() and not parent.is_dir():
        raise RunDirectoryExistsError(f"output root {parent} is a file, not a directory")
    _make_dir(parent, parents=True)
    for attempt in range(1000):
        path = parent / f"{label}-{stamp}" if attempt == 0 else parent / f"{label}-{stamp}-{attempt}"
        try:
            _make_dir(path, parents=False)
            return path
        except FileExistsError:
            continue
    raise RunDirectoryExistsError(f"could not create a fresh run directory under {parent}")


def run(method: str | None = None, dataset: str | None = None, *, preset: str | None = None,
        resume: str | Path | None = None,
        callbacks: list[Callable[[Trainer, int, dict[str, Any]], None]] | None = None,
        evaluate_test: bool = True, **overrides: Any) -> RunResult:
    """Train `method` (default: the reference method) on `dataset` (default mfeat).

    Overrides are bare method hyper-parameters (`alpha=0.5`), shorthands (`epochs=3`) or
    dotted keys (`**{"train.optimizer.lr": 0.1}`); `resume=RUN_DIR` continues an
    interrupted run from its last checkpoint, with exactly its settings: a method, dataset,
    preset or override that would change them is refused (RESUME_MAY_CHANGE lists what
    may). `evaluate_test=False` trains and validates only: the record holds no test metrics
    and says `validation_only` (a tuning trial, which selects on validation and must never
    read the test split).
    """
    if resume is not None:
        return _resume(Path(resume), method, dataset, preset, overrides, callbacks, evaluate_test)
    spec = resolve_spec(method, dataset or "mfeat", overrides, preset)
    return execute(spec, None, resume=False, callbacks=callbacks, evaluate_test=evaluate_test)


def _resume(run_dir: Path, method: str | None, dataset: str | None, preset: str | None,
            overrides: dict[str, Any], callbacks: list[Callable] | None,
            evaluate_test: bool) -> RunResult:
    if "out" in overrides or "run_dir" in overrides:
        raise ResumeMismatchError("--out cannot be combined with --resume: a resumed run continues "
                                  "in its own directory")
    if not run_dir.is_dir():
        raise FileNotFoundError(f"cannot resume {run_dir}: no such run directory")
    if (run_dir / RECORD_NAME).exists():
        raise RunDirectoryExistsError(f"{run_dir} is a finished run ({RECORD_NAME} exists); "
                                      f"nothing to resume")
    spec_path = run_dir / SPEC_NAME
    saved = read_json(spec_path, "run spec")
    if not isinstance(saved, dict):
        raise MalformedFileError(f"{spec_path}: expected a JSON object of settings, found "
                                 f"{type(saved).__name__}")
    try:
        spec = resolve_spec(base=saved)
    except SpecError as err:
        raise SpecError(f"{spec_path}: {err}") from None
    # Another method or dataset is a different run altogether: say so without resolving the
    # saved settings against it (OPM cannot even read OGM's hyper-parameters).
    differences = [f"{what}: {json.dumps(old)} -> {json.dumps(new)}" for what, old, new in (
        ("method", spec.method, METHODS.canonical(method) if method else spec.method),
        ("dataset.name", spec.dataset.name, DATASETS.canonical(dataset) if dataset else spec.dataset.name))
        if old != new]
    asked = spec
    if not differences:
        asked = resolve_spec(spec.method, spec.dataset.name, overrides, preset, base=saved)
        differences = spec_differences(to_dict(spec), to_dict(asked))
    if differences:
        neutral = "; ".join(f"{k}, {why}" for k, why in RESUME_MAY_CHANGE.items())
        raise ResumeMismatchError(
            f"cannot resume {run_dir} with other settings than it was started with (a resumed run "
            f"continues that run exactly):\n  " + "\n  ".join(differences) +
            f"\nOnly these may differ on resume: {neutral}. To train with other settings, start a "
            f"new run.")
    return execute(asked, run_dir, resume=True, callbacks=callbacks, evaluate_test=evaluate_test)


def check_trainable(spec: RunSpec, data: Any, method: Any) -> None:
    """Refuse a run that could not train; warn about one whose method would never act."""
    if method.procedure:
        return
    n_train = len(data.train)
    if n_train < spec.train.batch_size:
        raise SpecError(f"batch_size={spec.train.batch_size} is larger than the training split of "
                        f"{spec.dataset.name} ({n_train} samples): the last incomplete batch is "
                        f"dropped, so no step would run; use --set batch_size=N with N <= {n_train}")
    if method.windowed and method.active_epochs(spec.train.epochs) == 0:
        p = method.params
        log.warning("%s's window (epochs %d to %d) never opens in a %d-epoch run: it trains "
                    "with the plain step only. The record says active_epochs = 0; raise --epochs above %d or set "
                    "start lower", method.name, p.start, p.end, spec.train.epochs, p.start)


def input_spec(spec: RunSpec, method: str, params: dict[str, Any]) -> RunSpec:
    """The spec of a run `spec`'s method needs: same data, model, training settings and seed."""
    tree = {**to_dict(spec), "method": method, "method_params": {}, "run_dir": None}
    return resolve_spec(method, None, params, None, base=tree)


def input_variants(need: RunInput, modalities: tuple[str, ...]) -> list[dict[str, Any]]:
    """The method parameters of each run an input declaration asks for: one run, or one per
    modality with its modality parameter set."""
    if need.per_modality:
        return [{**need.params, need.modality_param: m} for m in modalities]
    return [dict(need.params)]


def finished_runs(spec: RunSpec) -> dict[str, RunResult]:
    """The finished runs under `spec`'s output root for its dataset, by spec hash (the first
    in name order where two share one)."""
    found: dict[str, RunResult] = {}
    for record_path in sorted((Path(spec.output_root) / spec.dataset.name).glob(f"*/{RECORD_NAME}")):
        try:
            record = RunResult.load(record_path)
        except (OSError, ValueError) as err:
            log.warning("ignoring %s while looking for input runs: %s", record_path, err)
            continue
        found.setdefault(record.extra.get("spec_hash"), record)
    return found


def resolve_inputs(spec: RunSpec, callbacks: list[Callable] | None) -> dict[str, list[RunResult]]:
    """The finished runs the method declares as `inputs`: named by a parameter, found by spec
    hash under the output root, or trained now (each once: a second run finds the first)."""
    cls = METHODS.get(spec.method)
    if not cls.inputs:
        return {}
    params = method_params(cls, spec.method_params)
    modalities = resolve_modalities(DATASETS.get(spec.dataset.name), spec.dataset.modalities)
    finished: dict[str, RunResult] | None = None  # read once, when a run is first looked up
    resolved: dict[str, list[RunResult]] = {}
    for need in cls.inputs:
        named = getattr(params, need.param) if need.param else None
        if named:
            paths = [named] if isinstance(named, (str, Path)) else list(named)
            resolved[need.name] = [RunResult.load(path) for path in paths]
            continue
        runs = []
        for variant in input_variants(need, modalities):
            wanted = input_spec(spec, need.method, variant)
            wanted_hash = spec_hash(to_dict(wanted))
            finished = finished_runs(wanted) if finished is None else finished
            if wanted_hash not in finished:
                log.info("%s needs a %s run %s: training it", spec.method, need.method, variant or "")
                finished[wanted_hash] = execute(wanted, None, callbacks=callbacks)
            runs.append(finished[wanted_hash])
        resolved[need.name] = runs
    return resolved


def execute(spec: RunSpec, run_dir: Path | None, resume: bool = False,
            callbacks: list[Callable] | None = None, evaluate_test: bool = True) -> RunResult:
    """Run a resolved spec in `run_dir` (None: a fresh directory; see `run`)."""
    inputs = resolve_inputs(spec, callbacks)
    seed_everything(spec.train.seed)
    device = resolve_device(spec.train.device)
    data = build_datamodule(spec.dataset)
    ctx = RunContext(data.info, spec.model, spec.train.seed, device, spec, inputs)
    method = build_method(spec.method, spec.method_params, ctx)
    check_trainable(spec, data, method)
    fresh = run_dir is None
    if fresh:
        run_dir = new_run_dir(spec, method.run_label())
    with RunLock(run_dir):
        if resume and (run_dir / RECORD_NAME).exists():
            raise RunDirectoryExistsError(f"{run_dir} finished while this resume waited: "
                                          f"{RECORD_NAME} exists; nothing to resume")
        identity = {"spec": to_dict(spec), "hash": spec_hash(to_dict(spec))}
        if fresh:
            write_json(run_dir / SPEC_NAME, to_dict(spec), "run spec")
        try:
            return _execute_locked(spec, data, method, run_dir, device, resume, identity, callbacks,
                                   evaluate_test)
        except RunInterrupted:
            raise
        except KeyboardInterrupt:
            raise RunInterrupted(run_dir, None, spec.train.epochs, _checkpointed(run_dir)) from None


def _checkpointed(run_dir: Path) -> int:
    """Epochs covered by the run directory's checkpoint (0 when there is none)."""
    path = run_dir / CHECKPOINT_NAME
    return int(ckpt.load(path, torch.device("cpu"))["epoch"]) if path.is_file() else 0


def _execute_locked(spec: RunSpec, data: Any, method: Any, run_dir: Path, device: torch.device,
                    resume: bool, identity: dict[str, Any], callbacks: list[Callable] | None,
                    evaluate_test: bool) -> RunResult:
    _keep_split_lists(data, run_dir)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    if method.procedure and not evaluate_test:
        raise SpecError(f"{spec.method} is an evaluation procedure: its result is measured on the "
                        f"test split, so it has no validation-only form")
    if method.procedure:
        metrics, extra, history = method.run_procedure(data, run_dir, device), {}, []
    else:
        metrics, extra, history = _train_and_evaluate(spec, data, method, run_dir, device,
                                                      resume, identity, callbacks, evaluate_test)
    metrics["wall_seconds"] = time.perf_counter() - started
    metrics["peak_memory_bytes"] = _peak_memory(device)
    extra["spec_hash"] = identity["hash"]
    if method.ctx.inputs:
        extra["inputs"] = {name: [str(r.run_dir) for r in runs]
                           for name, runs in method.ctx.inputs.items()}
    speed = {**FastPath.for_spec(spec.train, device).describe(), "precision": spec.train.precision}
    result = RunResult(run_dir, to_dict(spec), metrics, history, environment(device, speed), extra)
    result.save()
    _remove_finished_checkpoint(run_dir)
    log.info("%s on %s: acc=%.4f, record %s", spec.method, spec.dataset.name,
             metrics.get("acc", float("nan")), result.record_path)
    return result


def _remove_finished_checkpoint(run_dir: Path) -> None:
    """The fit's last checkpoint, once the record is written: it exists for a run stopped
    between its fit and its record, and holds the selected weights (best_model.pt has them),
    the history and the counts (the record has them); a finished run is never resumed. Kept,
    it would double the disk a finished run takes (85 MiB more for the ResNet18-AV pair)."""
    path = run_dir / CHECKPOINT_NAME
    try:
        path.unlink(missing_ok=True)
    except OSError as err:  # the run is complete either way
        log.warning("could not remove %s, which the finished run no longer needs: %s", path,
                    err.strerror or err)


def verified_checkpoint(run_dir: Path, identity: dict[str, Any], device: torch.device
                        ) -> dict[str, Any]:
    """The run's checkpoint, refused when it was written under other settings than spec.json's."""
    path = run_dir / CHECKPOINT_NAME
    state = ckpt.load(path, device)
    stored = state["run"] or {}
    if stored.get("hash") != identity["hash"]:
        differences = spec_differences(stored.get("spec") or {}, identity["spec"])
        raise ckpt.CheckpointError(
            f"{path} was written under other settings than {run_dir / SPEC_NAME} now holds, so "
            f"continuing would mix two experiments (checkpoint -> spec.json):\n  "
            + "\n  ".join(differences or ["(the checkpoint records no settings)"])
            + f"\n{SPEC_NAME} was changed after the run started: restore it, or start a new run")
    return state


def _train_and_evaluate(spec: RunSpec, data, method, run_dir: Path, device: torch.device,
                        resume: bool, identity: dict[str, Any], callbacks, evaluate_test: bool
                        ) -> tuple[dict[str, Any], dict[str, Any], list]:
    # Verified before anything is opened in the run directory: a refused resume adds no file.
    state = verified_checkpoint(run_dir, identity, device) if resume else None
    model = method.build_model()
    training = TrainingData(data.info, data.train, data.val, data.collate, data.train_eval)
    callbacks = list(callbacks or [])
    board = (TensorBoardLogger(run_dir / "tensorboard",
                               resumed_at=None if state is None else state["epoch"])
             if spec.train.tensorboard and tensorboard_available() else None)
    if board is not None:
        callbacks.append(board)
    # The run's file writes after the fit (its last checkpoint, then the selected weights) go
    # to one thread, in that order, while the test split is evaluated; leaving the block waits
    # for them, so the record is never written before they are.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bbench-write") as writer:
        # Its thread starts here and waits, idle, for the fit's end: started there, by the
        # first write, it took 2-8 ms of an mfeat fit on a 2-core CPU that had just trained.
        writer.submit(lambda: None).result()
        try:
            trainer = Trainer(spec.train, training, method, model, run_dir, callbacks=callbacks,
                              run_identity=identity, writer=writer)
            try:
                fit = trainer.fit(resume_state=state)
            except KeyboardInterrupt:
                raise RunInterrupted(run_dir, trainer.epoch, spec.train.epochs,
                                     trainer.settled_checkpoint()) from None
            except OutputWriteError as err:
                raise _with_resume_hint(err, trainer, run_dir) from None
        finally:
            if board is not None:
                board.close()
        model.load_state_dict(fit.best_state)
        selected = writer.submit(ckpt.save_file, run_dir / BEST_MODEL_NAME, fit.best_state,
                                 "selected weights")
        try:
            metrics, extra = (evaluate_on_test(spec, data, method, model, device) if evaluate_test
                              else ({}, {"validation_only": True}))
        except KeyboardInterrupt:
            raise RunInterrupted(run_dir, spec.train.epochs, spec.train.epochs,
                                 trainer.settled_checkpoint()) from None
        except BaseException:
            trainer.settled_checkpoint()  # a failed write is logged beside the error raised
            raise
    try:
        final_seconds = trainer.wait_for_checkpoint()
        selected.result()
    except OutputWriteError as err:
        raise _with_resume_hint(err, trainer, run_dir) from None
    if final_seconds is not None:  # its own time: the fit's no longer includes it
        metrics["final_checkpoint_seconds"] = final_seconds
    metrics.update({
        "train_flops": fit.train_flops,
        "train_flops_by_region": fit.flops_by_region,
        "train_flops_mode": spec.train.flops,
        "train_flops_reused": fit.flops_reused,
        "train_seconds": fit.train_seconds,
        "fit_seconds": fit.fit_seconds,
        "train_samples": fit.samples_seen,
        "train_steps": fit.steps,
        "samples_per_second": fit.samples_seen / fit.train_seconds if fit.train_seconds else 0.0,
        "best_epoch": fit.best_epoch,
        "val_acc": fit.best_val.get("acc"),
        "val_loss": fit.best_val.get("loss"),
        "num_params": sum(p.numel() for p in model.parameters()),
        **({"active_epochs": method.active_epochs(spec.train.epochs)} if method.windowed else {}),
        **forward_flops(method, model, data, device),
    })
    return metrics, extra, fit.history


def _with_resume_hint(err: OutputWriteError, trainer: Trainer, run_dir: Path
                      ) -> OutputWriteError:
    """A failed write of the run's files, with how to go on from the last checkpoint written."""
    if not trainer.checkpointed_epoch:
        return err
    return OutputWriteError(
        f"{err}. The checkpoint of epoch {trainer.checkpointed_epoch} is usable: once there is "
        f"room, continue with: python -m bbench run --resume {shlex.quote(str(run_dir))}")


def evaluate_on_test(spec: RunSpec, data, method, model, device: torch.device
                     ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The one read of the test split (architecture principle 5): accuracy, F1, Shapley, I."""
    eval_started = time.perf_counter()
    test_loader = eval_loader(data.test, spec.eval.batch_size, data.collate, spec.train.num_workers)
    test_predictions = predict(method, model, test_loader, device)
    metrics: dict[str, Any] = split_metrics(test_predictions, data.info.num_classes)
    metrics["test_size"] = evaluation_size(test_predictions.labels, data.info.num_classes)
    extra: dict[str, Any] = {}
    if spec.eval.shapley and method.imbalance_undefined:
        extra["shapley"] = {"not_computed": method.imbalance_undefined}
    elif spec.eval.shapley:
        shapley = compute_shapley(method, model, test_loader, device, mask=spec.eval.mask)
        metrics["shapley"] = shapley.values
        metrics["imbalance"] = shapley.imbalance
        # v(S) for every S: the test accuracy with the other modalities missing, which the
        # robustness table reports; the counts are the ones Shapley just computed.
        metrics["subset_acc"] = shapley.subset_accuracy
        extra["shapley"] = {"subset_accuracy": shapley.subset_accuracy, "path": shapley.path,
                            "mask": spec.eval.mask, "samples": shapley.samples}
    metrics["eval_seconds"] = time.perf_counter() - eval_started
    return metrics, extra


@torch.no_grad()
def forward_flops(method, model, data, device: torch.device) -> dict[str, Any]:
    """Forward FLOPs per sample: the fused evaluation forward and each encoder on its own."""
    batch = move_batch(next(iter(eval_loader(data.val, 1, data.collate))), device)
    with eval_mode(model):
        per_encoder = {m: count_forward_flops(model.encoders[m], batch[m])
                       for m in method.eval_modalities(model)}
        total = count_forward_flops(method.eval_logits, model, batch, unimodal=False)
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
