"""experiments.run, the main job, end to end on tiny configurations; and its bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import yaml
from sklearn.datasets import load_wine

import combiners
import ensemble
from experiments.run import run
from tests.conftest import compose_config

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


def _png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG, path
    assert matplotlib.image.imread(path).size > 0


def test_classification_run_writes_metrics_report_plots_and_export(wine_overrides, tmp_path):
    result = run(compose_config(*wine_overrides, "conformal=thr"), output_dir=str(tmp_path))
    assert json.loads((tmp_path / "metrics.json").read_text()) == result
    assert {"task", "combiner", "members", "ensemble", "export_dir"} <= set(result)
    assert set(result["ensemble"]) == {*ensemble.evaluate.CLASSIFICATION_METRICS, "disagreement"}
    baselines = result["baselines"]
    assert (
        set(baselines["members"]) == set(result["members"])
        and baselines["selected"]["name"] in result["members"]
    )
    assert baselines["gain"]["nll_ratio"] == pytest.approx(
        result["ensemble"]["nll"] / baselines["selected"]["calibrated"]["nll"]
    )
    assert set(result["ood"]["ensemble"]) == {"one_minus_max_probability", "entropy", "mutual_information"}
    assert result["ood"]["rows"] == {
        "in": result["data"]["rows"]["test"],
        "out": result["data"]["rows"]["test"],
    }
    # Wine's 13 features are no 8x8 image: the zoo's CNNs are skipped, and the report says so.
    assert set(result["zoo"]["skipped"]) == {"cnn", "cnn_narrow"}
    assert result["regime"] == "holdout" and result["combiner"] == "StackingCombiner"
    for plot in ("reliability", "ensemble_size", "member_correlation", "uncertainty"):
        _png(tmp_path / f"{plot}.png")
    report = (tmp_path / "report.md").read_text()
    for expected in (
        "## Test metrics",
        "| **ensemble** |",
        "calibrated (T=",
        "## Uncertainty scores",
        "## Out-of-distribution detection",
        "Zoo members skipped for this data",
        "`cnn`: it reads images of shape",
        "![",
        "reliability.png",
        "## Config",
        "combiner:",
        "## Export",
        "TFLite",
    ):
        assert expected in report, expected
    for name in result["members"]:
        assert f"| {name} |" in report
    assert result["selected_member"]["name"] in result["members"]
    assert "chosen without the test split (nll after temperature scaling on the" in report
    manifest = ensemble.read_manifest(result["export_dir"])
    assert manifest["task"] == "classification"
    # The labels the data names (scikit-learn's target_names), recorded by the zoo's recipes and
    # returned by the export beside the prediction.
    names = [str(label) for label in load_wine().target_names]
    assert manifest["classes"] == names and "classes" in manifest["signatures"]["serving_default"]
    zoo = next(o.split("=", 1)[1] for o in wine_overrides if o.startswith("zoo.dir="))
    recipe = next(p for p in os.listdir(zoo) if p.endswith(".recipe.yaml"))
    assert yaml.safe_load(Path(zoo, recipe).read_text())["classes"] == names
    # conformal=thr: calibrated on half of the test split, measured on the other half, exported.
    conformal = result["conformal"]
    assert (
        conformal["method"] == "thr"
        and conformal["calibration_rows"] + conformal["rows"] == (result["data"]["rows"]["test"])
    )
    assert 0 <= conformal["coverage"] <= 1 and "## Conformal prediction" in report
    import tensorflow as tf

    serving = tf.saved_model.load(result["export_dir"]).signatures["serving_default"]
    assert serving.structured_outputs["prediction_set"].dtype == tf.bool


# Two members, one a .keras file and one a SavedModel, 10 epochs, no refit (one fit a member):
# the regression outputs and their arithmetic (noise variance, each member's std) are checked,
# not the members' quality.
SMALL_DIABETES = [
    "data=diabetes",
    "~zoo.members.deep_mlp",
    "~zoo.members.wide",
    *(f"zoo.members.{m}.train.{key}" for m in ("mlp", "linear") for key in ("epochs=10", "refit=false")),
]


def test_regression_run(tmp_path_factory, tmp_path):
    zoo = tmp_path_factory.mktemp("diabetes") / "zoo"
    result = run(
        compose_config(*SMALL_DIABETES, f"zoo.dir={zoo}", "export.tflite=[]"), output_dir=str(tmp_path)
    )
    assert sorted(result["members"]) == ["linear", "mlp"]
    assert result["task"] == "regression"
    assert (
        set(result["ensemble"]) == set(ensemble.evaluate.REGRESSION_METRICS) and result["noise_variance"] >= 0
    )
    for metrics in (*result["members"].values(), result["mean"]):
        assert set(metrics) == set(ensemble.evaluate.REGRESSION_METRICS)
    assert "ood" not in result  # diabetes names no OOD set
    for plot in ("ensemble_size", "member_correlation", "std_vs_error"):
        _png(tmp_path / f"{plot}.png")
    assert "std_vs_error.png" in (tmp_path / "report.md").read_text()

    # Against the exported ensemble, loaded on its own: the noise variance is what its spread
    # misses on the holdout rows, and a member's predictive std is its holdout RMSE.
    import tensorflow as tf
    from scipy.stats import norm

    serve = tf.saved_model.load(result["export_dir"]).signatures["serving_default"]
    (name,) = serve.structured_input_signature[1]
    data = ensemble.data.load_dataset("diabetes")
    holdout = {k: v.numpy() for k, v in serve(**{name: tf.constant(data.x_holdout)}).items()}
    residual = (data.y_holdout.reshape(-1, 1) - holdout["prediction"]) ** 2
    expected = max(float(np.mean(residual - holdout["std"] ** 2)), 0.0)
    np.testing.assert_allclose(result["noise_variance"], expected, rtol=1e-4, atol=1e-6)
    test = serve(**{name: tf.constant(data.x_test)})["member_predictions"].numpy()
    first = next(iter(result["members"]))
    rmse = np.sqrt(np.mean((data.y_holdout - holdout["member_predictions"][:, 0, 0]) ** 2))
    nll = -np.mean(norm.logpdf(data.y_test, loc=test[:, 0, 0], scale=rmse))
    np.testing.assert_allclose(result["members"][first]["nll"], nll, rtol=1e-4)


def test_csv_without_the_named_target_column(tmp_path):
    cfg = compose_config("data=csv", "data.target=label", f"zoo.dir={tmp_path / 'zoo'}")
    with pytest.raises(Exception, match=r"label"):
        run(cfg, output_dir=str(tmp_path))


def test_a_member_config_that_fails_to_build_is_named(wine_overrides, tmp_path):
    cfg = compose_config(*wine_overrides, f"zoo.dir={tmp_path / 'zoo'}", "zoo.members.mlp.build.hidden=[-5]")
    with pytest.raises(ensemble.EnsembleError, match=r"Zoo member 'mlp': its build config fails"):
        run(cfg, output_dir=str(tmp_path))


def test_a_run_directory_that_is_not_writable(tmp_path):
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("x")
    with pytest.raises(PermissionError, match=r"Run directory .*file is not writable"):
        run(compose_config("data=wine"), output_dir=str(not_a_directory))


def test_a_dataset_not_in_the_group():
    done = subprocess.run(
        [sys.executable, "-m", "experiments.run", "data=mnist"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert done.returncode != 0
    assert "Could not find 'data/mnist'" in done.stderr and "digits" in done.stderr


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_the_selected_member_is_the_best_on_the_fitting_rows(task):
    from sklearn.metrics import log_loss, mean_squared_error

    from ensemble.evaluate import selected_member
    from tests.conftest import dense_classifier

    rng = np.random.default_rng(0)
    final = "softmax" if task == "classification" else None  # regressors: a linear output
    model = ensemble.build_ensemble(
        [dense_classifier(i, name=f"m{i}", final=final) for i in range(3)],
        combiners.MeanCombiner(),
        task=task,
    )
    level_one = rng.dirichlet(np.ones(3), size=(40, 3))
    y = rng.integers(0, 3, size=40)
    if task == "classification":
        # Members that know the label, each over- or underconfident by its own power: the one
        # shipped alone is the best after temperature scaling (a bounded search here).
        from scipy.optimize import minimize_scalar
        from scipy.special import softmax

        level_one = softmax(
            np.stack([(2 * np.eye(3)[y] + rng.normal(size=(40, 3))) * s for s in (0.3, 1, 4)], 1), -1
        )
        level_one[:, 1] = level_one[:, 1] ** 3 / (level_one[:, 1] ** 3).sum(-1, keepdims=True)

        def calibrated_nll(p: np.ndarray) -> float:
            """The NLL at the temperature fitted with the calibration prior's pseudo-row (one
            row labelled evenly over the classes), by a bounded search."""

            def objective(t: float) -> float:
                q = softmax(np.log(p) / t, -1)
                return (40 * log_loss(y, q, labels=range(3)) + float(np.mean(-np.log(q).mean(1)))) / 41

            found = minimize_scalar(objective, bounds=(0.01, 100), method="bounded", options={"xatol": 1e-10})
            return float(log_loss(y, softmax(np.log(p) / found.x, -1), labels=range(3)))

        want = [calibrated_nll(level_one[:, i]) for i in range(3)]
    else:
        y = rng.normal(size=(40, 3))
        want = [np.sqrt(mean_squared_error(y, level_one[:, i])) for i in range(3)]  # pooled
    view = ensemble.EnsembleView.of(model)
    assert view.task == task
    got = selected_member(view, level_one, y)
    assert got["name"] == f"m{int(np.argmin(want))}"
    assert got[("nll" if task == "classification" else "rmse")] == pytest.approx(min(want), rel=1e-5)
    assert got["by"].endswith("on the 40 fitting rows")
