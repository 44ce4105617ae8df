"""The Hydra config: every option of every group composes and instantiates, and bad names fail clearly."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hydra import compose, initialize
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf
from sklearn import datasets

import combiners
from ensemble import EnsembleError
from ensemble.data import SKLEARN_DATASETS, Dataset, load_dataset
from experiments.common import FIT_METHODS, make_combiner
from experiments.compose import load_members

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def options(group: str) -> list[str]:
    """The option names of a config group, as found on disk: a new option is tested automatically."""
    return sorted(path.stem for path in (CONF / group).glob("*.yaml"))


COMBINER_CLASSES = {
    "mean": combiners.MeanCombiner,
    "vote": combiners.VoteCombiner,
    "stack": combiners.StackingCombiner,
    "stack_keras": combiners.StackingCombiner,
    "select": combiners.MeanCombiner,
    "weighted": combiners.MeanCombiner,
}


@pytest.fixture
def compose_config() -> Iterator[Any]:
    """`compose_config(*overrides)` composes `config`; the global Hydra state is cleared after."""
    GlobalHydra.instance().clear()
    with initialize(version_base="1.3", config_path="../conf"):
        yield lambda *overrides: compose(config_name="config", overrides=list(overrides))
    GlobalHydra.instance().clear()


def assert_plain(value: Any, where: str = "config") -> None:
    """Only JSON's own Python types, all the way down (no ListConfig, no NumPy scalars)."""
    if isinstance(value, dict):
        for key, item in value.items():
            assert isinstance(key, str), f"{where}: key {key!r}"
            assert_plain(item, f"{where}[{key!r}]")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            assert_plain(item, f"{where}[{i}]")
    else:
        assert value is None or type(value) in (str, int, float, bool), (
            f"{where} is a {type(value).__name__}: {value!r}"
        )


def test_groups_have_options() -> None:
    assert options("combiner") and options("data") and options("members")


# Combiners.


def combiner_config(compose_config: Any, option: str) -> Any:
    """`config` with `combiner=option`, and three member weights where the option takes weights."""
    cfg = compose_config(f"combiner={option}")
    if "weights" in cfg.combiner:
        cfg = compose_config(f"combiner={option}", "combiner.weights=[1,2,3]")
    return cfg


@pytest.mark.parametrize("option", options("combiner"), ids=options("combiner"))
def test_combiner_option_instantiates(compose_config: Any, option: str) -> None:
    cfg = combiner_config(compose_config, option)
    combiner, fit = make_combiner(cfg.combiner)
    assert fit is None or fit["method"] in FIT_METHODS

    expected = COMBINER_CLASSES.get(option, get_class(cfg.combiner._target_))
    assert type(combiner) is expected
    assert isinstance(combiner, combiners.Combiner)
    config = combiner.get_config()
    assert_plain(config)
    assert json.loads(json.dumps(config)) == config
    if "weights" in cfg.combiner:
        assert type(config["weights"]) is list
        assert config["weights"] == [1.0, 2.0, 3.0]
    # The configuration is a round trip: the same layer comes back from it.
    assert type(combiner).from_config(config).get_config() == config


@pytest.mark.parametrize("option", options("combiner"), ids=options("combiner"))
def test_combiner_arguments_are_handed_over_as_plain_values(compose_config: Any, option: str) -> None:
    # A ListConfig kept by a layer cannot be saved to `.keras`; `_convert_: all` prevents it.
    cfg = combiner_config(compose_config, option)
    # The same config with a target that just returns the arguments it is given
    # (less the `fit:` block, which tells train_meta how to fit the layer).
    layer = OmegaConf.masked_copy(cfg.combiner, [k for k in cfg.combiner if k != "fit"])
    arguments = instantiate(layer, _target_="builtins.dict")
    assert_plain(arguments)
    if "weights" in cfg.combiner:
        assert type(arguments["weights"]) is list


# Datasets.


@pytest.mark.parametrize("option", options("data"), ids=options("data"))
def test_data_option_instantiates(compose_config: Any, option: str) -> None:
    cfg = compose_config(f"data={option}")
    data = instantiate(cfg.data)

    assert isinstance(data, Dataset)
    assert data.name == cfg.data.name
    # sklearn's own loader, not the library's table, says what the task is.
    x, y = getattr(datasets, f"load_{cfg.data.name}")(return_X_y=True)
    is_classification = np.issubdtype(y.dtype, np.integer)
    assert data.task == ("classification" if is_classification else "regression")
    assert data.classes == (len(np.unique(y)) if is_classification else None)

    xs = [data.x_train, data.x_holdout, data.x_test]
    ys = [data.y_train, data.y_holdout, data.y_test]
    sizes = [len(part) for part in xs]
    assert sizes == [len(part) for part in ys]
    assert sum(sizes) == len(x)
    assert data.split["rows"] == dict(zip(["train", "holdout", "test"], sizes))
    assert sizes[2] == pytest.approx(cfg.data.test_size * len(x), abs=1)
    assert sizes[1] == pytest.approx(cfg.data.holdout_size * len(x), abs=1)
    # Disjoint and complete: the three splits together are the dataset's rows, each once.
    assert_same_rows(np.concatenate(xs), np.concatenate(ys), x, y)

    # Seeded: the same seed gives the same split, another seed another one.
    again = instantiate(cfg.data)
    for name in ["x_train", "y_train", "x_holdout", "y_holdout", "x_test", "y_test"]:
        np.testing.assert_array_equal(getattr(again, name), getattr(data, name), err_msg=name)
    reseeded = instantiate(compose_config(f"data={option}", f"data.seed={cfg.data.seed + 1}").data)
    assert not np.array_equal(reseeded.x_test, data.x_test)


def assert_same_rows(x: np.ndarray, y: np.ndarray, x_ref: np.ndarray, y_ref: np.ndarray) -> None:
    """The rows of (x, y) are those of (x_ref, y_ref), as a multiset."""

    def sorted_rows(features: np.ndarray, target: np.ndarray) -> np.ndarray:
        rows = np.column_stack([features.astype("float32"), target.astype("float32")])
        return rows[np.lexsort(rows.T[::-1])]

    np.testing.assert_array_equal(sorted_rows(x, y), sorted_rows(x_ref, y_ref))


def test_unknown_dataset_lists_the_known_names() -> None:
    with pytest.raises(EnsembleError, match="'nope'") as error:
        load_dataset("nope")
    for name in SKLEARN_DATASETS:
        assert repr(name) in str(error.value)


def test_missing_data_option_fails_in_hydra() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "experiments.compose", "data=nope"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert "Could not find 'data/nope'" in result.stderr
    # Hydra lists what there is instead.
    for option in options("data"):
        assert option in result.stderr


# Members.


@pytest.mark.parametrize("option", options("members"), ids=options("members"))
def test_members_option_lists_complete_entries(compose_config: Any, option: str) -> None:
    cfg = compose_config(f"members={option}")
    members = OmegaConf.to_container(cfg.members, resolve=True)
    assert members
    for name, spec in members.items():
        assert set(spec) <= {"source", "format", "options"}, name
        assert isinstance(spec["source"], str) and spec["source"], name


@pytest.mark.parametrize(
    "spec, match",
    [
        ({"source": "a.keras", "colour": "red"}, r"Member 'odd'.*colour"),
        ({"format": "keras"}, r"Member 'odd'.*source"),
    ],
    ids=["unknown_field", "missing_source"],
)
def test_load_members_rejects_a_bad_entry(spec: dict[str, Any], match: str) -> None:
    with pytest.raises(EnsembleError, match=match):
        load_members(OmegaConf.create({"odd": spec}))


def test_sweep_comparison_groups_by_dataset(tmp_path) -> None:
    from experiments.sweep import comparison_table

    def job(index: int, data: str, combiner: str, ensemble: dict, members: dict) -> None:
        directory = tmp_path / str(index)
        (directory / ".hydra").mkdir(parents=True)
        (directory / ".hydra" / "overrides.yaml").write_text(f"- data={data}\n- combiner={combiner}\n")
        (directory / "metrics.json").write_text(json.dumps(
            {"data": {"name": data}, "ensemble": ensemble, "members": members}))

    members = {"a": {"accuracy": 0.9, "nll": 0.3}, "b": {"accuracy": 0.8, "nll": 0.2}}
    job(0, "wine", "mean", {"accuracy": 0.95, "nll": 0.25, "disagreement": 0.1}, members)
    job(1, "wine", "stack", {"accuracy": 0.97, "nll": 0.15, "disagreement": 0.1}, members)
    job(10, "diabetes", "mean", {"rmse": 50.0}, {"a": {"rmse": 55.0}, "b": {"rmse": 52.0}})
    table = comparison_table(str(tmp_path))
    wine, diabetes = table.split("### ")[1:]
    assert "| combiner=stack | 0.9700 | 0.1500 |" in wine and "disagreement" not in wine  # data=wine: shared
    assert "| best single member (per metric) | 0.9000 | 0.2000 |" in wine
    assert "| best single member (per metric) | 52.0000 |" in diabetes


def _sweep_job(root, index: int, overrides: list[str], result: dict) -> None:
    directory = root / str(index)
    (directory / ".hydra").mkdir(parents=True)
    (directory / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (directory / "metrics.json").write_text(json.dumps(result))


def test_sweep_comparison_over_split_seeds_averages_against_three_baselines(tmp_path) -> None:
    from experiments.sweep import comparison_table

    def job(index: int, seed: int, combiner: str, ensemble: dict, members: dict, selected: str) -> None:
        _sweep_job(tmp_path, index, [f"combiner={combiner}", f"data.seed={seed}"], {
            "data": {"name": "breast_cancer", "seed": seed}, "ensemble": ensemble, "members": members,
            "selected_member": {"name": selected}})

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
    assert "| best member on average (per metric) | 0.8250 | 0.2250 |" in table  # b: 0.825 > a: 0.8
    assert "| per-split best member (chosen on the test rows) | 0.8750 | 0.2250 |" in table
    assert "Best member on average: accuracy b, nll b." in table
    assert "combiner=mean: ensemble accuracy at least the per-split best member's in 1 of 2 splits." in table
    assert "combiner=stack: ensemble accuracy at least the per-split best member's in 2 of 2 splits." in table


def test_sweep_comparison_keeps_each_settings_own_members_and_counts_its_splits(tmp_path) -> None:
    """Settings whose members differ (oof retrains them) get their own member rows; a setting
    short of splits says so; seeds sort as numbers; a prefixed seed override is still one."""
    from experiments.sweep import comparison_table

    def job(index: int, seed: int, regime: str, accuracy: float, members: dict) -> None:
        _sweep_job(tmp_path, index, [f"meta.regime={regime}", f"++data.seed={seed}"], {
            "data": {"name": "wine", "seed": seed}, "ensemble": {"accuracy": accuracy},
            "members": members})

    job(0, 2, "holdout", 0.9, {"a": {"accuracy": 0.8}})
    job(1, 10, "holdout", 0.7, {"a": {"accuracy": 0.6}})
    job(2, 2, "oof", 1.0, {"a": {"accuracy": 0.95}})  # oof at seed 10 is missing (it failed)
    table = comparison_table(str(tmp_path))
    assert "means over 2 splits (data.seed 2, 10)" in table
    assert "| meta.regime=holdout (ensemble) | 0.8000 |" in table
    assert "| meta.regime=oof (ensemble, 1 of 2 splits) | 1.0000 |" in table
    assert "| meta.regime=holdout: best member on average (per metric) | 0.7000 |" in table
    assert "| meta.regime=oof: best member on average (per metric) | 0.9500 |" in table
    assert "selected member" not in table  # no job recorded one
    assert "meta.regime=oof: ensemble accuracy at least the per-split best member's in 1 of 1 splits." in table

    other = tmp_path / "disjoint"
    _sweep_job(other, 0, ["data.seed=0"], {"data": {"name": "wine", "seed": 0},
                                          "ensemble": {"accuracy": 0.9}, "members": {"a": {"accuracy": 0.8}}})
    _sweep_job(other, 1, ["data.seed=1"], {"data": {"name": "wine", "seed": 1},
                                          "ensemble": {"accuracy": 0.9}, "members": {"b": {"accuracy": 0.8}}})
    table = comparison_table(str(other))  # no member in both splits: no member rows
    assert "| ensemble (ensemble) | 0.9000 |" in table and "member" not in table

    same = tmp_path / "same"  # two jobs nothing tells apart: both rows kept, by directory
    for index, accuracy in ((0, 0.5), (1, 0.6)):
        _sweep_job(same, index, [], {"data": {"name": "wine"}, "combiner": "MeanCombiner",
                                     "ensemble": {"accuracy": accuracy}, "members": {"a": {"accuracy": 0.4}}})
    table = comparison_table(str(same))
    assert "| MeanCombiner (job 0) | 0.5000 |" in table and "| MeanCombiner (job 1) | 0.6000 |" in table
