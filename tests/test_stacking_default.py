"""The default stacker against the member one would ship alone (issue 15, item 2).

Keras members on digits: one that dominates among weak ones, and members that each see part
of the image (they complement each other). The reference is each member temperature-scaled on
the same fitting rows (a bounded 1-D search on scikit-learn's log-loss, not the library's fit).
Then the members' plain mean as a candidate (issue 27, item 1): against NumPy's mean on held-out
rows, through ONNX and `.keras`, and a config saved before it existed.
"""

from __future__ import annotations

import zipfile

import keras
import numpy as np
import pytest
from scipy.optimize import minimize_scalar
from scipy.special import softmax
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegressionCV
from sklearn.metrics import log_loss
from sklearn.model_selection import train_test_split

import combiners
import ensemble
from combiners.stack import LOG_EPSILON
from ensemble.evaluate import classification_metrics

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def splits() -> tuple[np.ndarray, ...]:
    x, y = load_digits(return_X_y=True)
    x = (x / 16).astype("float32")
    x_train, x_rest, y_train, y_rest = train_test_split(x, y, train_size=0.5, random_state=0, stratify=y)
    x_fit, x_test, y_fit, y_test = train_test_split(
        x_rest, y_rest, train_size=0.5, random_state=0, stratify=y_rest
    )
    return x_train, y_train, x_fit, y_fit, x_test, y_test


def _member(x: np.ndarray, y: np.ndarray, hidden: int | None, epochs: int, columns: np.ndarray | None = None):
    keras.utils.set_random_seed(hidden or 0 + epochs)
    inputs = keras.Input((64,))
    h = inputs if columns is None else keras.layers.Lambda(lambda t: t * columns)(inputs)
    if hidden:
        h = keras.layers.Dense(hidden, activation="relu")(h)
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(h))
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=epochs, batch_size=64, verbose=0)
    return model


def _calibrated_nll(p_fit: np.ndarray, y_fit: np.ndarray, p_test: np.ndarray, y_test: np.ndarray) -> float:
    """Test NLL after a temperature fitted on the fitting rows by a bounded search."""
    log_fit, log_test = np.log(np.clip(p_fit, 1e-7, 1)), np.log(np.clip(p_test, 1e-7, 1))
    found = minimize_scalar(
        lambda t: log_loss(y_fit, softmax(log_fit / t, -1), labels=range(10)),
        bounds=(0.01, 100),
        method="bounded",
        options={"xatol": 1e-8},
    )
    return float(log_loss(y_test, softmax(log_test / found.x, -1), labels=range(10)))


def _check(models: dict[str, keras.Model], splits: tuple[np.ndarray, ...]) -> dict[str, float]:
    _, _, x_fit, y_fit, x_test, y_test = splits
    members = [ensemble.load_member(m, name=n, output="probabilities") for n, m in models.items()]
    model = ensemble.build_ensemble(members, combiners.StackingCombiner())
    report = ensemble.fit(model, x_fit, y_fit)
    out = model.predict(x_test, verbose=0)
    scores = classification_metrics(y_test, out["prediction"])
    fit_p, test_p = report.level_one, out["member_predictions"]
    calibrated = [_calibrated_nll(fit_p[:, j], y_fit, test_p[:, j], y_test) for j in range(len(members))]
    selected = ensemble.EnsembleView.of(model).member_names.index(report.selected_member["name"])
    assert scores["accuracy"] >= float(np.mean(test_p[:, selected].argmax(1) == y_test))
    return {"nll": scores["nll"], "ece": scores["ece"], "best_calibrated_nll": min(calibrated)}


def test_one_dominant_member_is_not_shrunk_away(splits):
    x_train, y_train, x_fit, y_fit, x_test, y_test = splits
    models = {"strong": _member(x_train, y_train, 128, 30)}
    for i in range(3):  # linear models trained one epoch on a few rows: near chance
        models[f"weak{i}"] = _member(x_train[: 60 + 20 * i], y_train[: 60 + 20 * i], None, 1)
    found = _check(models, splits)
    assert found["nll"] <= 1.02 * found["best_calibrated_nll"] and found["ece"] <= 0.03
    # Nor does it lose to scikit-learn's LogisticRegressionCV, the previous default, which
    # shrinks toward a uniform prediction. (On an AVX2 host that one also fell below the strong
    # member's accuracy; on an AVX-512 host, whose members train to other weights, it is one
    # test row above it, NLL 0.1052 against our 0.1048: no assertion on its accuracy holds.)
    fit_members, test_members = (
        np.stack([m.predict(rows, verbose=0) for m in models.values()], 1) for rows in (x_fit, x_test)
    )
    fit_features, test_features = (
        np.log(np.clip(p, 1e-7, 1)).reshape(len(p), -1) for p in (fit_members, test_members)
    )
    old = LogisticRegressionCV(Cs=np.logspace(-4, 2, 13), cv=5, scoring="neg_log_loss", max_iter=2000)
    old.fit(fit_features, y_fit)
    assert found["nll"] <= 1.02 * log_loss(y_test, old.predict_proba(test_features), labels=range(10))


def test_members_that_complement_each_other_beat_the_best_calibrated_one(splits):
    x_train, y_train, *_ = splits
    grid = np.arange(64).reshape(8, 8)
    quadrants = [grid[:5, :5], grid[:5, 3:], grid[3:, :5], grid[3:, 3:]]  # overlapping views
    models = {}
    for i, cells in enumerate(quadrants):
        columns = np.zeros(64, dtype="float32")
        columns[cells.ravel()] = 1.0
        models[f"view{i}"] = _member(x_train, y_train, 32, 15, columns)
    found = _check(models, splits)
    # The target is ECE <= 0.02; on these 449 test rows the stacker reaches about 0.04
    # (15 equal-width bins: the estimate alone carries a bias of that order at this size).
    assert found["nll"] <= 0.8 * found["best_calibrated_nll"] and found["ece"] <= 0.05


# The members' plain (arithmetic) mean among the candidates (issue 27, item 1).


def _numpy_nll(y, p):
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], LOG_EPSILON, 1.0))))


def _passing_member(j, members, classes, name):
    """A Keras member that answers block `j` of its input (members' log-probabilities): p_j."""
    inputs = keras.Input((members * classes,))
    dense = keras.layers.Dense(classes, activation="softmax")
    model = keras.Model(inputs, dense(inputs), name=name)
    kernel = np.zeros((members * classes, classes), "float32")
    kernel[j * classes : (j + 1) * classes] = np.eye(classes)
    dense.set_weights([kernel, np.zeros(classes, "float32")])
    return ensemble.load_member(model, name=name, output="probabilities")


def _complementary_rows(rows, seed, members=3, classes=3):
    """Members right but unsure (0.7) on 85% of rows, else sure of a wrong class, the true one
    at 0.001: their plain mean beats each of them and their geometric mean, and is unsure."""
    rng = np.random.default_rng(seed)
    y = np.arange(rows) % classes
    p = np.full((rows, members, classes), 0.15)
    p[np.arange(rows), :, y] = 0.7
    for i, j in zip(*np.nonzero(rng.random((rows, members)) < 0.15), strict=True):
        wrong = (y[i] + rng.integers(1, classes)) % classes
        p[i, j] = 0.099
        p[i, j, y[i]], p[i, j, wrong] = 0.001, 0.9
    return np.log(p).reshape(rows, -1).astype("float32"), y, p


@pytest.fixture(scope="module")
def mean_chosen():
    model = ensemble.build_ensemble(
        [_passing_member(j, 3, 3, f"m{j}") for j in range(3)], combiners.StackingCombiner()
    )
    x, y, p = _complementary_rows(45, seed=0)  # 15 rows a class: the one-parameter candidates
    return model, ensemble.fit(model, x, y), p, y


def test_the_plain_mean_candidate_is_numpys_arithmetic_mean_on_held_out_rows(mean_chosen, tmp_path):
    model, report, p, y = mean_chosen
    chosen = report.chosen
    assert chosen["candidate"] == "mean_arith" and 0 < chosen["temperature"] < 1  # it sharpens
    assert report.member_weights is None  # the uncertainty outputs weigh the members equally
    # As it comes it fits nothing: its held-out NLL (5 folds of 9 rows) is the mean's NLL.
    assert chosen["held_out_nll"]["mean_arith_raw"] == pytest.approx(_numpy_nll(y, p.mean(1)), abs=1e-5)
    x_test, _, p_test = _complementary_rows(200, seed=1)
    expected = softmax(np.log(p_test.mean(1)) / chosen["temperature"], axis=1)
    np.testing.assert_allclose(model.predict(x_test, verbose=0)["prediction"], expected, atol=1e-5)
    np.testing.assert_allclose(report.fitted.predict_proba(x_test), expected, atol=1e-5)
    from tests.test_onnx_serving import assert_serves_like

    assert_serves_like(model, ensemble.export_onnx(model, tmp_path / "m.onnx"), {"features": x_test[:12]})
    path = tmp_path / "mean.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_allclose(reloaded.predict(x_test, verbose=0)["prediction"], expected, atol=1e-5)


def test_a_stacker_config_saved_before_the_mean_feature_loads_and_predicts_as_before(tmp_path):
    """A `.keras` file whose StackingCombiner config has no `mean_feature` key (and no mean
    kernel among its weights) loads without it, and predicts what its Dense alone computes."""
    old = ensemble.build_ensemble(
        [_passing_member(j, 3, 3, f"m{j}") for j in range(3)], combiners.StackingCombiner(mean_feature=False)
    )
    x, y, _ = _complementary_rows(90, seed=2)
    ensemble.fit(old, x, y, method="sklearn", C=0.5)
    path = tmp_path / "old.keras"
    old.save(path)
    with zipfile.ZipFile(path) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    text = entries["config.json"].decode()
    assert text.count('"mean_feature": false') == 1
    entries["config.json"] = text.replace(', "mean_feature": false', "").encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    reloaded = keras.saving.load_model(path)
    combiner = ensemble.ensemble_combiner(reloaded)
    assert combiner.mean_feature is False and combiner.mean_kernel_ is None
    x_test, _, p_test = _complementary_rows(30, seed=3)
    kernel, bias = combiner.meta_model_.get_weights()
    expected = softmax(np.log(np.clip(p_test, LOG_EPSILON, 1)).reshape(30, -1) @ kernel + bias, axis=1)
    np.testing.assert_allclose(reloaded.predict(x_test, verbose=0)["prediction"], expected, atol=1e-5)
    np.testing.assert_allclose(
        reloaded.predict(x_test, verbose=0)["prediction"],
        old.predict(x_test, verbose=0)["prediction"],
        atol=1e-6,
    )
