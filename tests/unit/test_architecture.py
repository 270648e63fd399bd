"""The house rules of workflow/, checked on the real tree: layer contracts (import-linter) that
match the real import graph, no import cycles, no room over 450 lines, imports inside functions
only to defer a heavy import (with a comment saying so), no private name used across modules,
steps thin, and the steps started by name (runpy, subprocess) listed in one place."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import grimp

from workflow.core.steps import STARTED_BY_NAME

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "workflow"
MAX_LINES = 450
STEPS = ("download", "tokenize", "launch", "train", "warm", "stats", "gates", "tables", "plots", "compute_plan",
         "summary", "sample", "comm_report", "sweep", "status", "run_script")


def test_import_linter_contracts_are_kept():
    """pyproject.toml's contracts: layers import downward only; what Snakemake imports is torch-free."""
    lint = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run([str(lint)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout and "2 kept" in out.stdout, out.stdout[-2000:]


def test_no_import_cycles():
    """No module imports itself back through others (grimp's graph, function-level imports included)."""
    graph = grimp.build_graph("workflow", include_external_packages=False)
    modules = sorted(graph.modules)
    cycles = []
    for module in modules:
        for imported in graph.find_modules_directly_imported_by(module):
            if imported != module and graph.chain_exists(importer=imported, imported=module):
                cycles.append((module, imported))
    # a package's __init__ that imports its own submodules is not a cycle of meaning
    cycles = [(a, b) for a, b in cycles if not (b.startswith(a + ".") or a.startswith(b + "."))]
    assert not cycles, cycles[:10]


def test_no_file_over_450_lines():
    sizes = {str(p.relative_to(REPO)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    too_big = {p: n for p, n in sizes.items() if n > MAX_LINES}
    assert not too_big, too_big


def test_imports_inside_functions_only_defer_heavy_imports():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        source = path.read_text()
        lines = source.splitlines()
        tree = ast.parse(source)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    if isinstance(inner, (ast.Import, ast.ImportFrom)):
                        text = " ".join(lines[inner.lineno - 1: inner.end_lineno])
                        if "deferred heavy import" not in text:
                            offenders.append(f"{path.relative_to(REPO)}:{inner.lineno}: {text.strip()}")
    assert not offenders, "\n".join(offenders)


def test_steps_are_on_top_and_the_library_in_folders():
    """The top level of workflow/ holds only the steps (python -m workflow.<step>)."""
    top = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
    assert top == sorted(STEPS), top
    for step in STEPS:
        tree = ast.parse((PACKAGE / f"{step}.py").read_text())
        functions = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
        assert "main" in functions, step
        assert len((PACKAGE / f"{step}.py").read_text().splitlines()) <= 150, f"workflow/{step}.py is not thin"


def _layers() -> list[list[str]]:
    with open(REPO / "pyproject.toml", "rb") as handle:
        contracts = tomllib.load(handle)["tool"]["importlinter"]["contracts"]
    (layers,) = [c["layers"] for c in contracts if c["type"] == "layers"]
    return [[name.strip() for name in layer.split("|")] for layer in layers]


def _package(module: str, names: set[str]) -> str | None:
    return next((n for n in names if module == n or module.startswith(n + ".")), None)


def test_every_layer_boundary_is_one_the_code_uses():
    """Layers are the real graph, not a chain nothing uses: each layer of the library imports the
    layer right below it (steps: some step imports it), so no boundary forbids an import for no
    reason; siblings ("|") are independent, which import-linter checks."""
    graph = grimp.build_graph("workflow", include_external_packages=False)
    layers = _layers()
    for upper, lower in zip(layers, layers[1:]):
        uppers, lowers = set(upper), set(lower)
        used = {(_package(m, uppers), _package(i, lowers)) for m in graph.modules if _package(m, uppers)
                for i in graph.find_modules_directly_imported_by(m) if _package(i, lowers)}
        assert used, f"no module of {upper} imports one of {lower}: merge or reorder these layers"
    declared = {name for layer in layers for name in layer}
    top = {f"workflow.{p.stem}" for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    folders = {f"workflow.{p.name}" for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert top | folders == declared, sorted((top | folders) ^ declared)


def _private_imports(path: Path, source: str) -> list[str]:
    """``from workflow.x import _name`` and ``workflow_module._name`` in one file."""
    found = []
    tree = ast.parse(source)
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("workflow"):
            found += [f"{path}:{node.lineno}: from {node.module} import {a.name}" for a in node.names
                      if a.name.startswith("_") and not a.name.startswith("__")]
            modules |= {a.asname or a.name for a in node.names}
        elif isinstance(node, ast.Import):
            modules |= {a.asname or a.name.split(".")[0] for a in node.names if a.name.startswith("workflow")}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            base = node.value
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name) and base.id in modules:
                found.append(f"{path}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_private_name_is_used_across_modules():
    """A name with a leading underscore belongs to its module: another module (library, rule,
    benchmark or test) that needs it gets a public name instead."""
    offenders = []
    for path in [*PACKAGE.rglob("*.py"), *(REPO / "tests").rglob("*.py"), *(REPO / "bench").glob("*.py")]:
        offenders += _private_imports(path.relative_to(REPO), path.read_text())
    for path in [REPO / "Snakefile", *(REPO / "rules").glob("*.smk")]:
        for match in re.finditer(r"^from (workflow[\w.]*) import (\([^)]*\)|[^\n]*)", path.read_text(), re.M):
            names = [n.strip().split(" as ")[0] for n in re.split(r"[,\n]", match.group(2).strip("()"))]
            offenders += [f"{path.relative_to(REPO)}: from {match.group(1)} import {n}" for n in names
                          if n.startswith("_") and not n.startswith("__")]
    assert not offenders, "\n".join(offenders)
    assert _private_imports(Path("x.py"), "from workflow.a import _b\nimport workflow.c\nworkflow.c._d()\n") == [
        "x.py:1: from workflow.a import _b", "x.py:3: workflow.c._d"]


def test_steps_started_by_name_are_listed_in_one_place_and_are_steps():
    """``python -m <step>`` started through runpy / subprocess (an edge import-linter cannot see):
    each name of workflow.core.steps is a step, and no other module spells a step's name."""
    for name in STARTED_BY_NAME:
        package, _, step = name.partition(".")
        assert package == "workflow" and step in STEPS, name
        source = (PACKAGE / f"{step}.py").read_text()
        assert 'if __name__ == "__main__":' in source, f"{name} does not run as python -m {name}"
    spelled = []
    steps = {f"workflow.{step}" for step in STEPS}
    for path in PACKAGE.rglob("*.py"):
        if path == PACKAGE / "core" / "steps.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in steps:
                spelled.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value!r}")
    assert not spelled, "start steps by the names of workflow.core.steps:\n" + "\n".join(spelled)

