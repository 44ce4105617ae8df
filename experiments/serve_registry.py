"""Serve a registry of models from config to concurrent clients, and report what it cost.

python -m experiments.serve_registry                       # the zoo's members, 8 threads
python -m experiments.serve_registry registry.max_loaded=2 registry.threads=16
"""

from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from ensemble import ModelRegistry, configure_devices
from ensemble.data import Dataset
from experiments.job import member_options, members_config

__all__ = ["run"]

log = logging.getLogger(__name__)


def run(cfg: DictConfig, output_dir: str | None = None) -> dict[str, Any]:
    """Register the configured models, serve `requests` random requests from `threads` threads."""
    settings = cfg.registry
    # Before anything builds or loads a model: TensorFlow fixes its devices then.
    configure_devices(memory_growth=cfg.runtime.memory_growth, logical_cpus=cfg.runtime.logical_cpus)
    data: Dataset = instantiate(cfg.data)
    models = settings.models if settings.models is not None else members_config(cfg, data)
    registry = ModelRegistry(max_loaded=settings.max_loaded, batch_window_ms=settings.batch_window_ms)
    for name, spec in models.items():
        options = member_options(spec)
        if spec.get("format", "auto") != "auto":  # "auto" is load_member's default
            options["format"] = spec.format
        registry.register(str(name), spec.source, device=spec.get("device"), **options)

    rng = np.random.default_rng(settings.seed)
    plan = [(str(rng.choice(registry.names)), int(rng.integers(1, 33))) for _ in range(settings.requests)]

    def request(job: tuple[str, int]) -> float:
        name, rows = job
        start = time.perf_counter()
        registry.predict(name, data.x_test[:rows])
        return time.perf_counter() - start

    with ThreadPoolExecutor(max_workers=settings.threads) as pool:
        latencies = np.array(list(pool.map(request, plan)))
    report = registry.report()
    result = {
        "requests": len(plan),
        "threads": settings.threads,
        "latency_ms": {
            q: float(np.percentile(latencies, p) * 1000) for q, p in (("p50", 50), ("p95", 95), ("max", 100))
        },
        **report,
    }
    print(f"\n{'model':<12}{'loads':>6}{'calls':>7}{'params':>10}{'MB':>8}{'load s':>8}")
    for name, stats in report["models"].items():
        print(
            f"{name:<12}{stats['loads']:>6}{stats['calls']:>7}{stats['params'] or 0:>10}"
            f"{(stats['weight_bytes'] or 0) / 1e6:>8.2f}{stats['load_seconds'] or 0:>8.2f}"
        )
    print(
        f"latency ms p50 {result['latency_ms']['p50']:.2f}, p95 {result['latency_ms']['p95']:.2f}; "
        f"RSS {report['rss_bytes'] / 1e6:.0f} MB; in memory: {report['loaded']}"
    )
    if output_dir is not None:
        with open(os.path.join(output_dir, "registry.json"), "w") as f:
            json.dump(result, f, indent=2)
    return result


@hydra.main(version_base="1.3", config_path="../conf", config_name="serve")
def main(cfg: DictConfig) -> None:
    run(cfg, output_dir=HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
