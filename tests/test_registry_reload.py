"""A served answer comes from the model on disk now (invariant 8, issue 28 item 2): the registry
notices an unversioned export overwritten on disk and a version removed and published again
under its number, by the export's manifest identity, and loads again before it answers, through
`ModelRegistry.predict` and over HTTP; an export left as it was is not loaded again. A member file, a member's SavedModel or an `.onnx`
file, which carry no identity, are watched by `os.stat` of what a load reads."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import combiners
import ensemble
from ensemble.errors import ModelLoadError
from ensemble.serve.catalog import Catalog
from ensemble.serve.http import create_app, running
from tests.conftest import TINY_FEATURES, tiny_model
from tests.test_http_api import call

X = np.random.default_rng(5).normal(size=(6, TINY_FEATURES)).astype("float32")


def tiny_ensemble(seed: int):
    members = [ensemble.load_member(tiny_model(10 * seed + i), name=f"m{i}") for i in range(2)]
    return ensemble.build_ensemble(members, combiners.MeanCombiner())


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Two tiny ensembles that answer differently, each exported once (copied where a test
    needs it on disk, which is a fresh export with its own identity only when re-exported)."""
    root = tmp_path_factory.mktemp("reload")
    models = [tiny_ensemble(seed) for seed in (1, 2)]
    answers = [np.asarray(m(X)["prediction"]) for m in models]
    assert not np.allclose(answers[0], answers[1], atol=1e-3)
    paths = [ensemble.export_saved_model(m, root / f"export{i}") for i, m in enumerate(models)]
    return models, answers, paths


@pytest.mark.slow
def test_predict_serves_the_export_that_is_on_disk_now(pair, tmp_path):
    models, answers, _ = pair
    path = tmp_path / "export"
    ensemble.export_saved_model(models[0], path)
    registry = ensemble.ModelRegistry()
    registry.register("zoo", path)
    np.testing.assert_allclose(registry.predict("zoo", X)["prediction"], answers[0], atol=1e-6)
    registry.predict("zoo", X)
    os.utime(path / "assets.extra" / "manifest.json")  # touched, not replaced: no new load
    registry.predict("zoo", X)
    assert registry.stats("zoo").loads == 1

    for model, answer in ((models[1], answers[1]), (models[0], answers[0])):
        ensemble.export_saved_model(model, path, overwrite=True)
        np.testing.assert_allclose(registry.predict("zoo", X)["prediction"], answer, atol=1e-6)
    assert registry.stats("zoo").loads == 3 and registry.signature("zoo").inputs

    shutil.rmtree(path)  # gone from disk: an error, never the model still in memory
    with pytest.raises(ModelLoadError, match="zoo"):
        registry.predict("zoo", X)
    assert registry.loaded == []


def test_a_graph_written_over_in_place_under_its_old_manifest_is_loaded_again(pair, tmp_path):
    """The manifest's identity stands for the export only while its graph and variables are
    the ones beside it: their files copied over in place (the manifest kept) is a new model."""
    _, answers, paths = pair
    exports = [Path(p) for p in paths]
    path = tmp_path / "export"
    shutil.copytree(exports[0], path)
    registry = ensemble.ModelRegistry()
    registry.register("zoo", path)
    np.testing.assert_allclose(registry.predict("zoo", X)["prediction"], answers[0], atol=1e-6)
    shutil.copyfile(exports[1] / "saved_model.pb", path / "saved_model.pb")  # written over, same inode
    shutil.rmtree(path / "variables")
    shutil.copytree(exports[1] / "variables", path / "variables")
    np.testing.assert_allclose(registry.predict("zoo", X)["prediction"], answers[1], atol=1e-6)
    assert registry.stats("zoo").loads == 2


@pytest.mark.slow
def test_a_load_that_spans_an_overwrite_is_done_again(pair, tmp_path, monkeypatch):
    models, answers, _ = pair
    path = tmp_path / "export"
    ensemble.export_saved_model(models[0], path)
    real_load, calls = tf.saved_model.load, []

    def load_then_overwrite(where, *args, **kwargs):  # the export replaced as it is read
        root = real_load(where, *args, **kwargs)
        calls.append(where)
        if len(calls) == 1:
            ensemble.export_saved_model(models[1], path, overwrite=True)
        return root

    monkeypatch.setattr(tf.saved_model, "load", load_then_overwrite)
    registry = ensemble.ModelRegistry()
    registry.register("zoo", path)
    np.testing.assert_allclose(registry.predict("zoo", X)["prediction"], answers[1], atol=1e-6)
    assert len(calls) == 2 and registry.stats("zoo").loads == 1


@pytest.mark.slow
def test_over_http_a_replaced_export_and_a_republished_version_answer_anew(pair, tmp_path):
    models, answers, exports = pair
    single, base = tmp_path / "single", tmp_path / "zoo"
    shutil.copytree(exports[0], single)
    for version, export in ((1, exports[0]), (2, exports[1])):
        shutil.copytree(export, base / str(version))
    catalog = Catalog(ensemble.ModelRegistry())
    catalog.register("single", single)
    catalog.register("zoo", base)

    def answer(url: str, path: str) -> np.ndarray:
        code, body = call(url, path, {"inputs": X.tolist()})
        assert code == 200, body
        return np.asarray(body["outputs"]["prediction"], dtype="float32")

    with running(create_app(catalog)) as url:
        np.testing.assert_allclose(answer(url, "/v1/models/single:predict"), answers[0], atol=1e-5)
        np.testing.assert_allclose(answer(url, "/v1/models/zoo/versions/2:predict"), answers[1], atol=1e-5)
        np.testing.assert_allclose(answer(url, "/v1/models/zoo:predict"), answers[1], atol=1e-5)

        ensemble.export_saved_model(models[1], single, overwrite=True)  # replaced on disk
        np.testing.assert_allclose(answer(url, "/v1/models/single:predict"), answers[1], atol=1e-5)

        shutil.rmtree(base / "2")  # version 2 withdrawn, then published again as another model
        ensemble.export_version(models[0], base, version=2)
        np.testing.assert_allclose(answer(url, "/v1/models/zoo/versions/2:predict"), answers[0], atol=1e-5)
        np.testing.assert_allclose(answer(url, "/v1/models/zoo:predict"), answers[0], atol=1e-5)
        states = {v["version"]: v["state"] for v in call(url, "/v1/models/zoo")[1]["model_version_status"]}
        assert states == {"2": "AVAILABLE", "1": "AVAILABLE"}

        shutil.rmtree(single)
        code, body = call(url, "/v1/models/single:predict", {"inputs": X.tolist()})
        assert code in (404, 503) and "single" in body["error"], body


def _replace(path, write) -> None:
    """`write(staging)` another model, then rename it over `path` in one step (as a deploy does)."""
    staging = path.with_name("staging" + path.suffix)
    write(staging)
    os.replace(staging, path)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
@pytest.mark.slow
def test_a_member_file_replaced_on_disk_is_loaded_again(tmp_path, suffix):
    first, second = tiny_model(31), tiny_model(32)
    answers = [np.asarray(model(X)) for model in (first, second)]
    assert not np.allclose(answers[0], answers[1], atol=1e-3)
    path = tmp_path / f"member{suffix}"
    first.save(path)
    registry = ensemble.ModelRegistry()
    registry.register("member", path)
    np.testing.assert_allclose(registry.predict("member", X), answers[0], atol=1e-6)
    _replace(path, second.save)
    np.testing.assert_allclose(registry.predict("member", X), answers[1], atol=1e-6)
    registry.predict("member", X)
    assert registry.stats("member").loads == 2
    path.unlink()
    with pytest.raises(ModelLoadError, match="member"):
        registry.predict("member", X)


@pytest.mark.slow
def test_an_onnx_file_replaced_on_disk_is_loaded_again(pair, tmp_path):
    pytest.importorskip("onnxruntime")
    models, answers, _ = pair
    path = tmp_path / "zoo.onnx"
    ensemble.export_onnx(models[0], path)
    registry = ensemble.ModelRegistry()
    registry.register("zoo", path)
    np.testing.assert_allclose(registry.predict("zoo", X)["prediction"], answers[0], atol=1e-5)
    _replace(path, lambda staging: ensemble.export_onnx(models[1], staging))
    np.testing.assert_allclose(registry.predict("zoo", X)["prediction"], answers[1], atol=1e-5)
    assert registry.stats("zoo").loads == 2


def test_a_checkpoints_architecture_file_replaced_on_disk_is_loaded_again(tmp_path):
    # A checkpoint member is its weights and the architecture file the load reads besides:
    # another architecture (a sigmoid head on the same weights) renamed over it is noticed.
    def net(final: str) -> keras.Model:
        keras.utils.set_random_seed(1)
        return keras.Sequential(
            [keras.Input((TINY_FEATURES,)), keras.layers.Dense(3, activation=final, name="d")]
        )

    trained = net("softmax")
    prefix = tf.train.Checkpoint(model=trained).write(str(tmp_path / "ckpt" / "c"))
    trained.save(tmp_path / "arch.keras")
    registry = ensemble.ModelRegistry()
    registry.register("ck", prefix, architecture=str(tmp_path / "arch.keras"))
    np.testing.assert_allclose(registry.predict("ck", X), np.asarray(trained(X)), atol=1e-6)
    net("sigmoid").save(tmp_path / "staging.keras")
    os.replace(tmp_path / "staging.keras", tmp_path / "arch.keras")
    expected = ensemble.load_member(prefix, name="fresh", architecture=str(tmp_path / "arch.keras"))
    np.testing.assert_allclose(registry.predict("ck", X), np.asarray(expected(X)), atol=1e-6)
    assert registry.stats("ck").loads == 2
