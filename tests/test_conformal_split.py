"""SplitConformal and calibration_split (the main job's conformal step), the `conformal` config
group, and conformal sets of members trained on digits covering unseen rows."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
from hydra.utils import instantiate
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import combiners
import ensemble
from ensemble.fitting import SplitConformal
from ensemble.fitting.conformal import conformal_quantile, minimum_rows
from ensemble.fitting.conformal_split import calibration_split
from tests.conftest import compose_config


def test_quantile_and_minimum_rows():
    assert [minimum_rows(a) for a in (0.5, 0.2, 0.1, 0.05, 0.01)] == [1, 4, 9, 19, 99]
    assert conformal_quantile(np.arange(1, 20), 0.1) == 18  # ceil(20 * 0.9) = 18th smallest
    np.testing.assert_array_equal(conformal_quantile(np.arange(20).reshape(10, 2), 0.2), [16, 17])
    with pytest.raises(ensemble.EnsembleError, match="needs at least 9 calibration rows"):
        conformal_quantile(np.arange(8), 0.1)


def test_calibration_split_is_seeded_stratified_and_disjoint():
    y = np.repeat(np.arange(4), [10, 20, 30, 40])
    chosen, measured = calibration_split(y, share=0.5, seed=3)
    assert np.intersect1d(chosen, measured).size == 0 and len(chosen) + len(measured) == len(y)
    assert np.bincount(y[chosen]).tolist() == [5, 10, 15, 20]
    again, _ = calibration_split(y, share=0.5, seed=3)
    np.testing.assert_array_equal(chosen, again)
    other, _ = calibration_split(y, share=0.5, seed=4)
    assert not np.array_equal(chosen, other)
    targets = np.linspace(0, 1, 11)  # regression: not stratified
    chosen, measured = calibration_split(targets, share=0.3, seed=0, stratify=False)
    assert len(chosen) == 3 and len(measured) == 8
    for share in (0.0, 1.0, 1.5):
        with pytest.raises(ensemble.EnsembleError, match=r"Expected a calibration share in \(0, 1\)"):
            calibration_split(y, share=share)


@pytest.mark.parametrize(
    ("option", "method"),
    [("aps", "aps"), ("thr", "thr"), ("absolute", "absolute"), ("normalized", "normalized")],
)
def test_every_conformal_option_instantiates(option, method):
    cfg = _compose(f"conformal={option}")
    conformal = instantiate(cfg.conformal)
    assert isinstance(conformal, SplitConformal) and conformal.method == method
    assert conformal.alpha == 0.1 and conformal.calibration_share == 0.5 and conformal.seed == cfg.data.seed


def test_conformal_defaults_to_none():
    cfg = compose_config()
    assert (cfg.get("conformal") or {}).get("_target_") is None


def _compose(override: str):  # type: ignore[no-untyped-def]
    """The config with a conformal option: chosen among the defaults once config.yaml lists the
    group, appended (`+conformal=...`) until then."""
    from hydra.errors import ConfigCompositionException

    try:
        cfg = compose_config(override)
    except ConfigCompositionException:
        return compose_config(f"+{override}")
    return cfg if "conformal" in cfg else compose_config(f"+{override}")


def _trained_member(name: str, x: np.ndarray, y: np.ndarray, seed: int, hidden: int) -> ensemble.Member:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(hidden, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=15, batch_size=64, verbose=0)
    member = ensemble.load_member(model, name=name, output="probabilities")
    member.training_rows = x.astype("float32")  # what the guard checks
    return member


@pytest.mark.slow
@pytest.mark.parametrize("method", ["aps", "thr"])
def test_digits_members_cover_unseen_rows(method):
    """Two small MLPs trained on 600 digits; calibrated on 400 rows nobody fitted on, measured on
    the other ~800: coverage >= 1 - alpha within three standard deviations."""
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    x_train, x_rest, y_train, y_rest = train_test_split(x, y, train_size=600, random_state=0, stratify=y)
    members = [_trained_member(f"m{s}", x_train, y_train, s, 8 + 8 * s) for s in range(2)]
    model = ensemble.build_ensemble(members, combiners.MeanCombiner())
    with pytest.raises(ensemble.EnsembleError, match=r"Calibration rows trained member\(s\)"):
        ensemble.add_conformal(model, x_train[:100], y_train[:100], method=method)
    split = SplitConformal(alpha=0.1, method=method, calibration_share=400 / len(y_rest), seed=0)
    calibrated, measured = split.calibrate(model, x_rest, y_rest)
    outputs = calibrated.predict(x_rest, batch_size=1024, verbose=0)
    report = split.measure(calibrated, outputs, y_rest, measured)
    print(method, report)
    n, m = report["calibration_rows"], report["rows"]
    assert n + m == len(y_rest) and report["measured_on"] == "held-out rows not calibrated on"
    assert report["coverage"] >= 0.9 - 3 * math.sqrt(0.09 * (1 / n + 1 / m)), report
    # Measured: thr coverage 0.92, mean size 0.93 (6.5% empty); aps, never empty, over-covers
    # (1.0, mean size 3.8): its sets run to the class that crosses q = 0.99.
    if method == "thr":
        assert report["mean_set_size"] < 1.5, report
    else:
        assert report["empty_sets"] == 0.0 and report["mean_set_size"] < 6, report


def test_split_conformal_regression_intervals():
    members = []
    for name, scale in (("r1", 0.8), ("r2", 1.2)):
        inputs = keras.Input((2,), name="features")
        outputs = keras.layers.Dense(1, kernel_initializer=keras.initializers.Constant(scale))(inputs)
        members.append(ensemble.load_member(keras.Model(inputs, outputs), name=name))
    model = ensemble.build_ensemble(members, combiners.MeanCombiner(), task="regression")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 2)).astype("float32")
    y = (x.sum(1) + rng.normal(size=4000)).astype("float32")
    split = SplitConformal(method="normalized", seed=1)
    calibrated, measured = split.calibrate(model, x, y)
    report = split.measure(calibrated, calibrated.predict(x, batch_size=4000, verbose=0), y, measured)
    assert report["calibration_rows"] == 2000 and report["rows"] == 2000
    assert abs(report["coverage"] - 0.9) < 3 * math.sqrt(0.09 / 1000), report
    assert report["target_coverage"] == [report["coverage"]] and report["mean_width"] > 0
