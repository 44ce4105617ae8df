"""The Hydra config's groups: every combiner, fit, regime, runtime and experiment option composes
and instantiates, as plain values; the zoo members share the training defaults."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

import combiners
import ensemble
from ensemble import FIT_METHODS
from ensemble.runtime import STRATEGIES
from experiments.job import Holdout, OutOfFold

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
@pytest.mark.slow
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


@pytest.mark.slow
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
@pytest.mark.slow
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
@pytest.mark.slow
def test_experiment_option_composes_every_setting_of_its_sweep(compose_config: Any, option: str) -> None:
    cfg = compose_config(f"+experiment={option}", return_hydra_config=True)
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
