"""ensemble.snapshots: the cyclic cosine schedule, batch by batch, and a member per cycle."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
from sklearn.datasets import load_digits

import ensemble
from ensemble import EnsembleError


class RecordRates(keras.callbacks.Callback):
    """The learning rate each batch ran with, and the weights at each epoch's end."""

    def __init__(self) -> None:
        super().__init__()
        self.rates: list[float] = []
        self.weights: list[list[np.ndarray]] = []

    def on_train_batch_begin(self, batch, logs=None):  # after CyclicCosine's (it is first)
        self.rates.append(float(self.model.optimizer.learning_rate.numpy()))

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append([np.array(w) for w in self.model.get_weights()])


def test_a_member_per_cycle_on_a_restarted_cosine():
    x, y = load_digits(return_X_y=True)
    x = (x[:320] / 16).astype("float32")
    seen = RecordRates()

    def build():
        keras.utils.set_random_seed(0)
        return keras.Sequential([keras.Input((64,)), keras.layers.Dense(10, activation="softmax")])

    model = ensemble.snapshots(
        build, x, y[:320], cycles=3, epochs_per_cycle=2, max_learning_rate=0.2, batch_size=64,
        callbacks=[seen], verbose=0,
    )  # fmt: skip
    steps = 2 * 5  # two epochs of 320 / 64 batches per cycle
    expected = [0.1 * (1 + math.cos(math.pi * (t % steps) / steps)) for t in range(3 * steps)]
    np.testing.assert_allclose(seen.rates, expected, rtol=1e-6)
    members = ensemble.ensemble_members(model)
    assert [m.name for m in members] == ["snapshot_0", "snapshot_1", "snapshot_2"]
    for member, epoch in zip(members, (1, 3, 5), strict=True):  # the last epoch of each cycle
        for got, want in zip(member.model.get_weights(), seen.weights[epoch], strict=True):
            np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(member.training_rows, x)
    out = model.predict(x[:10], verbose=0)
    np.testing.assert_allclose(out["prediction"], out["member_predictions"].mean(1), atol=1e-6)


def test_bad_schedules_are_named():
    with pytest.raises(EnsembleError, match="cycles >= 1"):
        ensemble.snapshots(lambda: None, np.zeros((4, 2)), np.zeros(4), cycles=0, epochs_per_cycle=1)
