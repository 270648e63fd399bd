"""The layout of the Snakefile and rules/*.smk, read from the files (a real DAG is planned by
tests/integration/test_pipeline.py and test_shipped_studies.py): `rule all` stands in the Snakefile;
rules/common.smk holds paths and input functions only (no print, no environment write, no raise, no
check, no resource or group settings, under 200 lines); parse-time work stands in the rule-free file
named after it; rule files hold no functions (`snakemake --lint`) and every rule is named after the
step it runs."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "rules"
SNAKEFILE = REPO / "Snakefile"
COMMON = RULES / "common.smk"
# the rule-free files the Snakefile includes first, and what each alone may do at parse time
SETUP_FILES = {"checks.smk", "common.smk", "env.smk", "resources.smk"}


def included() -> list[str]:
    return re.findall(r'^include: "rules/([^"]+)"', SNAKEFILE.read_text(), flags=re.M)


def rule_blocks(text: str) -> dict[str, str]:
    """``{rule name: its text}`` of the rules and checkpoints declared in ``text`` (not `use rule`)."""
    heads = list(re.finditer(r"^\s*(?:rule|checkpoint) (\w+):", text, flags=re.M))
    return {m.group(1): text[m.end(): heads[i + 1].start() if i + 1 < len(heads) else len(text)]
            for i, m in enumerate(heads)}


def test_rule_all_and_its_targets_stand_in_the_snakefile():
    text = SNAKEFILE.read_text()
    blocks = rule_blocks(text)
    assert "all" in blocks and "default_target: True" in blocks["all"]
    # the targets are spelled out there, not a call into a rule file
    for target in ("summary.html", "verdict.json", "compute.csv", "plan.md", "table.csv", "samples/", "COMM_TARGETS"):
        assert target in blocks["all"], target
    for path in RULES.glob("*.smk"):
        assert "all" not in rule_blocks(path.read_text()), path
    # thin: includes, validation and rule all; its one other rule-free statement is the study set-up
    assert len(text.splitlines()) < 100


def test_every_rule_file_is_included_and_the_setup_files_come_before_the_rules():
    names = included()
    assert sorted(names) == sorted(p.name for p in RULES.glob("*.smk"))
    setup = [i for i, name in enumerate(names) if name in SETUP_FILES]
    rules = [i for i, name in enumerate(names) if name not in SETUP_FILES]
    assert max(setup) < min(rules), names


def test_common_smk_holds_paths_and_input_functions_only():
    text = COMMON.read_text()
    assert len(text.splitlines()) < 200
    tree = ast.parse(text)  # no rule, no Snakemake keyword: plain Python
    offenders = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise):
            offenders.append(f"line {node.lineno}: raise")
        elif isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            if name == "print" or re.match(r"(check_\w+$|os\.environ|os\.putenv|workflow\.register)", name):
                offenders.append(f"line {node.lineno}: {name}(...)")
        elif isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if re.match(r"(os\.environ|workflow\.)", ast.unparse(target)):
                    offenders.append(f"line {node.lineno}: {ast.unparse(target)} = ...")
    assert not offenders, offenders
    assert "group_settings" not in text and "resource_scopes" not in text and "register_resource" not in text
    assert not re.search(r"issue \d", text, flags=re.I)
    # everything at the top level is an import, a path / study constant or a function
    for node in tree.body:
        assert isinstance(node, (ast.Import, ast.ImportFrom, ast.Try, ast.Assign, ast.FunctionDef, ast.Expr)), (
            f"line {node.lineno}: {ast.unparse(node)[:80]}")


@pytest.mark.parametrize("marker, home", [
    (r"os\.environ\.update|os\.environ\[", "env.smk"),
    (r"check_study\(|check_model_configs\(|check_trainers\(|format_printed_plan\(", "checks.smk"),
    (r"resource_scopes:|group_settings|register_resource", "resources.smk"),
    (r"naive_compute\(", "resources.smk"),  # the price of a stage's hour, for a gate that may pivot
    (r"^rule all:", "../Snakefile"),
])
def test_parse_time_work_stands_in_the_file_named_after_it(marker, home):
    files = [SNAKEFILE, *RULES.glob("*.smk")]
    holders = sorted(str(p.relative_to(RULES) if p.parent == RULES else Path("..") / p.name)
                     for p in files if re.search(marker, p.read_text(), flags=re.M))
    assert holders == [home], holders


def test_rule_files_hold_no_functions():
    """`snakemake --lint`: "Mixed rules and functions in same snakefile"; functions go to the rule-free files."""
    for path in RULES.glob("*.smk"):
        text = path.read_text()
        if rule_blocks(text):
            assert not re.search(r"^\s*def \w+", text, flags=re.M), path


def test_every_rule_is_named_after_the_step_it_runs():
    """A rule that runs `python -m workflow.<step> [command]` shares a word with them (rule
    `stats` runs workflow.stats, `stage_table` runs workflow.tables stage, ...)."""
    words = lambda text: set(re.split(r"[_\-.\s]+", text)) - {"", "workflow", "data", "python", "m"}
    checked = 0
    for path in [SNAKEFILE, *RULES.glob("*.smk")]:
        for name, body in rule_blocks(path.read_text()).items():
            step = re.search(r"python -m (workflow\.[\w.]+)(?: ([a-z][a-z-]*))?", body)
            if step is None:
                continue
            checked += 1
            step_words = words(step.group(1)) | words(step.group(2) or "")
            stems = {w.rstrip("s") for w in step_words}
            assert words(name) & step_words or {w.rstrip("s") for w in words(name)} & stems, (path.name, name, step.group(0))
    assert checked >= 15


def test_the_downloads_stand_in_download_smk_and_rule_stats_runs_the_stats_step():
    assert not (RULES / "datasets.smk").exists()
    download = rule_blocks((RULES / "download.smk").read_text())
    assert "download_checked" in download and "python -m workflow.download" in download["download_checked"]
    gates = rule_blocks((RULES / "gates.smk").read_text())
    assert "summarize_variant" not in gates and "python -m workflow.stats" in gates["stats"]
