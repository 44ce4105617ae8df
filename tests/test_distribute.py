"""tf.distribute: strategies from config, TF_CONFIG checked field by field, a sharded level-one pass."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import ensemble
from ensemble.runtime import is_chief, make_strategy, parse_tf_config
from tests.conftest import compose_config

ROOT = Path(__file__).resolve().parents[1]
GOOD = {"cluster": {"worker": ["localhost:12345", "localhost:23456"]}, "task": {"type": "worker", "index": 1}}

TF_CONFIG_ERRORS = [
    (None, r"TF_CONFIG is not set"),
    ("{not json", r"TF_CONFIG is not valid JSON"),
    (json.dumps({"task": GOOD["task"]}), r"TF_CONFIG.cluster: expected a mapping"),
    (
        json.dumps({**GOOD, "cluster": {"worker": ["localhost"]}}),
        r"TF_CONFIG.cluster.worker: expected a list of 'host:port'",
    ),
    (json.dumps({"cluster": GOOD["cluster"]}), r"TF_CONFIG.task: expected"),
    (
        json.dumps({**GOOD, "task": {"type": "chief", "index": 0}}),
        r"TF_CONFIG.task.type: 'chief' is not a job",
    ),
    (json.dumps({**GOOD, "task": {"type": "worker", "index": 2}}), r"TF_CONFIG.task.index: expected 0..1"),
]


@pytest.mark.parametrize(
    "text, match", TF_CONFIG_ERRORS, ids=["unset", "json", "cluster", "address", "task", "type", "index"]
)
def test_tf_config_errors_name_the_field(text, match):
    with pytest.raises(ensemble.EnsembleError, match=match):
        parse_tf_config(text)


def test_a_good_tf_config_and_unknown_strategies():
    assert parse_tf_config(json.dumps(GOOD)) == GOOD
    assert make_strategy("default") is None  # no strategy: TensorFlow's own placement
    with pytest.raises(ensemble.EnsembleError, match=r"runtime.strategy: expected one of"):
        make_strategy("tpu")
    with pytest.raises(ensemble.EnsembleError, match=r"runtime.timeout_s: expected a positive"):
        make_strategy("multi_worker", timeout_s=0)


@pytest.mark.parametrize(
    "cluster, task, chief",
    [
        ({"worker": ["a:1", "b:1"]}, {"type": "worker", "index": 0}, True),
        ({"worker": ["a:1", "b:1"]}, {"type": "worker", "index": 1}, False),
        ({"chief": ["c:1"], "worker": ["a:1"]}, {"type": "chief", "index": 0}, True),
        ({"chief": ["c:1"], "worker": ["a:1"]}, {"type": "worker", "index": 0}, False),
    ],
    ids=["worker0", "worker1", "chief", "worker-with-chief"],
)
def test_only_the_chief_writes(monkeypatch, cluster, task, chief):
    import tensorflow as tf

    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": task}))
    strategy = SimpleNamespace(cluster_resolver=tf.distribute.cluster_resolver.TFConfigClusterResolver())
    assert is_chief(strategy) is chief
    assert is_chief(None)  # one process: it writes


ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}


def _start(args: list[str], tf_config: dict | None = None) -> subprocess.Popen:
    """A fresh Python running `args` (devices are fixed at TF's start), as one worker if
    `tf_config` is given."""
    env = ENV if tf_config is None else {**ENV, "TF_CONFIG": json.dumps(tf_config)}
    return subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def _wait(jobs: list[subprocess.Popen], timeout: float = 300) -> list[tuple[str, str]]:
    """Each job's (stdout, stderr) once it ended; bounded, then killed: never hangs the suite."""
    try:
        return [job.communicate(timeout=timeout) for job in jobs]
    finally:
        for job in jobs:
            job.kill()


def _succeed(jobs: list[subprocess.Popen]) -> list[str]:
    """Each job's stdout, once every job ended well."""
    outputs = _wait(jobs)
    for job, (_, err) in zip(jobs, outputs, strict=True):
        assert job.returncode == 0, err[-3000:]
    return [out for out, _ in outputs]


def _cluster(count: int) -> list[dict]:
    """The TF_CONFIG of each worker of a `count`-worker cluster on loopback ports."""
    cluster = {"worker": [f"127.0.0.1:{_free_port()}" for _ in range(count)]}
    return [{"cluster": cluster, "task": {"type": "worker", "index": i}} for i in range(count)]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_fresh(script: str) -> dict:
    """Run `script` in a fresh Python and read its JSON line."""
    (out,) = _succeed([_start(["-c", script])])
    return json.loads(out.strip().splitlines()[-1])


# One fresh Python (devices are fixed at TF's start) splits its CPU into two logical devices and
# checks both halves of `runtime=mirrored`: the sharded level-one pass, then `fit_combiner` under
# the strategy against the same fit on one device. One child for both instead of one each.
_MIRRORED = textwrap.dedent(
    """
    import json, numpy as np
    import ensemble, combiners
    ensemble.configure_devices(logical_cpus=2)
    from ensemble.fitting import LevelOneStore, distributed_level_one, fit_combiner
    from ensemble.runtime import make_strategy
    from tests.conftest import dense_classifier
    strategy = make_strategy("mirrored")
    model = ensemble.build_ensemble(
        [dense_classifier(1, name="a"), dense_classifier(2, name="b")], combiners.MeanCombiner())
    x = np.random.default_rng(0).normal(size=(1001, 8)).astype("float32")  # not a multiple of 2 x 64
    got = distributed_level_one(model, x, strategy, batch_size=64)
    want = LevelOneStore(verbose=0).predictions(model, x)
    level_one = {"replicas": strategy.num_replicas_in_sync, "shape": list(got.shape),
                 "gap": float(np.abs(got - want).max())}
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 8)).astype("float32")
    y = rng.integers(0, 3, size=512)
    weights, losses = {}, {}
    # The same MirroredStrategy again (a second one in this process would reuse its collective
    # instance keys), and no strategy at all: make_strategy("default") is None.
    for name, where in (("default", make_strategy("default")), ("mirrored", strategy)):
        model = ensemble.build_ensemble(  # built anywhere: fit_combiner trains a replica in scope
            [dense_classifier(1, name="a"), dense_classifier(2, name="b")], combiners.StackingCombiner())
        history = fit_combiner(model, x, y, epochs=5, batch_size=64, verbose=0, seed=0,
                               validation_split=0.25, strategy=where)
        weights[name] = [w.tolist() for w in ensemble.ensemble_combiner(model).get_weights()]
        losses[name] = history.history["loss"] + history.history["val_loss"]
    gap = max(float(np.abs(np.array(a) - np.array(b)).max())
              for a, b in zip(weights["default"], weights["mirrored"]))
    fit = {"replicas": strategy.num_replicas_in_sync, "gap": gap,
           "loss_gap": float(np.abs(np.subtract(losses["default"], losses["mirrored"])).max())}
    print(json.dumps({"level_one": level_one, "fit": fit}))
    """
)


@pytest.fixture(scope="module")
def mirrored() -> dict:
    """Both results of the `_MIRRORED` child, run once for the two tests below."""
    return run_fresh(_MIRRORED)


@pytest.mark.slow
def test_mirrored_level_one_over_two_logical_devices_equals_one_device(mirrored):
    result = mirrored["level_one"]
    # Equal to float32 rounding: a matmul's result may depend on its batch's size on this CPU
    # (1 ulp, about 1e-7); rows out of order would differ by far more.
    assert result["replicas"] == 2 and result["shape"] == [1001, 2, 3] and result["gap"] <= 1e-6


@pytest.mark.slow
def test_fit_combiner_under_mirrored_equals_one_device(mirrored):
    result = mirrored["fit"]
    assert result["replicas"] == 2
    # Same data, same seeded shuffle: the same combiner and losses within float error.
    assert result["gap"] < 1e-5 and result["loss_gap"] < 1e-5, result


_WORKER = textwrap.dedent(
    """
    import json, sys, numpy as np
    import ensemble, combiners
    from ensemble.fitting import distributed_level_one, fit_combiner
    from ensemble.runtime import make_strategy
    from tests.conftest import dense_classifier
    strategy = make_strategy(sys.argv[1], timeout_s=120)
    model = ensemble.build_ensemble(
        [dense_classifier(1, name="a"), dense_classifier(2, name="b")], combiners.StackingCombiner())
    rng = np.random.default_rng(0)
    x = rng.normal(size=(301, 8)).astype("float32")
    y = rng.integers(0, 3, size=301)
    level_one = distributed_level_one(model, x, strategy, batch_size=32)
    history = fit_combiner(model, x, y, epochs=4, batch_size=32, verbose=0, seed=0,
                           validation_split=0.2, level_one=level_one, strategy=strategy)
    np.savez(sys.argv[2], level_one=level_one, losses=history.history["loss"] + history.history["val_loss"],
             replicas=1 if strategy is None else strategy.num_replicas_in_sync,
             **{f"w{i}": w for i, w in enumerate(ensemble.ensemble_combiner(model).get_weights())})
    """
)


@pytest.mark.slow
def test_two_workers_on_loopback_equal_one_process(tmp_path):
    import numpy as np

    # The one-process reference runs beside the two workers (it waits on nothing; they wait on
    # each other): three fresh processes at once instead of one, then two.
    _succeed(
        [
            _start(["-c", _WORKER, "default", str(tmp_path / "single.npz")]),
            *(
                _start(["-c", _WORKER, "multi_worker", str(tmp_path / f"worker{i}.npz")], config)
                for i, config in enumerate(_cluster(2))
            ),
        ]
    )
    reference = np.load(tmp_path / "single.npz")
    for i in range(2):
        result = np.load(tmp_path / f"worker{i}.npz")
        assert int(result["replicas"]) == 2
        # Each worker predicted its shard; every row comes back, in order, on both workers (to
        # float32 rounding: per-replica batches are smaller, and a matmul may round by batch size).
        np.testing.assert_allclose(result["level_one"], reference["level_one"], rtol=0, atol=1e-6)
        # Each worker trained on its half of every batch: the same combiner as one process.
        for key in ("w0", "w1"):
            np.testing.assert_allclose(result[key], reference[key], atol=1e-5)
        np.testing.assert_allclose(result["losses"], reference["losses"], atol=1e-5)


_LONELY = textwrap.dedent(
    """
    import sys
    from ensemble.runtime import make_strategy
    make_strategy("multi_worker", timeout_s=5)
    """
)


@pytest.mark.slow
def test_a_worker_that_never_comes_up_is_an_error_not_a_hang(tmp_path):
    # Worker 0 (the coordination leader) alone, then worker 1 alone: each waits for the
    # other, and must give up after runtime.timeout_s with an error naming TF_CONFIG.
    for index in (0, 1):
        started = time.monotonic()
        lonely = _start(["-c", _LONELY], _cluster(2)[index])
        ((_, err),) = _wait([lonely], timeout=120)
        assert lonely.returncode != 0
        assert "Not every worker of TF_CONFIG.cluster" in err, err[-3000:]
        assert time.monotonic() - started < 90


def _job(overrides: list[str], run_dir: Path, tf_config: dict | None = None) -> subprocess.Popen:
    return _start(["-m", "experiments.run", *overrides, f"hydra.run.dir={run_dir}"], tf_config)


@pytest.mark.slow
def test_the_main_job_under_each_strategy_equals_one_process(wine_overrides, tmp_path):
    # The Keras-trained stacker: its level-one pass and its training run under the strategy.
    # Two of the wine zoo's members and three epochs show it as well as four and ten: the
    # assertions compare each run with the one-process run, metric by metric, to 1e-5.
    fewer = ["~zoo.members.deep_mlp", "~zoo.members.wide"]
    job = [*wine_overrides, *fewer, "export=none", "combiner=stack_keras", "fit.epochs=3"]
    # The zoo is trained already (`wine_overrides`): every job only loads it, so one process, the
    # mirrored one and the two workers of the cluster all run at once.
    _succeed(
        [
            _job(job, tmp_path / "single"),
            _job([*job, "runtime=mirrored", "runtime.logical_cpus=2"], tmp_path / "mirrored"),
            *(
                _job([*job, "runtime=multi_worker", "runtime.timeout_s=120"], tmp_path / f"worker{i}", config)
                for i, config in enumerate(_cluster(2))
            ),
        ]
    )
    single = json.loads((tmp_path / "single" / "metrics.json").read_text())
    assert not (tmp_path / "worker1" / "metrics.json").exists()  # only the chief writes
    assert not (tmp_path / "worker1" / "report.md").exists()
    for run in ("mirrored", "worker0"):
        result = json.loads((tmp_path / run / "metrics.json").read_text())
        assert result["members"] == single["members"] and len(single["members"]) == 2
        for metric, value in single["ensemble"].items():
            assert result["ensemble"][metric] == pytest.approx(value, abs=1e-5), (run, metric)


def test_multi_worker_refuses_what_each_worker_would_do_alone(tmp_path):
    from hydra.utils import instantiate

    from experiments.job import FitContext, members_config

    cfg = compose_config("data=wine", f"zoo.dir={tmp_path / 'empty'}", "runtime=multi_worker")
    data = instantiate(cfg.data)
    # Workers racing to train the same files: trained once, first, instead.
    with pytest.raises(ensemble.EnsembleError, match=r"multi_worker: zoo member\(s\) \['mlp'.* missing from"):
        members_config(cfg, data)
    cfg = compose_config("data=wine", "runtime=multi_worker", "regime=oof")
    context = FitContext(cfg=cfg, data=data, fit=instantiate(cfg.fit), strategy=None, output_dir=None)
    with pytest.raises(ensemble.EnsembleError, match=r"regime=oof retrains the members in every fold"):
        instantiate(cfg.regime).fit(context)
