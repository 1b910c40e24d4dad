"""A hand-written training loop doing exactly the work of a reference-method run's `Trainer.fit`.

Why it exists: the harness-overhead benchmark (`benchmarks/test_bench_overhead.py`) times
`bbench.run` against what an expert would write by hand for the same experiment, and the
ratio is only meaningful if both do identical work. So this loop builds everything the way
the runner does (global seeds, data module, model, optimizer, scheduler, each epoch's
seeded shuffling, the run's speed options of `FastPath`: loader options, memory layout,
compilation, cuDNN switches) and then trains with nothing but plain PyTorch: no method
hooks, no FLOP counting, no training accuracy, no checkpoints, no logging. Mixed precision
is not mirrored: the loop refuses `train.precision` other than fp32. `tests/unit/test_hand_loop.py`
proves the "identical work": the same initial and final weights, bit for bit, and the same
per-epoch validation results as the run.

The reference method's step is the one mirrored (forward of the multimodal model,
cross-entropy of the fused logits, backward, one optimizer step, the scheduler stepped once
per epoch); model selection is the Trainer's: the highest validation accuracy, at equal
accuracy the lower validation loss.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from bbench.benchmarking.timing import synchronize
from bbench.config.fields import SpecError
from bbench.config.specs import RunSpec
from bbench.data.base import DataModule, move_batch
from bbench.data.registry import build_datamodule
from bbench.engine.checkpoint import seed_everything
from bbench.engine.evaluate import eval_loader
from bbench.engine.fast_path import FastPath
from bbench.engine.optim import build_optimizer, build_scheduler
from bbench.engine.loading import loader_seed
from bbench.methods.registry import reference_method
from bbench.models.multimodal import MultimodalModel, build_multimodal_model
from bbench.runner import resolve_device


@dataclass
class HandFit:
    """What the hand loop returns: per-epoch validation, the selected epoch, and its time."""

    history: list[dict[str, float]]
    """One entry per epoch: `epoch`, `val_acc` (argmax accuracy), `val_loss` (mean CE) and
    `seconds` (its wall time: steps, validation, selection; the run record's epoch `seconds`)."""
    best_epoch: int
    best_state: dict[str, torch.Tensor]
    seconds: float
    """Wall time of the epochs: training steps, validation, selection and scheduler steps
    (the scope of the run record's `fit_seconds`); building data and model is outside it."""


class HandLoop:
    """The seeded set-up of a reference-method run, and its training loop written out by hand.

    Construction does what `bbench.runner.execute` does before `Trainer.fit`, in the same order
    (seed the global generators, build the data module, build the model), so the model starts
    from the run's initial weights; `fit()` trains it in place.
    """

    def __init__(self, spec: RunSpec) -> None:
        reference = reference_method()
        if spec.method != reference:
            raise SpecError(f"the hand-written loop mirrors the reference method {reference} only; "
                            f"the spec asks for {spec.method}")
        train = spec.train
        if train.precision != "fp32":
            raise SpecError(f"the hand-written loop trains in float32; train.precision="
                            f"{train.precision!r} asks for mixed precision (need 'fp32')")
        self.spec = spec
        seed_everything(train.seed)
        self.device = resolve_device(train.device)
        self.fast_path = FastPath.for_spec(train, self.device)
        self.data: DataModule = build_datamodule(spec.dataset)
        model = build_multimodal_model(self.data.info, spec.model).to(self.device)
        self.model: MultimodalModel = self.fast_path.prepare_model(model)
        self.optimizer = build_optimizer(train.optimizer, self.model.parameters())
        self.scheduler = build_scheduler(train.scheduler, self.optimizer)

    def fit(self) -> HandFit:
        """Train `spec.train.epochs` epochs, validating after each; returns the history."""
        train, data, model, device = self.spec.train, self.data, self.model, self.device
        options = self.fast_path.loader_options()
        val_loader = eval_loader(data.val, train.batch_size, data.collate, **options)
        history: list[dict[str, float]] = []
        best_epoch, best_acc, best_loss = -1, -math.inf, math.inf
        best_state: dict[str, torch.Tensor] = {}
        started = time.perf_counter()
        for epoch in range(train.epochs):
            epoch_started = time.perf_counter()
            order = torch.Generator().manual_seed(loader_seed(train.seed, epoch, 0))
            loader = DataLoader(data.train, batch_size=train.batch_size, shuffle=True,
                                drop_last=True, generator=order, collate_fn=data.collate,
                                **options)
            model.train()
            for batch in loader:
                batch = self.fast_path.batch_layout(move_batch(batch, device))
                self.optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(model(batch), batch["label"]).backward()
                self.optimizer.step()
            acc, loss = self._validate(val_loader)
            if acc > best_acc or (acc == best_acc and loss < best_loss):
                best_epoch, best_acc, best_loss = epoch, acc, loss
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            self.scheduler.step()
            history.append({"epoch": epoch, "val_acc": acc, "val_loss": loss,
                            "seconds": time.perf_counter() - epoch_started})
        synchronize(device)
        return HandFit(history, best_epoch, best_state, time.perf_counter() - started)

    @torch.no_grad()
    def _validate(self, loader: DataLoader) -> tuple[float, float]:
        """Argmax accuracy and mean cross-entropy over every validation sample, in eval mode."""
        self.model.eval()
        correct, loss_sum, count = 0, 0.0, 0
        for batch in loader:
            batch = move_batch(batch, self.device)
            logits, labels = self.model(batch), batch["label"]
            loss_sum += float(F.cross_entropy(logits.float(), labels, reduction="sum"))
            correct += int((logits.argmax(1) == labels).sum())
            count += int(labels.numel())
        return correct / max(count, 1), loss_sum / max(count, 1)
