"""The docs site: `mkdocs build --strict` passes (every page, link and API reference from the
docstrings), and the configuration page describes every group, option and key under conf/."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.docs_blocks import ROOT, blocks, pages

CONFIGURATION = ROOT / "docs" / "configuration.md"
PRIMARY = ("config.yaml", "serve.yaml", "train_ensemble.yaml", "benchmark.yaml")
# Hydra's own keys, and keys that only pick a builder: what they say is the option itself.
NOT_OPTIONS = {"defaults", "_target_", "_partial_", "_convert_"}


def section(heading: str) -> str:
    """The text under `### heading` on the configuration page, up to the next heading."""
    text = CONFIGURATION.read_text()
    match = re.search(rf"^### {re.escape(heading)}\n(.*?)(?=^#{{2,3}} |\Z)", text, re.M | re.S)
    assert match, f"docs/configuration.md has no '### {heading}' section"
    return match.group(1)


def keys(path: Path) -> set[str]:
    loaded = yaml.safe_load(path.read_text()) or {}
    return {str(key) for key in loaded} - NOT_OPTIONS


def groups() -> dict[str, list[Path]]:
    conf = ROOT / "conf"
    found: dict[str, list[Path]] = {}
    for path in sorted(conf.glob("*/*.yaml")):
        found.setdefault(path.parent.name, []).append(path)
    return found


def test_groups_are_found():
    assert {"data", "combiner", "fit", "regime", "export", "serve"} <= set(groups())


@pytest.mark.parametrize("group", sorted(groups()))
def test_every_option_and_key_of_each_group_is_described(group):
    text = section(f"`{group}`")
    missing = [f"option {p.stem}" for p in groups()[group] if f"`{p.stem}`" not in text]
    missing += sorted({f"key {k}" for p in groups()[group] for k in keys(p) if f"`{k}`" not in text})
    assert not missing, f"docs/configuration.md, group {group}: not described: {missing}"


@pytest.mark.parametrize("name", PRIMARY)
def test_every_key_of_each_primary_config_is_described(name):
    assert sorted(p.name for p in (ROOT / "conf").glob("*.yaml")) == sorted(PRIMARY)
    text = section(f"`{name}`")
    missing = sorted(k for k in keys(ROOT / "conf" / name) if f"`{k}`" not in text)
    assert not missing, f"docs/configuration.md, {name}: keys not described: {missing}"


def test_every_experiment_script_is_listed():
    scripts = [p.stem for p in sorted((ROOT / "experiments").glob("*.py")) if "@hydra.main" in p.read_text()]
    assert "run" in scripts
    text = CONFIGURATION.read_text()
    missing = [s for s in scripts if f"`python -m experiments.{s}`" not in text]
    assert not missing, f"docs/configuration.md lists no row for: {missing}"


def test_a_key_missing_from_the_page_is_caught(tmp_path, monkeypatch):
    """The check can fail: a page without the `seed` key of `data` is refused."""
    page = tmp_path / "configuration.md"
    page.write_text(CONFIGURATION.read_text().replace("`seed`", "seed"))
    monkeypatch.setattr(sys.modules[__name__], "CONFIGURATION", page)
    with pytest.raises(AssertionError, match="key seed"):
        test_every_option_and_key_of_each_group_is_described("data")


@pytest.mark.slow
def test_mkdocs_build_strict(tmp_path):
    if importlib.util.find_spec("mkdocs") is None:
        pytest.fail('mkdocs is not installed: python -m pip install -e ".[docs]"')
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    site = tmp_path / "site"
    assert (site / "index.html").is_file() and (site / "configuration" / "index.html").is_file()
    # Hidden setup blocks stay HTML comments on the built pages: run by the tests, never shown.
    for page in pages():
        if page.startswith("docs/"):
            setups = sum(b.language == "setup" for b in blocks(page))
            built = site / page.removeprefix("docs/").removesuffix(".md") / "index.html"
            if page == "docs/index.md":
                built = site / "index.html"
            assert built.read_text().count("<!-- setup") == setups, page
    # The API reference is generated from the docstrings: load_member's own text is there.
    members = (site / "api" / "members" / "index.html").read_text()
    assert "ensemble.members.load_member" in members and "safe_mode" in members
