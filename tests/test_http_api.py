"""The HTTP server (ensemble.serve.http) through real clients on 127.0.0.1: TF Serving's row and
columnar formats answer what the models answer in process, metadata has TF Serving's shape,
every error is a JSON `{"error": ...}` with its status, NaN rows stay NaN, and /metrics counts."""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

import combiners
import ensemble
from ensemble.serve.catalog import Catalog
from ensemble.serve.http import create_app, running
from tests.conftest import FEATURES, dense_classifier, two_input_ensemble

X = np.random.default_rng(0).normal(size=(5, FEATURES)).astype("float32")


def call(url: str, path: str, body: Any = None, method: str | None = None) -> tuple[int, Any]:
    """Status and parsed JSON of one request; a dict or list `body` is sent as JSON."""
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        text = error.read().decode()
        assert "Traceback" not in text
        answer = json.loads(text)
        assert list(answer) == ["error"] and isinstance(answer["error"], str), answer
        return error.code, answer


def same(got: Any, want: np.ndarray) -> None:
    np.testing.assert_allclose(np.asarray(got, dtype=want.dtype), want, atol=1e-5)


def same_outputs(got: dict[str, Any], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        same(got[key], value)


def columns(predictions: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Row-format predictions (one object per row) as columns by output name."""
    assert all(sorted(row) == sorted(predictions[0]) for row in predictions)
    return {key: [row[key] for row in predictions] for key in predictions[0]}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A member file, an exported ensemble, its .onnx file, a two-input export and a corrupt
    file, each served by name; the in-process models they came from are the references."""
    root = tmp_path_factory.mktemp("http_api")
    member = dense_classifier(0)
    member.save(root / "member.keras")
    mean = ensemble.build_ensemble(
        [ensemble.load_member(dense_classifier(s), name=f"m{s}") for s in (1, 2)], combiners.MeanCombiner()
    )
    export = ensemble.export_saved_model(mean, root / "ensemble")
    two = two_input_ensemble()
    (root / "corrupt.keras").write_bytes(b"not a keras zip " * 64)
    sources = {
        "member": root / "member.keras",
        "ensemble": export,
        "onnx": ensemble.export_onnx(mean, root / "ensemble.onnx"),
        "two": ensemble.export_saved_model(two, root / "two"),
        "corrupt": root / "corrupt.keras",
    }
    catalog = Catalog(ensemble.ModelRegistry())
    for name, source in sources.items():
        catalog.register(name, source)
    with running(create_app(catalog)) as url:
        yield SimpleNamespace(
            url=url, root=root, registry=catalog.registry, member=member, mean=mean, two=two
        )


@pytest.mark.slow
def test_a_member_file_in_both_formats(served):
    want = served.member.predict(X, verbose=0)
    code, answer = call(served.url, "/v1/models/member:predict", {"instances": X.tolist()})
    assert code == 200 and list(answer) == ["predictions"]
    same(answer["predictions"], want)
    named = [{"features": row} for row in X.tolist()]  # rows as objects by input name
    assert call(served.url, "/v1/models/member:predict", {"instances": named})[1] == answer
    for inputs in (X.tolist(), {"features": X.tolist()}):
        code, answer = call(served.url, "/v1/models/member/versions/1:predict", {"inputs": inputs})
        assert code == 200 and list(answer) == ["outputs"]
        same(answer["outputs"], want)


@pytest.mark.parametrize("name", ["ensemble", "onnx"])
def test_an_ensemble_gives_every_output_in_both_formats(served, name):
    want = served.mean.predict(X, verbose=0)
    code, answer = call(served.url, f"/v1/models/{name}:predict", {"instances": X.tolist()})
    assert code == 200 and len(answer["predictions"]) == len(X)
    same_outputs(columns(answer["predictions"]), want)
    code, answer = call(served.url, f"/v1/models/{name}:predict", {"inputs": X.tolist()})
    assert code == 200 and list(answer) == ["outputs"]
    same_outputs(answer["outputs"], want)


@pytest.mark.parametrize("name", ["ensemble", "onnx"])
def test_the_prediction_signature_gives_bare_values(served, name):
    want = served.mean.predict(X, verbose=0)["prediction"]
    for field, key in (("instances", "predictions"), ("inputs", "outputs")):
        body = {"signature_name": "prediction", field: X.tolist()}
        code, answer = call(served.url, f"/v1/models/{name}:predict", body)
        assert code == 200 and list(answer) == [key]
        same(answer[key], want)


def test_a_two_input_ensemble_by_input_name(served):
    rng = np.random.default_rng(1)
    feeds = {"image": rng.normal(size=(4, 4)), "meta": rng.normal(size=(4, 2))}
    want = served.two.predict(feeds, verbose=0)
    rows = [
        {"image": i, "meta": m} for i, m in zip(feeds["image"].tolist(), feeds["meta"].tolist(), strict=True)
    ]
    code, answer = call(served.url, "/v1/models/two:predict", {"instances": rows})
    assert code == 200
    same_outputs(columns(answer["predictions"]), want)
    code, answer = call(
        served.url, "/v1/models/two:predict", {"inputs": {k: v.tolist() for k, v in feeds.items()}}
    )
    assert code == 200
    same_outputs(answer["outputs"], want)


def test_metadata_has_tf_servings_shape(served):
    code, answer = call(served.url, "/v1/models/ensemble/metadata")
    assert code == 200
    assert answer["model_spec"] == {"name": "ensemble", "signature_name": "", "version": "1"}
    defs = answer["metadata"]["signature_def"]["signature_def"]
    assert {"serving_default", "prediction"} <= set(defs)
    default = defs["serving_default"]
    assert default["method_name"] == "tensorflow/serving/predict"
    (features,) = default["inputs"].values()
    assert features["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in features["tensor_shape"]["dim"]] == ["-1", str(FEATURES)]
    outputs = default["outputs"]
    assert sorted(outputs) == sorted(served.mean.output)
    assert [d["size"] for d in outputs["prediction"]["tensor_shape"]["dim"]] == ["-1", "3"]
    assert all(o["dtype"] == "DT_FLOAT" for o in outputs.values())
    assert list(defs["prediction"]["outputs"]) == ["prediction"]
    code, two = call(served.url, "/v1/models/two/versions/1/metadata")
    inputs = two["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]
    assert code == 200 and sorted(inputs) == ["image", "meta"]


def test_status_of_a_single_source(served):
    code, answer = call(served.url, "/v1/models/member")
    assert code == 200 and answer["model_version_status"][0] == {
        "version": "1",
        "state": "AVAILABLE",
        "status": {"error_code": "OK", "error_message": ""},
    }


ROW = [0.5] * FEATURES
BAD_REQUESTS = {  # id: (model, body, a part of the error message)
    "not-json": ("member", b"{instances: [", "not JSON"),
    "not-utf8": ("member", b"\xff\xfe", "not JSON"),
    "not-an-object": ("member", [ROW], "JSON object"),
    "both": ("member", {"instances": [ROW], "inputs": [ROW]}, "exactly one"),
    "neither": ("member", {"signature_name": "serving_default"}, "exactly one"),
    "wrong-input-name": ("member", {"inputs": {"pixels": [ROW]}}, "'features'"),
    "unknown-field": ("member", {"instances": [ROW], "examples": []}, "examples"),
    "no-rows": ("member", {"instances": []}, "non-empty"),
    "wrong-width": ("member", {"instances": [ROW[:-1]]}, f"({FEATURES - 1},)"),
    "wrong-rank": ("member", {"instances": ROW}, "shape ()"),
    "too-deep": ("member", {"inputs": [[ROW]]}, f"(1, 1, {FEATURES})"),
    "strings": ("member", {"instances": [["a"] * FEATURES]}, "strings"),
    "nulls": ("member", {"instances": [[None] * FEATURES]}, "nulls"),
    "booleans": ("member", {"instances": [[True] * FEATURES]}, "bool"),
    "ragged": ("member", {"instances": [ROW, ROW, ROW[:3]]}, "instance 2 has shape (3,)"),
    "ragged-inside": ("member", {"instances": [[ROW], [ROW, ROW[:3]]]}, "instance 1 is not a rectangular"),
    "nested-too-deeply": ("member", b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "too deeply"),
    "too-large": ("member", {"instances": [[1e39] * FEATURES]}, "too large for float32"),
    "signature-not-a-string": ("member", {"signature_name": ["x"], "instances": [ROW]}, "no signature"),
    "unknown-signature": ("member", {"signature_name": "prediction", "instances": [ROW]}, "'prediction'"),
    "missing-input-row": ("two", {"instances": [{"image": [0.0] * 4}]}, "meta"),
    "missing-input-column": ("two", {"inputs": {"image": [[0.0] * 4]}}, "meta"),
    "bare-rows-for-two": ("two", {"instances": [[0.0] * 4]}, "several inputs"),
    "unequal-rows": ("two", {"inputs": {"image": [[0.0] * 4] * 2, "meta": [[0.0] * 2] * 3}}, "as many rows"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_a_bad_body_is_a_400_saying_what_is_wrong(served, case):
    model, body, part = BAD_REQUESTS[case]
    code, answer = call(served.url, f"/v1/models/{model}:predict", body)
    assert code == 400 and part in answer["error"], answer


@pytest.mark.parametrize(
    "path",
    [
        "/v1/models/nosuch:predict",
        "/v1/models/member/versions/2:predict",
        "/v1/models/ensemble@1:predict",  # the registry's key of a version is no model name
        "/v1/models/..:predict",
        "/v1/models/..%2F{root}%2Fmember.keras:predict",
        "/v1/models/member.keras:predict",  # a real file in the working directory
        "/v1/predict",
    ],
)
def test_names_that_are_not_served_are_404_and_load_nothing(served, path, monkeypatch):
    monkeypatch.chdir(served.root)
    path = path.format(root=served.root.name)
    names, loaded = served.registry.names, served.registry.loaded
    absolute = urllib.parse.quote(str(served.root / "member.keras"), safe="")
    for target in (path, f"/v1/models/{absolute}:predict"):
        assert call(served.url, target, {"instances": [ROW]})[0] == 404
    assert call(served.url, path.replace(":predict", "/metadata"))[0] == 404
    assert call(served.url, path.replace(":predict", ""))[0] == 404
    assert served.registry.names == names and served.registry.loaded == loaded


def test_a_corrupt_model_is_a_503_naming_it_and_others_still_answer(served):
    code, answer = call(served.url, "/v1/models/corrupt:predict", {"instances": [ROW]})
    assert code == 503 and "corrupt" in answer["error"]
    assert call(served.url, "/v1/models/corrupt/metadata")[0] == 503
    code, answer = call(served.url, "/v1/models/member:predict", {"instances": [ROW]})
    assert code == 200 and len(answer["predictions"]) == 1
    (version,) = call(served.url, "/v1/models/corrupt")[1]["model_version_status"]
    assert version["state"] == "END" and "corrupt" in version["status"]["error_message"]


def test_a_wrong_method_is_a_405(served):
    for path in ("/v1/models/member:predict", "/v1/models/member/versions/1:predict"):
        code, answer = call(served.url, path)
        assert code == 405 and "GET" in answer["error"], answer
    assert call(served.url, "/v1/models/member", {"instances": [ROW]})[0] == 405


def test_an_unexpected_failure_is_a_500_without_a_trace(served, monkeypatch):
    def broken(name, feeds):
        raise RuntimeError("the model broke")

    monkeypatch.setattr(served.registry, "predict", broken)
    code, answer = call(served.url, "/v1/models/member:predict", {"instances": [ROW]})
    assert code == 500 and "RuntimeError" in answer["error"]


def test_non_finite_rows_are_nan_and_the_others_unchanged(served):
    x = X.copy()
    x[1, 2], x[3, 0] = np.nan, np.inf
    body = json.dumps({"instances": x.tolist()}).encode()
    assert b"NaN" in body and b"Infinity" in body  # the tokens TF Serving's JSON uses
    for name in ("ensemble", "onnx"):
        code, answer = call(served.url, f"/v1/models/{name}:predict", body)
        assert code == 200
        got = columns(answer["predictions"])
        want = served.mean.predict(x, verbose=0)
        for key, value in want.items():
            rows = np.asarray(got[key], dtype="float32")
            assert np.isnan(rows[[1, 3]]).all(), key
            same(rows[[0, 2, 4]], value[[0, 2, 4]])
    x[3, 0] = 0.0
    code, answer = call(served.url, "/v1/models/member:predict", {"inputs": x.tolist()})
    assert code == 200
    rows = np.asarray(answer["outputs"], dtype="float32")
    assert np.isnan(rows[1]).all() and np.isfinite(np.delete(rows, 1, axis=0)).all()
    same(np.delete(rows, 1, axis=0), np.delete(served.member.predict(x, verbose=0), 1, axis=0))


@pytest.fixture(scope="module")
def small(served):
    """A server for the member whose bodies may be 2048 bytes at most."""
    catalog = Catalog(ensemble.ModelRegistry())
    catalog.register("member", served.root / "member.keras")
    with running(create_app(catalog, max_body_bytes=2048)) as url:
        yield url


def test_a_body_over_the_limit_is_a_413(small):
    assert call(small, "/v1/models/member:predict", {"instances": [ROW]})[0] == 200
    big = json.dumps({"instances": [[0.123456789] * FEATURES] * 64}).encode()
    assert len(big) > 6000
    code, answer = call(small, "/v1/models/member:predict", big)
    assert code == 413 and "2048" in answer["error"]
    # Chunked, without a Content-Length: refused once the limit is passed.
    connection = http.client.HTTPConnection(urllib.parse.urlsplit(small).netloc, timeout=60)
    try:
        connection.request("POST", "/v1/models/member:predict", body=iter([big[:4000], big[4000:]]))
        response = connection.getresponse()
        text = response.read().decode()
        assert response.status == 413 and "Traceback" not in text and "2048" in json.loads(text)["error"]
    finally:
        connection.close()
