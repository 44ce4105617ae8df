"""The README's promises: its quick start is what CI runs, and the training-script example (on
docs/training-script.md since the README became an overview) runs as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from tests.docs_blocks import environment, pages, run_python

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme() -> str:
    """README.md, then every page of docs/, each ending at a heading of its own: the examples
    the tests read by their `## title` heading are found wherever the text moved."""
    texts = []
    for page in pages():
        with open(os.path.join(ROOT, page)) as f:
            texts.append(f"{f.read()}\n## (end of {page})\n")
    return "".join(texts)


def section_code(title: str, language: str = "python") -> str:
    """The first fenced `language` block under the `## title` heading (README or docs page)."""
    section = readme().split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(rf"```{language}\n(.*?)```", section, re.S)
    assert match, f"no {language} block under '## {title}'"
    return match.group(1)


def test_quick_start_is_two_commands_and_ci_runs_the_second():
    block = section_code("Quick start", "bash").strip().splitlines()
    assert len(block) == 2
    assert "experiments.run" in block[0]
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        assert block[1] in f.read()


@pytest.mark.slow
def test_training_script_example_runs_as_written(tmp_path):
    """Run as a user would run a training script: twice in one directory, the same both times.
    The first run is `python example.py` itself; the second, which once failed on what the first
    left on disk, runs the same file as `python` would (its argv, sys.path, `__main__`, cwd and
    env) in a fresh process forked from the docs runner's server, which spares it importing
    TensorFlow again and shares nothing else with it (tests/docs_blocks.py)."""
    script = tmp_path / "example.py"
    script.write_text(section_code("In a training script"))
    env = environment(tmp_path) | {"ENSEMBLE_TRAINING_ROWS_DIR": str(tmp_path / "records")}  # not the user's
    for run in ("first", "second"):
        if run == "first":
            done = subprocess.run(
                [sys.executable, str(script)],
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=600,
                env=env,
            )
        else:
            code = [{"page": str(script), "line": 1, "code": script.read_text()}]
            done = run_python(code, tmp_path, env, 600, script=str(script))
        assert done.returncode == 0, (run, done.stderr[-4000:])
        out = done.stdout
        assert "refused: Rows given to fit the combiner trained member(s)" in out, run
        assert re.search(r"^sklearn 44 rows; ship alone: \w+$", out, re.M), run
        assert re.search(r"^oof \{'small': [\d.e-]+, 'medium': [\d.e-]+, 'large': [\d.e-]+\}$", out, re.M), (
            run
        )
        for name in ("small", "medium", "large"):  # each member file carries its training-row record
            assert (tmp_path / f"{name}.keras.training_rows.npy").is_file(), run
    # The export stands alone: a fresh process with TensorFlow only, no member file, answers
    # with probabilities.
    for name in ("small", "medium", "large"):
        os.remove(tmp_path / f"{name}.keras")
    probe = (
        "import numpy as np, tensorflow as tf\n"
        "from sklearn.datasets import load_wine\n"
        "x = load_wine(return_X_y=True)[0][:5].astype('float32')\n"
        f"sig = tf.saved_model.load({str(tmp_path / 'export')!r}).signatures['serving_default']\n"
        "print(sig(features=tf.constant(x))['prediction'].numpy().sum(1).tolist())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    sums = np.array(eval(done.stdout.strip().splitlines()[-1]))
    np.testing.assert_allclose(sums, 1.0, atol=1e-5)


def test_the_readme_is_an_overview_that_links_into_the_docs():
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    assert text.count("\n") <= 250, f"README.md has {text.count(chr(10))} lines; the guide lives in docs/"
    links = set(re.findall(r"\]\((docs/[\w./-]+\.md)", text))
    guide = {page for page in pages() if page.startswith("docs/") and not page.startswith("docs/api/")}
    assert guide <= links, f"docs pages the README does not link: {sorted(guide - links)}"
    assert all(os.path.isfile(os.path.join(ROOT, link)) for link in links)
