"""Benchmarks, reported as ratios measured in one run (absolute times vary on a shared machine).

    python -m experiments.benchmark                 # conf/benchmark.yaml
    python -m experiments.benchmark members=3 epochs=5

Writes `benchmark.json` and `benchmark.md` into the Hydra run directory.

Each entry (fit, level_one_memory, inference, overhead, memory, onnx, fusion, stacking) is described in
`experiments.benchmarks`.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from experiments import benchmarks

__all__ = ["run"]


def run(cfg: DictConfig, output_dir: str | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="benchmark-") as scratch:
        results = {
            "config": {k: cfg[k] for k in cfg if k != "hydra"},
            "fit": benchmarks.bench_fit(cfg),
            "level_one_memory": benchmarks.bench_level_one_memory(cfg),
            "inference": benchmarks.bench_inference(cfg, scratch),
            "overhead": benchmarks.bench_overhead(cfg),
            "memory": benchmarks.bench_memory(cfg, scratch),
            "stacking": benchmarks.bench_stacking(cfg),
            "onnx": benchmarks.bench_onnx(cfg, scratch),
            "fusion": benchmarks.bench_fusion(cfg, scratch),
        }
    results["config"] = json.loads(json.dumps(results["config"], default=list))
    table = benchmarks.markdown(results)
    print(table)
    if output_dir is not None:
        with open(os.path.join(output_dir, "benchmark.json"), "w") as f:
            json.dump(results, f, indent=2)
        with open(os.path.join(output_dir, "benchmark.md"), "w") as f:
            f.write(table)
    return results


@hydra.main(version_base="1.3", config_path="../conf", config_name="benchmark")
def main(cfg: DictConfig) -> None:
    run(cfg, output_dir=HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
