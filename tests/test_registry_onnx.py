"""ModelRegistry serves `.onnx` files through onnxruntime: the Keras model's answers, from many
threads, loaded lazily and evicted like any entry; a broken file fails only its own requests."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import keras
import numpy as np
import pytest

import combiners
import ensemble
from ensemble.serve.registry import ModelRegistry
from tests.conftest import dense_classifier, two_input_ensemble

FEATURES = 8


def batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, FEATURES)).astype("float32")


@pytest.fixture(scope="module")
def models():
    """Two ensembles (mean, hard vote), the first with conformal sets."""
    members = [ensemble.load_member(dense_classifier(s), name=f"m{s}") for s in range(3)]
    mean = ensemble.build_ensemble(members, combiners.MeanCombiner())
    x = batch(40, seed=9)
    y = mean.predict(x, verbose=0)["prediction"].argmax(-1)
    mean = ensemble.add_conformal(mean, x, (y + (np.arange(40) % 5 == 0)) % 3, alpha=0.2)
    vote = ensemble.build_ensemble(
        [ensemble.load_member(dense_classifier(s), name=f"v{s}") for s in range(3, 5)],
        combiners.VoteCombiner("hard"),
    )
    return {"mean": mean, "vote": vote}


@pytest.fixture(scope="module")
def files(models, tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx_registry")
    return {name: ensemble.export_onnx(model, root / f"{name}.onnx") for name, model in models.items()}


def assert_same(served: dict[str, np.ndarray], model: keras.Model, x) -> None:
    expected = model.predict(x, verbose=0)
    assert sorted(served) == sorted(expected)
    for key, want in expected.items():
        assert served[key].dtype == want.dtype and served[key].shape == want.shape, key
        np.testing.assert_allclose(served[key], want, atol=1e-5, err_msg=key)


@pytest.mark.slow
def test_onnx_files_are_served_lazily_like_the_keras_model(models, files):
    registry = ModelRegistry()
    for name, path in files.items():
        registry.register(name, path)
    assert registry.loaded == [] and registry.stats("mean").kind == "onnx"
    for n in (1, 7, 0):
        for name, model in models.items():
            assert_same(registry.predict(name, batch(n, seed=n)), model, batch(n, seed=n))
    sets = registry.predict("mean", batch(5))["prediction_set"]
    assert sets.dtype == bool and sets.shape == (5, 3)
    stats = registry.stats("mean")
    assert (
        stats.loads == 1 and stats.calls == 4 and stats.params > 0 and stats.weight_bytes >= 4 * stats.params
    )
    assert stats.traces == 0 and stats.variable_devices == ()
    with pytest.raises(ensemble.EnsembleError, match=r"Model 'mean' expects input of shape \(None, 8\)"):
        registry.predict("mean", np.zeros((2, 3), "float32"))
    with pytest.raises(ensemble.EnsembleError, match="takes no load options"):
        registry.register("other", files["mean"], safe_mode=False)


def test_a_float64_request_is_cast_and_multi_input_files_take_dicts(tmp_path):
    model = two_input_ensemble()
    registry = ModelRegistry()
    registry.register("two", ensemble.export_onnx(model, tmp_path / "two.onnx"))
    feeds = {"image": np.ones((3, 4)), "meta": np.linspace(0, 1, 6).reshape(3, 2)}  # float64
    assert_same(registry.predict("two", feeds), model, {k: v.astype("float32") for k, v in feeds.items()})
    with pytest.raises(ensemble.EnsembleError, match=r"Missing: \['meta'\]"):
        registry.predict("two", {"image": feeds["image"]})


@pytest.mark.slow
def test_lru_eviction_reloads_an_onnx_entry(models, files):
    registry = ModelRegistry(max_loaded=1)
    for name, path in files.items():
        registry.register(name, path)
    x = batch(4)
    first = registry.predict("mean", x)
    registry.predict("vote", x)
    assert registry.loaded == ["vote"]
    again = registry.predict("mean", x)
    assert registry.loaded == ["mean"] and registry.stats("mean").loads == 2
    for key in first:
        np.testing.assert_array_equal(again[key], first[key])


@pytest.mark.slow
def test_concurrent_threads_get_serial_answers(models, files):
    registry = ModelRegistry()
    for name, path in files.items():
        registry.register(name, path)
    jobs = [(name, n) for n in range(1, 13) for name in files]
    start = threading.Barrier(8)

    def send(job):
        name, n = job
        if n <= 4:  # the first 8 requests arrive together, before either file is loaded
            start.wait(timeout=60)
        return registry.predict(name, batch(n, seed=n))

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(send, jobs))
    for (name, n), answer in zip(jobs, answers, strict=True):
        assert_same(answer, models[name], batch(n, seed=n))
    assert all(registry.stats(name).loads == 1 for name in files)
    batched = ModelRegistry(batch_window_ms=50)
    batched.register("vote", files["vote"])
    with ThreadPoolExecutor(max_workers=6) as pool:
        together = list(pool.map(lambda n: batched.predict("vote", batch(n, seed=n)), range(1, 7)))
    for n, answer in zip(range(1, 7), together, strict=True):
        assert_same(answer, models["vote"], batch(n, seed=n))


def test_a_corrupt_onnx_file_fails_alone_and_is_retried(models, files, tmp_path):
    registry = ModelRegistry()
    registry.register("mean", files["mean"])
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(np.random.default_rng(0).bytes(4096))
    registry.register("broken", broken)
    assert registry.stats("broken").kind == "onnx"
    x = batch(3)
    for _ in range(2):
        with pytest.raises(
            ensemble.EnsembleError, match=r"Model 'broken': cannot load onnx from .*broken.onnx"
        ):
            registry.predict("broken", x)
        assert_same(registry.predict("mean", x), models["mean"], x)
    assert registry.stats("broken").failures == 2 and registry.loaded == ["mean"]
    broken.write_bytes(Path(files["vote"]).read_bytes())  # fixed on disk: the next request loads it
    assert_same(registry.predict("broken", x), models["vote"], x)
    with pytest.raises(ensemble.EnsembleError, match="does not exist"):
        registry.register("missing", tmp_path / "missing.onnx")


def test_devices_choose_the_session_provider(files):
    registry = ModelRegistry()
    registry.register("cpu", files["vote"], device="/CPU:0")
    assert registry.predict("cpu", batch(2))["prediction"].shape == (2, 3)
    assert registry.stats("cpu").device == "/CPU:0"
