"""The training-step timer (bbench.testing.throughput) and the parts of the GPU validation
script (bbench.benchmarking) that run without a GPU: the step is the configured run's step,
the figures derived from timings are right, the summary records failures and targets, the
command line refuses what it cannot do."""
from __future__ import annotations

import json
import time

import pytest
import torch

from bbench import ops
from bbench.benchmarking import gpu, kernels
from bbench.benchmarking.summary import (
    FAILED,
    PASSED,
    SKIPPED,
    StageResult,
    Target,
    markdown,
    write_summary,
)
from bbench.benchmarking.timing import LAUNCH_COVER_CYCLES, Timing, time_calls
from bbench.testing.throughput import (
    CREMAD_SIZE,
    TINY_SIZE,
    StepResult,
    StepSetting,
    TrainStep,
    baseline_multiples,
    markdown_table,
    result_rows,
    spec_info,
    speedups_over_fp32,
    step_spec,
)

CPU = torch.device("cpu")
RESNET18_AV_ENCODER_ELEMENTS = 22_346_752  # docs/benchmarks.md: the two encoders' parameters


def need_cpu_kernels() -> None:
    if "cpu" not in ops.extension_info()["backends"]:
        pytest.skip("bbench extension has no CPU kernels")


# ---- the step ---------------------------------------------------------------------------------

def test_the_step_has_the_cremad_preset_and_shapes():
    spec = step_spec(StepSetting("Baseline"), CREMAD_SIZE, CPU)
    info = spec_info(spec)
    assert info.input_shapes == {"audio": (1, 300, 128), "visual": (2, 3, 224, 224)}
    assert info.num_classes == 6
    assert spec.train.batch_size == 64
    assert spec.model.encoders["audio"].type == spec.model.encoders["visual"].type == "resnet18"
    tiny = spec_info(step_spec(StepSetting("Baseline"), TINY_SIZE, CPU))
    assert tiny.input_shapes == {"audio": (1, 32, 128), "visual": (2, 3, 32, 32)}


def _params_after_one_step(method: str) -> list[torch.Tensor]:
    step = TrainStep(StepSetting(method), TINY_SIZE, CPU)
    assert step.method.active(step.info.epoch) and step.info.active
    out = step()
    assert torch.isfinite(out.loss)
    return [p.detach().clone() for p in step.trainer.model.parameters()]


def test_each_method_is_timed_doing_its_own_step():
    base = _params_after_one_step("Baseline")
    assert all(torch.equal(a, b) for a, b in zip(base, _params_after_one_step("Baseline")))
    for method in ("OGM", "MMPareto"):  # OGM's window opens at epoch 10: the step is there
        other = _params_after_one_step(method)
        assert not all(torch.equal(a, b) for a, b in zip(base, other)), method


def test_the_training_settings_reach_the_step():
    step = TrainStep(StepSetting("Baseline", "bf16", channels_last=True), TINY_SIZE, CPU)
    assert step.info.epoch == 0
    out = step()
    assert out.out.logits.dtype == torch.bfloat16
    assert step.batch["audio"].is_contiguous(memory_format=torch.channels_last)
    conv = step.trainer.model.encoders["visual"].modules()
    weights = [m.weight for m in conv if isinstance(m, torch.nn.Conv2d)]
    assert weights and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
    assert TrainStep(StepSetting("OGM"), TINY_SIZE, CPU).info.epoch == 10


# ---- figures from timings ---------------------------------------------------------------------

def _result(method: str, precision: str, seconds: float | None, error: str | None = None):
    timing = Timing((seconds,)) if seconds is not None else None
    return StepResult(StepSetting(method, precision), 8, timing, error)


def test_multiples_are_per_training_setting_and_speedups_per_method():
    results = [_result("Baseline", "fp32", 0.1), _result("OGM", "fp32", 0.2),
               _result("Baseline", "bf16", 0.05), _result("OGM", "bf16", 0.15),
               _result("MMPareto", "bf16", None, "RuntimeError: boom")]
    multiples = baseline_multiples(results)
    assert multiples == pytest.approx({StepSetting("Baseline"): 1.0, StepSetting("OGM"): 2.0,
                                       StepSetting("Baseline", "bf16"): 1.0,
                                       StepSetting("OGM", "bf16"): 3.0})
    speedups = speedups_over_fp32(results)
    assert speedups[StepSetting("Baseline", "bf16")] == pytest.approx(2.0)
    assert speedups[StepSetting("OGM", "bf16")] == pytest.approx(0.2 / 0.15)
    rows = result_rows(results)
    assert rows[0]["samples_per_second"] == pytest.approx(80.0)
    assert rows[-1]["error"] == "RuntimeError: boom" and "median_ms" not in rows[-1]
    table = markdown_table(rows)
    assert "| OGM | bf16 | 8 | 53.3 | 150.00 (150.00-150.00) | 3.00x | 1.33x |" in table
    assert "| MMPareto | bf16 | 8 | failed: RuntimeError: boom |" in table


def test_time_calls_times_the_call_only_after_warmup():
    calls = {"fn": 0, "setup": 0}

    def fn():
        calls["fn"] += 1
        time.sleep(0.002)

    def setup():
        calls["setup"] += 1
        time.sleep(0.05)

    timing = time_calls(fn, CPU, repeats=3, warmup=2, setup=setup)
    assert calls == {"fn": 5, "setup": 5}
    assert len(timing.seconds) == 3
    assert 0.002 <= timing.min and timing.max < 0.04  # the set-up's 50 ms is not in it
    with pytest.raises(ValueError, match="repeats >= 1"):
        time_calls(fn, CPU, repeats=0)


def test_a_queued_timing_starts_the_clock_behind_a_device_wait(monkeypatch):
    """On CUDA the events bracket the call; `queued` puts the wait before the start event, so
    the host launches the call while the device waits (a bandwidth is the kernels' time)."""
    log: list[str] = []

    class FakeEvent:
        def __init__(self, enable_timing: bool) -> None:
            assert enable_timing

        def record(self) -> None:
            log.append("record")

        def synchronize(self) -> None:
            log.append("wait")

        def elapsed_time(self, end: "FakeEvent") -> float:
            return 2.0  # milliseconds

    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: log.append("sync"))
    monkeypatch.setattr(torch.cuda, "_sleep", lambda cycles: log.append(f"sleep {cycles}"))
    cuda = torch.device("cuda")
    for queued, before in ((False, []), (True, [f"sleep {LAUNCH_COVER_CYCLES}"])):
        log.clear()
        timing = time_calls(lambda: log.append("call"), cuda, repeats=1, warmup=0, queued=queued)
        assert log == ["sync", *before, "record", "call", "record", "wait"]
        assert timing.seconds == (0.002,)


# ---- kernels ----------------------------------------------------------------------------------

def test_the_gradient_list_is_the_cremad_model():
    grads = kernels.av_gradients(CPU)
    by_group = {j: sum(g.numel() for g, k in zip(grads.grads, grads.host_group) if k == j)
                for j in set(grads.host_group)}
    assert by_group[0] + by_group[1] == RESNET18_AV_ENCODER_ELEMENTS
    assert by_group[2] == 2 * 512 * 6 + 6  # the concat head
    assert by_group[1] - by_group[0] == 2 * 64 * 7 * 7  # the visual stem sees 3 channels, audio 1
    assert grads.bytes == 4 * grads.elements and grads.group.tolist() == grads.host_group


def test_grad_scale_figures_on_cpu_tensors():
    need_cpu_kernels()
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(300, 40, generator=g), torch.randn(77, generator=g),
             torch.randn(64, 3, 3, generator=g)]
    grad_list = kernels.GradList(grads, torch.tensor([0, 1, 2]), [0, 1, 2])
    before = [t.clone() for t in grads]
    figures = kernels.measure_grad_scale(grad_list, CPU, repeats=2, warmup=1)
    assert all(torch.equal(a, b) for a, b in zip(grads, before))  # left as it found them
    moved = 2 * 4 * (12000 + 77 + 576)
    ext = figures["noise=False"]["ext"]
    assert ext["GB_per_s"] == pytest.approx(moved / (ext["device_median_ms"] / 1e3) / 1e9)
    assert set(figures["noise=False"]) == {"ext", "ref", "loop", "loop-mul"}
    assert set(figures["noise=True"]) == {"ext", "ref", "loop"}
    assert "GB_per_s" not in figures["noise=True"]["ext"]  # two passes: no one-pass bandwidth
    loop = figures["noise=True"]["loop"]
    assert loop["ext_speedup"] == pytest.approx(loop["median_ms"] / figures["noise=True"]["ext"]["median_ms"])


def test_subset_correct_comparison_on_cpu():
    need_cpu_kernels()
    rows = kernels.compare_subset_correct(CPU, n=64, repeats=1, warmup=0)
    assert [(r["M"], r["K"]) for r in rows] == list(kernels.SUBSET_CASES)
    assert all(r["identical"] and r["N"] == 64 for r in rows)


# ---- the script -------------------------------------------------------------------------------

@pytest.mark.parametrize("line,expected", [
    ("14 passed, 64 deselected in 3.21s", {"passed": 14, "deselected": 64}),
    ("1 failed, 12 passed, 1 error in 2.00s", {"failed": 1, "passed": 12, "errors": 1}),
    ("14/78 tests collected (64 deselected) in 1.02s", {"collected": 14, "deselected": 64}),
    ("no tests ran in 0.01s", {}),
])
def test_pytest_counts(line, expected):
    assert gpu.pytest_counts(f"tests/ops/test_api.py::x\n\n{line}\n") == expected


def test_grad_scale_targets_are_judged_only_on_the_gpu():
    figures = {"copy": {"GB_per_s": 4000.0},
               "noise=False": {"ext": {"GB_per_s": 2000.0}, "loop": {"ext_speedup": 25.0}},
               "noise=True": {"loop": {"ext_speedup": 8.0}}}
    share, plain, noisy = gpu.grad_scale_targets(figures, assessed=True)
    assert (share.measured, share.met) == (50.0, False)
    assert (plain.met, noisy.met) == (True, False)
    assert all(t.met is None for t in gpu.grad_scale_targets(figures, assessed=False))


def test_summary_files(tmp_path):
    stages = [StageResult("a", PASSED, seconds=1.0, figures={"x": float("nan")},
                          targets=(Target("t", 3.0, 10.0, "x"),), details="| table |"),
              StageResult("b", SKIPPED, "no CUDA device"), StageResult("c", FAILED, "Boom: it")]
    header = {"dry_run": True, "command": "bash benchmarks/gpu/run.sh --dry-run", "seconds": 2.0,
              "started": "2026-12-02 05:00:00", "machine": {"device": "cpu", "torch": "2.14"}}
    json_path, md_path = write_summary(tmp_path, header, stages)
    data = json.loads(json_path.read_text())
    assert data["exit_status"] == 1 and data["dry_run"] is True
    assert [(s["name"], s["status"]) for s in data["stages"]] == [
        ("a", PASSED), ("b", SKIPPED), ("c", FAILED)]
    assert data["stages"][0]["figures"]["x"] is None  # strict JSON
    assert data["stages"][0]["targets"][0]["met"] is False
    text = md_path.read_text()
    assert "| b | skipped | 0.0 | no CUDA device |" in text and "| c | failed |" in text
    assert "| t | 3 x | >= 10 x | **not met** |" in text and "| table |" in text


def test_a_crashing_stage_fails_the_run_and_the_others_still_report(tmp_path, monkeypatch):
    def crash(ctx):
        raise RuntimeError("device lost\nsecond line")

    def fine(ctx):
        return StageResult("", PASSED, figures={"answer": 42})

    monkeypatch.setattr(gpu, "STAGES", (("crash", crash), ("fine", fine)))
    threads = torch.get_num_threads()
    try:
        assert gpu.main(["--methods", "Baseline", "--dry-run", "--out", str(tmp_path)]) == 1
        assert torch.get_num_threads() == 1  # the dry run's setting
    finally:
        torch.set_num_threads(threads)  # the rest of the session keeps its threads
    data = json.loads((tmp_path / "summary.json").read_text())
    crashed, ok = data["stages"]
    assert (crashed["status"], crashed["reason"]) == (FAILED, "RuntimeError: device lost")
    assert (ok["status"], ok["figures"]) == (PASSED, {"answer": 42})
    assert data["machine"]["torch"] == torch.__version__


def test_throughput_stages_keep_going_and_compare_compiled_with_plain_steps(monkeypatch, tmp_path):
    seconds = {StepSetting("Baseline"): 0.1, StepSetting("Baseline", "bf16", True, True): 0.04}

    def fake_measure(setting, size, device, repeats, warmup):
        if setting not in seconds:
            raise RuntimeError("compile failed\ndetails")
        return StepResult(setting, 4, Timing((seconds[setting],)))

    monkeypatch.setattr(gpu, "measure_step", fake_measure)
    ctx = gpu.Context(CPU, gpu.DRY_PLAN, tmp_path, ("Baseline", "OGM"))
    eager = gpu.measure_settings(ctx, [StepSetting("Baseline")])
    assert eager.status == PASSED
    compiled = gpu.measure_settings(ctx, [StepSetting("Baseline", "bf16", True, True),
                                          StepSetting("OGM", "bf16", True, True)])
    assert compiled.status == FAILED and "OGM [bf16 + channels_last + compile]" in compiled.reason
    base, ogm = compiled.figures["steps"]
    assert base["speedup_over_fp32"] == pytest.approx(2.5)  # against the earlier stage's step
    assert ogm["error"] == "RuntimeError: compile failed"


def test_the_command_line_refuses_what_it_cannot_do(tmp_path, capsys):
    file = tmp_path / "f"
    file.write_text("")
    methods = ["--methods", "baseline", "OGM"]
    assert gpu.parse_args([*methods, "--dry-run"]).methods == ["Baseline", "OGM"]  # canonical
    for argv, message in [([*methods, "--dry-run", "--out", str(file)], "is a file; expected a folder"),
                          (["--methods", "OMG", "--dry-run"], "--methods: unknown method 'OMG'"),
                          (["--dry-run"], "arguments are required: --methods"),
                          ([*methods, "--dry-run", "--deadline", "0"], "need a positive number")]:
        with pytest.raises(SystemExit) as exc:
            gpu.parse_args(argv)
        assert exc.value.code == 2 and message in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit) as exc:
            gpu.parse_args([*methods, "--out", str(tmp_path)])
        assert exc.value.code == 2 and "pass --dry-run" in capsys.readouterr().err


def test_a_stage_that_would_start_after_the_deadline_is_skipped(tmp_path, monkeypatch):
    def slow(ctx):
        time.sleep(1.2)  # past the deadline of 1 s: the next stage must not start
        return StageResult("", PASSED)

    monkeypatch.setattr(gpu, "STAGES", (("slow", slow), ("late", slow)))
    threads = torch.get_num_threads()
    try:
        assert gpu.main(["--methods", "Baseline", "--dry-run", "--deadline", "1",
                         "--out", str(tmp_path)]) == 0  # nothing failed
    finally:
        torch.set_num_threads(threads)
    data = json.loads((tmp_path / "summary.json").read_text())
    assert data["deadline_seconds"] == 1.0
    assert [(s["name"], s["status"]) for s in data["stages"]] == [("slow", PASSED), ("late", SKIPPED)]
    assert "deadline" in data["stages"][1]["reason"]


def test_the_throughput_stage_starts_no_setting_after_the_deadline(monkeypatch, tmp_path):
    left = [30.0]  # seconds, on a clock of the test's own: each step measured takes 40

    def fake_measure(setting, size, device, repeats, warmup):
        left[0] -= 40.0
        return StepResult(setting, 4, Timing((0.1,)))

    monkeypatch.setattr(gpu, "measure_step", fake_measure)
    monkeypatch.setattr(gpu.Context, "seconds_left", lambda self: left[0])
    settings = [StepSetting("Baseline"), StepSetting("OGM"), StepSetting("Baseline", "bf16")]
    ctx = gpu.Context(CPU, gpu.DRY_PLAN, tmp_path, ("Baseline", "OGM"))
    stage = gpu.measure_settings(ctx, settings)
    assert stage.status == PASSED and [r["method"] for r in stage.figures["steps"]] == ["Baseline"]
    assert stage.reason.endswith("deadline reached, not timed: OGM [fp32], Baseline [bf16]")
    late = gpu.measure_settings(ctx, settings[:1])
    assert late.status == SKIPPED and not late.figures["steps"]


def test_timed_out_cuda_tests_keep_their_output(monkeypatch, tmp_path):
    def hung(cmd, **kwargs):
        raise gpu.subprocess.TimeoutExpired(cmd, kwargs["timeout"], output=b"test_a PASSED\n",
                                            stderr=b"stuck in test_b")

    monkeypatch.setattr(gpu.subprocess, "run", hung)
    ctx = gpu.Context(torch.device("cuda"), gpu.GPU_PLAN, tmp_path, ("Baseline",),
                      deadline=time.perf_counter() + 60)
    stage = gpu.stage_cuda_tests(ctx)
    assert stage.status == FAILED and "more than 60 s" in stage.reason
    assert (tmp_path / "cuda_tests.log").read_text() == "test_a PASSED\nstuck in test_b"


def test_the_machine_description_survives_a_failing_probe(monkeypatch):
    def broken(device, fast_path=None):
        raise gpu.subprocess.TimeoutExpired(["git"], 10)

    monkeypatch.setattr(gpu, "environment", broken)
    info = gpu.machine(CPU)
    assert info["torch"] == torch.__version__ and info["error"].startswith("TimeoutExpired")
    header = {"dry_run": True, "command": "x", "seconds": 1.0, "started": "now", "machine": info}
    assert "- not read: TimeoutExpired" in markdown(header, [])
