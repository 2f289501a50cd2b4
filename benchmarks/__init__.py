"""Benchmark suite: monarch-idl against torchmonarch and raw OS baselines.

Run ``python -m benchmarks.run --help``. Nothing in this package is imported by the library;
the workload modules (``benchmarks.workloads``, ``benchmarks._actors``) import only the stdlib,
``monarch.actor`` and (lazily) torch/numpy, so they run unchanged under torchmonarch's venv.
"""
