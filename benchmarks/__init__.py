"""The shipped throughput benchmark: `python -m benchmarks.run` (see README, Performance)."""
