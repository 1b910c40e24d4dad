#!/usr/bin/env bash
# The GPU validation script (docs/kernels.md, "GPU validation"): one command, offline, on one GPU.
#   bash benchmarks/gpu/run.sh [--out DIR]          # on the GPU machine
#   bash benchmarks/gpu/run.sh --dry-run --out DIR  # every stage on the CPU, tiny sizes (CI)
#   bash benchmarks/gpu/run.sh --help
# It installs nothing and needs no network: bbench, torch (CUDA build) and the test
# dependencies must be there (pip install --no-build-isolation -e ".[test]"). The methods
# whose training step is timed are named here, not in bbench/ (tests/contract/test_method_names.py);
# a --methods given after them replaces them. PYTHON picks the interpreter (default: python3,
# which every virtual environment and GPU image has; plain `python` is not always there).
set -euo pipefail
cd "$(dirname "$0")/../.."
exec "${PYTHON:-python3}" -m bbench.benchmarking --methods Baseline OGM MMPareto "$@"
