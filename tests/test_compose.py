"""`experiments.compose` end to end: train the demo zoo once, compose it, check the metrics independently."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
from hydra import compose, initialize
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import DictConfig
from sklearn.datasets import load_digits
from sklearn.metrics import accuracy_score

import ensemble
from ensemble import build_ensemble
from ensemble.data import load_dataset
from experiments.compose import load_members, run

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
MEMBERS = ["mlp", "wide", "linear"]
METRICS = {"accuracy", "nll", "brier", "ece"}


def compose_config(*overrides: str) -> DictConfig:
    GlobalHydra.instance().clear()
    try:
        with initialize(version_base="1.3", config_path="../conf"):
            return compose(config_name="config", overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("compose") / "zoo"


@pytest.fixture(scope="module")
def mean_run(zoo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """The default run (digits, mean combiner); it trains the zoo into `zoo_dir`, once per module."""
    output_dir = tmp_path_factory.mktemp("mean_run")
    result = run(compose_config(f"zoo.dir={zoo_dir}"), output_dir=str(output_dir))
    return result, output_dir


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True)


def member_probabilities(zoo_dir: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    """Each zoo member's class probabilities, with plain Keras/TF loading and no `ensemble` code."""
    mlp = keras.saving.load_model(zoo_dir / "mlp.keras")
    wide = keras.saving.load_model(zoo_dir / "wide.h5", compile=False)
    linear = tf.saved_model.load(str(zoo_dir / "linear_savedmodel"))
    return {
        "mlp": mlp.predict(x, verbose=0),
        "wide": softmax(np.asarray(wide.predict(x, verbose=0), dtype="float64")),  # emits logits
        "linear": linear.serve(tf.constant(x)).numpy(),
    }


def test_zoo_is_saved_in_three_formats(mean_run: Any, zoo_dir: Path) -> None:
    assert sorted(os.listdir(zoo_dir)) == [
        "linear_savedmodel", "linear_savedmodel.training_rows.npy",
        "mlp.keras", "mlp.keras.training_rows.npy", "wide.h5", "wide.h5.training_rows.npy",
    ]
    assert zipfile.is_zipfile(zoo_dir / "mlp.keras")
    assert "config.json" in zipfile.ZipFile(zoo_dir / "mlp.keras").namelist()
    assert h5py.is_hdf5(zoo_dir / "wide.h5")
    assert (zoo_dir / "linear_savedmodel").is_dir()
    assert (zoo_dir / "linear_savedmodel" / "saved_model.pb").is_file()


def test_metrics_json(mean_run: Any) -> None:
    result, output_dir = mean_run
    with open(output_dir / "metrics.json") as f:
        written = json.load(f)
    assert written == result
    assert {"task", "combiner", "members", "ensemble"} <= set(written)
    assert written["task"] == "classification"
    assert written["combiner"] == "MeanCombiner"
    assert sorted(written["members"]) == sorted(MEMBERS)
    for name, metrics in written["members"].items():
        assert set(metrics) == METRICS, name
    assert set(written["ensemble"]) == METRICS


def test_the_run_exports_one_verified_saved_model(mean_run: Any, zoo_dir: Path) -> None:
    result, output_dir = mean_run
    assert result["export_dir"] == str(output_dir / "export")
    manifest = ensemble.read_manifest(result["export_dir"])
    assert [m["name"] for m in manifest["members"]] == list(MEMBERS)
    assert "combiner:" in (output_dir / "export" / "assets.extra" / "config.yaml").read_text()
    x = load_digits().data[:5].astype("float32")
    served = tf.saved_model.load(result["export_dir"]).signatures["prediction"](features=tf.constant(x))
    expected = np.mean(list(member_probabilities(zoo_dir, x).values()), axis=0)
    np.testing.assert_allclose(served["prediction"].numpy(), expected, atol=1e-5)


def test_the_run_measures_each_tflite_variant(mean_run: Any) -> None:
    result, output_dir = mean_run
    report = result["tflite"]
    assert sorted(report) == ["dynamic", "float", "float16", "none"]
    assert report["float"] == result["ensemble"]
    for variant in ("none", "dynamic", "float16"):
        assert (output_dir / "tflite" / f"{variant}.tflite").stat().st_size == report[variant]["bytes"]
        assert report[variant]["agreement"] > 0.95
    assert report["none"]["max_abs_diff"] < 1e-5
    assert report["dynamic"]["bytes"] < report["float16"]["bytes"] < report["none"]["bytes"]


def test_metrics_match_an_independent_recomputation(mean_run: Any, zoo_dir: Path) -> None:
    result, _ = mean_run
    data = load_dataset("digits")
    probabilities = member_probabilities(zoo_dir, data.x_test)
    mean = np.mean([probabilities[name] for name in MEMBERS], axis=0, dtype="float64")
    rows = np.arange(len(data.y_test))

    # Members first: their metrics must sit under their own names.
    for name in MEMBERS:
        accuracy = accuracy_score(data.y_test, probabilities[name].argmax(-1))
        assert result["members"][name]["accuracy"] == pytest.approx(accuracy, abs=1e-5), name
    assert result["ensemble"]["accuracy"] == pytest.approx(
        accuracy_score(data.y_test, mean.argmax(-1)), abs=1e-5
    )
    true_class = mean[rows, data.y_test]
    # No member saturates into a probability-0 mistake (as when a pixel constant in training
    # was scaled by 1/1e-7), so the NLL is a plain mean, not one dominated by clipping.
    assert true_class.min() > 1e-6
    nll = -np.mean(np.log(true_class))
    assert result["ensemble"]["nll"] == pytest.approx(nll, abs=1e-5)
    # The demo is meant to work: the ensemble is a good digits classifier.
    assert result["ensemble"]["accuracy"] > 0.9


def test_soft_vote_predicts_as_mean(mean_run: Any, zoo_dir: Path) -> None:
    mean_result, _ = mean_run
    vote_cfg = compose_config(f"zoo.dir={zoo_dir}", "combiner=vote", "combiner.voting=soft")
    vote_result = run(vote_cfg)

    assert vote_result["combiner"] == "VoteCombiner"
    assert vote_result["members"] == mean_result["members"]
    for metric in METRICS:
        assert vote_result["ensemble"][metric] == pytest.approx(
            mean_result["ensemble"][metric], abs=1e-6
        ), metric

    mean_cfg = compose_config(f"zoo.dir={zoo_dir}")
    x = load_dataset("digits").x_test
    predictions = [
        build_ensemble(load_members(cfg.members), instantiate(cfg.combiner)).predict(x, verbose=0)
        for cfg in (mean_cfg, vote_cfg)
    ]
    np.testing.assert_allclose(predictions[0]["prediction"], predictions[1]["prediction"], atol=1e-6)


def test_command_line_reuses_the_zoo(mean_run: Any, zoo_dir: Path, tmp_path: Path) -> None:
    mean_result, _ = mean_run
    saved = {name: os.stat(zoo_dir / name).st_mtime_ns for name in os.listdir(zoo_dir)}
    run_dir = tmp_path / "run"

    completed = subprocess.run(
        [sys.executable, "-m", "experiments.compose", f"zoo.dir={zoo_dir}", f"hydra.run.dir={run_dir}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )

    assert completed.returncode == 0, completed.stderr[-3000:]
    with open(run_dir / "metrics.json") as f:
        written = json.load(f)
    assert written["ensemble"] == pytest.approx(mean_result["ensemble"], abs=1e-6)
    # Nothing was retrained: the members are the files the fixture wrote.
    assert {name: os.stat(zoo_dir / name).st_mtime_ns for name in os.listdir(zoo_dir)} == saved
