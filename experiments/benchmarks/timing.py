"""Timings as medians, warm-up left out."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

__all__ = ["median_call_seconds", "median_seconds"]


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
