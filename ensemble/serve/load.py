"""A bounded load on a registry: a fixed plan of requests from a pool of client threads, with
the latencies it saw. It stops by itself once the plan is answered."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ensemble.serve.registry import ModelRegistry

__all__ = ["load_registry"]


def load_registry(
    registry: ModelRegistry,
    rows: np.ndarray,
    *,
    requests: int,
    threads: int,
    seed: int = 0,
    max_rows: int = 32,
) -> dict[str, Any]:
    """`requests` requests, each to a random registered model with 1..`max_rows` of `rows`,
    from `threads` threads; the latency percentiles (ms) and the registry's report."""
    rng = np.random.default_rng(seed)
    plan = [(str(rng.choice(registry.names)), int(rng.integers(1, max_rows + 1))) for _ in range(requests)]

    def request(job: tuple[str, int]) -> float:
        name, count = job
        start = time.perf_counter()
        registry.predict(name, rows[:count])
        return time.perf_counter() - start

    with ThreadPoolExecutor(max_workers=threads) as pool:
        latencies = np.array(list(pool.map(request, plan)))
    percentiles = (("p50", 50), ("p95", 95), ("max", 100))
    return {
        "requests": len(plan),
        "threads": threads,
        "latency_ms": {q: float(np.percentile(latencies, p) * 1000) for q, p in percentiles},
        **registry.report(),
    }
