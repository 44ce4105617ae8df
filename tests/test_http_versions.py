"""Versions of a TF Serving base (`base/<n>/`) over HTTP: the newest unless a request names one,
each version the answers of the model exported as it, and the base read on every request: a
version published while serving answers the next request, one removed from disk is a 404.
And what the server reports: /healthz, /metrics, and its address (loopback)."""

from __future__ import annotations

import inspect
import os
import re
import shutil
import urllib.parse
import urllib.request
from types import SimpleNamespace

import keras
import numpy as np
import pytest

import combiners
import ensemble
from ensemble.errors import EnsembleError
from ensemble.serve.catalog import Catalog
from ensemble.serve.http import create_app, running, serve
from tests.conftest import dense_classifier
from tests.test_http_api import X, call, columns, same, same_outputs


def small_ensemble(seed: int) -> keras.Model:
    members = [ensemble.load_member(dense_classifier(10 * seed + i), name=f"m{i}") for i in range(2)]
    return ensemble.build_ensemble(members, combiners.MeanCombiner())


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """A base with two versions of differing ensembles, served as model `zoo`."""
    root = tmp_path_factory.mktemp("http_versions")
    old, new = small_ensemble(1), small_ensemble(2)
    ensemble.export_version(old, root / "zoo", version=1)
    ensemble.export_version(new, root / "zoo", version=2)
    catalog = Catalog(ensemble.ModelRegistry())
    catalog.register("zoo", root / "zoo")
    with running(create_app(catalog)) as url:
        yield SimpleNamespace(url=url, root=root, registry=catalog.registry, old=old, new=new)


def predict(url: str, path: str) -> dict[str, np.ndarray]:
    code, answer = call(url, path, {"instances": X.tolist()})
    assert code == 200, answer
    return columns(answer["predictions"])


@pytest.mark.slow
def test_the_newest_version_answers_unless_one_is_named(zoo):
    old, new = zoo.old.predict(X, verbose=0), zoo.new.predict(X, verbose=0)
    assert not np.allclose(old["prediction"], new["prediction"], atol=1e-3)  # the versions differ
    same_outputs(predict(zoo.url, "/v1/models/zoo:predict"), new)
    same_outputs(predict(zoo.url, "/v1/models/zoo/versions/2:predict"), new)
    same_outputs(predict(zoo.url, "/v1/models/zoo/versions/1:predict"), old)
    code, answer = call(zoo.url, "/v1/models/zoo/versions/1:predict", {"inputs": X.tolist()})
    assert code == 200
    same_outputs(answer["outputs"], old)
    assert {"zoo@1", "zoo@2"} <= set(zoo.registry.loaded)
    assert call(zoo.url, "/v1/models/zoo/metadata")[1]["model_spec"]["version"] == "2"
    assert call(zoo.url, "/v1/models/zoo/versions/1/metadata")[1]["model_spec"]["version"] == "1"


def test_status_lists_every_version_newest_first(zoo):
    code, answer = call(zoo.url, "/v1/models/zoo")
    assert code == 200
    assert [v["version"] for v in answer["model_version_status"]] == ["2", "1"]
    assert all(v["state"] == "AVAILABLE" for v in answer["model_version_status"])
    code, answer = call(zoo.url, "/v1/models/zoo/versions/1")
    assert code == 200 and [v["version"] for v in answer["model_version_status"]] == ["1"]


@pytest.mark.parametrize("version", [9, 0])
def test_a_version_not_on_disk_is_a_404(zoo, version):
    loaded = zoo.registry.loaded
    for path in (f"/versions/{version}:predict", f"/versions/{version}/metadata", f"/versions/{version}"):
        code, answer = call(
            zoo.url, "/v1/models/zoo" + path, {"instances": X.tolist()} if ":" in path else None
        )
        assert code == 404 and str(version) in answer["error"], answer
    assert zoo.registry.loaded == loaded and f"zoo@{version}" not in zoo.registry


@pytest.mark.slow
def test_versions_published_and_removed_while_serving(zoo):
    live = zoo.root / "live"
    live.mkdir()
    shutil.copytree(zoo.root / "zoo" / "1", live / "1")
    catalog = Catalog(ensemble.ModelRegistry())
    catalog.register("live", live)
    old, new = zoo.old.predict(X, verbose=0), zoo.new.predict(X, verbose=0)
    with running(create_app(catalog)) as url:
        same_outputs(predict(url, "/v1/models/live:predict"), old)
        assert call(url, "/v1/models/live/versions/2:predict", {"instances": X.tolist()})[0] == 404

        assert ensemble.export_version(zoo.new, live) == os.fspath(live / "2")
        same_outputs(predict(url, "/v1/models/live:predict"), new)
        same_outputs(predict(url, "/v1/models/live/versions/1:predict"), old)
        assert [v["version"] for v in call(url, "/v1/models/live")[1]["model_version_status"]] == ["2", "1"]

        # A version whose graph is corrupt: a 503 naming the model, the others still answer.
        shutil.copytree(live / "2", live / "3")
        (live / "3" / "saved_model.pb").write_bytes(b"not a graph")
        code, answer = call(url, "/v1/models/live:predict", {"instances": X.tolist()})
        assert code == 503 and "live" in answer["error"]
        same_outputs(predict(url, "/v1/models/live/versions/2:predict"), new)
        states = {v["version"]: v["state"] for v in call(url, "/v1/models/live")[1]["model_version_status"]}
        assert states == {"3": "END", "2": "AVAILABLE", "1": "AVAILABLE"}

        shutil.rmtree(live / "3")
        shutil.rmtree(live / "2")
        code, answer = call(url, "/v1/models/live/versions/2:predict", {"inputs": X.tolist()})
        assert code == 404 and "2" in answer["error"]
        same_outputs(predict(url, "/v1/models/live:predict"), old)  # the newest left
        assert catalog.registry.loaded == ["live@1"]  # the removed version left memory
        assert [v["version"] for v in call(url, "/v1/models/live")[1]["model_version_status"]] == ["1"]

        shutil.rmtree(live / "1")
        code, answer = call(url, "/v1/models/live:predict", {"instances": X.tolist()})
        assert code == 404 and "live" in answer["error"]
        assert call(url, "/v1/models/live")[0] == 404
        assert catalog.registry.loaded == []


def test_the_prediction_signature_of_a_version(zoo):
    body = {"signature_name": "prediction", "instances": X.tolist()}
    code, answer = call(zoo.url, "/v1/models/zoo/versions/1:predict", body)
    assert code == 200
    same(answer["predictions"], zoo.old.predict(X, verbose=0)["prediction"])


def requests(text: str, model: str, code: str) -> float:
    """The count of predict requests for `model` answered `code`, in the Prometheus text `text`."""
    labels = {"code": code, "model": model, "verb": "predict"}
    for line in text.splitlines():
        match = re.fullmatch(r"ensemble_requests_total\{(.*)\} (\S+)", line)
        if match and dict(re.findall(r'(\w+)="([^"]*)"', match.group(1))) == labels:
            return float(match.group(2))
    return 0.0


def scrape(url: str) -> str:
    with urllib.request.urlopen(url + "/metrics", timeout=30) as response:
        assert response.status == 200 and response.headers["Content-Type"].startswith("text/plain")
        return response.read().decode()


def test_healthz_and_metrics(zoo):
    code, answer = call(zoo.url, "/healthz")
    assert code == 200 and answer == {"status": "ok", "models": ["zoo"]}
    before = scrape(zoo.url)
    for path in (
        "/v1/models/zoo:predict",
        "/v1/models/ghost-model:predict",
        "/v1/models/zoo/versions/7:predict",
    ):
        call(zoo.url, path, {"instances": X.tolist()})
    call(zoo.url, "/v1/models/zoo/versions/1:predict", {"instances": X[:, :3].tolist()})
    after = scrape(zoo.url)
    for model, code, added in (("zoo", "200", 1), ("zoo", "400", 1), ("zoo", "404", 1), ("", "404", 1)):
        assert requests(after, model, code) == requests(before, model, code) + added, (model, code)
    assert "ghost-model" not in after  # an unknown name is no label: the labels stay bounded
    assert 'ensemble_model_loaded{model="zoo@2"} 1.0' in after
    assert re.search(r'ensemble_model_calls_total\{model="zoo@2"\} [1-9]', after)
    assert re.search(r"ensemble_request_seconds_count\{model=\"zoo\",verb=\"predict\"\} [1-9]", after)


def test_the_server_binds_loopback_by_default(zoo):
    assert urllib.parse.urlsplit(zoo.url).hostname == "127.0.0.1"
    for function in (running, serve):
        assert inspect.signature(function).parameters["host"].default == "127.0.0.1"


@pytest.mark.parametrize("name", ["a:b", "a/b", "zoo@1", ""])
def test_a_name_no_route_can_reach_is_refused(zoo, name):
    with pytest.raises(EnsembleError, match="model name"):
        Catalog(ensemble.ModelRegistry()).register(name, zoo.root / "zoo")
