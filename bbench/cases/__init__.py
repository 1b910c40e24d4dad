"""Benchmark cases: the declaration DSL, profiles, expectations and the case runner.

Declaration files (`cases/cases_*.py`) import the DSL from here; the pytest plugin
(`bbench.pytest_plugin`) collects them. See docs/cases.md.
"""
from bbench.cases.dsl import (
    ALL, Above, Case, Ceiling, DatasetDecl, DeclarationError, Floor, PaperValue, StandIn, above,
    below, case, ceiling, dataset, floor, grid, paper, paper_dataset, refine, run_of, runs_per_modality)

__all__ = ["ALL", "Above", "Case", "Ceiling", "DatasetDecl", "DeclarationError", "Floor",
           "PaperValue", "StandIn", "above", "below", "case", "ceiling", "dataset", "floor", "grid", "paper",
           "paper_dataset", "refine", "run_of", "runs_per_modality"]
