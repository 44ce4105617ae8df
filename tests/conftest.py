"""Shared fixtures: quiet TensorFlow, small seeded models and data."""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import fcntl
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# One BLAS/OpenMP thread a test process (and its subprocesses): the suite runs one xdist worker a
# core, and a BLAS pool per worker sized to every core oversubscribes them; OpenBLAS then spins.
# scikit-learn's LogisticRegressionCV on the stacking tests' 450 rows took 33 s so, 2 s on one.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# The store of training-row records keyed by content (ensemble.members.training_rows): one per
# test process, inherited by its subprocesses, never the user's cache; removed at exit.
os.environ.setdefault(
    "ENSEMBLE_TRAINING_ROWS_DIR", os.path.join(tempfile.gettempdir(), f"ensemble-records-{os.getpid()}")
)

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from ensemble.fitting.report import FitReport

threadpool_limits(int(os.environ["OPENBLAS_NUM_THREADS"]))  # for a BLAS already loaded before this file

_RECORDS = os.path.join(tempfile.gettempdir(), f"ensemble-records-{os.getpid()}")
if os.environ["ENSEMBLE_TRAINING_ROWS_DIR"] == _RECORDS:  # this process's own, not a caller's
    atexit.register(shutil.rmtree, _RECORDS, ignore_errors=True)

FEATURES = 8
CLASSES = 3


def dense_classifier(
    seed: int,
    *,
    features: int = FEATURES,
    classes: int = CLASSES,
    final: str | None = "softmax",
    name: str | None = None,
    dropout: float = 0.0,
) -> keras.Model:
    """A small Sequential with random (seeded) weights; `final=None` emits logits."""
    keras.utils.set_random_seed(seed)
    layers: list[keras.layers.Layer] = [keras.Input((features,)), keras.layers.Dense(16, activation="tanh")]
    if dropout:
        layers.append(keras.layers.Dropout(dropout))
    layers.append(keras.layers.Dense(classes, activation=final))
    return keras.Sequential(layers, name=name)


def two_input_ensemble() -> keras.Model:
    """Members reading different named inputs: `image` (4 features) and `meta` (2)."""
    import combiners
    import ensemble

    image_in = keras.Input((4,), name="img")
    image = keras.Model(image_in, keras.layers.Dense(3, activation="softmax")(image_in))
    meta_in = keras.Input((2,), name="m")
    meta = keras.Model(meta_in, keras.layers.Dense(3, activation="softmax")(meta_in))
    return ensemble.build_ensemble(
        [
            ensemble.load_member(image, name="vision", inputs="image"),
            ensemble.load_member(meta, name="tabular", inputs="meta"),
        ],
        combiners.MeanCombiner(),
    )


@pytest.fixture
def x() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(7, FEATURES)).astype("float32")


@pytest.fixture
def classifier() -> Callable[..., keras.Model]:
    return dense_classifier


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def entropy(p: np.ndarray) -> np.ndarray:
    return -(p * np.log(np.clip(p, 1e-7, 1.0))).sum(-1)


# The experiments' tests share one small zoo: wine (no CNN: 13 features are not 8x8 images),
# epochs capped (15 show every format and record; no test asserts more than beating chance),
# no refit (the early-stopped model is kept: one fit a member, not two; its record still holds
# every train row, so the guard sees what the recipe trains on; tests/test_train_meta.py pins the
# refit itself), trained once per run for every xdist worker (`trained_zoo`).
TINY_ZOO = [
    f"zoo.members.{m}.train.{key}"
    for m in ("mlp", "deep_mlp", "linear", "wide")
    for key in ("epochs=15", "refit=false")
]


def run_directory(tmp_path_factory: pytest.TempPathFactory, name: str, recipe: list[str]) -> Path:
    """`<name>-<hash of recipe>` in the run's temporary directory, the same for every xdist
    worker of the run (their own directories are its children), created where missing."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    directory = base / f"{name}-{hashlib.sha256(repr(recipe).encode()).hexdigest()[:12]}"
    directory.mkdir(exist_ok=True)
    return directory


def trained_zoo(tmp_path_factory: pytest.TempPathFactory, name: str, recipe: list[str]) -> list[str]:
    """`recipe` with a `zoo.dir` whose members are trained: by the first worker to get there,
    under an exclusive lock, while the others wait and then find nothing missing."""
    from hydra.utils import instantiate

    from experiments.zoo import ensure_zoo

    zoo = run_directory(tmp_path_factory, name, recipe) / "zoo"
    overrides = [*recipe, f"zoo.dir={zoo}"]
    cfg = compose_config(*overrides)
    with open(f"{zoo}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ensure_zoo(cfg.zoo, instantiate(cfg.data), str(zoo))
    return overrides


@pytest.fixture(scope="session")
def wine_overrides(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The wine zoo's overrides (`zoo.dir` last), its members trained. Tests read the zoo and
    never write into it (`regime.refit_full` runs on a copy: see `copied_zoo`)."""
    return trained_zoo(tmp_path_factory, "wine", ["data=wine", "export.tflite=[none,float16]", *TINY_ZOO])


@pytest.fixture(scope="session")
def tf_keras_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The models `tests/tf_keras_writer.py` saves with tf_keras 2.x (Keras 2), and their
    predictions: written once per run, in a subprocess that imports tf_keras (this one never
    does), for every worker (under a lock; `done` marks a complete write). Read only."""
    out = run_directory(tmp_path_factory, "tf_keras", ["tests/tf_keras_writer.py"])
    with open(out / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "done").exists():
            env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
            writer = Path(__file__).with_name("tf_keras_writer.py")
            done = subprocess.run(
                [sys.executable, str(writer), str(out / "models")],
                env={**env, "TF_CPP_MIN_LOG_LEVEL": "3"},
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert done.returncode == 0, done.stderr[-4000:]
            (out / "done").touch()
    return out / "models"


def copied_zoo(overrides: list[str], directory: Path) -> list[str]:
    """`overrides` with their `zoo.dir` replaced by a copy in `directory`, for a test that writes
    into its zoo while other workers read the shared one."""
    (source,) = (o.split("=", 1)[1] for o in overrides if o.startswith("zoo.dir="))
    shutil.copytree(source, directory / "zoo")
    return [o for o in overrides if not o.startswith("zoo.dir=")] + [f"zoo.dir={directory / 'zoo'}"]


def compose_config(*overrides: str, config_name: str = "config", **options: Any):  # type: ignore[no-untyped-def]
    """An experiment's config (conf/<config_name>.yaml) with overrides, via Hydra's compose API
    (global state cleared); `options` are `compose`'s (`return_hydra_config`)."""
    from hydra import compose, initialize
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize(version_base="1.3", config_path="../conf"):
            return compose(config_name, overrides=list(overrides), **options)
    finally:
        GlobalHydra.instance().clear()


@pytest.fixture(name="compose_config")
def compose_config_fixture() -> Callable[..., Any]:
    """`compose_config` as a fixture, for the tests that take it as an argument."""
    return compose_config


# The serving tests' models: tiny classifiers of 4 features and 3 classes, saved as .keras files.
TINY_FEATURES, TINY_CLASSES = 4, 3


def tiny_model(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((TINY_FEATURES,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(TINY_CLASSES, activation="softmax"),
        ]
    )


def tiny_sources(directory: Any) -> dict[str, str]:
    """Three tiny classifiers saved as .keras files in `directory`, by name."""
    paths = {}
    for seed, name in enumerate(("a", "b", "c")):
        path = directory / f"{name}.keras"
        tiny_model(seed).save(path)
        paths[name] = str(path)
    return paths


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits, features scaled to [0, 1] as float32, and the labels."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return (x / 16).astype("float32"), y


def fit_report(level_one, targets, *, task="classification", method="none", fitted=None, **changes):
    """A `FitReport` of given level-one predictions, as the figures read it; `changes` replace
    any other field."""
    report = FitReport(
        task=task,
        combiner="",
        method=method,
        options={},
        regime="given",
        rows=len(targets),
        overlaps={},
        selected_member={},
        member_weights=None,
        noise_variance=None,
        fitted=fitted,
        level_one=level_one,
        targets=targets,
    )
    return dataclasses.replace(report, **changes)


@contextlib.contextmanager
def serving_port(server: subprocess.Popen[str], timeout_s: float) -> Iterator[int]:
    """The port an `experiments.serve` subprocess says uvicorn listens on (its output read
    until then, within `timeout_s`); at the end the server is stopped with SIGINT and, when
    the block raised nothing, must have exited cleanly."""
    log = []
    try:
        port = None
        deadline = time.monotonic() + timeout_s
        while port is None and time.monotonic() < deadline and server.poll() is None:
            line = server.stdout.readline()  # type: ignore[union-attr]
            log.append(line)
            found = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", line)
            port = found and int(found.group(1))
        assert port, "".join(log)[-3000:]
        yield port
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            raise
    assert server.returncode == 0, "".join(log)[-3000:]
