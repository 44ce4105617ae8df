"""tf2onnx's conversion of a serving function, made exact: captured tensors frozen first, any
OneHot converted, and what tf2onnx could not convert an EnsembleError naming the ops."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any

import tensorflow as tf

# TensorFlow's freezing of a concrete function, as tf2onnx's own loader uses it: no public API.
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from ensemble.errors import EnsembleError

__all__ = ["convert", "name_batch_dimension"]

_STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")


def convert(
    tf2onnx: Any, onnx: Any, function: Any, specs: list[tf.TensorSpec], opset: int | None, what: str
) -> Any:
    failed = _Failures()
    logger = logging.getLogger("tf2onnx")
    logger.addHandler(failed)
    try:
        proto, _ = tf2onnx.convert.from_function(
            _frozen(function, specs),
            input_signature=specs,
            opset=opset,
            custom_op_handlers={"OneHot": (_one_hot, [])},
        )
    except Exception as error:  # tf2onnx raises bare ValueErrors and its own types alike
        raise EnsembleError(f"tf2onnx cannot convert {what}: {type(error).__name__}: {error}") from error
    finally:
        logger.removeHandler(failed)
    # tf2onnx converts what it can and reports the rest in its log; a node it could not map keeps
    # its TensorFlow op type, which onnxruntime then refuses to load.
    unknown = {
        node.op_type
        for node in _nodes(proto.graph)
        if node.domain in _STANDARD_DOMAINS and not onnx.defs.has(node.op_type, node.domain)
    }
    ops = sorted(unknown | set(failed.ops))
    if ops:
        details = "; ".join(failed.details[:5])
        raise EnsembleError(
            f"ONNX cannot hold {what}: tf2onnx cannot convert the TensorFlow ops {ops}"
            + (f" ({details})" if details else "")
            + ". Replace them in the member that uses them."
        )
    inputs = [value.name for value in proto.graph.input]
    if inputs != [spec.name for spec in specs]:
        raise EnsembleError(f"tf2onnx gave the conversion of {what} inputs {inputs}; expected {specs}.")
    return proto


def _frozen(function: Any, specs: list[tf.TensorSpec]) -> Any:
    """`function` with its variables and captured tensors as constants, its outputs by key.

    tf2onnx freezes variables itself but takes every other captured tensor (a Keras
    `Normalization` layer's mean and variance, say) for one more graph input; frozen here
    first (as tf2onnx does, with TensorFlow's converter), the graph takes the inputs alone.
    """
    concrete = function.get_concrete_function()
    constant = convert_variables_to_constants_v2(concrete)
    structure = concrete.structured_outputs

    def serve(*tensors: Any) -> Any:
        return tf.nest.pack_sequence_as(structure, constant(*tensors))

    return tf.function(serve, input_signature=specs)


class _Failures(logging.Handler):
    """The ops and nodes tf2onnx logs that it could not convert, while it converts."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.ops: list[str] = []
        self.details: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args if isinstance(record.args, tuple) else ()
        if record.msg.startswith("Tensorflow op [") and len(args) == 2:  # no handler for the op
            self.ops.append(str(args[1]))
            self.details.append(f"node {args[0]!r}: no conversion")
        elif record.msg.startswith("Failed to convert node") and len(args) == 3:  # its handler failed
            op = re.search(r"OP=(\w+)", str(args[2]))
            self.ops.append(op[1] if op else str(args[0]))
            reason = record.exc_info[1] if record.exc_info else None
            self.details.append(f"node {args[0]!r}: {reason}")


def _one_hot(ctx: Any, node: Any, name: str, args: Any) -> None:
    """TensorFlow's OneHot for indices of any rank and any output dtype (tf2onnx's own takes
    rank-1 indices only, unless the output is float32): ONNX OneHot on int64 indices and depth
    with float32 values (a kernel onnxruntime has), cast to the output dtype. Hard voting
    one-hot encodes each member's winning class as int32."""
    from onnx import TensorProto
    from tf2onnx.graph_builder import GraphBuilder

    indices, depth, on, off = node.input
    dtype = ctx.get_dtype(node.output[0])

    def cast(tensor: str, to: int) -> str:
        return str(ctx.make_node("Cast", [tensor], attr={"to": to}).output[0])

    def vector(tensor: str) -> str:
        return str(GraphBuilder(ctx).make_unsqueeze({"data": cast(tensor, TensorProto.FLOAT), "axes": [0]}))

    values = ctx.make_node("Concat", [vector(off), vector(on)], attr={"axis": 0}).output[0]
    ctx.replace_input(node, indices, cast(indices, TensorProto.INT64), 0)
    ctx.replace_input(node, depth, cast(depth, TensorProto.INT64), 1)
    ctx.replace_input(node, on, values, 2)
    ctx.remove_input(node, off, 3)
    shape = ctx.get_shape(node.output[0])
    if dtype != TensorProto.FLOAT:
        back = ctx.insert_new_node_on_output("Cast", node.output[0], name=f"{name}/cast", to=dtype)
        ctx.set_dtype(back.output[0], dtype)
        ctx.set_shape(back.output[0], shape)
    ctx.set_dtype(node.output[0], TensorProto.FLOAT)


def _nodes(graph: Any) -> Iterator[Any]:
    """Every node of `graph`, and of the subgraphs (loop and branch bodies) its nodes hold."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            for sub in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
                yield from _nodes(sub)


def name_batch_dimension(proto: Any) -> None:
    """Name the first (dynamic) dimension of every input and output `batch`: one symbol."""
    for value in [*proto.graph.input, *proto.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = "batch"
