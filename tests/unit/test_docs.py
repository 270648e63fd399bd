"""Docs that a test keeps true: every repository path, every ``workflow.*`` module and every
``tests/...`` file named in README.md, docs/*.md, the comments and docstrings of workflow/,
bench/ and tests/, the rule files, the Snakefile, the Makefile, .ci/run and the configs must
exist; the docs name no folder of one machine (``/work/...``, ``/home/...``); no text names a
ticket number instead of saying what a thing does; docs/architecture.md's module table lists
exactly the modules under workflow/.

When a module or file moves, these tests name each stale mention (file:line) so the docs move
with it. A path that is a placeholder on purpose goes into ``ALLOWED`` with its reason.
"""

from __future__ import annotations

import ast
import dataclasses
import fnmatch
import glob
import io
import inspect
import re
import subprocess
import tomllib
import tokenize
from functools import lru_cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

#: The top folders of the repository whose paths are checked when a text names them.
TOPS = ("workflow", "tests", "rules", "bench", "config", "examples", "docs", "profiles", "report", "envs")
PATH_RE = re.compile(r"(?<![\w./~$-])((?:%s)/[\w./*{}<>\[\]-]*)" % "|".join(TOPS))
MODULE_RE = re.compile(r"(?<![\w./])workflow(?:\.[A-Za-z_]\w*)+")
#: Absolute folders of one machine (a user's home, this lab's work folder, root's home).
MACHINE_PATH_RE = re.compile(r"(?<![\w.~$/-])/(?:work|home|root|Users|scratch|mnt)/[\w.-]+")
TICKET_RE = re.compile(r"[Ii]ssue [0-9]+")

#: Names that are no file of this repository on purpose: shell-style pattern -> why it is allowed.
ALLOWED = {
    "config/train_*.py": "nanoGPT's config files (config/train_gpt2.py, ...), in the user's script repository",
    "config/studies/X.yaml": "a placeholder: the user's study file",
    "workflow.x": "a placeholder in the rule of the house `from workflow.x import y`",
}
#: What follows a dot that makes ``workflow.<suffix>`` a file name, not a module (report/workflow.rst).
FILE_SUFFIXES = {"rst", "py", "md", "yaml", "json", "smk", "txt", "html"}


def _markdown_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")),
            *sorted((REPO / "examples").rglob("*.md"))]


def _python_files() -> list[Path]:
    files = [*sorted((REPO / "workflow").rglob("*.py")), *sorted((REPO / "bench").glob("*.py")),
             *sorted((REPO / "tests").rglob("*.py")), *sorted((REPO / "examples").rglob("*.py"))]
    # this file names made-up paths and modules as examples of what it checks
    return [p for p in files if ".venv" not in p.parts and p != Path(__file__).resolve()]


def _plain_files() -> list[Path]:
    """Files read whole: rules, the Snakefile, the Makefile, CI, configs, the report's captions."""
    return [*sorted((REPO / "rules").glob("*.smk")), REPO / "Snakefile", REPO / "Makefile",
            REPO / ".ci" / "run", *sorted((REPO / ".ci").rglob("*.sh")), REPO / "pyproject.toml",
            *sorted((REPO / "config").rglob("*.yaml")), *sorted((REPO / "tests" / "configs").glob("*.yaml")),
            *sorted((REPO / "report").glob("*.rst")), *sorted((REPO / "bench").glob("*.sh"))]


def _python_prose(path: Path) -> list[tuple[int, str]]:
    """(line, text) of a Python file's comments and docstrings (code strings are not prose)."""
    source = path.read_text()
    out: list[tuple[int, str]] = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            out.append((tok.start[0], tok.string))
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                first = body[0].lineno
                out.extend((first + i, line) for i, line in enumerate(ast.get_source_segment(
                    source, body[0]).splitlines()))
        # attribute docstrings (#: comments are tokens above); strings after assignments
        if isinstance(node, (ast.Module, ast.ClassDef)):
            for prev, cur in zip(node.body, node.body[1:]):
                if isinstance(prev, (ast.Assign, ast.AnnAssign)) and isinstance(cur, ast.Expr) \
                        and isinstance(cur.value, ast.Constant) and isinstance(cur.value.value, str):
                    out.extend((cur.lineno + i, line) for i, line in enumerate(
                        ast.get_source_segment(source, cur).splitlines()))
    return out


def _lines(path: Path) -> list[tuple[int, str]]:
    if path.suffix == ".py":
        return _python_prose(path)
    return list(enumerate(path.read_text().splitlines(), start=1))


@lru_cache(maxsize=1)
def _all_texts() -> list[tuple[Path, list[tuple[int, str]]]]:
    files = [*_markdown_files(), *_python_files(), *_plain_files()]
    return [(p, _lines(p)) for p in files if p.is_file()]


def _where(path: Path, line: int) -> str:
    return f"{path.relative_to(REPO)}:{line}"


# ---------------------------------------------------------------------------- repository paths
def _path_exists(raw: str) -> bool:
    """True when ``raw`` (a path as written, maybe with ``{x}``, ``<x>`` or ``*``) names a file or
    folder of the repository; a placeholder part matches any name."""
    path = raw.rstrip(".,:;`'\")]")
    if any(fnmatch.fnmatchcase(path, allowed) for allowed in ALLOWED):
        return True
    pattern = re.sub(r"\{[^}/]*\}|<[^>/]*>", "*", path)
    if "{" in pattern or "<" in pattern or "[" in pattern:  # a template cut at the line's end
        return True
    if any(ch in pattern for ch in "*?"):
        return bool(glob.glob(str(REPO / pattern)))
    return (REPO / pattern).exists()


def test_every_repository_path_named_exists():
    missing = []
    for path, lines in _all_texts():
        for line, text in lines:
            for match in PATH_RE.finditer(text):
                if not _path_exists(match.group(1)):
                    missing.append(f"{_where(path, line)}: {match.group(1)}")
    assert not missing, ("paths named in docs, docstrings or comments that do not exist (fix the text, or "
                         "add a placeholder to ALLOWED with its reason):\n" + "\n".join(missing))


# ---------------------------------------------------------------------------- module names
@lru_cache(maxsize=None)
def _snakemake_workflow_attributes() -> frozenset[str]:
    """Attributes of Snakemake's global ``workflow`` object (what rule files call ``workflow.dag``)."""
    import snakemake.api  # noqa: F401  (deferred heavy import: snakemake.workflow imports through it)
    from snakemake.workflow import Workflow
    names = set(dir(Workflow))
    names |= set(re.findall(r"self\.([A-Za-z_]\w*)\s*[:=]", inspect.getsource(Workflow)))  # set in __init__
    if dataclasses.is_dataclass(Workflow):
        names |= {f.name for f in dataclasses.fields(Workflow)}
    return frozenset(names)


def _module_file(dotted: str) -> Path | None:
    rel = Path(*dotted.split("."))
    for candidate in (REPO / rel.with_suffix(".py"), REPO / rel / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@lru_cache(maxsize=None)
def _top_level_names(module_file: Path) -> frozenset[str]:
    names: set[str] = set()
    for node in ast.parse(module_file.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    if "__getattr__" in names:  # PEP 562 lazy re-exports: the string keys of the module's name tables
        for node in ast.parse(module_file.read_text()).body:
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Dict):
                names |= {k.value for k in node.value.keys if isinstance(k, ast.Constant)
                          and isinstance(k.value, str)}
    return frozenset(names)


def _module_name_resolves(dotted: str) -> bool:
    """``workflow.a.b`` is a module or package, or a module followed by a name it defines."""
    parts = dotted.split(".")
    if dotted in ALLOWED or parts[-1] in FILE_SUFFIXES:
        return True
    for cut in range(len(parts), 1, -1):
        module_file = _module_file(".".join(parts[:cut]))
        if module_file is None:
            continue
        if cut == len(parts):
            return True
        return parts[cut] in _top_level_names(module_file)
    # no module of that name: rule files (and comments about them) mean Snakemake's `workflow` object
    return parts[1] in _snakemake_workflow_attributes()


def test_every_workflow_module_named_exists():
    missing = []
    for path, lines in _all_texts():
        for line, text in lines:
            for match in MODULE_RE.finditer(text):
                if not _module_name_resolves(match.group(0)):
                    missing.append(f"{_where(path, line)}: {match.group(0)}")
    assert not missing, "modules (or names in them) that do not exist:\n" + "\n".join(missing)


# ---------------------------------------------------------------------------- machine paths
def test_docs_name_no_folder_of_one_machine():
    found = []
    for path in [*_markdown_files(), *_python_files(), *_plain_files()]:
        if not path.is_file():
            continue
        for line, text in enumerate(path.read_text().splitlines(), start=1):
            for match in MACHINE_PATH_RE.finditer(text):
                found.append(f"{_where(path, line)}: {match.group(0)}")
    assert not found, ("absolute folders of one machine (write a path relative to the repository, or "
                       "an obvious placeholder such as /path/to/data):\n" + "\n".join(found))


# ---------------------------------------------------------------------------- ticket numbers
def test_no_ticket_numbers_in_code_tests_or_docs():
    """The code says what a thing does, never which ticket brought it."""
    tracked = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "--",
                              "workflow", "rules", "tests", "docs", "README.md", "Snakefile",
                              "pyproject.toml", "config", "examples", "bench", "Makefile", ".ci", "report"],
                             cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    found = []
    for rel in tracked:
        path = REPO / rel
        if not path.is_file() or path.suffix in {".png", ".bin", ".pt", ".gz"}:
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for line, content in enumerate(text.splitlines(), start=1):
            if TICKET_RE.search(content):
                found.append(f"{rel}:{line}: {content.strip()[:100]}")
    assert not found, "ticket numbers (say what the thing does instead):\n" + "\n".join(found)


# ---------------------------------------------------------------------------- the module table
TABLE_HEADING = "## workflow/: steps on top, the library below"
TABLE_ROW_RE = re.compile(r"^\|[^|]*\|\s*`(workflow/[\w/]+\.py)`\s*\|")


def _table_modules() -> list[str]:
    text = (REPO / "docs" / "architecture.md").read_text()
    assert TABLE_HEADING in text, f"docs/architecture.md has no section {TABLE_HEADING!r}"
    section = text.split(TABLE_HEADING, 1)[1].split("\n## ", 1)[0]
    return [m.group(1) for line in section.splitlines() if (m := TABLE_ROW_RE.match(line))]


def test_architecture_module_table_matches_the_tree():
    """One row per module (``| layer | `workflow/x/y.py` | what it holds |``); package
    ``__init__.py`` files need no row."""
    rows = _table_modules()
    listed = set(rows)
    tree = {str(p.relative_to(REPO)) for p in (REPO / "workflow").rglob("*.py") if p.name != "__init__.py"}
    duplicated = sorted({r for r in rows if rows.count(r) > 1})
    assert not duplicated, f"docs/architecture.md's module table lists these twice: {duplicated}"
    assert not tree - listed, ("modules missing from docs/architecture.md's module table (add a row "
                               "| layer | `path` | what it holds |): " + ", ".join(sorted(tree - listed)))
    assert not listed - tree, ("docs/architecture.md's module table lists modules that do not exist "
                               "(moved or removed? fix the row): " + ", ".join(sorted(listed - tree)))


def test_architecture_names_every_rule_file():
    """The rule files' overview (a code block of docs/architecture.md) names each rules/*.smk."""
    text = (REPO / "docs" / "architecture.md").read_text()
    missing = [p.name for p in sorted((REPO / "rules").glob("*.smk")) if f"rules/{p.name}" not in text]
    assert not missing, f"rule files docs/architecture.md does not describe: {missing}"


def test_architecture_torch_free_list_matches_the_contract():
    """The torch-free paragraph of docs/architecture.md lists exactly the source modules of
    pyproject.toml's forbidden contract against torch."""
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    (forbidden,) = [c for c in contracts if c["type"] == "forbidden" and "torch" in c["forbidden_modules"]]
    text = (REPO / "docs" / "architecture.md").read_text()
    start = text.index("Torch-free, because the Snakemake process imports them")
    paragraph = text[start:text.index("\n\n", start)]
    listed = re.findall(r"`(workflow(?:\.\w+)*)`", paragraph)
    assert sorted(listed) == sorted(forbidden["source_modules"]), (
        f"docs/architecture.md lists {sorted(set(listed) - set(forbidden['source_modules']))} beyond the "
        f"contract and misses {sorted(set(forbidden['source_modules']) - set(listed))}")


def test_every_named_test_function_exists():
    """``tests/x.py::test_name`` names a function defined in that file."""
    missing = []
    for path, lines in _all_texts():
        for line, text in lines:
            for match in re.finditer(r"(tests/[\w/]+\.py)::(\w+)", text):
                file, name = REPO / match.group(1), match.group(2)
                if not file.is_file() or not re.search(rf"^\s*(async )?def {name}\(", file.read_text(), flags=re.M):
                    missing.append(f"{_where(path, line)}: {match.group(0)}")
    assert not missing, "test functions named in docs or comments that do not exist:\n" + "\n".join(missing)
