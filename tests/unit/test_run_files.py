"""Spec identity (hash, differences), atomic writes, strict JSON and the run-directory lock."""
from __future__ import annotations

import errno
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bbench.config.fields import SpecError, to_dict
from bbench.config.identity import RESULT_NEUTRAL, flatten, spec_differences, spec_hash
from bbench.config.resolve import resolve_spec
from bbench.results.files import (MalformedFileError, OutputWriteError, atomic_write, read_json,
                                  strict_json, write_json)
from bbench.results.lock import RunLock, RunLockedError


def _tree(**overrides):
    return to_dict(resolve_spec("OGM", "mfeat", overrides))


def test_hash_ignores_exactly_the_result_neutral_settings():
    base = spec_hash(_tree())
    assert spec_hash(_tree(progress="false", num_workers=2, out="elsewhere")) == base
    for changed in ({"epochs": 3}, {"alpha": 0.5}, {"seed": 1}, {"modalities": "fac,fou"},
                    {"train.flops": "all"}, {"eval.batch_size": 7}):
        assert spec_hash(_tree(**changed)) != base, changed
    assert set(RESULT_NEUTRAL) >= {"train.progress", "train.num_workers", "run_dir"}


def test_differences_name_each_changed_key_with_both_values():
    diffs = spec_differences(_tree(), _tree(epochs=3, alpha=0.5, progress="false"))
    assert diffs == ["method_params.alpha: 0.3 -> 0.5", "train.epochs: 70 -> 3"]
    assert spec_differences(_tree(), _tree()) == []


def test_flatten_keeps_empty_tables_as_leaves():
    assert flatten({"a": {"b": 1, "c": {}}, "d": (1, 2)}) == {"a.b": 1, "a.c": {}, "d": [1, 2]}


@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_non_finite_values_of_ranged_settings_are_refused(value):
    with pytest.raises(SpecError, match="out of range"):
        resolve_spec("OGM", "mfeat", {"alpha": value})


@pytest.mark.parametrize("device", ["tpu", "-1", "mps", "cuda:", "gpu0", ""])
def test_unusable_device_forms_are_refused_with_the_accepted_forms(device):
    with pytest.raises(SpecError, match="accepted: cpu, cuda, cuda:N"):
        resolve_spec("Baseline", "mfeat", {"device": device})


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:1", "0"])
def test_device_forms_bbench_accepts(device):
    assert resolve_spec("Baseline", "mfeat", {"device": device}).train.device == device


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c,
                                                                         max_size=3), max_leaves=12))
def test_strict_json_is_standard_json_and_keeps_every_finite_value(data):
    text = json.dumps(strict_json(data), allow_nan=False)
    back = json.loads(text)

    def same(a, b):
        if isinstance(a, float) and not math.isfinite(a):
            return b is None
        if isinstance(a, dict):
            return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        if isinstance(a, list):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
        return a == b

    assert same(data, back)


def test_atomic_write_failure_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "checkpoint.pt"
    target.write_bytes(b"previous")

    def full_disk(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputWriteError, match="No space left on device.*previous version is unchanged"):
        atomic_write(target, full_disk, "checkpoint")
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_atomic_write_interrupted_removes_the_temporary(tmp_path):
    def interrupted(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "record.json", interrupted, "run record")
    assert list(tmp_path.iterdir()) == []


def test_read_json_names_the_file_and_the_fault(tmp_path):
    path = tmp_path / "spec.json"
    write_json(path, {"a": float("nan"), "b": [1.5]}, "run spec")
    assert read_json(path, "run spec") == {"a": None, "b": [1.5]}
    path.write_text(path.read_text() + "}\n")
    with pytest.raises(MalformedFileError, match=r"spec.json: the run spec is not valid JSON \(Extra data"):
        read_json(path, "run spec")
    with pytest.raises(FileNotFoundError, match="expected the run spec at .*missing.json"):
        read_json(tmp_path / "missing.json", "run spec")


HOLDER = textwrap.dedent("""
    import sys, time
    from bbench.results.lock import RunLock
    RunLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(60)
""")


def test_a_second_process_is_refused_with_the_holders_pid_and_released_when_it_dies(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=rf"in use by process {holder.pid} on host "):
            RunLock(tmp_path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)  # no clean-up code runs: the kernel drops the lock
        holder.wait(timeout=10)
    with RunLock(tmp_path) as lock:
        info = json.loads(lock.path.read_text())
        assert info["pid"] == os.getpid()
    assert lock.path.read_text() == ""  # released: the holder's details are cleared


def test_the_lock_is_reentrant_only_after_release(tmp_path):
    first = RunLock(tmp_path).acquire()
    try:
        with pytest.raises(RunLockedError):  # flock is per open file: a second open is refused
            RunLock(tmp_path).acquire()
    finally:
        first.release()
    RunLock(tmp_path).acquire().release()
