"""The comparison after a sweep (`-m`): every job's ensemble against the single members.

One split of a small dataset is a noisy judge: on breast_cancer's 114 test
rows one row is 0.9 points of accuracy, and the member that is best on a
split's test rows is chosen by looking at them. A sweep over split seeds
(`data.seed=0,1,2,3,4,5`) is the honest measure, so across several splits
the table gives means over the splits and sets the ensemble against
single-model baselines, each row one member's own metrics (never a row made of
different members' best values):

- the selected member: the one the job would ship alone, chosen like the
  combiner on the fitting rows (`selected_member` in `metrics.json`), raw and
  calibrated on those rows as the job's `baselines` record it;
- the best member on average: the member whose mean NLL (RMSE) over the
  splits is best;
- the per-split best member: the best by NLL (RMSE) on each split's test rows,
  chosen afterwards (an optimistic bound no deployable choice reaches).

One split gives the selected member raw and calibrated, per job where the jobs'
differ. The columns are the summary metrics (`SUMMARY_METRICS`) every row has.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ensemble.evaluate.suite import CLASSIFICATION_METRICS, REGRESSION_METRICS, SUMMARY_METRICS
from ensemble.evaluate.tables import markdown_table

__all__ = ["HIGHER_IS_BETTER", "SweepComparison", "comparison_table"]

HIGHER_IS_BETTER = frozenset({"accuracy"})

Metrics = dict[str, float]


class Job(NamedTuple):
    name: str  # its directory in the sweep
    overrides: list[str]
    result: dict[str, Any]  # what its metrics.json holds


def comparison_table(sweep_dir: str) -> str:
    """Markdown, one section per dataset: the jobs' ensemble metrics against the single
    members; over several split seeds, means over the splits (see the module docstring)."""
    by_data: dict[str, list[Job]] = {}
    for job in _jobs(sweep_dir):
        by_data.setdefault(job.result.get("data", {}).get("name", "?"), []).append(job)
    sections = []
    for name, jobs in by_data.items():
        seeds = sorted({_seed(job.result) for job in jobs}, key=_seed_order)
        sections.append(_one_split(name, jobs) if len(seeds) == 1 else _splits(name, jobs, seeds))
    return "\n\n".join(sections) + "\n" if sections else ""


def _jobs(sweep_dir: str) -> list[Job]:
    paths = sorted(
        glob.glob(os.path.join(sweep_dir, "*", "metrics.json")), key=lambda p: (len(p), p)
    )  # job 10 after job 9
    jobs = []
    for path in paths:
        with open(path) as f:
            result = json.load(f)
        directory = os.path.dirname(path)
        overrides_file = os.path.join(directory, ".hydra", "overrides.yaml")
        overrides = [str(o) for o in OmegaConf.load(overrides_file)] if os.path.exists(overrides_file) else []
        jobs.append(Job(os.path.basename(directory), overrides, result))
    return jobs


def _labels(jobs: Sequence[Job], leave_out: str | None = None) -> list[str]:
    """Each job named by the overrides that tell it from the others in its table (not those
    every job shares, nor `leave_out=...` ones, however prefixed); by its combiner when
    nothing is left. Jobs that would share a label, bar those `leave_out` groups, get their
    directory added."""
    shared = set.intersection(*(set(job.overrides) for job in jobs))

    def left_out(override: str) -> bool:
        return leave_out is not None and override.lstrip("+~").startswith(leave_out + "=")

    labels = [
        " ".join(o for o in job.overrides if o not in shared and not left_out(o))
        or job.result.get("combiner", "ensemble")
        for job in jobs
    ]
    if leave_out is None:
        labels = [
            f"{label} (job {job.name})" if labels.count(label) > 1 else label
            for label, job in zip(labels, jobs, strict=True)
        ]
    return labels


def _seed(result: dict[str, Any]) -> Any:
    return result.get("data", {}).get("seed")


def _seed_order(seed: Any) -> tuple[int, float, str]:
    """Numbers in numeric order (2 before 10), then anything else by its text."""
    number = isinstance(seed, (int, float)) and not isinstance(seed, bool)
    return (0, seed, "") if number else (1, 0.0, str(seed))


def _metrics(jobs: Sequence[Job]) -> list[str]:
    """The ensemble metrics every member also has (not the ensemble-only ones): the summary
    metrics, then any the suite does not know of."""
    first = jobs[0].result
    shared = [
        m
        for m in first["ensemble"]
        if all(m in member for job in jobs for member in job.result["members"].values())
    ]
    known = {*SUMMARY_METRICS, *CLASSIFICATION_METRICS, *REGRESSION_METRICS}
    return [m for m in SUMMARY_METRICS if m in shared] + [m for m in shared if m not in known]


def _best(metric: str) -> Callable[..., Any]:
    return max if metric in HIGHER_IS_BETTER else min


def _primary(metrics: Sequence[str]) -> str:
    """The metric a single best member is chosen by: NLL, else RMSE, else the first."""
    return next((m for m in ("nll", "rmse") if m in metrics), metrics[0])


def _selected(result: dict[str, Any]) -> tuple[str, Metrics, Metrics | None] | None:
    """The selected member's name, raw metrics and calibrated ones (None: not recorded)."""
    if "selected_member" not in result:
        return None
    name = result["selected_member"]["name"]
    recorded = result.get("baselines", {}).get("selected")
    if recorded is None:
        return name, result["members"][name], None
    return name, recorded["raw"], recorded["calibrated"]


def _one_split(name: str, jobs: list[Job]) -> str:
    """One split: every job's ensemble, and the selected member raw and calibrated (once when
    every job selected the same, per job otherwise)."""
    metrics = _metrics(jobs)
    labels = _labels(jobs)
    table: dict[str, dict[str, Any]] = {
        label: job.result["ensemble"] for label, job in zip(labels, jobs, strict=True)
    }
    chosen = {label: _selected(job.result) for label, job in zip(labels, jobs, strict=True)}
    shared = len({repr(c) for c in chosen.values()}) == 1
    for label, selected in chosen.items():
        if selected is None:
            continue
        member, raw, calibrated = selected
        prefix = "" if shared else f"{label}: "
        table[f"{prefix}selected member {member} (chosen on the fitting rows)"] = dict(raw)
        if calibrated is not None:
            table[f"{prefix}selected member {member}, calibrated"] = dict(calibrated)
        if shared:
            break
    return "\n".join([f"### {name}", "", *markdown_table(table, "job", metrics)])


def _splits(name: str, jobs: list[Job], seeds: list[Any]) -> str:
    """Several split seeds: each setting's ensemble averaged over its splits, against the
    selected, the best-on-average and the per-split best member, averaged the same way. The
    member rows come from each setting's own jobs, shown once when every setting has the
    same members (a sweep over combiners), per setting otherwise (say `regime=oof`,
    which retrains them)."""
    metrics = _metrics(jobs)
    settings: dict[str, list[dict[str, Any]]] = {}
    for setting, job in zip(_labels(jobs, leave_out="data.seed"), jobs, strict=True):
        settings.setdefault(setting, []).append(job.result)
    table: dict[str, Metrics] = {}
    for setting, results in settings.items():
        count = "" if len(results) == len(seeds) else f", {len(results)} of {len(seeds)} splits"
        table[f"{setting} (ensemble{count})"] = {m: _mean(r["ensemble"][m] for r in results) for m in metrics}
    baselines = {setting: _baselines(results, metrics) for setting, results in settings.items()}
    shared = all(b == next(iter(baselines.values())) for b in baselines.values())
    notes = []
    for setting, rows in baselines.items():
        prefix = "" if shared else f"{setting}: "
        table.update({prefix + row: values for row, values in rows.items()})
        if shared:
            break
    for setting, results in settings.items():
        wins = _wins(results)
        if wins is not None:
            notes.append(
                f"{setting}: ensemble accuracy at least the per-split best member's in "
                f"{wins} of {len(results)} splits."
            )
    return "\n".join(
        [
            f"### {name}: means over {len(seeds)} splits (data.seed {', '.join(map(str, seeds))})",
            "",
            *markdown_table(table, "model", metrics),
            "",
            *notes,
        ]
    )


def _mean(values: Iterable[float]) -> float:
    return float(np.mean(list(values)))


def _mean_of(values: Iterable[float | None]) -> Any:
    """The mean, or None (a dash in the table) when a value is missing (regression's raw
    members have no NLL)."""
    listed = list(values)
    return None if any(v is None for v in listed) else _mean(v for v in listed if v is not None)


def _shared_members(results: list[dict[str, Any]]) -> list[str]:
    return sorted(set.intersection(*(set(r["members"]) for r in results)))


def _baselines(results: list[dict[str, Any]], metrics: list[str]) -> dict[str, Metrics]:
    """The single-member rows for one setting's splits, each one member's metrics per split
    averaged, and which member is best on average; nothing when the splits share no member."""
    names = _shared_members(results)
    if not names:
        return {}
    rows: dict[str, Metrics] = {}
    chosen = [_selected(r) for r in results]
    if all(c is not None for c in chosen):
        picks = [c for c in chosen if c is not None]
        rows["selected member (chosen on the fitting rows)"] = {
            m: _mean(c[1][m] for c in picks) for m in metrics
        }
        if all(c[2] is not None for c in picks):
            rows["selected member, calibrated on the fitting rows"] = {
                m: _mean_of((c[2] or {}).get(m) for c in picks) for m in metrics
            }
    by = _primary(metrics)
    averages = {n: {m: _mean(r["members"][n][m] for r in results) for m in metrics} for n in names}
    on_average = _best(by)(names, key=lambda n: averages[n][by])
    rows[f"best member on average (by {by}): {on_average}"] = averages[on_average]
    per_split = [_best(by)(names, key=lambda n, r=r: r["members"][n][by]) for r in results]
    rows[f"per-split best member (by {by}, chosen on the test rows)"] = {
        m: _mean(r["members"][n][m] for r, n in zip(results, per_split, strict=True)) for m in metrics
    }
    return rows


def _wins(results: list[dict[str, Any]]) -> int | None:
    """In how many splits the ensemble's accuracy is at least the per-split best member's."""
    names = _shared_members(results)
    if not names or not all("accuracy" in r["ensemble"] for r in results):
        return None
    return sum(
        int(r["ensemble"]["accuracy"] >= max(r["members"][n]["accuracy"] for n in names) - 1e-12)
        for r in results
    )


class SweepComparison(Callback):
    """After a multirun, writes `comparison.md` into the sweep directory and prints it."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = str(config.hydra.sweep.dir)
        table = comparison_table(sweep_dir)
        if table:
            with open(os.path.join(sweep_dir, "comparison.md"), "w") as f:
                f.write(table)
            print(f"\nComparison across the sweep ({sweep_dir}/comparison.md):\n{table}")
