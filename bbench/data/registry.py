"""The dataset registry: name -> how to build its DataModule and its typed options."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from bbench.config.fields import build
from bbench.config.specs import DatasetSpec
from bbench.data.base import DataModule, check_modality_names
from bbench.registry import Registry


@dataclass(frozen=True)
class DatasetEntry:
    """A registered dataset.

    `build(spec, options)` returns the DataModule; `options` is `spec.options` validated
    into the dataset's own `Options` dataclass. `modalities` is the default modality
    tuple (canonical order); `spec.modalities` may select a subset or another order among
    `available_modalities`.
    """

    name: str
    build: Callable[[DatasetSpec, Any], DataModule]
    options: type
    modalities: tuple[str, ...]
    available_modalities: tuple[str, ...]
    num_classes: int
    description: str = ""
    preset: str | None = None  # preset file stem under bbench/config/presets
    open_modalities: bool = False  # any valid names may be chosen (generated data)
    info_text: Callable[[], str] | None = None  # details and attribution for `bbench datasets --info`


DATASETS: Registry[DatasetEntry] = Registry("dataset")


def register_dataset(entry: DatasetEntry, aliases: tuple[str, ...] = ()) -> DatasetEntry:
    DATASETS.add(entry.name, entry, aliases=aliases)
    return entry


def resolve_modalities(entry: DatasetEntry, requested: tuple[str, ...] | None) -> tuple[str, ...]:
    """The run's modality tuple, checked against what the dataset offers."""
    if not requested:
        return entry.modalities
    if entry.open_modalities:
        try:
            return check_modality_names(requested)
        except ValueError as err:
            raise ValueError(f"dataset {entry.name}: {err}") from None
    unknown = [m for m in requested if m not in entry.available_modalities]
    if unknown:
        raise ValueError(
            f"dataset {entry.name}: unknown modality {unknown[0]!r}; available: "
            f"{', '.join(entry.available_modalities)}")
    if len(set(requested)) != len(requested):
        raise ValueError(f"dataset {entry.name}: modality listed twice in {', '.join(requested)}")
    return tuple(requested)


def build_datamodule(spec: DatasetSpec) -> DataModule:
    """Validate the dataset spec and build its splits."""
    entry = DATASETS.get(spec.name)
    options = build(entry.options, spec.options, f"dataset {entry.name}")
    return entry.build(spec, options)
