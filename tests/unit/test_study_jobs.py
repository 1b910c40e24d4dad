"""Job expansion (what a dry run lists): rows, replicates, hashed directories, inputs, tuning
and sweep jobs, and the refusal of a second study in one directory."""
from __future__ import annotations

from collections import Counter

import pytest

from bbench.config.fields import SpecError, to_dict
from bbench.config.identity import spec_hash
from bbench.config.resolve import resolve_spec
from bbench.methods.registry import METHODS, reference_method
from bbench.report.bench import plan_bench
from bbench.study.declare import declare_study, replicate_seed
from bbench.study.jobs import INPUTS_DIR, StudyPlanner, method_depth
from bbench.study.run import describe_plan, run_study

SMALL = {"dataset.options.subsample_per_class": "20", "epochs": "2"}


def plan(tmp_path, **flags):
    return StudyPlanner(declare_study(settings=SMALL, **flags), tmp_path.resolve()).plan()


def per_modality_method() -> str:
    return next(n for n in METHODS if METHODS.get(n).per_modality)


def method_with_inputs() -> str:
    return next(n for n in METHODS if METHODS.get(n).inputs and not METHODS.get(n).procedure)


def test_all_methods_expand_to_bench_rows_times_seeds_on_each_dataset(tmp_path):
    p = plan(tmp_path, datasets="mfeat,mfeat-fac-fou-mor", seeds="3")
    for dataset, modalities in p.modalities.items():
        rows, skipped = plan_bench(modalities)
        labels = Counter(j.label for j in p.jobs if j.dataset == dataset and j.role == "final")
        assert labels == {row.label: 3 for row in rows}
        assert p.skipped.get(dataset, {}) == skipped
    uni = per_modality_method()
    assert {j.label for j in p.jobs if j.method == uni and j.dataset == "mfeat-fac-fou-mor"} == \
        {f"{uni}-fac", f"{uni}-fou", f"{uni}-mor"}
    assert not [j for j in p.jobs if j.role == "input"]  # every input is one of the final jobs


def test_a_job_directory_is_the_hash_of_the_spec_bbench_run_would_resolve(tmp_path):
    p = plan(tmp_path, methods="OGM", seeds="2")
    for job in p.jobs:
        spec = resolve_spec(job.method, job.dataset, {**SMALL, **job.params, "seed": job.seed})
        assert job.id == spec_hash(job.spec) == spec_hash(to_dict(spec))
        assert job.dir == f"jobs/{job.id}"
        assert job.spec["output_root"] == str(tmp_path.resolve() / INPUTS_DIR)


def test_seeds_pair_replicates_across_methods_and_ids_do_not_depend_on_the_other_methods(tmp_path):
    alone = plan(tmp_path, methods="OGM", seeds="2")
    many = plan(tmp_path, methods="Baseline,AGM,OGM", seeds="3")
    assert {j.id for j in alone.jobs} <= {j.id for j in many.jobs}
    for r in range(3):
        assert {j.seed for j in many.jobs if j.replicate == r} == {replicate_seed(0, "mfeat", r)}
    shifted = plan(tmp_path, methods="OGM", seeds="2", study_seed="5")
    assert not {j.id for j in shifted.jobs} & {j.id for j in alone.jobs}


def test_inputs_not_in_the_study_become_input_jobs_in_an_earlier_wave(tmp_path):
    dependent = method_with_inputs()
    p = plan(tmp_path, methods=dependent, seeds="2")
    inputs = [j for j in p.jobs if j.role == "input"]
    finals = [j for j in p.jobs if j.role == "final"]
    assert len(finals) == 2 and inputs
    assert all(j.depth < method_depth(dependent) for j in inputs)
    for final in finals:
        needed = p.needs[final.id]
        assert {j.replicate for j in inputs if j.id in needed} == {final.replicate}
    # With the input method in the study, its final jobs are the inputs: nothing is added.
    needed_methods = ",".join({need.method for need in METHODS.get(dependent).inputs})
    both = plan(tmp_path, methods=f"{dependent},{needed_methods}", seeds="2")
    assert not [j for j in both.jobs if j.role == "input"]
    assert {i for f in finals for i in p.needs[f.id]} <= {j.id for j in both.jobs}


def test_tuning_plans_trials_at_replicate_zero_with_their_own_ids(tmp_path):
    p = plan(tmp_path, methods="Baseline,OGM", trials="3", seeds="2", tune_optimizer=True)
    tune = [j for j in p.jobs if j.role == "tune"]
    assert Counter(j.label for j in tune) == {"OGM": 3, reference_method(): 3}
    assert {j.replicate for j in tune} == {0} and {j.seed for j in tune} == {replicate_seed(0, "mfeat", 0)}
    assert all(set(j.params) == {"train.optimizer.lr"} for j in tune if j.method == reference_method())
    assert all(j.id != spec_hash(j.spec) and not j.evaluate_test for j in tune)
    assert [r.label for r in p.tuned] == [reference_method(), "OGM"]
    assert not [j for j in p.jobs if j.role == "final"]  # finals wait for the selection
    without = plan(tmp_path, methods="Baseline,OGM", trials="3", seeds="2")
    assert [r.label for r in without.tuned] == ["OGM"]


def test_a_sweep_runs_every_value_with_every_seed_and_adds_the_reference(tmp_path):
    p = plan(tmp_path, methods="OGM", sweep="alpha=0,0.1,1", seeds="2")
    sweep = [j for j in p.jobs if j.role == "sweep"]
    assert sorted((j.sweep["value"], j.replicate) for j in sweep) == \
        [(v, r) for v in (0.0, 0.1, 1.0) for r in (0, 1)]
    assert all(j.spec["method_params"]["alpha"] == j.sweep["value"] for j in sweep)
    assert {j.method for j in p.jobs if j.role == "final"} == {reference_method()}
    with pytest.raises(SpecError, match="name that one method"):
        plan(tmp_path, methods="all", sweep="alpha=0,1")
    with pytest.raises(SpecError, match="alpha=-1.0 is out of range"):
        plan(tmp_path, methods="OGM", sweep="alpha=-1,1")


def test_dry_run_lists_every_job_and_writes_nothing(tmp_path):
    out = tmp_path / "study"
    outcome = run_study(declare_study(settings=SMALL, methods="OGM", trials="2"), out, dry_run=True)
    text = describe_plan(outcome)
    assert not out.exists()
    assert "2 jobs (0 finished, 0 to resume, 2 to start)" in text
    assert "after tuning: 3 final jobs of OGM on mfeat" in text


def test_a_directory_holding_another_study_is_refused_with_the_differences(tmp_path):
    out = tmp_path / "study"
    out.mkdir()
    (out / "study.json").write_text('{"methods": ["OGM"], "seeds": 2}')
    with pytest.raises(SpecError, match=r"seeds: 2 -> 3"):
        run_study(declare_study(settings=SMALL, methods="OGM"), out, dry_run=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x").write_text("")
    with pytest.raises(SpecError, match="is not a study directory"):
        run_study(declare_study(methods="OGM"), tmp_path / "other", dry_run=True)
