"""The Trainer's training-pass loader: seeded like every bbench loader, and its workers persist.

A fresh DataLoader per epoch starts (and forks the dataset into) new worker processes every
epoch, which on the frame datasets costs seconds per epoch; `persistent_workers` keeps them,
but then the workers hold copies of the split made when they started, and a split's
`set_epoch` (its augmentations are keyed by (seed, epoch, index)) in the main process no
longer reaches them. So the sampler here yields (epoch, index) pairs and `EpochKeyed` sets
the epoch in whichever process reads the sample: a sample is the same function of (seed,
epoch, index) with 0, 2 or 8 workers, persistent or not. A batch's key is its list of
indices carrying the epoch (`EpochBatch`), which a worker receives with the indices.

The order of pass (epoch, phase) is the one a fresh `DataLoader(shuffle=True,
generator=...)` seeded with `loader_seed(seed, epoch, phase)` draws (`Trainer.train_loader`,
which methods use): that loader takes one int64 draw from its generator when an iteration
starts (the workers' base seed), then `torch.randperm`. The sampler here
makes the same draws, so bbench's shuffles (and every committed baseline) are unchanged; a
property test compares the two orders for random sizes and seeds, and fails if a torch
release changes the DataLoader's draws.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from bbench.engine import host_memory


DATALOADER_DRAWS = 1
"""Draws a DataLoader takes from its generator before its sampler's first (torch 2.x: the
workers' base seed)."""


def loader_seed(seed: int, epoch: int, phase: int) -> int:
    """Shuffling seed of one pass: a function of (run seed, epoch, phase) so resume needs no state."""
    return (seed * 1_000_003 + epoch * 1_009 + phase) % (2**63 - 1)


def new_loader(dataset: Dataset, **options: Any) -> DataLoader:
    """`DataLoader(dataset, **options)`, the way bbench builds every loader of a run: with
    workers, the heap's free pages are handed back first (`host_memory.release_free_pages`),
    since the workers fork from this heap on the loader's first iteration and would inherit
    them (copy-on-write faults in both processes; docs/benchmarks.md, host memory reuse)."""
    if options.get("num_workers", 0) > 0:
        host_memory.release_free_pages()
    return DataLoader(dataset, **options)


class EpochBatch(list):
    """One batch's sample indices, and the epoch they are read for."""

    def __init__(self, indices: list[int], epoch: int) -> None:
        super().__init__(indices)
        self.epoch = epoch  # pickled with the indices when a worker process reads the batch


class EpochKeyed(Dataset):
    """A split read by `EpochBatch` keys: the epoch is set in the reading process."""

    def __init__(self, base: Dataset) -> None:
        self.base = base
        self._set_epoch: Callable[[int], None] | None = getattr(base, "set_epoch", None)
        self._getitems: Callable[[list[int]], Any] | None = getattr(base, "__getitems__", None)

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitems__(self, batch: EpochBatch) -> Any:
        """One batch; the base's own batched read when it has one."""
        if self._set_epoch is not None:
            self._set_epoch(batch.epoch)
        return (self._getitems(batch) if self._getitems is not None
                else [self.base[i] for i in batch])


class SeededBatches(Sampler[EpochBatch]):
    """Batches of the pass set by `at(epoch, phase)`, drop_last."""

    def __init__(self, size: int, batch_size: int, seed: int) -> None:
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.epoch, self.phase = 0, 0

    def at(self, epoch: int, phase: int) -> None:
        self.epoch, self.phase = epoch, phase

    def __len__(self) -> int:
        return self.size // self.batch_size

    def __iter__(self) -> Iterator[EpochBatch]:
        generator = torch.Generator().manual_seed(loader_seed(self.seed, self.epoch, self.phase))
        for _ in range(DATALOADER_DRAWS):
            torch.empty((), dtype=torch.int64).random_(generator=generator)
        order = torch.randperm(self.size, generator=generator).tolist()
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            yield EpochBatch(order[start:start + self.batch_size], self.epoch)


class PassLoaders:
    """One persistent loader per training split; `for_pass` re-seeds it for a pass."""

    def __init__(self, batch_size: int, seed: int, collate: Callable,
                 options: dict[str, Any]) -> None:
        self.batch_size, self.seed, self.collate = batch_size, seed, collate
        self.options = {**options, "persistent_workers": options.get("num_workers", 0) > 0}
        self._split: Dataset | None = None
        self._loader: DataLoader | None = None
        self._batches: SeededBatches | None = None

    def for_pass(self, split: Dataset, epoch: int, phase: int) -> DataLoader:
        """The loader over `split` in the order of pass (epoch, phase). A split other than
        the last one (a method's resampled set) gets a new loader and new workers."""
        if split is not self._split:
            self._loader = None  # the last split's workers go before the new ones fork
            self._batches = SeededBatches(len(split), self.batch_size, self.seed)  # type: ignore[arg-type]
            self._loader = new_loader(EpochKeyed(split), batch_sampler=self._batches,
                                      collate_fn=self.collate, **self.options)
            self._split = split
        self._batches.at(epoch, phase)
        return self._loader

    def close(self) -> None:
        """Let the workers go (they exit when their loader is collected)."""
        self._split = self._loader = self._batches = None
