"""The level-one store: each member's predictions on a dataset, computed once and reused.

Member outputs never change while a combiner trains, so running every member
forward on every batch of every epoch is waste. The store runs each member
once over the data (batched, with a Keras progress bar) and keeps the result
in memory, or as files in `directory`, keyed by the content of each loaded
member and of the data (`ensemble.fitting.cache`), so a rerun (even in a new
process) reuses them and a retrained member or changed data does not. Every
file is validated before use; a bad one is recomputed with a warning.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ensemble.atomic import remove_abandoned_writes
from ensemble.errors import EnsembleError
from ensemble.fitting.cache import entry_path, member_fingerprint, read_entry, write_entry
from ensemble.graph.layers import MemberStack
from ensemble.graph.view import EnsembleView
from ensemble.members.member import Member
from ensemble.rows import data_fingerprint, row_count, take_rows
from ensemble.tfdata import arrays_of
from ensemble.types import Data, PathLike

__all__ = [
    "LevelOneStore",
    "check_given_level_one",
    "distributed_level_one",
    "member_fingerprint",
    "member_inputs",
]

log = logging.getLogger(__name__)


class LevelOneStore:
    """Members' predictions, `(rows, members, width)`, computed once per member and dataset.

    Args:
        directory: where to keep them as files (one validated `.npz` per member and dataset);
            None keeps them in memory.
        batch_size: rows per batch when a member predicts (per replica, under a strategy).
        verbose: Keras' progress-bar setting for those passes.
        strategy: a `tf.distribute` strategy to run the passes under, each replica (of every
            worker) predicting its shard of every batch; None runs them on this device.
    """

    def __init__(
        self,
        directory: PathLike | None = None,
        *,
        batch_size: int = 256,
        verbose: Any = "auto",
        strategy: tf.distribute.Strategy | None = None,
    ) -> None:
        self.directory = None if directory is None else os.fspath(directory)
        self.batch_size = batch_size
        self.verbose = verbose
        self.strategy = strategy
        self._memory: dict[str, np.ndarray] = {}
        self.computed: list[str] = []  # keys computed (not reused) by this store, in order
        if self.directory is not None:
            os.makedirs(self.directory, exist_ok=True)
            remove_abandoned_writes(self.directory)  # what writers killed mid-entry left

    def predictions(self, model: keras.Model, x: Data) -> np.ndarray:
        """Every member's predictions on `x`, stacked as `(rows, members, width)`.

        Members not cached yet run together, in one compiled pass of the ensemble's member
        graph, rather than one pass (and one trace) each, `batch_size` rows at a time, each
        batch's predictions written into the one array returned: the pass holds little more
        than its result above `x`, and `x` is hashed in place, not copied. Where every member
        was computed by this call, the array of the memory store (no `directory`) is the one
        it keeps: read-only. `x` may be a `tf.data.Dataset` of batches `x` or `(x, y)` (its
        labels are dropped), read into arrays first.
        """
        x, _ = arrays_of(x, where="LevelOneStore.predictions", labels="ignored")
        data_key = data_fingerprint(x)[:32]
        rows = row_count(x)
        members = list(EnsembleView.of(model).members)
        keys = [f"{m.name}-{member_fingerprint(m)[:32]}-{data_key}" for m in members]
        found = [self._load(key, rows, m) for key, m in zip(keys, members, strict=True)]
        missing = [i for i, values in enumerate(found) if values is None]
        if missing:
            log.info(
                "Level-one pass of member(s) %s over %d rows",
                [members[i].name for i in missing],
                rows,
            )
            pass_model = _members_model(model, [members[i] for i in missing])
            feeds = _feeds(model, x)
            if self.strategy is None:
                stacked = _pass(pass_model, feeds, rows, self.batch_size, self.verbose)
            else:
                stacked = _distributed_pass(pass_model, feeds, self.strategy, self.batch_size)
            if self.directory is None:  # the memory store keeps views of it: never to be written
                stacked.flags.writeable = False
            for column, i in enumerate(missing):
                values = found[i] = stacked[:, column]
                self._save(keys[i], values)
                self.computed.append(keys[i])
            if len(missing) == len(members):
                return stacked
        width = next(values.shape[1:] for values in found if values is not None)
        result = np.empty((rows, len(members), *width), dtype="float32")
        for column, cached in enumerate(found):
            result[:, column] = cached
        return result

    def _load(self, key: str, rows: int, member: Member) -> np.ndarray | None:
        if key in self._memory:
            return self._memory[key]
        if self.directory is None:
            return None
        return read_entry(entry_path(self.directory, key), key, rows, member.width)

    def _save(self, key: str, values: np.ndarray) -> None:
        if self.directory is None:
            self._memory[key] = values
            return
        write_entry(entry_path(self.directory, key), key, values)


def _members_model(model: keras.Model, members: list[Member]) -> keras.Model:
    """The ensemble's inputs to the given members' predictions, stacked: (batch, members, width)."""
    inputs = model.input
    feeds = inputs if isinstance(inputs, Mapping) else {keras.tree.flatten(inputs)[0].name: inputs}
    outputs = [member({n: feeds[n] for n in member.input_names}) for member in members]
    return keras.Model(inputs, MemberStack()(outputs))


def _pass(pass_model: keras.Model, feeds: Any, rows: int, batch_size: int, verbose: Any) -> np.ndarray:
    """`pass_model` over `feeds`, `batch_size` rows per compiled call, into one array."""
    if rows == 0:
        raise EnsembleError("Expected at least one row. Received: none.")
    specs = tf.nest.map_structure(lambda t: tf.TensorSpec(t.shape, t.dtype), pass_model.input)
    call = tf.function(lambda batch: pass_model(batch, training=False), input_signature=[specs])
    steps = -(-rows // batch_size)
    progress = (
        None
        if verbose in (0, False)
        else keras.utils.Progbar(steps, verbose=1 if verbose == "auto" else verbose)
    )
    out: np.ndarray | None = None
    for step, start in enumerate(range(0, rows, batch_size)):
        values = call(_rows(feeds, specs, start, start + batch_size)).numpy()
        if out is None:
            out = np.empty((rows, *values.shape[1:]), dtype="float32")
        out[start : start + len(values)] = values
        if progress is not None:
            progress.update(step + 1)
    assert out is not None  # rows > 0
    return out


def _rows(feeds: Any, specs: Any, start: int, stop: int) -> Any:
    """Rows `start:stop` of `feeds` (a view, but for a dtype the model casts to)."""
    return tf.nest.map_structure(
        lambda a, spec: np.asarray(a[start:stop], dtype=spec.dtype.as_numpy_dtype), feeds, specs
    )


def _distributed_pass(
    pass_model: keras.Model, feeds: Any, strategy: tf.distribute.Strategy, batch_size: int
) -> np.ndarray:
    """`pass_model` over `feeds` as a dataset distributed with `strategy`: each replica predicts
    its shard; the outputs are gathered from every replica of every worker and put back in
    row order by row ids, which must come back exactly once each."""
    rows = row_count(feeds)
    if rows == 0:
        raise EnsembleError("Expected at least one row. Received: none.")
    ids = np.arange(rows, dtype="int64")
    features = keras.tree.map_structure(lambda a: np.asarray(a, dtype="float32"), feeds)
    dataset = tf.data.Dataset.from_tensor_slices((ids, features))
    dataset = dataset.batch(batch_size * strategy.num_replicas_in_sync)
    options = tf.data.Options()  # shard by rows, not by file: the rows live in memory
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    distributed = strategy.experimental_distribute_dataset(dataset.with_options(options))

    def predict(batch_ids: Any, batch: Any) -> Any:
        return batch_ids, pass_model(batch, training=False)

    step = tf.function(predict)

    out: np.ndarray | None = None
    seen = np.zeros(rows, dtype="int64")
    try:
        for batch_ids, batch in distributed:
            replica_ids, replica_out = strategy.run(step, args=(batch_ids, batch))
            # Gathered from every replica of every worker, uneven last shards included.
            order = np.asarray(strategy.gather(replica_ids, axis=0))
            values = np.asarray(strategy.gather(replica_out, axis=0))
            if out is None:
                out = np.empty((rows, *values.shape[1:]), dtype="float32")
            if len(order) and (order.min() < 0 or order.max() >= rows):
                raise EnsembleError(f"The distributed level-one pass returned row ids outside [0, {rows}).")
            out[order] = values
            np.add.at(seen, order, 1)
    except (tf.errors.DeadlineExceededError, tf.errors.UnavailableError) as error:
        raise EnsembleError(
            "A worker of the cluster did not answer in time (is every worker of TF_CONFIG "
            f"started and running the same job?): {str(error).splitlines()[0]}"
        ) from None
    if out is None or not (seen == 1).all():
        raise EnsembleError(
            f"The distributed level-one pass returned {int(seen.sum())} rows for {rows}: rows were "
            "lost or repeated across replicas."
        )
    return out


def _feeds(model: keras.Model, x: Data) -> Any:
    if isinstance(model.input, Mapping):
        if not isinstance(x, Mapping):
            raise KeyError(f"The ensemble reads inputs {sorted(model.input)}; x must be a dict of them.")
        missing = sorted(set(model.input) - set(x))
        if missing:
            raise KeyError(f"The ensemble reads input(s) {missing}; x has {sorted(x)}.")
        return {name: x[name] for name in model.input}
    return x


def member_inputs(member: Member, x: Data) -> Any:
    """What `member` reads of `x`: the array itself, or its named inputs."""
    if not isinstance(x, Mapping):
        return x
    missing = [name for name in member.input_names if name not in x]
    if missing:
        raise KeyError(f"Member {member.name!r} reads input(s) {missing}; x has {sorted(x)}.")
    return {name: x[name] for name in member.input_names}


def distributed_level_one(
    model: keras.Model, x: Data, strategy: tf.distribute.Strategy, *, batch_size: int = 256
) -> np.ndarray:
    """Every member's predictions on `x`, `(rows, members, width)`, each replica (of every
    worker) predicting its shard; gathered back in row order and checked by row ids. The same
    pass as `LevelOneStore(strategy=strategy)`, without the cache."""
    return LevelOneStore(strategy=strategy, batch_size=batch_size, verbose=0).predictions(model, x)


SPOT_ROWS = 8  # rows of x a given level_one is checked on: one small forward pass
SPOT_RTOL = SPOT_ATOL = 1e-2  # wide enough for mixed precision, far below a wrong row's gap


def check_given_level_one(view: EnsembleView, x: Data, level_one: np.ndarray) -> None:
    """Given predictions not declared out of fold should be the members' own on the rows of
    `x`, in their order: `SPOT_ROWS` rows spread over `x` are predicted by the members and
    compared (within `SPOT_RTOL`, `SPOT_ATOL`). A difference is a WARNING naming the member and
    row, not an error: predictions of models other than the members (a cross-validation of
    one's own) differ by design, while predictions of other rows or in another order are the
    mistake it is there to catch."""
    rows = np.unique(np.linspace(0, len(level_one) - 1, min(SPOT_ROWS, len(level_one))).astype(int))
    predicted = _members_model(view.model, list(view.members))(_feeds(view.model, take_rows(x, rows)))
    actual = np.asarray(predicted, dtype="float64").reshape(len(rows), len(view.members), -1)
    given = np.asarray(level_one[rows], dtype="float64").reshape(actual.shape)
    wrong = ~np.isclose(given, actual, rtol=SPOT_RTOL, atol=SPOT_ATOL)
    if not wrong.any():
        return
    at, member, _ = np.argwhere(wrong)[0]
    row = int(rows[at])
    log.warning(
        "level_one, row %d: member %r predicts %s on row %d of x, but level_one holds %s (%d of "
        "%d rows checked differ). Given predictions are taken as the members' predictions of x's "
        "rows, in x's order: if they were made on other rows, in another order or by other "
        "models, the fit is wrong. Predictions of models that never saw their rows (out of "
        "fold) are passed with level_one_unseen=True.",
        row,
        view.members[member].name,
        np.round(actual[at, member], 4).tolist(),
        row,
        np.round(given[at, member], 4).tolist(),
        int(wrong.any(axis=(1, 2)).sum()),
        len(rows),
    )
