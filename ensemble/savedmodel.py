"""`SavedModelLayer`: one signature of a TF1 or TF2 SavedModel as a Keras layer.

Keras' own `TFSMLayer` cannot choose the MetaGraph tags of a TF1 SavedModel
nor one output of a multi-output signature, and it tracks copies of the
variables rather than the ones the signature reads. This layer keeps the
loaded object (and so its variables) as an attribute, which TensorFlow's
object tracking follows when the ensemble is saved or exported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras
import tensorflow as tf

from ensemble._inputs import input_values
from ensemble.types import Tensor

__all__ = ["SavedModelLayer", "is_saved_model_dir"]


def is_saved_model_dir(path: str) -> bool:
    return tf.io.gfile.isdir(path) and any(
        tf.io.gfile.exists(tf.io.gfile.join(path, name))
        for name in ("saved_model.pb", "saved_model.pbtxt")
    )


@keras.saving.register_keras_serializable(package="ensemble")
class SavedModelLayer(keras.layers.Layer):
    """Calls signature `signature` of the SavedModel at `filepath` and returns output `output_key`.

    `tags` selects the MetaGraph of a TF1 SavedModel (`["serve"]` when None and
    the SavedModel has several). The output is the only one of the signature
    unless `output_key` names one.
    """

    def __init__(
        self,
        filepath: str,
        *,
        tags: Sequence[str] | None = None,
        signature: str = "serving_default",
        output_key: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(trainable=False, **kwargs)
        self.filepath = str(filepath)
        self.tags = list(tags) if tags is not None else None
        self.signature = signature
        self._loaded = _load(self.filepath, self.tags)
        signatures = self._loaded.signatures
        if signature not in signatures:
            raise ValueError(
                f"SavedModel {self.filepath} has no signature {signature!r}. "
                f"Available signatures: {sorted(signatures)}"
            )
        self._function = signatures[signature]
        _, input_specs = self._function.structured_input_signature
        self.input_specs: dict[str, tf.TensorSpec] = dict(input_specs)
        outputs: Mapping[str, tf.TensorSpec] = self._function.structured_outputs
        self.output_key = _choose_output(self.filepath, signature, outputs, output_key)
        self.output_spec = outputs[self.output_key]
        self.built = True

    @property
    def input_names(self) -> list[str]:
        return list(self.input_specs)

    @property
    def variable_count(self) -> int:
        return sum(int(v.shape.num_elements() or 0) for v in self._loaded.variables)

    def call(self, inputs: Tensor) -> Tensor:
        values = input_values(inputs, self.input_names)
        feeds = {
            name: tf.cast(value, spec.dtype)
            for (name, spec), value in zip(self.input_specs.items(), values, strict=True)
        }
        return self._function(**feeds)[self.output_key]

    def compute_output_spec(self, inputs: Tensor) -> keras.KerasTensor:
        batch = keras.tree.flatten(inputs)[0].shape[0]
        shape = (batch, *self.output_spec.shape[1:])
        return keras.KerasTensor(shape, dtype=self.output_spec.dtype.name)

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_config()
        config.update(
            {
                "filepath": self.filepath,
                "tags": self.tags,
                "signature": self.signature,
                "output_key": self.output_key,
            }
        )
        return config

    @classmethod
    def from_config(
        cls, config: dict[str, Any], custom_objects: Any = None, safe_mode: bool | None = None
    ) -> SavedModelLayer:
        # Loading a SavedModel runs its graph: the same rule as Keras' TFSMLayer.
        if safe_mode if safe_mode is not None else _in_safe_mode():
            raise ValueError(
                f"Reloading a SavedModel member from {config.get('filepath')} runs graph code "
                "from that SavedModel, which Keras' safe_mode forbids. If you trust it, load "
                "with safe_mode=False."
            )
        config = dict(config)
        config.pop("trainable", None)
        return cls(**config)


def _in_safe_mode() -> bool:
    from keras.src.saving import serialization_lib

    return serialization_lib.in_safe_mode() is not False


def _load(path: str, tags: list[str] | None) -> Any:
    try:
        return tf.saved_model.load(path, tags=tags)
    except (ValueError, RuntimeError) as error:
        if tags is None and "tags" in str(error).lower():
            # A TF1 SavedModel holding several MetaGraphs: serving is the usual one.
            return tf.saved_model.load(path, tags=["serve"])
        raise


def _choose_output(
    path: str, signature: str, outputs: Mapping[str, Any], output_key: str | None
) -> str:
    if output_key is not None:
        if output_key not in outputs:
            raise ValueError(
                f"Signature {signature!r} of SavedModel {path} has no output {output_key!r}. "
                f"Its outputs: {sorted(outputs)}"
            )
        return output_key
    if len(outputs) != 1:
        raise ValueError(
            f"Signature {signature!r} of SavedModel {path} has {len(outputs)} outputs "
            f"{sorted(outputs)}; choose one with output_key."
        )
    return next(iter(outputs))
