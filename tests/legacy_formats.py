"""Writers of the model formats the loader must read, from one tiny dense network.

Each writer saves the same `DenseNet` the way a different codebase did: a TF1
graph/session SavedModel or `Saver` checkpoint, a TF2 object checkpoint of a
Keras model, a TF2 SavedModel of a plain `tf.Module`. `DenseNet.predict` is the
independent NumPy reference every loaded artifact is compared with.
"""

from __future__ import annotations

import itertools
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

__all__ = [
    "ACTIVATIONS",
    "DenseNet",
    "write_tf1_checkpoint",
    "write_tf1_saved_model",
    "write_tf2_checkpoint",
    "write_tf2_module_saved_model",
]

ACTIVATIONS = ("relu", "tanh", "linear", "softmax")


def _np_activation(name: str, z: np.ndarray) -> np.ndarray:
    """Apply the named activation in NumPy."""
    if name == "relu":
        return np.maximum(z, 0.0)
    if name == "tanh":
        return np.tanh(z)
    if name == "linear":
        return z
    if name == "softmax":
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    raise ValueError(f"Expected one of {ACTIVATIONS}. Received: activation={name!r}")


def _tf_activation(name: str, z: Any) -> Any:
    """Apply the named activation with TensorFlow ops."""
    ops = {"relu": tf.nn.relu, "tanh": tf.tanh, "linear": tf.identity, "softmax": tf.nn.softmax}
    if name not in ops:
        raise ValueError(f"Expected one of {ACTIVATIONS}. Received: activation={name!r}")
    return ops[name](z)


@dataclass
class DenseNet:
    """A small dense network as NumPy arrays: one (kernel, bias) and activation per layer."""

    layers: list[tuple[np.ndarray, np.ndarray]]
    activations: list[str]

    def __post_init__(self) -> None:
        """Check that layers and activations match."""
        if len(self.layers) != len(self.activations):
            raise ValueError(
                f"Expected one activation per layer ({len(self.layers)}). "
                f"Received: activations={self.activations}"
            )
        for name in self.activations:
            if name not in ACTIVATIONS:
                raise ValueError(f"Expected one of {ACTIVATIONS}. Received: activation={name!r}")

    @property
    def input_dim(self) -> int:
        """Number of input features."""
        return int(self.layers[0][0].shape[0])

    @property
    def output_dim(self) -> int:
        """Number of outputs."""
        return int(self.layers[-1][0].shape[1])

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Pre-activation of the last layer, in float64."""
        h = np.asarray(x, dtype=np.float64)
        for i, (kernel, bias) in enumerate(self.layers):
            z = h @ kernel.astype(np.float64) + bias.astype(np.float64)
            h = z if i == len(self.layers) - 1 else _np_activation(self.activations[i], z)
        return z

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Forward pass in float64 NumPy: the independent reference."""
        return _np_activation(self.activations[-1], self.logits(x))

    @classmethod
    def random(cls, sizes: Sequence[int] = (64, 32, 10), seed: int = 0, final: str = "softmax") -> DenseNet:
        """A random float32 net with ReLU hidden layers and the given final activation."""
        rng = np.random.default_rng(seed)
        layers = [
            (
                rng.normal(0.0, 1.0 / np.sqrt(n_in), (n_in, n_out)).astype(np.float32),
                rng.normal(0.0, 0.1, (n_out,)).astype(np.float32),
            )
            for n_in, n_out in itertools.pairwise(sizes)
        ]
        return cls(layers, ["relu"] * (len(layers) - 1) + [final])

    @classmethod
    def from_keras(cls, model: keras.Model) -> DenseNet:
        """Read the kernels, biases and activations of a Sequential of Dense layers."""
        layers, activations = [], []
        for layer in model.layers:
            if not isinstance(layer, keras.layers.Dense):
                raise TypeError(
                    f"Expected only Dense layers. Received: {layer.name} ({type(layer).__name__})"
                )
            kernel, bias = layer.get_weights()
            layers.append((np.asarray(kernel), np.asarray(bias)))
            activations.append(layer.activation.__name__)
        return cls(layers, activations)

    def to_keras(self, name: str | None = None) -> keras.Sequential:
        """The same net as a Keras Sequential with Dense layers `dense_0`, `dense_1`, ..."""
        model = keras.Sequential(name=name)
        model.add(keras.Input(shape=(self.input_dim,)))
        for i, ((kernel, bias), activation) in enumerate(zip(self.layers, self.activations, strict=True)):
            model.add(keras.layers.Dense(kernel.shape[1], activation=activation, name=f"dense_{i}"))
            model.layers[-1].set_weights([kernel, bias])
        return model


def _build_tf1_graph(net: DenseNet, x: Any, scope: str) -> tuple[Any, Any, list[Any]]:
    """Build `net` in the current TF1 graph; return (output, logits, variables)."""
    variables, h = [], x
    with tf.compat.v1.variable_scope(scope or tf.compat.v1.get_variable_scope()):
        for i, ((kernel, bias), activation) in enumerate(zip(net.layers, net.activations, strict=True)):
            with tf.compat.v1.variable_scope(f"dense_{i}"):
                # use_resource=False: the VariableV2 ops a TF1 codebase wrote.
                k = tf.compat.v1.get_variable("kernel", initializer=kernel, use_resource=False)
                b = tf.compat.v1.get_variable("bias", initializer=bias, use_resource=False)
            z = tf.matmul(h, k) + b
            h = _tf_activation(activation, z)
            variables += [k, b]
    return h, z, variables


def write_tf1_saved_model(
    path: str | os.PathLike[str],
    net: DenseNet,
    *,
    scope: str = "model",
    tags: Sequence[str] = ("serve",),
    signature_key: str = "serving_default",
    input_key: str = "x",
    output_keys: Sequence[str] = ("probabilities",),
    extra_signatures: Sequence[str] = (),
) -> Path:
    """Save `net` as a TF1 graph/session SavedModel; output_keys name (output, logits, argmax int64)."""
    if not 1 <= len(output_keys) <= 3:
        raise ValueError(f"Expected 1 to 3 output keys. Received: output_keys={output_keys}")
    path = Path(path)
    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        x = tf.compat.v1.placeholder(tf.float32, [None, net.input_dim], name=input_key)
        y, logits, _ = _build_tf1_graph(net, x, scope)
        tensors = [y, logits, tf.argmax(logits, axis=-1, output_type=tf.int64)]
        sess.run(tf.compat.v1.global_variables_initializer())
        predict = tf.compat.v1.saved_model.predict_signature_def
        signatures = {signature_key: predict({input_key: x}, dict(zip(output_keys, tensors, strict=False)))}
        # Decoys: the logits under the same output key, so picking the wrong signature shows.
        for key in extra_signatures:
            signatures[key] = predict({input_key: x}, {output_keys[0]: logits})
        builder = tf.compat.v1.saved_model.Builder(str(path))
        builder.add_meta_graph_and_variables(sess, list(tags), signature_def_map=signatures)
        builder.save()
    return path


def write_tf1_checkpoint(prefix: str | os.PathLike[str], net: DenseNet, *, scope: str = "model") -> str:
    """Save `net` with a TF1 `Saver` as `{scope}/dense_{i}/kernel|bias`; return the prefix written."""
    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        x = tf.compat.v1.placeholder(tf.float32, [None, net.input_dim], name="x")
        _, _, variables = _build_tf1_graph(net, x, scope)
        sess.run(tf.compat.v1.global_variables_initializer())
        return str(tf.compat.v1.train.Saver(variables).save(sess, os.fspath(prefix)))


def write_tf2_checkpoint(prefix: str | os.PathLike[str], net: DenseNet, *, root: str = "model") -> str:
    """Write an object-based `tf.train.Checkpoint(**{root: net.to_keras()})`; return its path."""
    return str(tf.train.Checkpoint(**{root: net.to_keras()}).write(os.fspath(prefix)))


class _DenseModule(tf.Module):
    """A plain `tf.Module` running a `DenseNet` with `tf.Variable`s (no Keras)."""

    def __init__(self, net: DenseNet) -> None:
        """Hold one kernel and bias variable per layer."""
        super().__init__(name="dense_net")
        self.activations = list(net.activations)
        self.kernels = [tf.Variable(k, name=f"dense_{i}/kernel") for i, (k, _) in enumerate(net.layers)]
        self.biases = [tf.Variable(b, name=f"dense_{i}/bias") for i, (_, b) in enumerate(net.layers)]

    @tf.function
    def __call__(self, x: Any) -> dict[str, Any]:
        """Forward pass returning `{"output_0": y}`."""
        h = x
        for kernel, bias, activation in zip(self.kernels, self.biases, self.activations, strict=True):
            h = _tf_activation(activation, tf.matmul(h, kernel) + bias)
        return {"output_0": h}


def write_tf2_module_saved_model(path: str | os.PathLike[str], net: DenseNet) -> Path:
    """`tf.saved_model.save` a plain `tf.Module` with a `serving_default` signature `x -> output_0`."""
    module = _DenseModule(net)
    # The input signature is traced here because the input width is only known per net.
    serve = module.__call__.get_concrete_function(tf.TensorSpec([None, net.input_dim], tf.float32, name="x"))
    tf.saved_model.save(module, os.fspath(path), signatures={"serving_default": serve})
    return Path(path)
