"""The level-one cache: keyed by what is loaded (never by files), every entry validated."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest

import combiners
import ensemble
from ensemble.fitting import LevelOneStore
from ensemble.fitting.cache import member_fingerprint, read_entry, write_entry
from tests.legacy_formats import DenseNet, write_tf1_saved_model, write_tf2_module_saved_model

SIZES = (6, 8, 3)
ROWS = 20


def _write_keras_export(path: Path, net: DenseNet) -> None:
    net.to_keras().export(os.fspath(path), verbose=False)


def _write_keras_file(path: Path, net: DenseNet) -> None:
    net.to_keras().save(path)


WRITERS = {
    "tf2_module": write_tf2_module_saved_model,
    "keras_export": _write_keras_export,
    "tf1": write_tf1_saved_model,
    "keras": _write_keras_file,
}


def _save(fmt: str, path: Path, net: DenseNet) -> Path:
    """Write `net` at `path` in format `fmt`, replacing whatever was there (a retrain in place)."""
    path = path.with_suffix(".keras") if fmt == "keras" else path
    if path.is_dir():
        shutil.rmtree(path)
    WRITERS[fmt](path, net)
    return path


def _load(path: Path) -> ensemble.Member:
    return ensemble.load_member(path, name="m", output="probabilities")


def _ensemble(member: ensemble.Member) -> keras.Model:
    return ensemble.build_ensemble([member], combiners.MeanCombiner())


@pytest.fixture
def x() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(ROWS, SIZES[0])).astype("float32")


@pytest.mark.parametrize("fmt", ["tf2_module", "keras_export", "tf1", "keras"])
@pytest.mark.slow
def test_a_member_retrained_in_place_is_keyed_by_what_is_loaded(tmp_path, x, fmt):
    old, new = DenseNet.random(SIZES, seed=1), DenseNet.random(SIZES, seed=2)
    path = _save(fmt, tmp_path / "member", old)
    loaded_old = _load(path)
    _save(fmt, path, new)  # retrained in place while the old copy is loaded
    loaded_new = _load(path)
    assert member_fingerprint(loaded_old) != member_fingerprint(loaded_new)

    store = LevelOneStore(tmp_path / "cache", verbose=0)
    stale = store.predictions(_ensemble(loaded_old), x)  # the old copy's predictions, cached first
    fresh_store = LevelOneStore(tmp_path / "cache", verbose=0)
    fresh = fresh_store.predictions(_ensemble(loaded_new), x)
    assert len(fresh_store.computed) == 1  # not the old copy's entry
    np.testing.assert_allclose(stale[:, 0], old.predict(x), atol=1e-5)
    np.testing.assert_allclose(fresh[:, 0], new.predict(x), atol=1e-5)
    np.testing.assert_allclose(fresh[:, 0], loaded_new.predict(x, verbose=0), atol=1e-6)


def test_a_keras_file_overwritten_with_the_same_weights_and_another_activation_is_a_new_key(tmp_path, x):
    old = DenseNet.random(SIZES, seed=1)
    new = DenseNet(old.layers, ["tanh", "softmax"])  # the weights alone cannot tell them apart
    path = _save("keras", tmp_path / "member", old)
    loaded_old = _load(path)
    LevelOneStore(tmp_path / "cache", verbose=0).predictions(_ensemble(loaded_old), x)
    _save("keras", path, new)
    loaded_new = _load(path)
    assert member_fingerprint(loaded_old) != member_fingerprint(loaded_new)
    fresh = LevelOneStore(tmp_path / "cache", verbose=0).predictions(_ensemble(loaded_new), x)
    np.testing.assert_allclose(fresh[:, 0], new.predict(x), atol=1e-5)
    np.testing.assert_allclose(fresh[:, 0], loaded_new.predict(x, verbose=0), atol=1e-6)


def _one_ulp(net: DenseNet) -> DenseNet:
    kernel, bias = net.layers[0]
    kernel = kernel.copy()
    kernel[0, 0] = np.nextafter(kernel[0, 0], np.float32(np.inf))
    return DenseNet([(kernel, bias), *net.layers[1:]], list(net.activations))


@pytest.mark.parametrize("fmt", ["tf2_module", "tf1", "keras"])
def test_the_fingerprint_is_equal_for_two_loads_and_changes_with_one_ulp(tmp_path, fmt):
    net = DenseNet.random(SIZES, seed=3)
    path = _save(fmt, tmp_path / "a", net)
    first, second = _load(path), _load(path)
    assert member_fingerprint(first) == member_fingerprint(second)
    changed = _load(_save(fmt, tmp_path / "b", _one_ulp(net)))
    assert member_fingerprint(changed) != member_fingerprint(first)


@pytest.mark.parametrize("fmt", ["tf2_module", "keras"])
def test_the_fingerprint_follows_a_weight_changed_in_memory(tmp_path, fmt):
    member = _load(_save(fmt, tmp_path / "a", DenseNet.random(SIZES, seed=3)))
    before = member_fingerprint(member)
    variable = member.model.tf_variables[0] if fmt == "tf2_module" else member.weights[0]
    value = np.array(variable.numpy())
    value.flat[0] = np.nextafter(value.flat[0], np.float32(np.inf))
    variable.assign(value)
    assert member_fingerprint(member) != before


@pytest.mark.slow  # a second Python process importing TensorFlow
def test_the_fingerprint_is_the_same_in_a_new_process(tmp_path):
    paths = [_save(fmt, tmp_path / fmt, DenseNet.random(SIZES, seed=4)) for fmt in ("tf2_module", "keras")]
    here = [member_fingerprint(_load(path)) for path in paths]
    script = (
        "import sys, ensemble\n"
        "from ensemble.fitting.cache import member_fingerprint\n"
        "for p in sys.argv[1:]:\n"
        "    print(member_fingerprint(ensemble.load_member(p, name='m', output='probabilities')))\n"
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-c", script, *map(str, paths)],
        capture_output=True,
        text=True,
        check=True,
        cwd=root,
        env=env,
    )
    assert result.stdout.split() == here


def _cached(tmp_path: Path, x: np.ndarray) -> tuple[keras.Model, ensemble.Member, Path]:
    member = _load(_save("keras", tmp_path / "member", DenseNet.random(SIZES, seed=5)))
    model = _ensemble(member)
    LevelOneStore(tmp_path / "cache", verbose=0).predictions(model, x)
    (entry,) = [p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]
    return model, member, entry


def _corrupt(entry: Path, how: str) -> object:
    data = entry.read_bytes()
    if how == "truncated":
        return entry.write_bytes(data[: len(data) // 2])
    if how == "garbage":
        return entry.write_bytes(np.random.default_rng(1).bytes(len(data)))
    if how == "empty":
        return entry.write_bytes(b"")
    if how == "garbage_values":  # the stored numbers overwritten in place, the rest intact
        values = np.load(entry)
        raw = (values["values"] if isinstance(values, np.lib.npyio.NpzFile) else values).tobytes()
        start = data.index(raw)
        noise = np.random.default_rng(2).bytes(len(raw))
        return entry.write_bytes(data[:start] + noise + data[start + len(raw) :])
    key = entry.stem
    with np.load(entry) as stored:  # the entries below are written in this cache's format
        values, checksum = stored["values"], stored["sha256"]
    if how == "wrong_shape":
        write_entry(os.fspath(entry), key, np.zeros((ROWS, values.shape[1] + 1), "float32"))
    elif how == "wrong_rows":
        write_entry(os.fspath(entry), key, values[:-1])
    elif how == "wrong_dtype":
        np.savez(entry, values=values.astype("float64"), sha256=checksum, key=np.array(key))
    elif how == "tampered":  # a valid archive whose values no longer match their checksum
        np.savez(entry, values=values + 0.5, sha256=checksum, key=np.array(key))
    elif how == "no_checksum":
        np.savez(entry, values=values)
    elif how == "plain_npy":
        with open(entry, "wb") as f:
            np.save(f, values)
    else:
        raise AssertionError(how)
    return None


@pytest.mark.parametrize(
    "how",
    [
        "truncated",
        "garbage",
        "garbage_values",
        "empty",
        "wrong_shape",
        "wrong_rows",
        "wrong_dtype",
        "tampered",
        "no_checksum",
        "plain_npy",
    ],
)
def test_a_bad_cache_entry_is_recomputed_with_a_warning_naming_it(tmp_path, x, how):
    model, member, entry = _cached(tmp_path, x)
    _corrupt(entry, how)
    store = LevelOneStore(tmp_path / "cache", verbose=0)
    with pytest.warns(RuntimeWarning, match=re.escape(str(entry))):
        values = store.predictions(model, x)
    assert len(store.computed) == 1
    np.testing.assert_allclose(values[:, 0], member.predict(x, verbose=0), atol=1e-6)
    again = LevelOneStore(tmp_path / "cache", verbose=0)  # the entry was rewritten, valid
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        np.testing.assert_array_equal(again.predictions(model, x), values)
    assert again.computed == []


def test_a_cache_hit_reads_the_entry_and_runs_no_member(tmp_path, x):
    model, member, entry = _cached(tmp_path, x)
    written = entry.stat().st_mtime_ns
    calls = []
    original = member.call
    member.call = lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs)
    store = LevelOneStore(tmp_path / "cache", verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        values = store.predictions(model, x)
    assert store.computed == [] and calls == []
    assert entry.stat().st_mtime_ns == written
    np.testing.assert_allclose(values[:, 0], member.predict(x, verbose=0), atol=1e-6)
    store.predictions(model, x[:5])  # other rows: another key, computed
    assert len(store.computed) == 1


def test_readers_never_see_a_half_written_entry(tmp_path):
    path, key = os.fspath(tmp_path / "entry.npz"), "entry"
    versions = [np.full((2000, 10), v, "float32") for v in (1.0, 2.0)]
    write_entry(path, key, versions[0])
    failures: list[str] = []

    def write() -> None:
        for i in range(40):
            write_entry(path, key, versions[i % 2])

    writer = threading.Thread(target=write)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        writer.start()
        while writer.is_alive():
            values = read_entry(path, key, 2000, 10)
            if values is None or not any(np.array_equal(values, v) for v in versions):
                failures.append("a read that was neither version")
        writer.join()
    assert failures == [] and [str(w.message) for w in caught] == []
    assert sorted(os.listdir(tmp_path)) == ["entry.npz"]  # no staging left behind


def test_a_new_store_removes_what_killed_writers_left(tmp_path):
    # A writer killed between moving its entry into place and removing its staging folder
    # leaves `.KEY.npz.partial-<pid>-...`; an entry is never written again, so the store clears it.
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    abandoned = tmp_path / f".m-abc-def.npz.partial-{int(dead.stdout)}-x1y2"
    abandoned.mkdir()
    (abandoned / "m-abc-def.npz").write_bytes(b"half")
    alive = tmp_path / f".m-ghi-jkl.npz.partial-{os.getpid()}-z3"  # a writer of this process
    alive.mkdir()
    unrelated = tmp_path / ".keep"  # not a staging folder: never touched
    unrelated.mkdir()
    LevelOneStore(tmp_path)
    assert not abandoned.exists()
    assert alive.exists() and unrelated.exists()
