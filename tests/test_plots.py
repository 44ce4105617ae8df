"""Evaluation plots: each computation against a NumPy/sklearn reference, each plot a valid PNG, errors."""

from __future__ import annotations

import importlib
import os
from functools import partial

import matplotlib.image
import numpy as np
import pytest
from matplotlib.figure import Figure
from sklearn.metrics import accuracy_score, log_loss, mean_squared_error, roc_auc_score

from ensemble.evaluate import expected_calibration_error
from ensemble.evaluate import figures as plots
from ensemble.fitting.temperature import calibrated as calibrated_probabilities
from ensemble.fitting.temperature import fit_scaling
from tests.conftest import fit_report

# Warnings (0/0 in empty bins, constant inputs to a correlation) must be handled, not leaked.
pytestmark = pytest.mark.filterwarnings("error")

ROWS, MEMBERS, CLASSES, TARGETS = 300, 5, 4, 2
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.fixture
def classification() -> dict[str, np.ndarray]:
    """Members of different skill on a 4-class problem; a few one-hot rows reach confidence 1.0."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, CLASSES, ROWS)
    skill = np.linspace(0.5, 2.5, MEMBERS)[None, :, None]
    logits = skill * np.eye(CLASSES)[y][:, None, :] + rng.normal(size=(ROWS, MEMBERS, CLASSES))
    member_probabilities = softmax(logits)
    member_probabilities[:5] = np.eye(CLASSES)[rng.integers(0, CLASSES, 5)][:, None, :]
    prediction = member_probabilities.mean(1)
    entropy = -(prediction * np.log(np.clip(prediction, 1e-12, 1))).sum(-1)
    return {
        "y": y,
        "member_probabilities": member_probabilities,
        "prediction": prediction,
        "entropy": entropy,
    }


@pytest.fixture
def regression() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    y = rng.normal(size=(ROWS, TARGETS))
    noise = np.linspace(0.3, 1.5, MEMBERS)[None, :, None] * rng.normal(size=(ROWS, MEMBERS, TARGETS))
    member_predictions = y[:, None, :] + noise + rng.normal(scale=0.2, size=(ROWS, 1, TARGETS))
    return {
        "y": y,
        "member_predictions": member_predictions,
        "prediction": member_predictions.mean(1),
        "std": member_predictions.std(1),
    }


# Computations against references.


@pytest.mark.parametrize("bins", [15, 4])
def test_reliability_curve_matches_a_loop_and_drops_empty_bins(classification, bins):
    y, p = classification["y"], classification["prediction"]
    count, confidence, correct = np.zeros(bins), np.zeros(bins), np.zeros(bins)
    for row in range(len(y)):
        top = p[row].max()
        b = next(i for i in range(bins) if i / bins < top <= (i + 1) / bins)
        count[b] += 1
        confidence[b] += top
        correct[b] += p[row].argmax() == y[row]
    full = count > 0

    curve = plots.reliability_curve(y, p, bins=bins)

    np.testing.assert_array_equal(curve["bin"], np.flatnonzero(full))
    np.testing.assert_array_equal(curve["count"], count[full])
    np.testing.assert_allclose(curve["confidence"], confidence[full] / count[full], rtol=1e-12)
    np.testing.assert_allclose(curve["accuracy"], correct[full] / count[full], rtol=1e-12)
    np.testing.assert_allclose(curve["edges"], np.linspace(0, 1, bins + 1))
    assert not np.isnan(curve["accuracy"]).any() and curve["count"].min() >= 1
    assert curve["count"].sum() == len(y)
    assert curve["ece"] == expected_calibration_error(y, p, bins=bins)
    # The per-bin numbers are the ones the ECE is made of: same binning.
    gap = (curve["count"] / len(y) * np.abs(curve["accuracy"] - curve["confidence"])).sum()
    assert curve["ece"] == pytest.approx(gap, abs=1e-12)
    if bins == 15:
        assert not full.all()  # empty bins are there to drop


def test_ensemble_size_curve_matches_sklearn(classification):
    y, p = classification["y"], classification["member_probabilities"]
    own_nll = [log_loss(y, p[:, m], labels=range(CLASSES)) for m in range(MEMBERS)]
    best = int(np.argmin(own_nll))

    curve = plots.ensemble_size_curve(y, p)

    np.testing.assert_array_equal(curve["k"], np.arange(1, MEMBERS + 1))
    assert sorted(curve["order"]) == list(range(MEMBERS))
    assert np.all(np.diff(np.array(own_nll)[curve["order"]]) >= 0)  # best single NLL first
    assert curve["order"][0] == best
    assert curve["accuracy"][0] == pytest.approx(accuracy_score(y, p[:, best].argmax(-1)))
    assert curve["nll"][0] == pytest.approx(own_nll[best], rel=1e-9)
    for k in (2, MEMBERS):
        mean = p[:, curve["order"][:k]].mean(1)
        assert curve["accuracy"][k - 1] == pytest.approx(accuracy_score(y, mean.argmax(-1)))
        assert curve["nll"][k - 1] == pytest.approx(log_loss(y, mean, labels=range(CLASSES)), rel=1e-9)
    assert curve["nll"][-1] == pytest.approx(
        log_loss(y, p.mean(1)), rel=1e-9
    )  # order does not matter at k=all


def test_ensemble_size_curve_follows_a_given_order(classification):
    y, p = classification["y"], classification["member_probabilities"]
    order = [3, 0, 4, 1, 2]

    curve = plots.ensemble_size_curve(y, p, order=order)

    np.testing.assert_array_equal(curve["order"], order)
    assert curve["nll"][0] == pytest.approx(log_loss(y, p[:, 3]), rel=1e-9)
    assert curve["nll"][1] == pytest.approx(log_loss(y, p[:, [3, 0]].mean(1)), rel=1e-9)


@pytest.mark.parametrize("targets", [1, TARGETS], ids=["y-1d", "y-2d"])
def test_ensemble_size_curve_regression_matches_sklearn(regression, targets):
    def pooled_rmse(y, p):  # pooled over every target, as the metrics define it
        return np.sqrt(mean_squared_error(y, p))

    y, predictions = regression["y"][:, :targets], regression["member_predictions"][:, :, :targets]
    y_given = y[:, 0] if targets == 1 else y
    own_rmse = [pooled_rmse(y, predictions[:, m]) for m in range(MEMBERS)]

    curve = plots.ensemble_size_curve_regression(y_given, predictions)

    assert curve["order"][0] == int(np.argmin(own_rmse))
    assert curve["rmse"][0] == pytest.approx(min(own_rmse), rel=1e-12)
    assert curve["rmse"][-1] == pytest.approx(pooled_rmse(y, predictions.mean(1)), rel=1e-12)
    order = [4, 2, 0, 1, 3]
    custom = plots.ensemble_size_curve_regression(y_given, predictions, order=order)
    assert custom["rmse"][1] == pytest.approx(pooled_rmse(y, predictions[:, [4, 2]].mean(1)))


def test_member_correlation_of_classification_errors(classification):
    y, p = classification["y"], classification["member_probabilities"]
    errors = np.stack([1 - p[np.arange(ROWS), m, y] for m in range(MEMBERS)])

    matrix = plots.member_correlation(p, y)

    np.testing.assert_allclose(matrix, np.corrcoef(errors), rtol=1e-12)
    assert matrix.shape == (MEMBERS, MEMBERS)


def test_member_correlation_of_regression_residuals_and_raw_outputs(regression):
    y, predictions = regression["y"], regression["member_predictions"]
    residuals = np.stack([(predictions[:, m] - y).ravel() for m in range(MEMBERS)])
    raw = np.stack([predictions[:, m].ravel() for m in range(MEMBERS)])

    np.testing.assert_allclose(
        plots.member_correlation(predictions, y, task="regression"), np.corrcoef(residuals), rtol=1e-12
    )
    np.testing.assert_allclose(plots.member_correlation(predictions), np.corrcoef(raw), rtol=1e-12)


def test_member_correlation_of_a_perfect_member_is_nan(regression):
    y = regression["y"][:, :1]
    predictions = np.concatenate([y[:, None, :], regression["member_predictions"][:, :2, :1]], axis=1)

    matrix = plots.member_correlation(predictions, y, task="regression")

    assert np.isnan(matrix[0]).all() and np.isnan(matrix[:, 0]).all()
    assert matrix[1, 1] == pytest.approx(1.0)


def test_uncertainty_split_sides_and_auc(classification):
    y, prediction, entropy = classification["y"], classification["prediction"], classification["entropy"]
    wrong = prediction.argmax(-1) != y

    split = plots.uncertainty_split(y, prediction, entropy)

    assert len(split["right"]) + len(split["wrong"]) == ROWS
    np.testing.assert_array_equal(split["wrong"], entropy[wrong])
    np.testing.assert_array_equal(split["right"], entropy[~wrong])
    assert split["auc"] == pytest.approx(roc_auc_score(wrong, entropy))


def test_uncertainty_split_perfect_separation_and_one_sided(classification):
    y, prediction = classification["y"], classification["prediction"]
    wrong = prediction.argmax(-1) != y
    separating = wrong + np.random.default_rng(2).uniform(0, 0.5, ROWS)

    assert plots.uncertainty_split(y, prediction, separating)["auc"] == 1.0
    all_right = plots.uncertainty_split(prediction.argmax(-1), prediction, separating)
    assert len(all_right["wrong"]) == 0 and np.isnan(all_right["auc"])


def test_std_vs_error_matches_rank_correlation(regression):
    y, prediction, std = regression["y"], regression["prediction"], regression["std"]
    abs_error = np.abs(prediction - y).ravel()
    ranks = [np.argsort(np.argsort(v)) for v in (std.ravel(), abs_error)]  # continuous data: no ties

    result = plots.std_vs_error(y, prediction, std)

    np.testing.assert_allclose(result["abs_error"], abs_error)
    np.testing.assert_allclose(result["std"], std.ravel())
    assert result["spearman"] == pytest.approx(np.corrcoef(*ranks)[0, 1], rel=1e-12)
    assert np.isnan(plots.std_vs_error(y, prediction, np.ones_like(std))["spearman"])


# Plots.


PLOTS = {
    "reliability": lambda c, r, path: plots.plot_reliability(
        c["y"], {"ensemble": c["prediction"], "member 4": c["member_probabilities"][:, 4]}, path
    ),
    "ensemble-size": lambda c, r, path: plots.plot_ensemble_size(
        c["y"],
        c["member_probabilities"],
        [f"m{i}" for i in range(MEMBERS)],
        path,
        ensemble_metrics={"accuracy": 0.8, "nll": 0.5, "ece": 0.1},
    ),
    "ensemble-size-regression": lambda c, r, path: plots.plot_ensemble_size_regression(
        r["y"],
        r["member_predictions"],
        [f"m{i}" for i in range(MEMBERS)],
        path,
        ensemble_metrics={"rmse": 0.6},
    ),
    "member-correlation": lambda c, r, path: plots.plot_member_correlation(
        plots.member_correlation(c["member_probabilities"], c["y"]), [f"m{i}" for i in range(MEMBERS)], path
    ),
    "uncertainty": lambda c, r, path: plots.plot_uncertainty(
        c["y"], c["prediction"], {"entropy": c["entropy"], "mutual_information": c["entropy"] / 2}, path
    ),
    "std-vs-error": lambda c, r, path: plots.plot_std_vs_error(r["y"], r["prediction"], r["std"], path),
}


@pytest.mark.parametrize("draw", PLOTS.values(), ids=PLOTS.keys())
def test_plot_writes_one_png(draw, classification, regression, tmp_path):
    path = tmp_path / "plot.png"
    path.write_bytes(b"stale")  # replaced, not appended to

    written = draw(classification, regression, str(path))

    assert written == path
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 0 and image.shape[1] > 0
    assert os.listdir(tmp_path) == ["plot.png"]


def test_failed_save_leaves_the_old_file_and_no_temporary(classification, tmp_path, monkeypatch):
    path = tmp_path / "reliability.png"
    path.write_bytes(b"previous")

    def fail(self, stream, **kwargs):
        stream.write(b"half a png")
        raise RuntimeError("disk full")

    monkeypatch.setattr(Figure, "savefig", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        plots.plot_reliability(classification["y"], {"ensemble": classification["prediction"]}, path)

    assert path.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["reliability.png"]


# Errors.


def _p(rows: int = 4, classes: int = 3, members: int | None = None) -> np.ndarray:
    shape = (rows, classes) if members is None else (rows, members, classes)
    return np.full(shape, 1 / classes)


ERRORS = [
    (
        plots.reliability_curve,
        ([0, 1, 2, 0], _p()[0]),
        r"Expected probabilities of shape \(rows, classes\)\. Received: probabilities\.shape=\(3,\)",
    ),
    (
        plots.reliability_curve,
        ([0, 1, 2], _p()),
        r"Expected y with one label per row \(4 rows\)\. Received: 3",
    ),
    (
        plots.reliability_curve,
        ([[0], [1], [2], [0]], _p()),
        r"Expected y of shape \(rows,\).*y\.shape=\(4, 1\)",
    ),
    (
        plots.reliability_curve,
        ([0, 1, 3, 0], _p()),
        r"Expected labels in \[0, 3\).*Received: labels in \[0, 3\]",
    ),
    (plots.reliability_curve, ([0, -1, 2, 0], _p()), r"Expected labels in \[0, 3\).*\[-1, 2\]"),
    (plots.reliability_curve, ([0, 0.5, 2, 0], _p()), r"Expected integer class labels.*dtype=float64"),
    (
        plots.reliability_curve,
        ([0, 1, 2, 0], np.ones((4, 3))),
        r"Expected probabilities to hold probabilities",
    ),
    (plots.reliability_curve, ([0, 1, 2, 0], _p(), 0), r"Expected a positive integer number of bins.*bins=0"),
    (plots.reliability_curve, ([], np.zeros((0, 3))), r"Expected at least one row in probabilities"),
    (
        plots.ensemble_size_curve,
        ([0, 1, 2, 0], _p()),
        r"Expected member_probabilities of shape \(rows, members, classes\)\. Received: .*shape=\(4, 3\)",
    ),
    (
        plots.ensemble_size_curve,
        ([0, 1, 2, 0, 1], _p(members=2)),
        r"Expected y with one label per row \(4 rows\)",
    ),
    (
        plots.ensemble_size_curve,
        ([0, 1, 2, 0], _p(members=2), [0, 0]),
        r"Expected order to be a permutation of the 2 member indices\. Received: order=\[0, 0\]",
    ),
    (
        plots.ensemble_size_curve_regression,
        (np.zeros((4, 2)), np.zeros((4, 3, 1))),
        r"Expected y of shape \(4, 1\) or \(4,\)\. Received: y\.shape=\(4, 2\)",
    ),
    (plots.ensemble_size_curve_regression, (np.zeros(5), np.zeros((4, 3, 1))), r"Received: y\.shape=\(5,\)"),
    (
        plots.ensemble_size_curve_regression,
        (np.zeros(4), np.zeros((4, 3))),
        r"Expected member_predictions of shape \(rows, members, targets\)",
    ),
    (plots.member_correlation, (_p(members=2), [0, 1, 5, 0]), r"Expected labels in \[0, 3\)"),
    (
        partial(plots.member_correlation, task="regression"),
        (np.zeros((4, 2, 1)), np.zeros(3)),
        r"Expected y of shape \(4, 1\) or \(4,\)\. Received: y\.shape=\(3,\)",
    ),
    (
        partial(plots.member_correlation, task="survival"),
        (np.zeros((4, 2, 1)),),
        r"Expected task 'classification' or 'regression'\. Received: task='survival'",
    ),
    (
        plots.uncertainty_split,
        ([0, 1, 2, 0], _p(), np.zeros(5)),
        r"Expected the same number of rows in prediction, uncertainty\. Received: rows=\{'prediction': 4, 'unc",
    ),
    (
        plots.uncertainty_split,
        ([0, 1, 2, 0], _p(), np.zeros((4, 1))),
        r"Expected uncertainty of shape \(rows,\)",
    ),
    (
        plots.std_vs_error,
        (np.zeros(4), np.zeros((4, 1)), np.zeros((4, 2))),
        r"Expected std of the shape of prediction \(4, 1\)\. Received: std\.shape=\(4, 2\)",
    ),
    (
        plots.plot_member_correlation,
        (np.eye(3)[:2], ["a", "b"], "x.png"),
        r"Expected a square correlation matrix",
    ),
    (
        plots.plot_member_correlation,
        (np.eye(2), ["a"], "x.png"),
        r"Expected 2 member names, one per member\. Received: member_names=\['a'\]",
    ),
    (
        plots.plot_ensemble_size,
        ([0, 1, 2, 0], _p(members=2), ["a", "b"], "x.png", {"accuracy": 0.5}),
        r"Expected ensemble_metrics with keys \['accuracy', 'nll'\]\. Received: keys=\['accuracy'\]",
    ),
    (plots.plot_reliability, ([0, 1, 2, 0], {}, "x.png"), r"Expected at least one model in curves"),
    (plots.plot_uncertainty, ([0, 1, 2, 0], _p(), {}, "x.png"), r"Expected at least one uncertainty measure"),
]


@pytest.mark.parametrize(
    ("function", "args", "match"),
    ERRORS,
    ids=[f"{i}-{getattr(f, 'func', f).__name__}" for i, (f, _, _) in enumerate(ERRORS)],
)
def test_errors(function, args, match, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # plots that fail must write nothing
    with pytest.raises(ValueError, match=match):
        function(*args)
    assert os.listdir(tmp_path) == []


def test_integral_float_labels_are_accepted(classification):
    y, p = classification["y"], classification["prediction"]
    expected = plots.reliability_curve(y, p)
    np.testing.assert_array_equal(plots.reliability_curve(y.astype("float32"), p)["count"], expected["count"])


# Like with like: the job's figures draw the baselines fitted as the ensemble is.


@pytest.fixture
def drawn(monkeypatch):
    """The figures a test writes, by file name, as drawn (then written as ever)."""
    figures: dict[str, Figure] = {}
    for name in ("reliability", "ensemble_size"):
        module = importlib.import_module(f"ensemble.evaluate.figures.{name}")

        def record(figure, path, save=module.save_png):
            figures[os.path.basename(path)] = figure
            return save(figure, path)

        monkeypatch.setattr(module, "save_png", record)
    return figures


@pytest.fixture
def overconfident() -> dict[str, object]:
    """Fitting and test rows of sharp members (right 60-80% of the time at near-1 confidence):
    temperature scaling changes their ECE by far."""
    rng = np.random.default_rng(5)
    y = rng.integers(0, CLASSES, 2 * ROWS)
    skill = np.linspace(0.8, 1.6, MEMBERS)[None, :, None]
    p = softmax(
        4.0 * (skill * np.eye(CLASSES)[y][:, None, :] + rng.normal(size=(2 * ROWS, MEMBERS, CLASSES)))
    )
    test = p[ROWS:]
    entropy = -(test.mean(1) * np.log(test.mean(1))).sum(-1)
    return {
        "fit": p[:ROWS],
        "y_fit": y[:ROWS],
        "y": y[ROWS:],
        "outputs": {"prediction": test.mean(1), "member_predictions": test, "entropy": entropy},
        "names": [f"m{i}" for i in range(MEMBERS)],
    }


def _legend_texts(figure: Figure) -> list[str]:
    """The figure's one legend, which must sit off every panel: its texts."""
    assert len(figure.legends) == 1 and all(axes.get_legend() is None for axes in figure.axes)
    figure.draw_without_rendering()
    box = figure.legends[0].get_window_extent()
    assert not any(box.overlaps(axes.get_window_extent()) for axes in figure.axes)
    return [text.get_text() for text in figure.legends[0].get_texts()]


@pytest.mark.parametrize(
    ("method", "calibrated"), [("sklearn", True), ("none", False)], ids=["fitted", "raw"]
)
@pytest.mark.slow
def test_reliability_draws_the_baselines_fitted_as_the_ensemble_is(
    overconfident, drawn, tmp_path, method, calibrated
):
    o = overconfident
    report = fit_report(
        o["fit"], o["y_fit"], method=method, selected_member={"name": "m3", "by": "nll on the fitting rows"}
    )
    scores = {"members": {n: {"nll": 1.0} for n in o["names"]}, "ensemble": {"accuracy": 0.5, "nll": 1.0}}

    figures = plots.write_figures(o["y"], o["outputs"], o["names"], scores, tmp_path, fit_report=report)

    test = o["outputs"]["member_predictions"]
    baselines = {
        "selected member (m3)": (o["fit"][:, 3], test[:, 3]),
        "plain mean": (o["fit"].mean(1), test.mean(1)),
    }
    expected = ["perfect calibration", _entry("ensemble", o["y"], o["outputs"]["prediction"])]
    for name, (fitting, scored) in baselines.items():
        scaled = calibrated_probabilities(scored, fit_scaling(fitting, o["y_fit"]))
        raw, fitted = _entry(f"{name}, raw", o["y"], scored), _entry(name, o["y"], scaled)
        assert raw.split("ECE")[1][:6] != fitted.split("ECE")[1][:6]  # the two differ as drawn
        expected.append(
            fitted.replace(": ECE", ", temperature-scaled on the fitting rows: ECE") if calibrated else raw
        )
    assert _legend_texts(drawn["reliability.png"]) == expected
    title = next(t for t, file in figures.items() if file == "reliability.png")
    assert ("temperature-scaled on the fitting rows" in title) == calibrated


def _entry(name: str, y: np.ndarray, p: np.ndarray) -> str:
    wrong = int(np.sum(p.argmax(-1) != y))
    return f"{name}: ECE {expected_calibration_error(y, p):.3f}, {wrong} of {len(y)} wrong"
