"""The benchmark runs end to end on a tiny configuration (timings are never asserted)."""

from __future__ import annotations

import functools
import json
import statistics
from pathlib import Path

import pytest
from hydra import compose, initialize
from hydra.core.global_hydra import GlobalHydra

from experiments.benchmark import run


@pytest.mark.slow  # 45-50 s on 2 cores: the whole benchmark, end to end
def test_benchmark_smoke(tmp_path: Path) -> None:
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
                "fusion_members=3",
                "level_one_rows=2000",
                "level_one_hidden=[8]",
                "level_one_batch_size=256",
            ],
        )
    GlobalHydra.instance().clear()
    results = run(cfg, output_dir=str(tmp_path))
    assert json.loads((tmp_path / "benchmark.json").read_text()) == results
    fit = results["fit"]
    assert fit["model_fit_s"] > 0 and fit["fit_combiner_s"] > 0
    assert fit["speedup"] == statistics.median(fit["speedups"]) and len(fit["speedups"]) == 1
    table = (tmp_path / "benchmark.md").read_text()
    assert "fit_combiner" in table
    stacking = results["stacking"]  # rows=64: the stacking entry's floor of 100 rows
    assert stacking["rows"] == 100 and stacking["meta_features"] == 40
    assert stacking["speedup"] == stacking["old_s"] / stacking["new_s"]
    assert stacking["target_met"] == (stacking["new_s"] < stacking["target_s"])
    # At a fixed C our fit is at scikit-learn's optimum at tol 1e-10, or below it.
    assert stacking["optimum"]["tol_1e-10"]["gap_over_ours"] > -1e-6
    assert "stacker fit on digits' meta features" in table and "3 s at the optimum" in table
    onnx = results["onnx"]
    assert (
        set(onnx["batch_1_s"])
        == set(onnx["batch_64_s"])
        == {
            "naive tf2onnx of the SavedModel",
            "export_onnx",
            "exported serving_default",
            "compiled_predict",
            "compiled_predict, XLA",
            "ONE member, compiled",
            "ONE member, compiled, XLA",
            "ONE member, its concrete function",
            "ONE member, its concrete function, XLA",
        }
    )
    assert all(share > 0 for share in onnx["share_of_peak"].values())
    assert set(onnx["layer_matmul_gflops"]["TF"]) == {"4x8", "8x3"} and "the members' matmuls alone" in table
    assert all(share > 0 for share in onnx["layer_matmuls_share_of_peak"].values())
    assert "vs ONE member's compiled call" in table and "vs ONE member's fastest call" in table
    assert "`export_onnx` vs tf2onnx's command line" in table and "share of the matmul peak" in table
    fusion = results["fusion"]
    assert fusion["fused"] == [["member_0", "member_1", "member_2"]] and fusion["default_fused"] == []
    assert len(fusion["batch_1_s"]) == 6 and "members of one architecture, onnxruntime, batch 1" in table
    memory = results["level_one_memory"]
    assert memory["rows"] == 2000 and memory["x_copied_for_fingerprint"] is False
    assert "level-one pass, 2,000 rows" in table


def test_interleaved_rounds_rotate_and_time_each_call_after_an_untimed_one() -> None:
    from experiments.benchmarks.rounds import interleaved_seconds

    made: list[str] = []
    seconds = interleaved_seconds({name: functools.partial(made.append, name) for name in "abc"}, 3)
    assert set(seconds) == {"a", "b", "c"} and all(s >= 0 for s in seconds.values())
    warm_up, rounds = made[:3], [made[3 + 6 * r : 9 + 6 * r] for r in range(3)]
    assert warm_up == ["a", "b", "c"] and len(made) == 3 + 18
    assert rounds == [list("aabbcc"), list("bbccaa"), list("ccaabb")]
