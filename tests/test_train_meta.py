"""experiments.train_meta: both leak-free regimes end to end, on wine to stay quick."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ensemble
from ensemble.members import row_hashes
from experiments.train_meta import run
from tests.conftest import compose_config, copied_zoo

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def config(wine_overrides):
    return lambda *overrides: compose_config(*wine_overrides, "export=none", *overrides)


@pytest.fixture
def zoo(wine_overrides) -> Path:
    return Path(next(o for o in wine_overrides if o.startswith("zoo.dir=")).split("=", 1)[1])


def test_holdout_regime_fits_on_the_holdout_split_only(config, zoo, tmp_path):
    cfg = config()
    result = run(cfg, output_dir=str(tmp_path))
    assert result["regime"] == "holdout" and result["combiner"] == "StackingCombiner"
    assert result["fit_rows"] == result["data"]["rows"]["holdout"]
    assert set(result) >= {"members", "mean", "ensemble", "task", "fit"}
    assert json.loads((tmp_path / "metrics.json").read_text()) == result
    # The members' training-row records exist, and the fitting rows avoid them.
    for name in ("mlp", "deep_mlp", "wide", "linear"):
        assert any(p.name.startswith(name) and p.name.endswith(".training_rows.npy") for p in zoo.iterdir())


def test_select_records_its_weights(config, tmp_path):
    result = run(config("combiner=select"), output_dir=str(tmp_path))
    weights = result["weights"]
    assert sorted(weights) == ["deep_mlp", "linear", "mlp", "wide"]
    assert sum(weights.values()) == pytest.approx(1.0) and min(weights.values()) >= 0
    assert result["ensemble"]["nll"] <= max(m["nll"] for m in result["members"].values())


# Two members of the zoo's two formats (.keras, SavedModel), 5 epochs, no refit (the shared zoo's
# recipe: one fit a member and fold): the regime's folds, its saved predictions and the final
# members' records are what is asserted, not their quality.
OOF_ZOO = ["~zoo.members.deep_mlp", "~zoo.members.wide", "zoo.members.mlp.train.epochs=5"]


def test_oof_regime(config, tmp_path):
    """Fold indices, the out-of-fold predictions (rows x members x classes, probabilities) and
    the final members' training-row records, on a zoo of its own (it writes `oof_final`)."""
    zoo = tmp_path / "zoo"
    cfg = config("regime=oof", "regime.cv=3", f"zoo.dir={zoo}", *OOF_ZOO, "zoo.members.linear.train.epochs=5")
    result = run(cfg, output_dir=str(tmp_path))
    rows = result["data"]["rows"]
    assert result["regime"] == "oof" and result["fit_rows"] == rows["train"] + rows["holdout"]
    saved = np.load(tmp_path / "oof_predictions.npz")
    assert saved["predictions"].shape == (result["fit_rows"], 2, 3)
    assert list(saved["members"]) == ["mlp", "linear"]
    assert sorted(np.unique(saved["folds"])) == [0, 1, 2]
    np.testing.assert_allclose(saved["predictions"].sum(-1), 1.0, atol=1e-5)
    # The final members retrained on every fitting row, and their records say so: fitting on
    # those rows without the out-of-fold predictions would be refused by the guard.
    final = zoo / "oof_final"
    member = ensemble.load_member(final / "mlp.keras", name="mlp")
    data = ensemble.data.load_dataset("wine")
    fitted = np.concatenate([data.x_train, data.x_holdout])
    np.testing.assert_array_equal(member.training_rows, fitted.astype("float32"))  # the rows themselves
    assert not np.isin(row_hashes(data.x_test), row_hashes(member.training_rows)).any()


def test_holdout_refit_full(wine_overrides, tmp_path):
    """On a copy of the shared zoo (the refit members are written into it, `oof_final`), and of
    its members the two in the formats `refit_full` rebuilds differently (a .keras file, a
    SavedModel): two retrained, not four. What it still proves: every member of the ensemble is
    replaced by its refit, with no overlap for the guard, measured as the refit file predicts."""
    overrides = [*copied_zoo(wine_overrides, tmp_path), *OOF_ZOO[:2]]
    zoo = tmp_path / "zoo"

    def config(*more: str):  # type: ignore[no-untyped-def]
        return compose_config(*overrides, "export=none", *more)

    (tmp_path / "run").mkdir()
    result = run(config("regime.refit_full=true"), output_dir=str(tmp_path / "run"))
    rows = result["data"]["rows"]
    assert result["regime"] == "holdout" and result["fit_rows"] == rows["holdout"]
    assert result["refit_full"] == {"rows": rows["train"] + rows["holdout"]}
    assert result["guard"]["overlaps"] == {name: 0 for name in ("linear", "mlp")}
    # The ensemble evaluated holds the refit members: their records hold the fitting rows.
    data = ensemble.data.load_dataset("wine")
    member = ensemble.load_member(zoo / "oof_final" / "mlp.keras", name="mlp")
    np.testing.assert_array_equal(member.training_rows, np.concatenate([data.x_train, data.x_holdout]))
    refit = ensemble.load_member(zoo / "oof_final" / "mlp.keras", name="mlp").predict(data.x_test, verbose=0)
    assert sorted(result["members"]) == ["linear", "mlp"]
    assert result["members"]["mlp"]["nll"] == pytest.approx(
        ensemble.evaluate.metrics.classification_metrics(data.y_test, refit)["nll"], rel=1e-4
    )
    with pytest.raises(ensemble.EnsembleError, match="refit_full retrains the members"):
        run(config("regime.refit_full=true", "members=example"), output_dir=str(tmp_path / "files"))


def test_oof_refuses_members_it_cannot_retrain(config, tmp_path):
    cfg = config("regime=oof", "members=example")
    with pytest.raises(
        ensemble.EnsembleError, match=r"members=\['run_a', 'run_b'\] are files from elsewhere"
    ):
        run(cfg, output_dir=str(tmp_path))


def test_sweep_from_the_command_line(wine_overrides, tmp_path):
    """The script's true command line (a fresh interpreter, a `-m` sweep of two jobs in it, the
    comparison callback at the end), on two of the zoo's members: each job loads two, not four."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.train_meta",
            "-m",
            "combiner=stack,weighted",
            *wine_overrides,
            *OOF_ZOO[:2],
            "export=none",
            f"hydra.sweep.dir={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    combiners = [json.loads((tmp_path / str(i) / "metrics.json").read_text())["combiner"] for i in (0, 1)]
    assert combiners == ["StackingCombiner", "MeanCombiner"]
    table = (tmp_path / "comparison.md").read_text()  # written by the sweep callback
    assert "combiner=stack" in table and "combiner=weighted" in table and "selected member" in table


def test_the_holdout_regime_runs_the_leakage_guard(wine_overrides, tmp_path):
    import keras
    from hydra.utils import instantiate
    from omegaconf import open_dict

    from ensemble.data import load_dataset
    from ensemble.members import record_training_rows
    from experiments.job import FitContext

    data = load_dataset("wine")
    members = {}
    for seed, name in ((1, "a"), (2, "b")):
        keras.utils.set_random_seed(seed)
        path = tmp_path / f"{name}.keras"
        keras.Sequential([keras.Input((13,)), keras.layers.Dense(3, activation="softmax")]).save(path)
        record_training_rows(str(path), data.x_holdout)  # as if they had trained on the holdout rows
        members[name] = {"source": str(path), "format": "auto", "options": {}}
    cfg = compose_config(*wine_overrides, "export=none")
    with open_dict(cfg):
        cfg.members = members
    with pytest.raises(ensemble.EnsembleError, match=rf"trained member\(s\) \{{'a': {len(data.x_holdout)}"):
        context = FitContext(cfg=cfg, data=data, fit=instantiate(cfg.fit), strategy=None, output_dir=None)
        instantiate(cfg.regime).fit(context)


def test_a_changed_member_is_retrained_in_place(wine_overrides, tmp_path):
    from ensemble.data import load_dataset
    from experiments.zoo import ensure_zoo, zoo_directory

    data = load_dataset("wine")
    zoo = tmp_path / "zoo"
    # Two members (a .keras file, a SavedModel directory), 3 epochs: what is retrained is asserted.
    small = [*OOF_ZOO[:2], *(f"zoo.members.{m}.train.epochs=3" for m in ("mlp", "linear"))]
    first = compose_config(*wine_overrides, f"zoo.dir={zoo}", *small)
    directory = zoo_directory(first.zoo, data)
    assert directory == str(zoo)
    assert sorted(ensure_zoo(first.zoo, data, directory)) == ["linear", "mlp"]
    assert ensure_zoo(first.zoo, data, directory) == []  # unchanged: nothing retrained
    changed = compose_config(*wine_overrides, f"zoo.dir={zoo}", *small, "zoo.members.linear.train.seed=99")
    assert ensure_zoo(changed.zoo, data, directory) == ["linear"]  # a SavedModel directory, replaced
    assert not [p.name for p in zoo.iterdir() if "partial" in p.name or "retired" in p.name]
    assert "seed: 99" in (zoo / "linear_savedmodel.recipe.yaml").read_text()
    ensemble.load_member(zoo / "linear_savedmodel", name="linear", output="probabilities")
    # A zoo of an earlier version holds exact row hashes: recorded again, no retraining.
    from ensemble.members.training_rows import row_hashes, training_rows_path

    np.save(training_rows_path(zoo / "linear_savedmodel"), np.unique(row_hashes(data.x_train)))
    assert ensure_zoo(changed.zoo, data, directory) == []
    record = np.load(training_rows_path(zoo / "linear_savedmodel"))
    np.testing.assert_array_equal(record, np.asarray(data.x_train, dtype="float32").reshape(len(record), -1))


@pytest.mark.parametrize("refit", [True, False])
def test_a_member_refits_on_every_row_for_the_early_stopped_epochs(refit, monkeypatch):
    import keras

    from ensemble.data import load_dataset
    from experiments.zoo import train_member

    fits = []  # (rows, epochs asked for, the history)
    original = keras.Model.fit

    def recording_fit(self, x, y, **kwargs):
        history = original(self, x, y, **kwargs)
        fits.append((len(x), kwargs["epochs"], history.history))
        return history

    monkeypatch.setattr(keras.Model, "fit", recording_fit)
    data = load_dataset("wine")
    cfg = compose_config(
        f"zoo.members.linear.train.refit={refit}",
        "zoo.members.linear.train.epochs=30",
        "zoo.members.linear.train.patience=3",
    )
    model = train_member("linear", cfg.zoo.members.linear, data.x_train, data.y_train, data)
    (fit_rows, _, stopped), *refits = fits
    assert fit_rows < len(data.x_train)  # the validation rows held out
    if refit:
        # A fresh copy, every row, exactly the epochs early stopping found best.
        ((rows, epochs, history),) = refits
        assert rows == len(data.x_train)
        assert epochs == int(np.argmin(stopped["val_loss"])) + 1 == len(history["loss"])
    else:
        assert refits == []
    # The preprocessing adapts to the rows the returned model trained on.
    standardize = next(layer for layer in model.layers if isinstance(layer, keras.layers.Normalization))
    every_row = np.allclose(
        np.ravel(keras.ops.convert_to_numpy(standardize.mean)), data.x_train.mean(axis=0), rtol=1e-4
    )
    assert every_row == refit
