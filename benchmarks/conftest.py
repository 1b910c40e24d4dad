"""Kernel microbenchmarks (pytest-benchmark). Not part of the default test run (pytest.ini has
``testpaths = tests``). Run them with

    pytest benchmarks --benchmark-only [--benchmark-json=bench.json]
    python benchmarks/summarize.py bench.json     # ratio table as in docs/benchmarks.md

Each group puts the implementations of one case side by side (ext / ref / loop, or one-pass /
masked passes). Intra-op threads: torch's default (all cores), or BBENCH_BENCH_THREADS.
"""
from __future__ import annotations

import os

import pytest
import torch


def pytest_configure(config):
    threads = os.environ.get("BBENCH_BENCH_THREADS")
    if threads:
        torch.set_num_threads(int(threads))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_benchmark_update_machine_info(config, machine_info):
    from bbench import ops

    machine_info["torch"] = torch.__version__
    machine_info["torch_threads"] = torch.get_num_threads()
    machine_info["cuda_available"] = torch.cuda.is_available()
    machine_info["bbench_extension"] = ops.extension_info()
