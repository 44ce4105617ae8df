"""The isolation reference: one artifact loaded alone, with plain TensorFlow/Keras, in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["KINDS", "predict_in_fresh_process"]

KINDS = ("keras", "saved_model", "keras_export")

# Runs in the child; it must not import this project, so nothing here does.
_SCRIPT = r"""
import json, os, sys
import numpy as np
import tensorflow as tf

kind, path, opts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
x = np.load("x.npy")


def pick(outputs, what):
    if not isinstance(outputs, dict):
        return outputs
    key = opts.get("output_key")
    if key is None:
        if len(outputs) != 1:
            raise ValueError(f"{what} has outputs {sorted(outputs)}; pass output_key")
        (key,) = outputs
    return outputs[key]


if kind == "keras":
    import keras
    model = keras.saving.load_model(path, compile=False)
    y = pick(model(x, training=False), "model")
elif kind == "saved_model":
    loaded = tf.saved_model.load(path, tags=opts.get("tags"))
    fn = loaded.signatures[opts.get("signature", "serving_default")]
    specs = fn.structured_input_signature[1]
    key = opts.get("input_key")
    if key is None:
        if len(specs) != 1:
            raise ValueError(f"signature has inputs {sorted(specs)}; pass input_key")
        (key,) = specs
    y = pick(fn(**{key: tf.constant(x, dtype=specs[key].dtype)}), "signature")
elif kind == "keras_export":
    loaded = tf.saved_model.load(path)
    y = pick(getattr(loaded, opts.get("endpoint", "serve"))(tf.constant(x)), "endpoint")
else:
    raise ValueError(f"unknown kind {kind!r}")
np.save("y.npy", np.asarray(y))
"""


def predict_in_fresh_process(
    kind: str, path: str | os.PathLike[str], x: np.ndarray, **opts: Any
) -> np.ndarray:
    """Load `path` alone in a new Python process with plain TF/Keras and return its prediction on `x`."""
    if kind not in KINDS:
        raise ValueError(f"Expected kind in {KINDS}. Received: kind={kind!r}")
    if "tags" in opts and opts["tags"] is not None:
        opts["tags"] = list(opts["tags"])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    with tempfile.TemporaryDirectory(prefix="fresh_process_") as tmp:
        np.save(Path(tmp, "x.npy"), np.asarray(x, dtype=np.float32))
        # cwd=tmp and no PYTHONPATH: the child cannot import the project under test.
        done = subprocess.run(
            [sys.executable, "-c", _SCRIPT, kind, os.path.abspath(path), json.dumps(opts)],
            cwd=tmp,
            env=env,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"Fresh-process {kind!r} load of {os.fspath(path)!r} failed "
                f"(exit {done.returncode}):\n{done.stderr[-3000:]}"
            )
        return np.load(Path(tmp, "y.npy"))
