"""`snapshots`: the members of one training run (Huang et al. 2017, "Snapshot ensembles").

One model trains for `cycles` cycles of `epochs_per_cycle` epochs each; within a cycle its
learning rate falls from `max_learning_rate` to nearly 0 along a cosine, batch by batch, and
restarts at the next. A snapshot of the weights is taken at the end of each cycle, where
the model sits in a minimum; the snapshots, averaged, are the ensemble, for the price of
one run.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from combiners import MeanCombiner
from combiners.base import Combiner
from ensemble.errors import EnsembleError
from ensemble.graph.build import build_ensemble
from ensemble.rows import row_count
from ensemble.train.members import checked_targets, compiled, output_width, trained_member
from ensemble.types import CLASSIFICATION, Task

__all__ = ["CyclicCosine", "snapshots"]


class CyclicCosine(keras.callbacks.Callback):
    """Sets the optimizer's learning rate before each batch along a cosine that restarts every
    `epochs_per_cycle` epochs, and keeps a copy of the weights at the end of each cycle.

    The steps of an epoch are read from the fit itself (`params["steps"]`), so a validation
    split or a last partial batch does not shift the restarts."""

    def __init__(self, max_learning_rate: float, epochs_per_cycle: int) -> None:
        super().__init__()
        self.max_learning_rate = max_learning_rate
        self.epochs_per_cycle = epochs_per_cycle
        self.steps_per_epoch = 0
        self.epoch = 0
        self.snapshots: list[list[np.ndarray]] = []

    def rate(self, epoch: int, batch: int) -> float:
        cycle_steps = self.epochs_per_cycle * self.steps_per_epoch
        phase = ((epoch % self.epochs_per_cycle) * self.steps_per_epoch + batch) / cycle_steps
        return 0.5 * self.max_learning_rate * (1 + math.cos(math.pi * phase))

    def on_train_begin(self, logs: Any = None) -> None:
        steps = self.params.get("steps")
        if not steps:
            raise EnsembleError(
                "CyclicCosine needs the steps of an epoch: fit on arrays, or pass steps_per_epoch."
            )
        self.steps_per_epoch = int(steps)

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self.epoch = epoch

    def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
        self.model.optimizer.learning_rate.assign(self.rate(self.epoch, batch))

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        if (epoch + 1) % self.epochs_per_cycle == 0:
            self.snapshots.append([np.array(w) for w in self.model.get_weights()])


def snapshots(
    build_fn: Callable[[], keras.Model],
    x: Any,
    y: Any,
    *,
    cycles: int,
    epochs_per_cycle: int,
    max_learning_rate: float = 0.1,
    batch_size: int = 32,
    combiner: Combiner | None = None,
    task: Task | None = None,
    **fit_options: Any,
) -> keras.Model:
    """A snapshot ensemble: one model trained for `cycles` cosine cycles, a member per cycle.

    Args:
        build_fn: returns the model to train (compiled or not: an uncompiled one gets SGD with
            momentum 0.9, as the paper, and its loss); its optimizer's learning rate is set by
            `CyclicCosine` batch by batch.
        x, y: the training rows and their labels (class integers) or targets.
        cycles, epochs_per_cycle: how many snapshots, and the epochs between them.
        max_learning_rate: the rate each cycle starts from.
        batch_size, **fit_options: passed to `fit` (shuffle, verbose, more callbacks).
        combiner: combines the snapshots; default `MeanCombiner()`.
        task: "classification" or "regression"; None: classification behind a final softmax,
            else regression.

    Returns:
        `build_ensemble(members, combiner, task=task)` with members `snapshot_<i>`, each
        carrying the training rows for the leakage guard.
    """
    if cycles < 1 or epochs_per_cycle < 1 or not max_learning_rate > 0:
        raise EnsembleError(
            f"Expected cycles >= 1, epochs_per_cycle >= 1 and max_learning_rate > 0. "
            f"Received: {cycles}, {epochs_per_cycle}, {max_learning_rate}"
        )
    if "epochs" in fit_options:
        raise EnsembleError("snapshots trains cycles * epochs_per_cycle epochs; pass no epochs.")
    model, kind = compiled(build_fn(), task, keras.optimizers.SGD(max_learning_rate, momentum=0.9))
    if not isinstance(model.optimizer.learning_rate, keras.Variable):
        raise EnsembleError(
            "snapshots sets the learning rate batch by batch: compile the model with a plain "
            "learning rate, not a LearningRateSchedule."
        )
    if int(getattr(model, "steps_per_execution", 1) or 1) > 1:
        raise EnsembleError(
            "snapshots sets the learning rate batch by batch: compile with steps_per_execution=1 "
            f"(received {model.steps_per_execution}), or batch callbacks see one step in several."
        )
    classes = output_width(model, x) if kind == CLASSIFICATION else None
    targets = checked_targets(y, row_count(x), kind, "snapshots", classes)  # before anything trains
    schedule = CyclicCosine(max_learning_rate, epochs_per_cycle)
    callbacks = [schedule, *(fit_options.pop("callbacks", None) or [])]
    model.fit(
        x,
        targets,
        epochs=cycles * epochs_per_cycle,
        batch_size=batch_size,
        callbacks=callbacks,
        **fit_options,
    )
    if len(schedule.snapshots) < cycles:
        raise EnsembleError(
            f"snapshots: training stopped after {len(schedule.snapshots)} of {cycles} cycles "
            "(a callback such as EarlyStopping ended it); every cycle makes one member."
        )
    members = []
    for index, weights in enumerate(schedule.snapshots):
        snapshot = keras.models.clone_model(model)
        snapshot.set_weights(weights)
        members.append(trained_member(snapshot, f"snapshot_{index}", x, kind))
    return build_ensemble(members, combiner if combiner is not None else MeanCombiner(), task=task)
