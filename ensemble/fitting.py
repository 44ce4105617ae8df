"""Fit an ensemble's combiner on level-one predictions, never on the members' training rows.

- `fit_combiner`: Keras training of a combiner's trainable weights (a
  stacking meta-model) on cached member predictions: the members never run
  again and stay bit-identical.
- `fit_stacking`: the convex way for the default stacking meta-model:
  scikit-learn's `LogisticRegression` (or `Ridge` for regression) fitted on
  the same meta features, its coefficients baked into the in-graph `Dense`.
- `fit_mean_weights`: learned `MeanCombiner` weights, by Caruana's ensemble
  selection or by minimising the validation NLL.

Each first checks the targets and the leakage guard: rows that trained a
member (as recorded by this project) are refused unless `allow_overlap=True`.
Each also takes `level_one`, precomputed member predictions for `x` (the
out-of-fold ones of `ensemble.oof`): the members then do not run, and the
guard does not apply, since those predictions came from models that never
saw their rows.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from sklearn.linear_model import (
    LogisticRegression,
    LogisticRegressionCV,
    Ridge,
    RidgeCV,
)

from combiners import MeanCombiner, StackingCombiner
from combiners.base import Combiner
from combiners.stack import mean_kernel
from ensemble._inputs import Data, flat_features, row_count
from ensemble.build import ensemble_combiner, ensemble_members, ensemble_task
from ensemble.errors import EnsembleError
from ensemble.fingerprint import row_hashes
from ensemble.level_one import LevelOneStore, member_inputs
from ensemble.weights import ensemble_selection, optimal_weights

__all__ = ["check_leakage", "fit_combiner", "fit_mean_weights", "fit_stacking"]

log = logging.getLogger(__name__)

_UNRECORDED_LOGGED: set[str] = set()  # members whose missing record was already logged


def check_leakage(model: keras.Model, x: Data, *, allow_overlap: bool = False) -> dict[str, int]:
    """How many rows of `x` trained each member that carries a training-row record.

    Raises EnsembleError naming the members and overlap counts when any row
    overlaps, unless `allow_overlap`. Members with no record (trained
    elsewhere) cannot be checked: that is logged once per member.
    """
    overlaps: dict[str, int] = {}
    for member in ensemble_members(model):
        if member.training_rows is None:
            if member.name not in _UNRECORDED_LOGGED:
                _UNRECORDED_LOGGED.add(member.name)
                log.info("Member %r carries no training-row record: the leakage guard cannot "
                         "check it.", member.name)
            continue
        hashes = row_hashes(member_inputs(member, x))
        overlaps[member.name] = int(np.isin(hashes, member.training_rows).sum())
    leaked = {name: count for name, count in overlaps.items() if count}
    if leaked and not allow_overlap:
        raise EnsembleError(
            f"Rows given to fit the combiner trained member(s) {leaked} (name: overlapping rows "
            f"of {row_count(x)}). A combiner fitted on them trusts those members' overconfident "
            "answers. Use held-out rows (the holdout split, or out-of-fold predictions), or pass "
            "allow_overlap=True if you mean it."
        )
    return overlaps


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
    allow_overlap: bool = False,
    strategy: tf.distribute.Strategy | None = None,
    seed: int | None = None,
    **fit_options: Any,
) -> keras.callbacks.History:
    """Train only the combiner of `model` (from `build_ensemble`) on `(x, y)`.

    Members predict `x` once (through `store`, which caches them); the
    combiner then trains on those predictions in a small head model with
    compiled multi-step execution. Members stay bit-identical.

    With a `tf.distribute` `strategy`, the head trains under it, each replica (of every
    worker) a shard of every batch: a copy of the combiner is built in `strategy.scope()`,
    trained, and its weights written back, so the ensemble itself may be built anywhere and
    stays an ordinary single-device model for prediction and export. Under several workers,
    each must call this alike, with the same rows; the shuffle is seeded (`seed`, default 0)
    so that every worker shuffles alike.

    Returns:
        The Keras `History` of the head's training.
    """
    combiner = ensemble_combiner(model)
    if not combiner.trainable_weights:
        raise EnsembleError(
            f"{type(combiner).__name__} {combiner.name!r} has no trainable weights: nothing for "
            "fit_combiner to train. A MeanCombiner learns member weights with fit_mean_weights; "
            "a StackingCombiner has a meta-model to train."
        )
    targets = _check_targets(model, x, y)
    level_one = _level_one(model, x, targets, store, level_one, allow_overlap)
    if strategy is None:
        history = _fit_head(model, combiner, level_one, x, targets, epochs, batch_size,
                            validation_split, verbose, optimizer, fit_options, seed=seed)
    else:
        with strategy.scope():  # Keras trains only variables created under the strategy
            replica = type(combiner).from_config(combiner.get_config())
            replica.build_from_config(combiner.get_build_config())
            replica.set_weights(combiner.get_weights())
            history = _fit_head(model, replica, level_one, x, targets, epochs, batch_size,
                                validation_split, verbose, optimizer, fit_options,
                                seed=0 if seed is None else seed)
        combiner.set_weights(replica.get_weights())
    _drop_compiled(model)
    return history


def _fit_head(
    model: keras.Model, combiner: Combiner, level_one: np.ndarray, x: Data, targets: np.ndarray,
    epochs: int, batch_size: int, validation_split: float | None, verbose: Any, optimizer: Any,
    fit_options: dict[str, Any],
    seed: int | None = None,
) -> keras.callbacks.History:
    head, inputs = _head(combiner, level_one, x)
    rows = len(targets)
    train_rows = rows - int(rows * (validation_split or 0.0))  # Keras' rule: the last rows validate
    if train_rows < 1:
        raise EnsembleError(f"validation_split={validation_split} leaves no row to train on.")
    head.compile(
        optimizer=optimizer or keras.optimizers.Adam(learning_rate=0.01),
        loss=("sparse_categorical_crossentropy" if ensemble_task(model) == "classification"
              else "mean_squared_error"),
        # One compiled call per epoch: the head is tiny, Python overhead dominates. Not under a
        # distribution strategy: there, Keras 3.15's multi-step loop fails on TF 2.21 ("You
        # must feed a value for placeholder tensor ... while/cond").
        steps_per_execution=(1 if tf.distribute.has_strategy()
                             else max(1, min(64, math.ceil(train_rows / batch_size)))),
    )
    shuffle = fit_options.pop("shuffle", True)
    head.sample_batch = (keras.tree.map_structure(lambda a: a[:batch_size], inputs), targets[:batch_size])
    train = _dataset(keras.tree.map_structure(lambda a: a[:train_rows], inputs),
                     targets[:train_rows], batch_size, shuffle, seed)
    validation = None
    if train_rows < rows:
        validation = _dataset(keras.tree.map_structure(lambda a: a[train_rows:], inputs),
                              targets[train_rows:], batch_size, shuffle=False)
    history: keras.callbacks.History = head.fit(
        # shuffle=False: the pipeline shuffles itself; Keras would only warn that it can't.
        train, epochs=epochs, verbose=verbose, validation_data=validation, shuffle=False,
        **fit_options,
    )
    return history


def fit_stacking(
    model: keras.Model,
    x: Data,
    y: Any,
    *,
    C: float | None = None,
    alpha: float | None = None,
    cv: int = 5,
    max_iter: int = 2000,
    store: LevelOneStore | None = None,
    level_one: np.ndarray | None = None,
    allow_overlap: bool = False,
) -> Any:
    """Fit the default stacking meta-model the exact convex way and bake it into the graph.

    Classification: a multinomial `LogisticRegression(C=C)`; regression:
    `Ridge(alpha=alpha)` on the residual of the members' plain mean (so that
    regularisation shrinks toward that mean); both on the meta features the
    `StackingCombiner` computes (`meta_features`). With `C`/`alpha` None (the default), the
    regularisation is chosen by `cv`-fold cross-validated log-loss (squared
    error) with `LogisticRegressionCV` / `RidgeCV`: the meta-model has
    members x classes^2 weights, which overfit the fitting rows otherwise.
    The ensemble's `prediction` then equals the estimator's `predict_proba`
    (classification) or the members' mean plus its `predict` (regression).

    Returns:
        The fitted scikit-learn estimator.
    """
    combiner = ensemble_combiner(model)
    if not isinstance(combiner, StackingCombiner) or combiner.meta_model is not None:
        raise EnsembleError(
            "fit_stacking fits the default meta-model of a StackingCombiner (a Dense layer). "
            f"Received: {type(combiner).__name__} {combiner.name!r}"
            + (" with a custom meta_model; train it with fit_combiner." if isinstance(
                combiner, StackingCombiner) else ".")
        )
    targets = _check_targets(model, x, y)
    level_one = _level_one(model, x, targets, store, level_one, allow_overlap)
    features = np.asarray(
        combiner.meta_features(level_one, flat_features(x) if combiner.needs_features else None),
        dtype="float64",
    )
    width = level_one.shape[-1]
    if ensemble_task(model) == "classification":
        estimator: Any = (
            LogisticRegression(C=C, max_iter=max_iter) if C is not None
            else LogisticRegressionCV(Cs=np.logspace(-4, 2, 13), l1_ratios=(0.0,), cv=cv,
                                      scoring="neg_log_loss", use_legacy_attributes=False,
                                      max_iter=max_iter)
        )
        estimator.fit(features, targets)
        if C is None:
            _log_chosen("C", float(estimator.C_), weakest=estimator.C_ >= np.max(estimator.Cs))
        missing = sorted(set(range(width)) - {int(c) for c in estimator.classes_})
        if missing:
            raise EnsembleError(
                f"Class(es) {missing} have no row in y: the meta-model cannot learn them. Fit on "
                "rows of every class."
            )
        kernel, bias = estimator.coef_.T, estimator.intercept_
        if width == 2:  # sklearn's binary form: p1 = sigmoid(x.w + b) = softmax([0, x.w + b])[1]
            kernel = np.hstack([np.zeros_like(kernel), kernel])
            bias = np.concatenate([[0.0], bias])
    else:
        # Ridge on what the members' plain mean gets wrong: the penalty then shrinks toward
        # the mean (a sound ensemble) rather than toward predicting zero.
        members_mean = level_one.mean(axis=1).astype("float64")
        estimator = (
            Ridge(alpha=alpha) if alpha is not None else RidgeCV(alphas=np.logspace(-4, 6, 21), cv=cv)
        ).fit(features, targets - members_mean)
        if alpha is None:
            _log_chosen("alpha", float(estimator.alpha_), weakest=estimator.alpha_ <= np.min(estimator.alphas))
        prior = mean_kernel(level_one.shape[1], width, features.shape[1])  # the untrained kernel
        kernel = prior + np.atleast_2d(estimator.coef_).T
        bias = np.atleast_1d(estimator.intercept_)
    dense = combiner.meta_model_
    assert dense is not None  # built with the ensemble
    dense.kernel.assign(kernel.astype("float32"))
    dense.bias.assign(bias.astype("float32"))
    _drop_compiled(model)
    return estimator


def _log_chosen(name: str, value: float, weakest: bool) -> None:
    """Log the cross-validated regularisation; warn when it is the weakest on the grid."""
    log.info("Stacking meta-model: %s=%g, chosen by cross-validated loss", name, value)
    if weakest:
        log.warning(
            "Stacking meta-model: cross-validation chose the weakest regularisation tried "
            "(%s=%g): the fitting rows ask for a stacker as sure as the grid allows, so its "
            "confidence, and its NLL on new rows, may be optimistic. "
            "More fitting rows, or a fixed combiner.fit.%s, bound it.", name, value, name,
        )


def fit_mean_weights(
    model: keras.Model,
    x: Data,
    y: Any,
    *,
    method: str = "selection",
    rounds: int = 50,
    store: LevelOneStore | None = None,
    level_one: np.ndarray | None = None,
    allow_overlap: bool = False,
) -> np.ndarray:
    """Learn the weights of the ensemble's `MeanCombiner` on `(x, y)` and set them.

    `method="selection"`: Caruana et al.'s greedy ensemble selection with
    replacement (`rounds` picks); `"optimal"`: non-negative weights summing to
    1 that minimise the NLL (MSE for regression). The weights end up in the
    layer's config.

    Returns:
        The weights, one per member.
    """
    combiner = ensemble_combiner(model)
    if not isinstance(combiner, MeanCombiner):
        raise EnsembleError(
            f"fit_mean_weights learns a MeanCombiner's weights. Received: "
            f"{type(combiner).__name__} {combiner.name!r}"
        )
    if method not in ("selection", "optimal"):
        raise EnsembleError(f"Expected method 'selection' or 'optimal'. Received: {method!r}")
    targets = _check_targets(model, x, y)
    level_one = _level_one(model, x, targets, store, level_one, allow_overlap).astype("float64")
    task = ensemble_task(model)
    weights = (
        ensemble_selection(level_one, targets, task=task, rounds=rounds)
        if method == "selection"
        else optimal_weights(level_one, targets, task=task)
    )
    _set_weights(model, combiner, weights)
    return weights


def _level_one(
    model: keras.Model,
    x: Data,
    targets: np.ndarray,
    store: LevelOneStore | None,
    level_one: np.ndarray | None,
    allow_overlap: bool,
) -> np.ndarray:
    """The members' predictions on `x`: given (out-of-fold), or from the store after the guard."""
    if level_one is None:
        check_leakage(model, x, allow_overlap=allow_overlap)
        return (store or LevelOneStore()).predictions(model, x)
    members = len(ensemble_members(model))
    width = int(model.output["prediction"].shape[-1])
    if np.shape(level_one) != (len(targets), members, width):
        raise EnsembleError(
            f"Expected level_one of shape (rows, members, width) = {(len(targets), members, width)}. "
            f"Received: {np.shape(level_one)}"
        )
    return np.asarray(level_one, dtype="float32")


def _set_weights(model: keras.Model, combiner: Combiner, weights: np.ndarray) -> None:
    combiner.set_member_weights([float(w) for w in weights])
    _drop_compiled(model)


def _drop_compiled(model: keras.Model) -> None:
    """Forget traced functions: they hold the combiner's old constants."""
    model.predict_function = None
    model.train_function = None
    model.test_function = None


def _dataset(inputs: Any, targets: np.ndarray, batch_size: int, shuffle: bool,
             seed: int | None = None) -> Any:
    """The head's input pipeline, built once: Keras' array adapter rebuilds its iterator every
    epoch, which costs more than a whole epoch of a small head (about 3x over 100 epochs)."""
    features = tuple(inputs) if isinstance(inputs, list) else inputs  # tf.data: a tuple, not a list
    dataset = tf.data.Dataset.from_tensor_slices((features, targets)).cache()
    if shuffle:
        dataset = dataset.shuffle(len(targets), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


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

    def _maybe_symbolic_build(self, iterator: Any = None, data_batch: Any = None) -> None:
        if iterator is not None and self.sample_batch is not None:
            iterator, data_batch = None, (*self.sample_batch, None)
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def compute_loss(self, x: Any = None, y: Any = None, y_pred: Any = None,
                     sample_weight: Any = None, training: bool = True) -> Any:
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
        if not (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
                and strategy.extended._in_multi_worker_mode()):
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


def _check_targets(model: keras.Model, x: Data, y: Any) -> np.ndarray:
    rows = row_count(x)
    if rows == 0:
        raise EnsembleError("Expected at least one row to fit the combiner. Received: an empty split.")
    targets = np.asarray(y)
    if len(targets) != rows:
        raise EnsembleError(f"Expected y with one target per row of x ({rows}). Received: {len(targets)}.")
    width = int(model.output["prediction"].shape[-1])
    if ensemble_task(model) == "regression":
        targets = targets.astype("float32").reshape(rows, -1)
        if targets.shape[1] != width:
            raise EnsembleError(
                f"Expected {width} regression target(s) per row, as the members predict. "
                f"Received: y of shape {np.shape(y)}."
            )
        return targets
    if targets.ndim != 1 or not np.all(np.mod(targets, 1) == 0):
        raise EnsembleError(
            "Expected integer class labels, shape (rows,), for a classification ensemble. "
            f"Received: y of shape {targets.shape} and dtype {targets.dtype}"
            + (" with non-integer values (regression targets?)." if targets.ndim == 1 else ".")
        )
    targets = targets.astype("int64")
    outside = sorted({int(t) for t in targets if not 0 <= t < width})
    if outside:
        raise EnsembleError(
            f"Expected class labels in [0, {width}), one per column of the members' outputs. "
            f"Received labels {outside[:10]}: do these labels match the members' classes?"
        )
    return targets
