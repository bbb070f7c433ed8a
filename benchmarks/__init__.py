"""Side-by-side speed measurements (scripts, not tests): ``python -m benchmarks.bench_sk``, ``python -m benchmarks.bench_shufflenet``."""
