"""The GPU validation script: one command that checks bbench on a GPU machine, offline.

    bash benchmarks/gpu/run.sh [--out DIR] [--dry-run]
    # = python -m bbench.benchmarking --methods Baseline OGM MMPareto [--out DIR] [--dry-run]

Stages, in order; each ends passed, failed or skipped (with the reason), and the summary
(`summary.json`, `summary.md` in --out) is rewritten after each one. The run keeps to
`--deadline` seconds (default 450: a lent GPU's call is limited, and what has not been written
by then is lost): the build and the tests are given at most what is left, a stage that would
start after the deadline is skipped, the throughput stages start no further setting, and the
compiled steps are skipped when less than `COMPILE_SECONDS` are left.

1. `kernels`: load the compiled kernels; on a GPU machine whose build has no CUDA kernels,
   build them in place first (`setup.py build_ext --inplace`; log in build.log). Fails when
   the device's kernels do not load.
2. `cuda-tests`: the existing CUDA tests (`pytest tests/ops -m cuda`, with
   BBENCH_REQUIRE_EXT=1 so a missing kernel fails rather than skips; log in cuda_tests.log).
3. `grad-scale`: `grad_scale_` on the ResNet18-AV gradient list, its achieved bandwidth as a
   share of a device-to-device copy timed in the same run, and its speed-up over the
   per-parameter loop (targets: >= 60 % of the copy, >= 10x the loop).
4. `subset-correct`: the CUDA kernel against its reference (identical outputs, speed-up).
5. `training-throughput`: a ResNet18 audio-visual training step on CREMA-D-shaped inputs of
   each method of --methods (run.sh: Baseline, OGM-GE, MMPareto), fp32 and bf16,
   channels_last off and on.
6. `training-throughput-compile`: the same methods with `train.compile` (bf16, channels_last).

The methods are an argument, not a constant, because nothing in bbench/ outside
bbench/methods/ may name a method (tests/contract/test_method_names.py).

`--dry-run` runs every stage on the CPU at tiny sizes (CI runs it, so the script cannot rot):
the CUDA stages execute their measuring code on CPU tensors and report "skipped: no CUDA
device" with those figures, targets not assessed; the CUDA tests are collected, not run; the
compiled step is skipped (compiling two ResNet18 encoders takes minutes on a CPU); torch uses
one thread (on a shared 2-core machine a two-thread OpenMP region waits for a busy core: the
dry run took 3 minutes that way, 35 s with one thread). The exit status is 1 when a stage
failed (a CUDA test, a wrong kernel result, a crash), else 0; a missed target is reported in
the summary, not in the exit status.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from bbench.benchmarking import kernels
from bbench.benchmarking.summary import (
    FAILED,
    PASSED,
    SKIPPED,
    StageResult,
    Target,
    exit_status,
    write_summary,
)
from bbench.methods.registry import METHODS
from bbench.plugin.machine import machine_info
from bbench.registry import UnknownNameError
from bbench.results.record import environment
from bbench.testing.throughput import (
    CREMAD_SIZE,
    TINY_SIZE,
    InputSize,
    StepResult,
    StepSetting,
    markdown_table,
    measure_step,
    result_rows,
    settings_matrix,
)

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "runs" / "gpu-check"
NO_CUDA = "no CUDA device"
BANDWIDTH_TARGET, LOOP_TARGET = 60.0, 10.0  # % of the copy's bandwidth; x the loop's time
TESTS_TIMEOUT, BUILD_TIMEOUT, PROBE_TIMEOUT = 180, 300, 120  # seconds at most; less when the
# deadline is nearer
DEFAULT_DEADLINE = 450.0  # seconds of the whole run
COMPILE_SECONDS = 180.0  # what compiling two ResNet18 encoders and timing them may take
PLURAL = {"error": "errors", "warning": "warnings"}  # pytest writes "1 error", "2 errors"


@dataclass(frozen=True)
class Plan:
    """Sizes and repeats of one run: the GPU's, or the dry run's (seconds on a CPU)."""

    kernel_repeats: int
    kernel_warmup: int
    subset_samples: int
    step_size: InputSize
    step_repeats: int
    step_warmup: int


GPU_PLAN = Plan(kernel_repeats=30, kernel_warmup=5, subset_samples=10_000, step_size=CREMAD_SIZE,
                step_repeats=20, step_warmup=5)
DRY_PLAN = Plan(kernel_repeats=2, kernel_warmup=1, subset_samples=256, step_size=TINY_SIZE,
                step_repeats=1, step_warmup=1)


@dataclass(frozen=True)
class Context:
    """What every stage is given: the device, the plan, the output folder, the methods, and
    the training steps timed so far."""

    device: torch.device
    plan: Plan
    out: Path
    methods: tuple[str, ...]
    steps: list[StepResult] = field(default_factory=list)  # timed so far, by every stage
    deadline: float = float("inf")  # time.perf_counter() by which the run must be done

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def seconds_left(self) -> float:
        return self.deadline - time.perf_counter()

    def limit(self, seconds: float) -> float:
        """`seconds`, or what is left of the run if that is less (at least one second)."""
        return max(1.0, min(seconds, self.seconds_left()))

    def not_on_cuda(self) -> str:
        """The reason a CUDA stage gives in a dry run."""
        return f"{NO_CUDA} (dry run: the measuring code ran on CPU tensors; targets not assessed)"


# ---- stage 1: kernels -----------------------------------------------------------------------

PROBE = """
import json, torch
from bbench import ops
info = ops.extension_info()
if "cuda" in info["backends"] and torch.cuda.is_available():
    try:  # registered is not runnable: a build for another architecture has no kernel image
        grads = [torch.ones(4, device="cuda")]
        ops.grad_scale_(grads, torch.zeros(1, dtype=torch.long, device="cuda"),
                        torch.full((1,), 0.5, device="cuda"), None, seed=0, backend="ext")
        torch.cuda.synchronize()
        assert grads[0].tolist() == [0.5] * 4, grads[0].tolist()
    except Exception as exc:
        info["backends"].remove("cuda")
        info["error"] = f"its CUDA kernel does not run here: {type(exc).__name__}: {exc}"
print(json.dumps(info))
"""


def probe_extension(timeout: float) -> dict[str, Any]:
    """The extension as a fresh process finds it, so that this one has not loaded it yet (a
    build can still replace it); its CUDA kernels count only if one of them runs."""
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                          cwd=REPO, timeout=timeout)
    if proc.returncode:
        raise RuntimeError(f"could not import bbench in a fresh process: {proc.stderr.strip()}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def build_in_place(out: Path, timeout: float) -> float:
    """`setup.py build_ext --inplace` (all cores, no network); its seconds."""
    env = {**os.environ, "MAX_JOBS": os.environ.get("MAX_JOBS", str(os.cpu_count() or 1))}
    started = time.perf_counter()
    with open(out / "build.log", "w") as log:
        try:
            proc = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"],
                                  cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"building the kernels took more than {timeout:.0f} s; see "
                               f"{out / 'build.log'}") from None
    if proc.returncode:
        raise RuntimeError(f"building the kernels failed (exit {proc.returncode}); see {out / 'build.log'}")
    return time.perf_counter() - started


def stage_kernels(ctx: Context) -> StageResult:
    """Load the device's kernels; on a GPU, build them in place first when they are missing
    (setup.py decides whether it can build CUDA kernels here, and says why not in build.log)."""
    probe = probe_extension(ctx.limit(PROBE_TIMEOUT))
    kind = ctx.device.type
    built = None
    if kind not in probe["backends"]:
        if not ctx.cuda:
            return StageResult("", FAILED, f"the bbench extension has no {kind} kernels "
                               f"(backends: {probe['backends']}, error: {probe['error']}); run "
                               f"`pip install --no-build-isolation -e .`", figures=probe)
        built = build_in_place(ctx.out, ctx.limit(BUILD_TIMEOUT))
        probe = probe_extension(ctx.limit(PROBE_TIMEOUT))  # the new build's kernel must run
    figures = {**probe, "built_seconds": built}
    details = (f"extension {probe['path']}, kernels for {', '.join(probe['backends']) or 'nothing'}"
               + (f"; built here in {built:.0f} s (build.log)" if built is not None else ""))
    if kind not in probe["backends"]:
        why = (f"the build made none that runs here (build.log says why the build made none: "
               f"nvcc missing, or not matching torch's CUDA {torch.version.cuda}; "
               f"{probe['error']})" if built is not None else f"error: {probe['error']}")
        return StageResult("", FAILED, f"no {kind} kernels: {why}", figures=figures,
                           details=details)
    return StageResult("", PASSED, None, figures=figures, details=details)


# ---- stage 2: the CUDA tests ---------------------------------------------------------------

def pytest_counts(output: str) -> dict[str, int]:
    """Outcome counts from pytest's last summary line ("3 passed, 70 deselected in 2.1s", or,
    with --collect-only, "3/73 tests collected (70 deselected) in 1.0s")."""
    lines = [line for line in output.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    counts = {PLURAL.get(word, word): int(n) for n, word in re.findall(
        r"(\d+) (passed|failed|skipped|deselected|xfailed|xpassed|errors?|warnings?)\b", last)}
    collected = re.search(r"(\d+)(?:/\d+)? tests? collected", last)
    if collected:
        counts["collected"] = int(collected.group(1))
    return counts


def stage_cuda_tests(ctx: Context) -> StageResult:
    tests = REPO / "tests" / "ops"
    if not tests.is_dir():
        return StageResult("", FAILED, f"the kernel tests are not at {tests} (run from a checkout)")
    cmd = [sys.executable, "-m", "pytest", str(tests), "-m", "cuda", "-q", "-p", "no:cacheprovider"]
    if not ctx.cuda:
        cmd.append("--collect-only")
    env = {**os.environ, "BBENCH_REQUIRE_EXT": "1"}
    timeout = ctx.limit(TESTS_TIMEOUT)
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as stopped:  # keep what they printed: which test hung
        (ctx.out / "cuda_tests.log").write_text(as_text(stopped.stdout) + as_text(stopped.stderr))
        return StageResult("", FAILED, f"the CUDA tests took more than {timeout:.0f} s; see "
                           f"cuda_tests.log")
    (ctx.out / "cuda_tests.log").write_text(proc.stdout + proc.stderr)
    counts = pytest_counts(proc.stdout)
    figures = {"command": shlex.join(cmd), "exit_code": proc.returncode, **counts}
    tally = ", ".join(f"{n} {word}" for word, n in counts.items()) or "no summary line"
    details = f"`{shlex.join(cmd)}`: exit {proc.returncode}, {tally} (cuda_tests.log)"
    if not ctx.cuda:
        if proc.returncode or not counts.get("collected"):
            return StageResult("", FAILED, f"collecting the CUDA tests failed (exit "
                               f"{proc.returncode}, {tally}); see cuda_tests.log", figures=figures,
                               details=details)
        return StageResult("", SKIPPED, f"{NO_CUDA} ({counts['collected']} CUDA tests collected, "
                           f"not run)", figures=figures, details=details)
    if proc.returncode or not counts.get("passed"):
        return StageResult("", FAILED, f"pytest exit {proc.returncode}: {tally}; see "
                           f"cuda_tests.log", figures=figures, details=details)
    return StageResult("", PASSED, None, figures=figures, details=details)


# ---- stages 3 and 4: kernel figures ----------------------------------------------------------

def grad_scale_targets(figures: dict[str, Any], assessed: bool) -> tuple[Target, ...]:
    plain, noisy = figures["noise=False"], figures["noise=True"]
    share = 100 * plain["ext"]["GB_per_s"] / figures["copy"]["GB_per_s"]
    return (Target("grad_scale_ bandwidth, ResNet18-AV, no noise, share of a device copy",
                   share, BANDWIDTH_TARGET, "%", assessed),
            Target("grad_scale_ vs per-parameter loop, no noise", plain["loop"]["ext_speedup"],
                   LOOP_TARGET, "x", assessed),
            Target("grad_scale_ vs per-parameter loop, noise", noisy["loop"]["ext_speedup"],
                   LOOP_TARGET, "x", assessed))


def grad_scale_table(figures: dict[str, Any]) -> str:
    copy = figures["copy"]
    lines = [f"{figures['tensors']} tensors, {figures['elements']:,} float32 values "
             f"({figures['bytes'] / 1e6:.1f} MB); device copy of the same bytes: "
             f"{copy['median_ms']:.4f} ms, {copy['GB_per_s']:.0f} GB/s (read + written). "
             f"`median ms`: whole calls, launches included (the speed-ups); `device ms`: the "
             f"kernels alone (the bandwidths).", "",
             "| noise | implementation | median ms | device ms | GB/s | share of copy | time / ext |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for noise in (False, True):
        for name, entry in figures[f"noise={noise}"].items():
            gbs = entry.get("GB_per_s")
            cells = ("-", "-", "-") if gbs is None else (
                f"{entry['device_median_ms']:.4f}", f"{gbs:.0f}",
                f"{100 * gbs / copy['GB_per_s']:.0f} %")
            lines.append(f"| {noise} | {name} | {entry['median_ms']:.4f} | {cells[0]} | "
                         f"{cells[1]} | {cells[2]} | {entry['ext_speedup']:.2f}x |")
    return "\n".join(lines)


def stage_grad_scale(ctx: Context) -> StageResult:
    grads = kernels.av_gradients(ctx.device)
    figures = kernels.measure_grad_scale(grads, ctx.device, ctx.plan.kernel_repeats,
                                         ctx.plan.kernel_warmup)
    status, reason = (PASSED, None) if ctx.cuda else (SKIPPED, ctx.not_on_cuda())
    return StageResult("", status, reason, figures=figures,
                       targets=grad_scale_targets(figures, ctx.cuda),
                       details=grad_scale_table(figures))


def stage_subset_correct(ctx: Context) -> StageResult:
    rows = kernels.compare_subset_correct(ctx.device, ctx.plan.subset_samples,
                                          ctx.plan.kernel_repeats, ctx.plan.kernel_warmup)
    lines = ["| M | N | K | identical | ext median ms | reference median ms | speed-up |",
             "|---:|---:|---:|---|---:|---:|---:|"]
    lines += [f"| {r['M']} | {r['N']} | {r['K']} | {r['identical']} | {r['ext']['median_ms']:.4f} "
              f"| {r['ref']['median_ms']:.4f} | {r['speedup']:.1f}x |" for r in rows]
    wrong = [f"M={r['M']}, K={r['K']}" for r in rows if not r["identical"]]
    if wrong:
        status, reason = FAILED, f"kernel and reference differ at {', '.join(wrong)}"
    else:
        status, reason = (PASSED, None) if ctx.cuda else (SKIPPED, ctx.not_on_cuda())
    return StageResult("", status, reason, figures={"cases": rows}, details="\n".join(lines))


# ---- stages 5 and 6: training throughput -----------------------------------------------------

def measure_settings(ctx: Context, settings: Sequence[StepSetting]) -> StageResult:
    """Time each setting; one that crashes is recorded with its error and the rest still run,
    until the deadline (the settings left are named in the reason). The steps of earlier
    stages (`ctx.steps`) stay the references of the speed-ups, so the compiled steps are
    compared with the plain fp32 ones."""
    results: list[StepResult] = []
    left: list[StepSetting] = []
    for setting in settings:
        if ctx.seconds_left() <= 0:
            left.append(setting)
            continue
        try:
            result = measure_step(setting, ctx.plan.step_size, ctx.device, ctx.plan.step_repeats,
                                  ctx.plan.step_warmup)
            print(f"  {setting.method} [{setting.variant}]: "
                  f"{result.samples_per_second:.1f} samples/s", flush=True)
        except Exception as exc:  # noqa: BLE001 - reported in the summary, the others still run
            traceback.print_exc()
            result = StepResult(setting, ctx.plan.step_size.batch, error=first_line(exc))
        results.append(result)
        if ctx.cuda:
            torch.cuda.empty_cache()
    ctx.steps.extend(results)
    rows = result_rows(ctx.steps)[len(ctx.steps) - len(results):]
    failed = [f"{r.setting.method} [{r.setting.variant}]" for r in results if r.error]
    status, reason = (FAILED, f"failed: {', '.join(failed)}") if failed else (PASSED, None)
    if not ctx.cuda and not failed:
        reason = "dry run: tiny inputs on the CPU"
    if left:
        status = SKIPPED if not results else status
        reason = "; ".join(filter(None, [reason, "deadline reached, not timed: " + ", ".join(
            f"{s.method} [{s.variant}]" for s in left)]))
    return StageResult("", status, reason, figures={"steps": rows}, details=markdown_table(rows))


def stage_throughput(ctx: Context) -> StageResult:
    return measure_settings(ctx, settings_matrix(ctx.methods))


def stage_throughput_compile(ctx: Context) -> StageResult:
    if not ctx.cuda:
        return StageResult("", SKIPPED, "dry run: torch.compile of two ResNet18 encoders takes "
                           "minutes on a CPU")
    if ctx.seconds_left() < COMPILE_SECONDS:
        return StageResult("", SKIPPED, f"{ctx.seconds_left():.0f} s left of the deadline; "
                           f"compiling and timing the steps needs about {COMPILE_SECONDS:.0f} s")
    return measure_settings(ctx, settings_matrix(ctx.methods, ("bf16",), (True,), (True,)))


STAGES: tuple[tuple[str, Callable[[Context], StageResult]], ...] = (
    ("kernels", stage_kernels), ("cuda-tests", stage_cuda_tests),
    ("grad-scale", stage_grad_scale), ("subset-correct", stage_subset_correct),
    ("training-throughput", stage_throughput),
    ("training-throughput-compile", stage_throughput_compile))


# ---- running --------------------------------------------------------------------------------

def as_text(output: str | bytes | None) -> str:
    """What a timed-out subprocess had printed (bytes even with text=True, or None)."""
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:300]


def run_stage(name: str, fn: Callable[[Context], StageResult], ctx: Context) -> StageResult:
    """One stage, timed; a crash becomes a failed stage (traceback on stderr), and a stage
    that would start after the deadline is skipped."""
    print(f"[{name}]", flush=True)
    started = time.perf_counter()
    try:
        result = (fn(ctx) if ctx.seconds_left() > 0 else
                  StageResult(name, SKIPPED, "the run's deadline (--deadline) had passed"))
    except Exception as exc:  # noqa: BLE001 - the summary records it; later stages still run
        traceback.print_exc()
        result = StageResult(name, FAILED, first_line(exc))
    result = replace(result, name=name, seconds=time.perf_counter() - started)
    print(f"[{name}] {result.status}" + (f": {result.reason}" if result.reason else ""), flush=True)
    return result


def nvidia_driver() -> str | None:
    try:
        proc = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip().splitlines()[0] if proc.returncode == 0 and proc.stdout.strip() else None


def machine(device: torch.device) -> dict[str, Any]:
    """Versions, CPU, GPU, driver and kernels (loads the extension: after stage 1); what could
    not be read is named, and the stages' figures are still written."""
    try:
        info = {**environment(device), "cpu_brand": machine_info()["cpu"]["brand"]}
    except Exception as exc:  # noqa: BLE001 - e.g. git timing out: the figures matter more
        info = {"torch": torch.__version__, "error": first_line(exc)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(driver=nvidia_driver(), cudnn=torch.backends.cudnn.version(),
                    compute_capability=f"{props.major}.{props.minor}",
                    gpu_memory_gib=props.total_memory / 2**30,
                    multiprocessors=props.multi_processor_count)
    return info


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks/gpu/run.sh",
        description="Validate bbench on one GPU, offline: load or build the kernels, run the CUDA "
                    "tests, measure the kernels and the ResNet18-AV training step; write "
                    "summary.json and summary.md. Pick the GPU with CUDA_VISIBLE_DEVICES.")
    parser.add_argument("--methods", nargs="+", required=True, metavar="METHOD",
                        help="the methods whose training step is timed (run.sh names them)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"folder for the summaries and logs (default: {DEFAULT_OUT})")
    parser.add_argument("--dry-run", action="store_true",
                        help="every stage on the CPU at tiny sizes (CI's check; no GPU needed)")
    parser.add_argument("--deadline", type=float, default=DEFAULT_DEADLINE, metavar="SECONDS",
                        help=f"finish within this many seconds: later stages and settings are "
                             f"skipped and named (default: {DEFAULT_DEADLINE:.0f})")
    args = parser.parse_args(argv)
    if not args.deadline > 0:
        parser.error(f"--deadline {args.deadline:g}: need a positive number of seconds")
    try:
        args.methods = [METHODS.canonical(name) for name in args.methods]
    except UnknownNameError as err:
        parser.error(f"--methods: {err}")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} is a file; expected a folder (it is created if missing)")
    if not args.dry_run and not torch.cuda.is_available():
        parser.error(f"{NO_CUDA} is visible (torch {torch.__version__}, built for CUDA "
                     f"{torch.version.cuda or 'none'}): run this on a GPU machine, or pass "
                     f"--dry-run for the CPU check")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device("cpu" if args.dry_run else "cuda")
    if device.type == "cuda":
        torch.cuda.set_device(0)
    else:  # the dry run checks code paths, not speed: one thread cannot stall on a busy core
        torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    started, clock = datetime.datetime.now(datetime.timezone.utc), time.perf_counter()
    ctx = Context(device, DRY_PLAN if args.dry_run else GPU_PLAN, args.out, tuple(args.methods),
                  deadline=clock + args.deadline)
    arguments = sys.argv[1:] if argv is None else list(argv)
    command = shlex.join([Path(sys.executable).name, "-m", "bbench.benchmarking", *arguments])
    header: dict[str, Any] = {"dry_run": args.dry_run, "command": command,
                              "deadline_seconds": args.deadline,
                              "started": started.strftime("%Y-%m-%d %H:%M:%S"), "machine": {}}
    results: list[StageResult] = []
    for name, fn in STAGES:
        results.append(run_stage(name, fn, ctx))
        if not header["machine"]:
            header["machine"] = machine(device)
        header["seconds"] = time.perf_counter() - clock
        json_path, md_path = write_summary(args.out, header, results)
    print(f"summary: {md_path} and {json_path}")
    return exit_status(results)
