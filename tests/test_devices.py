"""Device placement and memory growth: in a fresh process, since TensorFlow fixes its devices
when it first initialises them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import ensemble, keras
    ensemble.configure_devices(memory_growth=True, logical_cpus=2)  # a no-op for the GPU here
    directory = sys.argv[1]
    for seed, name in ((1, "a"), (2, "b")):
        keras.utils.set_random_seed(seed)
        keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")]).save(
            f"{directory}/{name}.keras")
    registry = ensemble.ModelRegistry()
    registry.register("a", f"{directory}/a.keras", device="/CPU:0")
    registry.register("b", f"{directory}/b.keras", device="/CPU:1")
    x = np.ones((2, 4), "float32")
    result = {}
    for name in ("a", "b"):
        expected = keras.saving.load_model(f"{directory}/{name}.keras")(x)
        result[name] = {
            "equal": bool(np.allclose(registry.predict(name, x), expected, atol=1e-6)),
            "variable_devices": list(registry.stats(name).variable_devices),
        }
    try:
        registry.register("c", f"{directory}/a.keras", device="/GPU:3")
    except ensemble.EnsembleError as error:
        result["bad_device"] = str(error)
    try:
        ensemble.configure_devices(logical_cpus=3)
    except ensemble.EnsembleError as error:
        result["too_late"] = str(error)
    print(json.dumps(result))
    """
)


@pytest.mark.slow
def test_models_pinned_to_logical_devices(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["a"]["equal"] and result["b"]["equal"]
    assert [d.rsplit("/", 1)[-1] for d in result["a"]["variable_devices"]] == ["device:CPU:0"]
    assert [d.rsplit("/", 1)[-1] for d in result["b"]["variable_devices"]] == ["device:CPU:1"]
    assert "Model 'c': device '/GPU:3' is not one of this process's devices" in result["bad_device"]
    assert "'/device:CPU:0', '/device:CPU:1'" in result["bad_device"]
    assert "must be applied before TensorFlow initialises its devices" in result["too_late"]
