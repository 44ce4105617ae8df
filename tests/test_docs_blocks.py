"""Every code block of README.md and docs/ runs (tests/docs_blocks.py): each page's Python in
one fresh interpreter, its bash commands after it; the commands left to other tests name tests
that exist and commands that are still on a page."""

from __future__ import annotations

import ast
import re

import pytest

from tests.conftest import compose_config
from tests.docs_blocks import (
    NOT_RUN,
    PAGES_RUN_ELSEWHERE,
    ROOT,
    RUN_ELSEWHERE,
    blocks,
    commands,
    listed,
    matches,
    pages,
    run_page,
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
    command runs after them in the same directory, and a failing block is named by line."""
    page = tmp_path / "page.md"
    page.write_text(
        "<!-- setup\nvalue = 41\n-->\n\n```python\nvalue += 1\nopen('out.txt', 'w').write(str(value))\n```\n\n"
        "```bash\ncat out.txt\n```\n"
    )
    assert run_page(str(page), tmp_path) == "42"
    page.write_text("```python\nok = 1\n```\n\ntext\n\n```python\nraise ValueError('no')\n```\n")
    with pytest.raises(AssertionError, match=rf'File "{re.escape(str(page))}", line 8'):
        run_page(str(page), tmp_path)
    page.write_text("```bash\nfalse\n```\n")
    with pytest.raises(AssertionError, match="'false' failed"):
        run_page(str(page), tmp_path)


def test_the_add_a_member_command_composes_a_second_mlp():
    (command,) = {c for c in every_command() if "zoo.members.mlp2" in c}
    cfg = compose_config(*command.split()[3:])
    mlp, mlp2 = cfg.zoo.members.mlp, cfg.zoo.members.mlp2
    assert mlp2.build == mlp.build and mlp2.format == mlp.format
    assert (mlp.train.seed, mlp2.train.seed) == (1, 7)


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in pages() if runnable(p)])
def test_page_runs(page, tmp_path):
    run_page(page, tmp_path)
