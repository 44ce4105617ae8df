"""Serving truth (issue 28, item 2) through real clients on 127.0.0.1: a member served alone
answers a non-finite row with NaN as an ensemble does, in every path; no cast loses a value; a
JSON boolean is no number; no error or status shows the server's directories; a request's rows
and the predicts in flight are capped; every malformed URL part is a JSON 4xx."""

from __future__ import annotations

import http.client
import json
import logging
import threading
import urllib.parse

import keras
import numpy as np
import pytest

import ensemble
from ensemble import EnsembleError
from ensemble.serve.catalog import Catalog
from ensemble.serve.compiled import compiled_predict
from ensemble.serve.http import create_app, running
from tests.conftest import FEATURES
from tests.test_http_api import call
from tests.test_http_hardening import embedding_model


def relu_member(seed: int = 0) -> keras.Model:
    """A member whose traced graph turns a NaN input into a finite answer (the fused matmul
    and relu of `model.predict` and of a serving function)."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((FEATURES,), name="features")
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(hidden))


def rows_with_non_finite() -> tuple[np.ndarray, np.ndarray]:
    x = np.random.default_rng(0).normal(size=(5, FEATURES)).astype("float32")
    x[1, 0], x[3, 4] = np.nan, np.inf
    return x, np.isin(np.arange(5), [1, 3])


def assert_nan_rows(got: object, want: np.ndarray, bad: np.ndarray) -> None:
    got = np.asarray(got, dtype="float32")
    assert np.isnan(got[bad]).all(), got
    np.testing.assert_allclose(got[~bad], want[~bad], atol=1e-5)


@pytest.fixture(scope="module")
def member(tmp_path_factory):
    root = tmp_path_factory.mktemp("truth")
    model = relu_member()
    model.save(root / "relu.keras")
    model.export(root / "relu_sm", verbose=False)  # a SavedModel member
    return model, root


def test_a_member_served_alone_answers_non_finite_rows_with_nan(member):
    model, root = member
    x, bad = rows_with_non_finite()
    want = model.predict(x, verbose=0)
    assert np.isfinite(want[1]).all()  # its traced graph (a fused matmul + relu) hides the NaN
    catalog = Catalog(ensemble.ModelRegistry())
    catalog.register("keras", root / "relu.keras")
    catalog.register("saved", root / "relu_sm")
    batched = Catalog(ensemble.ModelRegistry(batch_window_ms=50))
    batched.register("keras", root / "relu.keras")
    for name in ("keras", "saved"):
        assert_nan_rows(catalog.registry.predict(name, x), want, bad)
    assert_nan_rows(batched.registry.predict("keras", x), want, bad)
    named = keras.Model(model.input, {"probabilities": model.output})  # compiled_predict's kind
    assert_nan_rows(compiled_predict(named)(x)["probabilities"], want, bad)
    with running(create_app(catalog)) as url:
        body = json.dumps({"instances": x.tolist()}).encode()  # NaN and Infinity tokens
        for name in ("keras", "saved"):
            code, answer = call(url, f"/v1/models/{name}:predict", body)
            assert code == 200
            assert_nan_rows(answer["predictions"], want, bad)
        code, answer = call(url, "/v1/models/keras:predict", {"inputs": x[:1].tolist()})
        np.testing.assert_allclose(answer["outputs"], want[:1], atol=1e-5)  # a finite row as it is


def test_the_registry_refuses_casts_that_change_a_value(tmp_path):
    model = embedding_model()  # an int32 input of 3 ids
    model.save(tmp_path / "ids.keras")
    registry = ensemble.ModelRegistry()
    registry.register("ids", tmp_path / "ids.keras")
    cases = {
        "fraction": [[1, 2, 3], [1.7, 2, 3]],
        "nan": [[1, 2, 3], [np.nan, 2, 3]],
        "wrap": [[1, 2, 3], [2**33 + 1, 2, 3]],
    }
    for case, rows in cases.items():
        with pytest.raises(EnsembleError, match=r"Model 'ids': input '\w+', row 1: ") as raised:
            registry.predict("ids", np.array(rows))
        assert "not an integer" in str(raised.value) or "range" in str(raised.value), case
    exact = registry.predict("ids", np.array([[1.0, 2.0, 3.0]]))  # a whole float loses nothing
    np.testing.assert_allclose(exact, model.predict(np.array([[1, 2, 3]]), verbose=0), atol=1e-6)


def test_json_booleans_are_no_numbers(member):
    model, root = member
    catalog = Catalog(ensemble.ModelRegistry())
    catalog.register("member", root / "relu.keras")
    rows = [[0.5] * FEATURES, [0.5] * (FEATURES - 1) + [True]]
    with running(create_app(catalog)) as url:
        for body in ({"instances": rows}, {"inputs": {"features": rows}}):
            code, answer = call(url, "/v1/models/member:predict", body)
            assert code == 400 and "'features', row 1" in answer["error"], answer
            assert "bool" in answer["error"]
        code, answer = call(url, "/v1/models/member:predict", {"instances": rows[:1]})
    assert code == 200
    np.testing.assert_allclose(answer["predictions"], model(np.array(rows[:1], "float32")), atol=1e-5)


def test_errors_and_status_name_files_never_server_paths(tmp_path, caplog):
    (tmp_path / "corrupt.keras").write_bytes(b"not a keras zip " * 64)
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    (tmp_path / "sm").mkdir()
    (tmp_path / "sm" / "saved_model.pb").write_bytes(b"not a SavedModel")
    (tmp_path / "base").mkdir()
    catalog = Catalog(ensemble.ModelRegistry())
    for name, source in (("corrupt", "corrupt.keras"), ("onnx", "bad.onnx"), ("sm", "sm"), ("base", "base")):
        catalog.register(name, tmp_path / source)
    secret = str(tmp_path)
    with caplog.at_level(logging.WARNING), running(create_app(catalog)) as url:
        for name, file in (("corrupt", "corrupt.keras"), ("onnx", "bad.onnx"), ("sm", "sm")):
            code, answer = call(url, f"/v1/models/{name}:predict", {"instances": [[0.0] * FEATURES]})
            assert code == 503 and secret not in answer["error"], answer
            assert repr(name) in answer["error"] and file in answer["error"], answer
            assert call(url, f"/v1/models/{name}/metadata")[0] == 503
            code, status = call(url, f"/v1/models/{name}")
            message = status["model_version_status"][0]["status"]["error_message"]
            assert code == 200 and file in message and secret not in message, status
        code, answer = call(url, "/v1/models/base:predict", {"instances": [[0.0] * FEATURES]})
        assert code == 404 and "'base'" in answer["error"] and secret not in answer["error"], answer
    assert secret in caplog.text  # the server's log keeps the whole message


@pytest.mark.slow
def test_rows_past_max_rows_are_a_413_saying_the_cap_and_how_to_change_it(member):
    model, root = member
    catalog = Catalog(ensemble.ModelRegistry())
    catalog.register("member", root / "relu.keras")
    x = np.random.default_rng(1).normal(size=(10_001, FEATURES)).round(2).astype("float32")
    with running(create_app(catalog, max_rows=4)) as url:
        for body in ({"instances": x[:5].tolist()}, {"inputs": x[:5].tolist()}):
            code, answer = call(url, "/v1/models/member:predict", body)
            assert code == 413 and "5 rows" in answer["error"] and "limit of 4" in answer["error"]
            assert "max_rows" in answer["error"], answer
        code, answer = call(url, "/v1/models/member:predict", {"instances": x[:4].tolist()})
        assert code == 200
        np.testing.assert_allclose(answer["predictions"], model(x[:4]), atol=1e-5)
    with running(create_app(catalog)) as url:  # the default cap: 10_000
        code, answer = call(url, "/v1/models/member:predict", {"instances": x.tolist()})
        assert code == 413 and "10000" in answer["error"], answer
    with running(create_app(catalog, max_rows=None)) as url:
        code, answer = call(url, "/v1/models/member:predict", {"instances": x.tolist()})
        assert code == 200 and len(answer["predictions"]) == len(x)


def test_an_answer_past_max_answer_values_is_a_413_before_it_is_encoded(member):
    # The body's size does not bound the answer's: a wide model on few rows answers more
    # numbers than it was sent (the relu member: 3 outputs per row of FEATURES inputs).
    model, root = member
    catalog = Catalog(ensemble.ModelRegistry())
    catalog.register("member", root / "relu.keras")
    x = np.random.default_rng(2).normal(size=(5, FEATURES)).round(2).astype("float32")
    width = int(np.asarray(model(x[:1])).shape[-1])
    with running(create_app(catalog, max_answer_values=4 * width)) as url:
        code, answer = call(url, "/v1/models/member:predict", {"instances": x.tolist()})
        assert code == 413, answer
        assert f"holds {5 * width} numbers" in answer["error"] and "max_answer_values" in answer["error"]
        code, answer = call(url, "/v1/models/member:predict", {"instances": x[:4].tolist()})
        assert code == 200
        np.testing.assert_allclose(answer["predictions"], model(x[:4]), atol=1e-5)
    with pytest.raises(ensemble.EnsembleError, match="max_answer_values to be an integer >= 1"):
        create_app(catalog, max_answer_values=0)


def test_predicts_past_max_in_flight_are_503_with_retry_after(member, monkeypatch):
    _, root = member
    catalog = Catalog(ensemble.ModelRegistry())
    catalog.register("member", root / "relu.keras")
    entered, release = threading.Event(), threading.Event()
    predict = catalog.registry.predict

    def slow(name, feeds):
        entered.set()
        release.wait(30)  # bounded: the test releases it at once
        return predict(name, feeds)

    monkeypatch.setattr(catalog.registry, "predict", slow)
    body = json.dumps({"instances": [[0.5] * FEATURES]})
    with running(create_app(catalog, max_in_flight=1)) as url:
        host, port = urllib.parse.urlsplit(url).netloc.split(":")

        def post() -> tuple[int, str | None, bytes]:
            connection = http.client.HTTPConnection(host, int(port), timeout=60)
            try:
                connection.request("POST", "/v1/models/member:predict", body)
                response = connection.getresponse()
                return response.status, response.getheader("Retry-After"), response.read()
            finally:
                connection.close()

        first: list[tuple[int, str | None, bytes]] = []
        thread = threading.Thread(target=lambda: first.append(post()))
        thread.start()
        try:
            assert entered.wait(30)
            code, retry, text = post()
        finally:
            release.set()
            thread.join(60)
        assert code == 503 and retry is not None and int(retry) >= 1
        assert "max_in_flight" in json.loads(text)["error"]
        assert first[0][0] == 200
        assert post()[0] == 200  # a slot again once the first is answered


LONG = "9" * 5000
MALFORMED = {  # id: (path, what the error says)
    "5000-digits": (f"/v1/models/member/versions/{LONG}", "not a version number"),
    "5000-digits-predict": (f"/v1/models/member/versions/{LONG}:predict", "not a version number"),
    "5000-digits-metadata": (f"/v1/models/member/versions/{LONG}/metadata", "not a version number"),
    "19-digits": ("/v1/models/member/versions/" + "9" * 19, "not a version number"),
    "negative": ("/v1/models/member/versions/-1", "not a version number"),
    "fraction": ("/v1/models/member/versions/1.5:predict", "not a version number"),
    "letters": ("/v1/models/member/versions/abc/metadata", "not a version number"),
    "verb": ("/v1/models/member:frobnicate", "Unknown verb ':frobnicate'"),
    "versioned-verb": ("/v1/models/member/versions/1:classify", "Unknown verb ':classify'"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_every_malformed_url_part_is_a_json_4xx_saying_why(member, case):
    path, says = MALFORMED[case]
    _, root = member
    catalog = Catalog(ensemble.ModelRegistry())
    catalog.register("member", root / "relu.keras")
    with running(create_app(catalog)) as url:
        for method, body in (("GET", None), ("POST", {"instances": [[0.5] * FEATURES]})):
            code, answer = call(url, path, body, method=method)  # a JSON {"error": ...} or fails
            assert 400 <= code < 500 and says in answer["error"], (code, answer)
            assert len(answer["error"]) < 600, answer
