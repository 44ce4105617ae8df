"""Running on `tf.distribute`: strategies from config, `TF_CONFIG` checked, the chief found.

TensorFlow already has the engine for several devices and workers; this module only chooses
the strategy (`default`, `mirrored`, `multi_worker`), checks `TF_CONFIG` before TensorFlow
reads it, and says which worker writes. The level-one pass under a strategy is
`ensemble.fitting.level_one`'s.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import tensorflow as tf

from ensemble.errors import EnsembleError

__all__ = ["STRATEGIES", "is_chief", "make_strategy", "parse_tf_config"]

STRATEGIES = ("default", "mirrored", "multi_worker")


def make_strategy(name: str = "default", *, timeout_s: float = 300.0) -> tf.distribute.Strategy | None:
    """The `tf.distribute` strategy called `name`: `default` (None: no strategy, TensorFlow's
    own placement on this machine), `mirrored` (MirroredStrategy over every local device),
    `multi_worker` (MultiWorkerMirroredStrategy from a checked `TF_CONFIG`).

    For `multi_worker`, `timeout_s` bounds both the wait for every worker of the cluster to
    come up and each collective operation afterwards: a worker that never starts, or stops
    answering, is an EnsembleError naming `TF_CONFIG`, not a hang.
    """
    if name == "default":
        return None
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if timeout_s <= 0:
            raise EnsembleError(
                f"runtime.timeout_s: expected a positive number of seconds. Received: {timeout_s}"
            )
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
            for job in ("chief", "worker")
            if job in spec.jobs
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
        raise EnsembleError(
            f"TF_CONFIG.cluster: expected a mapping of job names to addresses. Received: {cluster!r}"
        )
    for job, addresses in cluster.items():
        if (
            not isinstance(addresses, list)
            or not addresses
            or not all(isinstance(a, str) and ":" in a for a in addresses)
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


def is_chief(strategy: tf.distribute.Strategy | None) -> bool:
    """Whether this process writes the job's files: always, but under several workers only
    the chief (task `chief`, else worker 0), as TensorFlow's multi-worker guides do."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type == "chief":
        return True
    return task_type == "worker" and task_id == 0 and "chief" not in resolver.cluster_spec().as_dict()
