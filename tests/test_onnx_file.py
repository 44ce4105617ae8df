"""export_onnx, the file: its manifest and opset, its check, and its refusals (existing files,
directories, non-exports, bad opsets, unconvertible ops, a missing extra), each writing nothing;
and the main job writing it from config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import onnx
import pytest
import tensorflow as tf

import combiners
import ensemble
from ensemble.export import read_onnx_manifest, run_onnx
from ensemble.export.onnx import ONNX_MANIFEST_KEY, _difference
from tests.conftest import CLASSES, FEATURES, compose_config, dense_classifier, two_input_ensemble

ATOL = 1e-5


def rows(n: int, seed: int = 0, features: int = FEATURES) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, features)).astype("float32")


@pytest.mark.slow
def test_manifest_travels_in_the_metadata_and_opset_is_honoured(tmp_path):
    model = two_input_ensemble()
    export = ensemble.export_saved_model(model, tmp_path / "export", config="combiner: mean\n")
    path = ensemble.export_onnx(export, tmp_path / "e.onnx", opset=17)
    proto = onnx.load(path)
    onnx.checker.check_model(proto)
    assert {o.domain: o.version for o in proto.opset_import}[""] == 17
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props[ONNX_MANIFEST_KEY]) == ensemble.read_manifest(export) == read_onnx_manifest(path)
    assert sorted(o.name for o in proto.graph.output) == read_onnx_manifest(path)["outputs"]
    from_model = read_onnx_manifest(ensemble.export_onnx(model, tmp_path / "m.onnx"))
    assert from_model["members"] == ensemble.read_manifest(export)["members"]


def test_refusals_write_nothing(tmp_path):
    model = ensemble.build_ensemble(
        [ensemble.load_member(dense_classifier(0), name="m")], combiners.MeanCombiner()
    )
    path = ensemble.export_onnx(model, tmp_path / "m.onnx")
    before = Path(path).read_bytes()
    with pytest.raises(FileExistsError, match="already exists; pass overwrite=True"):
        ensemble.export_onnx(model, path)
    assert Path(path).read_bytes() == before
    assert ensemble.export_onnx(model, path, overwrite=True) == path
    with pytest.raises(ensemble.EnsembleError, match="is a directory; expected a file"):
        ensemble.export_onnx(model, tmp_path)
    (tmp_path / "not_an_export").mkdir()
    (tmp_path / "not_an_export" / "saved_model.pb").write_bytes(b"")
    with pytest.raises(ensemble.EnsembleError, match=r"holds no exported ensemble \(no assets.extra"):
        ensemble.export_onnx(tmp_path / "not_an_export", tmp_path / "x.onnx")
    with pytest.raises(ensemble.EnsembleError, match=r"Expected opset to be an integer in \[13, 18\]"):
        ensemble.export_onnx(model, tmp_path / "x.onnx", opset=7)
    with pytest.raises(ensemble.EnsembleError, match="Expected an ensemble"):
        ensemble.export_onnx(3, tmp_path / "x.onnx")  # type: ignore[arg-type]
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "not_an_export"]


class _Igamma(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, FEATURES], tf.float32, name="x")])
    def __call__(self, x):
        return {"p": tf.nn.softmax(tf.math.igamma(x[:, :CLASSES] ** 2 + 1.0, x[:, :CLASSES] ** 2))}


def _igamma_ensemble(directory: Path) -> keras.Model:
    """An ensemble of one SavedModel member computing `Igamma`, which tf2onnx cannot convert."""
    module = _Igamma()
    tf.saved_model.save(
        module, os.fspath(directory / "igamma"), signatures={"serving_default": module.__call__}
    )
    member = ensemble.load_member(directory / "igamma", name="igamma", output="probabilities")
    return ensemble.build_ensemble([member], combiners.MeanCombiner())


def test_ops_without_an_onnx_conversion_are_named(tmp_path):
    model = _igamma_ensemble(tmp_path)
    with pytest.raises(ensemble.EnsembleError, match=r"cannot convert the TensorFlow ops \['Igamma'\]"):
        ensemble.export_onnx(model, tmp_path / "igamma.onnx")
    assert not (tmp_path / "igamma.onnx").exists()
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".igamma.onnx")]


def test_the_main_jobs_export_fails_on_its_onnx_file_before_writing_the_saved_model(tmp_path):
    from omegaconf import OmegaConf

    from experiments.exporting import export

    model = _igamma_ensemble(tmp_path)
    cfg = OmegaConf.create({"export": {"dir": "export", "overwrite": False, "verify": True, "onnx": True}})
    out = tmp_path / "job"
    out.mkdir()
    with pytest.raises(ensemble.EnsembleError, match=r"cannot convert the TensorFlow ops \['Igamma'\]"):
        export(model, cfg, str(out), data=None)  # type: ignore[arg-type]
    assert os.listdir(out) == []  # no SavedModel, no staged .onnx


def test_the_check_compares_values_nans_and_sets():
    a = np.array([[0.5, 0.5], [np.nan, np.nan]], "float32")
    assert _difference(a, a.copy()) is None
    assert _difference(a + 5e-6, a) is None
    assert "max gap 2e-05" in _difference(a + 2e-5, a)
    assert "NaN or inf" in _difference(np.zeros_like(a), a)  # a NaN row that became a number
    assert _difference(np.full(2, 300.002, "float32"), np.full(2, 300.0, "float32")) is None  # relative
    assert "instead of float32[2, 2]" in _difference(a[:1], a)
    sets = np.array([[True, False]])
    assert _difference(sets, sets.copy()) is None
    assert "1 values differ" in _difference(np.array([[True, True]]), sets)


_WITHOUT_ONNX = textwrap.dedent(
    """
    import sys
    sys.modules["tf2onnx"] = None  # as if the onnx extra were not installed
    import numpy as np, keras, combiners, ensemble
    model = ensemble.build_ensemble([ensemble.load_member(
        keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, activation="softmax")]), name="m")],
        combiners.MeanCombiner())
    try:
        ensemble.export_onnx(model, sys.argv[1])
    except ensemble.EnsembleError as error:
        print("ERROR:", error)
    """
)


@pytest.mark.slow
def test_without_the_extra_the_package_imports_and_export_names_it(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_ONNX, os.fspath(tmp_path / "m.onnx")],
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "tf2onnx is not installed" in done.stdout and 'pip install -e ".[onnx]"' in done.stdout
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.slow
def test_the_main_job_writes_the_onnx_file_from_config(wine_overrides, tmp_path):
    from experiments.run import run

    result = run(
        compose_config(*wine_overrides, "export.onnx=true", "export.tflite=[]"), output_dir=str(tmp_path)
    )
    assert json.loads((tmp_path / "metrics.json").read_text())["onnx"] == result["onnx"]
    path = result["onnx"]["path"]
    assert path == os.path.join(result["export_dir"], "ensemble.onnx") and result["onnx"]["bytes"] > 0
    assert result["onnx"]["max_abs_diff"] < ATOL
    manifest = read_onnx_manifest(path)
    exported = ensemble.read_manifest(result["export_dir"])
    assert exported.pop("identity") and manifest == exported  # the SavedModel's identity is its own
    features = manifest["inputs"]["features"]["shape"][1]
    served = run_onnx(path, {"features": rows(5, features=features)})
    assert served["prediction"].shape == (5, manifest["width"])
    default = run(
        compose_config(*wine_overrides, "export.tflite=[]"), output_dir=str(_made(tmp_path / "plain"))
    )
    assert "onnx" not in default and not list((tmp_path / "plain").rglob("*.onnx"))


def _made(path: Path) -> Path:
    path.mkdir()
    return path
