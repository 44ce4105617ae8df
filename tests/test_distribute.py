"""tf.distribute: strategies from config, TF_CONFIG checked field by field, a sharded level-one pass."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import ensemble
from ensemble.distribute import make_strategy, parse_tf_config

ROOT = Path(__file__).resolve().parents[1]
GOOD = {"cluster": {"worker": ["localhost:12345", "localhost:23456"]}, "task": {"type": "worker", "index": 1}}

TF_CONFIG_ERRORS = [
    (None, r"TF_CONFIG is not set"),
    ("{not json", r"TF_CONFIG is not valid JSON"),
    (json.dumps({"task": GOOD["task"]}), r"TF_CONFIG.cluster: expected a mapping"),
    (json.dumps({**GOOD, "cluster": {"worker": ["localhost"]}}), r"TF_CONFIG.cluster.worker: expected a list of 'host:port'"),
    (json.dumps({"cluster": GOOD["cluster"]}), r"TF_CONFIG.task: expected"),
    (json.dumps({**GOOD, "task": {"type": "chief", "index": 0}}), r"TF_CONFIG.task.type: 'chief' is not a job"),
    (json.dumps({**GOOD, "task": {"type": "worker", "index": 2}}), r"TF_CONFIG.task.index: expected 0..1"),
]


@pytest.mark.parametrize("text, match", TF_CONFIG_ERRORS,
                         ids=["unset", "json", "cluster", "address", "task", "type", "index"])
def test_tf_config_errors_name_the_field(text, match):
    with pytest.raises(ensemble.EnsembleError, match=match):
        parse_tf_config(text)


def test_a_good_tf_config_and_unknown_strategies():
    assert parse_tf_config(json.dumps(GOOD)) == GOOD
    with pytest.raises(ensemble.EnsembleError, match=r"runtime.strategy: expected one of"):
        make_strategy("tpu")


_MIRRORED = textwrap.dedent(
    """
    import json, numpy as np
    import ensemble, combiners
    ensemble.configure_devices(logical_cpus=2)
    from ensemble.distribute import distributed_level_one, make_strategy
    from ensemble.level_one import LevelOneStore
    from tests.conftest import dense_classifier
    strategy = make_strategy("mirrored")
    model = ensemble.build_ensemble(
        [dense_classifier(1, name="a"), dense_classifier(2, name="b")], combiners.MeanCombiner())
    x = np.random.default_rng(0).normal(size=(1001, 8)).astype("float32")  # not a multiple of 2 x 64
    got = distributed_level_one(model, x, strategy, batch_size=64)
    want = LevelOneStore(verbose=0).predictions(model, x)
    print(json.dumps({"replicas": strategy.num_replicas_in_sync, "shape": list(got.shape),
                      "gap": float(np.abs(got - want).max())}))
    """
)


@pytest.mark.slow
def test_mirrored_level_one_over_two_logical_devices_equals_one_device():
    done = subprocess.run(
        [sys.executable, "-c", _MIRRORED], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2 and result["shape"] == [1001, 2, 3] and result["gap"] == 0.0


_FIT = textwrap.dedent(
    """
    import json, numpy as np
    import ensemble, combiners
    ensemble.configure_devices(logical_cpus=2)
    from ensemble.distribute import make_strategy
    from ensemble.fitting import fit_combiner
    from tests.conftest import dense_classifier
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 8)).astype("float32")
    y = rng.integers(0, 3, size=512)
    weights = {}
    for name in ("default", "mirrored"):
        strategy = make_strategy(name)
        with strategy.scope():  # the combiner's variables are created under the strategy
            model = ensemble.build_ensemble(
                [dense_classifier(1, name="a"), dense_classifier(2, name="b")],
                combiners.StackingCombiner())
        fit_combiner(model, x, y, epochs=5, batch_size=64, verbose=0, shuffle=False,
                     strategy=strategy if name == "mirrored" else None)
        weights[name] = [w.tolist() for w in ensemble.ensemble_combiner(model).get_weights()]
        replicas = strategy.num_replicas_in_sync
    gap = max(float(np.abs(np.array(a) - np.array(b)).max())
              for a, b in zip(weights["default"], weights["mirrored"]))
    print(json.dumps({"replicas": replicas, "gap": gap}))
    """
)


@pytest.mark.slow
def test_fit_combiner_under_mirrored_equals_one_device():
    done = subprocess.run(
        [sys.executable, "-c", _FIT], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert result["gap"] < 1e-4, result  # same data and order: same combiner within float error
