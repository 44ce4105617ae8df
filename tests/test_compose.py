"""experiments.compose end to end: the zoo in its formats, metrics recomputed independently, export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.metrics import accuracy_score, log_loss

import ensemble
from ensemble.data import load_dataset
from experiments.compose import run
from tests.conftest import compose_config

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
MEMBERS = ["mlp", "deep_mlp", "linear", "wide"]


@pytest.fixture(scope="module")
def mean_run(wine_overrides, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("compose")
    cfg = compose_config(*wine_overrides, "combiner=mean")
    return run(cfg, output_dir=str(output_dir)), output_dir, Path(cfg.zoo.dir)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True)


def member_probabilities(zoo: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    """Each zoo member's probabilities, loaded with plain Keras/TF (no `ensemble` code)."""
    linear = tf.saved_model.load(str(zoo / "linear_savedmodel"))
    return {
        "mlp": keras.saving.load_model(zoo / "mlp.keras").predict(x, verbose=0),
        "deep_mlp": keras.saving.load_model(zoo / "deep_mlp.h5", compile=False).predict(x, verbose=0),
        "linear": linear.serve(tf.constant(x)).numpy(),
        "wide": softmax(keras.saving.load_model(zoo / "wide.h5", compile=False).predict(x, verbose=0)),
    }


def test_zoo_is_saved_in_its_formats_with_training_records(mean_run):
    _, _, zoo = mean_run
    assert zipfile.is_zipfile(zoo / "mlp.keras") and h5py.is_hdf5(zoo / "deep_mlp.h5")
    assert h5py.is_hdf5(zoo / "wide.h5") and (zoo / "linear_savedmodel" / "saved_model.pb").is_file()
    for name in ("mlp.keras", "deep_mlp.h5", "linear_savedmodel", "wide.h5"):
        assert (zoo / f"{name}.training_rows.npy").is_file()
    assert not (zoo / "cnn.keras").exists()  # wine's 13 features are no 8x8 images


def test_metrics_match_an_independent_recomputation(mean_run):
    result, output_dir, zoo = mean_run
    assert json.loads((output_dir / "metrics.json").read_text()) == result
    assert sorted(result["members"]) == sorted(MEMBERS) and result["combiner"] == "MeanCombiner"
    data = load_dataset("wine")
    probabilities = member_probabilities(zoo, data.x_test)
    for name, p in probabilities.items():
        assert result["members"][name]["accuracy"] == pytest.approx(accuracy_score(data.y_test, p.argmax(1)))
    mean = np.mean(list(probabilities.values()), axis=0)
    assert result["ensemble"]["accuracy"] == pytest.approx(accuracy_score(data.y_test, mean.argmax(1)))
    assert result["ensemble"]["nll"] == pytest.approx(log_loss(data.y_test, mean, labels=range(3)), abs=1e-5)


def test_the_export_is_verified_and_serves_the_mean(mean_run):
    result, _, zoo = mean_run
    manifest = ensemble.read_manifest(result["export_dir"])
    assert [m["name"] for m in manifest["members"]] == MEMBERS
    x = load_dataset("wine").x_test[:5]
    served = tf.saved_model.load(result["export_dir"]).signatures["prediction"](features=tf.constant(x))
    expected = np.mean(list(member_probabilities(zoo, x).values()), axis=0)
    np.testing.assert_allclose(served["prediction"].numpy(), expected, atol=1e-5)
    assert sorted(result["tflite"]) == ["float", "float16", "none"]
    assert result["tflite"]["none"]["max_abs_diff"] < 1e-5


def test_command_line_reuses_the_zoo(mean_run, wine_overrides, tmp_path):
    _, _, zoo = mean_run
    before = {p.name: p.stat().st_mtime_ns for p in zoo.iterdir()}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.compose",
            *wine_overrides,
            "combiner=vote",
            "export=none",
            f"hydra.run.dir={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "metrics.json").read_text())["combiner"] == "VoteCombiner"
    assert {p.name: p.stat().st_mtime_ns for p in zoo.iterdir()} == before  # nothing retrained
