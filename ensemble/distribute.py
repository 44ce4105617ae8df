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


def make_strategy(name: str = "default", *, timeout_s: float = 300.0) -> tf.distribute.Strategy:
    """The `tf.distribute` strategy called `name`: `default` (this device), `mirrored` (every
    local device), `multi_worker` (MultiWorkerMirroredStrategy from a checked `TF_CONFIG`).

    For `multi_worker`, `timeout_s` bounds both the wait for every worker of the cluster to
    come up and each collective operation afterwards: a worker that never starts, or stops
    answering, is an EnsembleError naming `TF_CONFIG`, not a hang.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if timeout_s <= 0:
            raise EnsembleError(f"runtime.timeout_s: expected a positive number of seconds. Received: {timeout_s}")
        config = parse_tf_config(os.environ.get("TF_CONFIG"))
        _bound_cluster_registration(config["cluster"], timeout_s)
        options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=timeout_s)
        try:
            return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        except tf.errors.DeadlineExceededError as error:
            raise EnsembleError(
                f"Not every worker of TF_CONFIG.cluster {config['cluster']} came up within "
                f"{timeout_s:g} s (runtime.timeout_s); is each started, with its own task.index? "
                f"TensorFlow: {str(error).splitlines()[0]}"
            ) from None
    raise EnsembleError(f"runtime.strategy: expected one of {STRATEGIES}. Received: {name!r}")


def _bound_cluster_registration(cluster: Mapping[str, Any], timeout_s: float) -> None:
    """Configure TensorFlow's coordination service as MultiWorkerMirroredStrategy would, but
    with registration as a barrier that fails after `timeout_s`; TensorFlow's own default
    waits for a missing worker forever. Left alone when the caller configured the service.

    TensorFlow has no public API for this; `tf.distribute`'s own strategy sets it up through
    the same eager-context call (collective_all_reduce_strategy.py).
    """
    from tensorflow.python.eager import context

    if context.context().coordination_service is not None:
        return
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.distribute import multi_worker_util

    spec = tf.train.ClusterSpec(dict(cluster))
    context.context().configure_coordination_service(
        service_type="standalone",
        service_leader=multi_worker_util.coordination_leader(spec),
        coordinated_jobs=[
            coordination_config_pb2.CoordinatedJob(name=job, num_tasks=spec.num_tasks(job))
            for job in ("chief", "worker") if job in spec.jobs
        ],
        cluster_register_timeout_in_ms=int(timeout_s * 1000),
    )
    context.context().coordination_service.cluster_register_with_barrier = True


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
