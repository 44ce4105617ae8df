"""The Hydra config: every option of every group composes and instantiates, and bad names fail clearly."""

from __future__ import annotations

import functools
import json
import shutil
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
import ensemble
from ensemble import FIT_METHODS, EnsembleError
from ensemble.data import SKLEARN_DATASETS, Dataset, load_dataset
from ensemble.runtime import STRATEGIES
from experiments.job import Holdout, OutOfFold, load_members

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
    "layered": combiners.LayeredCombiner,
}

# How each combiner option is fitted unless `fit=` says otherwise (`fit: ${combiner}`).
COMBINER_FITS = {
    "mean": "none",
    "vote": "none",
    "stack": "sklearn",
    "stack_keras": "keras",
    "select": "selection",
    "weighted": "optimal",
    "layered": "layered",
}

# The method of each `conf/fit` option: one per method, and one named after each combiner option.
FIT_OPTION_METHODS = {**{method: method for method in FIT_METHODS if method != "auto"}, **COMBINER_FITS}


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
    for group in ("fit", "regime", "runtime", "experiment", "training"):
        assert options(group), group


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
    combiner = instantiate(cfg.combiner)
    assert "fit" not in cfg.combiner  # the layer alone: how it is fitted is the `fit` group
    fit = instantiate(cfg.fit)
    assert_fit_partial(fit)
    assert fit.keywords["method"] == COMBINER_FITS[option]

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
    # The same config with a target that just returns the arguments it is given.
    arguments = instantiate(cfg.combiner, _target_="builtins.dict")
    if option == "layered":  # combiners of combiners: each one a layer, its own config plain
        nested = [*arguments.pop("levels"), arguments.pop("final")]
        assert all(isinstance(c, combiners.Combiner) for c in nested)
        for combiner in nested:
            assert_plain(combiner.get_config())
    assert_plain(arguments)
    if "weights" in cfg.combiner:
        assert type(arguments["weights"]) is list


def assert_fit_partial(fit: Any) -> None:
    """A `conf/fit` option instantiated: `ensemble.fit` with its method and options, as plain values."""
    assert isinstance(fit, functools.partial) and fit.func is ensemble.fit
    assert not fit.args
    assert fit.keywords["method"] in FIT_METHODS
    assert_plain(dict(fit.keywords))


def test_a_fit_override_replaces_the_combiners_own_fit(compose_config: Any) -> None:
    assert instantiate(compose_config("combiner=stack", "fit=keras").fit).keywords["method"] == "keras"
    assert instantiate(compose_config("combiner=select", "fit=optimal").fit).keywords["method"] == "optimal"
    assert instantiate(compose_config("combiner=select").fit).keywords == {
        "method": "selection",
        "rounds": 50,
    }


def fitting_problem(method: str) -> tuple[Any, np.ndarray, np.ndarray]:
    """A small ensemble whose combiner `method` fits, and rows none of its members trained on."""
    from tests.conftest import dense_classifier

    combiner = combiners.StackingCombiner() if method in ("sklearn", "keras") else combiners.MeanCombiner()
    if method == "layered":
        combiner = combiners.LayeredCombiner([combiners.StackingCombiner(), combiners.MeanCombiner()])
    model = ensemble.build_ensemble([dense_classifier(i, name=f"m{i}") for i in range(3)], combiner)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 8)).astype("float32")
    return model, x, rng.integers(0, 3, size=90)


@pytest.mark.parametrize("option", options("fit"), ids=options("fit"))
def test_fit_option_instantiates_and_fits(compose_config: Any, option: str) -> None:
    fit = instantiate(compose_config(f"fit={option}").fit)
    assert_fit_partial(fit)
    method = fit.keywords["method"]
    assert method == FIT_OPTION_METHODS[option]
    # The options it configures are the ones its fit function takes.
    model, x, y = fitting_problem(method)
    report = fit(model, x, y)
    assert isinstance(report, ensemble.FitReport)
    assert report.method == method and report.regime == "holdout" and report.rows == len(y)
    # What it did, not how it showed progress: `verbose` is not recorded.
    assert report.options == {k: v for k, v in fit.keywords.items() if k not in ("method", "verbose")}
    # Learned weights; the default stacker has weights only when it picked one member alone.
    if method in ("selection", "optimal"):
        assert report.member_weights is not None
    elif method == "sklearn" and report.fitted.prior == "member":
        assert sorted(report.member_weights.values()) == [0.0, 0.0, 1.0]
    else:
        assert report.member_weights is None


def test_every_fit_method_has_an_option() -> None:
    assert set(FIT_METHODS) - {"auto"} <= set(options("fit"))
    assert set(COMBINER_FITS) == set(options("combiner")) <= set(options("fit"))


# Regimes, runtimes, the members' training defaults, experiments.


@pytest.mark.parametrize("option", options("regime"), ids=options("regime"))
def test_regime_option_instantiates(compose_config: Any, option: str) -> None:
    regime = instantiate(compose_config(f"regime={option}").regime)
    assert type(regime) is {"holdout": Holdout, "oof": OutOfFold}[option]
    assert callable(regime.fit)
    if option == "oof":
        assert regime.cv == 5
        assert instantiate(compose_config("regime=oof", "regime.cv=3").regime).cv == 3


@pytest.mark.parametrize("option", options("runtime"), ids=options("runtime"))
def test_runtime_option_composes(compose_config: Any, option: str) -> None:
    runtime = compose_config(f"runtime={option}").runtime
    assert set(runtime) == {"strategy", "timeout_s", "memory_growth", "logical_cpus"}
    assert runtime.strategy == option and option in STRATEGIES
    assert_plain(OmegaConf.to_container(runtime, resolve=True))


def test_every_strategy_has_a_runtime_option_and_a_value_override_still_works(compose_config: Any) -> None:
    assert sorted(options("runtime")) == sorted(STRATEGIES)
    runtime = compose_config("runtime.strategy=mirrored", "runtime.logical_cpus=2").runtime
    assert runtime.strategy == "mirrored" and runtime.logical_cpus == 2


def test_every_zoo_member_trains_with_the_shared_defaults(compose_config: Any) -> None:
    cfg = compose_config()
    defaults = OmegaConf.to_container(OmegaConf.load(CONF / "training" / "default.yaml"))
    assert set(cfg.zoo.members) == set(options("member"))
    for name, member in cfg.zoo.members.items():
        own = OmegaConf.load(CONF / "member" / f"{name}.yaml").get("train", {})
        assert set(member.train) == set(defaults) | set(own), name
        for key, value in defaults.items():
            assert member.train[key] == own.get(key, value), (name, key)


@pytest.mark.parametrize("option", options("experiment"), ids=options("experiment"))
def test_experiment_option_composes_every_setting_of_its_sweep(compose_config: Any, option: str) -> None:
    cfg = compose(config_name="config", overrides=[f"+experiment={option}"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert params
    for key, values in params.items():
        for value in str(values).split(","):
            setting = compose_config(f"+experiment={option}", f"{key}={value}")
            fit = instantiate(setting.fit)
            assert_fit_partial(fit)
            if key == "combiner":  # a group: the option's layer, fitted its own way
                assert type(instantiate(setting.combiner)) is COMBINER_CLASSES[value]
                assert fit.keywords["method"] == COMBINER_FITS[value]
            else:
                assert str(OmegaConf.select(setting, key)) == value
                instantiate(setting.combiner)
    if option == "breast_cancer_seeds":
        assert cfg.data.name == "breast_cancer" and cfg.zoo.dir == "outputs/zoo/breast_cancer/seed0"
        assert set(str(params["combiner"]).split(",")) <= set(options("combiner"))


# Datasets.


@pytest.mark.parametrize("option", options("data"), ids=options("data"))
def test_data_option_instantiates(compose_config: Any, option: str) -> None:
    cfg = compose_config(f"data={option}")
    data = instantiate(cfg.data)

    assert isinstance(data, Dataset)
    # A file's dataset is named after the file unless data.name says otherwise.
    assert data.name == (cfg.data.name or Path(cfg.data.path).stem)
    # sklearn's own loader, not the library's table, says what the task is.
    x, y = getattr(datasets, f"load_{data.name}")(return_X_y=True)
    is_classification = np.issubdtype(y.dtype, np.integer)
    assert data.task == ("classification" if is_classification else "regression")
    assert data.classes == (len(np.unique(y)) if is_classification else None)

    xs = [data.x_train, data.x_holdout, data.x_test]
    ys = [data.y_train, data.y_holdout, data.y_test]
    sizes = [len(part) for part in xs]
    assert sizes == [len(part) for part in ys]
    assert sum(sizes) == len(x)
    assert data.split["rows"] == dict(zip(["train", "holdout", "test"], sizes, strict=True))
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
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
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
