"""Timing in rounds, every call timed in turn; and onnxruntime's timings in a process of their own.

Run as a script (`python rounds.py '<json spec>'`, as `onnxruntime_seconds` does), it times
onnxruntime sessions of the `.onnx` files the spec names and prints the medians as JSON. The
process imports neither TensorFlow nor this project, and its sessions share one global thread
pool, as a server holding several should: with a pool each (onnxruntime's default) the pools
contend for the cores, and two sessions of one file called in turn took 45 ms a call at batch
4096 where one alone took 30 ms.
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = [
    "MATMUL_SIZE",
    "interleaved_seconds",
    "matmul_name",
    "onnxruntime_seconds",
    "run_python",
    "run_python_json",
]

MATMUL_SIZE = 2048  # the matmul whose rate is the machine's peak


def interleaved_seconds(calls: Mapping[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """The median seconds of each call, the calls taken in turn within every round.

    On a shared machine the load changes from second to second; calls timed in turn see the
    same load, so their ratios hold where medians taken one after the other would not. Each
    timed call follows an untimed one of the same call: what the previous call left behind
    (threads still spinning, caches holding another model's weights) is paid there, not in the
    timing. Each round starts one call further on: a place in the round has its own cost (the
    same graph timed first and third in every round differed by 5-8% at batch 1), which every
    call then pays equally often."""
    for call in calls.values():
        call()  # warm-up: traces and allocations happen here, not in the timing
    names = list(calls)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(rounds):
        first = round_ % len(names)
        for name in names[first:] + names[:first]:
            call = calls[name]
            call()
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(seconds) for name, seconds in times.items()}


def matmul_name(runtime: str, shape: Sequence[int]) -> str:
    """The timing's key of one `(rows, inner, out)` float32 matmul in `runtime`."""
    return f"{runtime} matmul {'x'.join(map(str, shape))}"


def run_python(args: Sequence[str], what: str, *, timeout: int = 600) -> str:
    """The standard output of `python *args` in a fresh process (TensorFlow's logs quiet); a
    RuntimeError naming `what`, with the end of its standard error, when it fails."""
    done = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed: {done.stderr[-2000:]}")
    return done.stdout


def run_python_json(args: Sequence[str], what: str, *, timeout: int = 600) -> Any:
    """What `python *args` printed as JSON on its last line (see `run_python`)."""
    return json.loads(run_python(args, what, timeout=timeout).strip().splitlines()[-1])


def onnxruntime_seconds(
    paths: Mapping[str, str],
    features: int,
    batches: Mapping[int, int],
    *,
    seed: int = 0,
    matmuls: Sequence[tuple[int, int, int]] = (),
) -> dict[int, dict[str, float]]:
    """Median seconds of each `.onnx` file's session at each batch (`{batch: rounds}`), timed in
    turn in a fresh process; and at the largest batch, each of `matmuls` (`(rows, inner, out)`)
    as one float32 MatMul, "onnxruntime matmul RxKxN" (see `matmul_name`)."""
    spec = {
        "paths": dict(paths),
        "features": features,
        "batches": dict(batches),
        "seed": seed,
        "matmuls": [list(shape) for shape in matmuls],
    }
    # -P: the script's folder is not put on sys.path (its onnx.py would shadow onnx).
    measured = run_python_json(["-P", __file__, json.dumps(spec)], "onnxruntime timing", timeout=1200)
    return {int(batch): seconds for batch, seconds in measured.items()}


def _time_sessions(spec: dict[str, Any]) -> dict[str, dict[str, float]]:
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper

    ort.set_global_thread_pool_sizes(0, 0)  # one pool for every session, sized to the cores
    options = ort.SessionOptions()
    options.use_per_session_threads = False
    options.log_severity_level = 3

    def session(model: str | bytes) -> Any:
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    sessions = {name: session(path) for name, path in spec["paths"].items()}
    rng = np.random.default_rng(spec["seed"])
    results = {}
    for batch, rounds in sorted((int(b), r) for b, r in spec["batches"].items()):
        x = rng.normal(size=(batch, spec["features"])).astype("float32")
        calls: dict[str, Callable[[], Any]] = {
            name: functools.partial(each.run, None, {each.get_inputs()[0].name: x})
            for name, each in sessions.items()
        }
        for rows, inner, out in spec["matmuls"] if batch == max(int(b) for b in spec["batches"]) else ():
            a, b = (rows, inner), (inner, out)
            graph = helper.make_graph(
                [helper.make_node("MatMul", ["a", "b"], ["c"])],
                "matmul",
                [helper.make_tensor_value_info(n, TensorProto.FLOAT, v) for n, v in (("a", a), ("b", b))],
                [helper.make_tensor_value_info("c", TensorProto.FLOAT, (rows, out))],
            )
            product = session(
                helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
            )
            feeds = {n: rng.normal(size=v).astype("float32") for n, v in (("a", a), ("b", b))}
            calls[matmul_name("onnxruntime", (rows, inner, out))] = functools.partial(
                product.run, None, feeds
            )
        results[str(batch)] = interleaved_seconds(calls, rounds)
    return results


if __name__ == "__main__":
    print(json.dumps(_time_sessions(json.loads(sys.argv[1]))))
