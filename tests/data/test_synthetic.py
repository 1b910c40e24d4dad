"""The `synthetic` dataset: determinism, options, names, and informativeness that means what it says."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import pytest
import torch

from bbench.config.specs import DatasetSpec
from bbench.data import DataModule, build_datamodule


def synthetic(modalities: tuple[str, ...] | None = None, split_seed: int = 0,
              **options: Any) -> DataModule:
    return build_datamodule(DatasetSpec(name="synthetic", modalities=modalities,
                                        split_seed=split_seed, options=options))


@contextmanager
def single_thread() -> Iterator[None]:
    """Run tiny tensor ops on one thread: on a busy machine with few cores, OpenMP workers
    contending for the CPU make a 300-step probe take seconds instead of ~50 ms."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def linear_probe_accuracy(dm: DataModule, modalities: tuple[str, ...]) -> float:
    """Test accuracy of multinomial logistic regression on the concatenated modalities,
    fitted by 300 steps of full-batch gradient descent."""
    x = torch.cat([dm.train.features[m] for m in modalities], 1)
    x_test = torch.cat([dm.test.features[m] for m in modalities], 1)
    weight = torch.zeros(x.shape[1], dm.info.num_classes, requires_grad=True)
    bias = torch.zeros(dm.info.num_classes, requires_grad=True)
    with single_thread():
        for _ in range(300):
            loss = torch.nn.functional.cross_entropy(x @ weight + bias, dm.train.labels)
            grad_w, grad_b = torch.autograd.grad(loss, (weight, bias))
            with torch.no_grad():
                weight -= 0.5 * grad_w
                bias -= 0.5 * grad_b
        with torch.no_grad():
            return ((x_test @ weight + bias).argmax(1) == dm.test.labels).float().mean().item()


def test_defaults_shapes_and_balance() -> None:
    dm = synthetic()
    assert dm.info.name == "synthetic" and dm.info.modalities == ("a", "b")
    assert dm.info.num_classes == 4 and dm.info.input_shapes == {"a": (8,), "b": (8,)}
    assert (len(dm.train), len(dm.val), len(dm.test)) == (256, 64, 128)
    assert torch.bincount(dm.train.labels).tolist() == [64] * 4
    assert dm.train.features["a"].dtype == torch.float32 and dm.train.labels.dtype == torch.int64
    assert dm.test.ids[0] == "test-0"


def test_deterministic_per_seed_and_splits_independent() -> None:
    a, b = synthetic(split_seed=3), synthetic(split_seed=3)
    for name in ("train", "val", "test"):
        assert torch.equal(a.split(name).features["a"], b.split(name).features["a"])
        assert torch.equal(a.split(name).labels, b.split(name).labels)
    assert not torch.equal(a.train.features["a"], synthetic(split_seed=4).train.features["a"])
    resized = synthetic(split_seed=3, n_val=10)
    assert torch.equal(resized.train.features["b"], a.train.features["b"])
    assert len(resized.val) == 10


def test_any_names_dims_and_broadcast() -> None:
    dm = synthetic(("rgb", "flow_2", "Text"), dims="4,16,2", informativeness=0.5, num_classes=3)
    assert dm.info.modalities == ("rgb", "flow_2", "Text")
    assert dm.info.input_shapes == {"rgb": (4,), "flow_2": (16,), "Text": (2,)}
    assert dm.train.__getitems__([0, 1, 2])["flow_2"].shape == (3, 16)


def test_informativeness_zero_is_chance_and_one_is_separable() -> None:
    dm = synthetic(("noise", "clean"), informativeness=(0.0, 1.0), n_train=512, n_test=512)
    assert linear_probe_accuracy(dm, ("noise",)) < 0.25 + 0.08
    assert linear_probe_accuracy(dm, ("clean",)) > 0.95


def test_modalities_carry_partly_independent_information() -> None:
    dm = synthetic(informativeness=(0.4, 0.4), n_train=512, n_test=512)
    single = max(linear_probe_accuracy(dm, ("a",)), linear_probe_accuracy(dm, ("b",)))
    assert linear_probe_accuracy(dm, ("a", "b")) > single + 0.05


@pytest.mark.parametrize("modalities, options, message", [
    (("a", "label"), {}, "modality name 'label' is not allowed"),
    (("a", "b-c"), {}, "modality name 'b-c' is not allowed"),
    (("a", ""), {}, "modality name '' is not allowed"),
    (("a", "a"), {}, "modality names must be distinct"),
    (("a", "b", "c"), {}, "informativeness=(0.9, 0.3) has 2 values but the run has 3 modalities"),
    (("a", "b", "c"), {"dims": (4, 4)}, "dims=(4, 4) has 2 values"),
    (None, {"informativeness": 1.5}, "informativeness=1.5 is out of range"),
    (None, {"informativeness": (0.5, 1.5)}, "informativeness[1]=1.5 is out of range"),
    (None, {"dims": (8, 0)}, "dims[1]=0 is out of range"),
    (None, {"dims": 0}, "dims=0 is out of range"),
    (None, {"num_classes": 1}, "num_classes=1 is out of range"),
    (None, {"n_train": 0}, "n_train=0 is out of range"),
    (None, {"classes": 3}, "unknown key 'classes'"),
])
def test_bad_specs_are_rejected_with_the_field_named(modalities: tuple[str, ...] | None,
                                                     options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as err:  # SpecError is a ValueError
        synthetic(modalities, **options)
    assert message in str(err.value) and "dataset synthetic" in str(err.value)
