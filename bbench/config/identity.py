"""What identifies a run's results: the resolved spec minus the settings that cannot change them.

A checkpoint stores the hash of its run's spec; resuming with a spec that hashes differently
(an edited spec.json, a different --epochs) would continue one experiment as another and
report the mix as either, so the runner refuses it and lists each difference.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

RESUME_MAY_CHANGE: dict[str, str] = {
    "train.progress": "the progress display (--quiet)",
    "train.tensorboard": "whether per-epoch TensorBoard scalars are written",
    "train.num_workers": "the data-loading worker count (shuffling and augmentation are seeded "
                         "per epoch and sample, not per worker)",
    "train.prefetch_factor": "how many batches loader workers read ahead",
    "train.pin_memory": "whether host batches are page-locked before the copy to the GPU",
    "train.reuse_host_memory": "whether freed host buffers are kept for reuse (where buffers "
                               "live, not what is computed)",
    "train.modality_train_acc": "whether each modality's training accuracy is counted (what the "
                                "record shows, not what is trained)",
    "train.checkpoint_every": "how often checkpoints are written (resume is exact from any)",
    "train.checkpoint_seconds": "how often checkpoints are written (resume is exact from any)",
    "dataset.options.pack": "whether frames are read from the packed cache or decoded from the "
                            "image files (the same tensors either way, tests/data/test_pack.py)",
    "dataset.options.pack_verify": "whether the packed cache's checksums are verified on opening",
}
"""Settings a resumed run may change: they decide how a run is shown, not its numbers."""

RESULT_NEUTRAL: dict[str, str] = {
    **RESUME_MAY_CHANGE,
    "run_dir": "where the run is written",
    "output_root": "where new runs are written",
}
"""Settings left out of the spec hash: two runs that differ only in these have equal results."""


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys to leaf values: {"train": {"epochs": 3}} -> {"train.epochs": 3}."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = list(value) if isinstance(value, tuple) else value
    return flat


def result_settings(spec_tree: Mapping[str, Any]) -> dict[str, Any]:
    """The flattened spec without the result-neutral settings."""
    return {k: v for k, v in flatten(spec_tree).items() if k not in RESULT_NEUTRAL}


def spec_hash(spec_tree: Mapping[str, Any]) -> str:
    """sha256 of the result-determining settings (a resolved spec as plain data)."""
    blob = json.dumps(result_settings(spec_tree), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def spec_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """`key: old -> new` for every result-determining setting that differs."""
    a, b = result_settings(old), result_settings(new)
    missing = object()
    return [f"{key}: {_show(a.get(key, missing))} -> {_show(b.get(key, missing))}"
            for key in sorted(set(a) | set(b)) if a.get(key, missing) != b.get(key, missing)]


def _show(value: Any) -> str:
    return "(unset)" if not isinstance(value, (str, int, float, bool, list, dict, type(None))) \
        else json.dumps(value)
