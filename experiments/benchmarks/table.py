"""The benchmark's ratios as the markdown table of benchmark.md."""

from __future__ import annotations

from typing import Any

__all__ = ["markdown"]


def markdown(results: dict[str, Any]) -> str:
    fit, inference = results["fit"], results["inference"]
    latency, throughput = inference["latency_s"], inference["throughput_rows_per_s"]
    ours = latency["compiled_predict"]
    lines = [
        "| measure | ratio |",
        "| --- | --- |",
        f"| `fit_combiner` vs `model.fit` of the whole frozen graph ({results['config']['epochs']} "
        f"epochs) | {fit['speedup']:.1f}x faster |",
    ]
    for name, seconds in latency.items():
        lines.append(f"| batch 1 latency: {name} | {seconds / ours:.2f}x `compiled_predict` |")
    lines.append(
        f"| batch 1: exported ensemble vs ONE compiled member | "
        f"{latency['exported serving_default'] / inference['one_compiled_member_latency_s']:.2f}x |"
    )
    lines.append(
        f"| batch 1: `model.predict` loop vs exported ensemble | "
        f"{latency['loop of member.predict'] / latency['exported serving_default']:.0f}x slower |"
    )
    best = max(throughput.values())
    for name, rows in throughput.items():
        lines.append(
            f"| batch {results['config']['large_batch']} throughput: {name} | {rows / best:.2f}x the best |"
        )
    lines.append(
        f"| ensemble at batch {results['config']['large_batch']} vs the matmul peak | "
        f"{inference['ensemble_gflops_at_large_batch'] / inference['matmul_peak_gflops']:.0%} |"
    )
    overhead, memory = results["overhead"], results["memory"]
    lines.append(
        f"| combiner + uncertainty outputs at batch {results['config']['large_batch']} | "
        f"{overhead['overhead']:+.1%} over the members alone |"
    )
    lines.append(
        f"| load: {results['config']['member_count']} member files vs the export | "
        f"{memory['members_load_s'] / memory['export_load_s']:.2f}x |"
    )
    lines.append(
        f"| resident memory held per member vs its weight bytes ({memory['weight_mb']:.0f} MB "
        f"of weights; {memory['rss_before_trim_over_weight_bytes']:.2f}x before the allocator "
        f"returns freed pages) | {memory['rss_over_weight_bytes']:.2f}x |"
    )
    return "\n".join(lines) + "\n"
