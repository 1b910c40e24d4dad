"""`bbench prepare`: raw public downloads → the on-disk formats of datasets.md §2.

    from bbench.prepare import prepare
    report = prepare("cremad", raw="~/CREMA-D", out="data/cremad", workers=4)
    print(report.summary())

Command line: `python -m bbench prepare DATASET --raw DIR --out DIR [--workers N] ...`
(`bbench.prepare.main`). See docs/prepare.md.
"""
from bbench.prepare.api import RECIPES, PrepareOptions, canonical_dataset, prepare
from bbench.prepare.cli import add_arguments, build_parser, main, run_args
from bbench.prepare.core import PrepareError, PrepareReport

__all__ = [
           "RECIPES",
           "PrepareError",
           "PrepareOptions",
           "PrepareReport",
           "add_arguments",
           "build_parser",
           "canonical_dataset",
           "main",
           "prepare",
           "run_args",
]
