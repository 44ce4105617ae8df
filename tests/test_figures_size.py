"""The ensemble-size curve for the configured combiner: the curve against sklearn, the members'
order on the fitting rows, each combiner refitted per subset against an independent refit, and
(one tiny real ensemble) the refit with every member equal to the ensemble itself."""

from __future__ import annotations

import importlib
import os

import numpy as np
import pytest
from scipy.special import softmax
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import accuracy_score, log_loss, mean_squared_error

import combiners
import ensemble
from ensemble.evaluate import figures as plots
from ensemble.fitting import temperature
from ensemble.fitting.stacker import Stacker, fit_stacker
from ensemble.graph.view import EnsembleView
from tests.conftest import dense_classifier, fit_report

ROWS, MEMBERS, CLASSES = 240, 4, 3


@pytest.fixture
def rows():
    """Fitting and test rows of members of different skill: member 2 best, member 0 worst."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, CLASSES, 2 * ROWS)
    skill = np.array([0.3, 1.0, 2.5, 1.6])[None, :, None]
    p = softmax(skill * np.eye(CLASSES)[y][:, None, :] + rng.normal(size=(2 * ROWS, MEMBERS, CLASSES)), -1)
    return {"fit": p[:ROWS], "y_fit": y[:ROWS], "test": p[ROWS:], "y_test": y[ROWS:]}


def test_fitting_order_is_by_single_member_nll_on_the_fitting_rows(rows):
    nll = [log_loss(rows["y_fit"], rows["fit"][:, m], labels=range(CLASSES)) for m in range(MEMBERS)]

    order = plots.fitting_order(fit_report(rows["fit"], rows["y_fit"]))

    np.testing.assert_array_equal(order, np.argsort(nll))
    assert order[0] == 2 and order[-1] == 0
    # Scrambling the test rows does not move it: only the fitting rows decide.
    swapped = fit_report(rows["fit"][:, ::-1], rows["y_fit"])
    np.testing.assert_array_equal(plots.fitting_order(swapped), MEMBERS - 1 - np.argsort(nll))


def test_curve_of_a_given_combine_matches_sklearn(rows):
    y, p = rows["y_test"], rows["test"]
    order = [2, 3, 1, 0]
    seen = []

    def combine(indices):  # the geometric mean of the members given; undefined for one member
        seen.append(indices.tolist())
        return None if len(indices) == 1 else softmax(np.log(p[:, indices]).mean(1), -1)

    curve = plots.ensemble_size_curve(y, p, order=order, combine=combine)

    assert seen == [order[:k] for k in range(1, MEMBERS + 1)]
    assert np.isnan(curve["combined"]["nll"][0]) and np.isnan(curve["combined"]["accuracy"][0])
    for k in range(2, MEMBERS + 1):
        geometric = softmax(np.log(p[:, order[:k]]).mean(1), -1)
        assert curve["combined"]["nll"][k - 1] == pytest.approx(log_loss(y, geometric), rel=1e-9)
        assert curve["combined"]["accuracy"][k - 1] == pytest.approx(accuracy_score(y, geometric.argmax(1)))
        plain = p[:, order[:k]].mean(1)
        assert curve["nll"][k - 1] == pytest.approx(log_loss(y, plain), rel=1e-9)
    assert plots.ensemble_size_curve(y, p)["combined"] is None
    with pytest.raises(ValueError, match=r"Expected combine\(first 1 members\) of shape \(240, 3\)"):
        plots.ensemble_size_curve(y, p, combine=lambda idx: p[:10, 0])


def test_fixed_weights_are_renormalised_over_the_subset(rows):
    report = fit_report(rows["fit"], rows["y_fit"])
    combine, label = plots.configured_combine(
        report, combiners.MeanCombiner(weights=[1, 2, 0, 3]), rows["test"]
    )

    np.testing.assert_allclose(
        combine(np.array([1, 3])), (2 * rows["test"][:, 1] + 3 * rows["test"][:, 3]) / 5
    )
    np.testing.assert_allclose(combine(np.array([3])), rows["test"][:, 3])
    assert combine(np.array([2])) is None  # weight 0 alone: no prediction to score
    assert "renormalised" in label


def test_hard_vote_is_tallied_like_sklearn_voting(rows):
    report = fit_report(rows["fit"], rows["y_fit"])
    combine, _ = plots.configured_combine(report, combiners.VoteCombiner(voting="hard"), rows["test"])
    subset = [0, 2, 3]
    votes = rows["test"][:, subset].argmax(-1)
    shares = np.stack([(votes == c).mean(1) for c in range(CLASSES)], axis=1)

    np.testing.assert_allclose(combine(np.array(subset)), shares)


def test_sklearn_stacker_is_refitted_on_the_subset_meta_features(rows):
    full_features = np.log(np.clip(rows["fit"], 1e-7, 1)).reshape(ROWS, -1)
    classes = rows["fit"].shape[-1]
    zero = np.zeros((full_features.shape[1], classes))
    kernel, bias = fit_stacker(full_features, np.eye(classes)[rows["y_fit"]], zero, 0.5)
    full = Stacker(kernel, bias, "zero", 0.5, None)  # what fit_stacking(C=0.5) returns
    report = fit_report(rows["fit"], rows["y_fit"], method="sklearn", fitted=full)
    combine, _ = plots.configured_combine(
        report, combiners.StackingCombiner(task="classification"), rows["test"]
    )
    subset = [2, 0]
    features = (
        np.log(np.clip(rows["fit"][:, subset], 1e-7, 1)).reshape(ROWS, -1).astype("float32").astype("float64")
    )
    reference = LogisticRegression(C=0.5, tol=1e-12, max_iter=100_000).fit(features, rows["y_fit"])
    test_features = (
        np.log(np.clip(rows["test"][:, subset], 1e-7, 1))
        .reshape(ROWS, -1)
        .astype("float32")
        .astype("float64")
    )

    np.testing.assert_allclose(combine(np.array(subset)), reference.predict_proba(test_features), atol=1e-5)


@pytest.mark.slow
def test_regression_stacker_refits_ridge_on_the_subset_mean_residual():
    rng = np.random.default_rng(5)
    y = rng.normal(size=(2 * ROWS, 1))
    members = y[:, None, :] + rng.normal(scale=[0.3, 0.8, 1.2], size=(2 * ROWS, 3))[:, :, None]
    fit, test = members[:ROWS], members[ROWS:]
    full = Ridge(alpha=2.0).fit(fit.reshape(ROWS, -1), y[:ROWS] - fit.mean(1))
    stacker = ensemble.build_ensemble(
        [ensemble.load_member(dense_classifier(s, classes=1, final=None), name=f"r{s}") for s in range(3)],
        combiners.StackingCombiner(),
        task="regression",
    )
    combiner = EnsembleView.of(stacker).combiner
    kernel = np.vstack([np.eye(1) / 3] * 3) + np.atleast_2d(full.coef_).T  # as fit_stacking bakes it in
    combiner.meta_model_.kernel.assign(kernel.astype("float32"))
    report = fit_report(fit, y[:ROWS], task="regression", method="sklearn", fitted=full)
    combine, _ = plots.configured_combine(report, combiner, test)
    subset = [0, 2]
    # The subset's plain mean, then the ridge on its residual.
    base, test_base = (rows[:, subset, 0].mean(axis=1) for rows in (fit, test))
    reference = Ridge(alpha=2.0).fit(fit[:, subset, 0], y[:ROWS, 0] - base)
    expected = (test_base + reference.predict(test[:, subset, 0])).reshape(-1, 1)

    np.testing.assert_allclose(combine(np.array(subset)), expected, atol=1e-5)
    curve = plots.ensemble_size_curve_regression(y[ROWS:], test, order=[0, 2, 1], combine=combine)
    assert curve["combined"]["rmse"][1] == pytest.approx(
        np.sqrt(mean_squared_error(y[ROWS:], expected)), rel=1e-4
    )


def test_a_keras_trained_stacker_is_not_refitted(rows):
    report = fit_report(rows["fit"], rows["y_fit"], method="keras")
    assert (
        plots.configured_combine(report, combiners.StackingCombiner(task="classification"), rows["test"])
        is None
    )


COMBINERS = {
    "vote-hard": (lambda: combiners.VoteCombiner(voting="hard"), {}),
    "select": (lambda: combiners.MeanCombiner(), {"method": "selection", "rounds": 10}),
    "weighted-calibrated": (
        lambda: combiners.MeanCombiner(),
        {"method": "optimal", "calibration": "temperature"},
    ),
    "stack": (lambda: combiners.StackingCombiner(), {"method": "sklearn", "C": 1.0}),
}


@pytest.mark.slow
def test_refit_with_every_member_is_the_fitted_ensemble(tmp_path):
    """The one test on a real (tiny) ensemble: for each combiner, refitting it on every member
    gives the ensemble's own test predictions; then the job's figures are all written."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8)).astype("float32")
    y = (x @ rng.normal(size=(8, 3)) + rng.normal(size=(300, 3))).argmax(1)
    rows = np.concatenate([x, rng.normal(scale=3.0, size=(50, 8)).astype("float32")])  # + OOD rows
    members = [ensemble.load_member(dense_classifier(seed), name=f"m{seed}") for seed in range(3)]
    for name, (build, options) in COMBINERS.items():
        model = ensemble.build_ensemble(members, build())
        report = ensemble.fit(model, x[:200], y[:200], verbose=0, **options)
        everything = model.predict(rows[200:], verbose=0)
        outputs = {key: value[:100] for key, value in everything.items()}
        combiner = EnsembleView.of(model).combiner

        combine, _ = plots.configured_combine(report, combiner, outputs["member_predictions"])

        np.testing.assert_allclose(combine(np.arange(3)), outputs["prediction"], atol=1e-5, err_msg=name)
    names = [member.name for member in members]
    scores = {"members": {n: {"nll": 1.0} for n in names}, "ensemble": {"accuracy": 0.5, "nll": 1.0}}
    ood = {key: value[100:] for key, value in everything.items()}
    figures = plots.write_figures(
        y[200:], outputs, names, scores, tmp_path, fit_report=report, model=model, ood_outputs=ood
    )
    assert sorted(os.listdir(tmp_path)) == sorted(figures.values())
    assert {"risk_coverage.png", "ood_scores.png", "ensemble_size.png"} <= set(figures.values())
    assert any("fitting rows; StackingCombiner (meta-model refitted)" in title for title in figures)


@pytest.mark.parametrize(
    ("method", "calibrated"), [("sklearn", True), ("none", False)], ids=["fitted", "raw"]
)
@pytest.mark.slow
def test_the_mean_curve_is_fitted_on_the_fitting_rows_as_the_ensemble_is(
    rows, tmp_path, monkeypatch, method, calibrated
):
    """An ensemble fitted on the fitting rows is compared with the mean of the first k members
    temperature-scaled on those rows (its last point: the calibrated mean baseline); one fitted
    on nothing, with the plain mean. The label says which, in a legend off the panels."""
    report = fit_report(rows["fit"], rows["y_fit"], method=method, selected_member={"name": "m2"})
    order = plots.fitting_order(report)
    expected = []
    for k in range(1, MEMBERS + 1):
        fitting, test = (rows[split][:, order[:k]].mean(1) for split in ("fit", "test"))
        if calibrated:
            test = temperature.calibrated(test, temperature.fit_scaling(fitting, rows["y_fit"]))
        expected.append(log_loss(rows["y_test"], test, labels=range(CLASSES)))
    plain = [log_loss(rows["y_test"], rows["test"][:, order[:k]].mean(1)) for k in range(1, MEMBERS + 1)]
    assert not np.allclose(expected, plain) or not calibrated
    drawn = {}
    module = importlib.import_module("ensemble.evaluate.figures.ensemble_size")
    monkeypatch.setattr(module, "save_png", lambda figure, path: drawn.setdefault("figure", figure))
    outputs = {
        "prediction": rows["test"].mean(1),
        "member_predictions": rows["test"],
        "entropy": np.ones(ROWS),
    }
    names = [f"m{i}" for i in range(MEMBERS)]
    scores = {"members": {n: {"nll": 1.0} for n in names}, "ensemble": {"accuracy": 0.5, "nll": 1.0}}

    figures = plots.write_figures(rows["y_test"], outputs, names, scores, tmp_path, fit_report=report)

    figure = drawn["figure"]
    label = f"plain mean{', temperature-scaled on the fitting rows' if calibrated else ''}, first k"
    (line,) = [line for line in figure.axes[1].get_lines() if line.get_label() == label]
    np.testing.assert_allclose(line.get_ydata(), expected, rtol=1e-9)
    assert len(figure.legends) == 1 and label in [t.get_text() for t in figure.legends[0].get_texts()]
    figure.draw_without_rendering()
    box = figure.legends[0].get_window_extent()
    assert not any(box.overlaps(axes.get_window_extent()) for axes in figure.axes)
    assert figure.axes[0].get_ylim()[1] <= 1.0  # no accuracy above 1; the right axis counts errors
    assert any(f"dashed: {label[: -len(', first k')]}" in title for title in figures)
    if calibrated:  # the last point: the calibrated mean `evaluate_ensemble` records (same fit)
        curve = plots.ensemble_size_curve(
            rows["y_test"], rows["test"], order, mean=plots.calibrated_mean(report, rows["test"])
        )
        np.testing.assert_allclose(curve["nll"], expected, rtol=1e-9)
