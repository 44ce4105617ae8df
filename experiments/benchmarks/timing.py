"""Timings as medians, warm-up left out."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["median_seconds", "paired_seconds"]


def median_seconds(prepare: Callable[[], Any], work: Callable[[Any], Any], repeats: int) -> float:
    """Median time of `work(prepare())`, `prepare` (building models) left out of the timing."""
    return statistics.median(paired_seconds(prepare, {"work": work}, repeats)["work"])


def paired_seconds(
    prepare: Callable[[], Any], works: Mapping[str, Callable[[Any], Any]], repeats: int
) -> dict[str, list[float]]:
    """Each round's time of every `work(prepare())`, the works taken in turn within a round
    (`prepare` left out): a ratio of two works in one round compares them under one load."""
    times: dict[str, list[float]] = {name: [] for name in works}
    for _ in range(repeats):
        for name, work in works.items():
            subject = prepare()
            start = time.perf_counter()
            work(subject)
            times[name].append(time.perf_counter() - start)
    return times
