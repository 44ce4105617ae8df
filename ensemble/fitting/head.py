"""`fit_combiner`: Keras training of a combiner's trainable weights on level-one predictions.

Members predict the fitting rows once (the level-one store); the combiner then trains alone in
a small head model with compiled multi-step execution, so members stay bit-identical.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from combiners.base import Combiner
from ensemble.errors import EnsembleError
from ensemble.fitting.head_steps import EpochSteps, batches, orders
from ensemble.fitting.level_one import LevelOneStore
from ensemble.fitting.prepare import fitting_rows, forget_compiled, restore_initial_state
from ensemble.graph.view import EnsembleView
from ensemble.rows import flat_features
from ensemble.types import Data

__all__ = ["CombinerHead", "fit_combiner"]


def fit_combiner(
    model: keras.Model,
    x: Data,
    y: Any,
    *,
    epochs: int = 100,
    batch_size: int = 256,
    validation_split: float | None = None,
    verbose: Any = "auto",
    optimizer: Any = None,
    store: LevelOneStore | None = None,
    level_one: np.ndarray | None = None,
    level_one_unseen: bool = False,
    allow_overlap: bool = False,
    strategy: tf.distribute.Strategy | None = None,
    seed: int | None = None,
    steps_per_execution: int | None = None,
    **fit_options: Any,
) -> keras.callbacks.History:
    """Train only the combiner of `model` (from `build_ensemble`) on `(x, y)`.

    Members predict `x` once (through `store`, which caches them); the
    combiner then trains on those predictions in a small head model with
    compiled multi-step execution. Members stay bit-identical.

    The head steps as Keras' `fit` steps on arrays: every epoch, `batch_size` rows at a time
    in an order shuffled anew (seeded with `seed`), the last batch smaller; the level-one
    predictions are held as tensors and each batch gathered from them by row ids. By default
    all of an epoch's steps run in one compiled call (`steps_per_execution`, Keras' compile
    option; 1 under a `strategy`): epoch-level callbacks and the `History` are Keras' own,
    but batch-level callbacks (`on_train_batch_begin`/`_end`, the progress bar) are called
    once per call, with the logs of its last step. Pass `steps_per_execution=1` to have them
    called for every batch, at the cost of a Python round trip per step.

    With a `tf.distribute` `strategy`, the head trains under it, each replica (of every
    worker) a shard of every batch: a copy of the combiner is built in `strategy.scope()`,
    trained, and its weights written back, so the ensemble itself may be built anywhere and
    stays an ordinary single-device model for prediction and export. Under several workers,
    each must call this alike, with the same rows; the shuffle is seeded (`seed`, default 0)
    so that every worker shuffles alike.

    The fitting rows are checked and guarded as `ensemble.fit` does it (`store`, `level_one`,
    `level_one_unseen`, `allow_overlap`, `strategy`, `verbose` mean what they mean there).

    Every call starts afresh: from the combiner's weights (and member weights) as the first
    fit found them (`ensemble.fitting.prepare.initial_state`: as built, or as loaded), and
    with a new optimizer (a copy of `optimizer` when one is given, not its state), so that
    fitting twice gives what fitting once gives, whatever fit ran before.

    Returns:
        The Keras `History` of the head's training.
    """
    view = EnsembleView.of(model)
    combiner = view.combiner
    if not combiner.trainable_weights:
        raise EnsembleError(
            f"{type(combiner).__name__} {combiner.name!r} has no trainable weights: nothing for "
            "fit_combiner to train. A MeanCombiner learns member weights with fit_mean_weights; "
            "a StackingCombiner has a meta-model to train."
        )
    targets, level_one, _ = fitting_rows(
        view,
        x,
        y,
        store=store,
        level_one=level_one,
        level_one_unseen=level_one_unseen,
        allow_overlap=allow_overlap,
        strategy=strategy,
        verbose=verbose,
    )
    restore_initial_state(combiner)  # the rows are good: train from the start, not the last fit
    training = _Training(
        epochs, batch_size, validation_split, verbose, optimizer, seed, steps_per_execution, fit_options
    )
    if strategy is None:
        history = _fit_head(view.task, combiner, level_one, x, targets, training)
    else:
        with strategy.scope():  # Keras trains only variables created under the strategy
            replica = type(combiner).from_config(combiner.get_config())
            replica.build_from_config(combiner.get_build_config())
            replica.set_weights(combiner.get_weights())
            seeded = dataclasses.replace(training, seed=0 if seed is None else seed)
            history = _fit_head(view.task, replica, level_one, x, targets, seeded)
        combiner.set_weights(replica.get_weights())
    forget_compiled(model)
    return history


@dataclass(frozen=True)
class _Training:
    """How the head trains: Keras `fit`'s own arguments."""

    epochs: int
    batch_size: int
    validation_split: float | None
    verbose: Any
    optimizer: Any
    seed: int | None
    steps_per_execution: int | None
    fit_options: dict[str, Any]


def _fit_head(
    task: str, combiner: Combiner, level_one: np.ndarray, x: Data, targets: np.ndarray, training: _Training
) -> keras.callbacks.History:
    epochs, batch_size, validation_split = training.epochs, training.batch_size, training.validation_split
    fit_options, seed = dict(training.fit_options), training.seed
    head, inputs = _head(combiner, level_one, x)
    rows = len(targets)
    train_rows = rows - int(rows * (validation_split or 0.0))  # Keras' rule: the last rows validate
    if train_rows < 1:
        raise EnsembleError(f"validation_split={validation_split} leaves no row to train on.")
    steps = math.ceil(train_rows / batch_size)
    # Not under a distribution strategy: there, Keras 3.15's multi-step loop fails on TF 2.21
    # ("You must feed a value for placeholder tensor ... while/cond").
    per_call = 1 if tf.distribute.has_strategy() else (training.steps_per_execution or steps)
    head.compile(
        optimizer=_fresh(training.optimizer),
        loss=("sparse_categorical_crossentropy" if task == "classification" else "mean_squared_error"),
        steps_per_execution=per_call,
    )
    shuffle = fit_options.pop("shuffle", True)
    head.sample_batch = (keras.tree.map_structure(lambda a: a[:batch_size], inputs), targets[:batch_size])
    train_inputs = keras.tree.map_structure(lambda a: a[:train_rows], inputs)
    if (
        per_call == steps
        and not tf.distribute.has_strategy()
        and not {"class_weight", "steps_per_epoch"} & set(fit_options)
    ):
        head.epoch_steps = EpochSteps(train_inputs, targets[:train_rows], batch_size)
        train = orders(train_rows, shuffle, seed)
        fit_options["steps_per_epoch"] = steps  # with an endless `train`: one iterator throughout
    else:
        train = batches(train_inputs, targets[:train_rows], batch_size, shuffle=shuffle, seed=seed)
    validation = None
    if train_rows < rows:
        validation = batches(
            keras.tree.map_structure(lambda a: a[train_rows:], inputs),
            targets[train_rows:],
            batch_size,
            shuffle=False,
        )
    history: keras.callbacks.History = head.fit(
        # shuffle=False: the pipeline shuffles itself; Keras would only warn that it can't.
        train,
        epochs=epochs,
        verbose=training.verbose,
        validation_data=validation,
        shuffle=False,
        **fit_options,
    )
    return history


def _fresh(optimizer: Any) -> Any:
    """A new optimizer: Adam(0.01) for None, a copy of a given one without its state (its step
    count and moments from an earlier fit), or the name as given."""
    if optimizer is None:
        return keras.optimizers.Adam(learning_rate=0.01)
    if isinstance(optimizer, keras.optimizers.Optimizer):
        return keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    return optimizer


class CombinerHead(keras.Model):
    """The combiner alone as a functional model, trainable under any `tf.distribute` strategy.

    Under a strategy, Keras 3.15's `fit` on TF 2.21 first draws one batch from a fresh
    iterator of the training data to build the optimizer and metrics from its shapes. That
    spends one reshuffle of the seeded pipeline (the strategy's first epoch then sees the
    order a single device sees second), and under several workers it fails outright: the
    nested `(x, y)` batch goes to one `strategy.reduce`, which MultiWorkerMirroredStrategy
    only accepts for a single value (keras-team/keras#20329). The head builds from
    `sample_batch`, a few of its own rows, instead.

    Under a strategy, Keras averages the loss on each replica and sums the replicas'
    gradients, each scaled by 1 / replicas: a batch split unevenly (the last of an epoch)
    then weighs its rows by their replica's share. The head's gradient is that of the mean
    over the whole global batch, as on one device; the loss it reports is Keras' own.

    After each step under several workers, Keras averages the step's scalar logs with
    `strategy.reduce(axis=0)`, which fails on scalars ("Invalid reduction dimension 0 for
    input with 0 dimensions", tensorflow/tensorflow#72388): there, the steps return each
    log as a one-element vector, which that reduction averages over every replica.
    """

    sample_batch: Any = None  # (x, y) of a few training rows; set before `fit`
    epoch_steps: EpochSteps | None = None  # set before `fit` to step each epoch in one call
    train_function: Any

    def make_train_function(self, force: bool = False) -> Any:
        if self.epoch_steps is None:
            return super().make_train_function(force)
        if self.train_function is None or force:
            self.train_function = self.epoch_steps.train_function(self)
        return self.train_function

    def _maybe_symbolic_build(self, iterator: Any = None, data_batch: Any = None) -> None:
        if iterator is not None and self.sample_batch is not None:
            iterator, data_batch = None, (*self.sample_batch, None)
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def compute_loss(
        self,
        x: Any = None,
        y: Any = None,
        y_pred: Any = None,
        sample_weight: Any = None,
        training: bool = True,
    ) -> Any:
        loss = super().compute_loss(x, y, y_pred, sample_weight, training=training)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        context = tf.distribute.get_replica_context()
        if not training or replicas == 1 or context is None:
            return loss
        rows = tf.cast(tf.shape(y)[0], loss.dtype)
        # Keras: (replica mean) / replicas; the global-batch mean's share: replica sum / rows.
        exact = loss * rows * replicas / context.all_reduce("SUM", rows)
        return tf.stop_gradient(loss - exact) + exact  # Keras' value, the exact gradient

    def train_step(self, data: Any) -> Any:
        return self._vector_logs(super().train_step(data))

    def test_step(self, data: Any) -> Any:
        return self._vector_logs(super().test_step(data))

    def _vector_logs(self, logs: Any) -> Any:
        strategy = self.distribute_strategy
        if not (
            isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            and strategy.extended._in_multi_worker_mode()
        ):
            return logs
        return {name: tf.reshape(value, [1]) for name, value in logs.items()}


def _head(combiner: Combiner, level_one: np.ndarray, x: Data) -> tuple[CombinerHead, Any]:
    """A model of the combiner alone, fed level-one predictions (and flat features)."""
    _, members, width = level_one.shape
    predictions_in = keras.Input((members, width), name="member_predictions")
    if combiner.needs_features:
        features = flat_features(x)
        features_in = keras.Input((features.shape[1],), name="features_flat")
        head = CombinerHead([predictions_in, features_in], combiner(predictions_in, features_in))
        return head, [level_one, features]
    return CombinerHead(predictions_in, combiner(predictions_in)), level_one
