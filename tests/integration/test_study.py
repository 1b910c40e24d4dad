"""Studies end to end: a tiny study runs and a re-run launches nothing; a study killed with
SIGKILL and re-run launches only the missing jobs and ends with an uninterrupted study's
records; tuning reads the test split only in the final jobs' evaluation."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import bbench.runner
import bbench.study.launch
from bbench.cli import main
from bbench.config.fields import SpecError
from bbench.results.record import RunResult
from bbench.study.declare import declare_study
from bbench.study.jobs import JOBS_FILE
from bbench.study.launch import LAUNCH_LOG, ProcessPoolLauncher, SequentialLauncher
from bbench.study.run import run_study
from bbench.results import MACHINE_METRICS
from bbench.study.tune import SELECTION_FILE

pytestmark = pytest.mark.slow

TINY = {"dataset.options.subsample_per_class": "20", "epochs": "2"}


def results(root: Path) -> dict[str, tuple]:
    """Job id -> (metrics without timings, per-epoch validation accuracies) of every record."""
    found = {}
    for path in root.glob("jobs/*/record.json"):
        record = RunResult.load(path)
        found[path.parent.name] = ({k: v for k, v in record.metrics.items() if k not in MACHINE_METRICS},
                                   [e.get("val_acc") for e in record.history])
    return found


def launches(root: Path) -> list[dict]:
    path = root / LAUNCH_LOG
    events = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [e for e in events if e["event"] == "start"]


def test_a_tiny_study_runs_pairs_its_seeds_and_a_rerun_launches_nothing(tmp_path):
    study = declare_study(settings=TINY, methods="Baseline,OGM", seeds="2")
    first = run_study(study, tmp_path / "s", SequentialLauncher(), progress=False)
    jobs = json.loads((tmp_path / "s" / JOBS_FILE).read_text())
    assert len(jobs) == 4 and not first.failed and len(first.launched) == 4
    records = {j["id"]: RunResult.load(tmp_path / "s" / j["dir"] / "record.json") for j in jobs}
    for job in jobs:
        record = records[job["id"]]
        assert record.extra["spec_hash"] == job["id"] and record.method == job["method"]
        assert record.spec["train"]["seed"] == job["seed"] and "acc" in record.metrics
    by_replicate = {}
    for job in jobs:
        by_replicate.setdefault(job["replicate"], set()).add(job["seed"])
    assert all(len(seeds) == 1 for seeds in by_replicate.values()) and len(by_replicate) == 2
    again = run_study(study, tmp_path / "s", SequentialLauncher(), progress=False)
    assert again.launched == [] and again.finished_before == 4
    assert len(launches(tmp_path / "s")) == 4


def test_a_killed_study_rerun_launches_only_the_missing_jobs_and_matches_an_uninterrupted_one(tmp_path):
    # A checkpoint after every epoch: with the default (one per minute of training, and at the
    # end) a job of this size has one only in the moment between its last epoch and its
    # record, which the poll below missed on a fast CPU (the study finished unkilled). The
    # setting is outside the spec hash, so the uninterrupted study below, at the default,
    # has the same job ids and must give the same results.
    flags = ["--methods", "Baseline,OGM", "--datasets", "mfeat", "--seeds", "2", "--epochs", "15",
             "--set", "dataset.options.subsample_per_class=20", "--set", "OGM.start=0",
             "--set", "train.checkpoint_seconds=0", "--quiet"]
    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "bbench", "study", *flags, "--out", str(killed)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    # Kill while one job is finished and another has a checkpoint but no record yet.
    while time.monotonic() < deadline and process.poll() is None:
        records = list(killed.glob("jobs/*/record.json"))
        partial = [d for d in killed.glob("jobs/*") if (d / "checkpoint.pt").exists()
                   and not (d / "record.json").exists()]
        if records and partial:
            os.kill(process.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    assert process.wait(30) == -signal.SIGKILL, "the study ended before it could be killed"
    jobs = json.loads((killed / JOBS_FILE).read_text())
    missing = {j["id"] for j in jobs if not (killed / j["dir"] / "record.json").exists()}
    resumable = {i for i in missing if (killed / "jobs" / i / "checkpoint.pt").exists()}
    assert missing and len(missing) < len(jobs)
    before = len(launches(killed))

    assert main(["study", *flags, "--out", str(killed)]) == 0  # the same command, in-process
    again = launches(killed)[before:]
    assert {e["id"] for e in again} == missing and len(again) == len(missing)
    assert {e["id"] for e in again if e["mode"] == "resume"} == resumable

    # The uninterrupted study, through the process pool (its workers must agree with it too).
    whole = tmp_path / "whole"
    settings = {"dataset.options.subsample_per_class": "20", "OGM.start": "0", "epochs": "15",
                "progress": "false"}
    study = declare_study(settings=settings, methods="Baseline,OGM", datasets="mfeat", seeds="2")
    run_study(study, whole, ProcessPoolLauncher(2), progress=False)
    assert results(killed) == results(whole)


def test_tuning_reads_the_test_split_only_in_the_final_jobs_evaluation(tmp_path, monkeypatch):
    reads: dict[str, int] = {}
    current: dict[str, bbench.study.launch.JobTask] = {}

    class CountingSplit:
        """The test split, counting every sample read on behalf of the running job."""

        def __init__(self, base):
            self.base = base

        def __len__(self):
            return len(self.base)

        def __getitem__(self, i):
            reads[current["task"].id] = reads.get(current["task"].id, 0) + 1
            return self.base[i]

        def __getitems__(self, indices):
            reads[current["task"].id] = reads.get(current["task"].id, 0) + len(indices)
            return self.base.__getitems__(indices)

    original_build, original_task = bbench.runner.build_datamodule, bbench.study.launch.run_task

    def build(spec):
        data = original_build(spec)
        data.test = CountingSplit(data.test)
        return data

    def task(job):
        current["task"] = job
        return original_task(job)

    monkeypatch.setattr(bbench.runner, "build_datamodule", build)
    monkeypatch.setattr(bbench.study.launch, "run_task", task)
    study = declare_study(settings={**TINY, "OGM.start": "0"}, methods="Baseline,OGM", seeds="2",
                          trials="3", tune_optimizer=True)
    outcome = run_study(study, tmp_path / "s", SequentialLauncher(), progress=False)
    assert not outcome.failed
    jobs = json.loads((tmp_path / "s" / JOBS_FILE).read_text())
    tune = [j for j in jobs if j["role"] == "tune"]
    finals = [j for j in jobs if j["role"] == "final"]
    assert len(tune) == 6 and len(finals) == 4
    assert all(reads.get(j["id"], 0) == 0 for j in tune)
    assert all(reads[j["id"]] > 0 for j in finals)

    selection = json.loads((tmp_path / "s" / SELECTION_FILE).read_text())
    for entry in selection["selections"]:
        trials = [j for j in tune if j["label"] == entry["label"]]
        records = {j["trial"]: RunResult.load(tmp_path / "s" / j["dir"] / "record.json") for j in trials}
        assert all("acc" not in r.metrics and r.extra["validation_only"] for r in records.values())
        scores = {t: r.metrics["val_acc"] for t, r in records.items()}
        best = max(scores.values())
        assert entry["selected"]["trial"] == min(t for t, s in scores.items() if s == best)
        chosen = [j for j in finals if j["label"] == entry["label"]]
        assert all(j["params"] == entry["selected"]["params"] for j in chosen)
        assert all(j["trial"] == entry["selected"]["trial"] for j in chosen)


def test_a_procedure_has_no_validation_only_run(tmp_path):
    procedure = next(n for n in bbench.runner.METHODS if bbench.runner.METHODS.get(n).procedure)
    with pytest.raises(SpecError, match="no validation-only form"):
        bbench.runner.run(procedure, "mfeat", evaluate_test=False, out=str(tmp_path / "p"),
                          progress=False, **TINY)
