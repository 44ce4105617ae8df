"""zoo=snapshots: the members are the snapshots of one cyclic cosine run of the mlp recipe, each
saved as its own zoo member with the train split as its training rows; checked against
`ensemble.snapshots` run with the same seed and settings, and for the zoo's retraining rules."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from hydra.utils import instantiate

import ensemble
from ensemble.members.training_rows import load_training_rows
from experiments.zoo.members import ensure_zoo, stale_members
from experiments.zoo.training import _compiled, _targets
from tests.conftest import compose_config

SETTINGS = {"cycles": 2, "epochs_per_cycle": 2, "max_learning_rate": 0.05}


def compose(directory: str, *overrides: str):  # type: ignore[no-untyped-def]
    run = [f"zoo.snapshot_run.{key}={value}" for key, value in SETTINGS.items()]
    return compose_config(
        "data=wine", "zoo=snapshots", f"zoo.dir={directory}", *run,
        "~zoo.members.snap_2", "~zoo.members.snap_3", "~zoo.members.snap_4", *overrides,
    )  # fmt: skip


def test_the_config_names_one_run_of_five_cycles():
    cfg = compose_config("zoo=snapshots")
    assert list(cfg.zoo.members) == [f"snap_{i}" for i in range(5)]
    for i, spec in enumerate(cfg.zoo.members.values()):
        assert spec.train.snapshot.index == i and spec.train.snapshot.run.cycles == 5
        assert spec.build._target_ == "experiments.zoo.architectures.mlp"


@pytest.mark.slow
def test_the_members_are_the_snapshots_of_one_run(tmp_path):
    cfg = compose(str(tmp_path))
    data = instantiate(cfg.data)
    assert ensure_zoo(cfg.zoo, data, str(tmp_path)) == ["snap_0", "snap_1"]
    spec = cfg.zoo.members.snap_0

    def build() -> keras.Model:  # the same seed, architecture, loss and optimizer
        keras.utils.set_random_seed(int(spec.train.seed))
        optimizer = keras.optimizers.SGD(SETTINGS["max_learning_rate"], momentum=0.9)
        return _compiled("reference", spec, data.x_train, data.y_train, data, optimizer)

    reference = ensemble.snapshots(
        build, data.x_train, _targets(data.y_train, data), batch_size=int(spec.train.batch_size),
        task="classification", verbose=0, **SETTINGS,
    )  # fmt: skip
    members = ensemble.ensemble_members(reference)
    saved = [keras.saving.load_model(tmp_path / f"snap_{i}.keras") for i in range(2)]
    for model, member in zip(saved, members, strict=True):
        for got, want in zip(model.get_weights(), member.model.get_weights(), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert any(  # two snapshots, not one model twice
        not np.allclose(a, b) for a, b in zip(saved[0].get_weights(), saved[1].get_weights(), strict=True)
    )
    for i in range(2):
        record = load_training_rows(tmp_path / f"snap_{i}.keras")
        np.testing.assert_array_equal(record, data.x_train.astype("float32"))

    assert ensure_zoo(cfg.zoo, data, str(tmp_path)) == []  # recipes match: nothing retrains
    (tmp_path / "snap_1.keras").unlink()  # one snapshot missing: the run retrains, for both
    assert stale_members(cfg.zoo, data, str(tmp_path)) == ["snap_0", "snap_1"]
    assert ensure_zoo(cfg.zoo, data, str(tmp_path)) == ["snap_0", "snap_1"]
    again = keras.saving.load_model(tmp_path / "snap_0.keras")
    for got, want in zip(again.get_weights(), saved[0].get_weights(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)  # the same seed, the same run
    changed = compose(str(tmp_path), "zoo.snapshot_run.cycles=3")  # another cycle count retrains
    assert stale_members(changed.zoo, data, str(tmp_path)) == ["snap_0", "snap_1"]


def test_a_snapshot_index_past_the_run_is_named(tmp_path):
    from ensemble import EnsembleError

    cfg = compose(str(tmp_path), "zoo.members.snap_1.train.snapshot.index=2")
    data = instantiate(cfg.data)
    with pytest.raises(EnsembleError, match="snapshot index 2 of a run of 2 cycles"):
        ensure_zoo(cfg.zoo, data, str(tmp_path))
