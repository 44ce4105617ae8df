"""Our exports against the naive conversion, and fused members against unfused, side by side.

- `bench_onnx`: the synthetic ensemble as `ensemble.export_onnx` writes it and as tf2onnx's
  command line converts our SavedModel export (what a user would do), both in onnxruntime,
  against the TensorFlow paths (the SavedModel's `serving_default`, `compiled_predict`, with
  XLA) and ONE member's compiled call (a `tf.function`, with and without XLA, and its
  concrete function), at batch 1 and at `cfg.large_batch`; and each path's
  share of the machine's matmul peak (the faster of TensorFlow's and onnxruntime's 2048²
  matmul, each timed in the rounds of its runtime).
- `bench_fusion`: `cfg.fusion_members` members of one architecture built with `fuse=False`,
  `fuse=True` and the default, in TensorFlow (`compiled_predict`) and onnxruntime, at both batches.

Within each runtime every comparison is timed in turn in each round (`interleaved_seconds`):
TensorFlow's in this process, onnxruntime's in a process of its own with one thread pool for
its sessions (`onnxruntime_seconds`; per-session pools contend for the cores).
"""

from __future__ import annotations

import functools
import itertools
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf
from omegaconf import DictConfig

import combiners
from ensemble import build_ensemble, compiled_predict, export_onnx, export_saved_model, load_member
from ensemble.graph.view import EnsembleView, ensemble_members
from experiments.benchmarks.models import ensemble_flops_per_row, synthetic_ensemble, synthetic_mlps
from experiments.benchmarks.rounds import (
    MATMUL_SIZE,
    interleaved_seconds,
    matmul_name,
    onnxruntime_seconds,
    run_python,
)

__all__ = ["bench_fusion", "bench_onnx", "layer_shapes", "naive_onnx", "tf_matmul_call"]


def naive_onnx(export_dir: str, path: str) -> str:
    """Our SavedModel export converted by tf2onnx's command line, with its defaults."""
    run_python(
        ["-m", "tf2onnx.convert", "--saved-model", export_dir, "--output", path], f"tf2onnx on {export_dir}"
    )
    return path


def tf_matmul_call(shape: tuple[int, int, int] = (MATMUL_SIZE,) * 3) -> Callable[[], Any]:
    """A float32 `(rows, inner, out)` matmul in TensorFlow (the square one's rate is TF's share
    of the machine's peak)."""
    rows, inner, out = shape
    rng = np.random.default_rng(0)
    a, b = (tf.constant(rng.normal(size=size).astype("float32")) for size in ((rows, inner), (inner, out)))
    return functools.partial(_as_numpy, tf.function(tf.matmul), a, b)


def layer_shapes(cfg: DictConfig, batch: int) -> list[tuple[int, int, int]]:
    """Each of a synthetic member's Dense layers as the `(rows, inner, out)` matmul it computes."""
    widths = [cfg.features, *cfg.hidden, cfg.classes]
    return [(batch, inner, out) for inner, out in itertools.pairwise(widths)]


def _as_numpy(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """What a TF function returns, as NumPy (a client's answer, not a tensor still computing)."""
    result = function(*args, **kwargs)
    return {k: v.numpy() for k, v in result.items()} if isinstance(result, dict) else result.numpy()


def _as_concrete(function: Callable[..., Any], x: np.ndarray) -> Any:
    """A concrete function's answer as NumPy, its input converted as `compiled_predict` does."""
    return _as_numpy(function, tf.convert_to_tensor(x, tf.float32))


def bench_onnx(cfg: DictConfig, scratch: str) -> dict[str, Any]:
    model = synthetic_ensemble(cfg)
    export_dir = export_saved_model(model, os.path.join(scratch, "onnx_export"))
    paths = {
        "naive tf2onnx of the SavedModel": naive_onnx(export_dir, os.path.join(scratch, "naive.onnx")),
        "export_onnx": export_onnx(model, os.path.join(scratch, "ours.onnx")),
    }
    serving = tf.saved_model.load(export_dir).signatures["serving_default"]
    member, signature = ensemble_members(model)[0], [tf.TensorSpec((None, cfg.features), tf.float32)]
    one_member = tf.function(lambda x: member(x, training=False), input_signature=signature)
    one_member_xla = tf.function(
        lambda x: member(x, training=False), input_signature=signature, jit_compile=True
    )
    one_member_concrete, one_member_xla_concrete = (
        f.get_concrete_function() for f in (one_member, one_member_xla)
    )
    fast, xla = compiled_predict(model), compiled_predict(model, jit_compile=True)
    rng = np.random.default_rng(cfg.seed)
    batches = {1: cfg.latency_calls, cfg.large_batch: cfg.throughput_calls}
    square, layers = (MATMUL_SIZE,) * 3, layer_shapes(cfg, cfg.large_batch)
    shapes = list(dict.fromkeys([square, *layers]))
    timed = onnxruntime_seconds(paths, cfg.features, batches, seed=cfg.seed, matmuls=shapes)
    results: dict[str, Any] = {}
    for batch, rounds in batches.items():
        x = rng.normal(size=(batch, cfg.features)).astype("float32")
        calls: dict[str, Callable[[], Any]] = {
            "exported serving_default": functools.partial(_as_numpy, serving, features=x),
            "compiled_predict": functools.partial(fast, x),
            "compiled_predict, XLA": functools.partial(xla, x),
            "ONE member, compiled": functools.partial(_as_numpy, one_member, x),
            "ONE member, compiled, XLA": functools.partial(_as_numpy, one_member_xla, x),
            "ONE member, its concrete function": functools.partial(_as_concrete, one_member_concrete, x),
            "ONE member, its concrete function, XLA": functools.partial(
                _as_concrete, one_member_xla_concrete, x
            ),
        }
        if batch == cfg.large_batch:
            calls.update({matmul_name("TF", shape): tf_matmul_call(shape) for shape in shapes})
        results[f"batch_{batch}_s"] = {**timed[batch], **interleaved_seconds(calls, rounds)}
    large = results[f"batch_{cfg.large_batch}_s"]
    matmuls = {name: large.pop(name) for name in list(large) if " matmul " in name}
    runtimes = ("TF", "onnxruntime")
    peaks = {
        runtime: 2 * MATMUL_SIZE**3 / matmuls[matmul_name(runtime, square)] / 1e9 for runtime in runtimes
    }
    flops, peak = cfg.large_batch * ensemble_flops_per_row(cfg), max(peaks.values())
    results.update(
        {
            "tf_matmul_peak_gflops": peaks["TF"],
            "onnx_matmul_peak_gflops": peaks["onnxruntime"],
            "share_of_peak": {
                name: flops / seconds / 1e9 / peak for name, seconds in large.items() if "member" not in name
            },
            "matmul_s": matmuls,
            "layer_matmul_gflops": {
                runtime: {
                    f"{inner}x{out}": 2
                    * rows
                    * inner
                    * out
                    / matmuls[matmul_name(runtime, (rows, inner, out))]
                    / 1e9
                    for rows, inner, out in layers
                }
                for runtime in runtimes
            },
            # The members' matmuls alone, each layer timed as one plain matmul of its shape.
            "layer_matmuls_share_of_peak": {
                runtime: flops
                / (cfg.member_count * sum(matmuls[matmul_name(runtime, shape)] for shape in layers))
                / 1e9
                / peak
                for runtime in runtimes
            },
        }
    )
    return results


def bench_fusion(cfg: DictConfig, scratch: str) -> dict[str, Any]:
    """`cfg.fusion_members` members of one architecture, fused or not, in TF and onnxruntime."""
    mlps = synthetic_mlps(_with(cfg, member_count=cfg.fusion_members), cfg.hidden)
    members = [load_member(m, name=f"member_{i}") for i, m in enumerate(mlps)]
    builds = {
        "fuse=False": build_ensemble(members, combiners.StackingCombiner(), fuse=False),
        "fuse=True": build_ensemble(members, combiners.StackingCombiner(), fuse=True),
        "default": build_ensemble(members, combiners.StackingCombiner()),
    }
    paths = {
        name: export_onnx(model, os.path.join(scratch, f"fusion_{i}.onnx"))
        for i, (name, model) in enumerate(builds.items())
    }
    compiled = {name: compiled_predict(model) for name, model in builds.items()}
    rng = np.random.default_rng(cfg.seed)
    results: dict[str, Any] = {
        "members": cfg.fusion_members,
        "fused": EnsembleView.of(builds["fuse=True"]).fused,
        "default_fused": EnsembleView.of(builds["default"]).fused,
    }
    batches = {1: cfg.latency_calls, cfg.large_batch: cfg.throughput_calls}
    timed = onnxruntime_seconds(
        {f"onnxruntime {name}": path for name, path in paths.items()}, cfg.features, batches, seed=cfg.seed
    )
    for batch, rounds in batches.items():
        x = rng.normal(size=(batch, cfg.features)).astype("float32")
        calls = {f"TF {name}": functools.partial(compiled[name], x) for name in builds}
        results[f"batch_{batch}_s"] = {**interleaved_seconds(calls, rounds), **timed[batch]}
    return results


def _with(cfg: DictConfig, **changes: Any) -> DictConfig:
    copy = cfg.copy()
    for key, value in changes.items():
        copy[key] = value
    return copy
