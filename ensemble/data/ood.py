"""An out-of-distribution set built from a dataset's own rows, deterministically from a seed, so
that OOD detection needs nothing downloaded and no member retrained.

The config names it (`data.ood`): `{kind: permute, seed: 0}` or `{kind: uniform, seed: 0}`, or
null for none. Both corrupt the TEST rows, so the in-distribution and OOD sets are the same rows
before and after:

- `permute`: one seeded permutation of the feature positions, the same for every row (for
  digits, pixel-permuted images: each row keeps its values, its structure is gone);
- `uniform`: every feature replaced by a seeded uniform draw over that feature's range on the
  train split (noise with the data's scale and none of its structure).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ensemble.errors import EnsembleError

__all__ = ["OOD_KINDS", "ood_rows"]

OOD_KINDS = ("permute", "uniform")


def ood_rows(spec: Mapping[str, Any], x_test: np.ndarray, x_train: np.ndarray) -> np.ndarray:
    """The OOD rows `spec` (`{kind, seed}`) names, one per test row, float32 like the splits."""
    unknown = sorted(set(spec) - {"kind", "seed"})
    kind = spec.get("kind")
    if unknown or kind not in OOD_KINDS:
        raise EnsembleError(
            f"data.ood: expected {{kind: one of {list(OOD_KINDS)}, seed: an integer}} or null. "
            f"Received: {dict(spec)}"
        )
    seed = spec.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise EnsembleError(f"data.ood.seed: expected an integer. Received: {seed!r}")
    rng = np.random.default_rng(int(seed))
    rows = np.asarray(x_test, dtype="float32").reshape(len(x_test), -1)
    if kind == "permute":
        if rows.shape[1] < 2:
            raise EnsembleError(
                f"data.ood: kind permute needs at least 2 features. Received: {rows.shape[1]}"
            )
        order = rng.permutation(rows.shape[1])
        while np.array_equal(order, np.arange(rows.shape[1])):  # never the identity
            order = rng.permutation(rows.shape[1])
        out = rows[:, order]
    else:
        train = np.asarray(x_train, dtype="float32").reshape(len(x_train), -1)
        low, high = train.min(0), train.max(0)
        out = (low + rng.random(rows.shape) * (high - low)).astype("float32")
    return np.asarray(out.reshape(np.shape(x_test)), dtype="float32")
