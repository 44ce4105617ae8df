"""`tf.data` in (issue 30, item 1): every entry point that takes `(x, y)` arrays takes a
`tf.data.Dataset` of batches `(x, y)` too, and gives exactly what the same rows as arrays give;
a dataset that cannot be read as rows is refused with the batch named."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import combiners
import ensemble
from ensemble.fitting import conformal_config
from tests.conftest import FEATURES, dense_classifier, two_input_ensemble

ROWS = 90


def _batches(x, y=None, batch=16):
    parts = x if y is None else (x, y)
    return tf.data.Dataset.from_tensor_slices(parts).batch(batch)


@pytest.fixture(scope="module")
def rows():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(ROWS, FEATURES)).astype("float32")
    return x, rng.integers(0, 3, ROWS)


@pytest.fixture(scope="module")
def members(rows):
    """Three untrained members (seeded weights), the ninth row onwards unseen by any."""
    x, _ = rows
    found = [ensemble.load_member(dense_classifier(seed), name=f"m{seed}") for seed in range(3)]
    for member in found:
        member.training_rows = x[:9]
    return found


def _model(members, combiner=None, **options):
    return ensemble.build_ensemble(members, combiner or combiners.StackingCombiner(), **options)


@pytest.mark.slow
def test_fit_and_evaluate_from_a_dataset_equal_the_arrays(rows, members):
    x, y = rows[0][9:], rows[1][9:]
    from_arrays, from_data = _model(members), _model(members)
    a = ensemble.fit(from_arrays, x, y, calibration="temperature")
    b = ensemble.fit(from_data, _batches(x, y), calibration="temperature")
    assert a.rows == b.rows == len(x) and a.chosen == b.chosen and a.calibration == b.calibration
    for w, v in zip(from_arrays.get_weights(), from_data.get_weights(), strict=True):
        np.testing.assert_array_equal(w, v)
    scores = ensemble.evaluate_ensemble(from_data, _batches(x, y), fit_report=b)
    assert scores == ensemble.evaluate_ensemble(from_arrays, x, y, fit_report=a)


def test_the_guard_reads_a_dataset_as_it_reads_arrays(rows, members):
    x, y = rows
    with pytest.raises(ensemble.EnsembleError, match=r"trained member\(s\) \{'m0': 9, 'm1': 9, 'm2': 9\}"):
        ensemble.fit(_model(members), _batches(x, y))


def test_named_inputs_and_string_labels(rows):
    rng = np.random.default_rng(1)
    x = {
        "image": rng.normal(size=(40, 4)).astype("float32"),
        "meta": rng.normal(size=(40, 2)).astype("float32"),
    }
    names = np.array(["a", "b", "c"])[rng.integers(0, 3, 40)]
    model, again = two_input_ensemble(), two_input_ensemble()
    again.set_weights(model.get_weights())
    a = ensemble.fit(model, x, np.searchsorted(["a", "b", "c"], names), method="optimal")
    b = ensemble.fit(again, _batches(x, np.searchsorted(["a", "b", "c"], names), batch=7), method="optimal")
    np.testing.assert_allclose(list(a.member_weights.values()), list(b.member_weights.values()))
    labelled = ensemble.build_ensemble(
        [ensemble.load_member(dense_classifier(seed), name=f"m{seed}") for seed in range(2)],
        combiners.MeanCombiner(),
        classes=["a", "b", "c"],
    )
    xs = rows[0][:40]
    by_name = ensemble.evaluate_ensemble(labelled, tf.data.Dataset.from_tensor_slices((xs, names)).batch(8))
    assert by_name == ensemble.evaluate_ensemble(labelled, xs, names)


def test_conformal_calibration_and_level_one_from_a_dataset(rows, members):
    x, y = rows[0][9:], rows[1][9:]
    model = _model(members, combiners.MeanCombiner())
    a = ensemble.add_conformal(model, x, y, method="thr")
    b = ensemble.add_conformal(model, _batches(x, y), method="thr")
    assert conformal_config(a) == conformal_config(b)
    one = ensemble.calibrate_member(members[0], x, y)
    two = ensemble.calibrate_member(members[0], _batches(x, y))
    np.testing.assert_array_equal(one.model.predict(x, verbose=0), two.model.predict(x, verbose=0))
    store = ensemble.LevelOneStore()
    expected = store.predictions(model, x)
    np.testing.assert_array_equal(store.predictions(model, _batches(x)), expected)
    np.testing.assert_array_equal(ensemble.LevelOneStore().predictions(model, _batches(x, y)), expected)


@pytest.mark.slow
def test_out_of_fold_refit_and_distill_from_a_dataset(rows, members):
    x, y = rows[0][9:], rows[1][9:]

    def builder(member):  # the member's own predictions: the same rows give the same folds
        return lambda x_train, y_train, x_predict: np.asarray(member.model(x_predict))

    builders = {m.name: builder(m) for m in members}
    a = ensemble.fit_out_of_fold(_model(members), x, y, builders, cv=2, method="none")
    b = ensemble.fit_out_of_fold(_model(members), _batches(x, y), builders=builders, cv=2, method="none")
    np.testing.assert_array_equal(a.folds, b.folds)
    np.testing.assert_array_equal(a.level_one, b.level_one)
    model = _model(members, combiners.MeanCombiner())
    refits = [ensemble.load_member(dense_classifier(seed + 5), name=f"m{seed}") for seed in range(3)]
    for member in refits:
        member.training_rows = rows[0]
    refit = ensemble.refit_full(model, refits, _batches(x, y))
    with pytest.raises(ensemble.EnsembleError, match="trained member"):
        ensemble.fit(refit, _batches(x, y))
    students = []
    for data, labels in ((x, y), (_batches(x, y), None)):
        student = dense_classifier(9, final=None)
        students.append(
            ensemble.distill(
                model, student, data, y=labels, epochs=2, label_weight=0.5, shuffle=False, verbose=0
            )
        )
    np.testing.assert_allclose(
        students[0].model.predict(x, verbose=0), students[1].model.predict(x, verbose=0)
    )


@pytest.mark.parametrize(
    "data, message",
    [
        (
            lambda x, y: tf.data.Dataset.from_tensor_slices((x, y)),
            r"batch 0, y is a scalar: the dataset is not batched.*\.batch\(n\)",
        ),
        (lambda x, y: _batches(x, y).repeat(), "repeats forever"),
        (lambda x, y: _batches(x, y).take(0), "holds no rows"),
        (lambda x, y: tf.data.Dataset.from_tensor_slices((x, y, np.ones(len(y)))).batch(8), "sample weights"),
        (lambda x, y: _batches(x), r"expected dataset elements \(x, y\)"),
        (
            lambda x, y: tf.data.Dataset.zip((_batches(x, batch=8), _batches(y, batch=9))),
            r"batch 0 disagrees in rows: \{'x': 8, 'y': 9\}",
        ),
    ],
    ids=["unbatched", "infinite", "empty", "weights", "no-labels", "rows"],
)
def test_a_dataset_that_is_not_rows_is_refused_by_name(rows, members, data, message):
    x, y = rows[0][9:], rows[1][9:]
    model = _model(members)
    with pytest.raises(ensemble.EnsembleError, match=message):
        ensemble.fit(model, data(x, y))


def test_labels_twice_or_none_at_all(rows, members):
    x, y = rows[0][9:], rows[1][9:]
    with pytest.raises(
        ensemble.EnsembleError, match=r"fit: a tf.data.Dataset carries its own labels.*y=None"
    ):
        ensemble.fit(_model(members), _batches(x, y), y)
    with pytest.raises(ensemble.EnsembleError, match=r"evaluate_ensemble: expected y.*Received: y=None"):
        ensemble.evaluate_ensemble(_model(members), x)
