"""What the level-one store keys on, and its entries on disk, each validated before use.

A member's key is a hash of what is loaded in memory, never of its files: the member's
configuration (class, format, output kind and key, inputs, the wrapped model's config), the
names, shapes, dtypes and values of all its Keras weights, and for a SavedModel member the
variables and constants its signature captures and the signature's graph (which holds a
frozen TF1 graph's constants). A directory retrained in place while an old copy is loaded
keys the old copy by its old weights.

An entry is one `.npz` file: the predictions (float32, `(rows, width)`), their sha256 and the
key they belong to. It is used only when all of these match; anything else (truncated,
garbage, another shape or dtype, unreadable) is reported with a warning naming the file and
recomputed. Entries are written atomically, so no reader sees half of one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import graph_pb2

from ensemble.atomic import atomic_path
from ensemble.members.member import Member
from ensemble.members.saved_model import SavedModelLayer
from ensemble.rows import update_digest

__all__ = ["entry_path", "member_fingerprint", "read_entry", "write_entry"]

log = logging.getLogger(__name__)

_EXTENSION = ".npz"


def member_fingerprint(member: Member) -> str:
    """A sha256 of what `member` computes, taken from what is loaded (see the module docstring).

    Two loads of the same file hash alike, in one process or in two; changing any weight, even
    by one float step, or the member's configuration changes the hash.
    """
    digest = hashlib.sha256(b"ensemble.level_one/2\0")
    _update(digest, "config", _config_json(member).encode())
    for weight in member.weights:
        _update_array(digest, f"weight:{weight.path}", np.asarray(weight.value.numpy()))
    function = _signature_function(member.model)
    if function is not None:
        for variable in getattr(function, "variables", ()):
            _update_array(digest, f"variable:{variable.name}", variable.numpy())
        for i, captured in enumerate(function.captured_inputs):
            if captured.dtype != tf.resource:  # a variable's handle: its value is hashed above
                _update_array(digest, f"captured:{i}", captured.numpy())
        _update(digest, "graph", _graph_bytes(function.graph.as_graph_def()))
    return digest.hexdigest()


def entry_path(directory: str, key: str) -> str:
    return os.path.join(directory, key + _EXTENSION)


def read_entry(path: str, key: str, rows: int, width: int | None) -> np.ndarray | None:
    """The predictions stored at `path` for `key`, or None when there are none or they are not
    valid (then a warning names the file and why: the caller recomputes and rewrites them)."""
    if not os.path.lexists(path):
        return None
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError("a bare array, not this cache's .npz archive")
        with loaded as entry:
            values = np.asarray(entry["values"])
            checksum = str(entry["sha256"])
            stored_key = str(entry["key"])
    except Exception as error:  # Truncated, garbage, not an archive, unreadable: never fatal.
        _invalid(path, f"unreadable ({type(error).__name__}: {error})")
        return None
    expected = (rows, width if width is not None else "any")
    if stored_key != key:
        _invalid(path, f"it holds the entry {stored_key!r}")
    elif values.dtype != np.float32:
        _invalid(path, f"dtype {values.dtype}, expected float32")
    elif values.ndim != 2 or values.shape[0] != rows or width not in (None, values.shape[1]):
        _invalid(path, f"shape {values.shape}, expected {expected}")
    elif _sha256(values) != checksum:
        _invalid(path, "its values do not match their sha256")
    else:
        return values
    return None


def write_entry(path: str, key: str, values: np.ndarray) -> None:
    """Store `values` (float32, 2-D) for `key` at `path`, atomically: the file appears at its
    path complete or not at all, and concurrent writers of one key never mix."""
    values = np.ascontiguousarray(values, dtype="float32")  # one member's (rows, width) at most
    checksum = _sha256(values)
    with atomic_path(path, what="level-one cache entry") as staged, open(staged, "wb") as f:
        np.savez(f, values=values, sha256=np.array(checksum), key=np.array(key))


def _sha256(values: np.ndarray) -> str:
    digest = hashlib.sha256()
    update_digest(digest, values)
    return digest.hexdigest()


def _invalid(path: str, reason: str) -> None:
    message = f"Level-one cache entry {path} is not valid: {reason}. Recomputing it."
    log.warning(message)
    warnings.warn(message, RuntimeWarning, stacklevel=5)  # the caller of predictions


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
