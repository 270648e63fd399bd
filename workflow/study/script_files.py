"""The files a script run reads, as far as stagerun can know them (torch-free).

A script run (workflow/study/trainer_section.py) depends on every file it reads that stagerun
can see before it starts (:func:`tracked_files`):

- the script;
- ``trainer.inputs``: paths relative to ``workdir``, with placeholders (``{variant}``) expanded
  per run and globs (``*``, ``?``, ``[...]``) expanded to the files they match;
- every ``args`` element, ``command`` element and ``env`` value that names an existing file
  under ``workdir`` after expansion (the whole text, or the part after the first ``=``:
  ``--config=config/train_{variant}.py``);
- the local modules the tracked Python files import, found by a static scan (:mod:`ast`, no
  execution; transitive; only files under ``workdir``, looked up from the importing file's
  folder and from ``workdir``, like ``python script.py`` run in ``workdir`` would).

Snakemake gets them as the run's inputs (an edit reruns exactly the runs that read the file);
the job records their sha256 in result.json (``trainer.inputs_sha256``).
"""

from __future__ import annotations

import ast
import functools
import glob
import os
import re
import shlex
import shutil
from collections.abc import Mapping
from pathlib import Path

from workflow.core.io import read_json
from workflow.study.trainer_section import TrainerConfigError, expand, needs_nanogpt_data

_GLOB = re.compile(r"[*?\[]")


@functools.lru_cache(maxsize=64)
def _meta(path: str, mtime_ns: int) -> dict:  # noqa: ARG001 (cache key: the DAG asks once per run)
    return read_json(path)


def split_files(meta_path: Path, split: str) -> str | None:
    """The token files of ``split`` in meta.json: one absolute path, or a glob of the shards
    (digits of the first file name replaced by ``*``), None when the split or meta.json is missing."""
    try:
        files = (_meta(str(meta_path), os.stat(meta_path).st_mtime_ns).get("splits") or {}).get(split, {}).get("files") or []
    except (OSError, ValueError):
        return None
    if not files:
        return None
    first = (meta_path.parent / files[0]["path"]).resolve()
    if len(files) == 1:
        return str(first)
    return str(first.parent / re.sub(r"\d+(?=\.bin$)", "*", first.name))


def placeholder_values(run_cfg: Mapping, out_dir: Path, meta: Path, res: Mapping, attempt: int) -> dict:
    """Every placeholder's value for a run (trainer_section.RUN_PLACEHOLDERS + its ``train``
    keys); paths absolute. ``run_cfg``: workflow.study.resolve.run_config with a path-resolved
    ``trainer``; ``res``: the stage's resources (nproc_per_node, nodes, gpus)."""
    trainer = run_cfg["trainer"]
    out_dir = Path(out_dir).resolve()
    tokens_dir = Path(meta).parent.resolve()
    values = dict(run_cfg["train"])
    values.update(
        seed=run_cfg["seed"], stage=run_cfg["stage"], variant=run_cfg["variant"], run_id=run_cfg["run_id"],
        study=run_cfg["study"], dataset=run_cfg["dataset"], out_dir=str(out_dir),
        metrics_file=str(out_dir / "script_metrics.jsonl"), checkpoint_dir=str(out_dir / "checkpoint"),
        data_dir=str(tokens_dir.parent.parent),
        tokens_dir=str(tokens_dir),
        nanogpt_data_dir=str(tokens_dir / "nanogpt") if needs_nanogpt_data(trainer) else None,
        train_files=split_files(Path(meta), "train"), val_files=split_files(Path(meta), "val"),
        workdir=trainer["workdir"], script=trainer.get("script"),
        nproc_per_node=res["nproc_per_node"], nodes=res["nodes"], world_size=res["nproc_per_node"] * res["nodes"],
        gpus=res["gpus"], attempt=attempt,
    )
    return values


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _module_files(name: str, roots: list[Path]) -> list[Path]:
    """Files of the dotted module ``name`` (and its packages' ``__init__.py``) under the first root that has it."""
    parts = name.split(".")
    for root in roots:
        found = []
        for i in range(1, len(parts) + 1):
            base = root.joinpath(*parts[:i])
            for candidate in (base.with_suffix(".py"), base / "__init__.py"):
                if candidate.is_file():
                    found.append(candidate)
                    break
            else:
                break
        if found:
            return found
    return []


@functools.lru_cache(maxsize=4096)
def _imports_of(path: str, mtime_ns: int) -> tuple[tuple[str, int, tuple[str, ...]], ...]:  # noqa: ARG001 (cache key)
    """(module, level, imported names) of every import statement of a Python file; () when it does not parse."""
    try:
        tree = ast.parse(Path(path).read_bytes(), filename=path)
    except (SyntaxError, ValueError, OSError):
        return ()
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((alias.name, 0, ()) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            out.append((node.module or "", node.level, tuple(a.name for a in node.names if a.name != "*")))
    return tuple(out)


def local_imports(py_file: str | os.PathLike, workdir: str | os.PathLike) -> list[str]:
    """The Python files under ``workdir`` that ``py_file`` imports, transitively (static scan:
    ``import a.b``, ``from a import b``, ``from . import c``; imports inside functions and
    ``try`` blocks count too, dynamic imports cannot be seen). Absolute paths, in the order found,
    without ``py_file`` itself."""
    workdir = Path(workdir).resolve()
    start = Path(py_file).resolve()
    seen, order, todo = {start}, [], [start]
    while todo:
        current = todo.pop(0)
        roots = list(dict.fromkeys([current.parent, workdir]))
        for module, level, names in _imports_of(str(current), current.stat().st_mtime_ns):
            if level:
                base = current.parent
                for _ in range(level - 1):
                    base = base.parent
                search, prefix = [base], module
            else:
                search, prefix = roots, module
            targets = []
            if prefix:
                targets.append(prefix)
            targets += [f"{prefix}.{n}" if prefix else n for n in names]
            for target in targets:
                for found in _module_files(target, search):
                    found = found.resolve()
                    if found not in seen and _inside(found, workdir):
                        seen.add(found)
                        order.append(found)
                        todo.append(found)
    return [str(p) for p in order]


def _texts(trainer: Mapping) -> list[tuple[str, str]]:
    """(key, text) of every args element, command element and string env value."""
    out = [(f"args[{i}]", a) for i, a in enumerate(trainer.get("args") or [])]
    command = trainer.get("command")
    if isinstance(command, list):
        out += [(f"command[{i}]", c) for i, c in enumerate(command)]
    elif isinstance(command, str):
        out.append(("command", command))
    out += [(f"env.{k}", v) for k, v in (trainer.get("env") or {}).items() if isinstance(v, str)]
    return out


def expanded_texts(trainer: Mapping, values: Mapping, where: str) -> list[tuple[str, str]]:
    """(key, expanded text) of every args / command / env text (:func:`_texts`).

    Raises:
        TrainerConfigError: ``"{where}.trainer.args[0]: placeholder {lr:d} in '--lr={lr:d}': ..."``
            (a format spec that does not fit the value the study gives, an unknown placeholder).
    """
    out = []
    for key, text in _texts(trainer):
        try:
            out.append((key, expand(text, values)))
        except TrainerConfigError as err:
            raise TrainerConfigError(f"{where}.trainer.{key}: {err}") from None
    return out


def input_files(trainer: Mapping, values: Mapping, where: str) -> list[str]:
    """``trainer.inputs`` of one run: placeholders expanded, relative to ``workdir``, globs
    expanded (sorted); absolute paths.

    Raises:
        TrainerConfigError: an input that names no file, or a glob that matches none, naming
            ``{where}.trainer.inputs[i]``.
    """
    workdir = Path(trainer["workdir"])
    out = []
    for i, pattern in enumerate(trainer.get("inputs") or []):
        try:
            text = expand(pattern, values)
        except TrainerConfigError as err:
            raise TrainerConfigError(f"{where}.trainer.inputs[{i}]: {err}") from None
        path = os.path.join(workdir, os.path.expanduser(text))
        if _GLOB.search(text):
            matches = sorted(p for p in glob.glob(path, recursive=True) if os.path.isfile(p))
            if not matches:
                raise TrainerConfigError(f"{where}.trainer.inputs[{i}]: {pattern!r} matches no file "
                                         f"(inputs are relative to workdir {workdir})")
            out += [str(Path(p).resolve()) for p in matches]
        elif os.path.isfile(path):
            out.append(str(Path(path).resolve()))
        else:
            raise TrainerConfigError(f"{where}.trainer.inputs[{i}]: {Path(path).resolve()} does not exist "
                                     f"(inputs are relative to workdir {workdir}; from {pattern!r})")
    return out


def named_files(trainer: Mapping, values: Mapping, where: str) -> list[str]:
    """Existing files under ``workdir`` that an args / command / env text names after expansion
    (the whole text, or what follows its first ``=``); absolute paths."""
    workdir = Path(trainer["workdir"]).resolve()
    out = []
    for _, text in expanded_texts(trainer, values, where):
        for candidate in dict.fromkeys([text, text.split("=", 1)[1] if "=" in text else ""]):
            if not candidate or "\0" in candidate:
                continue
            path = (workdir / os.path.expanduser(candidate)).resolve()
            try:
                if _inside(path, workdir) and path.is_file():
                    out.append(str(path))
            except OSError:  # a name too long for a path, ...
                continue
    return out


def tracked_files(trainer: Mapping, values: Mapping, where: str = "trainer") -> list[str]:
    """Every file the run reads that stagerun can know of (the module docstring): the script,
    the inputs, the files named in args / command / env, and the local modules the Python ones
    import. Absolute paths, each once, the script first.

    Raises:
        TrainerConfigError: a missing input, or a placeholder that cannot be expanded (naming the key).
    """
    files = [trainer["script"]] if trainer.get("script") else []
    files += input_files(trainer, values, where)
    files += named_files(trainer, values, where)
    for path in list(dict.fromkeys(files)):
        if path.endswith(".py"):
            files += local_imports(path, trainer["workdir"])
    return list(dict.fromkeys(files))


def check_executables(trainer: Mapping, values: Mapping, where: str) -> None:
    """Check, before any job, that the program a run starts exists and may be executed: ``python``
    (launchers python / torchrun) and ``command[0]`` after expansion (launcher command). A bare name
    is looked up on ``PATH`` (:func:`shutil.which`), a path relative to ``workdir``.

    Raises:
        TrainerConfigError: ``"{where}.trainer.python: /nonexistent/python3 does not exist"``,
            ``"{where}.trainer.command[0]: nonexistent-binary is not on PATH"``, or not executable.
    """
    launcher = trainer.get("launcher", "python")
    if launcher == "command":
        command = trainer.get("command")
        first = shlex.split(command)[0] if isinstance(command, str) else command[0]
        key, program = ("command" if isinstance(command, str) else "command[0]"), expand(first, values)
    elif trainer.get("python"):
        key, program = "python", trainer["python"]
    else:
        return
    if os.sep not in program:
        if shutil.which(program) is None:
            raise TrainerConfigError(f"{where}.trainer.{key}: {program} is not on PATH (give its path, absolute or "
                                     f"relative to workdir {trainer['workdir']})")
        return
    path = Path(trainer["workdir"], os.path.expanduser(program))
    if not path.is_file():
        raise TrainerConfigError(f"{where}.trainer.{key}: {path} does not exist")
    if not os.access(path, os.X_OK):
        raise TrainerConfigError(f"{where}.trainer.{key}: {path} is not executable (chmod +x, or start it "
                                 "through its interpreter, e.g. [bash, run.sh])")


def run_files(run_cfg: Mapping, out_dir: str | os.PathLike, meta: str | os.PathLike, res: Mapping) -> list[str]:
    """:func:`tracked_files` of one run: ``run_cfg`` with its path-resolved trainer (rules/common.smk
    gives it to Snakemake as the run's inputs); ``out_dir`` the run's folder, ``meta`` the dataset's
    meta.json, ``res`` the stage's resources."""
    values = placeholder_values(run_cfg, Path(out_dir), Path(meta), res, 1)
    where = f"stages.{run_cfg['stage']} + variants.{run_cfg['variant']}"
    return tracked_files(run_cfg["trainer"], values, where)
