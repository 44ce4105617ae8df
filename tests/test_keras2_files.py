"""Models saved by tf_keras 2.x (Keras 2) load through `load_member` with tf_keras' own predictions.

One subprocess (`tests/tf_keras_writer.py`) builds every reference model with
tf_keras, saves it as `.keras`, `.h5` and (some) SavedModel, and records its
predictions; this process never imports tf_keras and runs Keras 3 only.
"""

from __future__ import annotations

import json
import os
import sys
import zipfile
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

import ensemble
from ensemble.errors import MemberError

# tf-keras is in the test extra: without it the writer subprocess fails, and the tests with it
# (a skip would hide a broken install).
pytestmark = pytest.mark.slow  # the writer subprocess takes 15-30 s

ATOL = 1e-5


@pytest.fixture(scope="module")
def ref(tf_keras_files: Path) -> Path:
    """The directory of tf_keras-written models and their recorded predictions (written once
    per run by tests/conftest.py's `tf_keras_files`, shared with test_onnx_serving)."""
    return tf_keras_files


def _predict(member: Any, ref: Path, model: str) -> np.ndarray:
    """The member's predictions on the inputs tf_keras was given, in the member's input order."""
    xs = [np.load(p) for p in sorted(ref.glob(f"{model}_x*.npy"))]
    if len(xs) == 1:
        return np.asarray(member(xs[0]))
    by_name = {"left": xs[0], "right": xs[1]}  # the writer's functional model's inputs
    return np.asarray(member([by_name[spec.name] for spec in member.input_specs]))


SUFFIX = {"keras": ".keras", "h5": ".h5", "saved_model": "_sm"}
LOADED = [
    *[(m, f) for m in ("dense", "functional", "batchnorm", "conv", "sequence") for f in SUFFIX],
    ("nested", "keras"),
    ("nested", "h5"),
    ("mixed", "keras"),
    ("mixed", "h5"),
    ("tf_op", "saved_model"),
]


@pytest.mark.parametrize(("model", "fmt"), LOADED, ids=[f"{m}-{f}" for m, f in LOADED])
def test_tf_keras_file_loads_with_its_predictions(ref: Path, model: str, fmt: str) -> None:
    member = ensemble.load_member(str(ref / f"{model}{SUFFIX[fmt]}"), name=model)
    assert member.format == fmt  # detected from the path
    np.testing.assert_allclose(_predict(member, ref, model), np.load(ref / f"{model}_y.npy"), atol=ATOL)


def test_translated_model_is_plain_keras3(ref: Path) -> None:
    """Class `Functional` becomes a Keras 3 functional model with explicit inputs and the
    softmax output visible, so the member's output kind is inferred as for Keras 3 files."""
    member = ensemble.load_member(str(ref / "functional.keras"), name="f")
    assert type(member.model).__name__ == "Functional"
    assert [spec.name for spec in member.input_specs] == ["left", "right"]
    assert [spec.shape for spec in member.input_specs] == [(5,), (3,)]
    assert member.output_kind == "probabilities"
    dense = ensemble.load_member(str(ref / "dense.keras"), name="d")
    assert isinstance(dense.model, keras.Sequential)
    assert dense.input_specs[0].shape == (8,) and dense.output_kind == "probabilities"


def test_lambda_loads_only_with_safe_mode_off(ref: Path) -> None:
    path = str(ref / "lambda.keras")
    with pytest.raises(MemberError, match=r"lambda\.keras.*layer 'lambda' \(Lambda\).*safe_mode"):
        ensemble.load_member(path, name="l")
    member = ensemble.load_member(path, name="l", safe_mode=False)
    np.testing.assert_allclose(_predict(member, ref, "lambda"), np.load(ref / "lambda_y.npy"), atol=ATOL)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_raw_tf_op_is_a_clear_error(ref: Path, suffix: str) -> None:
    with pytest.raises(MemberError, match=rf"tf_op\{suffix}.*'tf\.nn\.relu' \(TFOpLambda\).*SavedModel"):
        ensemble.load_member(str(ref / f"tf_op{suffix}"), name="t")


def _patched(ref: Path, model: str, tmp_path: Path, edit: Any) -> str:
    """A copy of `model.keras` whose config.json went through `edit(config)`."""
    path = tmp_path / f"{model}_patched.keras"
    with zipfile.ZipFile(ref / f"{model}.keras") as src, zipfile.ZipFile(path, "w") as dst:
        for item in src.namelist():
            data = src.read(item)
            if item == "config.json":
                config = json.loads(data)
                edit(config)
                data = json.dumps(config).encode()
            dst.writestr(item, data)
    return str(path)


def test_untranslatable_field_names_layer_and_field(ref: Path, tmp_path: Path) -> None:
    def time_major(config: dict[str, Any]) -> None:
        config["config"]["layers"][2]["config"]["time_major"] = True

    path = _patched(ref, "sequence", tmp_path, time_major)
    with pytest.raises(MemberError, match=r"sequence_patched\.keras.*'lstm' \(LSTM\): time_major=True"):
        ensemble.load_member(path, name="s")


def test_layer_gone_in_keras3_is_named(ref: Path, tmp_path: Path) -> None:
    def gone(config: dict[str, Any]) -> None:
        config["config"]["layers"][2]["class_name"] = "LocallyConnected1D"

    with pytest.raises(MemberError, match=r"'dense_1' \(LocallyConnected1D\).*does not exist in Keras 3"):
        ensemble.load_member(_patched(ref, "dense", tmp_path, gone), name="d")


def test_unknown_argument_is_named_by_layer(ref: Path, tmp_path: Path) -> None:
    def extra(config: dict[str, Any]) -> None:
        config["config"]["layers"][1]["config"]["fancy_option"] = 3

    with pytest.raises(MemberError, match=r"layer 'dense' \(Dense\).*fancy_option"):
        ensemble.load_member(_patched(ref, "dense", tmp_path, extra), name="d")


def test_keras3_in_this_process_is_untouched(ref: Path) -> None:
    ensemble.load_member(str(ref / "dense.keras"), name="d")
    assert "tf_keras" not in sys.modules
    assert "TF_USE_LEGACY_KERAS" not in os.environ
    assert keras.__version__.split(".")[0] == "3"
