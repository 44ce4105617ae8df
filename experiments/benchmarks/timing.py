"""Timings as medians, warm-up left out; the machine's matmul peak as the yardstick."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import tensorflow as tf

__all__ = ["interleaved_seconds", "matmul_peak_gflops", "median_call_seconds", "median_seconds"]


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


def interleaved_seconds(calls: Mapping[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """The median seconds of each call, the calls taken in turn within every round.

    On a shared machine the load changes from second to second; calls timed in turn see the
    same load, so their ratios hold where medians taken one after the other would not."""
    for call in calls.values():
        call()  # warm-up: traces and allocations happen here, not in the timing
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(seconds) for name, seconds in times.items()}


def matmul_peak_gflops(size: int = 2048, calls: int = 10) -> float:
    """The machine's float32 dense-matmul rate, measured with TensorFlow."""
    a = tf.random.normal((size, size))
    matmul = tf.function(lambda m: tf.matmul(m, m))
    seconds = median_call_seconds(lambda: matmul(a).numpy(), calls)
    return 2 * size**3 / seconds / 1e9
