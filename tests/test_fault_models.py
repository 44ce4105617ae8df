"""Fault injection (invariant 4) on the writers of saved models, with the harness of
`tests/test_fault_injection.py` (its docstring tells how kills are planned and counted):

- zoo training (`experiments.zoo.ensure_zoo`) of three members (`.keras`, `.h5`, SavedModel):
  one retrained per trial, in place (its seed changed) or from scratch (deleted), the others
  kept; the kills aimed at the retrained member's record, model and recipe;
- a SavedModel export over an earlier one (`export_saved_model(..., overwrite=True)`); the kills
  aimed at the whole export, or its directory swap and clean-up.

After each kill, the next run (a fresh child) must succeed, use what is complete, rebuild the
rest and leave no debris behind.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.fault_worker import compose, dataset
from tests.test_fault_injection import (
    ATOL,
    TRIALS,
    Trials,
    Worker,
    debris_in,
    digest,
    serve,
    small_members,
    write_span,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    yield from serve(tmp_path_factory)


# The phases that end the writes a kill is aimed at


def _saved(phase: str) -> bool:
    return phase.startswith("_save") and phase.endswith(" end")  # the recipe is written next


def _exported(phase: str) -> bool:
    return phase == "export_saved_model end"


def _cleaned(phase: str) -> bool:
    return phase == "_clean end"  # the versions module's clean-up beside the export


# Zoo training


ZOO_MEMBERS = {"mlp": 1, "deep_mlp": 2, "linear": 4}  # keras, h5, saved_model; their seeds


def _zoo_overrides(zoo: Path, seeds: dict[str, int]) -> list[str]:
    tiny = [
        "data=wine",
        f"zoo.dir={zoo}",
        *(f"~zoo.members.{name}" for name in ("cnn", "cnn_narrow", "wide")),
        "zoo.members.mlp.build.hidden=[8]",
        "zoo.members.deep_mlp.build.hidden=[8,8]",
    ]
    for name, seed in seeds.items():
        train = f"zoo.members.{name}.train"
        tiny += [f"{train}.epochs=3", f"{train}.patience=1", f"{train}.refit=false", f"{train}.seed={seed}"]
    return tiny


def test_zoo_training_survives_sigkill(worker: Worker, tmp_path: Path) -> None:
    from hydra.utils import instantiate

    import ensemble
    from ensemble.members.training_rows import load_training_rows
    from experiments.zoo import EXTENSIONS, member_entries, stale_members
    from experiments.zoo.members import RECIPE_SUFFIX

    started = time.monotonic()
    zoo, work = tmp_path / "zoo", tmp_path / "work"
    seeds = dict(ZOO_MEMBERS)
    cfg = compose(_zoo_overrides(zoo, seeds))
    data = instantiate(cfg.data)
    formats = {name: str(cfg.zoo.members[name].format) for name in seeds}

    def files(name: str) -> list[Path]:
        path = zoo / f"{name}{EXTENSIONS[formats[name]]}"
        return [path, Path(f"{path}.training_rows.npy"), Path(f"{path}{RECIPE_SUFFIX}")]

    def state(name: str) -> tuple[str, ...]:
        return tuple(digest(p) if p.exists() else "" for p in files(name))

    def loaded(name: str, overrides: list[str]) -> np.ndarray:
        spec = member_entries(compose(overrides).zoo, data, os.fspath(zoo))[name]
        member = ensemble.load_member(spec.source, name=name, format=spec.format, **spec.options)
        return np.asarray(member.predict(data.x_test, verbose=0))

    worker.run("zoo", work / "setup", {"overrides": _zoo_overrides(zoo, seeds)})
    predictions = dict(np.load(work / "setup" / "predictions.npz"))

    def trial(index: int, plan: dict[str, Any] | None) -> tuple[dict[str, Any], list[str]]:
        """One member retrained: in place over its valid (now stale) self with a new seed, on odd
        trials; from scratch with its old seed once deleted, on even ones. The others are kept."""
        target = list(seeds)[index % len(seeds)]
        if index % 2:
            seeds[target] = 100 + index
        else:
            for path in files(target):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        kept = {name: state(name) for name in seeds if name != target}
        overrides = _zoo_overrides(zoo, seeds)
        answer = worker.run("zoo", work / str(index), {"overrides": overrides}, **(plan or {}))
        failures = [
            f"the valid member {name} was lost or changed" for name in kept if state(name) != kept[name]
        ]
        stale = set(stale_members(compose(overrides).zoo, data, os.fspath(zoo)))
        complete = None  # the target's predictions, when the next run is to use it as it is
        if target not in stale:
            record = load_training_rows(files(target)[0])
            if record is None or not np.array_equal(record, np.asarray(data.x_train, dtype="float32")):
                failures.append(f"{target} is complete but its training-row record is missing or wrong")
            try:
                complete = loaded(target, overrides)
            except Exception as error:
                failures.append(f"{target} is complete but does not load: {type(error).__name__}: {error}")
        # The next run: retrains exactly what is not complete, then every member loads.
        recovery = worker.run("zoo", work / f"{index}-recovery", {"overrides": overrides}, check=False)
        if recovery["exit"] != 0:
            return answer, [*failures, f"the next run failed: {recovery['log']}"]
        trained = json.loads((work / f"{index}-recovery" / "result.json").read_text())["trained"]
        if set(trained) != stale:
            failures.append(f"the next run trained {sorted(trained)}, expected the stale {sorted(stale)}")
        fresh = dict(np.load(work / f"{index}-recovery" / "predictions.npz"))
        if complete is not None and not np.allclose(complete, fresh[target], atol=ATOL, rtol=0):
            failures.append(f"{target}: its predictions differ between two loads")
        alike = [*kept, *([] if index % 2 else [target])]  # same seed and rows: the same member
        for name in alike:  # (training is deterministic: the worker enables op determinism)
            if not np.allclose(fresh[name], predictions[name], atol=ATOL, rtol=0):
                failures.append(f"{name}: predicts otherwise than when it was trained before")
        if stale_members(compose(overrides).zoo, data, os.fspath(zoo)):
            failures.append("members still stale after the next run")
        if debris := debris_in(zoo):
            failures.append(f"debris left after the next run: {debris}")
        predictions.update(fresh)
        return answer, failures

    answer, failures = trial(0, None)
    assert not failures, failures
    trials = Trials(
        "zoo",
        TRIALS["zoo"],
        answer["seconds"],
        # the retrained member's writes: its training-row record, the model, the recipe
        [
            (
                "record_training_rows",
                1,
                write_span(work / "0" / "phases.log", "record_training_rows", 1, _saved),
            )
        ],
    )
    for index, plan in enumerate(trials.plan, start=1):
        answer, failures = trial(index, plan)
        trials.record(index - 1, answer, failures)
    trials.report(tmp_path, started)


# SavedModel export


def test_export_survives_sigkill(worker: Worker, tmp_path: Path) -> None:
    import tensorflow as tf

    import combiners
    import ensemble

    started = time.monotonic()
    count = TRIALS["export"]
    x = dataset(1, 32, 8)
    members = {v: small_members(tmp_path / "members", 2, v, 8, 3) for v in range(count + 2)}
    expected = {}
    for version, paths in members.items():
        model = ensemble.build_ensemble(
            [ensemble.load_member(p, name=f"m{i}") for i, p in enumerate(paths)], combiners.MeanCombiner()
        )
        expected[version] = np.asarray(model(x, training=False)["prediction"])
    path, work = tmp_path / "out" / "export", tmp_path / "work"
    path.parent.mkdir()

    def served(where: str) -> np.ndarray:
        function = tf.saved_model.load(where).signatures["serving_default"]
        (name,) = function.structured_input_signature[1]
        return np.asarray(function(**{name: tf.constant(x)})["prediction"])

    def which(where: str, versions: tuple[int, ...]) -> int | None:
        got = served(where)
        return next((v for v in versions if np.allclose(got, expected[v], atol=1e-5, rtol=0)), None)

    def export(version: int, directory: Path, plan: dict[str, Any] | None = None, check: bool = True) -> dict:
        args = {"members": members[version], "path": os.fspath(path)}
        return worker.run("export", directory, args, **(plan or {}), check=check)

    export(0, work / "setup")

    def trial(index: int, plan: dict[str, Any] | None) -> tuple[dict[str, Any], list[str]]:
        old, new = index, index + 1
        answer = export(new, work / str(index), plan)
        failures = []
        try:  # what a reader sees now: the old export or the new one, whole
            found = which(os.path.realpath(path), (old, new))
            if found is None:
                failures.append("the export predicts neither the old version nor the new one")
            if answer["exit"] == 0 and found != new:
                failures.append(f"a finished export left version {found} in place")
        except Exception as error:
            failures.append(f"the export does not load after the kill: {type(error).__name__}: {error}")
        recovery = export(new, work / f"{index}-recovery", check=False)  # must succeed, and clean up
        if recovery["exit"] != 0:
            return answer, [*failures, f"the next export failed: {recovery['log']}"]
        try:
            if which(os.fspath(path), (new,)) != new:
                failures.append("the next export does not serve the new version")
        except Exception as error:
            failures.append(f"the next export does not load: {type(error).__name__}: {error}")
        debris = debris_in(path.parent) + (["export is a symlink"] if path.is_symlink() else [])
        others = {p.name for p in path.parent.iterdir()} - {path.name}  # a plain directory alone
        if debris or others:
            failures.append(f"debris left after the next export: {debris + sorted(others)}")
        return answer, failures

    answer, failures = trial(0, None)
    assert not failures, failures
    log = work / "0" / "phases.log"
    trials = Trials(
        "export",
        count,
        answer["seconds"],
        [  # the whole export, and its end: the directories exchanged, the old one and debris removed
            ("export_saved_model start", 1, write_span(log, "export_saved_model start", 1, _exported)),
            ("_point", 1, write_span(log, "_point", 1, _cleaned, first=False)),
        ],
    )
    for index, plan in enumerate(trials.plan, start=1):
        answer, failures = trial(index, plan)
        trials.record(index - 1, answer, failures)
    trials.report(tmp_path, started)
