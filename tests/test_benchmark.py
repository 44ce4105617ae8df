"""The benchmark runs end to end on a tiny configuration (timings are never asserted)."""

from __future__ import annotations

import json

from hydra import compose, initialize
from hydra.core.global_hydra import GlobalHydra

from experiments.benchmark import run


def test_benchmark_smoke(tmp_path):
    GlobalHydra.instance().clear()
    with initialize(version_base="1.3", config_path="../conf"):
        cfg = compose(
            "benchmark",
            overrides=[
                "member_count=2",
                "features=4",
                "hidden=[8]",
                "classes=3",
                "rows=64",
                "epochs=2",
                "batch_size=32",
                "repeats=1",
                "large_batch=64",
                "latency_calls=2",
                "throughput_calls=1",
                "memory_hidden=[16]",
            ],
        )
    GlobalHydra.instance().clear()
    results = run(cfg, output_dir=str(tmp_path))
    assert json.loads((tmp_path / "benchmark.json").read_text()) == results
    fit = results["fit"]
    assert fit["model_fit_s"] > 0 and fit["fit_combiner_s"] > 0
    assert fit["speedup"] == fit["model_fit_s"] / fit["fit_combiner_s"]
    assert "fit_combiner" in (tmp_path / "benchmark.md").read_text()
