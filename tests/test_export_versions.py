"""Exports in versions (`base/<n>/`), overwrites of a plain directory with no moment without a
complete export, refusal of what is no export, and the removal of what killed writers left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import combiners
import ensemble
from ensemble.atomic import LOCK, save_array
from ensemble.export import saved_model as export_module
from ensemble.export import versions
from tests.conftest import dense_classifier

X = np.linspace(-1, 1, 16, dtype="float32").reshape(2, 8)


def small_ensemble(version: int, members: int = 2):
    """Seeded, so another process builds the same one; `members` changes the graph's layout."""
    loaded = [ensemble.load_member(dense_classifier(10 * version + i), name=f"m{i}") for i in range(members)]
    return ensemble.build_ensemble(loaded, combiners.MeanCombiner())


@pytest.fixture(scope="module")
def model():
    return small_ensemble(0)


@pytest.fixture
def fake_write(monkeypatch):
    """A fast stand-in for the SavedModel writer: the manifest and a marker, nothing else."""

    def write(view, directory, config, jit_compile):
        os.makedirs(os.path.join(directory, "assets.extra"))
        with open(os.path.join(directory, export_module.MANIFEST), "w") as f:
            json.dump({"config": config}, f)

    monkeypatch.setattr(export_module, "_write", write)


def dead_pid() -> int:
    done = subprocess.Popen(["true"])
    done.wait()
    return done.pid


def test_versions_are_integer_directories_written_in_one_step(tmp_path, model, fake_write):
    base = tmp_path / "serving"
    assert ensemble.export_version(model, base) == os.fspath(base / "1")
    (base / f".partial-{dead_pid()}-junk").mkdir()  # a dead writer's staging folder: no version
    (base / "notes").mkdir()
    (base / "9").write_text("a file, no version")
    assert ensemble.list_versions(base) == [1]
    assert ensemble.export_version(model, base, config="c: 2\n").endswith(os.sep + "2")
    assert ensemble.export_version(model, base, version=7) == os.fspath(base / "7")
    with pytest.raises(FileExistsError, match=r"Version 7 of .*serving already exists"):
        ensemble.export_version(model, base, version=7)
    assert ensemble.read_manifest(base / "2") == {"config": "c: 2\n"}
    assert ensemble.export_version(model, base, keep=2) == os.fspath(base / "8")
    assert ensemble.list_versions(base) == [7, 8]
    # The dead staging folder went too; the highest number published is recorded beside.
    assert sorted(os.listdir(base)) == [versions.HIGHEST, "7", "8", "9", "notes"]
    for bad in ({"version": -1}, {"version": True}, {"keep": 0}):
        with pytest.raises(ensemble.EnsembleError, match=r"Expected (version|keep) to be an integer"):
            ensemble.export_version(model, base, **bad)
    ensemble.export_saved_model(model, tmp_path / "plain")
    with pytest.raises(ensemble.EnsembleError, match=r"plain is an export itself"):
        ensemble.export_version(model, tmp_path / "plain")
    with pytest.raises(ensemble.EnsembleError, match=r"holds no export .*add one with export_version"):
        ensemble.export_saved_model(model, base, overwrite=True)


def test_overwrite_replaces_the_plain_directory(tmp_path, model, fake_write):
    path = tmp_path / "export"
    ensemble.export_saved_model(model, path, config="v: 1\n")
    assert path.is_dir() and not path.is_symlink()
    for number in (2, 3):
        ensemble.export_saved_model(model, path, overwrite=True, config=f"v: {number}\n")
        assert ensemble.read_manifest(path) == {"config": f"v: {number}\n"}
        assert path.is_dir() and not path.is_symlink()
    assert sorted(os.listdir(tmp_path)) == ["export"]  # the replaced ones are gone


def test_overwrite_refuses_a_directory_that_is_no_export(tmp_path, model, fake_write):
    mine = tmp_path / "results"
    mine.mkdir()
    (mine / "thesis.tex").write_text("keep")
    with pytest.raises(ensemble.EnsembleError, match=r"Export path .*results holds no export"):
        ensemble.export_saved_model(model, mine, overwrite=True)
    assert os.listdir(mine) == ["thesis.tex"] and sorted(os.listdir(tmp_path)) == ["results"]
    (tmp_path / "empty").mkdir()  # an empty directory is no export to keep
    ensemble.export_saved_model(model, tmp_path / "empty")
    assert not os.path.islink(tmp_path / "empty") and ensemble.read_manifest(tmp_path / "empty")


def legacy_layout(model, path) -> None:
    """An export as earlier versions of this code left it: `path` a relative symlink to
    `.NAME.versions/1` beside it."""
    parent, name = os.path.split(os.fspath(path))
    os.makedirs(os.path.join(parent, f".{name}.versions"), exist_ok=True)
    ensemble.export_saved_model(model, os.path.join(parent, f".{name}.versions", "1"))
    os.symlink(os.path.join(f".{name}.versions", "1"), path, target_is_directory=True)


def test_a_legacy_export_link_becomes_a_plain_directory(tmp_path, model, fake_write):
    path = tmp_path / "export"
    legacy_layout(model, path)
    assert os.path.islink(path) and ensemble.read_manifest(path) == {"config": None}
    ensemble.export_saved_model(model, path, overwrite=True, config="new\n")
    assert path.is_dir() and not path.is_symlink() and ensemble.read_manifest(path) == {"config": "new\n"}
    assert sorted(os.listdir(tmp_path)) == ["export"]  # the hidden store is gone


def test_what_killed_writers_left_is_removed_by_the_next_write(tmp_path, model, fake_write):
    import fcntl

    path, gone = tmp_path / "export", dead_pid()
    ensemble.export_saved_model(model, path)
    store = tmp_path / ".export.versions"  # of earlier versions of this code, no longer used
    debris = [
        tmp_path / f".export.partial-{gone}-ab12",  # a staging folder of a dead writer
        tmp_path / ".export.partial-k3x9_q1z",  # of an earlier version of this code, old
        store,
        store / "5",
    ]
    for folder in debris:
        folder.mkdir()
        (folder / LOCK).touch()
    os.remove(debris[1] / LOCK)
    os.utime(debris[1], (time.time() - 7200,) * 2)
    os.symlink(os.path.join(".export.versions", "5"), tmp_path / f".export.link-{gone}-ef56")
    (tmp_path / ".export.lock").touch()  # the lock file of a writer killed while it held it
    live = tmp_path / f".export.partial-{gone}-live"  # its lock is held: in use, whatever its pid
    live.mkdir()
    held = os.open(live / LOCK, os.O_RDWR | os.O_CREAT)
    fcntl.flock(held, fcntl.LOCK_EX)
    try:
        ensemble.export_saved_model(model, path, overwrite=True)
    finally:
        os.close(held)
    assert sorted(os.listdir(tmp_path)) == [f".export.partial-{gone}-live", "export"]

    # The same for any atomic write (caches, training-row records, TFLite files).
    (tmp_path / f".rows.npy.partial-{gone}-gh78").mkdir()
    save_array(tmp_path / "rows.npy", np.arange(3))
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".rows.npy")]
    np.testing.assert_array_equal(np.load(tmp_path / "rows.npy"), np.arange(3))


# Loads the export in a loop, as the registry does (a load during which the manifest's identity
# changed is done again: it may pair one export's graph with the next one's variables), and
# probes the path itself in a thread; stops after `iterations`, `seconds` or the stop file.
_READER = textwrap.dedent(
    """
    import json, os, sys, threading, time
    import numpy as np, tensorflow as tf
    path, out, stop, iterations, seconds = sys.argv[1:]
    x = tf.constant(np.linspace(-1, 1, 16, dtype="float32").reshape(2, 8))
    predictions, failures, probes, misses, done = [], [], [0], [0], threading.Event()
    again = [0]
    def identity():
        with open(os.path.join(path, "assets.extra", "manifest.json")) as f:
            return json.load(f)["identity"]
    def probe():
        while not done.is_set():
            probes[0] += 1
            if not os.path.isfile(os.path.join(path, "assets.extra", "manifest.json")) or not (
                os.path.isfile(os.path.join(path, "saved_model.pb"))):
                misses[0] += 1
            time.sleep(0.002)
    threading.Thread(target=probe, daemon=True).start()
    start = time.time()
    while (len(predictions) + len(failures) < int(iterations) and time.time() - start < float(seconds)
           and not os.path.exists(stop)):
        before = identity()
        try:
            served = tf.saved_model.load(path).signatures["serving_default"](features=x)
        except Exception as error:
            if identity() == before:
                failures.append(repr(error)[:500])
            else:
                again[0] += 1
            continue
        if identity() != before:
            again[0] += 1
            continue
        predictions.append(served["prediction"].numpy().tolist())
        open(stop + ".up", "w").close()
    done.set()
    json.dump({"predictions": predictions, "failures": failures, "probes": probes[0],
               "misses": misses[0], "again": again[0]}, open(out, "w"))
    """
)


@pytest.mark.slow
def test_a_reader_in_a_loop_never_fails_while_the_export_is_overwritten(tmp_path):
    path, out, stop = tmp_path / "export", tmp_path / "reader.json", tmp_path / "stop"
    models = [small_ensemble(v, members=2 + v % 2) for v in range(6)]  # layouts differ
    expected = [np.asarray(m(X)["prediction"]) for m in models]
    ensemble.export_saved_model(models[0], path)
    reader = subprocess.Popen(
        [sys.executable, "-c", _READER, os.fspath(path), os.fspath(out), os.fspath(stop), "300", "120"],
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    try:
        while not (tmp_path / "stop.up").exists() and reader.poll() is None:
            time.sleep(0.2)  # until its first load, of version 1
        for model in models[1:]:
            ensemble.export_saved_model(model, path, overwrite=True)
        # Two more loads, the second begun after the first ended, so after the last export was
        # in place: it must read version 5 (a fixed second was too short on a loaded machine).
        for _ in range(2):
            (tmp_path / "stop.up").unlink(missing_ok=True)
            while not (tmp_path / "stop.up").exists() and reader.poll() is None:
                time.sleep(0.05)
        stop.touch()
        reader.wait(timeout=60)
    finally:
        reader.kill()
    seen = json.loads(out.read_text())
    print("reader:", len(seen["predictions"]), "loads,", seen["again"], "again,", seen["probes"], "probes")
    assert seen["failures"] == [] and seen["misses"] == 0 and seen["probes"] > 100
    which = [
        next(i for i, e in enumerate(expected) if np.allclose(p, e, atol=1e-6)) for p in seen["predictions"]
    ]
    assert len(which) >= 10 and which == sorted(which) and which[-1] == 5, which
    assert sorted(os.listdir(tmp_path)) == ["export", "reader.json", "stop", "stop.up"]


# The writers: one child imports the project once, then forks one writer per directory (nothing
# runs between the import and the forks, as in `tests/fault_worker.py`), each a process of its
# own that builds its model, says `ready <name> <pid>` and exports over what the directory holds;
# the test SIGKILLs each by its pid. The child reaps its writers only once its stdin is closed
# (every kill sent, so no pid is reused meanwhile), then prints `exit <name> <code>` for each.
_WRITERS = textwrap.dedent(
    """
    import json, os, sys, traceback
    sys.path.insert(0, os.getcwd())
    from tests.test_export_versions import small_ensemble
    import ensemble
    writers = {}
    for name, path in json.loads(sys.argv[1]).items():
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                model = small_ensemble(1)
                print("ready", name, os.getpid(), flush=True)
                ensemble.export_saved_model(model, path, overwrite=True)
            except BaseException:
                traceback.print_exc()
                code = 1
            sys.stdout.flush()
            os._exit(code)
        writers[pid] = name
    sys.stdin.read()
    for pid, name in writers.items():
        print("exit", name, os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
    """
)


@pytest.mark.slow
def test_kill_9_mid_export_leaves_the_earlier_export_or_none(tmp_path):
    """Four writers, each SIGKILLed at a random moment of its export (over nothing, a legacy link,
    a plain directory): what is left is the earlier export or the new one, whole, or nothing at
    all; the next export cleans up. The writers are forked from one child that imported the
    project (one import, not four); each is still a process of its own, killed as it writes."""
    import tensorflow as tf

    earlier, later = (np.asarray(small_ensemble(v)(X)["prediction"]) for v in (0, 1))
    trials = {"first": None, "legacy-link": "link", "dir": "dir", "dir-again": "dir"}  # earlier one
    rng = np.random.default_rng(14)
    for name, earlier_layout in trials.items():
        (tmp_path / name).mkdir()
        if earlier_layout == "link":
            legacy_layout(small_ensemble(0), tmp_path / name / "export")
        elif earlier_layout == "dir":
            ensemble.export_saved_model(small_ensemble(0), tmp_path / name / "export")
    delays = dict(zip(trials, rng.uniform(0.05, 2.5, len(trials)), strict=True))
    server = subprocess.Popen(
        [sys.executable, "-c", _WRITERS, json.dumps({n: os.fspath(tmp_path / n / "export") for n in trials})],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    try:
        pids, kills = {}, {}  # each killed at a random moment after its own "ready", where its export runs
        while len(pids) < len(trials):
            line = server.stdout.readline()
            assert line, "the writers' child exited before every writer was ready"
            if line.startswith("ready "):  # (anything else a writer prints is skipped)
                _, name, pid = line.split()
                pids[name], kills[name] = int(pid), time.monotonic() + delays[name]
        for name, moment in sorted(kills.items(), key=lambda item: item[1]):
            time.sleep(max(0.0, moment - time.monotonic()))
            os.kill(pids[name], signal.SIGKILL)  # not reaped yet: the pid is still the writer's
        out, _ = server.communicate("", timeout=60)
    finally:
        server.kill()
    exits = {line.split()[1]: int(line.split()[2]) for line in out.splitlines() if line.startswith("exit ")}
    assert server.returncode == 0 and set(exits) == set(trials), out
    assert all(code in (0, -9) for code in exits.values()), exits  # killed, or finished before
    for name in trials:
        path = tmp_path / name / "export"
        # Killed before its first export was in place: nothing there, never a half one.
        if trials[name] is not None or os.path.lexists(path):
            served = tf.saved_model.load(os.fspath(path)).signatures["serving_default"](features=X)
            got = served["prediction"].numpy()
            assert np.allclose(got, earlier, atol=1e-6) or np.allclose(got, later, atol=1e-6), name
            print(name, "holds", "earlier" if np.allclose(got, earlier, atol=1e-6) else "later")
        else:
            print(name, "holds nothing")
        ensemble.export_saved_model(small_ensemble(2), path, overwrite=True)  # cleans what was left
        assert sorted(os.listdir(tmp_path / name)) == ["export"], name
        assert not os.path.islink(path), name
