"""experiments.serve: its config, and the README's curl example against the script as written."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request

import numpy as np
import pytest
from sklearn.datasets import load_digits

from tests.conftest import compose_config, serving_port
from tests.test_readme import ROOT, readme

SECTION = "Serving over HTTP: TF Serving's REST API"


def serve_config(*overrides: str):  # type: ignore[no-untyped-def]
    return compose_config(*overrides, config_name="serve")


def readme_commands() -> list[str]:
    section = readme().split(f"## {SECTION}\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "no bash block in the serving section"
    return block.group(1).strip().splitlines()


def test_defaults_bind_loopback_on_tf_servings_port():
    cfg = serve_config()
    assert (cfg.serve.host, cfg.serve.port, cfg.serve.models) == ("127.0.0.1", 8501, None)
    assert cfg.registry.max_loaded == 3  # the registry's own group still applies


def test_the_readmes_override_of_models_parses():
    section = readme().split(f"## {SECTION}\n", 1)[1]
    line = next(line for line in section.splitlines() if "serve.models=" in line)
    override = re.search(r"'(serve\.models=.*)'", line).group(1)  # type: ignore[union-attr]
    models = serve_config(override).serve.models
    assert sorted(models) == ["digits", "mlp"] and str(models.digits) == "exports/digits"


def test_models_from_the_command_line(tmp_path):
    from experiments.serve import catalog_of

    keras = pytest.importorskip("keras")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.save(tmp_path / "a-b.keras")
    cfg = serve_config(
        f"serve.models={{plain: {tmp_path}/a-b.keras, "
        f"spec: {{source: {tmp_path}/a-b.keras, options: {{output: probabilities}}}}}}"
    )
    catalog = catalog_of(cfg)
    assert catalog.names == ["plain", "spec"]
    assert catalog.registry.loaded == []  # nothing loads before its first request
    assert catalog.registry.predict("plain", np.ones((1, 4))).shape == (1, 2)


@pytest.mark.slow
def test_readme_curl_example_works_as_written(tmp_path):
    start, ask = readme_commands()
    assert start.endswith("python -m experiments.serve") and ask.startswith("curl ")
    zoo = tmp_path / "zoo"
    others = ("deep_mlp", "cnn", "cnn_narrow", "linear", "wide")  # the example asks the MLP only
    overrides = [f"~zoo.members.{m}" for m in others]
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "experiments.serve",
            "serve.port=0",
            f"zoo.dir={zoo}",
            *overrides,
            "zoo.members.mlp.train.epochs=5",
            "zoo.members.mlp.train.refit=false",  # one fit, not two: the answer is compared, not its quality
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    with serving_port(server, 300) as port:
        command = ask.replace("127.0.0.1:8501", f"127.0.0.1:{port}")
        if shutil.which("curl"):
            answer = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=60).stdout
        else:  # the same request without curl: its -d body to its URL
            body, url = re.search(r"-d '(.*)' (\S+)$", command).groups()  # type: ignore[union-attr]
            with urllib.request.urlopen(urllib.request.Request(url, data=body.encode()), timeout=60) as r:
                answer = r.read().decode()
        (row,) = json.loads(answer)["predictions"]
        assert len(row) == 10 and abs(sum(row) - 1) < 1e-5
        # The same member loaded alone in this process answers the same.
        import ensemble

        sent = json.loads(re.search(r"-d '(.*)'", ask).group(1))["instances"]  # type: ignore[union-attr]
        assert np.array_equal(sent[0], load_digits().data[0])  # the README's row is digits' first
        member = ensemble.load_member(str(zoo / "mlp.keras"), name="mlp")
        np.testing.assert_allclose(row, member.predict(np.asarray(sent), verbose=0)[0], atol=1e-5)
