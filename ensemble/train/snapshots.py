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
from ensemble.train.members import compiled, trained_member
from ensemble.types import Task

__all__ = ["CyclicCosine", "snapshots"]


class CyclicCosine(keras.callbacks.Callback):
    """Sets the optimizer's learning rate before each batch along a cosine restarted every
    `steps_per_cycle` steps, and keeps a copy of the weights at the end of each cycle."""

    def __init__(self, max_learning_rate: float, steps_per_cycle: int) -> None:
        super().__init__()
        self.max_learning_rate = max_learning_rate
        self.steps_per_cycle = steps_per_cycle
        self.step = 0
        self.snapshots: list[list[np.ndarray]] = []

    def rate(self, step: int) -> float:
        phase = (step % self.steps_per_cycle) / self.steps_per_cycle
        return 0.5 * self.max_learning_rate * (1 + math.cos(math.pi * phase))

    def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
        self.model.optimizer.learning_rate.assign(self.rate(self.step))
        self.step += 1

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        if self.step % self.steps_per_cycle == 0:
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
    model, kind = compiled(build_fn(), task, keras.optimizers.SGD(max_learning_rate, momentum=0.9))
    rows = row_count(x)
    schedule = CyclicCosine(max_learning_rate, epochs_per_cycle * math.ceil(rows / batch_size))
    callbacks = [schedule, *fit_options.pop("callbacks", [])]
    model.fit(
        x, y, epochs=cycles * epochs_per_cycle, batch_size=batch_size, callbacks=callbacks, **fit_options
    )
    members = []
    for index, weights in enumerate(schedule.snapshots):
        snapshot = keras.models.clone_model(model)
        snapshot.set_weights(weights)
        members.append(trained_member(snapshot, f"snapshot_{index}", x, kind))
    return build_ensemble(members, combiner if combiner is not None else MeanCombiner(), task=task)
