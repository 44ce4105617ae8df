"""The fast head fit is the same fit (steps, batches, callbacks, History); the level-one pass
writes into one array; fingerprints hash buffers in place with the values they always had."""

from __future__ import annotations

import hashlib
import tracemalloc

import keras
import numpy as np
import pytest
import tensorflow as tf

import combiners
import ensemble
import ensemble.rows
from ensemble.fitting import LevelOneStore, fit_combiner
from ensemble.fitting.cache import read_entry, write_entry
from ensemble.fitting.head import _head
from ensemble.rows import data_fingerprint
from tests.conftest import dense_classifier, two_input_ensemble

ROWS, BATCH, EPOCHS = 203, 32, 3  # 7 steps an epoch, the last one of 11 rows


def _ensemble(passthrough: bool = False) -> keras.Model:
    members = [ensemble.load_member(dense_classifier(i, name=f"m{i}"), name=f"m{i}") for i in (1, 2, 3)]
    return ensemble.build_ensemble(members, combiners.StackingCombiner(passthrough=passthrough))


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(ROWS, 8)).astype("float32"), rng.integers(0, 3, size=ROWS)


def _reference_fit(
    passthrough: bool, validation_split: float
) -> tuple[list[np.ndarray], dict[str, list[float]]]:
    """Plain Keras fit of the combiner on the level-one predictions, one step per call, on the
    pipeline fit_combiner had before: the rows themselves through a seeded tf.data shuffle."""
    model, (x, y) = _ensemble(passthrough), _data()
    level_one = LevelOneStore(verbose=0).predictions(model, x)
    combiner = ensemble.ensemble_combiner(model)
    head, inputs = _head(combiner, level_one, x)
    head.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    train = ROWS - int(ROWS * validation_split)
    features = tuple(inputs) if isinstance(inputs, list) else inputs
    part = lambda a, s: tuple(v[s] for v in a) if isinstance(a, tuple) else a[s]  # noqa: E731
    rows = tf.data.Dataset.from_tensor_slices((part(features, slice(train)), y[:train])).cache()
    data = rows.shuffle(train, seed=0, reshuffle_each_iteration=True).batch(BATCH)
    held = None
    if train < ROWS:
        held = tf.data.Dataset.from_tensor_slices((part(features, slice(train, None)), y[train:])).batch(
            BATCH
        )
    history = head.fit(data, epochs=EPOCHS, validation_data=held, verbose=0, shuffle=False)
    return combiner.get_weights(), history.history


@pytest.mark.parametrize(
    "steps_per_execution", [None, 1, 3], ids=["epoch_per_call", "step_per_call", "3_per_call"]
)
@pytest.mark.parametrize(
    "passthrough, validation_split", [(False, 0.0), (True, 0.25)], ids=["plain", "passthrough_validation"]
)
@pytest.mark.slow
def test_the_fit_is_keras_fit_on_the_level_one_predictions(
    steps_per_execution, passthrough, validation_split
):
    want_weights, want_history = _reference_fit(passthrough, validation_split)
    model, (x, y) = _ensemble(passthrough), _data()
    history = fit_combiner(
        model,
        x,
        y,
        epochs=EPOCHS,
        batch_size=BATCH,
        seed=0,
        verbose=0,
        validation_split=validation_split or None,
        steps_per_execution=steps_per_execution,
    )
    assert isinstance(history, keras.callbacks.History)
    assert sorted(history.history) == sorted(want_history)
    for name, values in want_history.items():
        np.testing.assert_allclose(history.history[name], values, rtol=0, atol=1e-5, err_msg=name)
    for got, want in zip(ensemble.ensemble_combiner(model).get_weights(), want_weights, strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


class _Recorder(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, int]] = []

    def on_epoch_begin(self, epoch, logs=None):  # type: ignore[no-untyped-def]
        self.events.append(("epoch_begin", epoch))

    def on_train_batch_end(self, batch, logs=None):  # type: ignore[no-untyped-def]
        assert logs is not None and np.isfinite(logs["loss"])
        self.events.append(("batch_end", batch))

    def on_epoch_end(self, epoch, logs=None):  # type: ignore[no-untyped-def]
        self.events.append(("epoch_end", epoch))


@pytest.mark.parametrize("steps_per_execution, batch_ends", [(None, [6]), (1, list(range(7)))])
def test_callbacks_see_every_epoch_and_each_call(steps_per_execution, batch_ends):
    model, (x, y) = _ensemble(), _data()
    recorder = _Recorder()
    history = fit_combiner(
        model,
        x,
        y,
        epochs=2,
        batch_size=BATCH,
        verbose=0,
        callbacks=[recorder],
        steps_per_execution=steps_per_execution,
    )
    per_epoch = [("batch_end", b) for b in batch_ends]
    assert recorder.events == [
        ("epoch_begin", 0),
        *per_epoch,
        ("epoch_end", 0),
        ("epoch_begin", 1),
        *per_epoch,
        ("epoch_end", 1),
    ]
    assert len(history.history["loss"]) == 2 and history.params["steps"] == 7


def test_early_stopping_stops_the_fast_fit():
    model, (x, y) = _ensemble(), _data()
    stop = keras.callbacks.EarlyStopping(monitor="loss", min_delta=10.0, patience=1)
    history = fit_combiner(model, x, y, epochs=50, batch_size=BATCH, verbose=0, callbacks=[stop])
    assert len(history.history["loss"]) == 2


def _sha256_of(named: list[tuple[str, np.ndarray]]) -> str:
    """What data_fingerprint always computed: shapes, dtypes and a contiguous copy's bytes."""
    digest = hashlib.sha256()
    for name, value in named:
        array = np.ascontiguousarray(value)
        digest.update(f"{name}|{array.shape}|{array.dtype}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


BASE = np.random.default_rng(1).normal(size=(50, 12)).astype("float32")
ARRAYS = {
    "c_contiguous": BASE,
    "strided_columns": BASE[:, ::3],
    "strided_rows": BASE[::2],
    "fortran": np.asfortranarray(BASE),
    "transposed": BASE.T,
    "float64_3d": BASE.astype("float64").reshape(50, 3, 4)[:, :, ::-1],
    "int_labels": np.arange(9),
    "empty": BASE[:0],
    "scalar": np.float32(3.5),
}


@pytest.mark.parametrize("chunk", [1 << 24, 40], ids=["one_chunk", "many_chunks"])
@pytest.mark.parametrize("name", ARRAYS)
def test_fingerprint_equals_hashlib_over_the_arrays_bytes(monkeypatch, name, chunk):
    monkeypatch.setattr(ensemble.rows, "_CHUNK_BYTES", chunk)
    assert data_fingerprint(ARRAYS[name]) == _sha256_of([("", ARRAYS[name])])


def test_fingerprint_of_named_inputs_and_what_changes_it():
    x = {"image": BASE[:, :4], "meta": BASE[:, 4:].copy()}
    assert data_fingerprint(x) == _sha256_of([("image", x["image"]), ("meta", x["meta"])])
    assert data_fingerprint(x) == data_fingerprint({"meta": x["meta"], "image": x["image"].copy()})
    changed = {**x, "meta": x["meta"].copy()}
    changed["meta"][3, 1] = np.nextafter(changed["meta"][3, 1], np.float32(9))
    assert data_fingerprint(changed) != data_fingerprint(x)
    assert data_fingerprint(BASE.reshape(25, 24)) != data_fingerprint(BASE)


@pytest.mark.parametrize("view", ["c_contiguous", "strided"])
@pytest.mark.slow
def test_fingerprinting_does_not_copy_x(view):
    big = np.ones((200 * 2**20 // 4 // 64, 64), dtype="float32")  # 200 MB
    x = big if view == "c_contiguous" else big[:, ::2]
    tracemalloc.start()
    try:
        data_fingerprint(x)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20, f"fingerprinting allocated {peak / 2**20:.0f} MB"


def test_cache_checksums_are_the_sha256_of_the_values(tmp_path):
    values = BASE[:, :5]  # not contiguous: written as the contiguous (rows, width) it holds
    path = str(tmp_path / "entry.npz")
    write_entry(path, "key", values)
    with np.load(path) as entry:
        assert str(entry["sha256"]) == hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest()
    np.testing.assert_array_equal(read_entry(path, "key", 50, 5), values)


@pytest.mark.parametrize("directory", [False, True], ids=["memory", "disk"])
@pytest.mark.parametrize("batch_size", [7, 256])
def test_level_one_equals_each_members_own_predict(tmp_path, directory, batch_size):
    model = _ensemble()
    x = np.random.default_rng(2).normal(size=(101, 8)).astype("float64")  # cast as Keras casts
    store = LevelOneStore(tmp_path if directory else None, batch_size=batch_size, verbose=0)
    level_one = store.predictions(model, x)
    members = ensemble.ensemble_members(model)
    want = np.stack([m.predict(x.astype("float32"), verbose=0) for m in members], axis=1)
    assert level_one.shape == (101, 3, 3) and level_one.dtype == np.float32
    np.testing.assert_allclose(level_one, want, rtol=0, atol=1e-6)
    assert level_one.flags.writeable == directory  # the memory store's own array: read-only
    again = store.predictions(model, x)  # from the store, stacked anew
    np.testing.assert_array_equal(again, level_one)
    assert again.flags.writeable and not np.shares_memory(again, level_one)


def test_level_one_of_named_inputs_and_of_members_partly_cached():
    model = two_input_ensemble()
    rng = np.random.default_rng(3)
    x = {
        "image": rng.normal(size=(40, 4)).astype("float32"),
        "meta": rng.normal(size=(40, 2)).astype("float32"),
    }
    store = LevelOneStore(batch_size=16, verbose=0)
    vision, tabular = ensemble.ensemble_members(model)
    want = np.stack([vision.predict(x["image"], verbose=0), tabular.predict(x["meta"], verbose=0)], axis=1)
    np.testing.assert_allclose(store.predictions(model, x), want, rtol=0, atol=1e-6)
    del store._memory[store.computed[0]]  # one member to compute again, one from the store
    np.testing.assert_allclose(store.predictions(model, x), want, rtol=0, atol=1e-6)
    assert len(store.computed) == 3
