"""Serve a registry of models from config to concurrent clients, and report what it cost.

python -m experiments.serve_registry                       # the zoo's members, 8 threads
python -m experiments.serve_registry registry.max_loaded=2 registry.threads=16
"""

from __future__ import annotations

import json
import os
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from ensemble import ModelRegistry, configure_devices
from ensemble.data import Dataset
from ensemble.serve.load import load_registry
from experiments.job import members_config, register_models

__all__ = ["run"]


def run(cfg: DictConfig, output_dir: str | None = None) -> dict[str, Any]:
    """Register the configured models, serve `requests` random requests from `threads` threads."""
    settings = cfg.registry
    # Before anything builds or loads a model: TensorFlow fixes its devices then.
    configure_devices(memory_growth=cfg.runtime.memory_growth, logical_cpus=cfg.runtime.logical_cpus)
    data: Dataset = instantiate(cfg.data)
    registry = ModelRegistry(max_loaded=settings.max_loaded, batch_window_ms=settings.batch_window_ms)
    register_models(registry, settings.models if settings.models is not None else members_config(cfg, data))
    result = load_registry(
        registry, data.x_test, requests=settings.requests, threads=settings.threads, seed=settings.seed
    )
    print(f"\n{'model':<12}{'loads':>6}{'calls':>7}{'params':>10}{'MB':>8}{'load s':>8}")
    for name, s in result["models"].items():
        print(
            f"{name:<12}{s['loads']:>6}{s['calls']:>7}{s['params'] or 0:>10}"
            f"{(s['weight_bytes'] or 0) / 1e6:>8.2f}{s['load_seconds'] or 0:>8.2f}"
        )
    latency = result["latency_ms"]
    print(
        f"latency ms p50 {latency['p50']:.2f}, p95 {latency['p95']:.2f}; "
        f"RSS {result['rss_bytes'] / 1e6:.0f} MB; in memory: {result['loaded']}"
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
