"""`distill`: one Keras student trained on an ensemble's soft predictions (Hinton et al. 2015).

A classifier student learns the ensemble's probabilities softened by `temperature` (the cross
entropy to `softmax(log p / T)`, scaled by T² so its gradients keep their size), and, where
labels are given, their cross entropy with weight `label_weight`. A regressor learns the
ensemble's mean by squared error. With `uncertainty=True` the student grows a second head on
the features its last layer reads, trained by squared error to the ensemble's
`mutual_information` (classification) or `std` (regression), so one model keeps an estimate
of the ensemble's epistemic uncertainty.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras
import numpy as np
from keras import ops

from ensemble.errors import EnsembleError
from ensemble.graph.view import ensemble_task
from ensemble.members.load import load_member
from ensemble.members.member import Member
from ensemble.rows import as_numpy, flat_features, in_batches
from ensemble.tfdata import arrays_of
from ensemble.train.members import check_finite_rows, check_finite_x, checked_targets, output_kind
from ensemble.types import CLASSIFICATION, MULTILABEL, REGRESSION

__all__ = ["distill", "distillation_loss"]

_FLOOR = 1e-7  # the smallest probability a probability-emitting student is scored at


def distill(
    model: keras.Model,
    student: keras.Model,
    x: Any,
    *,
    epochs: int,
    batch_size: int = 64,
    temperature: float = 1.0,
    y: Any = None,
    label_weight: float = 0.0,
    uncertainty: bool = False,
    optimizer: Any = "adam",
    name: str = "student",
    **fit_options: Any,
) -> Member:
    """Train `student` on the predictions of the ensemble `model` over rows `x`.

    Args:
        model: an ensemble from `build_ensemble` (fitted as you like).
        student: a functional or Sequential Keras model with the ensemble's inputs, emitting
            class logits (no final activation) or probabilities (a final softmax), or a
            regression prediction. It is trained in place.
        x: the rows (an array, or arrays by input name); rows no member trained on transfer
            the ensemble's knowledge best, but any rows work (labels are optional). Or a
            `tf.data.Dataset` of batches `x` or `(x, y)` (its labels are `y`; pass no `y`).
        epochs, batch_size, **fit_options: passed to `keras.Model.fit` (callbacks,
            validation_split, shuffle, verbose, ...), whose History is `result.history`.
        temperature: softens the ensemble's probabilities (classification; 1 keeps them).
        y, label_weight: labels of `x`, and the weight of their loss (0 to 1).
        uncertainty: also learn the ensemble's mutual information (or std) in a second head.
        optimizer: the Keras optimizer (or its name).
        name: the student's member name.

    Returns:
        The trained student as a frozen `Member` (it builds, exports and serves like any
        member). With `uncertainty`, `result.model` returns a dict with "prediction" and
        "mutual_information" (or "std"), and `result.model.export(path)` is one SavedModel
        serving both; the member emits the prediction (reload its `.keras` file with
        `output_key="prediction"` and its output kind, e.g. `output="logits"`). Its
        training-row record is `x`, so the leakage guard refuses to fit a combiner on it.

    Raises:
        EnsembleError: before anything trains, for a model that is no ensemble (or is a
            multilabel one, which it does not distill yet), a student whose inputs or width
            do not match, a bad temperature or label weight, labels missing for label_weight
            or not one valid label per row, or a row of x that is not finite (NaN, infinite,
            or float64 past float32's range) or on which the ensemble's outputs are not
            finite (named).
    """
    task = ensemble_task(model)
    x, y = arrays_of(x, y, where=f"distill {name!r}", labels="optional")
    if task == MULTILABEL:  # before the student is loaded as a classifier and refused for its sigmoid
        raise EnsembleError(
            f"distill does not support task='multilabel' yet: it teaches one distribution over "
            "classes (softmax cross entropy) or a regression mean, and a multilabel ensemble's "
            f"labels are independent probabilities. Received: a multilabel ensemble of "
            f"{int(model.output['prediction'].shape[-1])} labels (student {name!r})."
        )
    if not temperature > 0 or not 0 <= label_weight <= 1:
        raise EnsembleError(
            f"Expected temperature > 0 and 0 <= label_weight <= 1. "
            f"Received: temperature={temperature}, label_weight={label_weight}"
        )
    if label_weight > 0 and y is None:
        raise EnsembleError("label_weight > 0 needs the labels: pass y.")
    classify = task == CLASSIFICATION
    probe = load_member(student, name=name, output=output_kind(student) if classify else None)
    feeds = _feeds(x, model, student, name)
    check_finite_x(x, f"Distilling {name!r}")  # the cause named, before the ensemble predicts
    rows, width = len(next(iter(feeds.values()))), int(model.output["prediction"].shape[-1])
    door = f"Distilling {name!r}"
    if y is not None:  # before the ensemble predicts x
        task_of_y = CLASSIFICATION if classify else REGRESSION
        y = checked_targets(y, rows, task_of_y, door, classes=width if classify else None)
        if not classify and np.size(y) != rows * width:
            raise EnsembleError(f"{door}: y holds {np.size(y)} values; expected {rows} x {width}.")
    single = len(feeds) == 1
    teacher = in_batches(lambda f: as_numpy(model(next(iter(f.values())) if single else f)), feeds, 4096)
    spread = "mutual_information" if classify else "std"
    for key in ("prediction", spread) if uncertainty else ("prediction",):
        check_finite_rows(teacher[key], f"Distilling {name!r}: the ensemble's {key!r} on x")
    raw = student.outputs[0]
    if raw.shape[-1] != width:
        raise EnsembleError(
            f"Student {name!r} emits width {raw.shape[-1]}; the ensemble's prediction is {width}."
        )
    logits = raw if not classify or probe.output_kind == "logits" else ops.log(ops.maximum(raw, _FLOOR))
    outputs = {"prediction": logits}
    losses: dict[str, Any] = {"prediction": distillation_loss(task, temperature, label_weight)}
    targets = {"prediction": _targets(teacher["prediction"], y, classify, width, temperature)}
    served: dict[str, Any] = {"prediction": raw}
    if uncertainty:
        # The head learns the spread in units of its mean (a mutual information of 0.01 would
        # otherwise weigh nothing beside the prediction's loss) and answers in the ensemble's.
        # One unit for the mutual information (rows,), one per target for the std (rows, targets).
        target = teacher[spread].astype("float64")
        scale = np.where(target.mean(axis=0) > 0, target.mean(axis=0), 1.0)
        units = 1 if classify else width
        head = keras.layers.Dense(units, activation="softplus", name=spread)(student.layers[-1].input)
        outputs[spread] = ops.squeeze(head, -1) if classify else head
        served[spread] = outputs[spread] * ops.convert_to_tensor(scale.astype("float32"))
        losses[spread] = keras.losses.MeanSquaredError()
        targets[spread] = (target / scale).astype("float32")
    graph_inputs = student.inputs[0] if single else {t.name: t for t in student.inputs}
    trainer = keras.Model(graph_inputs, outputs)
    trainer.compile(optimizer=optimizer, loss=losses)
    data = next(iter(feeds.values())) if single else feeds
    history = trainer.fit(data, targets, epochs=epochs, batch_size=batch_size, **fit_options)
    final = keras.Model(graph_inputs, served, name=name) if uncertainty else student
    chosen: dict[str, str] = {"output_key": "prediction"} if uncertainty else {}
    result = load_member(final, name=name, output=probe.output_kind, **chosen)
    result.training_rows = np.asarray(flat_features(feeds), dtype="float32")  # for the guard
    result.history = history
    return result


def distillation_loss(task: str, temperature: float = 1.0, label_weight: float = 0.0) -> Any:
    """The student's loss on targets `[soft probabilities | one-hot labels]` (classification:
    T² times the cross entropy of `softmax(logits / T)` to the softened probabilities, plus
    `label_weight` times the labels' cross entropy) or `[ensemble mean | labels]` (regression)."""

    def loss(targets: Any, prediction: Any) -> Any:
        width = prediction.shape[-1]
        soft, labels = targets[:, :width], targets[:, width:]
        if task == CLASSIFICATION:
            imitation = temperature**2 * keras.losses.categorical_crossentropy(
                soft, prediction / temperature, from_logits=True
            )
            truth = keras.losses.categorical_crossentropy(labels, prediction, from_logits=True)
        else:
            imitation = ops.mean(ops.square(prediction - soft), axis=-1)
            truth = ops.mean(ops.square(prediction - labels), axis=-1)
        return (1 - label_weight) * imitation + label_weight * truth

    return loss


def _targets(prediction: np.ndarray, y: Any, classify: bool, width: int, temperature: float) -> np.ndarray:
    if classify:
        log_p = np.log(np.maximum(prediction.astype("float64"), 1e-12)) / temperature
        soft = np.exp(log_p - log_p.max(-1, keepdims=True))
        soft /= soft.sum(-1, keepdims=True)
        labels = np.zeros_like(soft) if y is None else np.eye(width)[np.asarray(y).astype(int).ravel()]
    else:
        soft = prediction.astype("float64")
        labels = np.zeros_like(soft) if y is None else np.asarray(y, dtype="float64").reshape(soft.shape)
    return np.concatenate([soft, labels], axis=-1).astype("float32")


def _feeds(x: Any, model: keras.Model, student: keras.Model, name: str) -> dict[str, np.ndarray]:
    """`x` by the ensemble's input names, which a student of several inputs must share."""
    names = [tensor.name for tensor in model.inputs]
    feeds = dict(x) if isinstance(x, Mapping) else {names[0]: x}
    own = [tensor.name for tensor in student.inputs]
    if sorted(feeds) != sorted(names) or (len(names) > 1 and sorted(own) != sorted(names)):
        raise EnsembleError(
            f"Student {name!r}: the ensemble reads inputs {names}; the student reads {own}. "
            f"Received rows for: {sorted(feeds)}"
        )
    return {key: np.asarray(value) for key, value in feeds.items()}
