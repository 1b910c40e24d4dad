import pytest
import torch

from bbench.methods.modality_valuation import coalition_values, sample_copy_counts
from bbench.metrics.shapley import shapley_tensor
from bbench.testing.methods import one_step, toy_batch, toy_info


def test_sample_level_copy_counts_follow_the_strict_thresholds():
    phi = torch.tensor([[-0.5, 0.0, 0.5, 1.0, 1.5], [0.4, -0.1, 0.39, 0.41, -0.11]], dtype=torch.float64)
    assert sample_copy_counts(phi).tolist() == [[3, 2, 1, 0, 0], [0, 0, 2, 1, 3]]


@pytest.mark.parametrize("M", [2, 3])
def test_per_sample_efficiency_and_two_modality_value_set(M):
    correct = torch.randint(0, 2, (200, 1 << M), generator=torch.Generator().manual_seed(M)).bool()
    phi = shapley_tensor(coalition_values(correct))
    torch.testing.assert_close(phi.sum(1), M * correct[:, -1].double())
    if M == 2:
        assert set(phi.flatten().tolist()) <= {-0.5, 0.0, 0.5, 1.0, 1.5}


def _valuation_trainer(level: str):
    info = toy_info(dims=(6, 4), num_classes=3)
    batch = toy_batch(info, n=40)
    trainer, _ = one_step("ModalityValuation", {"level": level, "start": 0}, info, batch)
    return trainer


@pytest.mark.parametrize("level", ["sample", "modality"])
def test_epoch_set_holds_originals_once_plus_single_modality_copies(level):
    trainer = _valuation_trainer(level)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    dataset = trainer.method.on_epoch_start(trainer, 1)
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v, before[k]), f"valuation changed {k}"
    N = len(trainer.data.train)
    keep = dataset.keep
    assert torch.equal(dataset.entries[:N], torch.arange(N))
    assert keep[:N].all()
    assert (keep[N:].sum(1) == 1).all()
    logged = trainer.method.log.flush()
    copies = [logged[f"copies_{m}"] for m in trainer.method.modalities]
    assert len(dataset) == N + sum(copies) == logged["train_size"]
    if level == "sample":
        phi = trainer.method.valuate(trainer)
        expected = sample_copy_counts(phi).sum(0)
        assert [int(keep[N:, m].sum()) for m in range(2)] == expected.tolist()


def test_inactive_epochs_train_on_the_original_split():
    info = toy_info(dims=(6, 4), num_classes=3)
    trainer, _ = one_step("ModalityValuation", {"start": 2}, info, toy_batch(info, n=40))
    assert trainer.method.on_epoch_start(trainer, 1) is None
