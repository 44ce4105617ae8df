"""The Hydra config's data and members groups: every dataset option splits as scikit-learn's own
rows, a bad dataset name fails clearly (in Hydra, with the options listed), and a members entry is
complete or named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hydra.errors import MissingConfigException
from hydra.utils import instantiate
from omegaconf import OmegaConf
from sklearn import datasets

from ensemble import EnsembleError
from ensemble.data import SKLEARN_DATASETS, Dataset, load_dataset
from experiments.job import load_members
from tests.test_config_groups import options

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


def test_missing_data_option_fails_in_hydra(compose_config: Any) -> None:
    """The experiments' config (the one `python -m experiments.compose` composes) fails in Hydra's
    composition, before any job runs, listing the options there are. Composed in this interpreter,
    not a fresh one: the test is about the config, not the process; the command line itself is
    pinned by tests/test_run.py::test_a_dataset_not_in_the_group (the same message from
    `python -m experiments.run`, which composes this config too)."""
    with pytest.raises(MissingConfigException) as error:
        compose_config("data=nope")
    assert "Could not find 'data/nope'" in str(error.value)
    # Hydra lists what there is instead.
    for option in options("data"):
        assert option in str(error.value)


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
