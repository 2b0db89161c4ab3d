"""Benchmarks: every row compares two things measured side by side in one run."""
