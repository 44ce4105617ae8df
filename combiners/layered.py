"""Multi-layer stacking: combiners over the members, and a final combiner over their outputs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from combiners.base import TASKS, Combiner, Tensor

__all__ = ["LayeredCombiner"]


@keras.saving.register_keras_serializable(package="combiners")
class LayeredCombiner(Combiner):
    """Stacking in two levels, in one layer: each combiner of `levels` merges the members'
    predictions, and `final` merges the levels' outputs, `(batch, levels, width)`, as if they
    were members; with `passthrough=True` the members' own predictions follow the levels',
    `(batch, levels + members, width)` (AutoGluon's multi-layer stacking, one level deep).

    `ensemble.fit` fits it leak-free (`ensemble.fitting.layered`): each level on the members'
    predictions of the fitting rows, the final combiner on the levels' out-of-fold
    predictions of those rows, so that it never learns from a level that saw the row.

    Args:
        levels: the combiners of the second level (any `Combiner`: `StackingCombiner`,
            `MeanCombiner`, `VoteCombiner`, ...), at least one.
        final: the combiner of the levels' outputs (default: `StackingCombiner()`).
        passthrough: whether `final` also sees the members' predictions.
        **kwargs: `task` and standard layer keyword arguments.
    """

    def __init__(
        self,
        levels: Sequence[Combiner],
        final: Combiner | None = None,
        passthrough: bool = False,
        **kwargs: Any,
    ) -> None:
        task = kwargs.pop("task", None)
        super().__init__(**kwargs)
        levels = list(levels)
        if not levels or not all(isinstance(level, Combiner) for level in levels):
            raise ValueError(
                f"Expected levels to be a non-empty list of combiners. Received: levels={levels!r}"
            )
        if final is None:
            from combiners.stack import StackingCombiner

            final = StackingCombiner()
        if not isinstance(final, Combiner):
            raise ValueError(f"Expected final to be a combiner. Received: final={final!r}")
        names = [level.name for level in levels] + [final.name]
        if len(set(names)) != len(names):
            raise ValueError(f"Expected combiners with distinct names. Received: {names}")
        self.levels = levels
        self.final = final
        self.passthrough = bool(passthrough)
        self.supported_tasks = tuple(
            t for t in TASKS if all(t in c.supported_tasks for c in [*levels, final])
        )
        if task is not None:
            self.configure(task)

    @property
    def needs_features(self) -> bool:
        return any(combiner.needs_features for combiner in [*self.levels, self.final])

    def configure(self, task: str) -> None:
        super().configure(task)
        for combiner in [*self.levels, self.final]:
            if combiner.task is None:
                combiner.configure(task)
            elif combiner.task != task:
                raise ValueError(f"{combiner.name!r} is configured for a {combiner.task} task, not {task}.")

    def final_inputs(self, members: int) -> int:
        """How many predictions `final` merges: one per level, and one per member with
        passthrough."""
        return len(self.levels) + (members if self.passthrough else 0)

    def _build_state(self, members: int, width: int, features_dim: int | None) -> None:
        features = None if features_dim is None else (None, features_dim)
        for level in self.levels:
            if not level.built:
                level.build((None, members, width), features if level.needs_features else None)
        if not self.final.built:
            shape = (None, self.final_inputs(members), width)
            self.final.build(shape, features if self.final.needs_features else None)

    def level_predictions(self, member_predictions: Tensor, features: Tensor | None = None) -> Tensor:
        """What `final` merges: `(batch, levels [+ members], width)`."""
        outputs = [
            level(member_predictions, features) if level.needs_features else level(member_predictions)
            for level in self.levels
        ]
        stacked = ops.stack([ops.cast(output, "float32") for output in outputs], axis=1)
        if self.passthrough:
            stacked = ops.concatenate([stacked, ops.cast(member_predictions, "float32")], axis=1)
        return stacked

    def _combine(self, member_predictions: Tensor, features: Tensor | None) -> Tensor:
        stacked = self.level_predictions(member_predictions, features)
        return self.final(stacked, features) if self.final.needs_features else self.final(stacked)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "levels": [keras.saving.serialize_keras_object(level) for level in self.levels],
                "final": keras.saving.serialize_keras_object(self.final),
                "passthrough": self.passthrough,
            }
        )
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> LayeredCombiner:
        config = dict(config)
        config["levels"] = [keras.saving.deserialize_keras_object(level) for level in config["levels"]]
        config["final"] = keras.saving.deserialize_keras_object(config["final"])
        return cls(**config)
