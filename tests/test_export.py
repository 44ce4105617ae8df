"""export_saved_model: one self-contained SavedModel, served without this project, never half-written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import combiners
import ensemble
from ensemble.export import saved_model as export_module
from tests.conftest import two_input_ensemble
from tests.legacy_formats import DenseNet, write_tf1_saved_model

# Runs in a fresh process where this project cannot be imported (nor Keras: the
# export must need TensorFlow alone), calls every signature, saves the outputs.
_SERVE = textwrap.dedent(
    """
    import sys
    for blocked in ("ensemble", "combiners", "keras"):
        sys.modules[blocked] = None  # any import of them now raises ImportError
    import numpy as np, tensorflow as tf
    path, *files = sys.argv[1:]
    loaded = tf.saved_model.load(path)
    for feeds_file, out_file in zip(files[::2], files[1::2]):  # one batch after another
        feeds = dict(np.load(feeds_file))
        results = {}
        for key, function in loaded.signatures.items():
            for name, value in function(**{k: tf.constant(v) for k, v in feeds.items()}).items():
                results[f"{key}/{name}"] = value.numpy()
        np.savez(out_file, **results)
    """
)


def serve_in_fresh_process(
    path: str, batches: list[dict[str, np.ndarray]], tmp_path
) -> list[dict[str, np.ndarray]]:
    """Every signature's outputs for each batch of feeds, from one fresh process."""
    files = []
    for i, feeds in enumerate(batches):
        files += [tmp_path / f"feeds{i}.npz", tmp_path / f"out{i}.npz"]
        np.savez(files[-2], **feeds)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", _SERVE, path, *map(os.fspath, files)],
        cwd=tmp_path,
        env={**env, "TF_CPP_MIN_LOG_LEVEL": "3"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [dict(np.load(out)) for out in files[1::2]]


@pytest.fixture(scope="module")
def mixed_ensemble(tmp_path_factory):
    """Members from a .keras file, an .h5 file, a TF2 SavedModel and a TF1 SavedModel: built
    once for the module (no test fits or changes it; each exports it into its own directory)."""
    sources = tmp_path_factory.mktemp("mixed") / "members"
    sources.mkdir()
    nets = [DenseNet.random(sizes=(8, 16, 3), seed=s) for s in range(4)]
    nets[0].to_keras().save(sources / "a.keras")
    nets[1].to_keras().save(sources / "b.h5")
    nets[2].to_keras().export(os.fspath(sources / "c_savedmodel"), verbose=False)
    write_tf1_saved_model(sources / "d_tf1", nets[3])
    members = [
        ensemble.load_member(sources / "a.keras", name="a"),
        ensemble.load_member(sources / "b.h5", name="b"),
        ensemble.load_member(sources / "c_savedmodel", name="c", output="probabilities"),
        ensemble.load_member(sources / "d_tf1", name="d", output="probabilities"),
    ]
    model = ensemble.build_ensemble(members, combiners.StackingCombiner(passthrough=True))
    return model, sources


@pytest.mark.slow
def test_export_serves_without_member_files_or_this_project(tmp_path, mixed_ensemble):
    model, sources = mixed_ensemble
    rng = np.random.default_rng(0)
    batches = [rng.normal(size=(1, 8)).astype("float32"), rng.normal(size=(9, 8)).astype("float32")]
    expected = [{k: np.asarray(v) for k, v in model(x).items()} for x in batches]
    path = ensemble.export_saved_model(model, tmp_path / "export")
    # The export must not refer to the member files: they are gone while it serves (moved
    # away, and back for the module's other tests, which share the ensemble).
    shutil.move(sources, tmp_path / "moved")
    try:
        answers = serve_in_fresh_process(path, [{"features": x} for x in batches], tmp_path)
        for served, want in zip(answers, expected, strict=True):
            assert sorted(k for k in served if k.startswith("serving_default/")) == sorted(
                f"serving_default/{k}" for k in want
            )
            for key, value in want.items():
                np.testing.assert_allclose(served[f"serving_default/{key}"], value, atol=1e-6, err_msg=key)
            np.testing.assert_allclose(served["prediction/prediction"], want["prediction"], atol=1e-6)
    finally:
        shutil.move(tmp_path / "moved", sources)


def test_manifest_and_config_travel_as_plain_files(tmp_path, mixed_ensemble):
    model, sources = mixed_ensemble
    path = ensemble.export_saved_model(model, tmp_path / "export", config="combiner: stack\n")
    with open(os.path.join(path, "assets.extra", "manifest.json")) as f:
        manifest = json.load(f)
    assert manifest["task"] == "classification" and manifest["width"] == 3
    assert manifest["inputs"] == {"features": {"shape": [None, 8], "dtype": "float32"}}
    assert [(m["name"], m["format"]) for m in manifest["members"]] == [
        ("a", "keras"),
        ("b", "h5"),
        ("c", "saved_model"),
        ("d", "saved_model"),
    ]
    assert manifest["members"][0]["source"] == os.fspath(sources / "a.keras")
    assert manifest["combiner"]["class"] == "StackingCombiner"
    assert manifest["combiner"]["config"]["passthrough"] is True
    assert manifest["versions"]["tensorflow"] and manifest["versions"]["keras"]
    with open(os.path.join(path, "assets.extra", "config.yaml")) as f:
        assert f.read() == "combiner: stack\n"
    assert ensemble.read_manifest(path) == manifest


@pytest.mark.slow
def test_saved_model_cli_reads_and_runs_the_signature(tmp_path, mixed_ensemble):
    model, _ = mixed_ensemble
    path = ensemble.export_saved_model(model, tmp_path / "export")
    cli = [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    show = subprocess.run(
        [*cli, "show", "--dir", path, "--tag_set", "serve", "--signature_def", "serving_default"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert show.returncode == 0, show.stderr[-2000:]
    assert "inputs['features']" in show.stdout and "shape: (-1, 8)" in show.stdout
    for key in ("prediction", "member_predictions", "entropy", "mutual_information", "disagreement"):
        assert f"outputs['{key}']" in show.stdout
    x = np.random.default_rng(1).normal(size=(2, 8)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    run = subprocess.run(
        [
            *cli,
            "run",
            "--dir",
            path,
            "--tag_set",
            "serve",
            "--signature_def",
            "prediction",
            "--inputs",
            f"features={tmp_path / 'x.npy'}",
            "--outdir",
            os.fspath(tmp_path / "cli"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    np.testing.assert_allclose(
        np.load(tmp_path / "cli" / "prediction.npy"), np.asarray(model(x)["prediction"]), atol=1e-6
    )


@pytest.mark.slow
def test_multi_input_ensemble_names_its_signature_inputs(tmp_path):
    model = two_input_ensemble()
    path = ensemble.export_saved_model(model, tmp_path / "export")
    import tensorflow as tf

    loaded = tf.saved_model.load(path)
    _, kwargs = loaded.signatures["serving_default"].structured_input_signature
    assert sorted(kwargs) == ["image", "meta"]
    feeds = {"image": np.ones((2, 4), "float32"), "meta": np.zeros((2, 2), "float32")}
    out = loaded.signatures["serving_default"](**{k: tf.constant(v) for k, v in feeds.items()})
    np.testing.assert_allclose(out["prediction"], model(feeds)["prediction"], atol=1e-6)


def _listing(directory):
    return sorted(
        (os.path.relpath(os.path.join(root, f), directory), os.path.getsize(os.path.join(root, f)))
        for root, _, files in os.walk(directory)
        for f in files
    )


@pytest.mark.slow
def test_an_existing_export_is_never_half_overwritten(tmp_path, mixed_ensemble, monkeypatch):
    model, _ = mixed_ensemble
    path = ensemble.export_saved_model(model, tmp_path / "export")
    before = _listing(path)
    with pytest.raises(FileExistsError, match=r"already exists and is not empty; pass overwrite=True"):
        ensemble.export_saved_model(model, path)
    assert _listing(path) == before

    import tensorflow as tf

    def fail_midway(obj, directory, *args, **kwargs):
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "saved_model.pb"), "w") as f:
            f.write("half")
        raise RuntimeError("disk full")

    # TensorFlow's SavedModel writer fails halfway through the export.
    monkeypatch.setattr(tf.saved_model, "save", fail_midway)
    with pytest.raises(RuntimeError, match="disk full"):
        ensemble.export_saved_model(model, path, overwrite=True)
    assert _listing(path) == before
    # No debris beside it: `export` is a plain directory, and nothing else was left.
    assert sorted(os.listdir(tmp_path)) == ["export"] and not os.path.islink(path)
    monkeypatch.undo()

    replaced = ensemble.export_saved_model(model, path, overwrite=True, config="x: 1\n")
    assert replaced == path and os.path.exists(os.path.join(path, "assets.extra", "config.yaml"))
    assert sorted(os.listdir(tmp_path)) == ["export"] and not os.path.islink(path)


def test_export_errors(tmp_path, mixed_ensemble, monkeypatch):
    model, _ = mixed_ensemble
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ensemble.EnsembleError, match=r"Export path .*file is a file"):
        ensemble.export_saved_model(model, a_file)
    plain = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
    with pytest.raises(ensemble.EnsembleError, match="is not an ensemble built by build_ensemble"):
        ensemble.export_saved_model(plain, tmp_path / "plain")
    with pytest.raises(ensemble.EnsembleError, match="Expected an ensemble built by build_ensemble"):
        ensemble.export_saved_model("model.keras", tmp_path / "str")
    with pytest.raises(FileNotFoundError, match="parent directory does not exist"):
        ensemble.export_saved_model(model, tmp_path / "no" / "such" / "dir")
    monkeypatch.setattr(export_module.os, "access", lambda *_: False)  # root ignores chmod
    with pytest.raises(PermissionError, match=r"no permission to write in"):
        ensemble.export_saved_model(model, tmp_path / "denied")
    assert not (tmp_path / "plain").exists() and not (tmp_path / "denied").exists()


@pytest.mark.slow
def test_xla_compiled_export_gives_the_same_outputs(tmp_path, mixed_ensemble):
    model, _ = mixed_ensemble
    path = ensemble.export_saved_model(model, tmp_path / "xla", jit_compile=True)
    import tensorflow as tf

    x = np.random.default_rng(3).normal(size=(5, 8)).astype("float32")
    served = tf.saved_model.load(path).signatures["serving_default"](features=tf.constant(x))
    for key, value in model(x).items():
        np.testing.assert_allclose(served[key], value, atol=1e-5, err_msg=key)


def test_overwrite_is_checked_again_when_the_export_moves_into_place(tmp_path, mixed_ensemble, monkeypatch):
    model, _ = mixed_ensemble
    target = tmp_path / "export"
    import tensorflow as tf

    real_save = tf.saved_model.save

    def someone_else_writes_meanwhile(obj, directory, *args, **kwargs):
        real_save(obj, directory, *args, **kwargs)
        target.mkdir()
        (target / "theirs.txt").write_text("keep me")

    monkeypatch.setattr(tf.saved_model, "save", someone_else_writes_meanwhile)
    with pytest.raises(FileExistsError, match="was created while this export was written"):
        ensemble.export_saved_model(model, target)
    assert (target / "theirs.txt").read_text() == "keep me"
    assert sorted(os.listdir(tmp_path)) == ["export"]


def test_config_may_be_an_omegaconf_mapping(tmp_path, mixed_ensemble):
    from omegaconf import OmegaConf

    model, _ = mixed_ensemble
    path = ensemble.export_saved_model(
        model, tmp_path / "export", config=OmegaConf.create({"a": {"b": [1, 2]}})
    )
    with open(os.path.join(path, "assets.extra", "config.yaml")) as f:
        written = json.loads(f.read())
    assert written == {"a": {"b": [1, 2]}}
