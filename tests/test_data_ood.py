"""Out-of-distribution rows built with a dataset (`data.ood`): the test rows under one seeded
feature permutation, or uniform noise over the train range; a bad spec fails clearly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ensemble import EnsembleError
from ensemble.data import load_dataset, load_npz


def test_permuted_ood_rows_are_the_test_rows_under_one_seeded_permutation() -> None:
    data = load_dataset("digits", ood={"kind": "permute", "seed": 3})
    assert data.x_ood is not None and data.x_ood.shape == data.x_test.shape and data.x_ood.dtype == np.float32
    assert data.ood == {"kind": "permute", "seed": 3}
    # Recover the permutation from each column, by hand: every OOD column is one test column.
    source = [
        next(
            j
            for j in range(64)
            if np.array_equal(data.x_ood[:, i], data.x_test[:, j]) and data.x_test[:, j].std() > 0
        )
        for i in range(64)
        if data.x_test[:, i].std() > 0 and data.x_ood[:, i].std() > 0
    ]
    assert len(set(source)) == len(source) and source != sorted(source)  # a permutation, not the identity
    np.testing.assert_array_equal(np.sort(data.x_ood, axis=1), np.sort(data.x_test, axis=1))  # values kept
    again = load_dataset("digits", ood={"kind": "permute", "seed": 3})
    np.testing.assert_array_equal(again.x_ood, data.x_ood)
    other = load_dataset("digits", ood={"kind": "permute", "seed": 4})
    assert not np.array_equal(other.x_ood, data.x_ood)
    assert load_dataset("digits").x_ood is None  # none named: none built


def test_uniform_ood_rows_lie_in_the_train_range() -> None:
    data = load_dataset("wine", ood={"kind": "uniform", "seed": 0})
    low, high = data.x_train.min(0), data.x_train.max(0)
    assert data.x_ood is not None and data.x_ood.shape == data.x_test.shape
    assert (data.x_ood >= low).all() and (data.x_ood <= high).all()
    # Independent of the test rows: no feature correlates with its test column.
    corr = [abs(np.corrcoef(data.x_ood[:, j], data.x_test[:, j])[0, 1]) for j in range(data.x_test.shape[1])]
    assert max(corr) < 0.5


def test_npz_takes_an_ood_spec(tmp_path: Path) -> None:
    path = tmp_path / "labelled.npz"
    np.savez(path, features=np.random.default_rng(0).normal(size=(60, 3)), target=np.repeat([3, 7, 9], 20))
    data = load_npz(path, x_key="features", y_key="target", ood={"kind": "permute", "seed": 0})
    assert data.x_ood is not None and data.x_ood.shape == data.x_test.shape


@pytest.mark.parametrize(
    "spec, match",
    [
        ({"kind": "rotate"}, r"data.ood: expected \{kind: one of \['permute', 'uniform'\]"),
        ({"kind": "permute", "seed": 0, "rows": 5}, r"Received: \{'kind': 'permute', 'seed': 0, 'rows': 5\}"),
        ({"kind": "permute", "seed": "zero"}, r"data.ood.seed: expected an integer. Received: 'zero'"),
    ],
    ids=["unknown_kind", "unknown_field", "seed_not_integer"],
)
def test_a_bad_ood_spec_fails_clearly(spec: dict[str, Any], match: str) -> None:
    with pytest.raises(EnsembleError, match=match):
        load_dataset("wine", ood=spec)
