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
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import hydra
import keras
import numpy as np
import tensorflow as tf
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import combiners
from ensemble import build_ensemble, compiled_predict, export_saved_model, load_member
from ensemble.fitting.head import fit_combiner
from ensemble.graph.view import ensemble_members

__all__ = ["run"]

log = logging.getLogger(__name__)


def synthetic_mlps(cfg: DictConfig, hidden: Sequence[int]) -> list[keras.Model]:
    """`cfg.member_count` seeded MLPs: features -> hidden... -> classes, softmax."""
    models = []
    for i in range(cfg.member_count):
        keras.utils.set_random_seed(cfg.seed + i)
        layers: list[Any] = [keras.Input((cfg.features,))]
        layers += [keras.layers.Dense(units, activation="relu") for units in hidden]
        layers.append(keras.layers.Dense(cfg.classes, activation="softmax"))
        models.append(keras.Sequential(layers))
    return models


def synthetic_ensemble(cfg: DictConfig) -> keras.Model:
    """The synthetic MLPs (`cfg.hidden`), stacked."""
    members = [load_member(m, name=f"member_{i}") for i, m in enumerate(synthetic_mlps(cfg, cfg.hidden))]
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


def _median_call_seconds(call: Callable[[], Any], calls: int) -> float:
    call()  # warm-up: traces and allocations happen here, not in the timing
    return median_seconds(lambda: None, lambda _: call(), calls)


def matmul_peak_gflops(size: int = 2048, calls: int = 10) -> float:
    """The machine's float32 dense-matmul rate, measured with TensorFlow."""
    a = tf.random.normal((size, size))
    matmul = tf.function(lambda m: tf.matmul(m, m))
    seconds = _median_call_seconds(lambda: matmul(a).numpy(), calls)
    return 2 * size**3 / seconds / 1e9


def ensemble_flops_per_row(cfg: DictConfig) -> int:
    widths = [cfg.features, *cfg.hidden, cfg.classes]
    return cfg.member_count * sum(2 * a * b for a, b in zip(widths[:-1], widths[1:]))


def bench_inference(cfg: DictConfig, scratch: str) -> dict[str, Any]:
    """Seconds per call at batch 1 and rows/s at `cfg.large_batch`, for each way to predict."""
    model = synthetic_ensemble(cfg)
    members = ensemble_members(model)
    export_dir = export_saved_model(model, os.path.join(scratch, "export"))
    serving = tf.saved_model.load(export_dir).signatures["serving_default"]
    compiled_members = [
        tf.function(m.call, input_signature=[tf.TensorSpec((None, cfg.features), tf.float32)])
        for m in members
    ]
    fast, xla = compiled_predict(model), compiled_predict(model, jit_compile=True)
    ways: dict[str, Callable[[np.ndarray], Any]] = {
        "loop of member.predict": lambda x: [m.predict(x, verbose=0) for m in members],
        "loop of compiled members": lambda x: [f(x).numpy() for f in compiled_members],
        "Keras predict on the ensemble": lambda x: model.predict(x, verbose=0),
        "compiled_predict": fast,
        "compiled_predict, XLA": xla,
        "exported serving_default": lambda x: {k: v.numpy() for k, v in serving(features=tf.constant(x)).items()},
    }
    rng = np.random.default_rng(cfg.seed)
    one = rng.normal(size=(1, cfg.features)).astype("float32")
    large = rng.normal(size=(cfg.large_batch, cfg.features)).astype("float32")
    latency = {name: _median_call_seconds(lambda f=f: f(one), cfg.latency_calls) for name, f in ways.items()}
    throughput = {name: cfg.large_batch / _median_call_seconds(lambda f=f: f(large), cfg.throughput_calls)
                  for name, f in ways.items() if not name.startswith("loop of member.predict")}
    one_member = _median_call_seconds(lambda: compiled_members[0](one).numpy(), cfg.latency_calls)
    peak = matmul_peak_gflops()
    best = max(throughput.values())
    return {
        "latency_s": latency,
        "throughput_rows_per_s": throughput,
        "one_compiled_member_latency_s": one_member,
        "matmul_peak_gflops": peak,
        "ensemble_gflops_at_large_batch": best * ensemble_flops_per_row(cfg) / 1e9,
    }


def bench_overhead(cfg: DictConfig) -> dict[str, float]:
    """What the combiner and the uncertainty outputs cost at a large batch: the whole graph
    against the members alone, both compiled."""
    model = synthetic_ensemble(cfg)
    members_only = keras.Model(model.input, model.get_layer("member_predictions").output)
    x = np.random.default_rng(cfg.seed).normal(size=(cfg.large_batch, cfg.features)).astype("float32")
    whole, bare = compiled_predict(model), compiled_predict(members_only_as_dict(members_only))
    seconds_whole = _median_call_seconds(lambda: whole(x), cfg.throughput_calls * 3)
    seconds_bare = _median_call_seconds(lambda: bare(x), cfg.throughput_calls * 3)
    return {"members_only_s": seconds_bare, "whole_s": seconds_whole,
            "overhead": seconds_whole / seconds_bare - 1}


def members_only_as_dict(model: keras.Model) -> keras.Model:
    return keras.Model(model.input, {"member_predictions": model.output})


_MEMORY_PROBE = """
import ctypes, gc, json, sys, time, os
import numpy as np
import ensemble, keras
from ensemble.serve.loaded import process_rss_bytes

def settle():
    # Return freed memory to the OS (glibc), so RSS shows what is held, not allocator slack.
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass

warmup, paths = sys.argv[1], sys.argv[2:]
ensemble.load_member(warmup, name="warmup")(np.zeros((1, {features}), "float32"))  # TF's own start-up
settle()
before = process_rss_bytes()
start = time.perf_counter()
members = [ensemble.load_member(p, name=f"m{{i}}") for i, p in enumerate(paths)]
load_s = time.perf_counter() - start
for m in members:
    m(np.zeros((1, {features}), "float32"))
raw = process_rss_bytes()
settle()
held = process_rss_bytes()
weights = sum(w.nbytes for m in members for w in m.get_weights())
print(json.dumps({{"load_s": load_s, "rss_raw": raw - before, "rss_held": held - before,
                  "weight_bytes": weights}}))
"""


def bench_memory(cfg: DictConfig, scratch: str) -> dict[str, float]:
    """Load time of N member files and of the export; resident memory per member against its
    weight bytes (in a fresh process, after TensorFlow's own start-up)."""
    paths = []
    for i, mlp in enumerate(synthetic_mlps(cfg, cfg.memory_hidden)):
        paths.append(os.path.join(scratch, f"member_{i}.keras"))
        mlp.save(paths[-1])
    probe = _MEMORY_PROBE.format(features=cfg.features)
    done = subprocess.run([sys.executable, "-c", probe, paths[0], *paths], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if done.returncode != 0:
        raise RuntimeError(f"Memory probe failed: {done.stderr[-2000:]}")
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    model = build_ensemble([load_member(p, name=f"m{i}") for i, p in enumerate(paths)],
                           combiners.MeanCombiner())
    export_dir = export_saved_model(model, os.path.join(scratch, "memory_export"))
    start = time.perf_counter()
    tf.saved_model.load(export_dir)
    return {
        "members_load_s": measured["load_s"],
        "export_load_s": time.perf_counter() - start,
        "rss_over_weight_bytes": measured["rss_held"] / measured["weight_bytes"],
        "rss_before_trim_over_weight_bytes": measured["rss_raw"] / measured["weight_bytes"],
        "weight_mb": measured["weight_bytes"] / 1e6,
    }


def markdown(results: dict[str, Any]) -> str:
    fit, inference = results["fit"], results["inference"]
    latency, throughput = inference["latency_s"], inference["throughput_rows_per_s"]
    ours = latency["compiled_predict"]
    lines = [
        "| measure | ratio |",
        "| --- | --- |",
        f"| `fit_combiner` vs `model.fit` of the whole frozen graph ({results['config']['epochs']} "
        f"epochs) | {fit['speedup']:.1f}x faster |",
    ]
    for name, seconds in latency.items():
        lines.append(f"| batch 1 latency: {name} | {seconds / ours:.2f}x `compiled_predict` |")
    lines.append(f"| batch 1: exported ensemble vs ONE compiled member | "
                 f"{latency['exported serving_default'] / inference['one_compiled_member_latency_s']:.2f}x |")
    lines.append(f"| batch 1: `model.predict` loop vs exported ensemble | "
                 f"{latency['loop of member.predict'] / latency['exported serving_default']:.0f}x slower |")
    best = max(throughput.values())
    for name, rows in throughput.items():
        lines.append(f"| batch {results['config']['large_batch']} throughput: {name} | {rows / best:.2f}x the best |")
    lines.append(f"| ensemble at batch {results['config']['large_batch']} vs the matmul peak | "
                 f"{inference['ensemble_gflops_at_large_batch'] / inference['matmul_peak_gflops']:.0%} |")
    overhead, memory = results["overhead"], results["memory"]
    lines.append(f"| combiner + uncertainty outputs at batch {results['config']['large_batch']} | "
                 f"{overhead['overhead']:+.1%} over the members alone |")
    lines.append(f"| load: {results['config']['member_count']} member files vs the export | "
                 f"{memory['members_load_s'] / memory['export_load_s']:.2f}x |")
    lines.append(f"| resident memory held per member vs its weight bytes ({memory['weight_mb']:.0f} MB "
                 f"of weights; {memory['rss_before_trim_over_weight_bytes']:.2f}x before the allocator "
                 f"returns freed pages) | {memory['rss_over_weight_bytes']:.2f}x |")
    return "\n".join(lines) + "\n"


def run(cfg: DictConfig, output_dir: str | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="benchmark-") as scratch:
        results = {"config": {k: cfg[k] for k in cfg if k != "hydra"}, "fit": bench_fit(cfg),
                   "inference": bench_inference(cfg, scratch), "overhead": bench_overhead(cfg),
                   "memory": bench_memory(cfg, scratch)}
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
