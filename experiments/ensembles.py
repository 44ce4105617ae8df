"""Config -> the library's training functions (`conf/method/`), each against the baseline one
would otherwise ship: boosting against one weak learner, bagging against one learner on every
row, snapshots against the run's last snapshot, a soup against its ingredients and their
mean, a distilled student against its ensemble and the best member. Members train on the
train split; whatever is chosen (the greedy soup, the best member) is chosen on the holdout
split; every figure is on the test split.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig

import ensemble
from combiners import MeanCombiner
from ensemble.data import Dataset
from ensemble.evaluate.metrics import classification_metrics, regression_metrics
from ensemble.train.members import compiled
from experiments.benchmarks.rounds import interleaved_seconds
from experiments.job import load_members, members_config

__all__ = ["METHODS", "run_method"]

Rows = dict[str, dict[str, float]]


def run_method(cfg: DictConfig) -> tuple[Rows, dict[str, Any]]:
    """The configured method's rows of test metrics, and what else it measured."""
    data: Dataset = instantiate(cfg.data)
    keras.utils.set_random_seed(cfg.method.seed)
    return METHODS[cfg.method.name](cfg, data)


def learners(
    cfg: DictConfig, data: Dataset, *, compile: bool = True, y: np.ndarray | None = None
) -> Callable[[int], keras.Model]:
    """`build(i)`: a fresh learner of `method.learner`, seeded by `i`, compiled with Adam at
    `method.fit.learning_rate` (or left for the training function to compile); `y`: the
    targets it is scaled for (default the train split's)."""
    settings = cfg.method
    targets = data.y_train if y is None else y

    def build(index: int) -> keras.Model:
        keras.utils.set_random_seed(settings.seed + index)
        model = instantiate(settings.learner)(data.x_train, targets, task=data.task, width=_width(data))
        if not compile:
            return model
        return compiled(model, data.task, keras.optimizers.Adam(settings.fit.learning_rate))[0]

    return build


def scores(data: Dataset, outputs: Any) -> dict[str, float]:
    """Test metrics of an ensemble's outputs (a dict) or one model's prediction (an array)."""
    if not isinstance(outputs, dict):
        outputs = {"prediction": np.asarray(outputs)}
    if data.task == "classification":
        return classification_metrics(data.y_test, outputs["prediction"])
    return regression_metrics(data.y_test, outputs["prediction"], outputs.get("std"))


def _boost(cfg: DictConfig, data: Dataset) -> tuple[Rows, dict[str, Any]]:
    settings, regression = cfg.method, data.task == "regression"
    # Gradient boosting's learners fit residuals: scaled for the centred targets.
    centred = data.y_train - data.y_train.mean(0) if regression else None
    options = {"rounds": settings.rounds, "learning_rate": settings.learning_rate, **_fit(settings)}
    model = ensemble.boost(
        learners(cfg, data, y=centred), data.x_train, data.y_train,
        **{**options, **(settings.regression if regression else {})},
    )  # fmt: skip
    out = model.predict(data.x_test, verbose=0)
    combiner = ensemble.ensemble_combiner(model)
    first = out["member_predictions"][:, 0]  # round 0 (regression: fit to y - mean, at full weight)
    rows = {f"boosted ({out['member_predictions'].shape[1]} members)": scores(data, out)}
    rows["one weak learner (round 0)"] = scores(data, first + combiner.bias if regression else first)
    return rows, {"weights" if regression else "alphas": combiner.member_weights}


def _bag(cfg: DictConfig, data: Dataset) -> tuple[Rows, dict[str, Any]]:
    settings = cfg.method
    build = learners(cfg, data)
    model = ensemble.bag(
        build, data.x_train, data.y_train, members=settings.members, seed=settings.seed,
        task=data.task, **_fit(settings),
    )  # fmt: skip
    alone = build(settings.members)
    alone.fit(data.x_train, data.y_train, **_fit(settings))
    rows = {f"bagged ({settings.members} members)": scores(data, model.predict(data.x_test, verbose=0))}
    rows["one learner on every train row"] = scores(data, _predict(alone, data))
    return rows, {}


def _snapshots(cfg: DictConfig, data: Dataset) -> tuple[Rows, dict[str, Any]]:
    settings = cfg.method
    model = ensemble.snapshots(
        lambda: learners(cfg, data, compile=settings.optimizer == "adam")(0), data.x_train, data.y_train, cycles=settings.cycles,
        epochs_per_cycle=settings.epochs_per_cycle, max_learning_rate=settings.max_learning_rate,
        batch_size=settings.fit.batch_size, task=data.task, verbose=0,
    )  # fmt: skip
    out = model.predict(data.x_test, verbose=0)
    rows = {f"snapshot ensemble ({settings.cycles})": scores(data, out)}
    rows["the run's last snapshot"] = scores(data, out["member_predictions"][:, -1])
    return rows, {}


def _soup(cfg: DictConfig, data: Dataset) -> tuple[Rows, dict[str, Any]]:
    settings = cfg.method
    base = learners(cfg, data)(0)
    base.fit(data.x_train, data.y_train, **_fit(settings))
    rng = np.random.default_rng(settings.seed)
    ingredients = []
    for index in range(settings.ingredients):
        model = keras.models.clone_model(base)
        model.set_weights(base.get_weights())
        model = compiled(model, data.task, keras.optimizers.Adam(settings.fine_tune.learning_rate))[0]
        subset = rng.choice(
            len(data.x_train), int(settings.fine_tune.fraction * len(data.x_train)), replace=False
        )
        model.fit(data.x_train[subset], data.y_train[subset], epochs=settings.fine_tune.epochs, verbose=0)
        ingredients.append(ensemble.load_member(model, name=f"ingredient_{index}"))
    x, y = data.x_holdout, data.y_holdout
    uniform = ensemble.soup(ingredients, x=x, y=y)
    greedy = ensemble.soup(ingredients, method="greedy", x=x, y=y)
    best = min(ingredients, key=lambda m: _holdout_loss(data, np.asarray(m.predict(x, verbose=0))))
    mean = ensemble.build_ensemble(ingredients, MeanCombiner(), task=data.task)
    rows = {
        "uniform soup": scores(data, _predict(uniform, data)),
        f"greedy soup ({len(greedy.ingredients)} of {len(ingredients)})": scores(
            data, _predict(greedy, data)
        ),
        "best ingredient (on holdout)": scores(data, _predict(best, data)),
        "mean of the ingredients": scores(data, mean.predict(data.x_test, verbose=0)),
    }
    return rows, {"greedy": greedy.ingredients}


def _distill(cfg: DictConfig, data: Dataset) -> tuple[Rows, dict[str, Any]]:
    settings = cfg.method
    members = load_members(members_config(cfg, data))
    teacher = ensemble.build_ensemble(members, MeanCombiner(), task=data.task)
    student = learners(cfg, data)(0)
    rows_x = np.concatenate([data.x_train, data.x_holdout])
    result = ensemble.distill(
        teacher, student, rows_x, temperature=settings.temperature, uncertainty=settings.uncertainty,
        name="student", epochs=settings.fit.epochs, batch_size=settings.fit.batch_size,
        optimizer=keras.optimizers.Adam(settings.fit.learning_rate), verbose=0,
    )  # fmt: skip
    out = teacher.predict(data.x_test, verbose=0)
    mine = _predict(result, data)
    best = min(members, key=lambda m: _holdout_loss(data, np.asarray(m.predict(data.x_holdout, verbose=0))))
    rows = {
        f"ensemble (mean of {len(members)})": scores(data, out),
        "student": scores(data, mine),
        f"best member on holdout ({best.name})": scores(data, _predict(best, data)),
    }
    extra: dict[str, Any] = {}
    if data.task == "classification":
        extra["agreement"] = float(np.mean(mine.argmax(-1) == out["prediction"].argmax(-1)))
    if settings.uncertainty:
        spread = "mutual_information" if data.task == "classification" else "std"
        learned = np.asarray(result.model(data.x_test)[spread])
        extra[f"{spread}_correlation"] = float(np.corrcoef(learned.ravel(), out[spread].ravel())[0, 1])
    batch = data.x_test[: settings.speed_batch]
    seconds = interleaved_seconds(
        {"ensemble": lambda: teacher(batch), "student": lambda: result(batch)}, rounds=settings.speed_rounds
    )
    extra["speedup"] = seconds["ensemble"] / seconds["student"]
    return rows, extra


def _fit(settings: DictConfig) -> dict[str, Any]:
    return {"epochs": settings.fit.epochs, "batch_size": settings.fit.batch_size, "verbose": 0}


def _predict(model: keras.Model, data: Dataset) -> np.ndarray:
    return np.asarray(model.predict(data.x_test, verbose=0))


def _holdout_loss(data: Dataset, prediction: np.ndarray) -> float:
    if data.task == "classification":
        return classification_metrics(data.y_holdout, prediction)["nll"]
    return regression_metrics(data.y_holdout, prediction)["rmse"]


def _width(data: Dataset) -> int:
    return data.classes or int(np.prod(data.y_train.shape[1:]) or 1)


METHODS: dict[str, Callable[[DictConfig, Dataset], tuple[Rows, dict[str, Any]]]] = {
    "boost": _boost,
    "bag": _bag,
    "snapshots": _snapshots,
    "soup": _soup,
    "distill": _distill,
}
