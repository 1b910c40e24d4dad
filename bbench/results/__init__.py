"""Result records: one versioned JSON file per run."""
from bbench.results.record import RECORD_NAME, SCHEMA, RunResult, environment

__all__ = ["RECORD_NAME", "SCHEMA", "RunResult", "environment"]
