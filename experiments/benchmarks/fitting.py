"""Fitting: `fit_combiner` against Keras fitting the whole frozen graph, and the level-one
pass's peak memory against the bytes of the predictions it returns."""

from __future__ import annotations

import json
import statistics
from typing import Any

import keras
import numpy as np
from omegaconf import DictConfig

from ensemble import fit_combiner
from experiments.benchmarks.models import synthetic_ensemble
from experiments.benchmarks.rounds import run_python_json
from experiments.benchmarks.timing import paired_seconds

__all__ = ["LEVEL_ONE_PROBE", "bench_fit", "bench_level_one_memory", "fitting_lines"]

FIT_TARGET = 10.0  # fit_combiner at least this many times faster than model.fit
MEMORY_TARGET = 1.5  # the pass's peak above its inputs, in units of the predictions' bytes


def bench_fit(cfg: DictConfig) -> dict[str, Any]:
    """Both fits of fresh copies of the synthetic ensemble, taken in turn in each of
    `cfg.repeats` rounds; the speedup is the median of the rounds' ratios (the machine's load
    moves between rounds, and the whole-graph fit, ten times longer, sees more of it)."""
    rng = np.random.default_rng(cfg.seed)
    x = rng.normal(size=(cfg.rows, cfg.features)).astype("float32")
    y = rng.integers(0, cfg.classes, size=cfg.rows)

    def whole_graph(model: keras.Model) -> None:
        model.compile(
            optimizer=keras.optimizers.Adam(0.01), loss={"prediction": "sparse_categorical_crossentropy"}
        )
        model.fit(x, {"prediction": y}, epochs=cfg.epochs, batch_size=cfg.batch_size, verbose=0)

    def level_one(model: keras.Model) -> None:  # the members' single pass included
        fit_combiner(model, x, y, epochs=cfg.epochs, batch_size=cfg.batch_size, verbose=0)

    build = lambda: synthetic_ensemble(cfg)  # noqa: E731
    rounds = paired_seconds(build, {"model_fit": whole_graph, "fit_combiner": level_one}, cfg.repeats)
    ratios = [naive / ours for naive, ours in zip(rounds["model_fit"], rounds["fit_combiner"], strict=True)]
    return {
        "model_fit_s": statistics.median(rounds["model_fit"]),
        "fit_combiner_s": statistics.median(rounds["fit_combiner"]),
        "speedup": statistics.median(ratios),
        "speedups": ratios,
    }


# Run in a fresh process: the peak resident memory (VmHWM, reset through clear_refs after a
# warm-up) sees TensorFlow's allocations, which tracemalloc does not; the fingerprint's own
# allocations are NumPy's, which tracemalloc does see.
LEVEL_ONE_PROBE = """
import ctypes, gc, json, sys, tracemalloc
import numpy as np
from omegaconf import OmegaConf
from ensemble import LevelOneStore
from ensemble.rows import data_fingerprint
from experiments.benchmarks.models import synthetic_ensemble

def status(field):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(field + ":"))

def settle():
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass

cfg = OmegaConf.create(json.loads(sys.argv[1]))
model = synthetic_ensemble(OmegaConf.merge(cfg, {"hidden": cfg.level_one_hidden}))
x = np.random.default_rng(cfg.seed).normal(size=(cfg.level_one_rows, cfg.features)).astype("float32")
LevelOneStore(batch_size=cfg.level_one_batch_size, verbose=0).predictions(model, x[:4096])  # warm-up
settle()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the high-water mark starts again from the resident memory now
before = status("VmRSS")
level_one = LevelOneStore(batch_size=cfg.level_one_batch_size, verbose=0).predictions(model, x)
peak = status("VmHWM")
tracemalloc.start()
data_fingerprint(x)
fingerprint_peak = tracemalloc.get_traced_memory()[1]
tracemalloc.stop()
print(json.dumps({"peak_above_inputs": peak - before, "predictions": level_one.nbytes,
                  "x_bytes": x.nbytes, "fingerprint_peak": fingerprint_peak,
                  "members": level_one.shape[1], "rows": level_one.shape[0]}))
"""


def bench_level_one_memory(cfg: DictConfig) -> dict[str, Any]:
    """The level-one pass of `cfg.member_count` small members over `cfg.level_one_rows` rows:
    its peak resident memory above the inputs against the predictions' bytes, and what
    fingerprinting x allocates (a copy of x would be its bytes)."""
    config = {
        key: cfg[key]
        for key in ("member_count", "features", "classes", "seed", "level_one_rows", "level_one_batch_size")
    }
    config["level_one_hidden"] = list(cfg.level_one_hidden)
    measured = run_python_json(
        ["-c", LEVEL_ONE_PROBE, json.dumps(config)], "Level-one memory probe", timeout=1200
    )
    ratio = measured["peak_above_inputs"] / measured["predictions"]
    return {
        "peak_above_inputs_bytes": int(measured["peak_above_inputs"]),
        "predictions_bytes": int(measured["predictions"]),
        "peak_over_predictions": float(ratio),
        "target": MEMORY_TARGET,
        "target_met": bool(ratio <= MEMORY_TARGET),
        "over_target_by": float(max(0.0, ratio - MEMORY_TARGET)),
        "fingerprint_peak_bytes": int(measured["fingerprint_peak"]),
        "x_bytes": int(measured["x_bytes"]),
        "x_copied_for_fingerprint": bool(measured["fingerprint_peak"] >= measured["x_bytes"] / 2),
        "rows": int(measured["rows"]),
        "members": int(measured["members"]),
    }


def fitting_lines(results: dict[str, Any]) -> list[str]:
    """benchmark.md's rows for `{"fit": ..., "level_one_memory": ...}`, each with its target."""
    lines = []
    fit = results.get("fit")
    if fit:
        met = "met" if fit["speedup"] >= FIT_TARGET else f"missed by {FIT_TARGET / fit['speedup']:.2f}x"
        lines.append(
            f"| `fit_combiner` vs `model.fit` of the whole frozen graph ({results['config']['epochs']} "
            f"epochs; {fit['fit_combiner_s']:.2f} s vs {fit['model_fit_s']:.2f} s; target >= "
            f"{FIT_TARGET:.0f}x: {met}) | {fit['speedup']:.1f}x faster (median of {len(fit['speedups'])} "
            f"rounds: {min(fit['speedups']):.1f}x-{max(fit['speedups']):.1f}x) |"
        )
    memory = results.get("level_one_memory")
    if memory:
        met = "met" if memory["target_met"] else f"missed by {memory['over_target_by']:.2f}"
        lines.append(
            f"| level-one pass, {memory['rows']:,} rows x {memory['members']} members: peak memory above "
            f"the inputs ({memory['peak_above_inputs_bytes'] / 1e6:.0f} MB) vs the predictions' bytes "
            f"({memory['predictions_bytes'] / 1e6:.0f} MB; target <= {memory['target']}x: {met}) | "
            f"{memory['peak_over_predictions']:.2f}x |"
        )
        copied = "a full copy" if memory["x_copied_for_fingerprint"] else "no copy"
        lines.append(
            f"| fingerprint of x ({memory['x_bytes'] / 1e6:.0f} MB): memory allocated "
            f"({memory['fingerprint_peak_bytes'] / 1e6:.1f} MB) | {copied} |"
        )
    return lines
