"""The HTTP server under real clients on 127.0.0.1: a bounded load answered right (with its
latency and throughput recorded, never asserted), LRU reloads and batching behind HTTP, a model
file corrupted while serving, and an event loop that a slow model call does not hold up.

Every load is bounded: a fixed number of requests from a fixed number of threads, a timeout on
each request and an overall deadline, after which a client stops and counts what is left as
errors."""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import keras
import numpy as np
import pytest

from ensemble.serve.catalog import Catalog
from ensemble.serve.http import create_app, running
from ensemble.serve.registry import ModelRegistry
from tests.conftest import TINY_FEATURES as FEATURES
from tests.conftest import tiny_sources

TIMEOUT_S = 30.0  # one request
DEADLINE_S = 120.0  # one whole load
Job = tuple[str, np.ndarray]  # a model's name and the rows sent to it


@pytest.fixture
def sources(tmp_path) -> dict[str, str]:
    return tiny_sources(tmp_path)


@contextlib.contextmanager
def serving(sources: dict[str, str], names: str, **options: Any) -> Iterator[tuple[str, ModelRegistry]]:
    """A server on a free loopback port for the models `names` over a fresh registry."""
    registry = ModelRegistry(**options)
    catalog = Catalog(registry)
    for name in names:
        catalog.register(name, sources[name])
    with running(create_app(catalog)) as url:
        yield url, registry


def jobs(names: str, count: int, seed: int) -> list[Job]:
    """`count` requests to models drawn from `names`, each of 1 to 8 rows."""
    rng = np.random.default_rng(seed)
    return [
        (str(rng.choice(list(names))), rng.normal(size=(int(rng.integers(1, 9)), FEATURES)).astype("float32"))
        for _ in range(count)
    ]


def references(sources: dict[str, str], work: list[list[Job]]) -> list[list[np.ndarray]]:
    """What each job should answer, from the saved models loaded in this process."""
    models = {name: keras.saving.load_model(path) for name, path in sources.items()}
    return [[keras.ops.convert_to_numpy(models[name](x)) for name, x in client] for client in work]


def call(url: str, method: str, path: str, body: Any = None) -> tuple[int, Any, float]:
    """One request on its own connection: the status, the decoded answer and the seconds taken."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=TIMEOUT_S)
    try:
        return send(connection, method, path, body)
    finally:
        connection.close()


def send(connection: http.client.HTTPConnection, method: str, path: str, body: Any) -> tuple[int, Any, float]:
    data = None if body is None else json.dumps(body).encode()
    start = time.perf_counter()
    connection.request(method, path, body=data, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    raw = response.read()
    seconds = time.perf_counter() - start
    kind = response.getheader("Content-Type", "")
    return response.status, json.loads(raw) if "json" in kind else raw.decode(), seconds


def predict_path(name: str) -> str:
    return f"/v1/models/{name}:predict"


def run_load(url: str, work: list[list[Job]]) -> tuple[list[list[tuple[int, Any]]], list[float], float]:
    """Each list of jobs sent in turn by its own client thread on one kept-alive connection;
    the answers (status 0: no answer), every latency and the wall time of the whole load."""
    parts = urllib.parse.urlsplit(url)
    deadline = time.monotonic() + DEADLINE_S
    start_together = threading.Barrier(len(work))
    latencies: list[float] = []

    def client(client_jobs: list[Job]) -> list[tuple[int, Any]]:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=TIMEOUT_S)
        answers: list[tuple[int, Any]] = []
        start_together.wait(TIMEOUT_S)
        try:
            for name, x in client_jobs:
                if time.monotonic() > deadline:
                    answers.append((0, "past the load's deadline"))
                    continue
                try:
                    body = {"instances": x.tolist()}
                    code, answer, seconds = send(connection, "POST", predict_path(name), body)
                except (OSError, http.client.HTTPException) as error:
                    connection.close()  # reconnects on the next request
                    answers.append((0, repr(error)))
                    continue
                latencies.append(seconds)
                answers.append((code, answer))
        finally:
            connection.close()
        return answers

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(work)) as pool:
        futures = [pool.submit(client, client_jobs) for client_jobs in work]
        results = [future.result(timeout=DEADLINE_S + TIMEOUT_S) for future in futures]
    return results, latencies, time.perf_counter() - start


def check_answers(
    work: list[list[Job]], results: list[list[tuple[int, Any]]], expected: list[list[np.ndarray]]
) -> None:
    errors = [
        (name, code, answer)
        for client_jobs, answers in zip(work, results, strict=True)
        for (name, _), (code, answer) in zip(client_jobs, answers, strict=True)
        if code != 200
    ]
    assert not errors, f"{len(errors)} errors, the first: {errors[:3]}"
    for answers, wanted in zip(results, expected, strict=True):
        for (_, answer), want in zip(answers, wanted, strict=True):
            np.testing.assert_allclose(np.asarray(answer["predictions"]), want, atol=1e-5)


def report(record_property, label: str, latencies: list[float], seconds: float, requests: int) -> None:
    p50, p99 = (float(np.percentile(latencies, q)) * 1000 for q in (50, 99))
    rps = requests / seconds
    print(
        f"{label}: {requests} requests in {seconds:.2f} s, "
        f"{rps:.0f} req/s, p50 {p50:.1f} ms, p99 {p99:.1f} ms"
    )
    for key, value in (("p50_ms", p50), ("p99_ms", p99), ("requests_per_s", rps)):
        record_property(f"{label}_{key}", round(value, 3))


@pytest.mark.slow
def test_bounded_load_answers_every_request_right(sources, record_property):
    work = [jobs("abc", 50, seed=client) for client in range(16)]
    expected = references(sources, work)
    with serving(sources, "abc") as (url, registry):
        results, latencies, seconds = run_load(url, work)
        stats = {name: registry.stats(name) for name in "abc"}
    check_answers(work, results, expected)
    report(record_property, "load", latencies, seconds, 16 * 50)
    assert sum(s.calls for s in stats.values()) == 16 * 50
    assert all(s.loads == 1 and s.failures == 0 and s.evictions == 0 for s in stats.values())


@pytest.mark.slow
def test_load_with_one_model_in_memory_evicts_and_reloads(sources, record_property):
    """Sixteen concurrent clients over two models with room for one: every answer right, and
    models evicted and reloaded under the load. Six requests a client (96, not 800) show it:
    the time goes to the reloads (about one for every ten requests, each a load from disk and
    a first call), not to the requests; the load stays bounded as every load."""
    requests = 6
    work = [jobs("ab", requests, seed=100 + client) for client in range(16)]
    expected = references(sources, work)
    with serving(sources, "ab", max_loaded=1) as (url, registry):
        results, latencies, seconds = run_load(url, work)
        stats = {name: registry.stats(name) for name in "ab"}
        assert len(registry.loaded) <= 1
    check_answers(work, results, expected)
    report(record_property, "lru", latencies, seconds, 16 * requests)
    loads, evictions = (sum(getattr(s, key) for s in stats.values()) for key in ("loads", "evictions"))
    print(f"lru: {loads} loads, {evictions} evictions")
    record_property("lru_loads", loads)
    assert sum(s.evictions for s in stats.values()) > 0
    assert sum(s.loads for s in stats.values()) > 2
    assert all(s.failures == 0 for s in stats.values())


def test_concurrent_http_requests_are_batched(sources):
    work = [jobs("a", 5, seed=200 + client) for client in range(16)]
    expected = references(sources, work)
    with serving(sources, "a", batch_window_ms=20) as (url, registry):
        assert call(url, "POST", predict_path("a"), {"instances": [[0.0] * FEATURES]})[0] == 200  # loads it
        results, _, _ = run_load(url, work)
        stats = registry.stats("a")
    check_answers(work, results, expected)
    assert stats.calls == 16 * 5 + 1
    assert stats.model_calls < stats.calls, stats


@pytest.mark.slow
def test_a_model_corrupted_while_serving_fails_alone_and_recovers(sources):
    x = np.random.default_rng(3).normal(size=(3, FEATURES)).astype("float32")
    want = {name: references(sources, [[(name, x)]])[0][0] for name in "abc"}
    body = {"instances": x.tolist()}
    with serving(sources, "abc") as (url, registry):
        for name in "abc":  # all three served and in memory
            assert call(url, "POST", predict_path(name), body)[0] == 200
        with open(sources["a"], "rb") as f:
            good = f.read()
        with open(sources["a"], "wb") as f:
            f.write(np.random.default_rng(0).bytes(len(good)))
        registry.unload("a")  # the next request reloads it, from the broken file
        mixed = [[(name, x) for name in "abcabc"] for _ in range(4)]
        results, _, _ = run_load(url, mixed)  # the broken model among the others, concurrently
        for answers in results:
            for name, (code, answer) in zip("abcabc", answers, strict=True):
                if name == "a":
                    assert code == 503, answer
                    assert "'a'" in answer["error"] and "Traceback" not in answer["error"]
                else:
                    assert code == 200, answer
                    np.testing.assert_allclose(np.asarray(answer["predictions"]), want[name], atol=1e-5)
        code, metrics, _ = call(url, "GET", "/metrics")
        assert code == 200
        failures = [line for line in metrics.splitlines() if line.startswith("ensemble_model_load_failures")]
        assert f'ensemble_model_load_failures_total{{model="a"}} {float(4 * 2)}' in failures, failures
        assert 'ensemble_model_load_failures_total{model="b"} 0.0' in failures
        assert registry.stats("a").failures == 8 and "a" not in registry.loaded
        for name in "bc":  # still answering after the failures
            code, answer, _ = call(url, "POST", predict_path(name), body)
            assert code == 200
            np.testing.assert_allclose(np.asarray(answer["predictions"]), want[name], atol=1e-5)
        with open(sources["a"], "wb") as f:  # mended on disk: the next request loads it
            f.write(good)
        code, answer, _ = call(url, "POST", predict_path("a"), body)
        assert code == 200, answer
        np.testing.assert_allclose(np.asarray(answer["predictions"]), want["a"], atol=1e-5)
        assert registry.stats("a").last_error is None and "a" in registry.loaded


@pytest.mark.slow
def test_a_slow_model_call_does_not_block_the_event_loop(sources, monkeypatch):
    with serving(sources, "ab") as (url, registry):
        real = registry.predict
        in_call = threading.Event()

        def predict(name: str, x: Any) -> Any:
            if name == "a":
                in_call.set()
                time.sleep(3.0)
            return real(name, x)

        monkeypatch.setattr(registry, "predict", predict)
        body = {"instances": [[0.5] * FEATURES]}
        assert call(url, "POST", predict_path("b"), body)[0] == 200  # loads b before the slow call
        with ThreadPoolExecutor(max_workers=1) as pool:
            slow = pool.submit(call, url, "POST", predict_path("a"), body)
            assert in_call.wait(TIMEOUT_S)
            code, answer, seconds = call(url, "GET", "/healthz")
            assert code == 200 and answer["status"] == "ok"
            assert seconds < 1.0, f"/healthz took {seconds:.2f} s while a model call ran"
            code, _, _ = call(url, "POST", predict_path("b"), body)  # another model meanwhile
            assert code == 200 and not slow.done()
            code, _, seconds = slow.result(timeout=TIMEOUT_S)
        assert code == 200 and seconds >= 3.0
