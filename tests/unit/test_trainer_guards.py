"""The Trainer refuses an epoch that would train nothing instead of reporting chance accuracy."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import Subset

from bbench.config.specs import ModelSpec, TrainSpec
from bbench.data.base import TensorMultimodalDataset
from bbench.engine.trainer import EmptyEpochError, Trainer
from bbench.methods.loop import TrainingData
from bbench.methods.base import Method, RunContext
from bbench.testing.methods import toy_batch, toy_info

INFO = toy_info()


class ShrinkingMethod(Method):
    """Trains on two samples from epoch 1 on (as a resampling method might)."""

    name = "Shrinking"

    def on_epoch_start(self, trainer, epoch):
        return Subset(trainer.data.train, [0, 1]) if epoch >= 1 else None


def test_an_epoch_smaller_than_one_batch_is_refused_naming_both_sizes():
    batch = toy_batch(INFO, n=16)
    split = TensorMultimodalDataset({m: batch[m] for m in INFO.modalities}, batch["label"])
    method = ShrinkingMethod(None, RunContext(INFO, ModelSpec(), 0, torch.device("cpu")))
    trainer = Trainer(TrainSpec(epochs=3, batch_size=8, progress=False),
                      TrainingData(INFO, split, split), method, method.build_model(),
                      count_flops=False)
    with pytest.raises(EmptyEpochError, match=r"epoch 1 has 2 samples, fewer than batch_size=8"):
        trainer.fit()
    assert len(trainer.history) == 1  # epoch 0 trained; nothing was reported for epoch 1
