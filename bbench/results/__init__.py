"""Result records: one versioned JSON file per run."""
from bbench.results.record import MACHINE_METRICS, RECORD_NAME, SCHEMA, RunResult, environment

__all__ = ["MACHINE_METRICS", "RECORD_NAME", "SCHEMA", "RunResult", "environment"]
