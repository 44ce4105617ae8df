"""The code blocks of README.md and docs/**/*.md, and how each is run.

A page's ```python blocks, and its hidden setup blocks (`<!-- setup` ... `-->`, Python code in
an HTML comment: run, never shown), run in the order they appear in ONE fresh interpreter, so a
page may build on its earlier blocks; cwd is a fresh directory, the repository is on
PYTHONPATH. Then every command of the page's ```bash blocks runs in that directory with bash,
unless `RUN_ELSEWHERE` names the test that runs it (a server, or work of minutes) or `NOT_RUN`
says why nothing here can (another machine's tools). A bash command in neither that this
runner cannot run fails its page; see CONTRIBUTING.md.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
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
    "python -m experiments.run +experiment=breast_cancer_seeds": "tests/test_config.py::test_experiment_option_composes_every_setting_of_its_sweep",
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


_DRIVER = """
import json, sys
ns = {"__name__": "__main__"}
for block in json.load(open(sys.argv[1])):
    exec(compile("\\n" * (block["line"] - 1) + block["code"], block["page"], "exec"), ns)
"""


def run_page(page: str, cwd: Path, timeout_s: float = 600) -> str:
    """Runs the page's Python in one fresh interpreter, then its bash commands not listed;
    returns what they printed. A failure raises AssertionError naming the page and line."""
    found = blocks(page)
    python = [b.__dict__ for b in found if b.language in ("python", "setup")]
    printed = []
    if python:
        (cwd / ".blocks.json").write_text(json.dumps(python))
        done = subprocess.run(
            [sys.executable, "-c", _DRIVER, str(cwd / ".blocks.json")],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=environment(cwd),
        )
        assert done.returncode == 0, f"{page}: its Python failed:\n{done.stderr[-4000:]}"
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
