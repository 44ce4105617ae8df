"""Benchmarks, reported as ratios measured in one run (absolute times vary on a shared machine).

    python -m experiments.benchmark                 # conf/benchmark.yaml
    python -m experiments.benchmark members=3 epochs=5

Writes `benchmark.json` and `benchmark.md` into the Hydra run directory.

- fit: `fit_combiner` (level-one pass once, then the combiner alone) against
  Keras `model.fit` of the whole frozen graph, for the same epochs and batch.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import hydra
import keras
import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import combiners
from ensemble import build_ensemble, load_member
from ensemble.fitting import fit_combiner

__all__ = ["run"]

log = logging.getLogger(__name__)


def synthetic_ensemble(cfg: DictConfig) -> keras.Model:
    """`cfg.member_count` MLPs (features -> hidden... -> classes, softmax), stacked."""
    members = []
    for i in range(cfg.member_count):
        keras.utils.set_random_seed(cfg.seed + i)
        layers = [keras.Input((cfg.features,))]
        layers += [keras.layers.Dense(units, activation="relu") for units in cfg.hidden]
        layers.append(keras.layers.Dense(cfg.classes, activation="softmax"))
        members.append(load_member(keras.Sequential(layers), name=f"member_{i}"))
    return build_ensemble(members, combiners.StackingCombiner())


def median_seconds(prepare: Callable[[], Any], work: Callable[[Any], Any], repeats: int) -> float:
    """Median time of `work(prepare())`, `prepare` (building models) left out of the timing."""
    times = []
    for _ in range(repeats):
        subject = prepare()
        start = time.perf_counter()
        work(subject)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_fit(cfg: DictConfig) -> dict[str, float]:
    rng = np.random.default_rng(cfg.seed)
    x = rng.normal(size=(cfg.rows, cfg.features)).astype("float32")
    y = rng.integers(0, cfg.classes, size=cfg.rows)

    def whole_graph(model: keras.Model) -> None:
        model.compile(optimizer=keras.optimizers.Adam(0.01),
                      loss={"prediction": "sparse_categorical_crossentropy"})
        model.fit(x, {"prediction": y}, epochs=cfg.epochs, batch_size=cfg.batch_size, verbose=0)

    def level_one(model: keras.Model) -> None:  # the members' single pass included
        fit_combiner(model, x, y, epochs=cfg.epochs, batch_size=cfg.batch_size, verbose=0)

    build = lambda: synthetic_ensemble(cfg)  # noqa: E731
    naive = median_seconds(build, whole_graph, cfg.repeats)
    ours = median_seconds(build, level_one, cfg.repeats)
    return {"model_fit_s": naive, "fit_combiner_s": ours, "speedup": naive / ours}


def markdown(results: dict[str, Any]) -> str:
    fit = results["fit"]
    return "\n".join([
        "| measure | ratio |",
        "| --- | --- |",
        f"| `fit_combiner` vs `model.fit` of the whole frozen graph ({results['config']['epochs']} "
        f"epochs) | {fit['speedup']:.1f}x faster |",
        "",
    ])


def run(cfg: DictConfig, output_dir: str | None = None) -> dict[str, Any]:
    results = {"config": {k: cfg[k] for k in cfg if k != "hydra"}, "fit": bench_fit(cfg)}
    results["config"] = json.loads(json.dumps(results["config"], default=list))
    table = markdown(results)
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
