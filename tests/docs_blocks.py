"""The code blocks of README.md and docs/**/*.md, and how each is run.

A page's ```python blocks, and its hidden setup blocks (`<!-- setup` ... `-->`, Python code in
an HTML comment: run, never shown), run in the order they appear in ONE fresh process, so a
page may build on its earlier blocks; cwd is a fresh directory, the repository is on
PYTHONPATH. Then every command of the page's ```bash blocks runs in that directory with bash,
unless `RUN_ELSEWHERE` names the test that runs it (a server, or work of minutes) or `NOT_RUN`
says why nothing here can (another machine's tools). A bash command in neither that this
runner cannot run fails its page; see CONTRIBUTING.md.

The fresh process is forked from a server (one per pytest worker and environment) that has
imported `PRELOAD` and done nothing else: no TensorFlow op has run in it, so its runtime, Keras'
global state, seeds, logging and tf.config are those of a fresh interpreter, and each page's
changes to them, to cwd, env or sys.modules die with its own child. A page pays for its own
work, not for importing TensorFlow again.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Commands that cost minutes or serve forever, as patterns (`*`: any text), each with the test that runs
# it (with bounds appended: a small zoo, few epochs, a free port) or composes it.
RUN_ELSEWHERE: dict[str, str] = {
    "python -m pip install -e . && python -m experiments.run": "tests/test_run.py::test_classification_run_writes_metrics_report_plots_and_export",
    'python -m pip install -e ".[test]" && python -m pytest': "tests/test_readme.py::test_quick_start_is_two_commands_and_ci_runs_the_second",
    'python -m pip install -e ".[serve]" && python -m experiments.serve': "tests/test_serve_script.py::test_readme_curl_example_works_as_written",
    "curl -d * http://127.0.0.1:8501/v1/models/mlp:predict": "tests/test_serve_script.py::test_readme_curl_example_works_as_written",
    "mkdir -p exports && python -m experiments.run export.versioned=true *": "tests/test_fail_early.py::test_readme_versioned_serving_example_runs_in_its_order",
    "python -m experiments.serve 'serve.models={digits: exports/digits, *": "tests/test_fail_early.py::test_readme_versioned_serving_example_runs_in_its_order",
    "curl -d * http://127.0.0.1:8501/v1/models/digits:predict": "tests/test_fail_early.py::test_readme_versioned_serving_example_runs_in_its_order",
    "curl -d * http://127.0.0.1:8501/v1/models/digits/versions/1:predict": "tests/test_fail_early.py::test_readme_versioned_serving_example_runs_in_its_order",
    "python -m experiments.run +experiment=breast_cancer_seeds": "tests/test_config_groups.py::test_experiment_option_composes_every_setting_of_its_sweep",
    "python -m experiments.run +member@zoo.members.mlp2=mlp zoo.members.mlp2.train.seed=7": "tests/test_docs_blocks.py::test_the_add_a_member_command_composes_a_second_mlp",
    "python -m experiments.train_meta -m combiner=stack,select,weighted": "tests/test_train_meta.py::test_sweep_from_the_command_line",
    "python -m experiments.train_meta regime=oof": "tests/test_train_meta.py::test_oof_regime",
    "TF_CONFIG=* python -m experiments.run combiner=stack_keras runtime=multi_worker": "tests/test_distribute.py::test_the_main_job_under_each_strategy_equals_one_process",
}
# Pages whose blocks another test runs as a whole, asserting what they print and write.
PAGES_RUN_ELSEWHERE: dict[str, str] = {
    "docs/training-script.md": "tests/test_readme.py::test_training_script_example_runs_as_written",
}
NOT_RUN: dict[str, str] = {
    "docker run --rm -p 8501:8501 * tensorflow/serving": "needs Docker and TF Serving's image",
}


@dataclass(frozen=True)
class Block:
    page: str  # relative to the repository root
    line: int  # of the block's first code line, 1-based
    language: str  # "python", "setup" (hidden Python) or "bash"
    code: str


FENCE = re.compile(r"^(?P<indent>[ ]*)```(?P<info>[^\n`]*)\n(?P<code>.*?)^(?P=indent)```[ ]*$", re.M | re.S)
SETUP = re.compile(r"^<!-- setup\n(?P<code>.*?)^-->", re.M | re.S)


def pages() -> list[str]:
    """README.md, then every docs page, as paths relative to the repository root."""
    docs = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").rglob("*.md"))
    return ["README.md", *docs]


def blocks(page: str) -> list[Block]:
    """The page's python, hidden setup and bash blocks, in order."""
    text = (ROOT / page).read_text()
    found: list[tuple[int, str, str]] = []
    for match in FENCE.finditer(text):
        language = match.group("info").strip().split(" ")[0].lstrip(".{").rstrip("}")
        if language in ("python", "bash"):
            found.append((match.start("code"), language, textwrap.dedent(match.group("code"))))
    found += [(m.start("code"), "setup", m.group("code")) for m in SETUP.finditer(text)]
    return [Block(page, text.count("\n", 0, at) + 1, lang, code) for at, lang, code in sorted(found)]


def commands(block: Block) -> list[str]:
    """A bash block's commands: continued lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", "", block.code)
    return [
        line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]


def matches(command: str, pattern: str) -> bool:
    """`pattern` with `*` standing for any text, every other character itself."""
    return re.fullmatch(".*".join(map(re.escape, pattern.split("*"))), command, re.S) is not None


def listed(command: str) -> str | None:
    """The test (or reason) a command is left to, or None when this runner runs it."""
    for table in (RUN_ELSEWHERE, NOT_RUN):
        for pattern, why in table.items():
            if matches(command, pattern):
                return why
    return None


def environment(cwd: Path) -> dict[str, str]:
    """The page's environment: this interpreter first on PATH, the repository importable, and
    training-row records kept in the page's directory, not the user's cache."""
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "PATH": path,
        "ENSEMBLE_TRAINING_ROWS_DIR": str(cwd / ".training_rows"),
    }


# What every runnable page imports (TensorFlow comes with keras); a page runs after them, as it
# would in a fresh interpreter whose first lines imported them.
PRELOAD = ("numpy", "keras", "sklearn.datasets", "sklearn.model_selection", "sklearn.preprocessing")
PRELOAD += ("combiners", "ensemble")
# Read when used, never at import: a job may set them, all else must be the server's own
# (pytest names the running test in its environment: one server serves every test).
PER_JOB = ("ENSEMBLE_TRAINING_ROWS_DIR", "PYTEST_CURRENT_TEST")

# The server: imports its arguments, answers "ready", then for each job (a JSON line) forks a
# child that takes the job's cwd, env, argv and files, runs the blocks in a fresh `__main__`
# namespace, and exits as `python` would; the server answers the child's exit code.
_SERVER = r"""
import importlib, json, os, signal, sys, traceback
for name in sys.argv[1:]:
    importlib.import_module(name)
print("ready", flush=True)
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:  # what a fresh `python` would have: the job's cwd, env, stdin, stdout, stderr, argv
            os.chdir(job["cwd"])
            os.environ.clear()
            os.environ.update(job["env"])
            for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, job["stdout"], os.O_WRONLY | os.O_CREAT),
                                    (2, job["stderr"], os.O_WRONLY | os.O_CREAT)):
                os.dup2(os.open(path, flags), fd)
            signal.alarm(job["timeout"])
            sys.argv, sys.path[0] = job["argv"], job["path0"]
            if "numpy" in sys.modules:  # seeded anew, as in a fresh interpreter (random is, at fork)
                sys.modules["numpy"].random.seed()
            ns = {"__name__": "__main__", **job["globals"]}
            for block in job["blocks"]:
                exec(compile("\n" * (block["line"] - 1) + block["code"], block["page"], "exec"), ns)
            code = 0
        except SystemExit as stop:  # as python exits: None is 0, an int itself, anything else printed, 1
            code = 0 if stop.code is None else stop.code if isinstance(stop.code, int) else 1
            if not isinstance(stop.code, (int, type(None))):
                print(stop.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    print(json.dumps(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])), flush=True)
"""


class _Server:
    """A server process (`_SERVER`) started with `env`, having imported `preload`."""

    def __init__(self, preload: tuple[str, ...], env: dict[str, str], timeout_s: float):
        self.log = Path(tempfile.mkdtemp(prefix="docs-blocks-")) / "server.log"
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _SERVER, *preload],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                cwd=self.log.parent,  # no stray module where pytest started is imported
                env=env,
                text=True,
            )
        atexit.register(self.process.kill)
        assert self._answer(timeout_s) == "ready", f"the page server failed:\n{self.log.read_text()[-4000:]}"

    def _answer(self, timeout_s: float) -> str:
        assert self.process.stdout is not None
        if not select.select([self.process.stdout], [], [], timeout_s)[0]:
            self.process.kill()
            raise AssertionError(f"the page server gave no answer in {timeout_s:.0f} s")
        return self.process.stdout.readline().strip()

    def run(self, job: dict[str, object], timeout_s: float) -> int:
        """Runs one job in a forked child; its exit code (negative: the signal that ended it)."""
        assert self.process.stdin is not None and self.process.poll() is None
        self.process.stdin.write(json.dumps({**job, "timeout": max(1, round(timeout_s))}) + "\n")
        self.process.stdin.flush()
        return int(self._answer(timeout_s + 30))


_SERVERS: dict[tuple[object, ...], _Server] = {}


def run_python(
    code: list[dict[str, object]],
    cwd: Path,
    env: dict[str, str],
    timeout_s: float,
    *,
    script: str | None = None,
    preload: tuple[str, ...] = PRELOAD,
) -> subprocess.CompletedProcess[str]:
    """Runs `code` (blocks: page, line, code) as `python -c` would in `cwd` with `env`, or as
    `python script` would when `script` names the file it came from, in a child forked from the
    worker's server for `preload` and `env` (started on first use); what `subprocess.run` would
    return."""
    shared = {k: v for k, v in env.items() if k not in PER_JOB}
    key = (preload, tuple(sorted(shared.items())))
    if key not in _SERVERS or _SERVERS[key].process.poll() is not None:
        _SERVERS[key] = _Server(preload, shared, timeout_s)
    files = Path(tempfile.mkdtemp(prefix="docs-blocks-"))
    argv = [script] if script else ["-c"]
    job = {
        "blocks": code,
        "cwd": str(cwd),
        "env": env,
        "stdout": str(files / "out"),
        "stderr": str(files / "err"),
        "argv": argv,
        "path0": os.path.dirname(os.path.abspath(script)) if script else "",  # as python sets sys.path[0]
        "globals": {"__file__": script} if script else {},
    }
    returncode = _SERVERS[key].run(job, timeout_s)
    out, err = ((files / name).read_text() if (files / name).exists() else "" for name in ("out", "err"))
    shutil.rmtree(files, ignore_errors=True)
    return subprocess.CompletedProcess(argv, returncode, out, err)


def run_page(page: str, cwd: Path, timeout_s: float = 600, *, preload: tuple[str, ...] = PRELOAD) -> str:
    """Runs the page's Python in one fresh process (`run_python`), then its bash commands not
    listed; returns what they printed. A failure raises AssertionError naming the page and line."""
    found = blocks(page)
    python = [b.__dict__ for b in found if b.language in ("python", "setup")]
    printed = []
    if python:
        done = run_python(python, cwd, environment(cwd), timeout_s, preload=preload)
        assert done.returncode == 0, f"{page}: its Python failed ({done.returncode}):\n{done.stderr[-4000:]}"
        printed.append(done.stdout)
    for block in (b for b in found if b.language == "bash"):
        for command in commands(block):
            if listed(command) is None:
                done = subprocess.run(
                    ["bash", "-c", command],
                    cwd=cwd,
                    capture_output=True,
                    text=True,
                    timeout=timeout_s,
                    env=environment(cwd),
                )
                assert done.returncode == 0, (
                    f"{page}:{block.line}: {command!r} failed:\n{done.stderr[-4000:]}"
                )
                printed.append(done.stdout)
    return "".join(printed)
