"""The HTTP server against what a review threw at it: values the model itself refuses, numbers
past any float, names no TensorFlow scope takes, a base with no version yet, bodies that stall
or stop, trailing slashes, and failures that must not leak a trace."""

from __future__ import annotations

import concurrent.futures
import socket
import time

import keras
import numpy as np
import pytest

import ensemble
from combiners import MeanCombiner
from ensemble import EnsembleError
from ensemble.serve.catalog import Catalog
from ensemble.serve.http import create_app, running
from tests.conftest import dense_classifier
from tests.test_http_api import call


def embedding_model() -> keras.Model:
    """Integer ids into a 10-row embedding: an id of 10 or more fails inside the model."""
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((3,), dtype="int32"),
            keras.layers.Embedding(10, 2),
            keras.layers.Flatten(),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )


@pytest.fixture(scope="module")
def ids(tmp_path_factory):
    root = tmp_path_factory.mktemp("hardening")
    model = embedding_model()
    model.save(root / "ids.keras")
    return model, root / "ids.keras"


def assert_clean(answer: dict) -> None:
    assert 'File "' not in answer["error"] and "node " not in answer["error"], answer


@pytest.mark.parametrize("window_ms", [0, 300])
@pytest.mark.slow
def test_a_value_the_model_refuses_is_a_400_and_fails_only_its_request(ids, window_ms):
    model, path = ids
    catalog = Catalog(ensemble.ModelRegistry(batch_window_ms=window_ms))
    catalog.register("ids", path)
    with running(create_app(catalog)) as url:
        call(url, "/v1/models/ids:predict", {"instances": [[1, 2, 3]]})  # loaded before the race

        def ask(row):
            return call(url, "/v1/models/ids:predict", {"instances": [row]})

        with concurrent.futures.ThreadPoolExecutor(2) as pool:  # together, within one window
            good, bad = pool.map(ask, [[1, 2, 3], [100, 2, 3]])
    assert bad[0] == 400 and "100 is not in [0, 10)" in bad[1]["error"], bad
    assert_clean(bad[1])
    assert good[0] == 200
    np.testing.assert_allclose(
        good[1]["predictions"], model.predict(np.array([[1, 2, 3]]), verbose=0), atol=1e-5
    )


def test_numbers_past_any_float_are_400s(ids):
    catalog = Catalog(ensemble.ModelRegistry())
    catalog.register("member", ids[1])
    with running(create_app(catalog)) as url:
        for literal in (b"1" * 5000, b"1e400", b"-2e308"):
            code, answer = call(
                url, "/v1/models/member:predict", b'{"instances": [[' + literal + b", 0, 0]]}"
            )
            assert code == 400 and "too large" in answer["error"], answer
        code, answer = call(url, "/v1/models/member:predict", {"instances": [[2**40, 0, 0]]})
        assert code == 400 and "range" in answer["error"], answer  # past int32, named


@pytest.mark.parametrize("name", ["sp ace", "_under", "-dash", "ünï", "a:b", "a/b", "a@1", ""])
def test_names_that_no_url_or_scope_takes_are_refused(ids, name):
    with pytest.raises(EnsembleError, match="Expected a model name"):
        Catalog(ensemble.ModelRegistry()).register(name, ids[1])


@pytest.mark.slow
def test_a_base_with_no_version_yet_serves_the_first_published(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    catalog = Catalog(ensemble.ModelRegistry())
    catalog.register("late", base)
    mean = ensemble.build_ensemble([ensemble.load_member(dense_classifier(1), name="m1")], MeanCombiner())
    with running(create_app(catalog)) as url:
        code, answer = call(url, "/v1/models/late:predict", {"instances": [[0.0] * 8]})
        assert code == 404 and "no version" in answer["error"]
        ensemble.export_version(mean, base, version=1)
        x = np.zeros((1, 8), "float32")
        code, answer = call(
            url, "/v1/models/late:predict", {"signature_name": "prediction", "instances": x.tolist()}
        )
    assert code == 200
    np.testing.assert_allclose(answer["predictions"], mean.predict(x, verbose=0)["prediction"], atol=1e-5)


def raw(url: str, data: bytes, wait_s: float) -> bytes:
    """Send `data` on a socket, then read what comes back until the server closes it or
    `wait_s` seconds pass (an answer may come in several packets)."""
    host, port = url.removeprefix("http://").split(":")
    received = b""
    deadline = time.monotonic() + wait_s
    with socket.create_connection((host, int(port)), timeout=wait_s) as sock:
        sock.sendall(data)
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            received += chunk
    return received


def test_a_stalled_body_is_a_408_and_a_dropped_one_is_no_500(ids):
    catalog = Catalog(ensemble.ModelRegistry())
    catalog.register("member", ids[1])
    head = b"POST /v1/models/member:predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 1000\r\n\r\n"
    with running(create_app(catalog, body_timeout_s=0.5)) as url:
        start = time.monotonic()
        answer = raw(url, head + b'{"inst', wait_s=10)
        assert answer.startswith(b"HTTP/1.1 408") and b'"error"' in answer, answer
        assert time.monotonic() - start < 5
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(head + b'{"inst')  # and hang up before the rest
        time.sleep(0.3)
        code, _ = call(url, "/v1/models/member/metadata")
        metrics = raw(url, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", wait_s=5)
    assert code == 200
    assert b'code="500"' not in metrics


def test_trailing_slashes_and_internal_errors_answer_json_without_details(ids, monkeypatch):
    catalog = Catalog(ensemble.ModelRegistry())
    catalog.register("member", ids[1])
    with running(create_app(catalog)) as url:
        code, answer = call(url, "/v1/models/member/")
        assert code == 404 and "error" in answer

        def broken(*args, **kwargs):
            raise RuntimeError("a secret path /srv/models/x")

        monkeypatch.setattr(catalog.registry, "predict", broken)
        code, answer = call(url, "/v1/models/member:predict", {"instances": [[1, 2, 3]]})
    assert code == 500 and "secret" not in answer["error"] and "RuntimeError" in answer["error"]
