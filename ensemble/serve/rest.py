"""TF Serving's REST API as JSON, apart from HTTP: a predict body as checked feeds, the outputs
as its answer, and the status and metadata answers.

A predict body is an object with `instances` (the row format: one entry per row, an object
by input name when the model has several inputs) or `inputs` (the columnar format: the whole
batch, by input name when there are several), and optionally `signature_name`
(`serving_default`, or `prediction` for an export). The row format answers
`{"predictions": [...]}`, one object per row with every output when the signature has
several and the bare values when it has one; the columnar format answers `{"outputs": ...}`,
by output name when there are several. As in TF Serving, the tokens `NaN`, `Infinity` and
`-Infinity` stand for non-finite numbers both ways.

Nothing from a request is run or unpickled: a body is parsed by `json.loads` into numbers and
lists, checked against the model's input specs and cast to their dtypes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2

from ensemble.errors import EnsembleError
from ensemble.serve.feeds import bool_row, lossless_cast
from ensemble.serve.loaded import SINGLE_OUTPUT, ModelSignature

__all__ = ["PredictRequest", "RestError", "metadata", "parse_predict", "predict_answer", "status"]

_FIELDS = ("signature_name", "instances", "inputs")
_KINDS = {"f": "fiu", "i": "iu", "u": "iu", "b": "b"}  # a spec dtype's kind -> the JSON kinds it takes


class RestError(EnsembleError):
    """A request the REST API answers with `status` and `{"error": message}`."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


@dataclass(frozen=True)
class PredictRequest:
    """A predict body, checked: one array per input, the outputs its signature keeps, its format."""

    feeds: dict[str, np.ndarray]
    outputs: tuple[str, ...]
    rows: bool  # the row format (`instances`), else columnar (`inputs`)


def parse_predict(
    body: bytes, model: str, signature: ModelSignature, *, max_rows: int | None = None
) -> PredictRequest:
    """The predict `body` for `model`, checked against its `signature`; `RestError` (400) naming
    the field, input or instance that is wrong, 413 for more rows than `max_rows` (None: any)."""
    try:
        request = json.loads(body, parse_float=_float, parse_int=_int)
    except RestError:
        raise
    except (UnicodeDecodeError, ValueError) as error:  # JSONDecodeError is a ValueError
        raise RestError(400, f"The request body is not JSON: {error}") from None
    except RecursionError:
        raise RestError(400, "The request body nests lists or objects too deeply.") from None
    if not isinstance(request, dict):
        raise RestError(
            400, f"Expected a JSON object with 'instances' or 'inputs'. Received: {_kind(request)}"
        )
    unknown = sorted(set(request) - set(_FIELDS))
    if unknown or ("instances" in request) == ("inputs" in request):
        raise RestError(
            400,
            f"Expected exactly one of 'instances' (rows) or 'inputs' (columns), and optionally "
            f"'signature_name'. Received the fields {sorted(request)}",
        )
    name = request.get("signature_name", "serving_default")
    if not isinstance(name, str) or name not in signature.signatures:
        raise RestError(
            400, f"Model {model!r} has no signature {name!r}. Its signatures: {sorted(signature.signatures)}"
        )
    specs = signature.inputs
    rows = "instances" in request
    values = _by_row(request["instances"], specs) if rows else _by_column(request["inputs"], specs)
    _check_rows(values, max_rows)
    booleans = b"true" in body or b"false" in body
    feeds = {key: _array(key, values[key], specs[key], rows, booleans) for key in specs}
    counts = {key: len(array) for key, array in feeds.items()}
    if len(set(counts.values())) > 1:
        raise RestError(400, f"Every input must have as many rows. Received rows per input: {counts}")
    return PredictRequest(feeds=feeds, outputs=signature.signatures[name], rows=rows)


def predict_answer(outputs: Any, request: PredictRequest, signature: ModelSignature) -> bytes:
    """The JSON answer to `request` from the model's `outputs` (a dict, or one array)."""
    if signature.single_output and not isinstance(outputs, Mapping):
        outputs = {SINGLE_OUTPUT: outputs}
    kept = {key: _json_values(outputs[key]) for key in request.outputs}
    if len(kept) == 1:
        (only,) = kept.values()
        answer = {"predictions" if request.rows else "outputs": only}
    elif request.rows:
        answer = {
            "predictions": [dict(zip(kept, row, strict=True)) for row in zip(*kept.values(), strict=True)]
        }
    else:
        answer = {"outputs": kept}
    return json.dumps(answer).encode()


def _json_values(values: Any) -> Any:
    """An output as JSON values; strings (the `classes` labels: TensorFlow's bytes,
    onnxruntime's str) as JSON strings, as TF Serving answers them."""
    array = np.asarray(values)
    if array.dtype.kind not in "OSU":
        return array.tolist()
    text = [v.decode() if isinstance(v, bytes) else str(v) for v in array.ravel()]
    return np.array(text, dtype=object).reshape(array.shape).tolist()


def status(versions: Mapping[int, str | None]) -> dict[str, Any]:
    """GetModelStatusResponse as JSON: each version (newest first) AVAILABLE, or END with the
    error of its last load."""
    return {
        "model_version_status": [
            {
                "version": str(version),
                "state": "AVAILABLE" if error is None else "END",
                "status": {
                    "error_code": "OK" if error is None else "UNAVAILABLE",
                    "error_message": error or "",
                },
            }
            for version, error in sorted(versions.items(), reverse=True)
        ]
    }


def metadata(model: str, version: int, signature: ModelSignature) -> dict[str, Any]:
    """GetModelMetadataResponse as JSON: every signature's inputs and outputs, as TF Serving
    describes a SavedModel's signature defs."""
    defs = {
        name: {
            "inputs": {key: _tensor_info(spec) for key, spec in signature.inputs.items()},
            "outputs": {key: _tensor_info(signature.outputs[key]) for key in keys},
            "method_name": "tensorflow/serving/predict",
        }
        for name, keys in signature.signatures.items()
    }
    return {
        "model_spec": {"name": model, "signature_name": "", "version": str(version)},
        "metadata": {"signature_def": {"signature_def": defs}},
    }


def _tensor_info(spec: tf.TensorSpec) -> dict[str, Any]:
    dims = [{"size": str(-1 if d is None else d), "name": ""} for d in spec.shape.as_list()]
    return {
        "dtype": types_pb2.DataType.Name(spec.dtype.as_datatype_enum),
        "tensor_shape": {"dim": dims, "unknown_rank": False},
        "name": spec.name or "",
    }


def _by_row(instances: Any, specs: Mapping[str, tf.TensorSpec]) -> dict[str, list[Any]]:
    if not isinstance(instances, list) or not instances:
        raise RestError(
            400, f"Expected 'instances' to be a non-empty list of rows. Received: {_kind(instances)}"
        )
    named = [isinstance(row, dict) for row in instances]
    if any(named) and not all(named):
        raise RestError(
            400, f"Instance {named.index(not named[0])}: every instance must be an object, or none."
        )
    if not named[0]:
        if len(specs) > 1:
            raise RestError(
                400, f"The model has several inputs: each instance must be an object with {sorted(specs)}."
            )
        return {next(iter(specs)): instances}
    for i, row in enumerate(instances):
        if set(row) != set(specs):
            raise RestError(
                400, f"Instance {i}: expected the inputs {sorted(specs)}. Received: {sorted(row)}"
            )
    return {key: [row[key] for row in instances] for key in specs}


def _by_column(inputs: Any, specs: Mapping[str, tf.TensorSpec]) -> dict[str, Any]:
    if isinstance(inputs, dict):  # by input name (a tensor is never a JSON object)
        if set(inputs) != set(specs):
            raise RestError(
                400, f"Expected 'inputs' with the inputs {sorted(specs)}. Received: {sorted(inputs)}"
            )
        return inputs
    if len(specs) > 1:
        raise RestError(
            400, f"The model has several inputs: 'inputs' must be an object with {sorted(specs)}."
        )
    return {next(iter(specs)): inputs}


def _array(key: str, value: Any, spec: tf.TensorSpec, rows: bool, booleans: bool) -> np.ndarray:
    """`value` as an array of `spec`'s dtype and shape, or a 400 naming the input and row.
    `booleans`: the body may hold `true` or `false` (NumPy reads them as 1 and 0 among numbers,
    so a numeric input looks for them)."""
    try:
        array = np.asarray(value)
    except ValueError:
        raise RestError(400, f"Input {key!r}: {_ragged(value, rows)}") from None
    dtype = spec.dtype.as_numpy_dtype
    kind = np.dtype(dtype).kind
    if kind in "fiu" and (array.dtype.kind == "b" or booleans):
        row = 0 if array.dtype.kind == "b" else bool_row(value)
        if row is not None:
            raise RestError(
                400,
                f"Input {key!r}, row {row}: a boolean (true or false), where it takes {spec.dtype.name} numbers.",
            )
    allowed = _KINDS.get(kind, "")
    if array.dtype.kind not in allowed:
        received = {"U": "strings", "S": "strings", "O": "nulls, objects or mixed values"}.get(
            array.dtype.kind, f"{array.dtype} values"
        )
        takes = "booleans (true or false)" if kind == "b" else f"{spec.dtype.name} numbers"
        raise RestError(400, f"Input {key!r} takes {takes}. Received: {received}")
    expected = tuple(spec.shape.as_list())
    if not spec.shape.is_compatible_with(array.shape):
        shape = f"instances of shape {expected[1:]}" if rows else f"shape {expected}"
        received = f"instances of shape {array.shape[1:]}" if rows else f"shape {array.shape}"
        raise RestError(400, f"Input {key!r} takes {shape} (None: any). Received: {received}")
    try:
        return lossless_cast(key, array, dtype)
    except EnsembleError as error:
        raise RestError(400, str(error)) from None


def _check_rows(values: Mapping[str, Any], max_rows: int | None) -> None:
    """A 413 for a request of more rows than `max_rows`, before any array is made of them."""
    if max_rows is None:
        return
    count = max((len(v) if isinstance(v, list) else 1 for v in values.values()), default=0)
    if count > max_rows:
        raise RestError(
            413,
            f"The request has {count} rows, over the limit of {max_rows} rows per request: send "
            f"fewer rows per request, or raise the limit (serve.max_rows, create_app(max_rows=...); "
            f"null/None for no limit).",
        )


def _ragged(value: Any, rows: bool) -> str:
    """Which row of a ragged nested list is not rectangular, or differs from the first."""
    if isinstance(value, list) and value:
        what = "instance" if rows else "row"
        shapes = []
        for i, row in enumerate(value):
            try:
                shapes.append(np.shape(np.asarray(row)))
            except ValueError:
                return f"{what} {i} is not a rectangular array of numbers."
            if shapes[i] != shapes[0]:
                return f"{what} {i} has shape {shapes[i]}, {what} 0 has shape {shapes[0]}."
    return "the values are not a rectangular array of numbers."


def _float(text: str) -> float:
    """A JSON number with a fraction or exponent; one past float64's range is refused (only the
    tokens Infinity and -Infinity mean an infinite value)."""
    value = float(text)
    if math.isinf(value):
        raise RestError(400, f"The number {text[:24]}... is too large for any float.")
    return value


def _int(text: str) -> int | float:
    """A JSON integer; one past 64 bits is read as a float (as NumPy would hold it anyway)."""
    return int(text) if len(text.lstrip("-")) <= 18 else _float(text)


def _kind(value: Any) -> str:
    kinds: dict[type, str] = {dict: "an object", list: "a list", str: "a string"}
    return kinds.get(type(value), type(value).__name__)
