"""Running on `tf.distribute`: strategies from config, and a level-one pass sharded over replicas.

TensorFlow already has the engine for several devices and workers; this
module only chooses the strategy (`default`, `mirrored`, `multi_worker`),
checks `TF_CONFIG` before TensorFlow reads it, and runs the members over a
dataset distributed with the strategy, gathering the predictions back in
row order (verified by row ids).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ensemble.build import ensemble_members
from ensemble.errors import EnsembleError

__all__ = ["STRATEGIES", "distributed_level_one", "make_strategy", "parse_tf_config"]

STRATEGIES = ("default", "mirrored", "multi_worker")


def make_strategy(name: str = "default", *, timeout_s: float | None = 300.0) -> tf.distribute.Strategy:
    """The `tf.distribute` strategy called `name`: `default` (this device), `mirrored` (every
    local device), `multi_worker` (MultiWorkerMirroredStrategy from a checked `TF_CONFIG`,
    its collective operations failing after `timeout_s`). Note: TensorFlow's constructor
    itself waits for every worker of the cluster, without a timeout."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        parse_tf_config(os.environ.get("TF_CONFIG"))
        options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=timeout_s)
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    raise EnsembleError(f"runtime.strategy: expected one of {STRATEGIES}. Received: {name!r}")


def parse_tf_config(text: str | None) -> dict[str, Any]:
    """`TF_CONFIG` as a dict, or an error naming the field that is missing or inconsistent."""
    if not text:
        raise EnsembleError("TF_CONFIG is not set; multi_worker needs it (cluster and task).")
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise EnsembleError(f"TF_CONFIG is not valid JSON: {error}") from None
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, Mapping) or not cluster:
        raise EnsembleError(f"TF_CONFIG.cluster: expected a mapping of job names to addresses. Received: {cluster!r}")
    for job, addresses in cluster.items():
        if not isinstance(addresses, list) or not addresses or not all(
            isinstance(a, str) and ":" in a for a in addresses
        ):
            raise EnsembleError(
                f"TF_CONFIG.cluster.{job}: expected a list of 'host:port' addresses. Received: {addresses!r}"
            )
    if not isinstance(task, Mapping) or "type" not in task or "index" not in task:
        raise EnsembleError(f"TF_CONFIG.task: expected {{'type': ..., 'index': ...}}. Received: {task!r}")
    if task["type"] not in cluster:
        raise EnsembleError(
            f"TF_CONFIG.task.type: {task['type']!r} is not a job of the cluster {sorted(cluster)}."
        )
    if not isinstance(task["index"], int) or not 0 <= task["index"] < len(cluster[task["type"]]):
        raise EnsembleError(
            f"TF_CONFIG.task.index: expected 0..{len(cluster[task['type']]) - 1} for job "
            f"{task['type']!r}. Received: {task['index']!r}"
        )
    return dict(config)


def distributed_level_one(
    model: keras.Model, x: np.ndarray, strategy: tf.distribute.Strategy, *, batch_size: int = 256
) -> np.ndarray:
    """Every member's predictions on `x`, `(rows, members, width)`, computed with each replica
    predicting its shard; gathered back in row order and checked by row ids."""
    members = ensemble_members(model)
    rows = len(x)
    if rows == 0:
        raise EnsembleError("Expected at least one row. Received: none.")
    ids = np.arange(rows, dtype="int64")
    dataset = tf.data.Dataset.from_tensor_slices((ids, np.asarray(x, dtype="float32")))
    dataset = dataset.batch(batch_size * strategy.num_replicas_in_sync)
    # Shard by data, not by file: the rows live in memory.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    distributed = strategy.experimental_distribute_dataset(dataset.with_options(options))

    def predict(batch_ids: Any, features: Any) -> Any:
        return batch_ids, tf.stack([m(features, training=False) for m in members], axis=1)

    step = tf.function(predict)

    seen_ids, outputs = [], []
    try:
        for batch_ids, features in distributed:
            replica_ids, replica_out = strategy.run(step, args=(batch_ids, features))
            # Gathered from every replica of every worker (uneven last shards included).
            seen_ids.append(np.asarray(strategy.gather(replica_ids, axis=0)))
            outputs.append(np.asarray(strategy.gather(replica_out, axis=0)))
    except (tf.errors.DeadlineExceededError, tf.errors.UnavailableError) as error:
        raise EnsembleError(
            "A worker of the cluster did not answer in time (is every worker of TF_CONFIG "
            f"started?): {str(error).splitlines()[0]}"
        ) from None
    order = np.concatenate(seen_ids)
    if not np.array_equal(np.sort(order), ids):
        raise EnsembleError(
            f"The distributed level-one pass returned {len(order)} rows for {rows}: rows were "
            "lost or repeated across replicas."
        )
    gathered = np.concatenate(outputs)
    return np.asarray(gathered[np.argsort(order, kind="stable")], dtype="float32")
