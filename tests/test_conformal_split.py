"""SplitConformal and calibration_split (the main job's conformal step), the `conformal` config
group, conformal sets of members trained on digits covering unseen rows, and the regression
intervals (their coverage, a NumPy reference, NaN rows, bad input)."""

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
from ensemble.fitting import SplitConformal, conformal_metrics
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


@pytest.mark.parametrize("option", ["auto", "aps", "raps", "thr", "absolute", "normalized"])
def test_every_conformal_option_instantiates(option):
    cfg = _compose(f"conformal={option}")
    conformal = instantiate(cfg.conformal)
    assert isinstance(conformal, SplitConformal) and conformal.method == option
    assert conformal.alpha == 0.1 and conformal.calibration_share == 0.5 and conformal.seed == cfg.data.seed
    assert conformal.randomized is None and conformal.tuning_share == 0.3
    assert conformal.k_reg is None and conformal.lambda_reg is None


@pytest.fixture(scope="module")
def tempered() -> tuple[keras.Model, np.ndarray, np.ndarray]:
    """A member tempered 4 times over (underconfident) on 10-class logits, and 3000 rows whose
    labels are drawn from the untempered logits."""
    inputs = keras.Input((10,), name="features")
    member = keras.Model(inputs, keras.layers.Softmax()(keras.layers.Rescaling(0.25)(inputs)))
    model = ensemble.build_ensemble([ensemble.load_member(member, name="a")], combiners.MeanCombiner())
    rng = np.random.default_rng(4)
    x = (rng.normal(size=(3000, 10)) * 8).astype("float32")
    p = np.exp(x - x.max(1, keepdims=True))
    y = (p.cumsum(1) / p.sum(1, keepdims=True) > rng.random((3000, 1))).argmax(1)
    return model, x, y


def test_split_conformal_auto_records_its_choice_beside_the_measures(tempered):
    """Tempered members (underconfident) on 3000 held-out rows: about 1500 calibrate (450 of them
    choose the rule), the rest measure; metrics.json gets the rule and how it was chosen."""
    model, x, y = tempered
    split = SplitConformal(method="auto", seed=2)
    calibrated, measured = split.calibrate(model, x, y)
    report = split.measure(calibrated, calibrated.predict(x, batch_size=3000, verbose=0), y, measured)
    selection = report["selection"]
    assert selection["requested"] == "auto" and selection["seed"] == 2 and selection["tuning_rows"] == 450
    assert report["calibration_rows"] + selection["tuning_rows"] + report["rows"] == 3000
    chosen = min(selection["tried"], key=lambda rule: rule["mean_set_size"])
    assert report["method"] == chosen["method"] and report["randomized"] == chosen["randomized"]
    n, m = report["calibration_rows"], report["rows"]
    assert abs(report["coverage"] - 0.9) <= 1 / (n + 1) + 3 * math.sqrt(0.09 * (1 / n + 1 / m)), report
    plain = SplitConformal(method="aps", seed=2)  # the default: never empty, over-covers
    aps_model, aps_rows = plain.calibrate(model, x, y)
    aps = plain.measure(aps_model, aps_model.predict(x, batch_size=3000, verbose=0), y, aps_rows)
    assert aps["selection"] is None and aps["calibration_rows"] + aps["rows"] == 3000
    assert aps["mean_set_size"] > report["mean_set_size"] + 1, (aps, report)


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
@pytest.mark.parametrize("method", ["aps", "thr", "auto"])
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
    tuned = (report["selection"] or {}).get("tuning_rows", 0)
    assert n + tuned + m == len(y_rest) and report["measured_on"] == "held-out rows not calibrated on"
    assert report["coverage"] >= 0.9 - 3 * math.sqrt(0.09 * (1 / n + 1 / m)), report
    # Measured: thr coverage 0.92, mean size 0.93 (6.5% empty); aps, never empty, over-covers
    # (1.0, mean size 3.8): its sets run to the class that crosses q = 0.99.
    if method in ("thr", "auto"):
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


def test_the_leakage_guard_refuses_rows_a_member_trained_on(tempered):
    classifier, x, y = tempered
    member = ensemble.EnsembleView.of(classifier).members[0]
    member.training_rows = x[:50].copy()
    try:
        with pytest.raises(ensemble.EnsembleError, match=r"Calibration rows trained member\(s\) \{'a': 50\}"):
            ensemble.add_conformal(classifier, x[:1000], y[:1000])
        model = ensemble.add_conformal(classifier, x[:1000], y[:1000], allow_overlap=True)
        assert "prediction_set" in model.output
        ensemble.add_conformal(classifier, x[50:1000], y[50:1000])  # held out: fine
    finally:
        member.training_rows = None


def _with_nan(x: np.ndarray) -> np.ndarray:
    x = x.copy()
    x[3, 1] = np.inf
    return x


ERRORS = [
    ({"alpha": 0.0}, r"Expected alpha in \(0, 1\)"),
    ({"alpha": float("nan")}, r"Expected alpha in \(0, 1\)"),
    ({"alpha": True}, r"Expected alpha to be a number"),
    ({"alpha": "0.1"}, r"Expected alpha to be a number"),
    ({"method": "lac"}, r"Expected method in \('auto', 'aps', 'raps', 'thr'\) for a classification"),
    ({"method": "absolute"}, r"Expected method in \('auto', 'aps', 'raps', 'thr'\)"),
    ({"method": "thr", "randomized": True}, r"method='thr' has no randomised version"),
    ({"randomized": "yes"}, r"Expected randomized to be True, False or None"),
    ({"method": "aps", "k_reg": 2}, r"k_reg and lambda_reg are RAPS's"),
    ({"method": "raps", "k_reg": -1}, r"Expected k_reg, a whole number >= 0"),
    ({"method": "raps", "k_reg": 1.5}, r"Expected k_reg, a whole number >= 0"),
    ({"method": "raps", "lambda_reg": float("inf")}, r"Expected lambda_reg, a finite number >= 0"),
    ({"method": "auto", "tuning_share": 1.0}, r"Expected tuning_share.*in \(0, 1\)"),
    ({"seed": 0.5}, r"Expected seed to be an integer"),
    ({"rows": 5}, r"alpha=0.1 needs at least 9 calibration rows.*Received: 5 rows"),
    ({"rows": 20, "method": "auto"}, r"method='auto' chooses.*at least 29 rows. Received: 20 rows"),
    ({"rows": 20, "method": "raps", "k_reg": 1}, r"method='raps' chooses.*at least 29 rows"),
    ({"y": lambda y: y[:-1]}, r"Expected y with one target per row of x"),
    ({"y": lambda y: y + 10}, r"Expected class labels in \[0, 10\)"),
    ({"y": lambda y: y + 0.5}, r"non-integer values"),
    ({"y": lambda y: np.stack([y, y], 1)}, r"Expected integer class labels, shape \(rows,\)"),
    ({"x": _with_nan}, r"x holds NaN or infinite values in 1 row\(s\) of 100 \(first rows \[3\]\)"),
]


@pytest.mark.parametrize(("change", "match"), ERRORS, ids=[m[:30] for _, m in ERRORS])
def test_bad_input_is_a_clear_error(tempered, change, match):
    classifier, x, y = tempered
    x, y = x[: change.get("rows", 100)], y[: change.get("rows", 100)]
    x = change["x"](x) if "x" in change else x
    y = change["y"](y) if "y" in change else y
    options = {key: value for key, value in change.items() if key not in ("rows", "x", "y")}
    with pytest.raises(ensemble.EnsembleError, match=match):
        ensemble.add_conformal(classifier, x, y, **options)


ALPHA, CALIBRATION, TEST = 0.1, 2000, 20000


@pytest.fixture(scope="module")
def regressor() -> keras.Model:
    members = []
    for name, scale in (("r1", 0.8), ("r2", 1.2), ("r3", 1.0)):
        inputs = keras.Input((2,), name="features")
        outputs = keras.layers.Dense(1, kernel_initializer=keras.initializers.Constant(scale), name="d")(
            inputs
        )
        members.append(ensemble.load_member(keras.Model(inputs, outputs), name=name))
    return ensemble.build_ensemble(members, combiners.MeanCombiner(), task="regression")


@pytest.fixture(scope="module")
def regression_rows() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(CALIBRATION + TEST, 2)).astype("float32")
    y = x.sum(1, keepdims=True) + rng.normal(size=(len(x), 1)) * (0.2 + np.abs(x.sum(1, keepdims=True)))
    return x, y.astype("float32")


@pytest.mark.parametrize("method", ["absolute", "normalized"])
def test_regression_interval_coverage(regressor, regression_rows, method):
    x, y = regression_rows
    model = ensemble.add_conformal(regressor, x[:CALIBRATION], y[:CALIBRATION], method=method)
    outputs = model.predict(x[CALIBRATION:], batch_size=2048, verbose=0)
    report = conformal_metrics(outputs, y[CALIBRATION:])
    print(method, report)
    slack = 3 * math.sqrt(ALPHA * (1 - ALPHA) * (1 / CALIBRATION + 1 / TEST))
    assert abs(report["coverage"] - (1 - ALPHA)) <= slack + 1 / (CALIBRATION + 1), report
    # The NumPy reference of the interval.
    base = regressor.predict(x, batch_size=2048, verbose=0)
    scale = np.maximum(base["std"], 1e-6) if method == "normalized" else np.ones_like(base["std"])
    scores = np.abs(y[:CALIBRATION] - base["prediction"][:CALIBRATION]) / scale[:CALIBRATION]
    q = np.sort(scores[:, 0])[math.ceil((CALIBRATION + 1) * (1 - ALPHA)) - 1]
    expected = base["prediction"][CALIBRATION:] + q * scale[CALIBRATION:]
    np.testing.assert_allclose(outputs["interval_high"], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        outputs["interval_low"], 2 * base["prediction"][CALIBRATION:] - expected, atol=2e-5
    )
    if method == "normalized":  # as wide as the members' spread, so narrower where they agree
        width = outputs["interval_high"] - outputs["interval_low"]
        assert np.corrcoef(width[:, 0], base["std"][CALIBRATION:, 0])[0, 1] > 0.99


def test_a_nan_row_gets_nan_bounds(regressor, regression_rows):
    x, y = regression_rows
    model = ensemble.add_conformal(regressor, x[:CALIBRATION], y[:CALIBRATION])
    outputs = model.predict(np.array([[np.nan, 0.0], [1.0, 0.0]], "float32"), batch_size=2048, verbose=0)
    assert np.isnan(outputs["interval_low"][0]).all() and np.isfinite(outputs["interval_low"][1]).all()


def test_regression_errors_and_not_an_ensemble(regressor, regression_rows):
    x, y = regression_rows
    with pytest.raises(ensemble.EnsembleError, match=r"Expected method in \('absolute', 'normalized'\)"):
        ensemble.add_conformal(regressor, x[:100], y[:100], method="aps")
    with pytest.raises(ensemble.EnsembleError, match=r"Expected 1 regression target"):
        ensemble.add_conformal(regressor, x[:100], np.repeat(y[:100], 2, axis=1))
    plain = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    with pytest.raises(ensemble.EnsembleError, match="not an ensemble built by build_ensemble"):
        ensemble.add_conformal(plain, x[:100], y[:100])
    with pytest.raises(ensemble.EnsembleError, match=r"\['randomized'\] are options of conformal sets"):
        ensemble.add_conformal(regressor, x[:100], y[:100], randomized=False)
    with pytest.raises(ensemble.EnsembleError, match="Expected conformal outputs"):
        conformal_metrics(regressor.predict(x[:10], batch_size=2048, verbose=0), y[:10])
