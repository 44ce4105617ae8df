"""ModelRegistry: lazy loading, LRU eviction, thread safety, one compile per model, clear errors."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import keras
import numpy as np
import pytest

import combiners
import ensemble
from ensemble.serve import loaded as loaded_module  # where the registry loads its members
from ensemble.serve.registry import ModelRegistry, ModelStats
from tests.conftest import TINY_CLASSES, TINY_FEATURES, tiny_model, tiny_sources

FEATURES, CLASSES = TINY_FEATURES, TINY_CLASSES


@pytest.fixture
def sources(tmp_path) -> dict[str, str]:
    return tiny_sources(tmp_path)


@pytest.fixture
def registry(sources) -> ModelRegistry:
    reg = ModelRegistry()
    for name, path in sources.items():
        reg.register(name, path)
    return reg


def batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, FEATURES)).astype("float32")


def test_exported_from_package():
    assert ensemble.ModelRegistry is ModelRegistry


@pytest.mark.slow
def test_register_is_lazy_and_predict_loads(registry, sources):
    assert registry.names == ["a", "b", "c"]
    assert registry.loaded == []
    x = batch(5)
    y = registry.predict("a", x)
    assert isinstance(y, np.ndarray) and y.shape == (5, CLASSES)
    expected = keras.saving.load_model(sources["a"])(x).numpy()
    np.testing.assert_allclose(y, expected, atol=1e-6)
    assert registry.loaded == ["a"]
    registry.unload("a")
    assert registry.loaded == [] and "a" in registry
    np.testing.assert_allclose(registry.predict("a", x), expected, atol=1e-6)
    assert registry.stats("a").loads == 2


@pytest.mark.slow
def test_lru_eviction_order(sources):
    reg = ModelRegistry(max_loaded=2)
    for name, path in sources.items():
        reg.register(name, path)
    x = batch(2)
    reg.predict("a", x)
    reg.predict("b", x)
    assert reg.loaded == ["a", "b"]
    reg.predict("a", x)  # a becomes the most recent: b is next to go
    assert reg.loaded == ["b", "a"]
    reg.predict("c", x)
    assert reg.loaded == ["a", "c"]
    assert not reg.stats("b").loaded and reg.stats("b").params is not None
    reg.predict("b", x)
    assert reg.loaded == ["c", "b"]


def test_unknown_name_lists_registered(registry):
    with pytest.raises(KeyError, match=r"'nope'.*\['a', 'b', 'c'\]"):
        registry.predict("nope", batch(1))
    with pytest.raises(KeyError, match="Registered"):
        registry.unload("nope")


def test_duplicate_registration_needs_replace(registry, sources):
    with pytest.raises(ValueError, match="'a' is already registered; pass replace=True"):
        registry.register("a", sources["b"])
    x = batch(3)
    registry.predict("a", x)
    registry.register("a", sources["b"], replace=True)
    assert registry.loaded == []  # the old model is dropped
    np.testing.assert_allclose(registry.predict("a", x), registry.predict("b", x), atol=1e-6)


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda tmp: ModelRegistry(max_loaded=0), ValueError, "max_loaded to be an integer of at least 1"),
        (lambda tmp: ModelRegistry(max_loaded=-3), ValueError, "Received: max_loaded=-3"),
        (
            lambda tmp: ModelRegistry().register("ghost", tmp / "ghost.keras"),
            ValueError,
            r"Model 'ghost': source .*ghost\.keras' does not exist",
        ),
        (lambda tmp: ModelRegistry().register("", tmp), ValueError, "non-empty string"),
    ],
    ids=["max_loaded_zero", "max_loaded_negative", "missing_source", "empty_name"],
)
def test_bad_arguments(tmp_path, make, error, match):
    with pytest.raises(error, match=match):
        make(tmp_path)


def test_wrong_shape_names_model_and_expected_shape(registry):
    with pytest.raises(
        ValueError, match=r"Model 'a' expects input of shape \(None, 4\)\. Received: \(2, 5\)"
    ):
        registry.predict("a", np.zeros((2, 5), "float32"))
    with pytest.raises(ValueError, match=r"Model 'a' expects input of shape \(None, 4\)\. Received: \(4,\)"):
        registry.predict("a", np.zeros(4, "float32"))
    assert registry.predict("a", batch(2)).shape == (2, CLASSES)  # still serves


def test_threads_match_serial_results(registry, sources):
    rng = np.random.default_rng(1)
    jobs = [
        (name, batch(int(rng.integers(1, 33)), seed=i))
        for i, name in enumerate(rng.choice(["a", "b", "c"], size=8 * 25))
    ]
    serial_registry = ModelRegistry()
    for name in ("a", "b", "c"):
        serial_registry.register(name, sources[name])
    expected = [serial_registry.predict(name, x) for name, x in jobs]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda job: registry.predict(*job), jobs))
    for got, want in zip(results, expected, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6)
    assert sum(registry.stats(n).calls for n in registry.names) == len(jobs)
    assert all(registry.stats(n).loads == 1 and registry.stats(n).traces == 1 for n in "abc")


def test_thundering_herd_loads_once(registry, monkeypatch):
    calls = []
    real = loaded_module.load_member

    def slow_load(*args, **kwargs):
        calls.append(kwargs["name"])
        time.sleep(0.3)  # long enough that every thread arrives while the load runs
        return real(*args, **kwargs)

    monkeypatch.setattr(loaded_module, "load_member", slow_load)
    start = threading.Barrier(16)
    x = batch(3)

    def ask(_: int) -> np.ndarray:
        start.wait()
        return registry.predict("a", x)

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(ask, range(16)))
    assert calls == ["a"]
    for result in results:
        np.testing.assert_allclose(result, results[0])
    assert registry.stats("a").calls == 16


def test_slow_load_does_not_block_other_models(registry, monkeypatch):
    registry.predict("b", batch(1))
    real = loaded_module.load_member
    release = threading.Event()

    def blocked_load(*args, **kwargs):
        release.wait(10)
        return real(*args, **kwargs)

    monkeypatch.setattr(loaded_module, "load_member", blocked_load)
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(registry.predict, "a", batch(2))
        time.sleep(0.1)
        assert registry.predict("b", batch(2)).shape == (2, CLASSES)  # while a is loading
        assert not pending.done()
        release.set()
        assert pending.result(timeout=30).shape == (2, CLASSES)


def test_corrupt_model_fails_alone_and_is_retried(registry, sources, tmp_path):
    broken = tmp_path / "broken.keras"
    broken.write_bytes(np.random.default_rng(0).bytes(2048))
    registry.register("broken", broken)
    x = batch(4)
    for _ in range(2):  # each request tries again, and fails again
        with pytest.raises(ValueError, match="'broken'"):
            registry.predict("broken", x)
        assert registry.predict("a", x).shape == (4, CLASSES)
    assert registry.stats("broken").failures == 2 and "broken" not in registry.loaded
    tiny_model(7).save(broken)  # fixed on disk: the next request loads it
    np.testing.assert_allclose(
        registry.predict("broken", x), keras.saving.load_model(broken)(x).numpy(), atol=1e-6
    )
    assert registry.loaded == ["a", "broken"]


def test_no_retracing_across_batch_sizes(registry):
    registry.predict("a", batch(2))  # warm-up
    traces = registry.stats("a").traces
    assert traces == 1
    for n in (1, 7, 64):
        assert registry.predict("a", batch(n)).shape == (n, CLASSES)
    registry.predict("a", batch(5).astype("float64"))  # cast to the spec's dtype, no new trace
    assert registry.stats("a").traces == traces


def test_in_memory_member(registry):
    model = tiny_model(11)
    registry.register("memory", model)
    x = batch(3)
    np.testing.assert_allclose(registry.predict("memory", x), model(x).numpy(), atol=1e-6)


def test_exported_ensemble_is_served(tmp_path):
    members = [ensemble.load_member(tiny_model(s), name=f"m{s}") for s in (0, 1)]
    model = ensemble.build_ensemble(members, combiners.MeanCombiner())
    path = ensemble.export_saved_model(model, tmp_path / "export")
    reg = ModelRegistry()
    reg.register("zoo", path)
    assert reg.stats("zoo").kind == "ensemble"
    for n in (1, 6):
        x = batch(n, seed=n)
        out = reg.predict("zoo", x)
        assert isinstance(out, dict) and "prediction" in out
        expected = model(x)
        for key in ("prediction", "member_predictions"):
            np.testing.assert_allclose(out[key], keras.ops.convert_to_numpy(expected[key]), atol=1e-6)
    with pytest.raises(ValueError, match=r"Model 'zoo' expects input of shape \(None, 4\)"):
        reg.predict("zoo", np.zeros((2, 3), "float32"))
    with pytest.raises(ValueError, match="takes no load options"):
        reg.register("zoo2", path, safe_mode=False)


def test_stats_report(registry):
    x = batch(3)
    for _ in range(3):
        registry.predict("a", x)
    stats = registry.stats("a")
    assert isinstance(stats, ModelStats)
    params = FEATURES * 8 + 8 + 8 * CLASSES + CLASSES
    assert (stats.calls, stats.params, stats.weight_bytes) == (3, params, 4 * params)
    assert stats.load_seconds is not None and stats.load_seconds > 0
    report = registry.report()
    assert report["rss_bytes"] > 0
    assert report["loaded"] == ["a"]
    assert report["models"]["a"]["calls"] == 3
    assert report["models"]["b"] == {**report["models"]["b"], "loaded": False, "params": None, "calls": 0}


def test_concurrent_requests_are_batched_within_the_window(sources):
    registry = ModelRegistry(batch_window_ms=100)
    registry.register("a", sources["a"])
    registry.predict("a", batch(1))  # load outside the timed part
    requests = [batch(rows, seed=rows) for rows in (1, 2, 3, 4, 5, 6, 7, 8)]
    start = threading.Barrier(len(requests))

    def send(x: np.ndarray) -> np.ndarray:
        start.wait()
        return registry.predict("a", x)

    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        answers = list(pool.map(send, requests))
    serial = ModelRegistry()
    serial.register("a", sources["a"])
    for x, answer in zip(requests, answers, strict=True):
        np.testing.assert_allclose(answer, serial.predict("a", x), atol=1e-6)
    stats = registry.stats("a")
    assert stats.calls == 9 and stats.model_calls < 9  # 8 concurrent requests, far fewer calls
    with pytest.raises(ensemble.EnsembleError, match=r"batch_window_ms >= 0"):
        ModelRegistry(batch_window_ms=-1)


def test_a_versioned_base_serves_its_highest_version(tmp_path):
    models = [
        ensemble.build_ensemble([ensemble.load_member(tiny_model(s), name="m")], combiners.MeanCombiner())
        for s in (3, 4)
    ]
    for model in models:
        ensemble.export_version(model, tmp_path / "serving")
    (tmp_path / "serving" / "7").mkdir()  # a version directory holding no export is passed over
    reg = ModelRegistry()
    reg.register("served", tmp_path / "serving")
    assert reg.stats("served").kind == "ensemble"
    x = batch(3, seed=0)
    np.testing.assert_allclose(
        reg.predict("served", x)["prediction"],
        keras.ops.convert_to_numpy(models[1](x)["prediction"]),
        atol=1e-6,
    )
