"""The sweep comparison (`ensemble.evaluate.comparison`, written after a `-m` sweep of the
config): grouped by dataset, the selected member raw and calibrated, means over split seeds
against three baselines, each setting's own members."""

from __future__ import annotations

import json
import shutil


def test_sweep_comparison_groups_by_dataset(tmp_path) -> None:
    from ensemble.evaluate.comparison import comparison_table

    def job(index: int, data: str, combiner: str, ensemble: dict, members: dict) -> None:
        directory = tmp_path / str(index)
        (directory / ".hydra").mkdir(parents=True)
        (directory / ".hydra" / "overrides.yaml").write_text(f"- data={data}\n- combiner={combiner}\n")
        (directory / "metrics.json").write_text(
            json.dumps({"data": {"name": data}, "ensemble": ensemble, "members": members})
        )

    members = {"a": {"accuracy": 0.9, "nll": 0.3}, "b": {"accuracy": 0.8, "nll": 0.2}}
    job(0, "wine", "mean", {"accuracy": 0.95, "nll": 0.25, "disagreement": 0.1}, members)
    job(1, "wine", "stack", {"accuracy": 0.97, "nll": 0.15, "disagreement": 0.1}, members)
    job(10, "diabetes", "mean", {"rmse": 50.0}, {"a": {"rmse": 55.0}, "b": {"rmse": 52.0}})
    table = comparison_table(str(tmp_path))
    wine, diabetes = table.split("### ")[1:]
    assert "| combiner=stack | 0.9700 | 0.1500 |" in wine and "disagreement" not in wine  # data=wine: shared
    # No job recorded a selected member: no member row, and never one made of a's accuracy
    # and b's NLL (0.9, 0.2), as the old "best single member (per metric)" row was.
    assert "member" not in wine and "| 0.9000 | 0.2000 |" not in wine
    assert "| ensemble | 50.0000 |" in diabetes and "member" not in diabetes


def test_sweep_comparison_on_one_split_shows_the_selected_member_raw_and_calibrated(tmp_path) -> None:
    from ensemble.evaluate.comparison import comparison_table

    members = {"a": {"accuracy": 0.9, "nll": 0.3}, "b": {"accuracy": 0.8, "nll": 0.2}}

    def job(index: int, combiner: str, selected: str, calibrated_nll: float) -> None:
        raw = members[selected]
        _sweep_job(
            tmp_path,
            index,
            [f"combiner={combiner}"],
            {
                "data": {"name": "wine"},
                "ensemble": {"accuracy": 0.95, "nll": 0.1},
                "members": members,
                "selected_member": {"name": selected},
                "baselines": {"selected": {"raw": raw, "calibrated": {**raw, "nll": calibrated_nll}}},
            },
        )

    job(0, "mean", "a", 0.25)
    job(1, "stack", "a", 0.25)
    table = comparison_table(str(tmp_path))
    assert "| selected member a (chosen on the fitting rows) | 0.9000 | 0.3000 |" in table
    assert "| selected member a, calibrated | 0.9000 | 0.2500 |" in table
    assert table.count("selected member a, calibrated") == 1  # both jobs chose a: shown once

    shutil.rmtree(tmp_path / "1")
    job(1, "stack", "b", 0.15)  # another regime could choose another member: one row per job
    table = comparison_table(str(tmp_path))
    assert "| combiner=mean: selected member a, calibrated | 0.9000 | 0.2500 |" in table
    assert "| combiner=stack: selected member b (chosen on the fitting rows) | 0.8000 | 0.2000 |" in table
    assert "| combiner=stack: selected member b, calibrated | 0.8000 | 0.1500 |" in table


def _sweep_job(root, index: int, overrides: list[str], result: dict) -> None:
    directory = root / str(index)
    (directory / ".hydra").mkdir(parents=True)
    (directory / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (directory / "metrics.json").write_text(json.dumps(result))


def test_sweep_comparison_over_split_seeds_averages_against_three_baselines(tmp_path) -> None:
    from ensemble.evaluate.comparison import comparison_table

    def job(index: int, seed: int, combiner: str, ensemble: dict, members: dict, selected: str) -> None:
        _sweep_job(
            tmp_path,
            index,
            [f"combiner={combiner}", f"data.seed={seed}"],
            {
                "data": {"name": "breast_cancer", "seed": seed},
                "ensemble": ensemble,
                "members": members,
                "selected_member": {"name": selected},
            },
        )

    split_0 = {"a": {"accuracy": 0.9, "nll": 0.3}, "b": {"accuracy": 0.8, "nll": 0.2}}
    split_1 = {"a": {"accuracy": 0.7, "nll": 0.5}, "b": {"accuracy": 0.85, "nll": 0.25}}
    job(0, 0, "mean", {"accuracy": 0.92, "nll": 0.25}, split_0, "a")
    job(1, 1, "mean", {"accuracy": 0.84, "nll": 0.3}, split_1, "b")
    job(2, 0, "stack", {"accuracy": 0.95, "nll": 0.18}, split_0, "a")
    job(3, 1, "stack", {"accuracy": 0.85, "nll": 0.2}, split_1, "b")
    table = comparison_table(str(tmp_path))
    assert "### breast_cancer: means over 2 splits (data.seed 0, 1)" in table
    assert "| combiner=mean (ensemble) | 0.8800 | 0.2750 |" in table
    assert "| combiner=stack (ensemble) | 0.9000 | 0.1900 |" in table
    assert "| selected member (chosen on the fitting rows) | 0.8750 | 0.2750 |" in table  # a, then b
    assert "calibrated" not in table  # no job recorded calibrated baselines
    # One member per row: b, best on average by NLL (0.225 < 0.4), its own accuracy 0.825.
    assert "| best member on average (by nll): b | 0.8250 | 0.2250 |" in table
    # Per split, the member best by NLL on the test rows (b, b), with its own accuracy.
    assert "| per-split best member (by nll, chosen on the test rows) | 0.8250 | 0.2250 |" in table
    assert "combiner=mean: ensemble accuracy at least the per-split best member's in 1 of 2 splits." in table
    assert "combiner=stack: ensemble accuracy at least the per-split best member's in 2 of 2 splits." in table


def test_sweep_comparison_keeps_each_settings_own_members_and_counts_its_splits(tmp_path) -> None:
    """Settings whose members differ (oof retrains them) get their own member rows; a setting
    short of splits says so; seeds sort as numbers; a prefixed seed override is still one."""
    from ensemble.evaluate.comparison import comparison_table

    def job(index: int, seed: int, regime: str, accuracy: float, members: dict) -> None:
        _sweep_job(
            tmp_path,
            index,
            [f"regime={regime}", f"++data.seed={seed}"],
            {"data": {"name": "wine", "seed": seed}, "ensemble": {"accuracy": accuracy}, "members": members},
        )

    job(0, 2, "holdout", 0.9, {"a": {"accuracy": 0.8}})
    job(1, 10, "holdout", 0.7, {"a": {"accuracy": 0.6}})
    job(2, 2, "oof", 1.0, {"a": {"accuracy": 0.95}})  # oof at seed 10 is missing (it failed)
    table = comparison_table(str(tmp_path))
    assert "means over 2 splits (data.seed 2, 10)" in table
    assert "| regime=holdout (ensemble) | 0.8000 |" in table
    assert "| regime=oof (ensemble, 1 of 2 splits) | 1.0000 |" in table
    assert "| regime=holdout: best member on average (by accuracy): a | 0.7000 |" in table
    assert "| regime=oof: best member on average (by accuracy): a | 0.9500 |" in table
    assert "selected member" not in table  # no job recorded one
    assert "regime=oof: ensemble accuracy at least the per-split best member's in 1 of 1 splits." in table

    other = tmp_path / "disjoint"
    _sweep_job(
        other,
        0,
        ["data.seed=0"],
        {
            "data": {"name": "wine", "seed": 0},
            "ensemble": {"accuracy": 0.9},
            "members": {"a": {"accuracy": 0.8}},
        },
    )
    _sweep_job(
        other,
        1,
        ["data.seed=1"],
        {
            "data": {"name": "wine", "seed": 1},
            "ensemble": {"accuracy": 0.9},
            "members": {"b": {"accuracy": 0.8}},
        },
    )
    table = comparison_table(str(other))  # no member in both splits: no member rows
    assert "| ensemble (ensemble) | 0.9000 |" in table and "member" not in table

    same = tmp_path / "same"  # two jobs nothing tells apart: both rows kept, by directory
    for index, accuracy in ((0, 0.5), (1, 0.6)):
        _sweep_job(
            same,
            index,
            [],
            {
                "data": {"name": "wine"},
                "combiner": "MeanCombiner",
                "ensemble": {"accuracy": accuracy},
                "members": {"a": {"accuracy": 0.4}},
            },
        )
    table = comparison_table(str(same))
    assert "| MeanCombiner (job 0) | 0.5000 |" in table and "| MeanCombiner (job 1) | 0.6000 |" in table
