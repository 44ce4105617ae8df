"""What the HTTP server may show a client of an error: the model and the file's name, never the
server's directories (the log keeps the whole message); TensorFlow's and onnxruntime's errors
cut to the line that says what was wrong; a hint for a URL that names no route."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

import tensorflow as tf

__all__ = ["is_invalid_input", "model_message", "public_message", "url_error"]

# An absolute path: '/' not inside a word, a number, a URL or another path, then its parts.
_ABSOLUTE = re.compile(r"(?<![\w.:/~-])/(?:[^\s'\"/:,;()\[\]{}<>|]+/)*[^\s'\"/:,;()\[\]{}<>|]*")
_VERSION = re.compile(r"/v1/models/[^/:]+/versions/([^/:]*)")
_VERB = re.compile(r"/v1/models/[^/:]+(?:/versions/[^/:]*)?(?:/metadata)?:(.*)")
MAX_VERSION_DIGITS = 18  # a version is an int64 in TF Serving


def public_message(message: str, paths: Iterable[str] = ()) -> str:
    """`message` with each of `paths` (the sources a catalog serves, longest first), and any
    other absolute path, replaced by its last part."""
    for path in paths:
        if path:
            message = message.replace(path, os.path.basename(path.rstrip("/\\")) or path)
    return _ABSOLUTE.sub(lambda match: os.path.basename(match.group(0).rstrip("/")), message)


def url_error(path: str) -> str | None:
    """Why `path`, a URL path no route took, is malformed: a version that is no number of at
    most 18 digits, or a verb other than `predict`; None when neither."""
    version = _VERSION.match(path)
    if version and not (version.group(1).isdigit() and len(version.group(1)) <= MAX_VERSION_DIGITS):
        shown = version.group(1)[:24] + ("..." if len(version.group(1)) > 24 else "")
        return (
            f"The version {shown!r} is not a version number: expected 1 to {MAX_VERSION_DIGITS} "
            f"digits, as in /v1/models/<name>/versions/<n>."
        )
    verb = _VERB.match(path)
    if verb and verb.group(1) != "predict":
        return f"Unknown verb ':{verb.group(1)[:24]}': the only verb is ':predict'."
    return None


def is_invalid_input(error: Exception) -> bool:
    """A model call refused a value (TensorFlow's or onnxruntime's InvalidArgument)."""
    if isinstance(error, tf.errors.InvalidArgumentError):
        return True
    kind = type(error)
    return kind.__module__.startswith("onnxruntime") and kind.__name__ == "InvalidArgument"


def model_message(error: Exception) -> str:
    """The line of a TensorFlow or onnxruntime error that says what was wrong, without the
    graph's node names and the Python frames it was traced from."""
    lines = []
    for line in str(error).splitlines():
        if not line or line[0].isspace() or line.startswith(("Graph execution error", "Detected at node")):
            continue
        lines.append(re.sub(r"\{\{function_node [^}]*\}\}\s*|\s*\[Op:[^\]]*\]", "", line).strip())
    return lines[-1] if lines else type(error).__name__
