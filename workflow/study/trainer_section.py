"""The study's ``trainer`` section: your own training script as a variant (torch-free).

A study (or a stage, or a variant: later wins, study < stage < variant, like ``train``) may say::

    trainer:
      script: train.py              # the script file, relative to workdir
      workdir: ../nanoGPT           # where it runs: relative to the study file, or absolute
      launcher: torchrun            # python | torchrun | command
      command: null                 # launcher command: the command line as a list, e.g. [bash, run.sh]
      args: ["--max_iters={num_iterations}", "--out_dir={out_dir}"]
      env: {STAGE_NUM_ITERATIONS: "{num_iterations}"}
      metrics: nanogpt              # nanogpt | modded-nanogpt | jsonl | {regex: {val_loss: '...', step: '...'}}
      inputs: [model.py]            # more files (relative to workdir) whose edits rerun the variant
      nanogpt_data: false           # prepare {nanogpt_data_dir} even when no placeholder names it
      tokens_per_step: null         # tokens one step trains on (FLOPs accounting), when the script prints none
      flops_per_token: null         # FLOPs per training token (forward + backward); null: FLOPs "unknown"
      python: null                  # interpreter of launcher python/torchrun; null: the one running stagerun

Without a ``trainer`` section a run uses the built-in trainer and nothing changes. A section
that is there (at any level) but lacks what its launcher needs (``trainer: {}``, ``script: ""``,
``launcher: command`` without ``command``) stops the study, naming the key.

**Placeholders** in ``args``, ``env`` values and ``command``: ``{name}`` or ``{name:spec}``
(Python format spec, e.g. ``{lr:.0e}``), ``{{`` and ``}}`` for literal braces. Names: the
run's identity (:data:`RUN_PLACEHOLDERS`) and every key of the resolved ``train`` section.
Values are rendered by :func:`render_value` (strings as they are, numbers as Python prints them,
True/False/None as Python literals, lists and dicts as JSON); paths are absolute. An unknown
name is a :class:`TrainerConfigError` naming it; the study stops before any job
(``workflow.study.checks.check_trainers``).

**Environment** of the script: the job's environment plus ``STAGE_<KEY>`` (upper case) for
every resolved ``train`` key, ``STAGERUN_*`` (:func:`stagerun_env`) and the section's ``env``.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import shlex
import string
from collections.abc import Iterable, Mapping
from pathlib import Path

#: metrics presets (workflow.jobs.capture); a regex dict is the fourth form
METRICS_PRESETS = ("nanogpt", "modded-nanogpt", "jsonl")
LAUNCHERS = ("python", "torchrun", "command")

#: placeholder name -> what it expands to (besides every resolved ``train`` key)
RUN_PLACEHOLDERS: dict[str, str] = {
    "seed": "the run's seed (integer)",
    "stage": "the stage's name",
    "variant": "the variant's name",
    "run_id": "the repeat's index in its stage (0, 1, ...)",
    "study": "the study's name",
    "dataset": "the dataset's name",
    "out_dir": "the run's results folder (absolute; result.json, metrics.jsonl and the script's own files)",
    "metrics_file": "the JSON-lines file the script may append metrics rows to ($STAGERUN_METRICS; absolute)",
    "checkpoint_dir": ("a folder for the script's checkpoints ($STAGERUN_CHECKPOINT_DIR): kept across preempted "
                       "attempts, emptied when a run starts afresh or has finished"),
    "data_dir": "the study's data folder (absolute)",
    "tokens_dir": "the prepared dataset: {data_dir}/tokens/{dataset} with meta.json (absolute)",
    "nanogpt_data_dir": "the same tokens in nanoGPT's layout: train.bin/val.bin (uint16) + meta.pkl (absolute)",
    "train_files": "the train split's token files: one path, or a glob of the shards (FineWeb: modded-nanogpt format)",
    "val_files": "the val split's token files: one path, or a glob of the shards",
    "workdir": "the folder the script runs in (absolute)",
    "script": "the script file (absolute)",
    "nproc_per_node": "processes per node (torchrun --nproc_per_node)",
    "nodes": "nodes of the run",
    "world_size": "processes of the run: nproc_per_node x nodes",
    "gpus": "GPUs per node (0: CPU)",
    "attempt": "the job's attempt at this run (1, 2, ... after preemptions)",
}
#: placeholders whose values are paths (expanded to absolute paths)
PATH_PLACEHOLDERS = ("out_dir", "metrics_file", "checkpoint_dir", "data_dir", "tokens_dir", "nanogpt_data_dir", "train_files",
                     "val_files", "workdir", "script")
#: the trainer keys placeholders may appear in
EXPANDED_KEYS = ("args", "env", "command")


class TrainerConfigError(ValueError):
    """A ``trainer`` section is invalid; the message names the key (and placeholder) at fault."""


# --------------------------------------------------------------------------- what a section is

def is_script_trainer(trainer: Mapping | None) -> bool:
    """True when a resolved trainer section runs the user's program (``script`` or ``command``
    set), False for the built-in trainer (no section, or neither key)."""
    return bool(trainer) and bool(trainer.get("script") or trainer.get("command"))


def needs_nanogpt_data(trainer: Mapping | None) -> bool:
    """True when the run reads the nanoGPT layout: ``nanogpt_data: true`` or a
    ``{nanogpt_data_dir}`` placeholder anywhere in ``args``, ``env`` or ``command``."""
    if not is_script_trainer(trainer):
        return False
    if trainer.get("nanogpt_data"):
        return True
    return any(name == "nanogpt_data_dir" for _, _, name, _ in _fields_of(trainer))


# --------------------------------------------------------------------------- placeholders

def _texts(trainer: Mapping) -> Iterable[tuple[str, str]]:
    """(where, text) of every string placeholders may appear in."""
    for i, arg in enumerate(trainer.get("args") or []):
        yield f"args[{i}]", arg
    for key, value in (trainer.get("env") or {}).items():
        if isinstance(value, str):
            yield f"env.{key}", value
    command = trainer.get("command")
    if isinstance(command, str):
        yield "command", command
    for i, part in enumerate(command if isinstance(command, list) else []):
        yield f"command[{i}]", part


def placeholder_fields(text: str) -> list[tuple[str, str]]:
    """The ``(name, format_spec)`` of every placeholder in ``text``.

    Raises:
        TrainerConfigError: unbalanced braces, an empty ``{}``, attribute or index access
            (``{a.b}``, ``{a[0]}``), a conversion (``{a!r}``) or a placeholder inside a format spec.
    """
    out = []
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as err:
        raise TrainerConfigError(f"{text!r}: {err} (write {{{{ and }}}} for literal braces)") from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name.isidentifier():
            raise TrainerConfigError(
                f"{text!r}: placeholder {{{name}}} is not a plain name (write {{{{ and }}}} for literal braces)")
        if conversion:
            raise TrainerConfigError(f"{text!r}: placeholder {{{name}!{conversion}}}: conversions are not supported")
        if spec and "{" in spec:
            raise TrainerConfigError(f"{text!r}: placeholder {{{name}:{spec}}}: nested placeholders are not supported")
        out.append((name, spec or ""))
    return out


def _fields_of(trainer: Mapping) -> Iterable[tuple[str, str, str, str]]:
    """(where, text, name, spec) of every placeholder of a trainer section."""
    for where, text in _texts(trainer):
        for name, spec in placeholder_fields(text):
            yield where, text, name, spec


#: Other trainers' names for train keys (nanoGPT, modded-nanogpt, HF): the placeholder hint names
#: the key a run has (README.md, "Your own training script": ``{max_iters}`` -> ``{num_iterations}``).
PLACEHOLDER_SYNONYMS = {
    "max_iters": "num_iterations", "num_iters": "num_iterations", "iters": "num_iterations",
    "max_steps": "num_iterations", "num_steps": "num_iterations", "steps": "num_iterations",
    "lr_decay_iters": "num_iterations", "num_train_steps": "num_iterations",
    "eval_interval": "val_loss_every", "eval_every": "val_loss_every", "eval_steps": "val_loss_every",
    "learning_rate": "lr", "warmup_steps": "warmup_iters", "cooldown_iters": "warmdown_iters",
    "log_interval": "log_every",
}


def known_placeholders(train_keys: Iterable[str]) -> set[str]:
    """Every placeholder name a run can expand: :data:`RUN_PLACEHOLDERS` and the train keys."""
    return set(RUN_PLACEHOLDERS) | set(train_keys)


def check_placeholders(trainer: Mapping, train_keys: Iterable[str], where: str) -> None:
    """Check that every placeholder of ``trainer`` names a known value.

    Args:
        trainer: the resolved (merged) trainer section.
        train_keys: the keys of the resolved ``train`` section.
        where: location for the message, e.g. ``"stages.A + variants.palm"``.
    Raises:
        TrainerConfigError: ``"{where}.trainer.args[1]: unknown placeholder {num_iters} in
            '--max_iters={num_iters}'; did you mean {num_iterations}? (known: ...)"``.
    """
    known = known_placeholders(train_keys)
    for key, text in _texts(trainer):
        try:
            fields = placeholder_fields(text)
        except TrainerConfigError as err:
            raise TrainerConfigError(f"{where}.trainer.{key}: {err}") from None
        for name, _ in fields:
            if name not in known:
                synonym = PLACEHOLDER_SYNONYMS.get(name)
                close = [synonym] if synonym in known else difflib.get_close_matches(name, sorted(known), n=1)
                hint = f"; did you mean {{{close[0]}}}?" if close else ""
                raise TrainerConfigError(
                    f"{where}.trainer.{key}: unknown placeholder {{{name}}} in {text!r}{hint} "
                    f"(known: {', '.join(sorted(RUN_PLACEHOLDERS))} and every train key, e.g. "
                    "{num_iterations}, {lr}, {batch_size}; {{ and }} for literal braces)")


def render_value(value) -> str:
    """A placeholder's or ``STAGE_<KEY>``'s text: strings as they are, numbers as Python prints
    them (``0.001``, ``100``), True/False/None as Python literals (what nanoGPT's configurator
    parses with ``ast.literal_eval``), lists and dicts as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def expand(text: str, values: Mapping[str, object]) -> str:
    """``text`` with every placeholder replaced by its value (:func:`render_value`, or
    ``format(value, spec)`` when a format spec is given).

    Raises:
        TrainerConfigError: a placeholder not in ``values``, or a spec that does not fit the value.
    """
    out = []
    for literal, name, spec, _ in string.Formatter().parse(text):
        out.append(literal)
        if name is None:
            continue
        if name not in values:
            raise TrainerConfigError(f"unknown placeholder {{{name}}} in {text!r}")
        value = values[name]
        try:
            out.append(format(value, spec) if spec else render_value(value))
        except (ValueError, TypeError) as err:
            raise TrainerConfigError(f"placeholder {{{name}:{spec}}} in {text!r}: {err}") from None
    return "".join(out)


# --------------------------------------------------------------------------- paths and checks

def resolve_paths(trainer: Mapping, study_dir: str | os.PathLike) -> dict:
    """A copy of a resolved script trainer with ``workdir`` absolute (relative to ``study_dir``,
    the folder of the study file; default: ``study_dir`` itself), ``script`` and ``inputs``
    absolute (relative to ``workdir``). Nothing is checked here (:func:`check_files`)."""
    out = json.loads(json.dumps(trainer))
    workdir = Path(study_dir, os.path.expanduser(out.get("workdir") or ".")).resolve()
    out["workdir"] = str(workdir)
    if out.get("script"):
        out["script"] = str((workdir / os.path.expanduser(out["script"])).resolve())
    out["inputs"] = [str((workdir / os.path.expanduser(p)).resolve()) for p in out.get("inputs") or []]
    return out


def check_files(trainer: Mapping, where: str) -> None:
    """Check that a path-resolved trainer's ``workdir`` and ``script`` exist.

    Raises:
        TrainerConfigError: ``"{where}.trainer.script: /abs/train.py does not exist (workdir ...)"``.
    """
    workdir = Path(trainer["workdir"])
    if not workdir.is_dir():
        raise TrainerConfigError(f"{where}.trainer.workdir: {workdir} is not a folder")
    if trainer.get("script") and not Path(trainer["script"]).is_file():
        raise TrainerConfigError(
            f"{where}.trainer.script: {trainer['script']} does not exist (script is relative to workdir {workdir})")
    # inputs (placeholders and globs expanded per run): workflow.study.script_files.input_files


def check_section(trainer: Mapping, where: str) -> None:
    """Checks of a merged, schema-validated trainer section the schema cannot express.

    Raises:
        TrainerConfigError: a non-empty section with neither ``script`` nor ``command``;
            ``launcher: command`` without ``command`` (or ``command`` with another launcher);
            a regex metric pattern that does not compile or has no group; no ``val_loss`` pattern.
    """
    launcher = trainer.get("launcher", "python")
    if not is_script_trainer(trainer):
        key = "command" if launcher == "command" else "script"
        raise TrainerConfigError(
            f"{where}.trainer.{key}: the trainer section needs script (launcher python / torchrun) or command "
            f"(launcher command), and {key} is {'not given' if trainer.get(key) is None else repr(trainer.get(key))}; "
            "to use the built-in trainer, leave out the trainer section")
    if launcher == "command" and not trainer.get("command"):
        raise TrainerConfigError(f"{where}.trainer.command: launcher command needs the command line, e.g. [bash, run.sh]")
    if launcher != "command" and trainer.get("command"):
        raise TrainerConfigError(f"{where}.trainer.command: set launcher: command to run a command line "
                                 f"(launcher {launcher} runs script)")
    if launcher != "command" and not trainer.get("script"):
        raise TrainerConfigError(f"{where}.trainer.script: launcher {launcher} needs a script")
    metrics = trainer.get("metrics")
    if isinstance(metrics, Mapping):
        patterns = metrics.get("regex") or {}
        if "val_loss" not in patterns:
            raise TrainerConfigError(f"{where}.trainer.metrics.regex: needs a val_loss pattern")
        for name, pattern in patterns.items():
            try:
                compiled = re.compile(pattern)
            except re.error as err:
                raise TrainerConfigError(f"{where}.trainer.metrics.regex.{name}: {pattern!r} does not compile: {err}") from None
            if compiled.groups == 0:
                raise TrainerConfigError(
                    f"{where}.trainer.metrics.regex.{name}: {pattern!r} has no group; capture the value, "
                    f"e.g. (?P<{name}>[-+0-9.eE]+|nan|inf)")
            if compiled.groups > 1 and name not in compiled.groupindex:
                first = _first_group(pattern)
                raise TrainerConfigError(
                    f"{where}.trainer.metrics.regex.{name}: {pattern!r} has {compiled.groups} groups and none named "
                    f"{name}, so group 1 {first} would be read as {name}; name the value's group, "
                    f"(?P<{name}>[-+0-9.eE]+|nan|inf), or make the others non-capturing, (?:...)")


def _first_group(pattern: str) -> str:
    """The text of the first capturing group of ``pattern`` (for messages), e.g. ``'(val)'``;
    empty when not found by this simple scan (escapes and ``(?...)`` skipped, classes not)."""
    start, depth = None, 0
    for i, char in enumerate(pattern):
        escaped = i > 0 and pattern[i - 1] == "\\"
        if start is None:
            if char == "(" and not escaped and (not pattern.startswith("(?", i) or pattern.startswith("(?P<", i)):
                start, depth = i, 1
        elif not escaped and char in "()":
            depth += 1 if char == "(" else -1
            if depth == 0:
                return repr(pattern[start:i + 1])
    return ""


# --------------------------------------------------------------------------- environment

def stage_env(train: Mapping) -> dict[str, str]:
    """``STAGE_<KEY>`` (upper case) -> :func:`render_value` of every resolved ``train`` key
    (the speedrun write-up's ``STAGE_NUM_ITERATIONS`` convention)."""
    return {f"STAGE_{key.upper()}": render_value(value) for key, value in train.items()}


def stagerun_env(values: Mapping[str, object]) -> dict[str, str]:
    """The ``STAGERUN_*`` variables of a run, from its placeholder values: ``STAGERUN_SEED``,
    ``STAGERUN_OUT_DIR``, ``STAGERUN_METRICS`` (the JSON-lines file the script may append to),
    ``STAGERUN_STAGE``, ``STAGERUN_VARIANT``, ``STAGERUN_RUN_ID``, ``STAGERUN_TOKENS_DIR``,
    ``STAGERUN_NANOGPT_DATA_DIR`` (when prepared), ``STAGERUN_CHECKPOINT_DIR`` and ``STAGERUN_ATTEMPT``."""
    names = {"SEED": "seed", "OUT_DIR": "out_dir", "METRICS": "metrics_file", "STAGE": "stage",
             "VARIANT": "variant", "RUN_ID": "run_id", "TOKENS_DIR": "tokens_dir",
             "NANOGPT_DATA_DIR": "nanogpt_data_dir", "ATTEMPT": "attempt",
             "CHECKPOINT_DIR": "checkpoint_dir"}
    return {f"STAGERUN_{env}": render_value(values[key]) for env, key in names.items()
            if values.get(key) is not None}


def command_line(trainer: Mapping, values: Mapping[str, object], python: str) -> list[str]:
    """The script's own command (without torchrun / srun): ``[python, script, *args]`` for
    launchers python and torchrun, ``[*command, *args]`` for launcher command, placeholders
    expanded (:func:`expand`). A ``command`` given as one string is split like a shell would
    (``shlex.split``), but never run by a shell."""
    args = [expand(a, values) for a in trainer.get("args") or []]
    if trainer.get("launcher", "python") == "command":
        command = trainer["command"]
        parts = shlex.split(command) if isinstance(command, str) else list(command)
        return [expand(p, values) for p in parts] + args
    return [python, trainer["script"], *args]
