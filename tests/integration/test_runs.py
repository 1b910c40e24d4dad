"""End-to-end runs on CPU: records, determinism, resume, FLOPs, and bad input."""
from __future__ import annotations

import json
import math

import pytest
import torch

import bbench
import bbench.runner
from bbench.config.fields import SpecError
from bbench.engine import checkpoint as ckpt
from bbench.engine.trainer import NonFiniteLossError
from bbench.registry import UnknownNameError
from bbench.results import MACHINE_METRICS
from bbench.runner import RunDirectoryExistsError, RunInterrupted



def comparable(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in MACHINE_METRICS}


def test_record_holds_every_required_metric(small_run):
    result = small_run("OGM", alpha=0.5, start=0)
    m = result.metrics
    for key in ("acc", "f1", "acc_a", "acc_b", "f1_a", "f1_b", "shapley", "imbalance", "train_flops"):
        assert key in m, key
    assert set(m["shapley"]) == {"a", "b"}
    assert 0 <= m["imbalance"] <= 1 and m["train_flops"] > 0
    record = json.loads(result.record_path.read_text())
    assert record["schema"] == "bbench.run/1"
    assert record["spec"]["method_params"] == {"start": 0, "end": 80, "alpha": 0.5, "variant": "OGM_GE"}
    assert len(record["history"]) == 2 and "coef_a" in record["history"][1]["method"]
    assert record["environment"]["torch"] == torch.__version__
    subsets = record["shapley"]["subset_accuracy"]
    assert sum(m["shapley"].values()) == pytest.approx(subsets["a+b"] - subsets["∅"], abs=1e-12)


def test_same_spec_twice_gives_identical_metrics(small_run):
    first = small_run("MMPareto", start=0)
    second = small_run("MMPareto", start=0)
    assert comparable(first.metrics) == comparable(second.metrics)
    assert first.history[-1]["method"] == second.history[-1]["method"]


def test_plain_ogm_with_alpha_zero_reproduces_baseline_exactly(small_run):
    base = small_run("Baseline")
    ogm = small_run("OGM", alpha=0.0, variant="OGM", start=0)
    keys = ("acc", "f1", "acc_a", "acc_b", "shapley", "imbalance", "val_acc", "best_epoch")
    assert {k: base.metrics[k] for k in keys} == {k: ogm.metrics[k] for k in keys}


@pytest.mark.parametrize("method,params", [("OGM", {"start": 0}), ("ModalityValuation", {"start": 0}),
                                           ("OPM", {"start": 0})])
def test_interrupted_and_resumed_run_ends_like_an_uninterrupted_one(small_run, tmp_path, method, params):
    full = small_run(method, epochs=4, **params)

    class Interrupt(Exception):
        pass

    def stop_after_second_epoch(trainer, epoch, record):
        if epoch == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        small_run(method, epochs=4, out=str(tmp_path / "cut"), callbacks=[stop_after_second_epoch],
                  **params, **{"train.checkpoint_seconds": 0})  # a checkpoint every epoch
    resumed = bbench.run(resume=tmp_path / "cut")
    assert comparable(resumed.metrics) == comparable(full.metrics)
    assert [h["val_acc"] for h in resumed.history] == [h["val_acc"] for h in full.history]


def test_a_run_stopped_between_fit_and_record_resumes_from_its_finished_checkpoint(
        small_run, tmp_path, monkeypatch):
    """The checkpoint after the last epoch holds no final weights and no optimizer state
    (nothing is left to train), and resuming from it trains nothing and ends with the record
    of the uninterrupted run."""
    full = small_run("OGM", epochs=3, start=0)
    evaluate = bbench.runner.evaluate_on_test

    def stopped(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(bbench.runner, "evaluate_on_test", stopped)
    with pytest.raises(RunInterrupted) as stop:
        small_run("OGM", epochs=3, start=0, out=str(tmp_path / "cut"))
    assert (stop.value.epochs_done, stop.value.checkpointed) == (3, 3)
    assert stop.value.message().startswith("interrupted after 3 of 3 epochs")
    state = ckpt.load(tmp_path / "cut", torch.device("cpu"))
    assert state["finished"] and not set(ckpt.TRAINING_KEYS) & set(state)
    monkeypatch.setattr(bbench.runner, "evaluate_on_test", evaluate)
    steps: list[int] = []
    resumed = bbench.run(resume=tmp_path / "cut", callbacks=[lambda t, e, r: steps.append(e)])
    assert steps == []  # no epoch ran again
    assert comparable(resumed.metrics) == comparable(full.metrics)
    untimed = [[{k: v for k, v in h.items() if k != "seconds"} for h in run.history]
               for run in (resumed, full)]
    assert untimed[0] == untimed[1]


def test_baseline_training_flops_match_the_analytic_mlp_count(small_run):
    result = small_run("Baseline", epochs=1, batch_size=32, **{"model.encoders.*.options.hidden": "16,8"})
    d_in, hidden, K, M = 6, (16, 8), 4, 2
    forward = M * 2 * (d_in * hidden[0] + hidden[0] * hidden[1]) + 2 * (M * hidden[1]) * K
    first_layer_input_grad = M * 2 * d_in * hidden[0]
    per_sample = forward + 2 * forward - first_layer_input_grad
    samples = result.metrics["train_samples"]
    assert samples == 96  # 3 full batches; drop_last
    assert result.metrics["train_flops"] == pytest.approx(per_sample * samples, rel=0.01)
    assert result.metrics["forward_flops_per_sample"] == forward


def test_methods_with_extra_passes_cost_more_flops_than_baseline(small_run):
    base = small_run("Baseline").metrics["train_flops"]
    assert small_run("MMPareto", start=0).metrics["train_flops"] > base
    assert small_run("ModalityValuation", start=0).metrics["train_flops"] > base


def test_nan_loss_stops_with_the_step(small_run):
    with pytest.raises(NonFiniteLossError, match=r"loss is (nan|inf).*epoch \d+, batch \d+"):
        small_run("Baseline", lr=1e30, momentum=0.0, epochs=3)


def test_existing_run_directory_is_never_overwritten(small_run, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "record.json").write_text("{}")
    with pytest.raises(RunDirectoryExistsError, match="never overwrites"):
        small_run("Baseline", out=str(out))
    assert (out / "record.json").read_text() == "{}"


def test_finished_run_cannot_be_resumed(small_run):
    result = small_run("Baseline", epochs=1)
    with pytest.raises(RunDirectoryExistsError, match="finished run"):
        bbench.run(resume=result.run_dir)


@pytest.mark.parametrize("kwargs,error,pattern", [
    ({"method": "OGN"}, UnknownNameError, "Did you mean 'OGM'"),
    ({"dataset": "cremadd"}, UnknownNameError, "unknown dataset 'cremadd'"),
    ({"modalities": "fac,xyz", "dataset": "mfeat"}, ValueError, "unknown modality 'xyz'"),
    ({"method": "Unimodal", "modality": "visual", "dataset": "mfeat"}, SpecError, "choose one of fac, mor"),
    ({"method": "OPM", "q_base": 2.0}, SpecError, r"OPM: q_base=2.0 is out of range; need 0 <= q_base <= 1"),
    ({"device": "cuda:3"}, RuntimeError, "no CUDA device"),
])
def test_bad_input_gets_a_clear_error(small_run, kwargs, error, pattern):
    if "device" in kwargs and torch.cuda.device_count() > 3:
        pytest.skip("this machine has a cuda:3")
    with pytest.raises(error, match=pattern):
        small_run(**kwargs)


def test_unimodal_encoder_weights_load_into_the_multimodal_model(small_run):
    uni = small_run("Unimodal", modality="b")
    assert set(uni.metrics["shapley"]) == {"b"} and uni.metrics["imbalance"] == 0
    assert uni.metrics["acc"] == uni.metrics["acc_b"]
    base = small_run("Baseline", epochs=1)
    uni_state = torch.load(uni.run_dir / "best_model.pt")
    base_state = torch.load(base.run_dir / "best_model.pt")
    enc = {k: v for k, v in uni_state.items() if k.startswith("encoders.b.")}
    assert enc and all(base_state[k].shape == v.shape for k, v in enc.items())


def test_linear_probe_reports_each_encoder_next_to_its_unimodal_run(small_run):
    base = small_run("Baseline")
    unis = [small_run("Unimodal", modality=m) for m in ("a", "b")]
    weights = (base.run_dir / "best_model.pt").read_bytes()
    kwargs = {"source_run": str(base.run_dir), "unimodal_runs": [str(u.run_dir) for u in unis],
              "probe_epochs": 3}
    probe = small_run("LinearProbe", **kwargs)
    again = small_run("LinearProbe", **kwargs)
    for m, uni in zip(("a", "b"), unis):
        assert 0 <= probe.metrics[f"probe_acc_{m}"] <= 1
        assert probe.metrics[f"unimodal_acc_{m}"] == uni.metrics["acc"]
        assert math.isclose(probe.metrics[f"probe_gap_{m}"],
                            uni.metrics["acc"] - probe.metrics[f"probe_acc_{m}"])
        assert probe.metrics[f"probe_acc_{m}"] == again.metrics[f"probe_acc_{m}"]
    assert (base.run_dir / "best_model.pt").read_bytes() == weights


@pytest.mark.parametrize("method,params", [("Baseline", {}), ("OPM", {"start": 0}),
                                           ("ModalityValuation", {"start": 1, "level": "sample"})])
def test_flops_counted_once_per_step_signature_equal_counting_every_step(small_run, method, params):
    """The quick form of the every-method test (test_every_method_speed_paths.py, slow)."""
    settings = {"epochs": 3, "dataset.options": {"n_train": 256, "n_val": 32, "n_test": 32, "dims": 6}}
    signature = small_run(method, **settings, **params, **{"train.flops": "signature"}).metrics
    full = small_run(method, **settings, **params, **{"train.flops": "all"}).metrics
    assert full["train_flops_reused"] == 0 and signature["train_flops_reused"] > 0
    assert signature["train_flops"] == full["train_flops"]
    assert signature["train_flops_by_region"] == full["train_flops_by_region"]


def test_tensorboard_scalars_are_written_when_tensorboard_is_installed(small_run):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = small_run("OGM", start=0)
    events = EventAccumulator(str(result.run_dir / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train_loss", "val_acc", "lr", "method/coef_a", "method/active"} <= tags
    assert [e.value for e in events.Scalars("val_acc")] == pytest.approx(
        [h["val_acc"] for h in result.history])


def test_a_resumed_runs_scalars_show_every_epoch_once(small_run, tmp_path):
    """Stopped after epoch 3 was logged but before its checkpoint (every 3rd epoch), the run
    trains epoch 3 again on resume: TensorBoard shows it once, with the resumed values."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    class Interrupt(Exception):
        pass

    def stop_in_epoch_4(trainer, epoch, record):
        if epoch == 4:
            raise Interrupt

    run_dir = tmp_path / "cut"
    with pytest.raises(Interrupt):
        small_run("Baseline", epochs=6, out=str(run_dir), callbacks=[stop_in_epoch_4],
                  **{"train.checkpoint_every": 3, "train.checkpoint_seconds": 0})
    resumed = bbench.run(resume=run_dir)
    assert len(list((run_dir / "tensorboard").iterdir())) == 2  # one file per session
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    scalars = events.Scalars("train_loss")
    assert [e.step for e in scalars] == list(range(6))
    assert [e.value for e in scalars] == pytest.approx([h["train_loss"] for h in resumed.history])


def test_tensorboard_off_writes_no_event_files(small_run):
    result = small_run("Baseline", **{"train.tensorboard": False})
    assert not (result.run_dir / "tensorboard").exists()
    assert result.history  # the per-epoch record is kept: only the event files are off
