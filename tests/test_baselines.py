"""The honest baselines, the metric suite as wired into evaluate_ensemble, OOD detection and the
report's sections, each against an independent reference (scikit-learn, SciPy, a hand case)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import optimize, special, stats
from sklearn import metrics

import combiners
import ensemble
from ensemble.evaluate import (
    evaluate_ensemble,
    evaluate_ood,
    format_table,
    gain_line,
    like_with_like,
    markdown_table,
    right_vs_wrong_auroc,
    risk_coverage_points,
)
from ensemble.evaluate.report_sections import (
    baselines_section,
    console_ending,
    ood_section,
    uncertainty_section,
    zoo_section,
)
from tests.conftest import dense_classifier

NAMES = ["m0", "m1", "m2"]


def reference_temperature(p: np.ndarray, y: np.ndarray) -> float:
    """The NLL-minimising temperature by a bounded scalar search on scikit-learn's log loss,
    with the calibration prior's one pseudo-row labelled evenly over the classes."""
    logits = np.log(np.clip(p, 1e-7, 1.0))
    n = len(y)

    def nll(t: float) -> float:
        q = special.softmax(logits / t, axis=1)
        uniform = float(np.mean(-np.log(q).mean(axis=1)))
        return (n * float(metrics.log_loss(y, q, labels=range(p.shape[1]))) + uniform) / (n + 1)

    return float(
        optimize.minimize_scalar(nll, bounds=(0.05, 20.0), method="bounded", options={"xatol": 1e-8}).x
    )


@pytest.fixture(scope="module")
def classification() -> SimpleNamespace:
    """Three seeded members; labels follow m0 with 25% of them redrawn, so m0 is best, and
    sharp but wrong a quarter of the time (its temperature is far from 1)."""
    rng = np.random.default_rng(0)
    members = [dense_classifier(i, name=n) for i, n in enumerate(NAMES)]
    model = ensemble.build_ensemble(members, combiners.MeanCombiner())
    x = rng.normal(size=(500, 8)).astype("float32")
    y = members[0].predict(x, verbose=0).argmax(1)
    flip = rng.random(len(y)) < 0.25
    y[flip] = rng.integers(0, 3, flip.sum())
    fitting = model.predict(x[:300], verbose=0)["member_predictions"].astype("float64")
    report = SimpleNamespace(
        level_one=fitting,
        targets=y[:300],
        rows=300,
        selected_member={"name": "m0", "by": "nll on the 300 fitting rows"},
    )
    outputs = model.predict(x[300:], verbose=0)
    result = evaluate_ensemble(model, x[300:], y[300:], outputs=outputs, fit_report=report)
    return SimpleNamespace(
        model=model, x=x[300:], y=y[300:], fitting=fitting, fit_y=y[:300], outputs=outputs, result=result
    )


def test_members_raw_and_temperature_scaled_against_sklearn(classification: SimpleNamespace) -> None:
    c = classification
    baselines = c.result["baselines"]
    for i, name in enumerate(NAMES):
        test = c.outputs["member_predictions"][:, i].astype("float64")
        raw = baselines["members"][name]["raw"]
        assert raw == c.result["members"][name]
        assert raw["nll"] == pytest.approx(
            metrics.log_loss(c.y, test / test.sum(1, keepdims=True), labels=range(3))
        )
        t = reference_temperature(c.fitting[:, i], c.fit_y)  # fitted on the FITTING rows
        if baselines["members"][name]["temperature"] is None:  # worse than chance on those rows:
            assert t > 19.0  # the NLL falls toward the uniform forecast, no finite optimum
            assert baselines["members"][name]["calibrated"] == raw
            continue
        assert baselines["members"][name]["temperature"] == pytest.approx(t, rel=1e-4)
        scaled = special.softmax(np.log(np.clip(test, 1e-7, 1)) / t, axis=1)
        calibrated = baselines["members"][name]["calibrated"]
        assert calibrated["nll"] == pytest.approx(metrics.log_loss(c.y, scaled, labels=range(3)), rel=1e-5)
        assert calibrated["accuracy"] == raw["accuracy"]  # a temperature keeps every argmax
    mean_t = reference_temperature(c.fitting.mean(1), c.fit_y)
    assert baselines["mean"]["temperature"] == pytest.approx(mean_t, rel=1e-4)


def test_the_selected_member_and_the_gain_against_it_calibrated(classification: SimpleNamespace) -> None:
    c = classification
    baselines = c.result["baselines"]
    selected = baselines["selected"]
    assert selected["name"] == "m0" and selected["by"] == "nll on the 300 fitting rows"
    assert selected["calibrated"] == baselines["members"]["m0"]["calibrated"]
    assert selected["calibrated"]["nll"] < selected["raw"]["nll"]  # its temperature is worth something
    ours, theirs = c.result["ensemble"], selected["calibrated"]
    gain = baselines["gain"]
    assert gain["against"] == "m0, calibrated"
    assert gain["nll_ratio"] == pytest.approx(ours["nll"] / theirs["nll"])
    assert gain["accuracy_difference"] == pytest.approx(ours["accuracy"] - theirs["accuracy"])
    assert gain["ece_difference"] == pytest.approx(ours["ece"] - theirs["ece"])


def test_the_suite_is_wired_in_for_every_model(classification: SimpleNamespace) -> None:
    c = classification
    p = c.outputs["prediction"].astype("float64")
    p /= p.sum(1, keepdims=True)
    ours = c.result["ensemble"]
    assert ours["nll"] == pytest.approx(metrics.log_loss(c.y, p, labels=range(3)))
    assert ours["brier"] == pytest.approx(
        ours["brier_reliability"] - ours["brier_resolution"] + ours["brier_uncertainty"], abs=0.02
    )
    base = np.bincount(c.y, minlength=3) / len(c.y)
    assert ours["brier_uncertainty"] == pytest.approx(float(np.sum(base * (1 - base))))
    # AURC by brute force: errors sorted by falling confidence (no ties in float confidences).
    errors = (p.argmax(1) != c.y)[np.argsort(-p.max(1))]
    assert ours["aurc"] == pytest.approx(np.mean(np.cumsum(errors) / np.arange(1, len(errors) + 1)))
    for values in (*c.result["members"].values(), c.result["mean"]):
        assert set(values) == set(ours)
    curve = c.result["risk_coverage"]["ensemble"]
    assert curve["coverage"][-1] == 1.0 and curve["risk"][-1] == pytest.approx(1 - ours["accuracy"])
    assert set(c.result["risk_coverage"]) == {"ensemble", "selected member (calibrated)", "mean (calibrated)"}


def test_right_vs_wrong_auroc_against_sklearn_and_an_inverted_score() -> None:
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(3), size=200)
    y = rng.integers(0, 3, size=200)
    wrong = p.argmax(1) != y
    score = rng.normal(size=200) + wrong  # informative
    got = right_vs_wrong_auroc(y, p, {"good": score, "inverted": -score})
    assert got["good"] == pytest.approx(metrics.roc_auc_score(wrong, score))
    assert got["inverted"] == pytest.approx(1 - got["good"]) and got["inverted"] < 0.5
    assert right_vs_wrong_auroc(p.argmax(1), p, {"any": score}) == {}  # nothing wrong: undefined
    section = "\n".join(
        uncertainty_section({"task": "classification", "uncertainty": {"right_vs_wrong_auroc": got}})
    )
    assert "`inverted` ranks right predictions as MORE uncertain than wrong ones" in section
    assert "`good` ranks right" not in section


def test_risk_coverage_points_are_points_of_the_full_curve() -> None:
    rng = np.random.default_rng(2)
    p = rng.dirichlet(np.ones(4), size=1000)
    y = rng.integers(0, 4, size=1000)
    curve = risk_coverage_points(y, p, points=51)
    assert len(curve["coverage"]) == 51 and curve["coverage"][0] == 0.001 and curve["coverage"][-1] == 1.0
    order = np.argsort(-p.max(1))
    errors = (p.argmax(1) != y)[order]
    k = np.round(np.asarray(curve["coverage"]) * 1000).astype(int)
    np.testing.assert_allclose(curve["risk"], np.cumsum(errors)[k - 1] / k)


def test_ood_detection_of_the_ensemble_and_the_calibrated_selected_member(
    classification: SimpleNamespace,
) -> None:
    c = classification
    shifted = c.model.predict(c.x * 4.0, verbose=0)
    ood = evaluate_ood(
        c.outputs,
        shifted,
        member_names=NAMES,
        baselines=c.result["baselines"],
        spec={"kind": "permute", "seed": 0},
    )
    assert ood["rows"] == {"in": 200, "out": 200} and ood["set"] == {"kind": "permute", "seed": 0}
    truth = np.r_[np.zeros(200), np.ones(200)]
    for score in ("entropy", "mutual_information"):
        values = np.r_[c.outputs[score], shifted[score]]
        assert ood["ensemble"][score]["auroc"] == pytest.approx(metrics.roc_auc_score(truth, values))
        assert ood["ensemble"][score]["aupr"] == pytest.approx(metrics.average_precision_score(truth, values))
    one_minus = np.r_[1 - c.outputs["prediction"].max(1), 1 - shifted["prediction"].max(1)]
    assert ood["ensemble"]["one_minus_max_probability"]["auroc"] == pytest.approx(
        metrics.roc_auc_score(truth, one_minus)
    )
    t = c.result["baselines"]["selected"]["temperature"]
    member = [
        special.softmax(np.log(np.clip(o["member_predictions"][:, 0], 1e-7, 1)) / t, axis=1)
        for o in (c.outputs, shifted)
    ]
    entropy = np.r_[stats.entropy(member[0], axis=1), stats.entropy(member[1], axis=1)]
    assert ood["selected member m0 (calibrated)"]["entropy"]["auroc"] == pytest.approx(
        metrics.roc_auc_score(truth, entropy), abs=1e-6
    )
    section = "\n".join(ood_section({"ood": ood}))
    assert "## Out-of-distribution detection" in section and "features permuted" in section
    assert "| ensemble: `entropy` |" in section


def test_regression_baselines_use_the_fitting_rmse_as_std_against_scipy() -> None:
    rng = np.random.default_rng(3)
    model = ensemble.build_ensemble(
        [dense_classifier(i, name=n, final=None, classes=1) for i, n in enumerate(NAMES)],
        combiners.MeanCombiner(),
        task="regression",
    )
    x = rng.normal(size=(300, 8)).astype("float32")
    y = model.predict(x, verbose=0)["prediction"][:, 0] + rng.normal(scale=0.3, size=300)
    fitting = model.predict(x[:200], verbose=0)["member_predictions"].astype("float64")
    report = SimpleNamespace(
        level_one=fitting,
        targets=y[:200],
        rows=200,
        noise_variance=0.05,
        selected_member={"name": "m1", "by": "rmse on the 200 fitting rows"},
    )
    outputs = model.predict(x[200:], verbose=0)
    result = evaluate_ensemble(model, x[200:], y[200:], outputs=outputs, fit_report=report)
    test = outputs["member_predictions"][:, 1, 0]
    rmse = np.sqrt(np.mean((y[:200] - fitting[:, 1, 0]) ** 2))
    calibrated = result["baselines"]["members"]["m1"]["calibrated"]
    assert result["baselines"]["members"]["m1"]["std"] == pytest.approx([rmse])
    assert calibrated["nll"] == pytest.approx(-np.mean(stats.norm.logpdf(y[200:], test, rmse)))
    z = np.abs(y[200:] - test) / rmse
    for level in (50, 90, 95):
        assert calibrated[f"coverage_{level}"] == pytest.approx(
            np.mean(z <= stats.norm.ppf(0.5 + level / 200))
        )
    assert set(result["baselines"]["members"]["m1"]["raw"]) == {"rmse", "mae"}
    std = np.sqrt(outputs["std"][:, 0] ** 2 + 0.05)
    assert result["ensemble"]["nll"] == pytest.approx(
        -np.mean(stats.norm.logpdf(y[200:], outputs["prediction"][:, 0], std)), rel=1e-5
    )
    gain = result["baselines"]["gain"]
    assert gain["rmse_ratio"] == pytest.approx(result["ensemble"]["rmse"] / calibrated["rmse"])
    assert gain["nll_difference"] == pytest.approx(result["ensemble"]["nll"] - calibrated["nll"])
    section = "\n".join(baselines_section({"task": "regression", **result}))
    assert "| selected member: m1 |" in section and "RMSE is" in section


def test_report_sections_and_integer_cells(classification: SimpleNamespace) -> None:
    result = {"task": "classification", **classification.result}
    section = "\n".join(baselines_section(result))
    t = result["baselines"]["members"]["m0"]["temperature"]
    assert f"| m0, calibrated (T={t:.3g}) |" in section and "| **ensemble** |" in section
    assert "| selected member: m0 |" in section and "chosen without the test split (nll on the" in section
    ratio = result["baselines"]["gain"]["nll_ratio"]
    assert f"{ratio:.2f}x its NLL" in section
    assert zoo_section({"zoo": {"skipped": {"cnn": "it reads images"}}})[2].startswith("Zoo members skipped")
    assert "none was skipped" in zoo_section({"zoo": {"skipped": {}}})[2]
    assert zoo_section({}) == []
    lines = markdown_table({"int8": {"bytes": 12345, "max_abs_diff": 0.5}})
    assert lines[-1] == "| int8 | 12345 | 0.5000 |"
    assert "12345" in format_table({"int8": {"bytes": 12345}}) and "12345.0" not in format_table(
        {"int8": {"bytes": 12345}}
    )


def test_console_ends_like_with_like_then_the_gain_and_the_run_directory(
    classification: SimpleNamespace, tmp_path, capsys
) -> None:
    """After the metrics table: the selected member and the plain mean raw and calibrated beside
    the ensemble (as metrics.json holds them), then one line: the NLL gain against the selected
    member calibrated on the fitting rows, and the run directory's absolute path."""
    result = {"task": "classification", "fit": {"method": "sklearn"}, **classification.result}
    baselines = result["baselines"]
    selected, mean = baselines["selected"], baselines["mean"]
    assert selected["raw"]["nll"] != pytest.approx(selected["calibrated"]["nll"], abs=1e-3)

    print(console_ending(result, str(tmp_path)))

    lines = capsys.readouterr().out.strip().splitlines()
    assert (
        lines[0]
        == "Like with like (test split; calibrated: temperature scaling fitted on the 300 fitting rows):"
    )
    columns = lines[1].split()[1:]
    assert columns[:4] == ["accuracy", "nll", "brier", "ece"]
    table = {line.rsplit(None, len(columns))[0]: line.split()[-len(columns) :] for line in lines[2:-1]}
    expected = {
        "selected member (m0), raw": selected["raw"],
        f"selected member (m0), calibrated (T={selected['temperature']:.3g})": selected["calibrated"],
        "plain mean, raw": mean["raw"],
        f"plain mean, calibrated (T={mean['temperature']:.3g})": mean["calibrated"],
        "ensemble (fitted on the fitting rows)": result["ensemble"],
    }
    assert table == {name: [f"{row[m]:.4f}" for m in columns] for name, row in expected.items()}
    ours, theirs, ratio = (
        result["ensemble"]["nll"],
        selected["calibrated"]["nll"],
        baselines["gain"]["nll_ratio"],
    )
    assert lines[-1] == (
        f"Ensemble against the selected member m0, calibrated on the fitting rows: NLL {ours:.4f} vs "
        f"{theirs:.4f}, {ratio:.3f}x ({100 * abs(1 - ratio):.1f}% {'lower' if ratio < 1 else 'higher'}); "
        f"run directory {os.path.abspath(tmp_path)}"
    )
    section = "\n".join(baselines_section(result))  # report.md: the same rows
    assert section.startswith("Like with like: the selected member and the plain mean raw, and calibrated")
    for name, row in expected.items():
        assert f"| {name} | {row['accuracy']:.4f} | {row['nll']:.4f} |" in section


def test_like_with_like_of_a_raw_regression_ensemble() -> None:
    """Raw regression has no NLL (no std): a dash, not a dropped column; the gain is the
    Gaussian NLL's difference; an ensemble fitted on nothing says so; no run directory."""
    calibrated = {"rmse": 0.5, "mae": 0.4, "nll": 0.9, "coverage_90": 0.88}
    raw = {"rmse": 0.5, "mae": 0.4}
    result = {
        "task": "regression",
        "fit": None,
        "ensemble": {"rmse": 0.45, "mae": 0.35, "nll": 0.7, "coverage_90": 0.9},
        "baselines": {
            "calibration": "a Gaussian with the RMSE on the 200 fitting rows as its std",
            "selected": {"name": "m1", "by": "rmse", "std": [0.5], "raw": raw, "calibrated": calibrated},
            "mean": {"std": [0.6], "raw": raw, "calibrated": calibrated},
            "gain": {"against": "m1, calibrated", "rmse_ratio": 0.9, "nll_difference": -0.2},
        },
    }

    rows = like_with_like(result)

    assert list(rows) == [
        "selected member (m1), raw",
        "selected member (m1), calibrated",
        "plain mean, raw",
        "plain mean, calibrated",
        "ensemble (raw: nothing fitted)",
    ]
    assert rows["plain mean, raw"] == {"rmse": 0.5, "mae": 0.4, "nll": None, "coverage_90": None}
    assert "–" in format_table(rows).splitlines()[1]
    assert gain_line(result, None) == (
        "Ensemble against the selected member m1, calibrated on the fitting rows: Gaussian NLL 0.7000 vs "
        "0.9000 (-0.2000); nothing written (no run directory)"
    )
