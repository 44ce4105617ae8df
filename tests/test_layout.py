"""The house's layout: imports follow the data flow. No two modules of `ensemble/` or
`combiners/` import each other, directly or round a circle, at module level, and no module of
`ensemble/fitting/` hides a circle behind an import inside a function (`fit` dispatches to
`fit_levels`, which takes the fit to run as an argument; `calibrate_member` and
`fit_out_of_fold`, built on `fit`, live beside or above it)."""

from __future__ import annotations

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _modules() -> dict[str, str]:
    """{dotted name: path} of every module of the two packages (a package under its own name)."""
    found = {}
    for package in ("ensemble", "combiners"):
        for folder, _, files in os.walk(os.path.join(ROOT, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                    found[dotted.removesuffix(".__init__")] = path
    return found


def _imports(path: str, modules: dict[str, str]) -> tuple[set[str], set[str]]:
    """The project modules `path` imports at module level, and those it imports anywhere else
    (inside a function, or under `if TYPE_CHECKING:`, which never runs)."""
    top, late = set(), set()
    with open(path) as f:
        tree = ast.parse(f.read())
    module_level = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        (top if id(node) in module_level else late).update(n for n in names if n in modules)
    return top, late


def _type_checking_only(path: str) -> set[str]:
    """The project modules imported under `if TYPE_CHECKING:` in `path`."""
    with open(path) as f:
        tree = ast.parse(f.read())
    names = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom) and inner.module:
                    names.add(inner.module)
    return names


def test_module_level_imports_form_no_circle():
    modules = _modules()
    packages = {name for name, path in modules.items() if path.endswith("__init__.py")}
    # A package's __init__ only gathers its modules' names: its edges are not the flow.
    edges = {
        name: {t for t in _imports(path, modules)[0] if t not in packages}
        for name, path in modules.items()
        if name not in packages
    }
    state: dict[str, str] = {}
    circles: list[list[str]] = []

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for target in sorted(edges.get(name, ())):
            if state.get(target) == "open":
                circles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[name] = "done"

    for name in sorted(edges):
        if name not in state:
            visit(name, [name])
    assert not circles, circles


def test_fitting_hides_no_circle_inside_a_function():
    modules = _modules()
    late = {}
    for name, path in modules.items():
        if name.startswith("ensemble.fitting."):
            hidden = _imports(path, modules)[1] - _type_checking_only(path)
            if hidden:
                late[name] = sorted(hidden)
    assert not late, late


def test_the_fitting_pipeline_takes_nothing_from_evaluate_but_its_metrics():
    """What the fit chooses on its rows (the member one would ship alone, the noise variance)
    belongs to `fitting/`; `evaluate/` measures it afterwards."""
    modules = _modules()
    for name, path in modules.items():
        if name.startswith("ensemble.fitting"):
            taken = {t for t in _imports(path, modules)[0] if t.startswith("ensemble.evaluate")}
            assert taken <= {"ensemble.evaluate.metrics"}, (name, taken)
