"""Datasets from the user's files that cannot be used: each fails clearly, naming the path, the
line or row, the field, and what was expected."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ensemble import EnsembleError
from ensemble.data import Dataset, load_csv, load_npz
from tests.test_data_files import write_csv


@pytest.fixture
def bad(tmp_path: Path) -> Path:
    """A folder of broken inputs."""
    rows = [[i, i % 3, "abc"[i % 3]] for i in range(12)]
    write_csv(tmp_path / "ok.csv", ["a", "b", "label"], rows)
    write_csv(tmp_path / "text.csv", ["a", "b", "label"], [[1, "x" if i == 4 else i, "p"] for i in range(12)])
    write_csv(tmp_path / "ragged.csv", ["a", "b", "label"], [[1, 2, "p"], [1, "p"]])
    write_csv(tmp_path / "rare.csv", ["a", "label"], [[i, "p" if i < 10 else "q"] for i in range(12)])
    write_csv(tmp_path / "tiny.csv", ["a", "label"], [[1, 0.5], [2, 1.5]])
    write_csv(tmp_path / "dup.csv", ["a", "a", "label"], [[1, 2, 3]])
    (tmp_path / "empty.csv").write_text("")
    np.savez(tmp_path / "ok.npz", x=np.zeros((12, 2)), y=np.arange(12) % 3)
    np.savez(tmp_path / "rows.npz", x=np.zeros((12, 2)), y=np.zeros(11))
    np.savez(tmp_path / "words.npz", x=np.array([["a"]] * 12), y=np.zeros(12))
    np.save(tmp_path / "single.npy", np.zeros(3))
    (tmp_path / "noise.npz").write_bytes(b"not a zip archive")
    np.savez(tmp_path / "objects.npz", x=np.array([{}] * 12, dtype=object), y=np.zeros(12))
    write_csv(
        tmp_path / "nan.csv", ["a", "b", "label"], [[i, "nan" if i == 7 else i, "p"] for i in range(12)]
    )
    write_csv(tmp_path / "inf.csv", ["a", "y"], [[i, "-inf" if i == 2 else i * 0.5] for i in range(12)])
    holes = np.ones((12, 3))
    holes[[5, 9], 2] = np.nan
    np.savez(tmp_path / "holes.npz", x=holes, y=np.arange(12) % 3)
    np.savez(tmp_path / "inf_y.npz", x=np.ones((12, 2)), y=np.where(np.arange(12) == 4, np.inf, 0.5))
    return tmp_path


def case(call: Callable[[Path], Dataset], match: str, id: str) -> Any:
    return pytest.param(call, match, id=id)


ERRORS = [
    case(
        lambda d: load_csv(d / "nowhere.csv", target="label"),
        r"'.*nowhere\.csv' not found",
        "csv_missing_file",
    ),
    case(
        lambda d: load_npz("no/such.npz"),
        r"'no/such\.npz' not found.*Expected a file at",
        "npz_missing_relative",
    ),
    case(
        lambda d: load_csv(d / "ok.csv", target="kind"),
        r"ok\.csv: no target column 'kind'.*\['a', 'b', 'label'\]",
        "csv_no_target_column",
    ),
    case(
        lambda d: load_csv(d / "ok.csv", target="label", features=["a", "z"]),
        r"no feature column 'z'.*\['a', 'b', 'label'\]",
        "csv_no_feature_column",
    ),
    case(
        lambda d: load_csv(d / "ok.csv", target="label", features=["a", "label"]),
        r"target column 'label' is also listed",
        "csv_target_among_features",
    ),
    case(
        lambda d: load_csv(d / "text.csv", target="label"),
        r"text\.csv: feature column 'b' must be numeric.*'x' on line 6",
        "csv_text_feature",
    ),
    case(
        lambda d: load_csv(d / "ragged.csv", target="label"),
        r"ragged\.csv, line 3: expected 3 fields.*Received: 2",
        "csv_ragged_row",
    ),
    case(
        lambda d: load_csv(d / "dup.csv", target="label"),
        r"unique column names.*\['a'\]",
        "csv_repeated_column",
    ),
    case(
        lambda d: load_csv(d / "empty.csv", target="label"),
        r"empty\.csv: expected a header row",
        "csv_empty_file",
    ),
    case(
        lambda d: load_csv(d / "ok.csv", target="label", task="regression"),
        r"target 'label': task='regression' needs numeric",
        "csv_names_as_regression",
    ),
    case(
        lambda d: load_csv(d / "ok.csv", target="label", task="ranking"),
        r"Received: task='ranking'",
        "unknown_task",
    ),
    case(
        lambda d: load_csv(d / "rare.csv", target="label"),
        r"rare\.csv: class 'q' has 2 row\(s\).*at least 3 rows of every class",
        "csv_class_too_rare",
    ),
    case(
        lambda d: load_csv(d / "tiny.csv", target="label"),
        r"tiny\.csv: expected at least 3 rows.*Received: 2",
        "csv_too_few_rows",
    ),
    case(
        lambda d: load_npz(d / "ok.npz", test_size=0.2, holdout_size=0.05),
        r"ok\.npz: 12 rows are too few for test_size=0.2, holdout_size=0.05",
        "npz_split_too_small",
    ),
    case(
        lambda d: load_npz(d / "ok.npz", test_size=0.5, holdout_size=0.5),
        r"test_size \+ holdout_size < 1.*test_size=0.5, holdout_size=0.5",
        "npz_sizes_sum_to_one",
    ),
    case(
        lambda d: load_npz(d / "ok.npz", x_key="features"),
        r"ok\.npz: no array 'features'.*\['x', 'y'\]",
        "npz_no_x",
    ),
    case(lambda d: load_npz(d / "ok.npz", y_key="label"), r"no array 'label'.*\['x', 'y'\]", "npz_no_y"),
    case(
        lambda d: load_npz(d / "rows.npz"), r"rows\.npz.*'x' has 12 rows, 'y' has 11", "npz_row_counts_differ"
    ),
    case(
        lambda d: load_npz(d / "words.npz"),
        r"words\.npz: features 'x' must be a numeric array.*dtype <U1",
        "npz_text_features",
    ),
    case(
        lambda d: load_npz(d / "single.npy"),
        r"single\.npy: expected an \.npz archive.*not a zip",
        "npz_is_npy",
    ),
    case(
        lambda d: load_npz(d / "objects.npz"),
        r"objects\.npz: expected plain arrays under 'x' and 'y'",
        "npz_objects",
    ),
    case(
        lambda d: load_csv(d / "nan.csv", target="label"),
        r"nan\.csv: feature column 'b' holds 'nan' on line 9\. Expected a finite number",
        "csv_nan_feature",
    ),
    case(
        lambda d: load_csv(d / "inf.csv", target="y"),
        r"inf\.csv: target 'y' holds '-inf' on line 4",
        "csv_inf_target",
    ),
    case(
        lambda d: load_npz(d / "holes.npz"),
        r"holes\.npz: features 'x' holds 2 NaN or infinite value\(s\), first at row 5, column 2",
        "npz_nan_features",
    ),
    case(
        lambda d: load_npz(d / "inf_y.npz"),
        r"inf_y\.npz: targets 'y' holds 1 NaN .* row 4",
        "npz_inf_targets",
    ),
    case(
        lambda d: load_npz(d / "noise.npz"),
        r"noise\.npz: expected an \.npz archive.*not a zip",
        "npz_not_a_zip",
    ),
]


@pytest.mark.parametrize("call, match", ERRORS)
def test_bad_input_fails_clearly(bad: Path, call: Callable[[Path], Dataset], match: str) -> None:
    with pytest.raises(EnsembleError, match=match):
        call(bad)
