"""The comparison after a sweep (`-m`): every job's ensemble against the single members.

One split of a small dataset is a noisy judge: on breast_cancer's 114 test
rows one row is 0.9 points of accuracy, and the member that is best on a
split's test rows is chosen by looking at them. A sweep over split seeds
(`data.seed=0,1,2,3,4,5`) is the honest measure, so across several splits
the table gives means over the splits and sets the ensemble against three
single-model baselines:

- the selected member: the one the job would ship alone, chosen like the
  combiner on the fitting rows (`selected_member` in `metrics.json`);
- the best member on average: the member whose mean over the splits is best;
- the per-split best member: the best on each split's test rows, chosen
  afterwards (an optimistic bound no deployable choice reaches).
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from experiments.common import markdown_table

__all__ = ["HIGHER_IS_BETTER", "SweepComparison", "comparison_table"]

HIGHER_IS_BETTER = frozenset({"accuracy"})

Job = tuple[list[str], dict[str, Any]]  # (the job's overrides, what its metrics.json holds)


def comparison_table(sweep_dir: str) -> str:
    """Markdown, one section per dataset: the jobs' ensemble metrics against the single
    members; over several split seeds, means over the splits (see the module docstring)."""
    by_data: dict[str, list[Job]] = {}
    for overrides, result in _jobs(sweep_dir):
        by_data.setdefault(result.get("data", {}).get("name", "?"), []).append((overrides, result))
    sections = []
    for name, jobs in by_data.items():
        seeds = sorted({_seed(result) for _, result in jobs}, key=str)
        sections.append(_one_split(name, jobs) if len(seeds) == 1 else _splits(name, jobs, seeds))
    return "\n\n".join(sections) + "\n" if sections else ""


def _jobs(sweep_dir: str) -> list[Job]:
    paths = sorted(glob.glob(os.path.join(sweep_dir, "*", "metrics.json")),
                   key=lambda p: (len(p), p))  # job 10 after job 9
    jobs = []
    for path in paths:
        with open(path) as f:
            result = json.load(f)
        overrides_file = os.path.join(os.path.dirname(path), ".hydra", "overrides.yaml")
        overrides = [str(o) for o in OmegaConf.load(overrides_file)] if os.path.exists(overrides_file) else []
        jobs.append((overrides, result))
    return jobs


def _labels(jobs: Sequence[Job], leave_out: str | None = None) -> list[str]:
    """Each job named by the overrides that tell it from the others in its table (not those
    every job shares, nor `leave_out=...` ones); by its combiner when nothing is left."""
    shared = set.intersection(*(set(overrides) for overrides, _ in jobs))
    labels = []
    for overrides, result in jobs:
        own = [o for o in overrides if o not in shared and not (leave_out and o.startswith(leave_out + "="))]
        labels.append(" ".join(own) or result.get("combiner", "ensemble"))
    return labels


def _seed(result: dict[str, Any]) -> Any:
    return result.get("data", {}).get("seed")


def _metrics(jobs: Sequence[Job]) -> list[str]:
    """The ensemble metrics every member also has (not the ensemble-only ones)."""
    first = jobs[0][1]
    return [m for m in first["ensemble"]
            if all(m in member for _, result in jobs for member in result["members"].values())]


def _best(metric: str) -> Callable[..., Any]:
    return max if metric in HIGHER_IS_BETTER else min


def _one_split(name: str, jobs: list[Job]) -> str:
    """One split: every job's ensemble and the best single member per metric (jobs on one
    split share their members)."""
    metrics = _metrics(jobs)
    members = jobs[0][1]["members"].values()
    table = {label: result["ensemble"] for label, (_, result) in zip(_labels(jobs), jobs)}
    table["best single member (per metric)"] = {m: _best(m)(v[m] for v in members) for m in metrics}
    return "\n".join([f"### {name}", "", *markdown_table(table, "job", metrics)])


def _splits(name: str, jobs: list[Job], seeds: list[Any]) -> str:
    """Several split seeds: each setting's ensemble averaged over its splits, against the
    selected, the best-on-average and the per-split best member, averaged the same way."""
    metrics = _metrics(jobs)
    settings: dict[str, list[dict[str, Any]]] = {}
    for setting, (_, result) in zip(_labels(jobs, leave_out="data.seed"), jobs):
        settings.setdefault(setting, []).append(result)
    per_split = {_seed(result): result for _, result in jobs}  # one job's members per split
    names = sorted(set.intersection(*(set(r["members"]) for r in per_split.values())))
    mean = lambda values: float(np.mean(list(values)))  # noqa: E731

    table = {f"{setting} (ensemble)": {m: mean(r["ensemble"][m] for r in results) for m in metrics}
             for setting, results in settings.items()}
    selected = [r for r in per_split.values() if "selected_member" in r]
    if len(selected) == len(per_split):
        table["selected member (chosen on the fitting rows)"] = {
            m: mean(r["members"][r["selected_member"]["name"]][m] for r in selected) for m in metrics
        }
    averages = {n: {m: mean(r["members"][n][m] for r in per_split.values()) for m in metrics} for n in names}
    on_average = {m: _best(m)(averages, key=lambda n: averages[n][m]) for m in metrics}  # noqa: B023
    table["best member on average (per metric)"] = {m: averages[on_average[m]][m] for m in metrics}
    table["per-split best member (chosen on the test rows)"] = {
        m: mean(_best(m)(r["members"][n][m] for n in names) for r in per_split.values()) for m in metrics
    }
    lines = [f"### {name}: means over {len(per_split)} splits (data.seed {', '.join(map(str, seeds))})",
             "", *markdown_table(table, "model", metrics), ""]
    lines.append("Best member on average: " + ", ".join(f"{m} {on_average[m]}" for m in metrics) + ".")
    if "accuracy" in metrics:
        for setting, results in settings.items():
            ties = sum(r["ensemble"]["accuracy"] >= max(r["members"][n]["accuracy"] for n in names) - 1e-12
                       for r in results)
            lines.append(f"{setting}: ensemble accuracy at least the per-split best member's "
                         f"in {ties} of {len(results)} splits.")
    return "\n".join(lines)


class SweepComparison(Callback):
    """After a multirun, writes `comparison.md` into the sweep directory and prints it."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = str(config.hydra.sweep.dir)
        table = comparison_table(sweep_dir)
        if table:
            with open(os.path.join(sweep_dir, "comparison.md"), "w") as f:
                f.write(table)
            print(f"\nComparison across the sweep ({sweep_dir}/comparison.md):\n{table}")
