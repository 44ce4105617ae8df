"""The fault-injection suite's worker: one write of the project (level-one cache entries, zoo
training, a SavedModel export), for `tests/test_fault_injection.py` to kill with SIGKILL.

    python tests/fault_worker.py <mode> <dir> [<json args>]   # one run, in this process
    python tests/fault_worker.py serve                        # the fork server the test uses

Importing TensorFlow and the project costs ~7 s per process, so the test starts one server: it
imports everything once, prints `@@ ready`, then reads one JSON command per line (`mode`, `dir`,
`args`, `kill_after`: seconds or null, `anchor`, `timeout`). For each it forks a child that runs
the mode (stdout and stderr to `<dir>/worker.log`), SIGKILLs it `kill_after` seconds after the
fork, or with `anchor` (`[phase prefix, occurrence]`) after the child logs that phase, and
answers `@@ {"pid", "exit", "seconds", "timed_out", "phases"}` (`exit` is -9 when the kill
landed before the child finished). The server kills its own unreaped child, so the pid cannot
belong to another process by then.

Every mode logs its phases (`<seconds since start> <phase>`, written unbuffered) to
`<dir>/phases.log` and, under the server, to a pipe the server reads: the answer's `phases` are
those the child logged before it ended, the last one where a kill landed.
"""

from __future__ import annotations

import importlib
import json
import os
import select
import signal
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFIX = "@@ "
PHASES = "phases.log"
RESULT = "result.json"
PRELOAD = (
    "tensorflow",
    "keras",
    "hydra",
    "hydra.utils",
    "combiners",
    "ensemble",
    "ensemble.export.versions",
    "ensemble.fitting.level_one",
    "experiments.zoo",
)

_started = time.monotonic()
_phase_fd: int | None = None
_pipe_fd: int | None = None


def dataset(seed: int, rows: int, features: int) -> np.ndarray:
    """The rows a level-one trial predicts on: the same for the worker and the test."""
    return np.random.default_rng(seed).normal(size=(rows, features)).astype("float32")


def phase(name: str) -> None:
    line = f"{time.monotonic() - _started:.4f} {name}\n".encode()
    for fd in (_phase_fd, _pipe_fd):
        if fd is not None:
            os.write(fd, line)


def _logged(name: str, function: Callable[..., Any], label: Callable[..., str]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        what = f"{name} {label(*args, **kwargs)}".rstrip()
        phase(f"{what} start")
        result = function(*args, **kwargs)
        phase(f"{what} end")
        return result

    return wrapper


def _instrument(module: Any, name: str, label: Callable[..., str]) -> None:
    """Log the calls of `module.name` (if the module has it) as phases; behaviour unchanged."""
    function = getattr(module, name, None)
    if function is not None:
        setattr(module, name, _logged(name, function, label))


def _basename(path: Any, *_: Any, **__: Any) -> str:
    return os.path.basename(os.fspath(path).rstrip("/"))


def level_one(directory: str, args: dict[str, Any]) -> None:
    """`LevelOneStore(directory=args.cache)` over the datasets `args.seeds`: each member's
    predictions computed where missing or invalid, and written as entries."""
    import combiners
    import ensemble
    from ensemble.fitting import level_one as module

    _instrument(module, "write_entry", _basename)
    members = [ensemble.load_member(p, name=f"m{i}") for i, p in enumerate(args["members"])]
    model = ensemble.build_ensemble(members, combiners.MeanCombiner())
    store = ensemble.LevelOneStore(directory=args["cache"], verbose=0)
    for seed in args["seeds"]:
        phase(f"dataset {seed}")
        store.predictions(model, dataset(seed, args["rows"], args["features"]))
    _result(directory, {"computed": store.computed})


def zoo(directory: str, args: dict[str, Any]) -> None:
    """`ensure_zoo` with `args.overrides` (the trial's config), then every member loaded through
    the zoo's entries: their predictions on the test rows go to `predictions.npz`."""
    import tensorflow as tf
    from hydra.utils import instantiate

    import ensemble
    from experiments.zoo import members as module

    tf.config.experimental.enable_op_determinism()  # a member retrained alike predicts alike
    for name in ("train_member", "record_training_rows"):
        _instrument(module, name, lambda n, *_, **__: _basename(n))
    _instrument(module, "_save", lambda _, path, *__, **___: _basename(path))
    cfg = compose(args["overrides"])
    data = instantiate(cfg.data)
    zoo_dir = module.zoo_directory(cfg.zoo, data)
    trained = module.ensure_zoo(cfg.zoo, data, zoo_dir)
    phase("ensure_zoo end")
    predictions = {}
    for name, spec in module.member_entries(cfg.zoo, data, zoo_dir).items():
        member = ensemble.load_member(spec.source, name=str(name), format=spec.format, **spec.options)
        predictions[str(name)] = np.asarray(member.predict(data.x_test, verbose=0))
    np.savez(os.path.join(directory, "predictions.npz"), **predictions)
    _result(directory, {"trained": trained})


def export(directory: str, args: dict[str, Any]) -> None:
    """`export_saved_model(ensemble of args.members, args.path, overwrite=True)`."""
    import combiners
    import ensemble
    from ensemble.export import versions

    for name in ("publish", "swap_in", "_point", "_clean"):
        _instrument(versions, name, lambda *_, **__: "")
    members = [ensemble.load_member(p, name=f"m{i}") for i, p in enumerate(args["members"])]
    model = ensemble.build_ensemble(members, combiners.MeanCombiner())
    phase("export_saved_model start")
    ensemble.export_saved_model(model, args["path"], overwrite=True)
    phase("export_saved_model end")
    _result(directory, {})


MODES: dict[str, Callable[[str, dict[str, Any]], None]] = {
    "level_one": level_one,
    "zoo": zoo,
    "export": export,
}


def compose(overrides: list[str]) -> Any:
    """The experiments' config (`conf/`) with `overrides`, via Hydra's compose API."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=os.path.join(ROOT, "conf")):
            return hydra_compose("config", overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()


def _result(directory: str, result: dict[str, Any]) -> None:
    with open(os.path.join(directory, RESULT), "w") as f:
        json.dump(result, f)
    phase("done")


def run(mode: str, directory: str, args: dict[str, Any]) -> None:
    """Run `mode` in this process, its phases logged to `directory/phases.log`."""
    global _phase_fd, _started
    os.makedirs(directory, exist_ok=True)
    _started = time.monotonic()
    _phase_fd = os.open(os.path.join(directory, PHASES), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for name in (RESULT, "predictions.npz"):
        if os.path.exists(os.path.join(directory, name)):
            os.remove(os.path.join(directory, name))
    phase("start")
    MODES[mode](directory, args)


def _child(command: dict[str, Any], pipe: int) -> None:
    """In the forked child: run the command with its output in `dir/worker.log`; never returns."""
    global _pipe_fd
    code = 1
    try:
        _pipe_fd = pipe
        os.makedirs(command["dir"], exist_ok=True)
        log = os.open(os.path.join(command["dir"], "worker.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(log, 1)
        os.dup2(log, 2)
        run(command["mode"], command["dir"], command.get("args", {}))
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _supervise(pid: int, pipe: int, command: dict[str, Any]) -> dict[str, Any]:
    """Wait for the child, SIGKILLing it as the command says (or at its timeout); its answer."""
    start = time.monotonic()
    timeout = float(command.get("timeout", 120))
    kill_after = command.get("kill_after")
    prefix, occurrence = command.get("anchor") or (None, 1)
    armed = start if prefix is None else None  # when the kill delay starts counting
    phases: list[str] = []
    pending = b""
    killed = timed_out = False
    while True:
        wait = 0.0005  # poll the child's exit this often; sooner when a kill is due
        if kill_after is not None and armed is not None:
            wait = max(0.0, min(wait, armed + kill_after - time.monotonic()))
        readable, _, _ = select.select([pipe], [], [], wait)
        if readable:
            chunk = os.read(pipe, 65536)
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                name = line.decode().split(" ", 1)[1]
                phases.append(name)
                seen = sum(p.startswith(prefix) for p in phases) if prefix else 0
                if armed is None and name.startswith(prefix) and seen == occurrence:
                    armed = time.monotonic()
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        now = time.monotonic()
        due = kill_after is not None and armed is not None and now - armed >= kill_after
        if not killed and (due or now - start >= timeout):
            timed_out = not due
            os.kill(pid, signal.SIGKILL)  # still our unreaped child: the pid is its own
            killed = True
    while select.select([pipe], [], [], 0)[0] and (chunk := os.read(pipe, 65536)):
        pending += chunk
    phases += [line.decode().split(" ", 1)[1] for line in pending.split(b"\n") if line]
    return {
        "pid": pid,
        "exit": os.waitstatus_to_exitcode(status),
        "seconds": time.monotonic() - start,
        "timed_out": timed_out,
        "phases": phases,
    }


def serve() -> None:
    """The fork server (see the module docstring)."""
    for module in PRELOAD:  # imported once, here, for every child
        importlib.import_module(module)

    print(PREFIX + "ready", flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        command = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            _child(command, write)
        os.close(write)
        try:
            answer = _supervise(pid, read, command)
        finally:
            os.close(read)
        print(PREFIX + json.dumps(answer), flush=True)


def main(argv: list[str]) -> None:
    sys.path.insert(0, ROOT)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if argv == ["serve"]:
        serve()
    elif len(argv) in (2, 3) and argv[0] in MODES:
        run(argv[0], argv[1], json.loads(argv[2]) if len(argv) == 3 else {})
    else:
        sys.exit(f"usage: fault_worker.py serve | fault_worker.py {{{','.join(MODES)}}} DIR [JSON ARGS]")


if __name__ == "__main__":
    main(sys.argv[1:])
