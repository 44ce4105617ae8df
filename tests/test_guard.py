"""The leakage guard within a float tolerance: copies of training rows through float64, rounding
or one ulp are found; other rows of real data are not; level-one predictions are guarded unless
said to be unseen; the fit report says what was compared; old hash records still work."""

from __future__ import annotations

import json
import logging
import time

import keras
import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.linear_model import LogisticRegression

import combiners
import ensemble
from ensemble.fitting.guard import DEFAULT_ATOL, DEFAULT_RTOL, matching_rows
from ensemble.members.training_rows import row_hashes, training_rows_path

TRAIN = 300


def standardised(x: np.ndarray, mean: np.ndarray, std: np.ndarray, dtype: str) -> np.ndarray:
    x = x.astype(dtype)
    return (x - mean.astype(dtype)) / std.astype(dtype)


@pytest.fixture(scope="module")
def cancer():
    """Breast cancer standardised with float32 statistics of the first TRAIN rows (shuffled)."""
    x, y = load_breast_cancer(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order], y[order]
    mean, std = x[:TRAIN].mean(0), x[:TRAIN].std(0)
    x32 = standardised(x, mean, std, "float32")
    x64 = standardised(x, mean, std, "float64")
    return x32, x64, y


@pytest.fixture(scope="module")
def user_member(cancer, tmp_path_factory):
    """A member trained by a user's own script: a tiny Keras model fitted, saved, recorded."""
    x32, _, y = cancer
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((x32.shape[1],)),
            keras.layers.Dense(8, activation="tanh"),
            keras.layers.Dense(2, "softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x32[:TRAIN], y[:TRAIN], epochs=2, verbose=0)
    path = tmp_path_factory.mktemp("user") / "user.keras"
    model.save(path)
    record = ensemble.record_training_rows(path, x32[:TRAIN])
    assert record == training_rows_path(path)
    return path


@pytest.fixture
def guarded(user_member):
    return ensemble.build_ensemble(
        [ensemble.load_member(user_member, name="user")], combiners.StackingCombiner()
    )


def test_the_record_holds_the_training_rows(cancer, user_member):
    x32, _, _ = cancer
    np.testing.assert_array_equal(np.load(training_rows_path(user_member)), x32[:TRAIN])


@pytest.mark.parametrize(
    "copy",
    [
        lambda x32, x64: x64[:TRAIN],  # standardised in float64 instead of float32
        lambda x32, x64: np.round(x64[:TRAIN], 6),  # rounded to 6 decimals
        lambda x32, x64: np.round(x32[:TRAIN].astype("float64"), 6),
        lambda x32, x64: np.nextafter(x32[:TRAIN], np.float32(np.inf)),  # one ulp away
        lambda x32, x64: np.nextafter(x32[:TRAIN], np.float32(-np.inf)),
        lambda x32, x64: x64[:TRAIN] * (1 + 1e-6),  # 1e-6 relative
    ],
    ids=["float64", "round6-float64", "round6-float32", "ulp-up", "ulp-down", "relative-1e-6"],
)
def test_copies_of_training_rows_within_float_noise_are_found(cancer, guarded, copy):
    x32, x64, _ = cancer
    noisy = copy(x32, x64)
    assert ensemble.check_leakage(guarded, noisy, allow_overlap=True) == {"user": TRAIN}
    assert ensemble.check_leakage(guarded, x32[TRAIN:]) == {"user": 0}


def test_float_noise_hides_rows_from_exact_hashes(cancer):
    """What the previous guard missed: most float64-standardised rows differ in some bit."""
    x32, x64, _ = cancer
    assert np.isin(row_hashes(x64[:TRAIN]), row_hashes(x32[:TRAIN])).mean() < 0.5


def test_the_user_members_training_rows_are_refused_by_fit(cancer, guarded):
    _, x64, y = cancer
    with pytest.raises(
        ensemble.EnsembleError, match=rf"trained member\(s\) \{{'user': {TRAIN}\}}.*rtol=1e-05"
    ):
        ensemble.fit(guarded, x64[:TRAIN], y[:TRAIN])
    mixed = np.concatenate([x64[TRAIN:], x64[:5]])
    with pytest.raises(ensemble.EnsembleError, match=r"\{'user': 5\}"):
        ensemble.fit(guarded, mixed, np.concatenate([y[TRAIN:], y[:5]]))
    report = ensemble.fit(guarded, x64[TRAIN:], y[TRAIN:])  # held out: fine
    assert report.overlaps == {"user": 0} and report.regime == "holdout"


@pytest.mark.parametrize("dataset", [load_digits, load_breast_cancer])
def test_other_rows_of_real_data_are_not_flagged(dataset):
    x, _ = dataset(return_X_y=True)
    x = x[np.random.default_rng(1).permutation(len(x))]
    half = len(x) // 2
    std = x[:half].std(0)
    x = standardised(x, x[:half].mean(0), np.where(std > 0, std, 1.0), "float32")
    train, other = x[:half], x[half:]
    exact_duplicates = int(np.isin(row_hashes(other), row_hashes(train)).sum())  # same features
    assert int(matching_rows(train, other).sum()) == exact_duplicates
    assert int(matching_rows(train, other.astype("float64") + 1e-7).sum()) == exact_duplicates
    assert matching_rows(train, train).all()


def test_given_level_one_on_training_rows_is_refused_unless_said_unseen(cancer, guarded):
    x32, _, y = cancer
    given = guarded.predict(x32[:TRAIN], verbose=0)["member_predictions"]
    with pytest.raises(ensemble.EnsembleError, match=r"\{'user': 300\}.*pass level_one_unseen=True"):
        ensemble.fit(guarded, x32[:TRAIN], y[:TRAIN], level_one=given)
    report = ensemble.fit(guarded, x32[:TRAIN], y[:TRAIN], level_one=given, level_one_unseen=True)
    assert report.regime == "given" and report.guard["checked"] is False
    with pytest.raises(ensemble.EnsembleError, match="Received no level_one"):
        ensemble.fit(guarded, x32[:TRAIN], y[:TRAIN], level_one_unseen=True)
    held_out = guarded.predict(x32[TRAIN:], verbose=0)["member_predictions"]
    report = ensemble.fit(guarded, x32[TRAIN:], y[TRAIN:], level_one=held_out)  # guarded, clean
    assert report.regime == "given" and report.guard["rows_compared"] == len(held_out)


def test_out_of_fold_on_the_final_members_training_rows_passes(cancer, guarded):
    x32, _, y = cancer

    def builder(x_train, y_train, x_predict):
        return LogisticRegression(max_iter=500).fit(x_train, y_train).predict_proba(x_predict)

    report = ensemble.fit_out_of_fold(guarded, x32[:TRAIN], y[:TRAIN], {"user": builder}, cv=3)
    assert report.regime == "oof" and report.rows == TRAIN and report.guard["checked"] is False


def test_the_fit_report_says_what_was_compared_with_which_tolerance(cancer, guarded, user_member, tmp_path):
    x32, _, y = cancer
    path = tmp_path / "unrecorded.keras"
    keras.Sequential([keras.Input((x32.shape[1],)), keras.layers.Dense(2, "softmax")]).save(path)
    model = ensemble.build_ensemble(
        [ensemble.load_member(path, name="bare"), ensemble.load_member(user_member, name="user")],
        combiners.MeanCombiner(),
    )
    report = ensemble.fit(model, x32[TRAIN:], y[TRAIN:], guard_rtol=1e-4, guard_atol=1e-5)
    guard = report.as_dict()["guard"]
    json.dumps(guard)
    assert guard["rows_compared"] == len(y) - TRAIN and guard["overlaps"] == {"user": 0}
    assert guard["tolerance"]["rtol"] == 1e-4 and guard["tolerance"]["atol"] == 1e-5
    assert guard["training_rows"] == {"user": TRAIN} and guard["unchecked"] == ["bare"]
    assert ensemble.fit(guarded, x32[TRAIN:], y[TRAIN:]).guard["tolerance"]["rtol"] == DEFAULT_RTOL
    with pytest.raises(ensemble.EnsembleError, match="non-negative guard tolerance"):
        ensemble.fit(guarded, x32[TRAIN:], y[TRAIN:], guard_rtol=-1.0)


def test_an_old_hash_record_is_matched_exactly_with_a_warning(cancer, user_member, tmp_path, caplog):
    x32, x64, y = cancer
    path = tmp_path / "old.keras"
    model = keras.models.load_model(user_member)
    model.layers[-1].bias.assign(model.layers[-1].bias + 1e-3)  # content the store holds no record of
    model.save(path)
    np.save(training_rows_path(path), np.unique(row_hashes(x32[:TRAIN])))  # the previous format
    with caplog.at_level(logging.WARNING, logger="ensemble.fitting"):
        model = ensemble.build_ensemble(
            [ensemble.load_member(path, name="old_format")], combiners.MeanCombiner()
        )
        assert ensemble.check_leakage(model, x32[:TRAIN], allow_overlap=True) == {"old_format": TRAIN}
    assert "previous format" in caplog.text and "record_training_rows" in caplog.text
    exact = ensemble.check_leakage(model, x64[:TRAIN], allow_overlap=True)["old_format"]
    assert exact < TRAIN  # bit for bit only: the tolerance cannot apply to hashes
    report = ensemble.fit(model, x32[TRAIN:], y[TRAIN:])
    assert report.guard["exact_only"] == ["old_format"]


def test_a_record_is_refused_for_non_finite_rows_and_checked_against_the_features(tmp_path, cancer, guarded):
    x32, _, _ = cancer
    bad = x32[:4].copy()
    bad[2, 3] = np.nan
    with pytest.raises(ensemble.EnsembleError, match="first at row 2"):
        ensemble.record_training_rows(tmp_path / "m.keras", bad)
    assert not (tmp_path / "m.keras.training_rows.npy").exists()
    with pytest.raises(ensemble.EnsembleError, match=r"Expected rows of \(30,\) features"):
        matching_rows(x32[:5], x32[:5, :4])
    assert matching_rows(x32[:5], np.where(np.isnan(bad), np.nan, x32[:4])).tolist() == [
        True,
        True,
        False,
        True,
    ]


def test_exact_tolerance_and_scale(cancer):
    x32, x64, _ = cancer
    assert not matching_rows(x32[:TRAIN], np.nextafter(x32[:TRAIN], np.float32(np.inf)), rtol=0, atol=0).any()
    scaled = x32[:TRAIN] * 1000  # the tolerance follows each feature's magnitude
    assert matching_rows(scaled, x64[:TRAIN] * 1000).all()
    assert not matching_rows(scaled, scaled + 1.0).any()
    assert DEFAULT_ATOL < 1e-5


def test_twenty_thousand_rows_against_five_thousand_is_fast():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(20_000, 64)).astype("float32")
    rows = np.concatenate([train[:2_500].astype("float64") + 1e-7, rng.normal(size=(2_500, 64))])
    start = time.perf_counter()
    found = matching_rows(train, rows)
    elapsed = time.perf_counter() - start
    assert found[:2_500].all() and not found[2_500:].any()
    assert elapsed < 5.0, elapsed  # ~0.1 s measured; generous for a shared machine
