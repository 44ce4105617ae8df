"""Every code block of README.md and docs/ runs (tests/docs_blocks.py): each page's Python in
one fresh process (forked from a server that imported TensorFlow and ran nothing), its bash
commands after it; no page leaves state to the next; the commands left to other tests name tests
that exist and commands that are still on a page."""

from __future__ import annotations

import ast
import json
import re

import pytest

from tests.conftest import compose_config
from tests.docs_blocks import (
    NOT_RUN,
    PAGES_RUN_ELSEWHERE,
    PER_JOB,
    ROOT,
    RUN_ELSEWHERE,
    blocks,
    commands,
    environment,
    listed,
    matches,
    pages,
    run_page,
    run_python,
)


def every_command() -> list[str]:
    return [c for page in pages() for b in blocks(page) if b.language == "bash" for c in commands(b)]


def runnable(page: str) -> bool:
    found = blocks(page)
    return page not in PAGES_RUN_ELSEWHERE and any(
        b.language in ("python", "setup")
        or (b.language == "bash" and any(c not in listed_commands() for c in commands(b)))
        for b in found
    )


def listed_commands() -> set[str]:
    return {c for c in every_command() if listed(c) is not None}


def test_every_listed_command_is_on_a_page():
    found = every_command()
    stale = [p for p in [*RUN_ELSEWHERE, *NOT_RUN] if not any(matches(c, p) for c in found)]
    assert not stale, f"listed in tests/docs_blocks.py but on no page: {stale}"


@pytest.mark.parametrize("test", sorted({*RUN_ELSEWHERE.values(), *PAGES_RUN_ELSEWHERE.values()}))
def test_every_test_a_command_is_left_to_exists(test):
    path, name = test.split("::")
    tree = ast.parse((ROOT / path).read_text())
    assert name in {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}, test


def test_pages_hold_code_and_the_runner_reads_it():
    assert "docs/fitting.md" in pages() and pages()[0] == "README.md"
    languages = {b.language for page in pages() for b in blocks(page)}
    assert languages == {"python", "setup", "bash"}
    assert all(b.code.strip() for page in pages() for b in blocks(page))


def test_a_page_runs_in_order_and_a_failure_names_its_line(tmp_path):
    """A page's blocks share one interpreter (setup first, then what builds on it), a bash
    command runs after them in the same directory, and a failing block is named by line. The
    runner is the one every page uses, with nothing preloaded: no TensorFlow, so it stays quick."""
    page = tmp_path / "page.md"
    page.write_text(
        "<!-- setup\nvalue = 41\n-->\n\n```python\nvalue += 1\nopen('out.txt', 'w').write(str(value))\n```\n\n"
        "```bash\ncat out.txt\n```\n"
    )
    assert run_page(str(page), tmp_path, preload=()) == "42"
    page.write_text("```python\nok = 1\n```\n\ntext\n\n```python\nraise ValueError('no')\n```\n")
    with pytest.raises(AssertionError, match=rf'File "{re.escape(str(page))}", line 8'):
        run_page(str(page), tmp_path, preload=())
    page.write_text("```bash\nfalse\n```\n")
    with pytest.raises(AssertionError, match="'false' failed"):
        run_page(str(page), tmp_path, preload=())


def test_a_page_leaves_nothing_to_the_next(tmp_path):
    """Pages run one after another in one server's children: what one changes (a global, env,
    cwd, a module it wrote and imported, the modules it imported, sys.exit) the next never sees."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    (first / "page.md").write_text(
        "```python\nimport os, sys, colorsys\nopen('usermod.py', 'w').write('x = 1')\nimport usermod\n"
        "os.environ['LEFT'] = '1'\nos.chdir('/')\nleft = 1\nsys.exit(0)\n```\n"
    )
    (second / "page.md").write_text(
        "```python\nimport os, sys\nassert 'usermod' not in sys.modules and 'colorsys' not in sys.modules\n"
        "assert 'LEFT' not in os.environ and 'left' not in globals()\nassert os.getcwd() == "
        f"{str(second)!r}\n```\n"
    )
    run_page(str(first / "page.md"), first, preload=())
    assert (first / "usermod.py").is_file()
    run_page(str(second / "page.md"), second, preload=())


# What a page could leave behind in the interpreter the next page runs in: Keras' global state
# (seeds, uids, dtype policy), TensorFlow's runtime (started: tf.config refuses changes), the
# modules imported, logging, cwd and env. Printed by a child of the pages' own server.
FRESH = """
import json, logging, os, sys
import keras
import tensorflow as tf
from keras.src.backend.common import global_state
uid = keras.backend.get_uid("dense")  # 1: no Dense layer was made in this interpreter
tf.config.threading.set_intra_op_parallelism_threads(1)  # raises once TF's runtime has started
state = {"uid": uid, "keras": sorted(vars(global_state.GLOBAL_STATE_TRACKER)), "modules": sorted(sys.modules),
         "policy": keras.config.dtype_policy().name, "logging": [logging.getLogger().level, tf.get_logger().level,
         len(logging.getLogger().handlers)], "cwd": os.getcwd(), "env": sorted(os.environ.items())}
print(json.dumps(state))
"""


def fresh_state(cwd) -> dict:
    cwd.mkdir()
    done = run_python([{"page": "probe", "line": 1, "code": FRESH}], cwd, environment(cwd), 300)
    assert done.returncode == 0, done.stderr[-4000:]
    state = json.loads(done.stdout)
    assert state["uid"] == 1 and state["policy"] == "float32" and state["cwd"] == str(cwd), state
    return {**state, "cwd": None, "env": [kv for kv in state["env"] if kv[0] not in PER_JOB]}


def test_the_add_a_member_command_composes_a_second_mlp():
    (command,) = {c for c in every_command() if "zoo.members.mlp2" in c}
    cfg = compose_config(*command.split()[3:])
    mlp, mlp2 = cfg.zoo.members.mlp, cfg.zoo.members.mlp2
    assert mlp2.build == mlp.build and mlp2.format == mlp.format
    assert (mlp.train.seed, mlp2.train.seed) == (1, 7)


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in pages() if runnable(p)])
def test_page_runs(page, tmp_path):
    """The page runs, and the interpreter the next page gets is as fresh after it as before."""
    before = fresh_state(tmp_path / "before")
    (tmp_path / "page").mkdir()
    run_page(page, tmp_path / "page")
    assert fresh_state(tmp_path / "after") == before, f"{page} left state to the next page"
