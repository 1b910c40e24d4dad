"""Benchmark orchestration and the Table-2 style comparison."""
