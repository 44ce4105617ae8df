"""`Member`: one source model, frozen, renamed and normalised to emit a 2-D prediction."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import keras
import numpy as np
from keras import ops

from ensemble.rows import input_values
from ensemble.types import OutputKind, Tensor

__all__ = ["OUTPUT_KINDS", "InputSpec", "Member"]

OUTPUT_KINDS: tuple[str, ...] = ("probabilities", "logits")


@dataclass(frozen=True)
class InputSpec:
    """One input a member reads: the ensemble input `name`, its shape without batch, its dtype.

    `key` is the source model's own name for the input when the model takes a
    dict of inputs (a functional model built on a dict, a SavedModel signature).
    """

    name: str
    shape: tuple[int | None, ...]
    dtype: str = "float32"
    key: str | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> InputSpec:
        return cls(
            name=config["name"],
            shape=tuple(config["shape"]),
            dtype=config["dtype"],
            key=config.get("key"),
        )

    def get_config(self) -> dict[str, Any]:
        return {**asdict(self), "shape": list(self.shape)}


@keras.saving.register_keras_serializable(package="ensemble")
class Member(keras.Model):
    """A source model wrapped for use inside an ensemble.

    Its prediction is `(batch, width)`, or `(batch, ..., width)` for a model that predicts per
    position (a token or pixel classifier): every axis the source model emits is kept.

    The wrapper gives the model the member's unique `name` (so two runs' models
    both called `sequential` never clash), freezes it (always called with
    `training=False`, no trainable weights), selects one output of a
    multi-output model, and turns logits or a single sigmoid column into
    class probabilities of shape `(batch, classes)`. `source` and `format`
    record where it came from.

    `classes` names the class of each column it emits (None: unnamed), and `columns`, when
    the ensemble put them in another order than the source model's (`build_ensemble` aligns
    members by label), which column of the source's prediction each one is.
    """

    def __init__(
        self,
        model: keras.layers.Layer,
        *,
        inputs: Sequence[InputSpec | Mapping[str, Any]],
        output: OutputKind | None = None,
        output_key: str | int | None = None,
        source: str | None = None,
        format: str | None = None,
        classes: Sequence[str] | None = None,
        columns: Sequence[int] | None = None,
        multilabel: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if output is not None and output not in OUTPUT_KINDS:
            raise ValueError(
                f"Expected output to be one of {OUTPUT_KINDS} or None. Received: output={output!r}"
            )
        self.model = model
        self.input_specs = tuple(
            spec if isinstance(spec, InputSpec) else InputSpec.from_config(spec) for spec in inputs
        )
        self.output_kind = output
        self.output_key = output_key
        self.source = source
        self.format = format
        self.classes = None if classes is None else tuple(str(label) for label in classes)
        self.columns = None if columns is None else tuple(int(column) for column in columns)
        # In a multilabel ensemble each column is an independent probability: logits take a
        # sigmoid each (not one softmax) and a single column stays one label.
        self.multilabel = bool(multilabel)
        # Hashes of the rows that trained the source model, when this project trained it
        # (see ensemble.members.training_rows): what the leakage guard checks. Not part of the config.
        self.training_rows: np.ndarray | None = None
        # Whether `output_kind` was inferred from a final sigmoid rather than declared: a
        # regression ensemble may override it (a bounded regression output looks the same).
        self.output_inferred = False
        self.trainable = False

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.input_specs)

    def build(self, input_shape: Any = None) -> None:
        # The wrapped model arrives built (loaded or restored): nothing to create.
        self.built = True

    def call(self, inputs: Tensor, training: bool | None = None) -> Tensor:
        del training  # A member is frozen: always inference mode.
        prediction = self._as_prediction(self.source_output(inputs))
        return prediction if self.columns is None else ops.take(prediction, self.columns, axis=-1)

    @property
    def width(self) -> int | None:
        """The width of its predictions (classes, or targets), or None when it cannot be told
        symbolically."""
        inputs = [keras.KerasTensor((None, *spec.shape), dtype=spec.dtype) for spec in self.input_specs]
        try:
            spec = self.compute_output_spec(inputs[0] if len(inputs) == 1 else inputs)
        except Exception:
            return None
        width = spec.shape[-1]
        return int(width) if width is not None else None

    def copy(self, **changes: Any) -> Member:
        """A new `Member` over the same source model with `changes` to its constructor
        arguments (`output`, `classes`, `columns`, `model`, `source`, `format`, `name`, ...); it
        keeps the training-row record and whether the output kind was inferred."""
        arguments = {
            "inputs": self.input_specs,
            "output": self.output_kind,
            "output_key": self.output_key,
            "source": self.source,
            "format": self.format,
            "classes": self.classes,
            "columns": self.columns,
            "multilabel": self.multilabel,
            "name": self.name,
            **changes,
        }
        copy = Member(
            changes.get("model", self.model), **{k: v for k, v in arguments.items() if k != "model"}
        )
        copy.training_rows = self.training_rows
        copy.output_inferred = self.output_inferred if "output" not in changes else False
        return copy

    def source_output(self, inputs: Tensor) -> Tensor:
        """The source model's chosen output, as it emits it (before logits become probabilities)."""
        return self._select_output(self.model(self._select_inputs(inputs), training=False))

    def _select_inputs(self, inputs: Tensor) -> Tensor:
        values = input_values(inputs, self.input_names)
        if self.input_specs[0].key is not None:
            return {spec.key: value for spec, value in zip(self.input_specs, values, strict=True)}
        return values[0] if len(values) == 1 else values

    def _select_output(self, outputs: Tensor) -> Tensor:
        if isinstance(outputs, Mapping):
            if self.output_key is not None:
                return outputs[self.output_key]
            if len(outputs) == 1:
                return next(iter(outputs.values()))
            raise ValueError(
                f"Member {self.name!r} returns several outputs {sorted(outputs)}; choose one with output_key."
            )
        if isinstance(outputs, (list, tuple)):
            if self.output_key is not None:
                return outputs[int(self.output_key)]
            if len(outputs) == 1:
                return outputs[0]
            raise ValueError(
                f"Member {self.name!r} returns {len(outputs)} outputs; choose one with output_key."
            )
        return outputs

    def _as_prediction(self, y: Tensor) -> Tensor:
        y = ops.cast(y, "float32")
        if len(y.shape) == 1:
            y = ops.expand_dims(y, -1)
        if self.output_kind is None:
            return y
        if self.multilabel:
            return ops.sigmoid(y) if self.output_kind == "logits" else y
        if y.shape[-1] == 1:
            # One sigmoid column (binary classifier): make it two class columns.
            positive = ops.sigmoid(y) if self.output_kind == "logits" else y
            return ops.concatenate([1.0 - positive, positive], axis=-1)
        return ops.softmax(y, axis=-1) if self.output_kind == "logits" else y

    def compute_output_spec(self, inputs: Tensor, training: bool | None = None) -> Any:
        # Trace the wrapped model symbolically; Keras cannot infer this for a subclass.
        outputs = self.model.compute_output_spec(self._select_inputs(inputs))
        y = self._select_output(outputs)
        shape = (y.shape[0], 1) if len(y.shape) == 1 else tuple(y.shape)  # every axis, as call keeps it
        if self.output_kind is not None and shape[-1] == 1 and not self.multilabel:
            shape = (*shape[:-1], 2)
        return keras.KerasTensor(shape, dtype="float32")

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_config()
        config.update(
            {
                "model": keras.saving.serialize_keras_object(self.model),
                "inputs": [spec.get_config() for spec in self.input_specs],
                "output": self.output_kind,
                "output_key": self.output_key,
                "source": self.source,
                "format": self.format,
                "classes": None if self.classes is None else list(self.classes),
                "columns": None if self.columns is None else list(self.columns),
                "multilabel": self.multilabel,
            }
        )
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: Any = None) -> Member:
        config = dict(config)
        model = keras.saving.deserialize_keras_object(config.pop("model"), custom_objects)
        return cls(model, **config)
