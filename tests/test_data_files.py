"""Datasets from the user's files (.npz, .csv): what was written comes back, with its task and
class names, split stratified and reproducibly; the bundled examples; relative paths."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn import datasets

from ensemble.data import Dataset, load_csv, load_dataset, load_npz

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "conf" / "data" / "examples"
PARTS = ["train", "holdout", "test"]


def write_csv(path: Path, header: list[str], rows: list[list[Any]], delimiter: str = ",") -> Path:
    lines = [delimiter.join(header)] + [delimiter.join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def all_rows(data: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """The three splits' rows together, sorted, as (x, y)."""
    x = np.concatenate([getattr(data, f"x_{part}") for part in PARTS])
    y = np.concatenate([getattr(data, f"y_{part}") for part in PARTS])
    return sorted_rows(x, y)


def sorted_rows(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort(np.column_stack([x, y.reshape(len(y), -1)]).T[::-1])
    return x[order], y[order]


@pytest.fixture
def labelled(tmp_path: Path) -> tuple[np.ndarray, np.ndarray, Path]:
    """60 rows, 3 float features, integer labels {3, 7, 9} (not 0..K-1), saved as .npz."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3))
    y = np.repeat([3, 7, 9], 20)
    path = tmp_path / "labelled.npz"
    np.savez(path, features=x, target=y)
    return x, y, path


def test_npz_returns_the_arrays_written(labelled: tuple[np.ndarray, np.ndarray, Path]) -> None:
    x, y, path = labelled
    data = load_npz(path, x_key="features", y_key="target")

    assert data.name == "labelled" and data.task == "classification" and data.classes == 3
    assert data.class_names == ["3", "7", "9"]
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    got_x, got_y = all_rows(data)
    want_x, want_y = sorted_rows(x.astype("float32"), np.searchsorted([3, 7, 9], y))
    np.testing.assert_array_equal(got_x, want_x)
    np.testing.assert_array_equal(got_y, want_y)
    assert data.split["source"] == str(path.resolve())
    assert data.split["rows"] == {part: len(getattr(data, f"x_{part}")) for part in PARTS}


def test_csv_returns_the_columns_written_and_encodes_names(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 2)).round(3)
    names = np.array(["cat", "dog", "emu"])[np.arange(30) % 3]
    rows = [[name, a, "ignored", b] for name, (a, b) in zip(names, x, strict=True)]
    path = write_csv(tmp_path / "pets.csv", ["animal", "a", "note", "b"], rows, delimiter=";")

    data = load_csv(path, target="animal", features=["a", "b"], delimiter=";", name="pets")

    assert data.name == "pets" and data.task == "classification" and data.classes == 3
    assert data.class_names == ["cat", "dog", "emu"]
    got_x, got_y = all_rows(data)
    want_x, want_y = sorted_rows(x.astype("float32"), np.searchsorted(["cat", "dog", "emu"], names))
    np.testing.assert_array_equal(got_x, want_x)
    np.testing.assert_array_equal(got_y, want_y)


def test_labels_already_0_to_k_are_kept_and_named_by_their_text(tmp_path: Path) -> None:
    path = tmp_path / "plain.npz"
    np.savez(path, x=np.arange(40.0).reshape(20, 2), y=np.arange(20) % 2)
    data = load_npz(path)
    assert data.task == "classification" and data.classes == 2 and data.class_names == ["0", "1"]


@pytest.mark.parametrize(
    "y, task",
    [
        (np.arange(60) % 4, "classification"),  # 4 integer values
        ((np.arange(60) % 4).astype(float), "classification"),  # integer-valued floats
        (np.arange(60) % 4 + 0.5, "regression"),  # not integer-valued
        (np.arange(60), "regression"),  # integers, but one value per row
        (np.arange(120) % 51, "regression"),  # more than 50 distinct values
        (np.arange(60) % 30, "regression"),  # distinct values not fewer than half the rows
    ],
    ids=["few_ints", "int_valued_floats", "fractions", "all_distinct", "over_50", "half_the_rows"],
)
def test_task_is_inferred(tmp_path: Path, y: np.ndarray, task: str) -> None:
    path = tmp_path / "t.npz"
    np.savez(path, x=np.random.default_rng(0).normal(size=(len(y), 2)), y=y)
    data = load_npz(path)
    assert data.task == task
    assert (data.classes is None) == (task == "regression")
    assert data.y_train.dtype == (np.int64 if task == "classification" else np.float32)


def test_an_explicit_task_overrides_inference(tmp_path: Path) -> None:
    path = tmp_path / "t.npz"
    np.savez(path, x=np.zeros((60, 2)), y=np.arange(60) % 4)
    data = load_npz(path, task="regression")
    assert data.task == "regression" and data.classes is None and data.y_train.dtype == np.float32


def test_csv_regression_with_every_other_column_as_features(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    table = rng.normal(size=(40, 3)).round(4)
    path = write_csv(tmp_path / "r.csv", ["u", "price", "v"], table.tolist())
    data = load_csv(path, target="price")
    assert data.task == "regression" and data.class_names is None
    got_x, got_y = all_rows(data)
    want_x, want_y = sorted_rows(table[:, [0, 2]].astype("float32"), table[:, 1].astype("float32"))
    np.testing.assert_array_equal(got_x, want_x)
    np.testing.assert_array_equal(got_y, want_y)


@pytest.mark.parametrize("loader", ["npz", "csv"])
def test_splits_are_stratified_disjoint_complete_and_seeded(tmp_path: Path, loader: str) -> None:
    # Every row is unique (its first feature is its index), so rows can be told apart.
    x = np.column_stack([np.arange(90.0), np.random.default_rng(3).normal(size=90).round(3)])
    y = np.repeat([0, 1, 2], [30, 30, 30])
    if loader == "npz":
        path = tmp_path / "d.npz"
        np.savez(path, x=x, y=y)
        load: Callable[..., Dataset] = load_npz
    else:
        rows = [[*row, label] for row, label in zip(x, y, strict=True)]
        path = write_csv(tmp_path / "d.csv", ["i", "f", "label"], rows)
        load = lambda path, **kw: load_csv(path, target="label", **kw)  # noqa: E731

    data = load(path, test_size=0.2, holdout_size=0.3, seed=5)

    index = [getattr(data, f"x_{part}")[:, 0].astype(int) for part in PARTS]
    assert sorted(np.concatenate(index).tolist()) == list(range(90))
    assert [len(i) for i in index] == [45, 27, 18]
    for part, rows in zip(PARTS, index, strict=True):
        # Stratified: every class in the same share as in the whole set.
        counts = np.bincount(getattr(data, f"y_{part}"))
        np.testing.assert_array_equal(counts, [len(rows) // 3] * 3, err_msg=part)
        np.testing.assert_array_equal(getattr(data, f"y_{part}"), y[rows], err_msg=part)

    again = load(path, test_size=0.2, holdout_size=0.3, seed=5)
    other = load(path, test_size=0.2, holdout_size=0.3, seed=6)
    for part in PARTS:
        np.testing.assert_array_equal(getattr(again, f"x_{part}"), getattr(data, f"x_{part}"))
    assert not np.array_equal(other.x_test, data.x_test)


def test_the_wine_example_splits_like_the_bundled_wine() -> None:
    # conf/data/npz.yaml is named after its file, `wine` (and shares its zoo of members): the rows
    # must match.
    from_file, bundled = load_npz(EXAMPLES / "wine.npz"), load_dataset("wine")
    assert from_file.name == bundled.name == "wine"
    for part in PARTS:
        np.testing.assert_array_equal(getattr(from_file, f"x_{part}"), getattr(bundled, f"x_{part}"))
        np.testing.assert_array_equal(getattr(from_file, f"y_{part}"), getattr(bundled, f"y_{part}"))


def test_iris_example_is_sklearns_iris_with_names() -> None:
    data = load_csv(EXAMPLES / "iris.csv", target="species")
    iris = datasets.load_iris()
    assert data.class_names == list(iris.target_names)
    got_x, got_y = all_rows(data)
    want_x, want_y = sorted_rows(iris.data.astype("float32"), iris.target)
    np.testing.assert_array_equal(got_x, want_x)
    np.testing.assert_array_equal(got_y, want_y)


@pytest.mark.parametrize("name", ["iris.csv", "wine.npz"])
def test_examples_are_small(name: str) -> None:
    assert (EXAMPLES / name).stat().st_size < 20_000


def test_relative_path_falls_back_to_the_repository_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    data = load_csv("conf/data/examples/iris.csv", target="species")
    assert data.split["source"] == str(EXAMPLES / "iris.csv")
    assert load_npz("conf/data/examples/wine.npz").split["source"] == str(EXAMPLES / "wine.npz")


def test_relative_path_prefers_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A file of the same relative path in the working directory wins over the repository's.
    own = tmp_path / "conf" / "data" / "examples" / "wine.npz"
    own.parent.mkdir(parents=True)
    np.savez(own, x=np.zeros((30, 1)), y=np.arange(30) % 2)
    monkeypatch.chdir(tmp_path)
    data = load_npz("conf/data/examples/wine.npz")
    assert data.split["source"] == str(own) and data.classes == 2
