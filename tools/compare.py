#!/usr/bin/env python3
"""Print the A/B regression report of two bbench result files.

    python tools/compare.py A.json B.json [--all] [--tolerances FILE]

A is the reference (a committed baseline `cases/baselines/<profile>.json`, a saved session
`.bbench/<machine id>/<NNNN>_<name>.json`, or a run's `record.json` / run directory), B the
result under test (same kinds). The comparison is the one `pytest cases --bbench-compare`
applies (bbench.report.compare): per-metric tolerances from A when A is a baseline, else the
defaults (exact for FLOPs and parameter counts; for accuracy, F1 and imbalance ±0.05 or one
test sample's worth, from A's `test_size` of the case, else B's; or the tolerances of
`--tolerances`, a baseline file). Exit status 1 when B regresses beyond tolerance
(or a tracked metric is missing), 0 otherwise; improvements and added/removed cases are
reported without failing. Standard library and bbench.report.compare only: no torch import.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", help="reference: baseline, saved session, or run record")
    parser.add_argument("b", help="observed: baseline, saved session, or run record")
    parser.add_argument("--all", action="store_true", help="list metrics within tolerance too")
    parser.add_argument("--tolerances", metavar="BASELINE", default=None,
                        help="take the tolerances from this baseline file instead of A's")
    parser.add_argument("--case", metavar="ID", default=None,
                        help="the case id of a run record given as A or B (default: a case id of "
                             "the other file found in the record's path, as the plugin writes "
                             "runs under <out>/<worker>/<case id>/, else <method>-<dataset>)")
    args = parser.parse_args(argv)
    try:
        import bbench.report.compare as cmp
    except ImportError:  # running from a checkout without an installed bbench
        sys.path.insert(0, str(ROOT))
        import bbench.report.compare as cmp
    try:
        a, b = cmp.load_table(args.a), cmp.load_table(args.b)
        if args.tolerances:
            t = cmp.load_table(args.tolerances)
            a.tolerances, a.case_tolerances = t.tolerances, t.case_tolerances
        name_records(a, b, args.case)
        if a.kind == "record" and b.kind == "record" and list(a.cases) != list(b.cases):
            # two single runs of different specs: compare them as one case
            (ca, ma), (cb, mb) = next(iter(a.cases.items())), next(iter(b.cases.items()))
            a.cases, b.cases = {f"{ca} vs {cb}": ma}, {f"{ca} vs {cb}": mb}
    except (OSError, ValueError) as err:
        print(f"compare: {err}", file=sys.stderr)
        return 2
    report = cmp.compare_tables(a, b)
    print(cmp.format_report(report, show_ok=args.all))
    return 0 if report.ok else 1


def name_records(a, b, case: str | None) -> None:
    """Give a run record the case id it has in the other file (explicit, or from its path)."""
    for record, other in ((a, b), (b, a)):
        if record.kind != "record" or len(record.cases) != 1:
            continue
        (old, metrics), = record.cases.items()
        name = case or next((part for part in reversed(Path(record.source).resolve().parts)
                             if part in other.cases), None)
        if name and name != old:
            record.cases = {name: metrics}


if __name__ == "__main__":
    sys.exit(main())
