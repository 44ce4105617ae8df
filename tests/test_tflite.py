"""export_tflite: each quantization runs in LiteRT and is measured against the float ensemble."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf

import combiners
import ensemble
from tests.legacy_formats import DenseNet, write_tf1_saved_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A .keras member, a TF1 SavedModel member and a TF2 SavedModel member, big enough that
    dynamic-range quantization applies (it skips tensors under 1024 values)."""
    root = tmp_path_factory.mktemp("tflite_members")
    nets = [DenseNet.random(sizes=(64, 128, 10), seed=s) for s in range(3)]
    nets[0].to_keras().save(root / "a.keras")
    write_tf1_saved_model(root / "b_tf1", nets[1])
    nets[2].to_keras().export(os.fspath(root / "c"), verbose=False)
    members = [
        ensemble.load_member(root / "a.keras", name="a"),
        ensemble.load_member(root / "b_tf1", name="b", output="probabilities"),
        ensemble.load_member(root / "c", name="c", output="probabilities"),
    ]
    return ensemble.build_ensemble(members, combiners.StackingCombiner())


@pytest.fixture(scope="module")
def data():
    x = np.random.default_rng(0).normal(size=(300, 64)).astype("float32")
    return x


@pytest.fixture(scope="module")
def variants(model, tmp_path_factory):
    root = tmp_path_factory.mktemp("tflite")
    return {
        q: ensemble.export_tflite(model, root / f"{q}.tflite", quantize=q) for q in ensemble.QUANTIZATIONS
    }


def test_float_variant_equals_the_ensemble_on_every_output(model, variants, data):
    served = ensemble.run_tflite(variants["none"], {"features": data})
    expected = model.predict(data, verbose=0)
    assert sorted(served) == sorted(expected)
    for key in expected:
        np.testing.assert_allclose(served[key], expected[key], atol=1e-5, err_msg=key)


def test_report_measures_size_and_quality_of_each_variant(model, variants, data):
    y = model.predict(data, verbose=0)["prediction"].argmax(-1)  # labels the float model gets right
    report = ensemble.tflite_report(model, variants, data, y)
    assert report["float"]["accuracy"] == 1.0
    assert report["none"]["max_abs_diff"] < 1e-5 and report["none"]["agreement"] == 1.0
    # Quantized weights are smaller files, and still close to the float model.
    assert report["dynamic"]["bytes"] < 0.4 * report["none"]["bytes"]
    assert report["float16"]["bytes"] < 0.6 * report["none"]["bytes"]
    for q in ("dynamic", "float16"):
        assert report[q]["agreement"] > 0.9 and report[q]["max_abs_diff"] < 0.2, (q, report[q])
    assert report["float16"]["max_abs_diff"] < 1e-2


def test_tflite_errors(model, variants, tmp_path):
    with pytest.raises(
        ensemble.EnsembleError, match=r"Expected quantize in \('none', 'dynamic', 'float16'\)"
    ):
        ensemble.export_tflite(model, tmp_path / "x.tflite", quantize="int4")
    with pytest.raises(FileExistsError, match="already exists; pass overwrite=True"):
        ensemble.export_tflite(model, variants["none"])
    with pytest.raises(ensemble.EnsembleError, match=r"is a directory"):
        ensemble.export_tflite(model, tmp_path)


class _Bessel(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 64], tf.float32, name="x")])
    def __call__(self, x):
        return {"p": tf.nn.softmax(tf.math.special.bessel_i1e(x[:, :10]))}


def test_ops_tflite_cannot_take_are_named(tmp_path):
    module = _Bessel()
    tf.saved_model.save(
        module, os.fspath(tmp_path / "bessel"), signatures={"serving_default": module.__call__}
    )
    member = ensemble.load_member(tmp_path / "bessel", name="bessel", output="probabilities")
    model = ensemble.build_ensemble([member], combiners.MeanCombiner())
    with pytest.raises(
        ensemble.EnsembleError, match=r"ops \['BesselI1e'\] are outside TFLite's builtin op set"
    ):
        ensemble.export_tflite(model, tmp_path / "bessel.tflite")
    assert not (tmp_path / "bessel.tflite").exists()
