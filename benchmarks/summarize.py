"""Turn a pytest-benchmark JSON file into the Markdown tables of docs/benchmarks.md.

    pytest benchmarks --benchmark-only --benchmark-json=bench.json
    python benchmarks/summarize.py bench.json

For every group: the median of each implementation and its ratio to the first one listed
(ext / one-pass), so ratio > 1 means the kernel path is that many times faster.
"""
from __future__ import annotations

import json
import re
import sys
from collections import defaultdict

BASE = ("ext", "one-pass")


def main(path: str) -> None:
    data = json.load(open(path))
    groups: dict[str, dict[str, float]] = defaultdict(dict)
    for b in data["benchmarks"]:
        impl = b["params"]["impl"]
        groups[b["group"]][impl] = b["stats"]["median"]
    mi = data.get("machine_info", {})
    print(f"machine: {mi.get('cpu', {}).get('brand_raw', '?')}, {mi.get('torch_threads', '?')} torch threads, "
          f"torch {mi.get('torch', '?')}, CUDA available: {mi.get('cuda_available', '?')}\n")
    print("| group | implementation | median (ms) | ratio to ext / one-pass |")
    print("|---|---|---:|---:|")

    def key(g: str):
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", g)]

    for g in sorted(groups, key=key):
        impls = groups[g]
        base = next((impls[b] for b in BASE if b in impls), None)
        for impl, med in sorted(impls.items(), key=lambda kv: kv[1]):
            ratio = f"{med / base:.2f}x" if base else "-"
            print(f"| {g} | {impl} | {med * 1e3:.3f} | {ratio} |")


if __name__ == "__main__":
    main(sys.argv[1])
