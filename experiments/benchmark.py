"""Benchmarks, reported as ratios measured in one run (absolute times vary on a shared machine).

    python -m experiments.benchmark                 # conf/benchmark.yaml
    python -m experiments.benchmark members=3 epochs=5

Writes `benchmark.json` and `benchmark.md` into the Hydra run directory.

- fit: `fit_combiner` (level-one pass once, then the combiner alone) against
  Keras `model.fit` of the whole frozen graph, for the same epochs and batch.
- inference: latency at batch 1 and throughput at a large batch of the ways
  to predict (a loop of `member.predict`, a loop of compiled members, Keras
  `predict` on the ensemble, `compiled_predict` with and without XLA, the
  exported SavedModel), and the ensemble's share of the machine's matmul peak.
- overhead: the combiner and the uncertainty outputs against the members alone.
- memory: load time of the member files and of the export; resident memory per
  member against its weight bytes.
- stacking: the default stacker's fit against `LogisticRegressionCV` on digits' meta features
  (1000 x 40; `+stacking_rows=`): seconds, choices, held-out quality, the optimum at C=1, the 3 s target.
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
            "inference": benchmarks.bench_inference(cfg, scratch),
            "overhead": benchmarks.bench_overhead(cfg),
            "memory": benchmarks.bench_memory(cfg, scratch),
            "stacking": benchmarks.bench_stacking(cfg),
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
