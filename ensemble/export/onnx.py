"""`export_onnx`: the ensemble as ONE `.onnx` file for onnxruntime, checked against the ensemble.

The file holds the SavedModel's `serving_default` signature: the ensemble's named inputs with a
dynamic batch dimension (`batch`), and every output under its signature key (`prediction`,
`member_predictions`, the uncertainty outputs, the conformal ones when added). The export's
manifest travels in the model's `metadata_props` under `ONNX_MANIFEST_KEY` (JSON), so a server reads
inputs, outputs, task and members with onnxruntime alone (`read_onnx_manifest`).

tf2onnx, onnx and onnxruntime are the optional extra `onnx` (`pip install -e ".[onnx]"`),
imported only when called.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ensemble.atomic import atomic_path
from ensemble.errors import EnsembleError
from ensemble.export.onnx_convert import convert, name_batch_dimension
from ensemble.export.saved_model import MANIFEST, _manifest, read_manifest
from ensemble.export.signature import input_specs, serving_function
from ensemble.graph.member_outputs import with_fusion
from ensemble.graph.view import EnsembleView
from ensemble.rows import in_batches
from ensemble.types import PathLike

__all__ = [
    "CHECK_TOLERANCE",
    "ONNX_MANIFEST_KEY",
    "export_onnx",
    "inference_session",
    "read_onnx_manifest",
    "run_onnx",
]

ONNX_MANIFEST_KEY = "keras-ensemble/manifest"
CHECK_TOLERANCE = 1e-5  # absolute, relative past 1 (float32 steps of targets in the hundreds)
EXTRA = 'pip install -e ".[onnx]"'
_MIN_OPSET = 13  # ReduceSum and Split take axes as inputs from 13 on; tf2onnx emits them so


def export_onnx(
    model_or_export_dir: keras.Model | PathLike,
    path: PathLike,
    *,
    opset: int | None = None,
    overwrite: bool = False,
    check: bool = True,
    fuse: bool | None = None,
) -> str:
    """Convert an ensemble (or its exported SavedModel directory) to one `.onnx` file.

    Args:
        model_or_export_dir: an ensemble from `build_ensemble`, or a directory written by
            `export_saved_model` (its `serving_default` signature is converted).
        path: the `.onnx` file to write (written beside, then renamed into place).
        opset: the ONNX opset; None for tf2onnx's default (the one most runtimes run).
        overwrite: replace an existing file at `path`.
        check: before writing, run the converted model in onnxruntime on a few deterministic
            rows (a row holding NaN and one holding inf among them, and a batch of one) and
            compare every output with the ensemble's (the Keras model, or the SavedModel's
            signature): boolean outputs exactly, the others within `CHECK_TOLERANCE` with NaN
            where the ensemble has NaN. On by default: a conversion that changes an answer
            is refused, not shipped.
        fuse: True converts the ensemble with its members of one architecture fused
            (`build_ensemble(..., fuse=True)`; onnxruntime answers small batches faster so,
            see the benchmark), False with every member computed alone, None as it was built.
            An export directory is converted as it was exported (None only).

    Returns:
        The absolute path written.

    Raises:
        EnsembleError: when tf2onnx or onnxruntime are missing, for a directory that holds no
            export, a `path` that is a directory, an ensemble holding TensorFlow ops that
            tf2onnx cannot convert (the message names them), or an output the check finds
            changed (naming it). `FileExistsError` for an existing file without `overwrite`.
    """
    tf2onnx, onnx, _ = _require("tf2onnx", "onnx", "onnxruntime")
    target = os.path.abspath(os.fspath(path))
    if os.path.isdir(target):
        raise EnsembleError(f"ONNX path {target} is a directory; expected a file to write.")
    if os.path.lexists(target) and not overwrite:
        raise FileExistsError(f"ONNX file {target} already exists; pass overwrite=True to replace it.")
    if not os.path.isdir(os.path.dirname(target)):
        raise FileNotFoundError(f"ONNX path {target}: its parent directory does not exist.")
    if opset is not None:
        highest = max(tf2onnx.constants.OPSET_TO_IR_VERSION)
        if isinstance(opset, bool) or not isinstance(opset, int) or not _MIN_OPSET <= opset <= highest:
            raise EnsembleError(
                f"Expected opset to be an integer in [{_MIN_OPSET}, {highest}] or None. Received: {opset!r}"
            )
    if fuse is not None:
        if not isinstance(model_or_export_dir, keras.Model):
            raise EnsembleError(
                f"fuse={fuse!r} needs the ensemble (a keras.Model); an export directory is "
                "converted as it was exported. Pass fuse=None, or the ensemble."
            )
        model_or_export_dir = with_fusion(model_or_export_dir, fuse)
    with _serving(model_or_export_dir) as (function, specs, manifest, what):
        proto = convert(tf2onnx, onnx, function, specs, opset, what)
        keys = list(manifest["signatures"]["serving_default"])
        names = [output.name for output in proto.graph.output]
        if sorted(names) != sorted(keys):
            raise EnsembleError(f"tf2onnx named the outputs of {what} {names}; expected {keys}.")
        name_batch_dimension(proto)
        onnx.helper.set_model_props(proto, {ONNX_MANIFEST_KEY: json.dumps(manifest)})
        proto.doc_string = (
            f"keras-ensemble: {manifest['task']} ensemble of {len(manifest['members'])} members"
        )
        blob: bytes = proto.SerializeToString()
        if check:
            _check(blob, function, specs, what)
    with atomic_path(target, overwrite=overwrite, what="ONNX file") as staged, open(staged, "wb") as f:
        f.write(blob)
    return target


# The tensor types of an ONNX graph's inputs and outputs that this project feeds and serves.
ONNX_DTYPES: dict[str, np.dtype[Any]] = {
    "tensor(float)": np.dtype("float32"),
    "tensor(double)": np.dtype("float64"),
    "tensor(float16)": np.dtype("float16"),
    "tensor(int32)": np.dtype("int32"),
    "tensor(int64)": np.dtype("int64"),
    "tensor(bool)": np.dtype("bool"),
    "tensor(uint8)": np.dtype("uint8"),
    "tensor(int8)": np.dtype("int8"),
    "tensor(string)": np.dtype(object),  # the `classes` output's labels
}


def run_onnx(path: PathLike, feeds: Mapping[str, Any], batch_size: int = 256) -> dict[str, np.ndarray]:
    """Run an `.onnx` ensemble on `feeds` (arrays by input name) batch by batch, in onnxruntime
    on the CPU; every output by name (a feed of no rows runs once, for empty outputs). Each feed
    is cast to its input's type as the SavedModel's signature would take it (float64 rows to a
    float32 input); a missing or unknown input, or floats for an integer input, is an error."""
    session = inference_session(os.fspath(path), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    typed = onnx_feeds(os.fspath(path), session, feeds)
    return in_batches(
        lambda batch: dict(zip(names, session.run(names, batch), strict=True)), typed, batch_size
    )


def onnx_feeds(path: str, session: Any, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """`feeds` as `session` takes them: one array per graph input, cast to its type."""
    expected = {node.name: node.type for node in session.get_inputs()}
    if set(feeds) != set(expected):
        raise EnsembleError(
            f"ONNX file {path} takes inputs {sorted(expected)}. Missing: {sorted(set(expected) - set(feeds))}; "
            f"unknown: {sorted(set(feeds) - set(expected))}"
        )
    typed = {}
    for name, values in feeds.items():
        array, dtype = np.asarray(values), ONNX_DTYPES.get(expected[name])
        if dtype is None:
            raise EnsembleError(f"ONNX file {path}: input {name!r} has type {expected[name]}, not fed.")
        if array.dtype.kind == "f" and dtype.kind in "iub":
            raise EnsembleError(
                f"ONNX file {path}: input {name!r} takes {dtype.name}; received floats ({array.dtype.name})."
            )
        typed[name] = array.astype(dtype, copy=False)
    return typed


def read_onnx_manifest(path: PathLike) -> dict[str, Any]:
    """The manifest an `.onnx` export carries (see `read_manifest`), read with onnxruntime."""
    session = inference_session(os.fspath(path), providers=["CPUExecutionProvider"])
    text = session.get_modelmeta().custom_metadata_map.get(ONNX_MANIFEST_KEY)
    if text is None:
        raise EnsembleError(f"ONNX file {os.fspath(path)} carries no {ONNX_MANIFEST_KEY!r} metadata.")
    result: dict[str, Any] = json.loads(text)
    return result


def inference_session(model: str | bytes, providers: Sequence[Any] | None = None) -> Any:
    """An onnxruntime `InferenceSession` of a file or serialized model (its `run` may be called
    from many threads at once); an EnsembleError naming the extra when onnxruntime is missing."""
    (ort,) = _require("onnxruntime")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings about unused initializers are noise
    return ort.InferenceSession(
        model, sess_options=options, providers=list(providers or ort.get_available_providers())
    )


def _require(*packages: str) -> list[Any]:
    import importlib

    try:
        return [importlib.import_module(package) for package in packages]
    except ImportError as error:
        raise EnsembleError(
            f"ONNX export and serving need tf2onnx, onnx and onnxruntime; {error.name or error} "
            f"is not installed. Install the extra: {EXTRA}"
        ) from error


@contextlib.contextmanager
def _serving(
    source: keras.Model | PathLike,
) -> Iterator[tuple[Any, list[tf.TensorSpec], dict[str, Any], str]]:
    """The function to convert, its input specs, the manifest and a description, for an
    ensemble (its serving function) or an export directory (its loaded `serving_default`,
    kept loaded while the block runs)."""
    if isinstance(source, keras.Model):
        specs = input_specs(source)
        view = EnsembleView.of(source)
        function, what = serving_function(source, specs, classes=view.classes), f"ensemble {source.name!r}"
        yield function, specs, _manifest(view, specs), what
        return
    try:
        given = os.fspath(source)
    except TypeError:
        raise EnsembleError(
            f"Expected an ensemble (keras.Model) or an export directory. Received: {type(source).__name__}"
        ) from None
    if not os.path.isfile(os.path.join(given, MANIFEST)):
        raise EnsembleError(
            f"{given!r} holds no exported ensemble (no {MANIFEST}); pass an ensemble or a "
            "directory written by export_saved_model."
        )
    directory = os.path.realpath(given)  # one version throughout, should it be overwritten
    manifest = read_manifest(directory)
    root = tf.saved_model.load(directory)
    signature = root.signatures["serving_default"]
    found = signature.structured_input_signature[1]
    names = [name for name in manifest["inputs"] if name in found] or sorted(found)
    specs = [tf.TensorSpec(found[n].shape, found[n].dtype, name=n) for n in names]

    def serve(*tensors: Any) -> Any:
        return signature(**dict(zip(names, tensors, strict=True)))

    yield tf.function(serve, input_signature=specs), specs, manifest, f"export {given!r}"


def _check_rows(specs: Sequence[tf.TensorSpec], rows: int = 6) -> dict[str, np.ndarray]:
    """Deterministic rows for every input: normal floats (row 2 NaN, row 3 inf), small ints."""
    rng = np.random.default_rng(0)
    feeds = {}
    for spec in specs:
        shape = (rows, *(3 if d is None else d for d in spec.shape.as_list()[1:]))
        dtype = spec.dtype.as_numpy_dtype
        if spec.dtype.is_floating:
            values = rng.normal(size=shape).astype(dtype)
            values[2].flat[0], values[3].flat[-1] = np.nan, np.inf
        elif spec.dtype.is_bool:
            values = rng.integers(0, 2, size=shape).astype(bool)
        else:
            values = rng.integers(0, 2, size=shape).astype(dtype)
        feeds[spec.name] = values
    return feeds


def _check(blob: bytes, function: Any, specs: list[tf.TensorSpec], what: str) -> None:
    session = inference_session(blob, providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    feeds = _check_rows(specs)
    for batch in (feeds, {key: value[:1] for key, value in feeds.items()}):
        try:
            got = dict(zip(names, session.run(names, batch), strict=True))
        except Exception as error:  # onnxruntime's own exception types
            raise EnsembleError(f"onnxruntime cannot run the ONNX conversion of {what}: {error}") from error
        want = function(*(tf.constant(batch[spec.name]) for spec in specs))
        for key in names:
            problem = _difference(got[key], np.asarray(want[key]))
            if problem:
                raise EnsembleError(
                    f"The ONNX conversion of {what} changes output {key!r} (onnxruntime against "
                    f"TensorFlow on {len(next(iter(batch.values())))} check rows): {problem}."
                )


def _difference(got: np.ndarray, want: np.ndarray) -> str | None:
    """What differs between an onnxruntime output and TensorFlow's, or None."""
    if want.dtype == object:  # labels: TensorFlow's bytes against onnxruntime's str
        got, want = got.astype(str), np.char.decode(want.astype(bytes))
    if got.shape != want.shape or got.dtype != want.dtype:
        return f"{got.dtype}{list(got.shape)} instead of {want.dtype}{list(want.shape)}"
    if want.dtype == bool or not np.issubdtype(want.dtype, np.floating):
        return None if np.array_equal(got, want) else f"{int((got != want).sum())} values differ"
    finite = np.isfinite(want)
    if not np.array_equal(got[~finite], want[~finite], equal_nan=True) or not np.isfinite(got[finite]).all():
        return "NaN or inf where TensorFlow has a number, or a number where it has NaN or inf"
    gap = np.abs(got[finite] - want[finite]) / np.maximum(1.0, np.abs(want[finite]))
    largest = float(gap.max()) if gap.size else 0.0
    return None if largest <= CHECK_TOLERANCE else f"max gap {largest:.3g} > {CHECK_TOLERANCE}"
