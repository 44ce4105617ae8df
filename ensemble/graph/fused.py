"""Members of one architecture computed as one batched computation: stacked kernels.

Seeds of one recipe, k-fold members and snapshots share an architecture. Members whose source
model is a chain of `Dense` layers (with `Activation` and `Dropout`, the identity at inference)
of the same widths, activations and input can be computed together: the first layer as ONE
wide matmul over the shared input (its kernels side by side), every later layer as one batched
matmul over the members' stacked kernels. The result equals each member computed alone up to
float32 rounding (the sums run in another order): within 1e-6 for probabilities, and a
few float32 steps of the value's magnitude for larger outputs (regression targets in the
tens: about 1e-5), which the tests hold.

Whether this is faster depends on the runtime and the batch (see `experiments.benchmark`):
fewer, larger ops win where per-op overhead dominates (small batches, onnxruntime), separate
matmuls where each is already large (TensorFlow's batched matmul on CPU is slower than the
same flops as plain matmuls). `FusedMembers(max_fused_rows=n)` therefore computes the fused
form for batches of at most `n` rows and the members one by one (the same stacked weights,
sliced) above it.
"""

from __future__ import annotations

import logging
import types
from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from ensemble.members.member import Member
from ensemble.types import Tensor

__all__ = ["FusedMembers", "chain_of", "fusable_groups"]

log = logging.getLogger(__name__)

_IDENTITY_AT_INFERENCE = (keras.layers.Dropout, keras.layers.GaussianNoise, keras.layers.GaussianDropout)


def chain_of(member: Member) -> list[keras.layers.Layer] | None:
    """The layers a member computes, in order, when its source model is a plain chain of
    float32 `Dense` (and `Activation`) layers on one rank-2 input with one output; else None.

    Layers that are the identity at inference (dropout, noise) are left out; a layer shared
    with another model (several inbound nodes) or anything else makes the member unfusable.
    """
    model = member.model
    if (
        not isinstance(model, keras.Model)
        or len(member.input_specs) != 1
        or len(member.input_specs[0].shape) != 1
        or member.output_key is not None
        or len(getattr(model, "inputs", None) or ()) != 1
        or len(getattr(model, "outputs", None) or ()) != 1
    ):
        return None
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    if not all(_fusable_layer(layer) for layer in layers):
        return None
    if not isinstance(model, keras.Sequential) and not _is_chain(model, layers):
        return None
    computed = [layer for layer in layers if not isinstance(layer, _IDENTITY_AT_INFERENCE)]
    if not any(isinstance(layer, keras.layers.Dense) for layer in computed):
        return None
    return computed


def _is_chain(model: keras.Model, layers: list[keras.layers.Layer]) -> bool:
    """Whether a functional model calls `layers` one after the other, each on the last one's
    output (a Sequential model does by construction)."""
    previous = model.inputs[0]
    for layer in layers:
        try:
            if layer.input is not previous:  # a branch, or layers listed out of call order
                return False
            previous = layer.output
        except (AttributeError, ValueError):  # several inbound nodes: a shared layer
            return False
    return previous is model.outputs[0]


def _fusable_layer(layer: keras.layers.Layer) -> bool:
    """A float32 layer (a float16 one rounds what it computes, which the fused float32 form
    would not) that is a plain `Dense`, an `Activation` or the identity at inference, whose
    activation is a plain function (a layer as activation, such as `PReLU`, has weights of its
    own per member)."""
    if layer.dtype_policy.name != "float32":
        return False
    if isinstance(layer, _IDENTITY_AT_INFERENCE):
        return True
    if not isinstance(layer, keras.layers.Activation) and type(layer) is not keras.layers.Dense:
        return False
    if not isinstance(layer.activation, types.FunctionType) or _activation_name(layer) is None:
        return False
    return isinstance(layer, keras.layers.Activation) or (
        getattr(layer, "quantization_mode", None) is None
        and not getattr(layer, "lora_enabled", False)
        and len(layer.kernel.shape) == 2
    )


def _activation_name(layer: keras.layers.Layer) -> str | None:
    """The registered name of a layer's activation function; None for one Keras cannot name."""
    try:
        name = keras.activations.serialize(layer.activation)
    except (TypeError, ValueError):
        return None
    return name if isinstance(name, str) else None


def _signature(member: Member) -> tuple[Any, ...] | None:
    """What two members must share to be fused: input, layer widths and activations, output."""
    chain = chain_of(member)
    if chain is None or member.columns is not None:  # a reordered member: left to itself
        return None
    steps = tuple(
        (
            type(layer).__name__,
            tuple(layer.kernel.shape) if isinstance(layer, keras.layers.Dense) else None,
            getattr(layer, "use_bias", None),
            _activation_name(layer),
        )
        for layer in chain
    )
    spec = member.input_specs[0]
    return (spec.name, spec.shape, spec.dtype, member.output_kind, steps)


def fusable_groups(members: Sequence[Member]) -> list[list[int]]:
    """Positions of the members that can be fused, grouped by architecture (groups of two or
    more, each in member order; the groups ordered by their first member)."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for position, member in enumerate(members):
        signature = _signature(member)
        if signature is not None:
            groups.setdefault(signature, []).append(position)
    return [group for group in groups.values() if len(group) > 1]


@keras.saving.register_keras_serializable(package="ensemble")
class FusedMembers(keras.layers.Layer):
    """Members of one architecture (see `fusable_groups`) computed together.

    Called on the members' shared input, it returns their predictions stacked, `(batch,
    members, width)`, each what the member alone returns. The stacked weights are copies of
    the members' own, made when the layer is built; the members stay tracked (so the
    ensemble's view, its manifest and a `.keras` round trip see them), so a SavedModel of a
    fused ensemble carries both copies.

    Args:
        members: the members, all with the same architecture.
        max_fused_rows: compute the fused form only for batches of at most this many rows,
            the members one by one above it; None: always fused.
    """

    def __init__(self, members: Sequence[Member], max_fused_rows: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if len({_signature(m) for m in members}) != 1 or _signature(members[0]) is None:
            names = [m.name for m in members]
            raise ValueError(f"Members {names} do not share one fusable architecture.")
        if max_fused_rows is not None and (isinstance(max_fused_rows, bool) or max_fused_rows < 0):
            raise ValueError(f"Expected max_fused_rows >= 0 or None. Received: {max_fused_rows!r}")
        self.members = list(members)
        self.max_fused_rows = max_fused_rows
        self._chains = [chain for chain in map(chain_of, members) if chain is not None]
        self._steps: list[tuple[str, Any, Any, Any]] = []  # (kind, kernel, bias, activation)

    @property
    def member_names(self) -> list[str]:
        return [member.name for member in self.members]

    def build(self, input_shape: Any) -> None:
        count, first = len(self.members), True
        for position, layer in enumerate(self._chains[0]):
            layers = [chain[position] for chain in self._chains]
            if not isinstance(layer, keras.layers.Dense):
                self._steps.append(("activation", None, None, layer.activation))
                continue
            kernels = [keras.ops.convert_to_numpy(each.kernel) for each in layers]
            units = kernels[0].shape[1]
            # The first layer reads the shared input: its kernels side by side, (in, members * out).
            stacked = ops.concatenate(kernels, axis=1) if first else ops.stack(kernels)
            kernel = self.add_weight(
                name=f"kernel_{position}", shape=tuple(stacked.shape), trainable=False, initializer="zeros"
            )
            kernel.assign(stacked)
            bias = None
            if layer.use_bias:
                biases = [keras.ops.convert_to_numpy(each.bias) for each in layers]
                bias = self.add_weight(
                    name=f"bias_{position}", shape=(count, units), trainable=False, initializer="zeros"
                )
                bias.assign(ops.stack(biases))
            self._steps.append(("first" if first else "dense", kernel, bias, layer.activation))
            first = False
        super().build(input_shape)

    def call(self, x: Tensor) -> Tensor:
        x = ops.cast(x, "float32")
        if self.max_fused_rows is None:
            outputs = self._fused(x)
        else:
            outputs = ops.cond(
                ops.shape(x)[0] <= self.max_fused_rows, lambda: self._fused(x), lambda: self._one_by_one(x)
            )
        # What each member makes of its model's output (probabilities from logits, ...), for all
        # at once: the members share their output kind.
        return self.members[0]._as_prediction(outputs)

    def _fused(self, x: Tensor) -> Tensor:
        """(batch, members, out): one wide matmul, then batched matmuls over the members.

        Between the two the rows are held members first, `(members, batch, width)`: a plain
        batched matmul in every runtime (an einsum over `(batch, members, width)` becomes
        transposes, reshapes and a broadcast in onnxruntime)."""
        count, h = len(self.members), x
        for kind, kernel, bias, activation in self._steps:
            if kind == "first":
                h = ops.reshape(ops.matmul(h, kernel), (-1, count, kernel.shape[1] // count))
                h = ops.transpose(h, (1, 0, 2))
            elif kind == "dense":
                h = ops.matmul(h, kernel)
            if bias is not None:  # (members, units), broadcast over the batch
                h = h + ops.expand_dims(bias, 1)
            h = activation(h)
        return ops.transpose(h, (1, 0, 2))

    def _one_by_one(self, x: Tensor) -> Tensor:
        """(batch, members, out): each member's own matmuls on its slice of the stacked weights."""
        count, outputs = len(self.members), []
        for m in range(count):
            h = x
            for kind, kernel, bias, activation in self._steps:
                if kind == "first":
                    units = kernel.shape[1] // count
                    h = ops.matmul(h, kernel[:, m * units : (m + 1) * units])
                elif kind == "dense":
                    h = ops.matmul(h, kernel[m])
                if bias is not None:
                    h = h + bias[m]
                h = activation(h)
            outputs.append(h)
        return ops.stack(outputs, axis=1)

    def compute_output_spec(self, x: Any) -> Any:
        one = self.members[0].compute_output_spec(x)
        return keras.KerasTensor((one.shape[0], len(self.members), *one.shape[1:]), dtype=one.dtype)

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_config()
        config.update(
            {
                "members": [keras.saving.serialize_keras_object(m) for m in self.members],
                "max_fused_rows": self.max_fused_rows,
            }
        )
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: Any = None) -> FusedMembers:
        config = dict(config)
        members = [keras.saving.deserialize_keras_object(m, custom_objects) for m in config.pop("members")]
        return cls(members, **config)
