"""The benchmark's ratios as the markdown table of benchmark.md."""

from __future__ import annotations

from typing import Any

from experiments.benchmarks.fitting import fitting_lines

__all__ = ["fusion_lines", "markdown", "onnx_lines", "stacking_lines"]


def markdown(results: dict[str, Any]) -> str:
    inference = results["inference"]
    latency, throughput = inference["latency_s"], inference["throughput_rows_per_s"]
    ours = latency["compiled_predict"]
    lines = ["| measure | ratio |", "| --- | --- |", *fitting_lines(results)]
    for name, seconds in latency.items():
        lines.append(f"| batch 1 latency: {name} | {seconds / ours:.2f}x `compiled_predict` |")
    lines.append(
        f"| batch 1: `model.predict` loop vs exported ensemble | "
        f"{latency['loop of member.predict'] / latency['exported serving_default']:.0f}x slower |"
    )
    best = max(throughput.values())
    for name, rows in throughput.items():
        lines.append(
            f"| batch {results['config']['large_batch']} throughput: {name} | {rows / best:.2f}x the best |"
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
    if "stacking" in results:
        lines.extend(stacking_lines(results["stacking"]))
    large_batch = results["config"]["large_batch"]
    if "onnx" in results:
        lines.extend(onnx_lines(results["onnx"], large_batch))
    if "fusion" in results:
        lines.extend(fusion_lines(results["fusion"], large_batch))
    return "\n".join(lines) + "\n"


def stacking_lines(stacking: dict[str, Any]) -> list[str]:
    """The stacker fit's rows: speed against the previous fit, held-out quality, the optimum, the target."""
    rows, width = stacking["rows"], stacking["meta_features"]
    gtol, cv_gtol = stacking["gtol"], stacking["cv_gtol"]
    repeats = f"median of {stacking['new_repeats']}; the old fit's of {stacking['old_repeats']}"
    held, optimum = stacking["held_out"], stacking["optimum"]
    old, new = held["old"], held["new"]
    default, tight = optimum["default_tol"], optimum["tol_1e-10"]
    target = stacking["target_s"]
    verdict = (
        f"met: {stacking['new_s']:.2f} s ({stacking['new_s'] / target:.2f}x the target)"
        if stacking["target_met"]
        else f"missed by {stacking['target_missed_by_s']:.2f} s ({stacking['new_s'] / target:.2f}x the target)"
    )
    return [
        f"| stacker fit on digits' meta features ({rows} rows x {width}: "
        f"{len(stacking['members'])} scikit-learn members x {stacking['classes']} classes), by 5-fold CV: "
        f"`cross_validated_stacker` (L-BFGS + trust-ncg to gtol {gtol:g}, folds to {cv_gtol:g}, one BLAS "
        f"thread; {stacking['new_s']:.2f} s, chose {stacking['new_choice']}) vs `LogisticRegressionCV` "
        f"(lbfgs at tol 1e-4, 13 Cs; {stacking['old_s']:.2f} s, chose C={stacking['old_C']:g}; "
        f"{stacking['old_one_blas_thread_s']:.2f} s on one BLAS thread, "
        f"{stacking['speedup_from_one_thread']:.1f}x of the gain; {repeats}) | "
        f"{stacking['speedup']:.1f}x faster ({stacking['speedup_past_one_thread']:.1f}x past the one thread) |",
        f"| stacker held out (fitted on {held['fit_rows']} of those rows, tested on the other "
        f"{held['test_rows']}): NLL / accuracy of the new fit ({new['choice']}) vs the old (C={old['C']:g}) | "
        f"{new['nll']:.4f} / {new['accuracy']:.4f} vs {old['nll']:.4f} / {old['accuracy']:.4f} "
        f"(NLL {new['nll'] / old['nll']:.2f}x, accuracy {100 * (new['accuracy'] - old['accuracy']):+.1f} points) |",
        f"| objective C·ΣNLL + ‖kernel‖²/2 at C={optimum['C']:g} ({rows} rows): `LogisticRegression` "
        f"lbfgs at its default tol 1e-4 ({default['iterations']} iterations, {default['s']:.2f} s) / at "
        f"tol 1e-10 ({tight['iterations']} iterations, {tight['s']:.2f} s) vs `fit_stacker` "
        f"(gtol {optimum['gtol']:g}, {optimum['ours_s']:.2f} s) | "
        f"{default['gap_over_ours']:+.2e} / {tight['gap_over_ours']:+.2e} relative to ours |",
        f"| target: the {rows}-row stacker fit under {target:g} s at the optimum (gtol {gtol:g}; "
        f"candidates scored on folds at {cv_gtol:g}) | {verdict} |",
    ]


def _verdict(value: float, target: float, *, at_most: bool) -> str:
    """ "met" or "missed by ..." for a ratio against its target."""
    met = value <= target if at_most else value >= target
    return "met" if met else f"missed by {abs(value - target) / target:.1%}"


def onnx_lines(onnx: dict[str, Any], large_batch: int) -> list[str]:
    """Our ONNX export against the naive conversion, the TF paths against one member, the
    share of the matmul peak at a large batch; each with its target from issue 16."""
    one, large, share = onnx["batch_1_s"], onnx[f"batch_{large_batch}_s"], onnx["share_of_peak"]
    naive = "naive tf2onnx of the SavedModel"
    ours = one["export_onnx"] / one[naive]
    tf_paths = ("exported serving_default", "compiled_predict", "compiled_predict, XLA")
    fastest = min(tf_paths, key=lambda name: one[name])
    against_member = one[fastest] / one["ONE member, compiled"]
    member = min((name for name in one if name.startswith("ONE member")), key=lambda name: one[name])
    lines = [
        f"| batch 1: `export_onnx` vs tf2onnx's command line on our SavedModel, both in onnxruntime "
        f"({1e3 * one['export_onnx']:.3f} vs {1e3 * one[naive]:.3f} ms; target <= 1.1x) | "
        f"{ours:.2f}x ({_verdict(ours, 1.1, at_most=True)}) |",
        f"| batch 1: the fastest TF path ({fastest}, {1e3 * one[fastest]:.3f} ms) vs ONE member's compiled "
        f"call (a `tf.function`, {1e3 * one['ONE member, compiled']:.3f} ms; target <= 1.0x) | "
        f"{against_member:.2f}x ({_verdict(against_member, 1.0, at_most=True)}) |",
        f"| batch 1: the same vs ONE member's fastest call ({member.removeprefix('ONE member, ')}, "
        f"{1e3 * one[member]:.3f} ms) | {one[fastest] / one[member]:.2f}x |",
    ]
    for name in tf_paths:
        lines.append(
            f"| batch 1: {name} vs onnxruntime on `export_onnx` | {one[name] / one['export_onnx']:.2f}x |"
        )
    peak = max(onnx["tf_matmul_peak_gflops"], onnx["onnx_matmul_peak_gflops"])
    for name, target in (
        ("export_onnx", 0.95),
        (naive, None),
        ("exported serving_default", 0.85),
        ("compiled_predict", None),
        ("compiled_predict, XLA", None),
    ):
        verdict = (
            ""
            if target is None
            else f" (target >= {target:.0%}: {_verdict(share[name], target, at_most=False)})"
        )
        lines.append(
            f"| batch {large_batch}: {name}, share of the matmul peak ({peak:.0f} GFLOP/s, the faster of "
            f"TF's and onnxruntime's 2048² matmul){verdict} | {share[name]:.1%} |"
        )
    lines.append(
        f"| batch {large_batch}: exported serving_default vs onnxruntime on `export_onnx` | "
        f"{large['exported serving_default'] / large['export_onnx']:.2f}x |"
    )
    if "layer_matmuls_share_of_peak" in onnx:
        lines.append(_layer_line(onnx, large_batch))
    return lines


def _layer_line(onnx: dict[str, Any], large_batch: int) -> str:
    """Each member layer's shape as one plain matmul at a large batch, its rate in each runtime,
    and the share of the peak the members' matmuls alone would reach at those rates (where it
    is near the ensemble's share, the layers' shapes, not the rest of the graph, hold it back)."""
    bound, rates = onnx["layer_matmuls_share_of_peak"], onnx["layer_matmul_gflops"]
    shapes = ", ".join(shape.replace("x", "→") for shape in rates["TF"])
    gflops = {runtime: " / ".join(f"{rate:.0f}" for rate in rates[runtime].values()) for runtime in rates}
    return (
        f"| batch {large_batch}: the members' matmuls alone, each layer ({shapes}) one plain matmul of its "
        f"shape (GFLOP/s: TF {gflops['TF']}; onnxruntime {gflops['onnxruntime']}), share of the same peak: "
        f"what the members' matmuls would reach at those rates, TF / onnxruntime | {bound['TF']:.0%} / {bound['onnxruntime']:.0%} |"
    )


def fusion_lines(fusion: dict[str, Any], large_batch: int) -> list[str]:
    """Fused against unfused members of one architecture, and the default against fuse=False."""
    lines = []
    for batch in (1, large_batch):
        seconds = fusion[f"batch_{batch}_s"]
        for runtime in ("TF", "onnxruntime"):
            unfused = seconds[f"{runtime} fuse=False"]
            fused = unfused / seconds[f"{runtime} fuse=True"]
            default = unfused / seconds[f"{runtime} default"]
            target = (
                " (target >= 1.5x: " + _verdict(fused, 1.5, at_most=False) + ")"
                if (batch == 1 and runtime == "onnxruntime")
                else ""
            )
            lines.append(
                f"| {fusion['members']} members of one architecture, {runtime}, batch {batch}: fuse=True "
                f"vs fuse=False{target} | {fused:.2f}x faster |"
            )
            lines.append(
                f"| {fusion['members']} members, {runtime}, batch {batch}: the default build "
                f"({fusion['default_fused'] or 'no fusion'}) vs fuse=False (target: never slower) | "
                f"{default:.2f}x faster |"
            )
    return lines
