"""What a loaded member is, as a hash of what is in memory, never of its files.

`member_fingerprint` (what the level-one store keys on) hashes the member's configuration
(class, format, output kind and key, inputs, the wrapped model's config, less where it was
read from) and its content. `content_fingerprint` (what the leakage guard finds a member's
training-row record by) hashes the content alone: the wrapped model's class, the order,
shapes, dtypes and values of all its Keras weights (not their paths, which hold the model's
name: a `.keras` file re-saved as `.h5` loads as `dense/kernel` where it was
`sequential/dense/kernel`), and for a SavedModel member the variables
and constants its signature captures and the signature's graph (which holds a frozen TF1
graph's constants). So a copy, a link or a moved file hashes as its original, however it is
named or declared (`name`, `output`, `inputs`, `classes`), while changing any weight, even by
one float step, changes both hashes. A directory retrained in place while an old copy is
loaded hashes the old copy by its old weights.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import graph_pb2

from ensemble.members.member import Member
from ensemble.members.saved_model import SavedModelLayer
from ensemble.rows import update_digest

__all__ = ["content_fingerprint", "member_fingerprint"]


def member_fingerprint(member: Member) -> str:
    """A sha256 of what `member` computes and how it is declared (see the module docstring).

    Two loads of the same file hash alike, in one process or in two; changing any weight, even
    by one float step, or the member's configuration changes the hash.
    """
    digest = hashlib.sha256(b"ensemble.level_one/2\0")
    _update(digest, "config", _config_json(member).encode())
    _update_content(digest, member)
    return digest.hexdigest()


def content_fingerprint(member: Member) -> str:
    """A sha256 of what `member`'s source model is (see the module docstring): alike for every
    load of one file or of its copies, whatever the member's name and declarations."""
    digest = hashlib.sha256(b"ensemble.content/2\0")
    model = member.model
    _update(digest, "class", f"{type(model).__module__}.{type(model).__qualname__}".encode())
    _update_content(digest, member, by_path=False)
    return digest.hexdigest()


def _update_content(digest: Any, member: Member, *, by_path: bool = True) -> None:
    for index, weight in enumerate(member.weights):
        label = f"weight:{weight.path}" if by_path else f"weight:{index}"
        _update_array(digest, label, np.asarray(weight.value.numpy()))
    function = _signature_function(member.model)
    if function is not None:
        for variable in getattr(function, "variables", ()):
            _update_array(digest, f"variable:{variable.name}", variable.numpy())
        for i, captured in enumerate(function.captured_inputs):
            if captured.dtype != tf.resource:  # a variable's handle: its value is hashed above
                _update_array(digest, f"captured:{i}", captured.numpy())
        _update(digest, "graph", _graph_bytes(function.graph.as_graph_def()))


def _update(digest: Any, label: str, data: bytes) -> None:
    """Length-prefixed, so no two sequences of parts hash alike."""
    digest.update(f"{label}|{len(data)}|".encode())
    digest.update(data)


def _update_array(digest: Any, label: str, value: Any) -> None:
    array = np.ascontiguousarray(value)
    digest.update(f"{label}|{array.shape}|{array.dtype}|{array.nbytes}|".encode())
    update_digest(digest, array)


def _config_json(member: Member) -> str:
    """The member's configuration, less where it was read from (a path is no content)."""
    identity = {
        "class": f"{type(member.model).__module__}.{type(member.model).__qualname__}",
        "format": member.format,
        "output": member.output_kind,
        "output_key": member.output_key,
        "inputs": [spec.get_config() for spec in member.input_specs],
    }
    try:
        config: Any = json.loads(json.dumps(member.get_config(), sort_keys=True, default=repr))
    except Exception as error:  # A model without a config: its class and weights still count.
        config = f"<no config: {type(error).__name__}>"
    if isinstance(config, dict):
        config.pop("source", None)
        model = config.get("model")
        if isinstance(model, dict) and isinstance(model.get("config"), dict):
            model["config"].pop("filepath", None)  # a SavedModel's directory
            model["config"].pop("name", None)  # the wrapped layer's name, numbered per process
    return json.dumps({"identity": identity, "config": config}, sort_keys=True, default=repr)


def _signature_function(model: Any) -> Any:
    """The TensorFlow function a SavedModel member calls, or None for other members."""
    return model.function if isinstance(model, SavedModelLayer) else None


def _graph_bytes(graph_def: Any) -> bytes:
    """`graph_def` serialized with its functions renamed in the order they are first called.

    TensorFlow gives a loaded SavedModel's functions process-unique names; renaming them
    canonically makes two loads of one file hash alike. Functions never called are left out.
    """
    graph = graph_pb2.GraphDef()
    graph.CopyFrom(graph_def)
    functions = {function.signature.name: function for function in graph.library.function}
    names: dict[str, str] = {}

    def visit(nodes: Any) -> None:
        for node in nodes:
            for key in sorted(node.attr):
                value = node.attr[key]
                calls = [value.func] if value.WhichOneof("value") == "func" else list(value.list.func)
                for call in calls:
                    if call.name in functions and call.name not in names:
                        names[call.name] = f"function_{len(names)}"
                        visit(functions[call.name].node_def)
                    call.name = names.get(call.name, call.name)

    visit(graph.node)
    canonical = graph_pb2.GraphDef()
    canonical.node.extend(graph.node)
    canonical.versions.CopyFrom(graph.versions)
    for name in sorted(names, key=names.__getitem__):
        function = canonical.library.function.add()
        function.CopyFrom(functions[name])
        function.signature.name = names[name]
    serialized: bytes = canonical.SerializeToString(deterministic=True)
    return serialized
