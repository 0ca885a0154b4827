"""Layers point one way and no module imports itself back (every module parsed with ``ast``; nothing is imported).

The layers, bottom first (an import may only point down, or stay inside its own part)::

    utils, config.py -> data -> models, losses, mapping -> training | evaluation -> pipeline -> ros -> demo
    -> schemas (the index of every config schema) -> cli

Parts on the same layer do not import each other, except the pairs in :data:`ALLOWED_ACROSS`. Every
import statement counts: module level, inside functions and under ``TYPE_CHECKING``; so do
``importlib.import_module("distilvpr_ros....")`` calls with a literal name.
"""

from __future__ import annotations

import ast
import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "distilvpr_ros"

#: Layer of each top-level part of the package (module or sub-package); "" is the package's ``__init__``.
LAYERS: dict[str, int] = {
    "": 0, "utils": 0, "config": 0,
    "data": 1,
    "models": 2, "losses": 2, "mapping": 2, "verification": 2,
    "training": 3, "evaluation": 3,
    "pipeline": 4, "slam": 4,
    "ros": 5,
    "demo": 6,
    "schemas": 7,
    "cli": 8,
}
#: (importer prefix, imported prefix) allowed between parts of the same layer. Training's validation uses the
#: pure metric functions (one definition each); evaluation never imports training.
ALLOWED_ACROSS: set[tuple[str, str]] = {
    (f"{PACKAGE}.training", f"{PACKAGE}.evaluation.metrics"),
    # slam-eval builds a map (the pipeline's offline builder) before it optimises the pose graph
    (f"{PACKAGE}.slam.evaluate", f"{PACKAGE}.pipeline"),
    # camera verification's CNN descriptors sample the student's pretrained image trunk (one Lite0 definition)
    (f"{PACKAGE}.verification.cnn_descriptors", f"{PACKAGE}.models.image"),
}


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported module (the deepest module of the package the statement names)
    path: Path
    line: int

    def where(self, root: Path) -> str:
        return f"{self.path.relative_to(root)}:{self.line}"


def package_modules(root: Path, package: str = PACKAGE) -> dict[str, tuple[Path, bool]]:
    """``{module name: (file, is_package)}`` of every ``.py`` file of the package under ``root``."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        modules[".".join(parts)] = (path, is_package)
    return modules


def _nearest_module(name: str, modules: dict) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(root: Path, package: str = PACKAGE) -> list[Import]:
    """Every import of a package module by a package module, wherever the statement is."""
    modules = package_modules(root, package)
    edges = []
    for name, (path, is_package) in modules.items():
        here = name if is_package else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                # ``from pkg import sub`` imports the module pkg.sub; ``from mod import name`` imports mod
                targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in modules else module
                           for alias in node.names]
            elif isinstance(node, ast.Call) and "import_module" in (getattr(node.func, "attr", None),
                                                                    getattr(node.func, "id", None)):
                if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                    targets = [node.args[0].value]
            for target in targets:
                if target == package or target.startswith(package + "."):
                    resolved = _nearest_module(target, modules)
                    if resolved is not None and resolved != name:
                        edges.append(Import(name, resolved, path, node.lineno))
    return edges


def part_of(module: str, package: str = PACKAGE) -> str:
    """The top-level part (``data``, ``cli``, ...) a module belongs to."""
    return module[len(package) + 1:].split(".")[0] if module != package else ""


def layer_violations(edges: list[Import], root: Path, package: str = PACKAGE) -> list[str]:
    """One message per import that points up, or sideways without an allowance."""
    problems, unknown = [], set()
    for edge in edges:
        source, target = part_of(edge.source, package), part_of(edge.target, package)
        if source == target:
            continue
        for part in (source, target):
            if part not in LAYERS and part not in unknown:
                unknown.add(part)
                problems.append(f"{edge.where(root)}: {part!r} has no layer in test_layers.LAYERS")
        if source not in LAYERS or target not in LAYERS:
            continue
        allowed = any(edge.source.startswith(a) and (edge.target + ".").startswith(b + ".")
                      for a, b in ALLOWED_ACROSS)
        if LAYERS[target] > LAYERS[source] or (LAYERS[target] == LAYERS[source] and not allowed):
            problems.append(f"{edge.where(root)}: {edge.source} imports {edge.target}: {source or package} "
                            f"(layer {LAYERS[source]}) must not import {target or package} (layer {LAYERS[target]})")
    return problems


def import_cycles(edges: list[Import], root: Path) -> list[str]:
    """One message per strongly connected group of modules, naming one cycle and its import lines."""
    graph: dict[str, dict[str, Import]] = defaultdict(dict)
    for edge in edges:
        graph[edge.source].setdefault(edge.target, edge)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    messages = []
    for group in groups:
        members = set(group)
        # walk inside the group from its first module until a module repeats: that is one cycle
        path, seen = [group[0]], {group[0]: 0}
        while True:
            nxt = next(w for w in sorted(graph[path[-1]]) if w in members)
            if nxt in seen:
                cycle = path[seen[nxt]:] + [nxt]
                break
            seen[nxt] = len(path)
            path.append(nxt)
        steps = [f"{graph[a][b].where(root)} ({a} -> {b})" for a, b in zip(cycle, cycle[1:])]
        messages.append(f"import cycle among {group}: " + "; ".join(steps))
    return messages


def test_no_import_cycles():
    problems = import_cycles(import_graph(ROOT), ROOT)
    assert not problems, "\n".join(problems)


def test_layers_point_one_way():
    problems = layer_violations(import_graph(ROOT), ROOT)
    assert not problems, "\n".join(problems)


def test_every_part_has_a_layer():
    parts = {part_of(name) for name in package_modules(ROOT)}
    assert parts <= set(LAYERS), f"parts without a layer: {sorted(parts - set(LAYERS))}"


# --- the checks themselves fail on what they forbid ----------------------------------------------------


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / PACKAGE / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.fixture
def planted(tmp_path):
    """A copy of the package to plant bad imports into."""
    shutil.copytree(ROOT / PACKAGE, tmp_path / PACKAGE, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def _new_problems(check, planted: Path) -> list[str]:
    """What ``check(edges, root)`` reports on the planted copy and not on the package itself."""
    before = set(check(import_graph(ROOT), ROOT))
    return [p for p in check(import_graph(planted), planted) if p not in before]


def test_planted_cycle_is_found_with_its_lines(planted):
    # the cycle restructure-base removed: tasks -> trainer (type-checking only) -> tasks, and a function-level one
    _write(planted, {
        "training/tasks/base.py": (planted / PACKAGE / "training/tasks/base.py").read_text()
        + "\nif TYPE_CHECKING:\n    from ..trainer import fit\n",
        "data/sources.py": (planted / PACKAGE / "data/sources.py").read_text()
        + "\n\ndef _late():\n    from .readers import planted_reader  # noqa\n",
        "data/readers/planted_reader.py": "def f():\n    from ..sources import open_sequences\n",
    })
    problems = _new_problems(import_cycles, planted)
    text = "\n".join(problems)
    assert len(problems) == 2, text
    assert "distilvpr_ros.training.trainer -> distilvpr_ros.training.tasks" in text
    assert "distilvpr_ros/training/tasks/base.py" in text
    assert "distilvpr_ros/data/readers/planted_reader.py:2" in text


def test_planted_upward_and_sideways_imports_are_named(planted):
    _write(planted, {
        "data/readers/planted.py": "from ...evaluation.metrics import recall_at_n\n",
        "evaluation/planted.py": "def f():\n    import distilvpr_ros.training.trainer\n",
        "models/planted.py": "from distilvpr_ros.mapping import matcher\n",
        "mapping/planted.py": "import importlib\n\n\ndef f():\n"
                              "    importlib.import_module('distilvpr_ros.pipeline.localizer')\n",
    })
    problems = _new_problems(layer_violations, planted)
    assert len(problems) == 4, "\n".join(problems)
    assert any("mapping/planted.py:5" in p and "must not import pipeline" in p for p in problems)
    text = "\n".join(problems)
    assert ("distilvpr_ros/data/readers/planted.py:1: distilvpr_ros.data.readers.planted imports "
            "distilvpr_ros.evaluation.metrics: data (layer 1) must not import evaluation (layer 3)") in text
    assert "distilvpr_ros/evaluation/planted.py:2" in text and "must not import training" in text
    assert "models/planted.py:1" in text and "mapping" in text


def test_allowed_import_is_one_way(planted):
    # training may read evaluation's metric functions; nothing else of evaluation, and never the reverse
    _write(planted, {
        "training/planted.py": "from ..evaluation.metrics import recall_at_n\nfrom ..evaluation import evaluate\n",
        "evaluation/planted.py": "from ..training.data import open_split\n",
    })
    problems = _new_problems(layer_violations, planted)
    assert len(problems) == 2, "\n".join(problems)
    assert any("training/planted.py:2" in p for p in problems)
    assert any("evaluation/planted.py:1" in p for p in problems)
