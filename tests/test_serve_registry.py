"""experiments.serve_registry: the zoo served from config to concurrent clients."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_serve_the_zoo_with_eviction(wine_overrides, tmp_path):
    # A fresh process: device settings apply only before TensorFlow initialises its devices.
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.serve_registry",
            *wine_overrides,
            "registry.max_loaded=2",
            "registry.threads=4",
            "registry.requests=60",
            f"hydra.run.dir={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "registry.json").read_text())
    models = result["models"]
    assert sorted(models) == ["deep_mlp", "linear", "mlp", "wide"]
    assert sum(m["calls"] for m in models.values()) == 60
    assert len(result["loaded"]) <= 2 and result["rss_bytes"] > 0
    assert all(m["params"] for m in models.values() if m["loads"])
    # Four models behind max_loaded=2 under a random load: some were evicted and reloaded.
    assert sum(m["loads"] for m in models.values()) > 4
