"""The benchmark's ratios as the markdown table of benchmark.md."""

from __future__ import annotations

from typing import Any

__all__ = ["markdown", "stacking_lines"]


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
    if "stacking" in results:
        lines.extend(stacking_lines(results["stacking"]))
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
