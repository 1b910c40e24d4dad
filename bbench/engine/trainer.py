"""The one training loop (methods.md §1.4; architecture principle 1).

The Trainer owns epochs and steps, device placement, the optimizer (built from the
method's parameter groups) and the per-epoch scheduler, gradient zeroing, validation-based
model selection, checkpoints, FLOP accounting, mixed precision, logging and progress.
Methods plug in through their hooks and see the Trainer only as the `TrainingLoop`
protocol. The Trainer is given the training and validation splits only: test data cannot
steer training.

The loop's own cost stays out of the way of the method's (docs/benchmarks.md, harness
overhead): a step's FLOPs are counted once per step signature, the training loss and
accuracies are summed on the device and read once per epoch, the model is put in training
mode once per pass (evaluation helpers restore the mode they found), the optimizer uses
torch's multi-tensor kernels, and checkpoints are written at most every
`checkpoint_seconds` of training (and after the last epoch: given a `writer`, on its thread,
while the caller goes on to the test split).
"""
from __future__ import annotations

import logging
import math
import time
from concurrent.futures import Executor, Future
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from bbench.config.specs import TrainSpec
from bbench.data.base import Batch, move_batch
from bbench.engine import checkpoint as ckpt
from bbench.engine.evaluate import eval_loader, predict, split_metrics
from bbench.engine.fast_path import FastPath
from bbench.engine.flops import FlopAccount
from bbench.engine.loading import PassLoaders, loader_seed, new_loader
from bbench.engine.optim import build_optimizer, build_scheduler
from bbench.engine.precision import MixedPrecision
from bbench.engine.progress import Progress
from bbench.engine.train_accuracy import TrainingAccuracy
from bbench.methods.base import Method
from bbench.methods.loop import StepInfo, TrainingData

log = logging.getLogger("bbench")


class NonFiniteLossError(RuntimeError):
    """Training stopped because the loss became NaN or infinite."""


class EmptyEpochError(ValueError):
    """An epoch's training set is smaller than one batch: it would train nothing."""


@dataclass
class FitResult:
    history: list[dict[str, Any]]
    best_epoch: int
    best_val: dict[str, float]
    best_state: dict[str, torch.Tensor]
    train_flops: int
    flops_by_region: dict[str, int]
    flops_reused: int
    train_seconds: float
    fit_seconds: float  # wall time of fit: steps, hooks, validation, checkpoints (see `writer`)
    samples_seen: int
    steps: int


class Trainer:
    """Implements `bbench.methods.loop.TrainingLoop`: what the methods' hooks may use."""

    def __init__(self, spec: TrainSpec, data: TrainingData, method: Method, model: nn.Module,
                 run_dir: Path | None = None, count_flops: bool = True,
                 callbacks: list[Callable[["Trainer", int, dict[str, Any]], None]] | None = None,
                 run_identity: dict[str, Any] | None = None,
                 writer: Executor | None = None) -> None:
        """`writer`: where the checkpoint after the last epoch is written (`final_save` is
        its future; the caller waits for it before it relies on the file), so the write
        overlaps what the caller does next instead of adding to the fit. Without one it is
        written in `fit`, like every earlier checkpoint (which the next step would change the
        state of, so they cannot be handed over without a copy as costly as the write)."""
        self.spec = spec
        self.data = data
        self.method = method
        self.device = torch.device(spec.device)
        self.fast_path = FastPath.for_spec(spec, self.device)
        self.model = self.fast_path.prepare_model(model.to(self.device))
        self.optimizer = build_optimizer(spec.optimizer, method.param_groups(self.model))
        self.params = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.precision = MixedPrecision(spec.precision, self.device)
        self.passes = PassLoaders(spec.batch_size, spec.seed, data.collate,
                                  self.fast_path.loader_options())
        self._val_loader: DataLoader | None = None  # built at the first validation, kept
        self._train_accuracy = TrainingAccuracy(spec.modality_train_acc)  # read every epoch
        self.scheduler = build_scheduler(spec.scheduler, self.optimizer)
        self.run_dir = run_dir
        self.flops = FlopAccount(enabled=count_flops and spec.flops != "off")
        self.callbacks = list(callbacks or [])
        self.epoch = 0
        self.global_step = 0
        self.samples_seen = 0
        self.history: list[dict[str, Any]] = []
        self.best_epoch = -1
        self.best_val: dict[str, float] = {}
        self.best_state: dict[str, torch.Tensor] = {}
        self.train_seconds = 0.0
        # Stored in every checkpoint (the resolved spec and its hash) so a resume can verify it.
        self.run_identity = dict(run_identity or {})
        self.checkpointed_epoch = 0  # epochs covered by the last checkpoint written (one on
        # `writer` counts once waited for: `wait_for_checkpoint`)
        self._checkpointed_at = 0.0  # train_seconds when it was written
        self.writer = writer
        self.final_save: Future[float] | None = None  # the last epoch's checkpoint on `writer`

    # -- helpers methods use -----------------------------------------------------------------
    def zero_grad(self) -> None:
        """set_to_none=True: parameters without a gradient are not moved by momentum or decay."""
        self.optimizer.zero_grad(set_to_none=True)

    def optimizer_step(self) -> None:
        """The one place a step's update happens (skipped by fp16 loss scaling on overflow)."""
        self.precision.step(self.optimizer)

    def autocast(self) -> AbstractContextManager:
        """The low-precision region of a step's forward and loss (`train.precision`)."""
        return self.precision.autocast()

    def backward(self, loss: torch.Tensor, **kwargs: Any) -> None:
        """`loss.backward()`; under fp16 loss scaling the new gradients arrive unscaled."""
        self.precision.backward(loss, self.params, **kwargs)

    def grads(self, loss: torch.Tensor, inputs: list[torch.Tensor],
              **kwargs: Any) -> tuple[torch.Tensor | None, ...]:
        """`torch.autograd.grad(loss, inputs)`; unscaled under fp16 loss scaling."""
        return self.precision.grads(loss, inputs, **kwargs)

    def check_finite(self, loss: torch.Tensor, step: StepInfo) -> None:
        """The step's one host read: training cannot go on from a NaN (a scalar loss is read
        with one `.item()`, cheaper than a device-side check and a read of its result)."""
        finite = (math.isfinite(loss.item()) if loss.numel() == 1
                  else bool(torch.isfinite(loss.detach()).all()))
        if not finite:
            raise NonFiniteLossError(
                f"loss is {float(loss.detach().float().mean())} at epoch {step.epoch}, batch "
                f"{step.batch_index} (global step {step.global_step}); training stopped. Lower the "
                f"learning rate or check the inputs for NaN/inf.")

    def train_loader(self, dataset: Dataset, epoch: int, phase: int = 0,
                     shuffle: bool = True, drop_last: bool = True) -> DataLoader:
        generator = torch.Generator().manual_seed(loader_seed(self.spec.seed, epoch, phase))
        return new_loader(dataset, batch_size=self.spec.batch_size, shuffle=shuffle,
                          drop_last=drop_last, generator=generator, collate_fn=self.data.collate,
                          **self.fast_path.loader_options())

    def eval_loader(self, dataset: Dataset) -> DataLoader:
        return eval_loader(dataset, self.spec.batch_size, self.data.collate,
                           **self.fast_path.loader_options())

    def to_device(self, batch: Batch) -> Batch:
        return self.fast_path.batch_layout(move_batch(batch, self.device))

    # -- the loop ------------------------------------------------------------------------------
    def fit(self, resume_state: dict[str, Any] | None = None) -> FitResult:
        """Train to `spec.epochs`; `resume_state` (a loaded, verified checkpoint) continues a run."""
        if resume_state is not None:
            # Set-up runs again on the freshly built model (auxiliary models are rebuilt the
            # same way), then the checkpoint is restored over it, method state included. Its
            # FLOPs were counted once, in the run that started; the checkpoint holds them.
            self.method.on_fit_start(self)
            self._restore(resume_state)
        else:
            with self._hook_flops("on_fit_start"):
                self.method.on_fit_start(self)
        progress = Progress(self.spec.epochs, enabled=self.spec.progress,
                            label=f"{self.method.name}", start=self.epoch)
        started = time.perf_counter()
        try:
            while self.epoch < self.spec.epochs:
                record = self._run_epoch(self.epoch, progress)
                self.history.append(record)
                self.epoch += 1
                self._save_checkpoint()
                for callback in self.callbacks:
                    callback(self, self.epoch - 1, record)
        finally:
            progress.close()
            self.passes.close()
            self._val_loader = None  # its workers exit when it is collected
        return FitResult(self.history, self.best_epoch, self.best_val, self.best_state,
                         self.flops.total, dict(self.flops.regions), self.flops.reused,
                         self.train_seconds, time.perf_counter() - started,
                         self.samples_seen, self.global_step)

    def _run_epoch(self, epoch: int, progress: Progress) -> dict[str, Any]:
        epoch_started = start = time.perf_counter()
        lr = self.optimizer.param_groups[0]["lr"]
        active = self.method.active(epoch)
        with self._hook_flops("on_epoch_start"):
            train_set = self.method.on_epoch_start(self, epoch) or self.data.train
        losses: list[torch.Tensor] = []  # summed once at the end of the epoch
        correct = self._train_accuracy
        steps, seen = 0, 0
        set_epoch = getattr(train_set, "set_epoch", None)
        if set_epoch is not None:  # augmentation randomness keyed by (seed, epoch, index)
            set_epoch(epoch)
        for phase in range(self.method.phases(epoch)):
            loader = self.passes.for_pass(train_set, epoch, phase)
            n_b = len(loader)
            if n_b == 0:  # drop_last with fewer samples than a batch: the epoch would not train
                raise EmptyEpochError(
                    f"{self.method.name}: the training set of epoch {epoch} has {len(train_set)} "
                    f"samples, fewer than batch_size={self.spec.batch_size}, so no step would "
                    f"run; use --set batch_size=N with N <= {len(train_set)}")
            self.model.train()  # once per pass: hooks and evaluation restore the mode they found
            for j, batch in enumerate(loader):
                batch = self.to_device(batch)
                info = StepInfo(epoch, j, n_b, self.global_step, phase, active)
                with self.flops.count_step(self._step_signature(batch, info)):
                    result = self.method.train_step(self, batch, info)
                losses.append(result.loss)  # detached by the method; no host read
                steps += 1
                self.global_step += 1
                seen += int(batch["label"].shape[0])
                if result.out is not None:
                    correct.add(result.out, batch["label"])
        hits = correct.read()
        with torch.no_grad():
            loss_sum = float(torch.stack(losses).double().sum())
        self.samples_seen += seen
        self.train_seconds += time.perf_counter() - start
        if self._val_loader is None:
            self._val_loader = eval_loader(self.data.val, self.spec.batch_size, self.data.collate,
                                           **self.fast_path.loader_options(persistent=True))
        val = split_metrics(predict(self.method, self.model, self._val_loader, self.device),
                            self.data.info.num_classes)
        if self._improves(val):  # keep the weights that were validated, before on_epoch_end edits
            self.best_epoch, self.best_val = epoch, dict(val)
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        start = time.perf_counter()
        with self._hook_flops("on_epoch_end"):
            self.method.on_epoch_end(self, epoch)
        self.scheduler.step()
        self.train_seconds += time.perf_counter() - start
        record: dict[str, Any] = {
            "epoch": epoch, "lr": lr, "train_loss": loss_sum / max(steps, 1),
            "steps": steps, "train_samples": seen,
            **{f"train_{k}": v / max(seen, 1) for modalities, counts in hits.items()
               for k, v in zip(("acc", *(f"acc_{m}" for m in modalities)), counts)},
            **{f"val_{k}": v for k, v in val.items()},
            "method": self._method_record(epoch),
            "seconds": time.perf_counter() - epoch_started,  # passes, validation, epoch end
        }
        if not math.isfinite(record["train_loss"]):
            raise NonFiniteLossError(f"mean training loss of epoch {epoch} is not finite")
        progress.epoch_done(epoch, record["train_loss"], val["acc"])
        log.debug("epoch %d: %s", epoch, record)
        return record

    def _hook_flops(self, hook: str) -> AbstractContextManager:
        """The FLOP region of a method hook (`on_epoch_end` -> `epoch_end`). A hook the method
        does not override runs no code: its region gets 0 without entering FlopCounterMode,
        which costs a small run's epoch more than the loop's own bookkeeping."""
        region = hook.removeprefix("on_")
        if getattr(type(self.method), hook) is getattr(Method, hook):
            return self.flops.skip(region)
        return self.flops.count(region)

    def _step_signature(self, batch: Batch, info: StepInfo) -> tuple | None:
        """What a step's FLOPs depend on (flops.py); None in `all` mode (count every step) and
        when nothing is counted (`count_step` then looks at no signature)."""
        if not self.flops.enabled or self.spec.flops != "signature":
            return None
        shapes = tuple([(k, v.shape) for k, v in batch.items() if isinstance(v, torch.Tensor)])
        return info.phase, info.active, self.method.step_branch(info), shapes

    def _improves(self, val: dict[str, float]) -> bool:
        """Model selection: higher validation accuracy; at equal accuracy, lower validation loss.

        Small validation sets saturate (mfeat's 140 samples reach the same accuracy for many
        epochs), and keeping the first of equals would ignore everything learnt afterwards.
        """
        best_acc = self.best_val.get("acc", -math.inf)
        return val["acc"] > best_acc or (val["acc"] == best_acc and val["loss"] < self.best_val["loss"])

    def _method_record(self, epoch: int) -> dict[str, float]:
        record = self.method.log.flush()
        if self.method.windowed:
            record["active"] = float(self.method.active(epoch))
        return record

    # -- checkpoints -----------------------------------------------------------------------------
    def _save_checkpoint(self) -> None:
        every = self.spec.checkpoint_every
        if self.run_dir is None or every == 0:
            return
        last = self.epoch == self.spec.epochs
        if not last and (self.epoch % every or self.train_seconds - self._checkpointed_at
                         < self.spec.checkpoint_seconds):
            return
        state: dict[str, Any] = {
            "run": self.run_identity, "finished": last,
            "epoch": self.epoch, "global_step": self.global_step, "samples_seen": self.samples_seen,
            "method": self.method.state_dict(),
            # Copies of the containers, down to each epoch record callbacks are given: the
            # last checkpoint is written on `writer` while the run goes on (the selected
            # weights are the copy made at the best epoch, the method's state a snapshot).
            "rng": ckpt.rng_state(), "best_epoch": self.best_epoch,
            "history": [{**r, "method": dict(r["method"])} for r in self.history],
            "best_val": dict(self.best_val), "best_state": self.best_state,
            "flops": self.flops.total, "flops_by_region": dict(self.flops.regions),
            "flops_reused": self.flops.reused,
            "flops_by_signature": dict(self.flops.by_signature),
            "train_seconds": self.train_seconds,
        }
        path = self.run_dir / ckpt.CHECKPOINT_NAME
        if last and self.writer is not None:
            self.final_save = self.writer.submit(ckpt.timed_save, path, state)
            return
        if not last:  # what the next epochs train from: the loop's parts of those names
            state.update({key: getattr(self, key).state_dict() for key in ckpt.TRAINING_KEYS})
        ckpt.save(path, state)
        self.checkpointed_epoch = self.epoch
        self._checkpointed_at = self.train_seconds

    def wait_for_checkpoint(self) -> float | None:
        """Wait for the last epoch's checkpoint on `writer`, and count it in
        `checkpointed_epoch`; the seconds its write took (None: there was none on `writer`).
        Raises the write's error (an `OutputWriteError` for a full disk)."""
        if self.final_save is None:
            return None
        seconds = self.final_save.result()
        self.checkpointed_epoch = self.spec.epochs
        return seconds

    def settled_checkpoint(self) -> int:
        """The epochs the run's checkpoint covers once a pending write has ended: what a run
        stopped now resumes from. A failed write counts nothing and is logged, since another
        error (an interrupt) is what stops the run."""
        try:
            self.wait_for_checkpoint()
        except Exception as err:
            log.warning("the checkpoint after the last epoch was not written: %s", err)
        return self.checkpointed_epoch

    def _restore(self, state: dict[str, Any]) -> None:
        finished = bool(state.get("finished"))
        if finished and state["epoch"] != self.spec.epochs:
            raise ckpt.CheckpointError(
                f"the checkpoint is of a fit that finished after {state['epoch']} epochs, and "
                f"this run trains {self.spec.epochs}: it holds no weights to train on from. "
                f"Start the run again")
        try:
            if finished:  # no further epoch: the selected weights are what the run goes on with
                self.model.load_state_dict(state["best_state"])
            else:
                for key in ckpt.TRAINING_KEYS:
                    getattr(self, key).load_state_dict(state[key])
            self.method.load_state_dict(state["method"])
        except (RuntimeError, KeyError, ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ckpt.CheckpointError(
                f"the checkpoint does not fit the model and method its run describes ({first}); "
                f"the run's files were changed after it started. Start the run again") from None
        ckpt.set_rng_state(state["rng"])
        self.epoch = state["epoch"]
        self.global_step = state["global_step"]
        self.samples_seen = state["samples_seen"]
        self.history = list(state["history"])
        self.best_epoch = state["best_epoch"]
        self.best_val = dict(state["best_val"])
        self.best_state = state["best_state"]
        self.flops.total = state["flops"]
        self.flops.regions = dict(state["flops_by_region"])
        self.flops.reused = state["flops_reused"]
        self.flops.by_signature = dict(state["flops_by_signature"])
        self.train_seconds = state["train_seconds"]
        self.checkpointed_epoch = self.epoch
        self._checkpointed_at = self.train_seconds
