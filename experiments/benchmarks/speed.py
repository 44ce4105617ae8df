"""Latency, throughput and output overhead, each against the naive way, the ways timed in turn."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from omegaconf import DictConfig

from ensemble import compiled_predict, export_saved_model
from ensemble.graph.view import ensemble_members
from experiments.benchmarks.models import synthetic_ensemble
from experiments.benchmarks.rounds import interleaved_seconds

__all__ = ["bench_inference", "bench_overhead", "members_only_as_dict"]


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
        "exported serving_default": lambda x: {
            k: v.numpy() for k, v in serving(features=tf.constant(x)).items()
        },
    }
    rng = np.random.default_rng(cfg.seed)
    one = rng.normal(size=(1, cfg.features)).astype("float32")
    large = rng.normal(size=(cfg.large_batch, cfg.features)).astype("float32")
    # Each way in turn in every round (`interleaved_seconds`): the ratios see one load.
    latency = interleaved_seconds(
        {name: functools.partial(f, one) for name, f in ways.items()}, cfg.latency_calls
    )
    large_calls = {
        name: functools.partial(f, large) for name, f in ways.items() if name != "loop of member.predict"
    }
    throughput = {
        name: cfg.large_batch / seconds
        for name, seconds in interleaved_seconds(large_calls, cfg.throughput_calls).items()
    }
    # The ensemble against ONE member at batch 1, and its share of the matmul peak, are
    # `bench_onnx`'s, measured there in turn with the onnxruntime paths.
    return {"latency_s": latency, "throughput_rows_per_s": throughput}


def bench_overhead(cfg: DictConfig) -> dict[str, float]:
    """What the combiner and the uncertainty outputs cost at a large batch: the whole graph
    against the members alone, both compiled."""
    model = synthetic_ensemble(cfg)
    members_only = keras.Model(model.input, model.get_layer("member_predictions").output)
    x = np.random.default_rng(cfg.seed).normal(size=(cfg.large_batch, cfg.features)).astype("float32")
    whole, bare = compiled_predict(model), compiled_predict(members_only_as_dict(members_only))
    seconds = interleaved_seconds(
        {"whole": lambda: whole(x), "bare": lambda: bare(x)}, cfg.throughput_calls * 3
    )
    seconds_whole, seconds_bare = seconds["whole"], seconds["bare"]
    return {
        "members_only_s": seconds_bare,
        "whole_s": seconds_whole,
        "overhead": seconds_whole / seconds_bare - 1,
    }


def members_only_as_dict(model: keras.Model) -> keras.Model:
    return keras.Model(model.input, {"member_predictions": model.output})
