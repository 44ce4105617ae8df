"""Fail before the work, keep the work: the main job's export options are checked when it starts
(experiments.preflight), an export that fails late still leaves metrics.json and report.md, and
the README's versioned-serving example runs in the order it is written."""

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

import ensemble
from experiments import preflight
from experiments.preflight import check_export
from experiments.run import run
from tests.conftest import compose_config, serving_port
from tests.test_readme import ROOT, readme

SERVING = "Serving over HTTP: TF Serving's REST API"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("export.onnx=maybe", "export.onnx: expected true or false. Received: 'maybe'"),
        ("export.verify=1", "export.verify: expected true or false. Received: 1"),
        ("export.versioned=yes_please", "export.versioned: expected true or false"),
        ("export.enabled=no", "export.enabled: expected true or false. Received: 'no'"),
        ("export.tflite=[none,int4]", r"export.tflite: expected quantizations from .* Received: \['int4'\]"),
        ("export.tflite=dynamic", "export.tflite: expected a list of quantizations"),
        ("export.keep=0", "export.keep: expected an integer >= 1 or null. Received: 0"),
    ],
)
def test_a_wrong_export_value_is_named_before_any_work(override, message, tmp_path):
    with pytest.raises(ensemble.EnsembleError, match=message):
        check_export(compose_config(override), str(tmp_path))


def test_the_defaults_and_the_none_option_pass(tmp_path):
    check_export(compose_config(), str(tmp_path))
    check_export(compose_config("export=none"), str(tmp_path))
    check_export(compose_config("export.versioned=true", "export.keep=3"), str(tmp_path))


def test_a_versioned_base_without_its_parent_is_refused(tmp_path):
    base = tmp_path / "missing" / "zoo"
    cfg = compose_config("export.versioned=true", f"export.dir={base}")
    with pytest.raises(ensemble.EnsembleError, match=r"export.dir=.*its parent directory does not exist"):
        check_export(cfg, str(tmp_path / "run"))
    (tmp_path / "missing").mkdir()
    check_export(cfg, str(tmp_path / "run"))  # the base itself is made by the export


def test_an_export_path_taken_or_not_writable_is_refused(tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "something").write_text("x")
    with pytest.raises(ensemble.EnsembleError, match=r"export.dir=.*already exists and is not empty"):
        check_export(compose_config(f"export.dir={taken}"), str(tmp_path))
    with pytest.raises(ensemble.EnsembleError, match=r"holds no export"):
        check_export(compose_config(f"export.dir={taken}", "export.overwrite=true"), str(tmp_path))
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        cfg = compose_config("export.versioned=true", f"export.dir={locked / 'zoo'}")
        with pytest.raises(ensemble.EnsembleError, match=r"no permission to write"):
            check_export(cfg, str(tmp_path))


def test_onnx_without_its_extra_is_refused(monkeypatch, tmp_path):
    real = preflight.importlib.util.find_spec
    monkeypatch.setattr(
        preflight.importlib.util, "find_spec", lambda name, *a: None if name == "tf2onnx" else real(name, *a)
    )
    with pytest.raises(ensemble.EnsembleError, match=r"export.onnx: needs .*tf2onnx not installed"):
        check_export(compose_config("export.onnx=true"), str(tmp_path))
    check_export(compose_config("export.onnx=false"), str(tmp_path))  # not wanted: not needed


def test_the_main_job_refuses_before_it_loads_data(monkeypatch, tmp_path):
    import experiments.run

    def no_work(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("the job started its work")

    monkeypatch.setattr(experiments.run, "fit_and_evaluate", no_work)
    with pytest.raises(ensemble.EnsembleError, match=r"export.onnx: expected true or false"):
        run(compose_config("export.onnx=maybe"), output_dir=str(tmp_path))
    cfg = compose_config("export.versioned=true", f"export.dir={tmp_path / 'no' / 'base'}")
    with pytest.raises(ensemble.EnsembleError, match=r"parent directory does not exist"):
        run(cfg, output_dir=str(tmp_path))


@pytest.mark.slow
def test_an_export_that_fails_late_leaves_metrics_and_report(monkeypatch, tmp_path, wine_overrides):
    """The whole job up to its export, on two members of the shared wine zoo (trained once per
    run and only read here, instead of a zoo of its own trained for this test)."""
    import experiments.job

    def failing_export(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError("disk full")

    monkeypatch.setattr(experiments.job, "export", failing_export)
    others = [f"~zoo.members.{m}" for m in ("deep_mlp", "wide", "cnn", "cnn_narrow")]
    cfg = compose_config(*wine_overrides, *others, "combiner=mean")
    with pytest.raises(OSError, match="disk full"):
        run(cfg, output_dir=str(tmp_path))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {"task", "combiner", "members", "baselines", "ensemble"} <= set(metrics)
    assert metrics["export_dir"] is None and metrics["export_error"] == "OSError: disk full"
    report = (tmp_path / "report.md").read_text()
    assert "## Test metrics" in report and "| **ensemble** |" in report
    assert "Failed, nothing exported: OSError: disk full" in report and "SavedModel at" not in report


def bash_blocks(title: str) -> list[str]:
    """Every fenced bash block under the README's `## title`, as test_readme.section_code reads
    the first."""
    section = readme().split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", section, re.S)


def ask(command: str, port: int) -> dict:  # type: ignore[type-arg]
    """A README curl line against `port`, by curl, else the same body posted with urllib."""
    command = command.replace("127.0.0.1:8501", f"127.0.0.1:{port}")
    if shutil.which("curl"):
        done = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=60)
        return json.loads(done.stdout)  # type: ignore[no-any-return]
    body, url = re.search(r"-d '(.*)' (\S+)$", command).groups()  # type: ignore[union-attr]
    with urllib.request.urlopen(urllib.request.Request(url, data=body.encode()), timeout=60) as answer:
        return json.loads(answer.read().decode())  # type: ignore[no-any-return]


@pytest.mark.slow
def test_readme_versioned_serving_example_runs_in_its_order(tmp_path):
    """The README's commands as written, in a fresh directory, in order: the main job writes
    exports/digits/1/, the server serves it (and the zoo's MLP file), both curls answer. Only
    bounds are appended: two small zoo members, no TFLite, any free loopback port."""
    make, start, *asks = bash_blocks(SERVING)[1].strip().splitlines()
    assert "experiments.run" in make and "experiments.serve" in start and len(asks) == 2
    env = {k: v for k, v in os.environ.items() if k != "PWD"} | {
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "PYTHONPATH": ROOT,
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),  # its python
    }
    others = [f"~zoo.members.{m}" for m in ("deep_mlp", "wide", "cnn", "cnn_narrow")]
    small = [*others, *(f"zoo.members.{m}.train.epochs=5" for m in ("mlp", "linear")), "export.tflite=[]"]
    shell = {"shell": True, "executable": "/bin/bash", "cwd": tmp_path, "env": env, "text": True}
    done = subprocess.run(f"{make} {' '.join(small)}", capture_output=True, timeout=300, **shell)
    assert done.returncode == 0, done.stderr[-4000:]
    assert ensemble.read_manifest(tmp_path / "exports" / "digits" / "1")["task"] == "classification"
    server = subprocess.Popen(
        f"exec {start} serve.port=0", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **shell
    )
    with serving_port(server, 180) as port:
        newest, version_1 = (ask(command, port) for command in asks)
        (row,) = newest["predictions"]  # an ensemble answers every output per row
        assert {"prediction", "member_predictions"} <= set(row)
        assert abs(sum(row["prediction"]) - 1) < 1e-5
        np.testing.assert_allclose(np.ravel(version_1["outputs"]), row["prediction"], atol=1e-6)
