"""How the combiner head steps through its rows: the level-one predictions held as tensors,
each batch gathered by row ids, in the order the head's Keras fit always shuffled them."""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
import tensorflow as tf

__all__ = ["EpochSteps", "batches", "orders"]


def orders(rows: int, shuffle: bool, seed: int | None) -> Any:
    """Each epoch's order of the rows, endlessly: their ids, in the order Keras' `fit` of the
    same seeded tf.data shuffle of the rows (this head's fit before) gave each epoch. That
    fit made two iterators an epoch, the second unused (each draws a new shuffle's seeds):
    here too, each epoch makes two and draws from the first only."""
    if not shuffle:
        return tf.data.Dataset.from_tensors(tf.range(rows, dtype=tf.int64)).repeat()
    order = tf.data.Dataset.range(rows).shuffle(rows, seed=seed, reshuffle_each_iteration=True).batch(rows)
    first = tf.data.Dataset.from_tensors(tf.constant(0, tf.int64))
    options = tf.data.Options()  # autotuning's thread, at the iterator's end, stalled up to 1 s
    options.autotune.enabled = False
    return (
        tf.data.Dataset.choose_from_datasets([order, order], first).repeat().prefetch(2).with_options(options)
    )


def batches(
    inputs: Any, targets: np.ndarray, batch_size: int, *, shuffle: bool, seed: int | None = None
) -> Any:
    """The head's batches for Keras' own steps, each gathered by row ids from tensors made once:
    tf.data's cost per element, on whole rows, outweighed a small head's epoch."""
    rows = _tensors(inputs, targets)
    ids = tf.data.Dataset.range(len(targets))
    if shuffle:
        ids = ids.shuffle(len(targets), seed=seed, reshuffle_each_iteration=True)
    return ids.batch(batch_size).map(lambda batch: _gather(rows, batch)).prefetch(tf.data.AUTOTUNE)


def _tensors(inputs: Any, targets: np.ndarray) -> Any:
    features = tuple(inputs) if isinstance(inputs, list) else inputs  # tf.data: a tuple, not a list
    return tf.nest.map_structure(tf.convert_to_tensor, (features, targets))


def _gather(rows: Any, ids: Any) -> Any:
    return tf.nest.map_structure(lambda tensor: tf.gather(tensor, ids), rows)


class EpochSteps:
    """A whole epoch's steps in one compiled call, the rows held as tensors: each call takes
    the epoch's order (one element of `orders`) and steps through it `batch_size` rows at a
    time in a graph loop, with Keras' own `train_step`, as Keras' multi-step loop would, less
    its cost per step (an iterator's optional and a function call each)."""

    def __init__(self, inputs: Any, targets: np.ndarray, batch_size: int) -> None:
        self.rows, self.count, self.batch_size = _tensors(inputs, targets), len(targets), batch_size

    def train_function(self, head: keras.Model) -> Any:
        size, steps = self.batch_size, math.ceil(self.count / self.batch_size)
        if head.optimizer is not None and not head.optimizer.built:
            # As its first step would build it, but before the trace: a variable made while
            # tracing costs tf.function a second trace.
            head.optimizer.build(head.trainable_variables)

        def step(i: Any, order: Any) -> Any:
            logs = head.train_step(_gather(self.rows, order[i * size : (i + 1) * size]))
            with tf.control_dependencies(tf.nest.flatten(logs)):  # a step ends before the next
                return (i + 1,)

        def epoch(order: Any) -> Any:
            done = tf.while_loop(
                lambda i: i < steps, lambda i: step(i, order), (tf.constant(0),), parallel_iterations=1
            )
            with tf.control_dependencies(done):
                return head.get_metrics_result()

        compiled = tf.function(
            epoch, autograph=False, input_signature=[tf.TensorSpec([self.count], tf.int64)]
        )
        return lambda iterator: compiled(next(iterator))
