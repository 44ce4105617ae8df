"""`SavedModelLayer`: one signature of a TF1 or TF2 SavedModel as a Keras layer.

Keras' own `TFSMLayer` cannot choose the MetaGraph tags of a TF1 SavedModel
nor one output of a multi-output signature, and it tracks copies of the
variables rather than the ones the signature reads. This layer keeps a TF2
SavedModel's loaded object (and so its variables) as a tracked attribute,
which TensorFlow follows when the ensemble is exported, and freezes a TF1
SavedModel's variables into constants, which TF2 could not save again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras
import tensorflow as tf

from ensemble.members.untrusted import check_graph_ops, read_meta_graphs
from ensemble.rows import input_values
from ensemble.types import Tensor

__all__ = ["SavedModelLayer", "is_saved_model_dir"]


def is_saved_model_dir(path: str) -> bool:
    return tf.io.gfile.isdir(path) and any(
        tf.io.gfile.exists(tf.io.gfile.join(path, name)) for name in ("saved_model.pb", "saved_model.pbtxt")
    )


@keras.saving.register_keras_serializable(package="ensemble")
class SavedModelLayer(keras.layers.Layer):
    """Calls signature `signature` of the SavedModel at `filepath` and returns output `output_key`.

    `tags` selects the MetaGraph of a TF1 SavedModel (`["serve"]` when None and
    the SavedModel has several). The output is the only one of the signature
    unless `output_key` names one. A TF1 SavedModel's variables are frozen into
    constants, so the ensemble exports as one self-contained SavedModel. With
    `safe_mode`, a graph holding `untrusted.UNSAFE_OPS` is refused before it loads.
    """

    def __init__(
        self,
        filepath: str,
        *,
        tags: Sequence[str] | None = None,
        signature: str = "serving_default",
        output_key: str | None = None,
        safe_mode: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(trainable=False, **kwargs)
        self.filepath = str(filepath)
        self.tags = list(tags) if tags is not None else None
        self.signature = signature
        self.safe_mode = bool(safe_mode)
        metas = read_meta_graphs(self.filepath)
        if self.safe_mode:  # checked before loading, which runs restore, init and resource ops
            check_graph_ops(self.filepath, metas, self.tags, signature)
        if not any(
            meta.object_graph_def.nodes for meta in metas
        ):  # no TF2 object graph: a TF1 codebase wrote it
            self._signature = _FrozenTF1Signature(self.filepath, self.tags, signature)
        else:
            self._signature = _TF2Signature(self.filepath, self.tags, signature)
        self.input_specs: dict[str, tf.TensorSpec] = self._signature.inputs
        outputs: Mapping[str, tf.TensorSpec] = self._signature.outputs
        self.output_key = _choose_output(self.filepath, signature, outputs, output_key)
        self.output_spec = outputs[self.output_key]
        self.built = True

    @property
    def input_names(self) -> list[str]:
        return list(self.input_specs)

    @property
    def function(self) -> Any:
        """The TensorFlow function the layer calls: the signature's concrete function (TF2),
        or the pruned frozen graph (TF1)."""
        return self._signature.function

    @property
    def tf_variables(self) -> list[Any]:
        """The TensorFlow variables the signature reads (none for a frozen TF1 SavedModel)."""
        return list(getattr(self.function, "variables", []))

    @property
    def frozen(self) -> bool:
        """Whether the SavedModel is a TF1 graph whose variables were frozen into constants."""
        return isinstance(self._signature, _FrozenTF1Signature)

    @property
    def parameter_count(self) -> int:
        """Scalars in the SavedModel's variables (frozen into constants for a TF1 one)."""
        return self._signature.parameter_count

    def call(self, inputs: Tensor) -> Tensor:
        values = input_values(inputs, self.input_names)
        feeds = {
            name: tf.cast(value, spec.dtype)
            for (name, spec), value in zip(self.input_specs.items(), values, strict=True)
        }
        return self._signature(feeds)[self.output_key]

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
                "safe_mode": self.safe_mode,
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


def _missing_signature(path: str, signature: str, available: Any) -> ValueError:
    return ValueError(
        f"SavedModel {path} has no signature {signature!r}. Available signatures: {sorted(available)}"
    )


class _TF2Signature(tf.Module):
    """A signature of a TF2 SavedModel; its variables stay variables, tracked via `loaded`."""

    def __init__(self, path: str, tags: list[str] | None, signature: str) -> None:
        super().__init__()
        self.loaded = tf.saved_model.load(path, tags=tags)
        if signature not in self.loaded.signatures:
            raise _missing_signature(path, signature, self.loaded.signatures)
        self.function = self.loaded.signatures[signature]
        # Sorted: a signature's inputs come from a protobuf map, in no fixed order across processes.
        self.inputs = dict(sorted(self.function.structured_input_signature[1].items()))
        self.outputs = dict(self.function.structured_outputs)
        self.parameter_count = sum(int(v.shape.num_elements() or 0) for v in self.function.variables)

    def __call__(self, feeds: dict[str, Tensor]) -> dict[str, Tensor]:
        return self.function(**feeds)  # type: ignore[no-any-return]


class _FrozenTF1Signature(tf.Module):
    """A signature of a TF1 SavedModel with its variables frozen into constants.

    TF1 graphs keep reference variables that `tf.saved_model.load` neither
    lists nor saves again, so an ensemble holding one could not be exported.
    A member is frozen anyway: the classic TF1 freeze (load into a session,
    `convert_variables_to_constants`) makes the signature self-contained.
    """

    def __init__(self, path: str, tags: list[str] | None, signature: str) -> None:
        super().__init__()
        if tags is None:
            metas = read_meta_graphs(path)
            tags = list(metas[0].meta_info_def.tags) if len(metas) == 1 else ["serve"]
        with tf.Graph().as_default() as graph, tf.compat.v1.Session(graph=graph) as session:
            meta = tf.compat.v1.saved_model.load(session, tags, path)
            if signature not in meta.signature_def:
                raise _missing_signature(path, signature, meta.signature_def)
            signature_def = meta.signature_def[signature]
            self.parameter_count = sum(
                int(v.shape.num_elements() or 0) for v in tf.compat.v1.global_variables()
            )
            fetch_nodes = sorted({info.name.split(":")[0] for info in signature_def.outputs.values()})
            frozen = tf.compat.v1.graph_util.convert_variables_to_constants(
                session, graph.as_graph_def(), fetch_nodes
            )
        input_names = {key: info.name for key, info in signature_def.inputs.items()}
        output_names = {key: info.name for key, info in signature_def.outputs.items()}
        self.inputs = {
            key: tf.TensorSpec(tf.TensorShape(info.tensor_shape), tf.as_dtype(info.dtype), key)
            for key, info in sorted(signature_def.inputs.items())  # in no fixed order, as in TF2
        }
        self.outputs = {
            key: tf.TensorSpec(tf.TensorShape(info.tensor_shape), tf.as_dtype(info.dtype), key)
            for key, info in signature_def.outputs.items()
        }
        wrapped = tf.compat.v1.wrap_function(lambda: tf.compat.v1.import_graph_def(frozen, name=""), [])
        self.function = wrapped.prune(
            feeds=[wrapped.graph.get_tensor_by_name(input_names[key]) for key in self.inputs],
            fetches={key: wrapped.graph.get_tensor_by_name(n) for key, n in output_names.items()},
        )

    def __call__(self, feeds: dict[str, Tensor]) -> dict[str, Tensor]:
        return self.function(*[feeds[key] for key in self.inputs])  # type: ignore[no-any-return]


def _choose_output(path: str, signature: str, outputs: Mapping[str, Any], output_key: str | None) -> str:
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
