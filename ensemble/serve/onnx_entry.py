"""A registered `.onnx` file (`export_onnx`): served by one onnxruntime `InferenceSession`, whose
`run` many threads may call at once, with the SavedModel path's inputs, outputs and dtypes."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import tensorflow as tf

from ensemble.errors import EnsembleError
from ensemble.export.onnx import ONNX_DTYPES, ONNX_MANIFEST_KEY, inference_session
from ensemble.serve.loaded import Loaded
from ensemble.serve.watch import FileWatch
from ensemble.types import PathLike

__all__ = ["load_onnx"]

_DTYPES = {
    name: tf.string if dtype.kind == "O" else tf.as_dtype(dtype) for name, dtype in ONNX_DTYPES.items()
}


def load_onnx(source: PathLike, device: str | None) -> Loaded:
    """The session of the `.onnx` file at `source`: its graph inputs as specs (batch None),
    its call returning every output by name, its initializers counted as its weights. On a
    `/GPU:n` device it runs on CUDA device n (an error if onnxruntime has no CUDA), on a CPU
    device on the CPU, with no device on what onnxruntime has."""
    path = os.fspath(source)
    watch = FileWatch(path)  # before the session reads the file
    session = inference_session(path, providers=_providers(device))
    specs = {node.name: _node_spec(path, node) for node in session.get_inputs()}
    outputs = {node.name: _node_spec(path, node) for node in session.get_outputs()}
    names = list(outputs)
    manifest = json.loads(session.get_modelmeta().custom_metadata_map.get(ONNX_MANIFEST_KEY, "{}"))
    signatures = {
        key: tuple(keys) for key, keys in manifest.get("signatures", {}).items() if set(keys) <= set(names)
    }

    def call(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(names, session.run(names, feeds), strict=True))

    return Loaded(
        call=call,
        specs=specs,
        keep_alive=session,
        sizes=_sizes(path),
        outputs=outputs,
        signatures={"serving_default": tuple(sorted(names)), **signatures},
        watch=watch,
    )


def _node_spec(path: str, node: Any) -> tf.TensorSpec:
    """A graph input or output of the session as a spec with a None batch dimension."""
    if node.type not in _DTYPES:
        raise EnsembleError(f"ONNX file {path}: {node.name!r} has type {node.type}, not served.")
    shape = [None, *(d if isinstance(d, int) else None for d in node.shape[1:])]
    return tf.TensorSpec(shape, _DTYPES[node.type], name=node.name)


def _providers(device: str | None) -> list[Any] | None:
    if device is None:
        return None
    import onnxruntime as ort

    spec = tf.DeviceSpec.from_string(device)
    if (spec.device_type or "").upper() != "GPU":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise EnsembleError(
            f"device {device!r}: this onnxruntime has no CUDA provider "
            f"({ort.get_available_providers()}); install onnxruntime-gpu or serve on the CPU."
        )
    return [("CUDAExecutionProvider", {"device_id": spec.device_index or 0}), "CPUExecutionProvider"]


def _sizes(path: str) -> tuple[int, int]:
    """The parameter count and bytes of the file's initializers (its frozen weights)."""
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    params = nbytes = 0
    for tensor in graph.initializer:
        count = int(np.prod(tensor.dims))
        params += count
        nbytes += count * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return params, nbytes
