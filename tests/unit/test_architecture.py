"""The house rules of workflow/, checked on the real tree: layer contracts
(import-linter), no import cycles, no room over 450 lines, imports inside functions only
to defer a heavy import (with a comment saying so), steps thin."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import grimp

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "workflow"
MAX_LINES = 450
STEPS = ("download", "tokenize", "launch", "train", "warm", "stats", "gates", "tables", "plots", "plan",
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
