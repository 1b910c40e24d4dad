"""Modality valuation (methods.md §4.1): per-sample Shapley contributions, then extra
training copies that keep only the low-contributing modality.

Valuation uses feature masking with the bias kept, v_i(S) = |S|·⟦argmax f(S)_i = y_i⟧,
and evaluates all 2^M coalitions from one encoder pass with `subset_correct`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import torch
from torch.utils.data import Dataset

from bbench import ops
from bbench.config.fields import LogUniform, SpecError, param
from bbench.data.base import KeepMaskDataset
from bbench.methods.base import Method, WindowParams
from bbench.methods.facts import Family
from bbench.methods.loop import TrainingLoop
from bbench.methods.registry import register_method
from bbench.metrics.shapley import shapley_tensor
from bbench.models.modes import eval_mode


@dataclass(frozen=True)
class ModalityValuationParams(WindowParams):
    level: Literal["sample", "modality"] = "modality"
    alpha: float = param(1.0, ge=0, search=LogUniform(0.1, 10.0))
    part_ratio: float = param(0.2, gt=0, le=1)
    start: int = param(1, ge=0)
    end: int = param(80, ge=0)


def sample_copy_counts(phi: torch.Tensor) -> torch.Tensor:
    """n_{i,m}: 1 if 0.4 < φ < 1; 2 if −0.1 < φ < 0.4; 3 if φ < −0.1; else 0 (strict bounds)."""
    counts = torch.zeros_like(phi, dtype=torch.long)
    counts[(phi > 0.4) & (phi < 1)] = 1
    counts[(phi > -0.1) & (phi < 0.4)] = 2
    counts[phi < -0.1] = 3
    return counts


def coalition_values(correct: torch.Tensor) -> torch.Tensor:
    """v_i(S) = |S|·correct[i, S] for a [N, 2^M] correctness table."""
    sizes = torch.tensor([bin(s).count("1") for s in range(correct.shape[1])],
                         dtype=torch.float64, device=correct.device)
    return correct.double() * sizes


@register_method("Sample")
class ModalityValuation(Method):
    name = "ModalityValuation"
    family = Family.DATA
    min_modalities = 2  # balances modalities against each other
    extra_passes = True  # a valuation pass over train each epoch, copies enlarge the epoch
    Params = ModalityValuationParams
    windowed = True

    def build_model(self):
        model = super().build_model()
        if not type(model.head).has_contributions():
            raise SpecError(f"ModalityValuation: fusion {self.ctx.model_spec.fusion!r} is not a "
                            f"linear late-fusion head; valuation needs concat, sum or shared")
        return model

    @torch.no_grad()
    def valuate(self, loop: TrainingLoop) -> torch.Tensor:
        """φ [N, M] for every training sample, indexed by its `index`; changes no parameter or buffer."""
        model = loop.model
        dataset = loop.data.train_for_eval
        phi = torch.zeros(len(dataset), len(self.modalities), dtype=torch.float64)
        with eval_mode(model):
            for batch in loop.eval_loader(dataset):
                batch = loop.to_device(batch)
                features = model.encode(batch)
                contrib, bias = model.head.affine_contributions(features)
                absent, _ = model.head.affine_contributions([torch.zeros_like(f[:1]) for f in features])
                correct, _ = ops.subset_correct(contrib, absent[:, 0], bias, batch["label"])
                phi[batch["index"].cpu()] = shapley_tensor(coalition_values(correct)).cpu()
        return phi

    def on_epoch_start(self, loop: TrainingLoop, epoch: int) -> Dataset | None:
        if not self.active(epoch):
            return None
        started = time.perf_counter()
        phi = self.valuate(loop)
        N, M = phi.shape
        if self.params.level == "sample":
            copies = self._sample_level(phi)
        else:
            copies = self._modality_level(phi)
        entries = torch.cat([torch.arange(N)] + [idx for idx in copies])
        keep = torch.cat([torch.ones(N, M, dtype=torch.bool)] + [
            torch.nn.functional.one_hot(torch.full((len(idx),), m), M).bool()
            for m, idx in enumerate(copies)])
        for m, name in enumerate(self.modalities):
            self.log.set(f"contrib_{name}", phi[:, m].mean())
            self.log.set(f"copies_{name}", len(copies[m]))
        self.log.set("train_size", len(entries))
        self.log.set("valuation_seconds", time.perf_counter() - started)
        return KeepMaskDataset(loop.data.train, entries, keep)

    def _sample_level(self, phi: torch.Tensor) -> list[torch.Tensor]:
        """For each modality m, sample i repeated n_{i,m} times."""
        counts = sample_copy_counts(phi)
        index = torch.arange(phi.shape[0])
        return [index.repeat_interleave(counts[:, m]) for m in range(phi.shape[1])]

    def _modality_level(self, phi: torch.Tensor) -> list[torch.Tensor]:
        """n_m = ⌊(gap_m − min gap)·(2/3)·α·N⌋ uniform draws keeping only m."""
        N, M = phi.shape
        part = torch.randint(0, N, (int(self.params.part_ratio * N),), generator=self.generator)
        gap = 1 - phi[part].mean(0) if len(part) else torch.ones(M, dtype=phi.dtype)
        n = torch.floor((gap - gap.min()) * (2 / 3) * self.params.alpha * N).long()
        for m, name in enumerate(self.modalities):
            self.log.set(f"gap_{name}", gap[m])
        return [torch.randint(0, N, (int(n[m]),), generator=self.generator) for m in range(M)]
