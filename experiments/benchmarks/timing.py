"""Timings as medians, warm-up left out; the machine's matmul peak as the yardstick."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import tensorflow as tf

__all__ = ["matmul_peak_gflops", "median_call_seconds", "median_seconds"]


def median_seconds(prepare: Callable[[], Any], work: Callable[[Any], Any], repeats: int) -> float:
    """Median time of `work(prepare())`, `prepare` (building models) left out of the timing."""
    times = []
    for _ in range(repeats):
        subject = prepare()
        start = time.perf_counter()
        work(subject)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def median_call_seconds(call: Callable[[], Any], calls: int) -> float:
    call()  # warm-up: traces and allocations happen here, not in the timing
    return median_seconds(lambda: None, lambda _: call(), calls)


def matmul_peak_gflops(size: int = 2048, calls: int = 10) -> float:
    """The machine's float32 dense-matmul rate, measured with TensorFlow."""
    a = tf.random.normal((size, size))
    matmul = tf.function(lambda m: tf.matmul(m, m))
    seconds = median_call_seconds(lambda: matmul(a).numpy(), calls)
    return 2 * size**3 / seconds / 1e9
