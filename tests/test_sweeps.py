"""Sweeps in parallel with Hydra's own joblib launcher: each job in its own process, the same
results as one after another, and the comparison at the end."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pytest
import yaml

from tests.conftest import compose_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_a_sweep_runs_in_parallel_on_the_joblib_launcher(wine_overrides, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    from experiments.train_members import run as train_members

    # Two of the zoo's members (a .keras file, a SavedModel): each job loads two, not four; what is
    # asserted is the launcher's processes, their agreement and the comparison, not the members.
    overrides = [*wine_overrides, "~zoo.members.deep_mlp", "~zoo.members.wide"]
    train_members(compose_config(*overrides))  # once, so the jobs do not race to train it
    sweep = tmp_path / "sweep"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.run",
            "-m",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            "combiner=mean,weighted",
            "export=none",
            *overrides,
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    jobs = sorted(glob.glob(str(sweep / "*" / "metrics.json")))
    assert len(jobs) == 2
    results = []
    for path in jobs:
        with open(path) as f:
            results.append(json.load(f))
    by_combiner = {r["fit"]["method"] if r["fit"] else "none": r for r in results}
    assert set(by_combiner) == {"none", "optimal"}
    # Every job loaded the same members: their test metrics agree to the last digit.
    assert results[0]["members"] == results[1]["members"]
    # The plain mean's ensemble is the mean of its members, as that job measured it itself.
    assert by_combiner["none"]["ensemble"]["nll"] == pytest.approx(
        by_combiner["none"]["mean"]["nll"], abs=1e-6
    )
    with open(os.path.join(os.path.dirname(jobs[0]), ".hydra", "hydra.yaml")) as f:
        launcher = yaml.safe_load(f)
    assert "JoblibLauncher" in launcher["hydra"]["launcher"]["_target_"]
    table = (sweep / "comparison.md").read_text()
    assert "| combiner=mean |" in table and "| combiner=weighted |" in table
