"""Fault injection (invariant 4): SIGKILL the project's writers at random moments, N trials each.

This file holds the harness and the level-one cache's trials; `tests/test_fault_models.py` runs
the same harness on the writers of saved models (zoo training, a SavedModel export).

Each writer is run by `tests/fault_worker.py` in a forked child of one worker server per test
file (which imports TensorFlow once) and killed with SIGKILL at a seeded random delay. Here:
level-one cache entries (`LevelOneStore(directory=...)`), with one planted corrupt entry that
the writer is to replace.

Each writer's first trial goes uninterrupted and is timed: its whole duration, and the span of
its writes (from the phases the worker logs). Half the trials then kill at stratified uniform
fractions of the whole run (counted from the fork), half at fractions of a write's span counted
from that write's start as the child reports it (here one of the six cache entries a trial
writes), so kills land in the writes and not only in the predictions. After each kill the parent
checks that nothing half-written is used and nothing valid is lost; then the next run (here the
parent) must succeed, use what is complete and rebuild the rest.

A trial counts as a fault injected when the kill landed before the child finished (its exit is
-9), and as survived when every check passed. The counts go to `fault_injection.json` in the
test's tmp dir and are printed; every trial must survive.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import select
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.fault_worker import PREFIX, ROOT, dataset

pytestmark = pytest.mark.slow

SEED = 14
TRIALS = {"level_one": 8, "zoo": 6, "export": 6}
TIMEOUT = 120.0  # seconds any one child (or the server's start) may take
ROWS, FEATURES, WIDTH = 8000, 16, 16  # level-one: 0.5 MB per entry, so a write takes a while
ATOL = 1e-6


class Worker:
    """The fork server of `tests/fault_worker.py`: one command at a time, each answer bounded."""

    def __init__(self, log: Path) -> None:
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}
        self._log = open(log, "ab")  # noqa: SIM115  (closed in close())
        self._process = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "tests", "fault_worker.py"), "serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=ROOT,
            env=env,
        )
        self._pending = b""
        assert self._answer(TIMEOUT) == "ready"

    def run(
        self,
        mode: str,
        directory: Path,
        args: dict[str, Any],
        *,
        kill_after: float | None = None,
        anchor: tuple[str, int] | None = None,
        check: bool = True,
    ) -> dict[str, Any]:
        """Run `mode` in a forked child; with `check`, fail unless it exited 0 (or was killed)."""
        command = {
            "mode": mode,
            "dir": os.fspath(directory),
            "args": args,
            "kill_after": kill_after,
            "anchor": anchor,
            "timeout": TIMEOUT,
        }
        assert self._process.stdin is not None
        self._process.stdin.write((json.dumps(command) + "\n").encode())
        self._process.stdin.flush()
        answer: dict[str, Any] = json.loads(self._answer(TIMEOUT + 30))
        assert not answer["timed_out"], f"{mode} child hung past {TIMEOUT} s: {_tail(directory)}"
        if check:
            allowed = (0,) if kill_after is None else (0, -9)
            assert answer["exit"] in allowed, f"{mode} run failed: {_tail(directory)}"
        answer["log"] = "" if answer["exit"] in (0, -9) else _tail(directory)
        return answer

    def _answer(self, timeout: float) -> str:
        """The next line the server prints behind PREFIX (other output is skipped)."""
        assert self._process.stdout is not None
        fd = self._process.stdout.fileno()
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self._pending:
                line, self._pending = self._pending.split(b"\n", 1)
                text = line.decode(errors="replace")
                if text.startswith(PREFIX):
                    return text[len(PREFIX) :]
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"The fault worker did not answer within {timeout} s.")
            if select.select([fd], [], [], left)[0]:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise RuntimeError(f"The fault worker exited ({self._process.wait(5)}).")
                self._pending += chunk

    def close(self) -> None:
        if self._process.stdin is not None:
            self._process.stdin.close()
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=30)
        self._log.close()


def _tail(directory: Path) -> str:
    log = directory / "worker.log"
    return log.read_text()[-3000:] if log.exists() else "(no log)"


def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """A module's fork server (the body of each test file's `worker` fixture)."""
    server = Worker(tmp_path_factory.mktemp("fault_worker") / "server.log")
    yield server
    server.close()


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    yield from serve(tmp_path_factory)


class Trials:
    """The plan of kills, and the counts: tried, faults injected (the child's exit was -9), survived."""

    def __init__(self, writer: str, count: int, whole: float, anchors: list[tuple[str, int, float]]) -> None:
        """Half the kills at stratified uniform fractions of `whole` (seconds from the fork), half
        at fractions of a write's span (seconds from the write's start), the writes taken in
        turn from `anchors` (phase prefix, its occurrence, the span measured for it)."""
        self.writer = writer
        rng = random.Random(f"{SEED}-{writer}")
        runs, writes = count // 2, count - count // 2
        self.plan: list[dict[str, Any]] = [
            {"kill_after": whole * (i + rng.random()) / runs, "anchor": None} for i in range(runs)
        ]
        for i in range(writes):
            prefix, occurrence, span = anchors[i % len(anchors)]
            self.plan.append(
                {"kill_after": span * (i + rng.random()) / writes, "anchor": (prefix, occurrence)}
            )
        rng.shuffle(self.plan)
        self.whole, self.spans = whole, {f"{p} #{o}": round(span, 4) for p, o, span in anchors}
        self.tried = self.faults = self.survived = 0
        self.failures: list[str] = []
        self.landed: list[str] = []
        self.extra: dict[str, Any] = {}

    def record(self, index: int, answer: dict[str, Any], failures: list[str]) -> None:
        self.tried += 1
        killed = answer["exit"] == -9
        self.faults += killed
        phases = answer["phases"]
        self.landed.append(f"{phases[-1]} (phase {len(phases)})" if killed and phases else "finished")
        if failures:
            self.failures += [f"{self.writer} trial {index} (kill {self.plan[index]}): {f}" for f in failures]
        else:
            self.survived += 1

    def report(self, directory: Path, started: float) -> dict[str, Any]:
        counts = {
            "writer": self.writer,
            "tried": self.tried,
            "faults_injected": self.faults,
            "survived": self.survived,
            "uninterrupted_run_s": round(self.whole, 3),
            "write_spans_s": self.spans,
            "kills_landed_in": self.landed,
            "test_seconds": round(time.monotonic() - started, 1),
        }
        counts.update(self.extra)
        (directory / "fault_injection.json").write_text(json.dumps(counts, indent=2))
        print(f"\nfault injection {self.writer}: {json.dumps(counts)}")
        assert not self.failures, "\n".join(self.failures)
        assert self.survived == self.tried
        return counts


def write_span(
    log: Path, start: str, occurrence: int, end: Callable[[str], bool], *, first: bool = True
) -> float:
    """Seconds, in the child's timed phase log, from the `occurrence`-th phase starting with
    `start` to the phase after the first (or, not `first`, the last) phase from there for
    which `end` is true: the span of the writes a kill is aimed at."""
    timed = [line.split(" ", 1) for line in log.read_text().splitlines()]
    names = [name for _, name in timed]
    begin = [i for i, name in enumerate(names) if name.startswith(start)][occurrence - 1]
    ends = [i for i, name in enumerate(names) if i >= begin and end(name)]
    stop = min((ends[0] if first else ends[-1]) + 1, len(names) - 1)
    return float(timed[stop][0]) - float(timed[begin][0])


def digest(path: Path) -> str:
    """A hash of a file, or of a directory's files (names and bytes)."""
    digest = hashlib.sha256()
    if path.is_dir():
        for child in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(os.fspath(child.relative_to(path)).encode() + b"\0" + child.read_bytes())
    else:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def debris_in(directory: Path) -> list[str]:
    """Staging, retired and link leftovers of the atomic writers in `directory`."""
    marks = (".partial-", ".retired-", ".link-", ".old")
    return sorted(p.name for p in directory.iterdir() if any(m in p.name for m in marks))


# The phases that end the writes a kill is aimed at


def _entry_written(phase: str) -> bool:
    return phase.startswith("write_entry") and phase.endswith(" end")


# Level-one cache entries


def small_members(directory: Path, count: int, seed: int, features: int, width: int) -> list[str]:
    import keras

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        keras.utils.set_random_seed(seed * 100 + i)
        model = keras.Sequential(
            [
                keras.Input((features,)),
                keras.layers.Dense(32, activation="tanh", name="hidden"),
                keras.layers.Dense(width, activation="softmax", name="out"),
            ],
            name=f"m{i}",
        )
        path = directory / f"m{i}_{seed}.keras"
        model.save(path)
        paths.append(os.fspath(path))
    return paths


def test_level_one_writes_survive_sigkill(worker: Worker, tmp_path: Path) -> None:
    import combiners
    import ensemble
    from ensemble.fitting.cache import read_entry

    started = time.monotonic()
    paths = small_members(tmp_path / "members", 3, 0, FEATURES, WIDTH)
    model = ensemble.build_ensemble(
        [ensemble.load_member(p, name=f"m{i}") for i, p in enumerate(paths)], combiners.MeanCombiner()
    )
    cache, work = tmp_path / "cache", tmp_path / "work"
    references: dict[int, tuple[np.ndarray, list[str]]] = {}
    leftover: set[str] = set()  # debris in the cache after the recoveries
    by_key: dict[str, np.ndarray] = {}

    def reference(seed: int) -> tuple[np.ndarray, list[str]]:
        """A fresh computation (in memory): the stacked predictions and each member's key."""
        if seed not in references:
            store = ensemble.LevelOneStore(verbose=0)
            values = store.predictions(model, dataset(seed, ROWS, FEATURES))
            references[seed] = (values, list(store.computed))
            by_key.update({key: values[:, i] for i, key in enumerate(store.computed)})
        return references[seed]

    def args(seeds: list[int]) -> dict[str, Any]:
        return {
            "members": paths,
            "cache": os.fspath(cache),
            "seeds": seeds,
            "rows": ROWS,
            "features": FEATURES,
        }

    def trial(index: int, plan: dict[str, Any] | None) -> tuple[dict[str, Any], list[str]]:
        seeds = [0, 10 + 2 * index, 11 + 2 * index]  # one dataset cached already, two new
        for seed in seeds:
            reference(seed)
        planted = cache / f"{references[seeds[1]][1][index % 3]}.npz"
        planted.write_bytes(b"PK\x03\x04" + os.urandom(64))  # a corrupt entry the writer must replace
        corrupt = digest(planted)
        before = {p.name: digest(p) for p in cache.glob("*.npz") if p != planted}
        answer = worker.run("level_one", work / str(index), args(seeds), **(plan or {}))
        failures = []
        for name, sha in before.items():  # nothing valid lost
            if not (cache / name).exists() or digest(cache / name) != sha:
                failures.append(f"the valid entry {name} was lost or changed")
        bad = {planted.name} if planted.exists() and digest(planted) == corrupt else set()
        for path in sorted(cache.glob("*.npz")):  # nothing half-written at an entry's path
            if path.name in bad:
                continue
            key = path.name[: -len(".npz")]
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                values = read_entry(os.fspath(path), key, ROWS, WIDTH)
            if values is None or key not in by_key:
                failures.append(f"{path.name} is not a valid entry: {[str(w.message) for w in caught]}")
            elif not np.allclose(values, by_key[key], atol=ATOL, rtol=0):
                failures.append(f"{path.name} holds other predictions than a fresh computation")
        expected_missing = {
            key for seed in seeds for key in references[seed][1] if not (cache / f"{key}.npz").exists()
        } | {name[: -len(".npz")] for name in bad}
        # The next run: uses what is valid, recomputes the rest (warning of the bad entry only).
        store = ensemble.LevelOneStore(directory=cache, verbose=0)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for seed in seeds:
                got = store.predictions(model, dataset(seed, ROWS, FEATURES))
                if not np.allclose(got, references[seed][0], atol=ATOL, rtol=0):
                    failures.append(
                        f"dataset {seed}: the store's predictions differ from a fresh computation"
                    )
        named = sorted(str(w.message) for w in caught if "Level-one cache entry" in str(w.message))
        if len(named) != len(bad) or any(planted.name not in message for message in named):
            failures.append(f"warnings {named}, expected one naming each of {sorted(bad)}")
        if set(store.computed) != expected_missing:
            failures.append(f"recomputed {sorted(store.computed)}, expected {sorted(expected_missing)}")
        again = ensemble.LevelOneStore(directory=cache, verbose=0)
        for seed in seeds:
            again.predictions(model, dataset(seed, ROWS, FEATURES))
        if again.computed:
            failures.append(f"entries still missing after the recovery: {again.computed}")
        leftover.update(debris_in(cache))
        return answer, failures

    worker.run("level_one", work / "setup", args([0]))
    answer, failures = trial(0, None)
    assert not failures, failures
    log = work / "0" / "phases.log"
    trials = Trials(
        "level_one",
        TRIALS["level_one"],
        answer["seconds"],
        # one entry's write (the span of the first), in turn each of the six a trial writes
        [("write_entry", k, write_span(log, "write_entry", 1, _entry_written)) for k in (1, 4, 2, 6, 3, 5)],
    )
    for index, plan in enumerate(trials.plan, start=1):
        answer, failures = trial(index, plan)
        trials.record(index - 1, answer, failures)
    # A writer killed between renaming its entry into place and removing its staging folder
    # leaves that folder until the same entry is written again (which never happens for a
    # valid one); report how many are left rather than fail on them.
    trials.extra["debris_left"] = sorted(leftover)
    trials.report(tmp_path, started)
