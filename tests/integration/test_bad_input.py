"""The bad-input matrix: every user mistake ends in exit 2 (Ctrl-C in 130) with one clear
sentence on stderr, no Python traceback, and no byte of a previous run changed.

Each case runs in its own tmp_path (the working directory, so the default `runs/` lands
there) with a fresh copy of the prepared runs it needs; a snapshot (relative path ->
sha256) of everything that existed before the command is compared with the same files
afterwards. Files a case corrupts on purpose are snapshotted after corrupting them.

Most cases call `bbench.cli.main` in-process; the lock, Ctrl-C and warning cases start
real `python -m bbench` processes (a second process, a signal, what stderr really shows).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, NoReturn

import pytest
import torch

import bbench
import bbench.runner
from bbench.cli import main
from bbench.engine import checkpoint as ckpt

REPO_ROOT = Path(bbench.__file__).resolve().parent.parent
RUN_FLAGS = ["--quiet"]
# One intra-op thread: the tiny models train ~40x faster than with OpenMP threads spinning
# on a loaded 2-core machine (conftest does the same for the in-process runs).
CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
             "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}


# -- helpers -----------------------------------------------------------------------------------

def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every regular file under root."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


def assert_unchanged(root: Path, before: dict[str, str]) -> None:
    after = snapshot(root)
    missing = sorted(set(before) - set(after))
    changed = sorted(k for k in before if k in after and after[k] != before[k])
    assert not missing and not changed, f"files removed: {missing}; files changed: {changed}"


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_refused(code: int, err: str, *fragments: str) -> None:
    assert code == 2, f"exit {code}, stderr:\n{err}"
    assert "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in stderr:\n{err}"


def bbench_process(args: list[str], cwd: Path, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bbench", *args], cwd=cwd, env=CHILD_ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def bbench_run(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bbench", *args], cwd=cwd, env=CHILD_ENV,
                          capture_output=True, text=True, timeout=timeout)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"process ended (exit {proc.returncode}) before {path} appeared:\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{path} did not appear within {timeout}s")
        time.sleep(0.005)


# -- prepared runs (built once, copied per test) ----------------------------------------------

@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """`done/`: a finished OGM run of 3 epochs; `resumable/`: the same run stopped by Ctrl-C
    between its fit and its record (spec.json and the fit's last checkpoint, no record; a
    finished run's checkpoint is removed with its record)."""
    base = tmp_path_factory.mktemp("prepared")
    cwd = Path.cwd()
    os.chdir(base)
    try:
        code = main(["run", "--method", "OGM", "--epochs", "3", "--out", "done", *RUN_FLAGS])
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(bbench.runner, "evaluate_on_test", _interrupted)
            stopped = main(["run", "--method", "OGM", "--epochs", "3", "--out", "resumable",
                            *RUN_FLAGS])
    finally:
        os.chdir(cwd)
    assert (code, stopped) == (0, 130)
    assert (base / "resumable" / ckpt.CHECKPOINT_NAME).is_file()
    return base


def _interrupted(*args: object, **kwargs: object) -> NoReturn:
    raise KeyboardInterrupt


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch, prepared: Path, capsys) -> Path:
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()  # drop anything the module fixture printed
    return tmp_path


@pytest.fixture
def finished(workdir: Path, prepared: Path) -> Path:
    shutil.copytree(prepared / "done", workdir / "done")
    return Path("done")


@pytest.fixture
def resumable(workdir: Path, prepared: Path) -> Path:
    shutil.copytree(prepared / "resumable", workdir / "R")
    return Path("R")


# -- 1, 2, 9, 10, 11: a new run refused before anything is written -----------------------------

FRESH_REFUSALS = [
    pytest.param(["--set", "batch_size=5000"],
                 "batch_size=5000 is larger than the training split of mfeat (1260 samples)",
                 id="batch-larger-than-train-split"),
    *[pytest.param(["--method", m, "--modalities", "fac"],
                   f"{m} needs at least 2 modalities, got 1 (fac)", id=f"{m}-one-modality")
      for m in ("OGM", "OPM", "MMPareto", "ModalityValuation")],
    # MLA predicts with an entropy-gated fusion: feature masking would run the plain head.
    pytest.param(["--method", "MLA", "--set", "eval.mask=feature"],
                 "MLA evaluates with its own fusion, which feature masking", id="feature-mask-own-fusion"),
    *[pytest.param(["--device", d], "accepted: cpu, cuda, cuda:N", id=f"device-{d}")
      for d in ("tpu", "-1", "mps")],
    pytest.param(["--method", "OGM", "--set", "alpha=inf"], "alpha=inf is out of range", id="alpha-inf"),
    pytest.param(["--method", "OGM", "--set", "alpha=nan"], "alpha=nan is out of range", id="alpha-nan"),
    pytest.param(["--method", "OGM", "--set", "alpha=-1"], "alpha=-1.0 is out of range", id="alpha-negative"),
    pytest.param(["--method", "OGM", "--alpha", "-1"], "alpha=-1.0 is out of range",
                 id="alpha-negative-balancemm-flag"),
    pytest.param(["--method", "OPM", "--set", "q_base=1.5"], "q_base=1.5 is out of range",
                 id="q_base-above-1"),
    pytest.param(["--set", "lr=0"], "lr=0.0 is out of range; need lr > 0", id="lr-zero"),
    pytest.param(["--epochs", "0"], "epochs=0 is out of range; need epochs >= 1", id="epochs-zero"),
    pytest.param(["--epochs", "abc"], "epochs='abc' must be an integer", id="epochs-abc"),
    pytest.param(["--epochs", "1.5"], "epochs='1.5' must be an integer", id="epochs-fraction"),
    pytest.param(["--method", "Nope"], "unknown method 'Nope'. Did you mean", id="unknown-method"),
    pytest.param(["--dataset", "nope"], "unknown dataset 'nope'. Available: mfeat", id="unknown-dataset"),
    pytest.param(["--set", "nosuch=1"], "unknown setting 'nosuch'", id="unknown-setting"),
    pytest.param(["--modalities", "fac,xyz"], "unknown modality 'xyz'", id="unknown-modality"),
    pytest.param(["--preset", "nosuch"], "unknown preset 'nosuch'", id="unknown-preset"),
    pytest.param(["--set", "lr"], "--set expects key=value", id="set-without-equals"),
    pytest.param(["stray"], "unexpected argument 'stray'", id="stray-positional"),
]


@pytest.mark.parametrize("args,fragment", FRESH_REFUSALS)
def test_new_run_refused(args, fragment, finished, workdir, capsys):
    before = snapshot(workdir)
    code, _, err = run_cli(["run", *args, "--epochs", "1", *RUN_FLAGS] if "--epochs" not in args
                           else ["run", *args, *RUN_FLAGS], capsys)
    assert_refused(code, err, fragment)
    assert not (workdir / "runs").exists() or not any((workdir / "runs").iterdir())
    assert_unchanged(workdir, before)
    assert set(snapshot(workdir)) == set(before), "a refused run wrote files"


def test_unknown_method_suggests_a_registered_one(workdir, capsys):
    code, _, err = run_cli(["run", "--method", "Nope", *RUN_FLAGS], capsys)
    assert_refused(code, err, "Nope", "Did you mean 'OPM'?", "Available: ", "Baseline")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_without_a_cuda_device(finished, workdir, capsys):
    before = snapshot(workdir)
    code, _, err = run_cli(["run", "--device", "cuda", "--epochs", "1", *RUN_FLAGS], capsys)
    assert_refused(code, err, "no CUDA device is available")
    assert not (workdir / "runs").exists()
    assert_unchanged(workdir, before)


# -- 3: a windowed method whose window never opens (a warning, not a refusal) ------------------

def test_ogm_window_that_never_opens_warns(workdir):
    done = bbench_run(["run", "--method", "OGM", "--epochs", "2", "--out", "w", *RUN_FLAGS], workdir)
    assert done.returncode == 0, done.stderr
    assert "never opens in a 2-epoch run" in done.stderr
    assert "Traceback" not in done.stderr
    assert json.loads((workdir / "w" / "record.json").read_text())["metrics"]["active_epochs"] == 0


def test_ogm_window_that_opens_does_not_warn(workdir):
    done = bbench_run(["run", "--method", "OGM", "--epochs", "12", "--out", "w", *RUN_FLAGS], workdir)
    assert done.returncode == 0, done.stderr
    assert "never opens" not in done.stderr and "Traceback" not in done.stderr
    assert json.loads((workdir / "w" / "record.json").read_text())["metrics"]["active_epochs"] == 2


# -- 4: resuming with other settings ----------------------------------------------------------

RESUME_MISMATCHES = [
    pytest.param(["--epochs", "5"], ["cannot resume", "train.epochs: 3 -> 5"], id="epochs"),
    pytest.param(["--method", "OPM"], ["cannot resume", 'method: "OGM" -> "OPM"'], id="method"),
    pytest.param(["--set", "alpha=0.5"], ["cannot resume", "method_params.alpha: 0.3 -> 0.5"], id="alpha"),
    pytest.param(["--seed", "3"], ["cannot resume", "train.seed: 0 -> 3"], id="seed"),
    pytest.param(["--dataset", "mfeat-fac-fou-mor"],
                 ["cannot resume", 'dataset.name: "mfeat" -> "mfeat-fac-fou-mor"'], id="dataset"),
    pytest.param(["--modalities", "fac,mor"],
                 ["cannot resume", 'dataset.modalities: null -> ["fac", "mor"]'], id="modalities"),
    pytest.param(["--out", "X"], ["--out cannot be combined with --resume"], id="out"),
]


@pytest.mark.parametrize("args,fragments", RESUME_MISMATCHES)
def test_resume_with_other_settings_refused(args, fragments, resumable, workdir, capsys):
    before = snapshot(workdir)
    code, _, err = run_cli(["run", "--resume", str(resumable), *args, *RUN_FLAGS], capsys)
    assert_refused(code, err, *fragments)
    assert not (resumable / "record.json").exists()
    assert not (workdir / "X").exists()
    assert_unchanged(workdir, before)


@pytest.mark.parametrize("args", [pytest.param([], id="quiet"),
                                  pytest.param(["--set", "num_workers=0"], id="num_workers")])
def test_resume_with_neutral_settings_allowed(args, resumable, workdir, capsys):
    spec_before = (resumable / "spec.json").read_bytes()
    code, out, err = run_cli(["run", "--resume", str(resumable), *args, *RUN_FLAGS], capsys)
    assert code == 0, err
    assert "Traceback" not in err
    assert (resumable / "record.json").is_file()
    assert (resumable / "spec.json").read_bytes() == spec_before
    assert f"record: {resumable / 'record.json'}" in out


# -- 5, 6: a damaged run directory ------------------------------------------------------------

def _edit_spec(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def corrupt(run: Path) -> None:
        spec = json.loads((run / "spec.json").read_text())
        change(spec)
        (run / "spec.json").write_text(json.dumps(spec, indent=1) + "\n")
    return corrupt


def _set_hidden(spec: dict) -> None:
    spec["model"]["encoders"]["*"]["options"]["hidden"] = [7]


def _set_alpha(spec: dict) -> None:
    spec["method_params"]["alpha"] = 0.5


def _append(name: str, text: str) -> Callable[[Path], None]:
    return lambda run: (run / name).write_text((run / name).read_text() + text)


def _write(name: str, data: bytes) -> Callable[[Path], None]:
    return lambda run: (run / name).write_bytes(data)


def _truncate_checkpoint(run: Path) -> None:
    path = run / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:1000])


def _delete(name: str) -> Callable[[Path], None]:
    return lambda run: (run / name).unlink()


def _foreign_checkpoint(run: Path) -> None:
    torch.save({"a": 1}, run / "checkpoint.pt")


DAMAGED = [
    pytest.param(_edit_spec(_set_hidden),
                 ["was written under other settings than", "model.encoders.*.options.hidden: [128, 64] -> [7]"],
                 id="spec-edited-hidden"),
    pytest.param(_edit_spec(_set_alpha),
                 ["was written under other settings than", "method_params.alpha: 0.3 -> 0.5"],
                 id="spec-edited-alpha"),
    pytest.param(_append("spec.json", "}\n"), ["spec.json: the run spec is not valid JSON"],
                 id="spec-trailing-junk"),
    pytest.param(_delete("spec.json"), ["expected the run spec at", "found nothing"], id="spec-missing"),
    pytest.param(_write("spec.json", b"[1, 2]\n"),
                 ["spec.json: expected a JSON object of settings, found list"], id="spec-is-a-list"),
    pytest.param(_write("spec.json", b"\xff\xfe junk"), ["spec.json: the run spec is not valid JSON"],
                 id="spec-not-utf8"),
    pytest.param(_truncate_checkpoint, ["cannot be read as a bbench checkpoint", "(1000 bytes"],
                 id="checkpoint-truncated"),
    pytest.param(_write("checkpoint.pt", b""), ["cannot be read as a bbench checkpoint", "(0 bytes"],
                 id="checkpoint-empty"),
    pytest.param(_write("checkpoint.pt", b"this is not a checkpoint\n" * 40),
                 ["cannot be read as a bbench checkpoint"], id="checkpoint-garbage"),
    pytest.param(_delete("checkpoint.pt"), ["no checkpoint to resume from"], id="checkpoint-missing"),
    pytest.param(_foreign_checkpoint, ["is not a checkpoint of this bbench version"],
                 id="checkpoint-plain-dict"),
]


@pytest.mark.parametrize("corrupt,fragments", DAMAGED)
def test_resume_of_a_damaged_run_refused(corrupt, fragments, resumable, workdir, capsys):
    corrupt(resumable)
    before = snapshot(workdir)
    code, _, err = run_cli(["run", "--resume", str(resumable), *RUN_FLAGS], capsys)
    assert_refused(code, err, *fragments)
    assert not (resumable / "record.json").exists()
    assert not (resumable / "checkpoint.pt.tmp").exists()
    assert_unchanged(workdir, before)


def test_refused_resume_adds_no_files(resumable, workdir, capsys):
    """The checkpoint is verified before anything (a TensorBoard writer) opens a file there."""
    _truncate_checkpoint(resumable)
    before = snapshot(workdir)
    code, _, err = run_cli(["run", "--resume", str(resumable), *RUN_FLAGS], capsys)
    assert_refused(code, err, "cannot be read as a bbench checkpoint")
    assert sorted(snapshot(workdir)) == sorted(before)


# -- 7: nothing to resume ---------------------------------------------------------------------

def test_resume_of_a_finished_run_refused(finished, workdir, capsys):
    before = snapshot(workdir)
    code, _, err = run_cli(["run", "--resume", str(finished), *RUN_FLAGS], capsys)
    assert_refused(code, err, "is a finished run", "record.json exists")
    assert_unchanged(workdir, before)
    assert set(snapshot(workdir)) == set(before)


@pytest.mark.parametrize("target", [pytest.param("nowhere", id="missing-dir"),
                                    pytest.param("done/spec.json", id="a-file")])
def test_resume_of_no_run_directory_refused(target, finished, workdir, capsys):
    before = snapshot(workdir)
    code, _, err = run_cli(["run", "--resume", target, *RUN_FLAGS], capsys)
    assert_refused(code, err, f"cannot resume {target}: no such run directory")
    assert_unchanged(workdir, before)
    assert set(snapshot(workdir)) == set(before)


# -- 8: output directories that cannot be used ------------------------------------------------

def test_out_is_an_existing_file(finished, workdir, capsys):
    (workdir / "F").write_text("not a directory\n")
    before = snapshot(workdir)
    code, _, err = run_cli(["run", "--epochs", "1", "--out", "F", *RUN_FLAGS], capsys)
    assert_refused(code, err, "--out F is an existing file, not a directory")
    assert_unchanged(workdir, before)
    assert set(snapshot(workdir)) == set(before)


@pytest.mark.parametrize("out", [pytest.param("D", id="dir-with-a-file"),
                                 pytest.param("done", id="a-finished-run")])
def test_out_already_holds_results(out, finished, workdir, capsys):
    (workdir / "D").mkdir()
    (workdir / "D" / "keep.txt").write_text("previous results\n")
    before = snapshot(workdir)
    code, _, err = run_cli(["run", "--epochs", "1", "--out", out, *RUN_FLAGS], capsys)
    assert_refused(code, err, f"run directory {out} already exists and holds results",
                   f"--resume {out}")
    assert_unchanged(workdir, before)
    assert set(snapshot(workdir)) == set(before)


def test_out_that_cannot_be_created(finished, workdir, capsys):
    before = snapshot(workdir)
    code, _, err = run_cli(["run", "--epochs", "1", "--out", "/sys/bbench_test_dir", *RUN_FLAGS], capsys)
    assert_refused(code, err, "cannot create the run directory /sys/bbench_test_dir")
    assert not Path("/sys/bbench_test_dir").exists()
    assert_unchanged(workdir, before)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions; "
                                               "test_out_that_cannot_be_created covers the refusal")
def test_out_inside_a_read_only_directory(finished, workdir, capsys):
    ro = workdir / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        before = snapshot(workdir)
        code, _, err = run_cli(["run", "--epochs", "1", "--out", "ro/run", *RUN_FLAGS], capsys)
        assert_refused(code, err, "cannot create the run directory ro/run", "Permission denied")
        assert_unchanged(workdir, before)
    finally:
        ro.chmod(0o755)


# -- 12: a second process on a running run, and Ctrl-C ----------------------------------------

def _stop_after_first_checkpoint(proc: subprocess.Popen, run: Path) -> None:
    """Pause the trainer (SIGSTOP) once its first checkpoint exists: it keeps holding the
    lock, makes no progress and writes nothing until SIGCONT."""
    wait_for(run / "checkpoint.pt", proc)
    os.kill(proc.pid, signal.SIGSTOP)
    _wait_until_stopped(proc.pid)


def _wait_until_stopped(pid: int, timeout: float = 10.0) -> None:
    """Return once the kernel reports the process stopped: `kill` returns before the signal
    takes effect, and a trainer still running for those moments can be mid-write of a file
    (seen: `best_model.pt.tmp` hashed while growing). Without /proc, a pause instead."""
    stat = Path(f"/proc/{pid}/stat")
    if not Path("/proc/self/stat").exists():
        time.sleep(1.0)
        return
    deadline = time.monotonic() + timeout
    while True:
        try:
            state = stat.read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            pytest.fail(f"the trainer (process {pid}) exited before it could be stopped")
        if state in ("T", "t"):
            return
        assert state not in ("Z", "X"), f"the trainer (process {pid}) exited (state {state})"
        assert time.monotonic() < deadline, f"process {pid} did not stop within {timeout} s"
        time.sleep(0.01)


def test_a_second_process_is_refused_while_a_run_trains(workdir):
    first = bbench_process(["run", "--epochs", "60", "--out", "L", *RUN_FLAGS], workdir)
    try:
        _stop_after_first_checkpoint(first, workdir / "L")
        before = snapshot(workdir)
        second = bbench_run(["run", "--resume", "L", *RUN_FLAGS], workdir)
        assert second.returncode == 2, second.stderr
        assert f"is in use by process {first.pid}" in second.stderr
        assert "on host" in second.stderr and "Traceback" not in second.stderr
        assert_unchanged(workdir, before)
        os.kill(first.pid, signal.SIGINT)  # pending until the process runs again
        os.kill(first.pid, signal.SIGCONT)
        _, err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGCONT)
            first.kill()
            first.wait()
    assert first.returncode == 130, err
    assert "Continue with:" in err and "python -m bbench run --resume L" in err
    assert "Traceback" not in err
    assert not (workdir / "L" / "checkpoint.pt.tmp").exists()
    assert not (workdir / "L" / "record.json").exists()
    third = bbench_run(["run", "--resume", "L", *RUN_FLAGS], workdir)
    assert third.returncode == 0, third.stderr
    assert "Traceback" not in third.stderr
    assert (workdir / "L" / "record.json").is_file()
    assert not (workdir / "L" / "checkpoint.pt.tmp").exists()


def test_ctrl_c_says_how_to_continue_and_the_resumed_run_finishes(workdir, capsys):
    # a checkpoint after every epoch (the default waits a minute of training between them)
    proc = bbench_process(["run", "--epochs", "60", "--out", "C", "--set",
                           "train.checkpoint_seconds=0", *RUN_FLAGS], workdir)
    try:
        wait_for(workdir / "C" / "checkpoint.pt", proc)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "interrupted after" in err and "of 60 epochs" in err
    assert "Continue with:\n  python -m bbench run --resume C" in err
    assert not (workdir / "C" / "checkpoint.pt.tmp").exists()
    assert not (workdir / "C" / "record.json").exists()
    done = ckpt.load(workdir / "C" / "checkpoint.pt", torch.device("cpu"))["epoch"]
    assert 1 <= done < 60
    assert f"its checkpoint holds the first {done}" in err
    before = snapshot(workdir / "C")
    spec = before["spec.json"]
    code, _, err = run_cli(["run", "--resume", "C", *RUN_FLAGS], capsys)
    assert code == 0, err
    assert (workdir / "C" / "record.json").is_file()
    assert snapshot(workdir / "C")["spec.json"] == spec
    history = json.loads((workdir / "C" / "record.json").read_text())["history"]
    assert len(history) == 60


# -- 13: a full disk while writing a checkpoint -----------------------------------------------

@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_full_disk_while_writing_a_checkpoint(workdir, monkeypatch, capsys):
    """A real ENOSPC at the second checkpoint: its temporary file is a link to /dev/full."""
    real_save = ckpt.save
    calls = []

    def save(path: Path, state: dict) -> None:
        calls.append(path)
        if len(calls) == 2:
            path.with_name(path.name + ".tmp").symlink_to("/dev/full")
        real_save(path, state)

    with monkeypatch.context() as patch:  # undone at the end of the block, chdir stays
        patch.setattr(ckpt, "save", save)
        code, _, err = run_cli(["run", "--epochs", "3", "--out", "D", "--set",
                                "train.checkpoint_seconds=0", *RUN_FLAGS], capsys)
    assert ckpt.save is real_save
    assert len(calls) == 2
    assert_refused(code, err, "No space left on device", "the previous version is unchanged",
                   "--resume D")
    run = workdir / "D"
    assert not (run / "checkpoint.pt.tmp").exists()
    assert not (run / "record.json").exists()
    assert ckpt.load(run / "checkpoint.pt", torch.device("cpu"))["epoch"] == 1
    before = snapshot(workdir)
    code, _, err = run_cli(["run", "--resume", "D", *RUN_FLAGS], capsys)
    assert code == 0, err
    assert (run / "record.json").is_file()
    assert snapshot(workdir)["D/spec.json"] == before["D/spec.json"]


# -- 14, 15: strict JSON and the help text ----------------------------------------------------

def test_record_is_strict_json(finished, workdir):
    for name in ("record.json", "spec.json"):
        text = (finished / name).read_text()
        json.loads(text, parse_constant=lambda c: pytest.fail(f"{name} holds {c}"))


def test_run_help_lists_data_root_and_method_ranges(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--data-root" in out and "alpha >= 0" in out and "method settings" in out
