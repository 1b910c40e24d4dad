"""The errors of the file-backed dataset loaders, and the hint that says how to fix missing data.

One job: every loader and every reading helper fails with a `DataFormatError` (or its
`MissingDataError` / `UnsafePickleError` refinements) whose message names the file, the expected
layout and the `bbench prepare` command that produces the data. The messages are built here,
once, so they read alike for all seven paper datasets. This module imports nothing of bbench,
so every other data module can depend on it.
"""
from __future__ import annotations

import pickle
from pathlib import Path


class DataFormatError(ValueError):
    """Data is missing or malformed; the message names the file, the layout and the fix."""


class MissingDataError(DataFormatError, FileNotFoundError):
    """An expected file or folder does not exist."""


class UnsafePickleError(DataFormatError, pickle.UnpicklingError):
    """A pickle refers to a global outside the restricted unpickler's allow-list."""


def prepare_hint(dataset: str) -> str:
    return (f"produce it with `python -m bbench prepare {dataset} --raw DIR --out DIR`, or point "
            f"dataset.root (and the path options) at data prepared for BalanceMM; the expected "
            f"layout is in docs/datasets.md")


def missing(dataset: str, what: str, path: Path | str, layout: str) -> MissingDataError:
    """The error for a missing list file, folder or data file, with the layout and the fix."""
    return MissingDataError(f"{dataset}: {what} not found: {path}\nexpected layout:\n{layout}\n"
                            f"{prepare_hint(dataset)}")


def malformed(dataset: str, path: Path | str, problem: str) -> DataFormatError:
    return DataFormatError(f"{dataset}: {path}: {problem}; {prepare_hint(dataset)}")
