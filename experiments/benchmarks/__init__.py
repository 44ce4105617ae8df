"""The benchmarks behind `python -m experiments.benchmark`: ratios measured side by side in one run."""

from experiments.benchmarks.memory import bench_memory
from experiments.benchmarks.models import synthetic_ensemble, synthetic_mlps
from experiments.benchmarks.speed import bench_fit, bench_inference, bench_overhead
from experiments.benchmarks.stacking import bench_stacking
from experiments.benchmarks.table import markdown

__all__ = [
    "bench_fit",
    "bench_inference",
    "bench_memory",
    "bench_overhead",
    "bench_stacking",
    "markdown",
    "synthetic_ensemble",
    "synthetic_mlps",
]
