"""The GPU validation script and its parts (docs/kernels.md, "GPU validation").

One command on a GPU machine (`bash benchmarks/gpu/run.sh`, which runs
`python -m bbench.benchmarking`) loads or builds the kernels, runs the CUDA tests, measures the
kernels against a device-to-device copy and their references, and times the ResNet18
audio-visual training step, writing one JSON and one Markdown summary. It lives in the package,
not in `benchmarks/`, so its parts are importable and unit-tested, and so its `--dry-run`
(CPU, tiny sizes) can run in CI and keep every code path alive without a GPU.

- `timing.py`: median device time of a call after warm-up (CUDA events, or the CPU clock);
- `kernels.py`: the ResNet18-AV gradient list, `grad_scale_` bandwidth and the loops it
  replaces, `subset_correct` against its reference;
- `summary.py`: stage results, targets, and the JSON / Markdown files;
- `gpu.py`: the stages and the command line.

The training-step timer shared with the pytest-benchmark is `bbench.testing.throughput`.
"""
