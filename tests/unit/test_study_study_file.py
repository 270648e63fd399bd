"""Study files read strictly (workflow.study.study_file) and ``set=`` list / mapping values
(workflow.study.overrides): the messages a user sees, through the library the Snakefile calls."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from workflow.study.overrides import apply_overrides, cli_value, override_entries
from workflow.study.schema import ConfigError
from workflow.study.study_file import load_study_file, load_study_text, reload_study

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "configs" / "tiny.yaml"

pytestmark = pytest.mark.unit


# ---- duplicate keys ------------------------------------------------------------------------

@pytest.mark.parametrize("text, key, first, second", [
    ("variants:\n  fast: {}\n  slow: {}\n  fast:\n    train: {lr: 1.0}\n", "variants.fast", 2, 4),
    ("stages:\n  A: {seeds: 2}\n  A: {seeds: 3}\n", "stages.A", 2, 3),
    ("study: a\nstudy: b\n", "study", 1, 2),
    ("stages:\n  A:\n    train: {lr: 1.0e-3, lr: 2.0e-3}\n", "stages.A.train.lr", 3, 3),
], ids=["variant", "stage", "top_level", "flow_mapping"])
def test_a_key_written_twice_is_an_error_naming_the_file_key_and_both_lines(text, key, first, second, tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_study_file(path)
    assert str(err.value) == (f"{path}, line {second}: {key} is written twice (first on line {first}); YAML would "
                              "keep only the last one: rename or remove one of them")


def test_a_merge_key_may_be_overridden_but_not_written_twice():
    assert load_study_text("base: &b {lr: 1, wd: 0}\nv:\n  <<: *b\n  lr: 2\n")["v"] == {"lr": 2, "wd": 0}
    with pytest.raises(ConfigError, match=r"line 5: v.lr is written twice \(first on line 4\)"):
        load_study_text("base: &b {lr: 1}\nv:\n  <<: *b\n  lr: 2\n  lr: 3\n")


# ---- names as written, 2e-3 a number ------------------------------------------------------

def test_names_yaml_would_type_stay_the_names_written():
    data = load_study_text("variants:\n  123: {}\n  yes: {}\n  on: {}\n  1.5: {}\n  null: {}\nstages:\n  2: {seeds: 2}\n")
    assert list(data["variants"]) == ["123", "yes", "on", "1.5", "null"]
    assert list(data["stages"]) == ["2"]
    assert data["stages"]["2"] == {"seeds": 2}  # values keep their types


@pytest.mark.parametrize("text, value", [
    ("2e-3", 0.002), ("2.0e-3", 0.002), ("1e+6", 1e6), ("-3E2", -300.0), (".5", 0.5), ("1.", 1.0),
    ("12", 12), ("1_000", 1000), ("v1e3", "v1e3"), ("'2e-3'", "2e-3"), ("1e-3x", "1e-3x"), ("true", True),
])
def test_numbers_without_a_dot_are_numbers_and_other_scalars_keep_their_yaml_type(text, value):
    got = load_study_text(f"x: {text}\n")["x"]
    assert got == value and type(got) is type(value)


def test_infinity_and_nan_still_read():
    data = load_study_text("a: .inf\nb: -.inf\nc: .nan\n")
    assert data["a"] == math.inf and data["b"] == -math.inf and math.isnan(data["c"])


def test_a_tab_indent_names_the_file_line_and_the_fix(tmp_path):
    path = tmp_path / "tab.yaml"
    path.write_text("study: x\nvariants:\n\tbaseline: {}\n")
    with pytest.raises(ConfigError) as err:
        load_study_file(path)
    assert str(err.value) == (f"{path}, line 3, column 1: not valid YAML (found character '\\t' that cannot start "
                              "any token): YAML cannot indent with tabs; indent with spaces")


def test_a_study_file_that_is_not_a_mapping_is_refused(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match=r"list.yaml: a study file is a mapping of keys .*, not a list"):
        load_study_file(path)


def test_shipped_studies_read_the_same_as_pyyaml_reads_them():
    """The strict loader changes nothing in a study that did not hit one of the traps (same run configs)."""
    import yaml

    files = sorted((REPO / "config").rglob("*.yaml")) + sorted((REPO / "tests" / "configs").rglob("*.yaml"))
    assert len(files) > 5
    for path in files:
        assert load_study_file(path) == (yaml.safe_load(path.read_text()) or {}), path


def test_reload_puts_the_command_line_config_on_top_of_the_strict_files(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("study: s\ntrain: {lr: 2e-3, batch_size: 8}\nvariants:\n  123: {}\n")
    config = {"study": "s", "train": {"lr": "2e-3"}, "variants": {123: {}}}  # as Snakemake read it
    reload_study(config, [path], {"train": {"batch_size": 4}, "results_dir": "r"})
    assert config == {"study": "s", "train": {"lr": 0.002, "batch_size": 4}, "variants": {"123": {}}, "results_dir": "r"}


# ---- set= with list and mapping values ------------------------------------------------------

@pytest.mark.parametrize("cli, expected", [
    ("train.curriculum_block_sizes=[16, 32]", [("train.curriculum_block_sizes", [16, 32])]),
    ("train.strategy={name: diloco, tau: 4}", [("train.strategy", {"name": "diloco", "tau": 4})]),
    ("[train.curriculum_block_sizes=[16, 32], train.lr=1e-3]",
     [("train.curriculum_block_sizes", [16, 32]), ("train.lr", 0.001)]),
    ("[train.strategy={name: diloco, tau: 4}, stages.A.seeds=3]",
     [("train.strategy", {"name": "diloco", "tau": 4}), ("stages.A.seeds", 3)]),
    ("[train.lr=1e-3, stages.A.seeds=3]", [("train.lr", 0.001), ("stages.A.seeds", 3)]),
], ids=["list", "mapping", "list_in_list", "mapping_in_list", "plain_list"])
def test_set_takes_list_and_mapping_values_alone_and_in_a_list(cli, expected):
    config = {"stages": {"A": {"seeds": 2}}, "variants": {"baseline": {}}, "set": cli_value(cli)}  # as Snakemake parses --config
    assert apply_overrides(config) == expected
    for key, value in expected:
        node = config
        for part in key.split(".")[:-1]:
            node = node[part]
        assert node[key.split(".")[-1]] == value


@pytest.mark.parametrize("cli, message", [
    ("[k=[16, 32]", "set: '[k=[16, 32]': a '[' is never closed inside the list's brackets [...]"),
    ("k=[16, 32", "set: 'k=[16, 32': a '[' is never closed (a list value is [16, 32], a mapping {a: 1}; several "
                  "sets: set='[KEY=VALUE, KEY=VALUE]')"),
    ("[a=1, b=[2]]]", "set: '[a=1, b=[2]]]': the ']' after 'a=1, b=[2]' closes nothing that was opened inside the "
                      "list's brackets [...]"),
    ("[a=1, b]", "set: 'b' is not KEY=VALUE (e.g. set='stages.C.train.num_iterations=350'; several: "
                 "set='[KEY=VALUE, KEY=VALUE]')"),
    ("[a=1, k=[16, 32]", "set: '[a=1, k=[16, 32]': a '[' is never closed inside the list's brackets [...]"),
    ("[train.lr=1e-3, k=2", "set: '[train.lr=1e-3, k=2' has no closing ']': an unclosed list is read as one string; "
                            "write the whole list, set='[KEY=VALUE, KEY=VALUE]', or one KEY=VALUE"),
    ("k={a: [1, 2}", "set: 'k={a: [1, 2}': the '}' after 'k={a: [1, 2' closes nothing that was opened"),
    ("train.lr=a: b: c", "set 'train.lr=a: b: c': the value 'a: b: c' is not valid YAML (mapping values are not "
                         "allowed here); quote a string, write a list as [16, 32] and a mapping as {a: 1}"),
], ids=["unclosed_inner", "unclosed_value", "extra_close", "not_key_value", "unclosed_in_list", "unclosed_list",
        "crossed", "bad_yaml"])
def test_set_errors_say_exactly_what_is_wrong(cli, message):
    config = {"stages": {"A": {"seeds": 2}}, "variants": {"baseline": {}}, "set": cli_value(cli)}
    with pytest.raises(ConfigError) as err:
        apply_overrides(config)
    assert str(err.value).startswith(message), str(err.value)


def test_set_entries_from_a_study_file_list():
    assert override_entries(["train.curriculum_block_sizes=[16, 32]", "train.lr=1e-3"]) == [
        "train.curriculum_block_sizes=[16, 32]", "train.lr=1e-3"]
