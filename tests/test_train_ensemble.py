"""experiments.train_ensemble: every method from config, on wine with a few epochs, each row
of test metrics against what its baseline scores when computed here independently."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ensemble.evaluate.metrics import classification_metrics
from experiments.ensembles import METHODS, run_method
from tests.conftest import compose_config
from tests.test_readme import ROOT

QUICK = {  # a few epochs each: the test is about the wiring, the README has the figures
    "boost": ["method.rounds=3", "method.fit.epochs=5"],
    "bag": ["method.members=2", "method.fit.epochs=5"],
    "snapshots": ["method.cycles=2", "method.epochs_per_cycle=3"],
    "soup": ["method.ingredients=3", "method.fit.epochs=5", "method.fine_tune.epochs=2"],
    "distill": ["method.fit.epochs=5", "method.speed_rounds=2"],
}


def compose(*overrides: str):  # type: ignore[no-untyped-def]
    return compose_config(*overrides, config_name="train_ensemble")


def test_every_method_has_a_config():
    assert sorted(METHODS) == sorted(QUICK)
    for name in METHODS:
        assert compose(f"method={name}").method.name == name


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(QUICK))
def test_each_method_runs_from_config(method, wine_overrides):
    from hydra.utils import instantiate

    cfg = compose(*wine_overrides, f"method={method}", *QUICK[method])
    rows, extra = run_method(cfg)
    assert len(rows) >= 2 and all(np.isfinite(list(r.values())).all() for r in rows.values())
    data = instantiate(cfg.data)
    chance = classification_metrics(data.y_test, np.full((len(data.y_test), 3), 1 / 3))["nll"]
    assert all(r["accuracy"] > 0.5 for r in rows.values()), rows  # wine: three classes, 1/3 by chance
    if method != "boost":  # a hard vote's shares are no probabilities; the rest beat chance's NLL
        assert all(r["nll"] < chance for r in rows.values()), rows
    if method == "distill":
        assert 0 <= extra["agreement"] <= 1 and extra["speedup"] > 0
        assert -1 <= extra["mutual_information_correlation"] <= 1


@pytest.mark.slow
def test_the_script_writes_its_metrics(wine_overrides, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "experiments.train_ensemble", *wine_overrides, "method=bag",
         *QUICK["bag"], f"hydra.run.dir={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "metrics.json").read_text())
    assert (result["method"], result["data"]) == ("bag", "wine")
    assert list(result["rows"]) == ["bagged (2 members)", "one learner on every train row"]
    assert "bagged (2 members)" in done.stdout


@pytest.mark.slow
def test_a_bagged_zoo_trains_each_member_on_its_bootstrap_rows(tmp_path):
    from hydra.utils import instantiate

    from ensemble.members.training_rows import load_training_rows
    from experiments.zoo.members import ensure_zoo

    # No refit: one fit a member; the record of its bootstrap rows is what is asserted.
    cfg = compose_config(
        "data=wine",
        "zoo=bagged",
        f"zoo.dir={tmp_path}",
        "~zoo.members.bag_2",
        "~zoo.members.bag_3",
        "~zoo.members.bag_4",
        *(f"zoo.members.bag_{i}.train.{k}" for i in (0, 1) for k in ("epochs=3", "refit=false")),
    )
    data = instantiate(cfg.data)
    assert sorted(ensure_zoo(cfg.zoo, data, str(tmp_path))) == ["bag_0", "bag_1"]
    n = len(data.x_train)
    for name, seed in (("bag_0", 10), ("bag_1", 11)):
        rows = np.random.default_rng(seed).integers(0, n, n)
        record = load_training_rows(tmp_path / f"{name}.keras")
        np.testing.assert_array_equal(record, data.x_train[rows].astype("float32"))
    assert ensure_zoo(cfg.zoo, data, str(tmp_path)) == []  # recipes match: nothing retrains
