"""Bad input, second round: studies that must stop before any job with an error naming
the key, value and reason, or print a warning with the plan (legal, but probably not meant).
In-process: the checks the Snakefile runs at parse (workflow.study.checks, overrides, printed plan)
and the registry's tokens folders; tests/integration/test_bad_input.py plans such studies with a
real ``snakemake -n`` and runs the jobs where it matters."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from workflow.data.prepare import prepare
from workflow.data.registry import token_options, tokens_dir, tokens_dir_name, tokens_mismatch
from workflow.data.writers import DataError
from workflow.study.checks import (
    check_data_vocab, check_model_configs, check_script_data, check_study, check_study_data, plan_warnings,
    tokens_folder_options,
)
from workflow.study.overrides import prepare_study
from workflow.study.printed_plan import format_printed_plan
from workflow.study.resolve import run_config
from workflow.study.schema import ConfigError
from workflow.study.trainer_section import TrainerConfigError, check_placeholders, check_section

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "configs" / "tiny.yaml"
SCHEMA = str(REPO / "config" / "schema.yaml")


def study(edit=None, **changes) -> dict:
    """tests/configs/tiny.yaml, edited, with ``set``/sweep applied and the schema's defaults (as the Snakefile)."""
    config = yaml.safe_load(TINY.read_text())
    config.update(copy.deepcopy(changes))
    if edit:
        edit(config)
    prepare_study(config)
    validate(config, SCHEMA)
    return config


# ---- item 1: braces in a folder ------------------------------------------------------------

@pytest.mark.parametrize("key", ["results_dir", "data_dir"])
@pytest.mark.parametrize("value", ["res{x}", "a/{{b}}", "c}"])
def test_a_folder_with_braces_is_rejected_naming_the_key(key, value):
    config = study(**{key: value})
    with pytest.raises(ConfigError, match=rf"^{key}: {value!r} has a brace, but it becomes part of every output "
                                          r"path, where Snakemake reads braces as wildcards: it cannot be a path"):
        check_study(config)


# ---- item 2: tokens folders named by the options that change the tokens -------------------

def test_tokens_folder_names_the_options_that_change_the_tokens():
    assert tokens_dir_name("shakespeare_char", None) == "shakespeare_char"
    assert tokens_dir_name("shakespeare_char", {"train_fraction": 0.9}) == "shakespeare_char"  # the default, spelled out
    assert tokens_dir_name("shakespeare_char", {"mirror": "http://m"}) == "shakespeare_char"  # changes no token
    other = tokens_dir_name("shakespeare_char", {"train_fraction": 0.99999})
    assert other.startswith("shakespeare_char-") and len(other) == len("shakespeare_char-") + 12
    assert other != tokens_dir_name("shakespeare_char", {"train_fraction": 0.8})
    assert tokens_dir("shakespeare_char", "d", {"train_fraction": 0.99999}) == f"d/tokens/{other}"
    assert token_options("openwebtext", {"num_proc": 8, "batch_docs": 16}) == {}  # speed only
    # the run config carries the options (absent for the defaults: those runs keep their config)
    assert "dataset_options" not in run_config(study(), "A", "baseline", 1337)
    config = study(datasets={"shakespeare_char": {"train_fraction": 0.99999}})
    assert run_config(config, "A", "baseline", 1337)["dataset_options"] == {"train_fraction": 0.99999}


def test_a_finished_tokens_folder_is_never_rewritten_with_other_options(raw_copy, tmp_path):
    raw = raw_copy("tinyshakespeare", "input.txt")
    out = tmp_path / "tokens" / "shakespeare_char"
    meta = prepare("shakespeare_char", raw, out)
    assert meta["options"]["train_fraction"] == 0.9  # meta.json records the options
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(DataError, match=r"holds finished tokens, but they were made with datasets.shakespeare_char "
                                        r"options \{\}, but the study gives \{\"train_fraction\": 0.99999\}"):
        prepare("shakespeare_char", raw, out, {"train_fraction": 0.99999})
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing touched
    prepare("shakespeare_char", raw, out, {"train_fraction": 0.9, "mirror": "http://m"})  # the same tokens: allowed
    assert tokens_mismatch(meta, "shakespeare_char", {"train_fraction": 0.99999}).startswith("they were made with")
    assert tokens_mismatch(meta, "shakespeare_gpt2", None) == "they are dataset 'shakespeare_char', not 'shakespeare_gpt2'"
    assert tokens_mismatch(meta, "shakespeare_char", None) is None


# ---- item 3: model.vocab_size below the data's symbols (at parse when meta.json exists) ------

def test_vocab_size_below_the_data_names_the_key_and_the_symbols():
    meta = {"vocab_size": 65}
    with pytest.raises(ConfigError, match=r"^model.vocab_size: 10, but the data \(data/tokens/x/meta.json\) has 65 "
                                          r"symbols \(token ids 0..64\)"):
        check_data_vocab(study(model={"preset": "nanogpt-small", "vocab_size": 10}), meta, "data/tokens/x/meta.json")
    config = study()
    config["variants"]["lr-6e-3"]["model"] = {"vocab_size": 64}
    with pytest.raises(ConfigError, match=r"^variants.lr-6e-3.model.vocab_size: 64, but the data"):
        check_data_vocab(config, meta, "m")
    config["variants"]["lr-6e-3"]["model"] = {"vocab_size": 65}
    check_data_vocab(config, meta, "m")  # enough: allowed


def test_the_vocab_check_at_parse_reads_the_study_tokens_once_they_exist(tmp_path):
    config = study(data_dir=str(tmp_path), model={"preset": "nanogpt-small", "vocab_size": 10})
    check_study_data(config)  # no tokens yet: nothing to check (the launcher checks before training)
    meta = tmp_path / "tokens" / "shakespeare_char" / "meta.json"
    meta.parent.mkdir(parents=True)
    meta.write_text(json.dumps({"vocab_size": 65}))
    with pytest.raises(ConfigError, match=rf"^model.vocab_size: 10, but the data \({meta}\) has 65 symbols"):
        check_study_data(config)
    meta.write_text("{")
    with pytest.raises(ValueError, match=rf"^{meta}: invalid JSON at line 1"):
        check_study_data(config)


def test_a_script_asking_for_nanogpt_data_needs_a_dataset_with_split_files():
    trainers = {("A", "mine"): {"script": "/x/train.py", "args": ["--data={nanogpt_data_dir}"], "env": {}, "command": None}}
    check_script_data(study(), trainers)  # shakespeare_char has train.bin / val.bin
    check_script_data(study(dataset="fineweb10B"), {})  # no script run: nothing asked for
    with pytest.raises(ConfigError, match=r"^trainer: \{nanogpt_data_dir\} asked for, but fineweb10B is a shard "
                                          r"dataset .* use \{train_files\} / \{val_files\}"):
        check_script_data(study(dataset="fineweb10B"), trainers)


def test_a_tokens_folder_is_made_only_with_the_options_it_names():
    assert tokens_folder_options(study(), "shakespeare_char") == {}
    config = study(datasets={"shakespeare_char": {"train_fraction": 0.99999}})
    other = tokens_dir_name("shakespeare_char", {"train_fraction": 0.99999})
    assert tokens_folder_options(config, other) == {"train_fraction": 0.99999}
    with pytest.raises(ConfigError, match=rf"^data/tokens/shakespeare_char: the study's datasets.shakespeare_char "
                                          rf"options name the folder '{other}'"):
        tokens_folder_options(config, "shakespeare_char")


# ---- items 4, 5, 9: warnings in the printed plan ------------------------------------------

def _diloco(config):
    config["variants"]["lr-6e-3"]["train"]["strategy"] = {"name": "diloco", "tau": 2, "outer_steps": 2}
    config["stages"]["A"]["train"]["num_iterations"] = 7


def _gossip(config):
    config["variants"]["lr-6e-3"]["train"]["strategy"] = {"name": "gossip"}


def _one_seed(config):
    config["stages"]["C"]["seeds"] = 1


def _model_only_script(config):
    config["trainer"] = {"script": "train.py", "args": ["--seed={seed}"]}
    config["variants"] = {"baseline": {}, "wider": {"model": {"n_embd": 64}}}


@pytest.mark.parametrize("edit, warnings", [
    (_diloco, [
        w for s, n in (("A", 7), ("B", 12), ("C", 16)) for w in (
            f"stages.{s} + variants.lr-6e-3: strategy.outer_steps 2 x tau 2 = 4 steps replaces train.num_iterations "
            f"{n}: the run trains 4 steps",
            f"stages.{s} + variants.lr-6e-3: trains 4 steps (strategy.outer_steps 2 x tau 2), the baseline "
            f"'baseline' {n}: the stage compares runs of different lengths")
    ]),
    (_gossip, [
        f"stages.{s} + variants.lr-6e-3: strategy gossip with 1 worker per run (stages.{s}.resources): no "
        "neighbours, so it trains alone like ddp on one process and is no communication variant; give the stage "
        "nproc_per_node >= 2" for s in "ABC"
    ]),
    (_one_seed, [
        "stages.C.seeds: 1, but the verdict's paired t-test needs at least 2 seed-matched pairs (and the target "
        "test 2 runs): no variant can win this study; give the last stage seeds >= 2",
    ]),
    (_model_only_script, [
        f"stages.{s} + variants.wider: differs from the baseline 'baseline' only in model, which a script trainer "
        "never sees: its runs are the baseline's (give the script what differs through args, env or train keys)"
        for s in "ABC"
    ]),
], ids=["diloco_length", "gossip_one_worker", "last_stage_one_seed", "script_variant_only_model"])
def test_plan_warns_about_legal_studies_that_are_probably_not_meant(edit, warnings):
    config = study(edit)
    check_study(config)  # legal
    assert plan_warnings(config) == warnings
    plan = format_printed_plan(config).splitlines()
    assert plan[-len(warnings):] == [f"  WARNING: {w}" for w in warnings]
    assert plan_warnings(study()) == [] and "WARNING" not in format_printed_plan(study())


# ---- item 6: DepthWarm starting with more layers than the model has -------------------------

def test_depth_warm_start_layers_above_n_layer_is_an_error():
    config = study()
    config["variants"]["lr-6e-3"]["model"] = {"n_layer": 1, "depth_warm": True, "depth_warm_start_layers": 2}
    with pytest.raises(ConfigError, match=r"^variants.lr-6e-3.model: depth_warm_start_layers: 2, but n_layer is 1: "
                                          r"DepthWarm cannot start with more layers than the model has"):
        check_model_configs(config)
    config["variants"]["lr-6e-3"]["model"]["depth_warm_start_layers"] = 1
    check_model_configs(config)


# ---- items 7, 8: set= that adds a stage, an unclosed list ----------------------------------

@pytest.mark.parametrize("value, message", [
    ("stages.Z.seeds=2", r"set 'stages.Z.seeds=2': the study has no stage 'Z' \(stages: A, B, C\); set changes "
                         r"existing stages and adds none"),
    (["train.lr=3e-3", "variants.lr-6e3.train.lr=1"],
     r"set 'variants.lr-6e3.train.lr=1': the study has no variant 'lr-6e3' \(variants: baseline, lr-6e-3, lr-1e-4, "
     r"diverge\)"),
    ("[train.lr=3e-3, stages.A.seeds=3", r"set: '\[train.lr=3e-3, stages.A.seeds=3' has no closing '\]': an unclosed "
                                         r"list is read as one string; write the whole list"),
    ("train.lr=3e-3]", r"set: 'train.lr=3e-3\]': the '\]' after 'train.lr=3e-3' closes nothing that was opened"),
], ids=["unknown_stage", "unknown_variant", "unclosed_list", "unopened_list"])
def test_set_errors_name_the_entry(value, message):
    config = yaml.safe_load(TINY.read_text())
    config["set"] = value
    with pytest.raises(ConfigError, match=message):
        prepare_study(config)
    assert "Z" not in config["stages"]


def test_set_still_changes_existing_stages_and_variants():
    config = study(set=["stages.C.seeds=4", "variants.lr-6e-3.train.lr=0.5", "[train.lr=1e-3]"[1:-1]])
    assert config["stages"]["C"]["seeds"] == 4 and config["variants"]["lr-6e-3"]["train"]["lr"] == 0.5
    assert json.dumps(sorted(config["stages"])) == '["A", "B", "C"]'


# ---- third round: settings that can never work, trainer hints -------------------------------

def _set(path: str, value):
    def edit(config):
        node = config
        *parents, last = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return edit


@pytest.mark.parametrize("path, value, message", [
    ("verdict.winners", "target",
     "verdict.winners: 'target' needs verdict.target_val_loss (a winner must beat it), but the study sets none: set "
     "verdict.target_val_loss (e.g. 3.28), or winners: baseline"),
    ("verdict.winners", "both", "verdict.winners: 'both' needs verdict.target_val_loss"),
    ("stages.A.gate.min_successful_runs", 3,
     "stages.A.gate.min_successful_runs: 3, but stage A runs 2 seed(s) per variant (stages.A.seeds): no variant can "
     "pass the gate, so stage A would train for nothing; set min_successful_runs <= 2 or seeds >= 3"),
    ("datasets.multi30k_en_de.pair_format", "{x}\n{de}",
     "datasets.multi30k_en_de.pair_format: '{x}\\n{de}' names the field {x}, but a pair has only {en} (the English "
     "sentence) and {de} (the German one); write {{ and }} for literal braces"),
    ("datasets.multi30k_en_de.pair_format", "{en",
     "datasets.multi30k_en_de.pair_format: '{en': expected '}' before end of string (write {{ and }} for literal "
     "braces)"),
], ids=["winners_target", "winners_both", "min_successful_runs", "pair_format_field", "pair_format_brace"])
def test_settings_that_can_never_work_stop_before_any_job(path, value, message):
    def edit(config):
        config["verdict"].pop("target_val_loss", None)
        _set(path, value)(config)
    config = study(edit=edit)
    with pytest.raises(ConfigError) as err:
        check_study(config)
    assert str(err.value).startswith(message), str(err.value)


def test_pair_format_with_its_own_fields_and_literal_braces_passes():
    check_study(study(edit=_set("datasets.multi30k_en_de.pair_format", "{{en}}: {en}\n{de}")))


@pytest.mark.parametrize("edit, warning", [
    (_set("stages.A.gate.pivot", True),
     "stages.A.gate.pivot: true, but a pivot runs the next-best variant of the previous gate, and A is the first "
     "stage: it has no previous gate, so the setting does nothing (set pivot on a later gate)"),
    (_set("stages.A.seeds", 1),
     "stages.A.gate.min_successful_runs: 2, but stage A runs 1 seed(s) per variant: no variant can pass the gate; "
     "set gate.min_successful_runs: 1 or seeds >= 2"),
], ids=["pivot_on_first_gate", "default_min_successful_runs"])
def test_legal_but_unmeant_gates_warn_with_the_plan(edit, warning):
    config = study(edit=edit)
    check_study(config)  # legal
    assert warning in plan_warnings(config)
    assert f"WARNING: {warning}" in format_printed_plan(config)


def test_the_tiny_study_has_no_gate_warning():
    assert not [w for w in plan_warnings(study()) if ".gate." in w]


@pytest.mark.parametrize("written, known", [
    ("max_iters", "num_iterations"), ("lr_decay_iters", "num_iterations"), ("eval_interval", "val_loss_every"),
    ("learning_rate", "lr"), ("warmup_steps", "warmup_iters"), ("num_iterationz", "num_iterations"),
])
def test_placeholder_hint_names_the_documented_train_key(written, known):
    train = run_config(study(), "A", "baseline", 1337)["train"]
    with pytest.raises(TrainerConfigError) as err:
        check_placeholders({"script": "train.py", "args": [f"--x={{{written}}}"]}, train, "stages.A + variants.v")
    assert str(err.value).startswith(f"stages.A + variants.v.trainer.args[0]: unknown placeholder {{{written}}} in "
                                      f"'--x={{{written}}}'; did you mean {{{known}}}?"), str(err.value)


@pytest.mark.parametrize("pattern, error", [
    (r"(val) loss ([0-9.]+)",
     "stages.A + variants.v.trainer.metrics.regex.val_loss: '(val) loss ([0-9.]+)' has 2 groups and none named "
     "val_loss, so group 1 '(val)' would be read as val_loss; name the value's group, "
     "(?P<val_loss>[-+0-9.eE]+|nan|inf), or make the others non-capturing, (?:...)"),
    (r"(?P<split>val) loss ([0-9.]+)", "has 2 groups and none named val_loss, so group 1 '(?P<split>val)' would be read"),
    (r"val loss ([0-9.]+)", None),
    (r"(val) loss (?P<val_loss>[0-9.]+)", None),
    (r"(?:val) loss ([0-9.]+)", None),
], ids=["two_unnamed", "other_name", "one_group", "named", "non_capturing"])
def test_a_metrics_regex_names_the_group_it_reads(pattern, error):
    trainer = {"script": "train.py", "launcher": "python", "metrics": {"regex": {"val_loss": pattern}}}
    if error is None:
        check_section(trainer, "stages.A + variants.v")
        return
    with pytest.raises(TrainerConfigError) as err:
        check_section(trainer, "stages.A + variants.v")
    assert error in str(err.value)
