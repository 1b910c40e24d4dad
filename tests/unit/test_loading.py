"""The Trainer's pass loader (engine/loading.py): the same order as every bbench loader, and
samples that are a function of (seed, epoch, index) with persistent workers too."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch.utils.data import DataLoader, Dataset

from bbench.data.base import TensorMultimodalDataset, collate_samples
from bbench.engine import host_memory
from bbench.engine.evaluate import eval_loader
from bbench.engine.loading import PassLoaders, loader_seed, new_loader


class EpochTagged(Dataset):
    """Sample i of epoch e is (i, e): what an augmentation keyed by epoch would depend on."""

    def __init__(self, n: int) -> None:
        self.n, self.epoch = n, -1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"index": torch.tensor(i), "epoch": torch.tensor(self.epoch)}


def reference_order(n: int, batch_size: int, seed: int, epoch: int, phase: int) -> list[list[int]]:
    """What `Trainer.train_loader` (shuffle with a seeded generator, drop_last) yields."""
    generator = torch.Generator().manual_seed(loader_seed(seed, epoch, phase))
    loader = DataLoader(range(n), batch_size=batch_size, shuffle=True, drop_last=True,
                        generator=generator)
    return [b.tolist() for b in loader]


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 70), batch_size=st.integers(1, 16), seed=st.integers(0, 10**6),
       epoch=st.integers(0, 100), phase=st.integers(0, 3))
def test_a_pass_has_the_order_of_the_seeded_dataloader(n, batch_size, seed, epoch, phase):
    labels = torch.arange(n)
    split = TensorMultimodalDataset({"a": labels.float()[:, None]}, labels)
    loader = PassLoaders(batch_size, seed, collate_samples, {"num_workers": 0}).for_pass(
        split, epoch, phase)
    assert [b["index"].tolist() for b in loader] == reference_order(n, batch_size, seed, epoch,
                                                                     phase)


def passes(num_workers: int, epochs: int = 3) -> list[list[tuple[int, int]]]:
    split = EpochTagged(20)
    loaders = PassLoaders(4, 7, collate_samples, {"num_workers": num_workers})
    seen = []
    for epoch in range(epochs):
        split.set_epoch(epoch)  # what the Trainer does; workers never see this call
        loader = loaders.for_pass(split, epoch, 0)
        seen.append([(int(i), int(e)) for b in loader for i, e in zip(b["index"], b["epoch"])])
    assert loader.persistent_workers == (num_workers > 0)
    loaders.close()
    return seen


@pytest.mark.slow
def test_persistent_workers_read_each_epoch_as_the_main_process_does():
    inline, workers = passes(0), passes(2)
    assert inline == workers
    assert all(e == epoch for epoch, rows in enumerate(workers) for _, e in rows)


def test_the_same_split_keeps_its_loader_and_a_new_split_gets_one():
    loaders = PassLoaders(2, 0, collate_samples, {"num_workers": 0})
    a, b = EpochTagged(6), EpochTagged(6)
    first = loaders.for_pass(a, 0, 0)
    assert loaders.for_pass(a, 1, 0) is first and loaders.for_pass(b, 1, 0) is not first


@pytest.mark.parametrize("num_workers", [0, 2])
def test_the_heaps_free_pages_are_released_before_new_workers_fork(monkeypatch, num_workers):
    """Workers forked from a heap full of free pages inherit them (docs: engine/host_memory.py):
    a loader that will start workers releases them first, once per new split."""
    released: list[int] = []
    monkeypatch.setattr(host_memory, "release_free_pages", lambda: released.append(1))
    loaders = PassLoaders(2, 0, collate_samples, {"num_workers": num_workers})
    a, b = EpochTagged(6), EpochTagged(6)
    loaders.for_pass(a, 0, 0)
    loaders.for_pass(a, 1, 0)
    loaders.for_pass(b, 1, 0)
    loaders.close()
    assert len(released) == (2 if num_workers else 0)


def test_every_loader_the_run_builds_releases_them_when_it_has_workers(monkeypatch):
    """`new_loader` is how the Trainer's pass, method and evaluation loaders are built."""
    released: list[int] = []
    monkeypatch.setattr(host_memory, "release_free_pages", lambda: released.append(1))
    split = EpochTagged(4)
    assert isinstance(new_loader(split, batch_size=2, num_workers=0), DataLoader)
    assert released == []
    assert eval_loader(split, 2, collate_samples, num_workers=2).num_workers == 2
    assert released == [1]
