"""Load time of member files and of the export; resident memory per member against its weights."""

from __future__ import annotations

import os
import time

import tensorflow as tf
from omegaconf import DictConfig

import combiners
from ensemble import build_ensemble, export_saved_model, load_member
from experiments.benchmarks.models import synthetic_mlps
from experiments.benchmarks.rounds import run_python_json

__all__ = ["MEMORY_PROBE", "bench_memory"]


MEMORY_PROBE = """
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
    probe = MEMORY_PROBE.format(features=cfg.features)
    measured = run_python_json(["-c", probe, paths[0], *paths], "Memory probe")
    model = build_ensemble(
        [load_member(p, name=f"m{i}") for i, p in enumerate(paths)], combiners.MeanCombiner()
    )
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
