"""safe_mode (the default) runs no code from a file or a dotted name: SavedModel graphs that touch
files, checkpoints or Python are refused before they load, and architecture strings never import."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

import combiners
import ensemble
from ensemble.members.untrusted import UNSAFE_OPS
from tests.legacy_formats import DenseNet, write_tf2_checkpoint

NET = DenseNet.random(sizes=(8, 16, 3), seed=31)
X = np.random.default_rng(5).normal(size=(4, 8)).astype("float32")
ROWS = np.arange(6, dtype="float32").reshape(3, 2)


def _save_module(path: Path, body) -> str:
    """A tiny `tf.Module` whose serving signature `x -> output_0` is `body(x)`."""
    module = tf.Module()
    module.serve = tf.function(body, input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
    tf.saved_model.save(module, os.fspath(path), signatures={"serving_default": module.serve})
    return os.fspath(path)


def test_a_signature_that_reads_a_file_is_refused_naming_the_op(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("12345")

    def read(x):
        length = tf.cast(tf.strings.length(tf.io.read_file(os.fspath(secret))), tf.float32)
        return {"output_0": tf.reduce_sum(x, axis=1, keepdims=True) + length}

    path = _save_module(tmp_path / "reader", read)
    with pytest.raises(ensemble.MemberError, match=r"Member 'reader'.*'ReadFile' \(file-system.*in function"):
        ensemble.load_member(path, name="reader")
    with pytest.raises(ensemble.MemberError, match=r"safe_mode=False"):
        ensemble.load_member(path, name="reader", safe_mode=True)
    member = ensemble.load_member(path, name="reader", safe_mode=False)  # trusted: it runs
    np.testing.assert_allclose(np.asarray(member(ROWS)), ROWS.sum(axis=1, keepdims=True) + 5)


@pytest.mark.parametrize("kind", ["sampler", "proto"])
def test_an_op_that_opens_a_file_named_by_an_attribute_is_refused(tmp_path, kind):
    # No tensor names the file: the op's attribute does (a sampler's vocab_file, a proto op's
    # descriptor_source), and the op opens it on load or on every call.
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("a,0\nb,0\nc,1000\n")

    def body(x):
        if kind == "sampler":
            sampled, _, _ = tf.random.fixed_unigram_candidate_sampler(
                tf.zeros((1, 1), tf.int64), 1, 1, True, 3, vocab_file=os.fspath(vocab)
            )
            extra = tf.cast(sampled[0], tf.float32)
        else:
            _, (value,) = tf.io.decode_proto(
                tf.constant([b""]), "tensorflow.TensorShapeProto", ["unknown_rank"], [tf.bool],
                descriptor_source=os.fspath(vocab),
            )  # fmt: skip
            extra = tf.cast(tf.size(value), tf.float32)
        return {"output_0": tf.reduce_sum(x, axis=1, keepdims=True) + extra}

    path = _save_module(tmp_path / kind, body)
    op = "FixedUnigramCandidateSampler" if kind == "sampler" else "DecodeProtoV2"
    with pytest.raises(ensemble.MemberError, match=rf"'{op}' \(file-system"):
        ensemble.load_member(path, name=kind)


def test_a_signature_that_calls_python_is_refused(tmp_path):
    def call_python(x):
        y = tf.py_function(lambda t: t * 2.0, [x], tf.float32)
        return {"output_0": tf.reshape(y, [-1, 2])}

    path = _save_module(tmp_path / "python", call_python)
    with pytest.raises(ensemble.MemberError, match=r"Member 'py'.*'EagerPyFunc' \(Python-calling"):
        ensemble.load_member(path, name="py")


def test_an_ordinary_keras_export_loads_though_its_saving_functions_hold_checkpoint_ops(tmp_path):
    path = os.fspath(tmp_path / "exported")
    NET.to_keras().export(path, verbose=False)
    proto = saved_model_pb2.SavedModel.FromString((Path(path) / "saved_model.pb").read_bytes())
    ops = {node.op for f in proto.meta_graphs[0].graph_def.library.function for node in f.node_def}
    assert {"SaveV2", "RestoreV2"} <= ops & UNSAFE_OPS["checkpoint"]  # in its _traced_save/restore
    member = ensemble.load_member(path, name="exported", output="probabilities")
    np.testing.assert_allclose(np.asarray(member(X)), NET.predict(X), atol=1e-5)


def test_a_tf1_init_op_that_writes_a_file_is_refused_before_it_runs(tmp_path):
    marker, path = tmp_path / "written", os.fspath(tmp_path / "tf1")
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        x = tf.compat.v1.placeholder(tf.float32, [None, 2], name="x")
        signature = tf.compat.v1.saved_model.predict_signature_def({"x": x}, {"y": x * 2.0})
        builder = tf.compat.v1.saved_model.Builder(path)
        builder.add_meta_graph_and_variables(
            session,
            ["serve"],
            signature_def_map={"serving_default": signature},
            main_op=tf.io.write_file(os.fspath(marker), "loaded"),
        )
        builder.save()
    with pytest.raises(ensemble.MemberError, match=r"Member 'tf1'.*'WriteFile'.*the graph's init op"):
        ensemble.load_member(path, name="tf1")
    assert not marker.exists()
    member = ensemble.load_member(path, name="tf1", safe_mode=False)
    assert marker.read_text() == "loaded"  # loading ran it: what safe_mode kept from running
    np.testing.assert_allclose(np.asarray(member(ROWS)), ROWS * 2.0)


@pytest.fixture
def builder_module(tmp_path, monkeypatch):
    """A module `untrusted_builder` on sys.path: importing it and calling `build` leave markers."""
    (tmp_path / "untrusted_builder.py").write_text(
        "import pathlib\n"
        f"pathlib.Path({os.fspath(tmp_path / 'imported')!r}).write_text('yes')\n"
        "def build():\n"
        f"    pathlib.Path({os.fspath(tmp_path / 'called')!r}).write_text('yes')\n"
        "    from tests.legacy_formats import DenseNet\n"
        "    return DenseNet.random(sizes=(8, 16, 3), seed=9).to_keras()\n"
    )
    (tmp_path / "arch.py").write_text(
        f"import pathlib\npathlib.Path({os.fspath(tmp_path / 'imported')!r}).touch()\n"
    )
    monkeypatch.syspath_prepend(os.fspath(tmp_path))
    yield tmp_path
    for name in ("untrusted_builder", "arch"):
        sys.modules.pop(name, None)


@pytest.fixture
def checkpoint(tmp_path) -> str:
    return write_tf2_checkpoint(tmp_path / "ckpt" / "model", NET, root="net")


@pytest.mark.parametrize("dotted", ["untrusted_builder.build", "untrusted_builder:build", "os.getcwd"])
def test_a_dotted_architecture_is_not_imported_in_safe_mode(builder_module, checkpoint, dotted):
    with pytest.raises(ensemble.MemberError, match=r"Member 'ck'.*import path.*safe_mode=False"):
        ensemble.load_member(checkpoint, name="ck", architecture=dotted)
    assert not (builder_module / "imported").exists() and not (builder_module / "called").exists()
    assert "untrusted_builder" not in sys.modules


def test_a_dotted_architecture_is_imported_and_called_with_safe_mode_off(builder_module, checkpoint):
    member = ensemble.load_member(
        checkpoint, name="ck", architecture="untrusted_builder.build", safe_mode=False
    )
    assert (builder_module / "called").exists()
    np.testing.assert_allclose(np.asarray(member(X)), NET.predict(X), atol=1e-5)


def test_an_architecture_file_that_does_not_exist_imports_nothing(builder_module, checkpoint):
    for safe_mode in (True, False):  # a file name is never an import path, even when trusted
        with pytest.raises(ensemble.MemberError, match=r"Member 'ck'.*architecture file 'arch\.h5' does not"):
            ensemble.load_member(checkpoint, name="ck", architecture="arch.h5", safe_mode=safe_mode)
    assert not (builder_module / "imported").exists() and "arch" not in sys.modules


def test_architecture_as_json_h5_or_registered_name_loads_in_safe_mode(tmp_path, checkpoint):
    blank = DenseNet.random(sizes=(8, 16, 3), seed=4).to_keras()
    (tmp_path / "arch.json").write_text(blank.to_json())
    blank.save(tmp_path / "arch.h5")

    @keras.saving.register_keras_serializable(package="test_untrusted", name="blank")
    def build_blank() -> keras.Model:
        return DenseNet.random(sizes=(8, 16, 3), seed=8).to_keras()

    for architecture in (tmp_path / "arch.json", os.fspath(tmp_path / "arch.h5"), "test_untrusted>blank"):
        member = ensemble.load_member(checkpoint, name="ck", architecture=architecture)
        np.testing.assert_allclose(np.asarray(member(X)), NET.predict(X), atol=1e-5)


def test_a_served_export_whose_graph_writes_a_file_is_refused_before_it_loads(tmp_path):
    """A SavedModel given a project export's manifest is served only if its graph passes the
    same check as a member's: it never runs, in the registry or over HTTP (a 503 naming it)."""
    from ensemble.serve.catalog import Catalog
    from ensemble.serve.http import create_app, running
    from tests.test_http_api import call

    marker = tmp_path / "written"

    def write(x):
        with tf.control_dependencies([tf.io.write_file(os.fspath(marker), "ran")]):
            return {"prediction": tf.nn.softmax(x)}

    real = ensemble.build_ensemble(
        [ensemble.load_member(keras.Sequential([keras.Input((2,)), keras.layers.Softmax()]), name="a")],
        combiners.MeanCombiner(),
    )
    ensemble.export_saved_model(real, tmp_path / "real")
    evil = _save_module(tmp_path / "evil", write)
    shutil.copytree(tmp_path / "real" / "assets.extra", Path(evil) / "assets.extra")
    registry = ensemble.ModelRegistry()
    registry.register("evil", evil)
    with pytest.raises(ensemble.EnsembleError, match=r"would run op 'WriteFile'.*runs no export whose graph"):
        registry.predict("evil", ROWS)
    catalog = Catalog(ensemble.ModelRegistry())
    catalog.register("evil", evil)
    catalog.register("real", tmp_path / "real")
    with running(create_app(catalog)) as url:
        code, body = call(url, "/v1/models/evil:predict", {"instances": ROWS.tolist()})
        assert code == 503 and "WriteFile" in body["error"] and str(tmp_path) not in body["error"], body
        code, body = call(url, "/v1/models/real:predict", {"instances": ROWS.tolist()})
        assert code == 200, body  # a project export holds none of those ops
    assert not marker.exists()
