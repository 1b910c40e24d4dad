"""`synthetic`: Gaussian multimodal data whose per-modality informativeness is set by hand.

Why it exists: tests of methods, metrics and the trainer need a dataset where the answer is
known in advance -- which modality is strong, which is weak, that fusing them helps -- and
that any number of modalities with any names can be asked for, in milliseconds.

Generative model, per modality m with informativeness r_m: every sample has a label y
(classes balanced within each split); the modality's features are r_m · mu_m[y] plus standard
Gaussian noise, drawn independently for each modality. The class means mu_m[k] lie at distance
`SEPARATION` from the origin (orthonormal directions, distinct per modality, when dims >=
num_classes). So r = 0 carries no label information at all, r = 1 is nearly perfectly
(linearly) separable, accuracy grows monotonically in between, and because the noise of the
modalities is independent, each one adds evidence and fusing them beats each one alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, TypeVar, Union

import numpy as np
import torch

from bbench.config.fields import SpecError, param
from bbench.config.specs import DatasetSpec
from bbench.data.base import DataInfo, DataModule, TensorMultimodalDataset
from bbench.data.registry import DatasetEntry, register_dataset, resolve_modalities

DEFAULT_MODALITIES: tuple[str, ...] = ("a", "b")
SEPARATION = 4.0
"""Distance of every class mean from the origin at informativeness 1, in noise std units
(pairwise distance 4·√2 ≈ 5.7: about 99% linear accuracy for 4 classes)."""

_OWNER = "dataset synthetic"
_SPLITS = ("train", "val", "test")

N = TypeVar("N", int, float)


@dataclass(frozen=True)
class SyntheticOptions:
    """Options of the `synthetic` dataset; modality names come from `spec.modalities`."""

    num_classes: int = param(4, ge=2)
    dims: Union[int, tuple[int, ...]] = param(
        8, ge=1, doc="feature width per modality: one value for all, or one per modality")
    informativeness: Union[float, tuple[float, ...]] = param(
        (0.9, 0.3), ge=0, le=1,
        doc="per modality: 0 = no label information, 1 = nearly separable; one value or one per modality")
    n_train: int = param(256, ge=1)
    n_val: int = param(64, ge=1)
    n_test: int = param(128, ge=1)

    def __post_init__(self) -> None:
        """Check the elements of the tuple forms, which the field ranges cannot see."""
        for i, d in enumerate(_as_tuple(self.dims)):
            if d < 1:
                raise SpecError(f"{_OWNER}: dims[{i}]={d!r} is out of range; need dims >= 1")
        for i, r in enumerate(_as_tuple(self.informativeness)):
            if not 0.0 <= r <= 1.0:
                raise SpecError(f"{_OWNER}: informativeness[{i}]={r!r} is out of range; "
                                f"need 0 <= informativeness <= 1")


def _as_tuple(value: N | tuple[N, ...]) -> tuple[N, ...]:
    return value if isinstance(value, tuple) else (value,)


def per_modality(value: N | tuple[N, ...], field: str, modalities: Sequence[str]) -> tuple[N, ...]:
    """One value per modality: a single value is shared, a tuple must match the modalities."""
    values = _as_tuple(value)
    if len(values) == 1:
        return values * len(modalities)
    if len(values) != len(modalities):
        raise SpecError(f"{_OWNER}: {field}={value!r} has {len(values)} values but the run has "
                        f"{len(modalities)} modalities ({', '.join(modalities)}); give one value "
                        f"per modality or a single value")
    return values


def class_means(rng: np.random.Generator, num_classes: int, dim: int) -> np.ndarray:
    """(num_classes, dim) means at distance SEPARATION from 0; orthonormal when dim >= classes."""
    if dim >= num_classes:
        q, _ = np.linalg.qr(rng.standard_normal((dim, num_classes)))
        directions = q.T
    else:
        g = rng.standard_normal((num_classes, dim))
        directions = g / np.linalg.norm(g, axis=1, keepdims=True)
    return SEPARATION * directions


def sample_split(rng: np.random.Generator, n: int, means: Sequence[np.ndarray],
                 informativeness: Sequence[float]) -> tuple[list[np.ndarray], np.ndarray]:
    """Features per modality and balanced labels of one split (see the module docstring)."""
    num_classes = means[0].shape[0]
    labels = rng.permutation(np.arange(n) % num_classes)
    features = [(r * mu[labels] + rng.standard_normal((n, mu.shape[1]))).astype(np.float32)
                for mu, r in zip(means, informativeness)]
    return features, labels.astype(np.int64)


def build_synthetic(spec: DatasetSpec, options: SyntheticOptions) -> DataModule:
    """Deterministic splits for `spec.split_seed`; each split has its own random stream, so
    changing one split's size leaves the others unchanged."""
    modalities = resolve_modalities(ENTRY, spec.modalities)
    dims = per_modality(options.dims, "dims", modalities)
    informativeness = per_modality(options.informativeness, "informativeness", modalities)
    seed = spec.split_seed
    means = [class_means(np.random.default_rng([seed, 0, j]), options.num_classes, d)
             for j, d in enumerate(dims)]
    sizes = {"train": options.n_train, "val": options.n_val, "test": options.n_test}
    splits = {}
    for k, split in enumerate(_SPLITS):
        features, labels = sample_split(np.random.default_rng([seed, 1, k]), sizes[split],
                                        means, informativeness)
        splits[split] = TensorMultimodalDataset(
            {m: torch.from_numpy(x) for m, x in zip(modalities, features)},
            torch.from_numpy(labels), ids=[f"{split}-{i}" for i in range(sizes[split])])
    info = DataInfo(name="synthetic", modalities=modalities, num_classes=options.num_classes,
                    input_shapes={m: (d,) for m, d in zip(modalities, dims)},
                    input_dtypes={m: torch.float32 for m in modalities})
    return DataModule(info=info, train=splits["train"], val=splits["val"], test=splits["test"])


ENTRY = register_dataset(DatasetEntry(
    name="synthetic", build=build_synthetic, options=SyntheticOptions,
    modalities=DEFAULT_MODALITIES, available_modalities=DEFAULT_MODALITIES, num_classes=4,
    description="Gaussian classes with per-modality informativeness (tests); any modality "
                "names via the run's modalities", preset=None, open_modalities=True))
