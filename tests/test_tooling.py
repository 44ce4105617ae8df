"""The code style is enforced, not hoped for: ruff's lint and format (pyproject.toml)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff(command):
    pytest.importorskip("ruff")
    done = subprocess.run(
        [sys.executable, "-m", "ruff", *command, "."], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]


def test_no_file_passes_300_lines():
    long = {}
    for package in ("ensemble", "combiners", "experiments"):
        for folder, _, files in os.walk(os.path.join(ROOT, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    with open(path) as f:
                        lines = sum(1 for _ in f)
                    if lines > 300:
                        long[os.path.relpath(path, ROOT)] = lines
    assert not long, f"files over 300 lines: {long}"


def test_scripts_are_thin():
    scripts = (
        "run",
        "train_members",
        "train_meta",
        "compose",
        "benchmark",
        "serve",
        "serve_registry",
        "train_ensemble",
    )
    lengths = {}
    for script in scripts:
        with open(os.path.join(ROOT, "experiments", f"{script}.py")) as f:
            lengths[script] = sum(1 for _ in f)
    assert max(lengths.values()) <= 65, lengths
