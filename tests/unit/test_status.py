"""``python -m workflow.status`` on bad input: every error is one line naming the file, never a
traceback; a missing folder is said; a corrupt gate, verdict or look file is reported as corrupt;
a sequential last stage counts only the seeds each variant runs. In-process (workflow.status.main) on real study files and real result files in a temporary folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workflow.analysis.status import load_study
from workflow.analysis.study_end import collect
from workflow.status import main
from workflow.study.resolve import stage_seeds

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "configs" / "tiny.yaml"

pytestmark = pytest.mark.unit


def status(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["--files-only", *args])
    out, err = capsys.readouterr()
    return code, out, err


def write_study(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def tiny_text() -> str:
    return TINY.read_text()


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("variants:\n  baseline: {}", "variants:\n\tbaseline: {}"),
     "workflow.status: {path}, line 18, column 1: not valid YAML (found character '\\t' that cannot start any "
     "token): YAML cannot indent with tabs; indent with spaces"),
    (lambda t: t.replace("  lr-1e-4:", "  lr-6e-3:"),
     "workflow.status: {path}, line 21: variants.lr-6e-3 is written twice (first on line 19); YAML would keep only "
     "the last one: rename or remove one of them"),
    (lambda t: t.replace("lr: 2.0e-3", "lr: two"),
     "workflow.status: {path}: invalid study config (config/schema.yaml): train.lr = 'two': 'two' is not of type "
     "'number'"),
], ids=["tab", "duplicate_key", "schema"])
def test_a_bad_study_file_is_one_line_naming_the_file(edit, message, tmp_path, capsys):
    path = write_study(tmp_path, edit(tiny_text()))
    code, out, err = status(capsys, "--configfile", str(path), "--directory", str(tmp_path))
    assert code == 1 and out == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(message.format(path=path)), err


def test_names_yaml_reads_as_numbers_and_2e_3_show_as_written(tmp_path, capsys):
    text = tiny_text().replace("  lr-1e-4:", "  123:").replace("  diverge:", "  yes:").replace("  C:\n", "  2:\n")
    path = write_study(tmp_path, text.replace("lr: 2.0e-3", "lr: 2e-3"))
    (tmp_path / "results" / "tiny").mkdir(parents=True)
    code, out, err = status(capsys, "--configfile", str(path), "--directory", str(tmp_path))
    assert code == 0 and err == "", err
    assert "baseline, lr-6e-3, 123, yes" in out and "after gate B" in out


def test_a_missing_directory_is_an_error_and_a_missing_results_folder_is_said(tmp_path, capsys):
    path = write_study(tmp_path, tiny_text())
    code, out, err = status(capsys, "--configfile", str(path), "--directory", str(tmp_path / "nowhere"))
    assert (code, out) == (1, "")
    assert err == (f"workflow.status: --directory {str(tmp_path / 'nowhere')!r} does not exist (it is Snakemake's "
                   "--directory: the folder that holds results_dir)\n")
    code, out, err = status(capsys, "--configfile", str(path), "--directory", str(tmp_path))
    assert code == 0 and "pending" in out
    assert err == (f"workflow.status: {tmp_path}/results/tiny: the results folder does not exist: the study has not "
                   "started here, or --directory / results_dir / study is not the one Snakemake ran with\n")
    code, _, err = status(capsys, "--configfile", str(tmp_path / "nope.yaml"))
    assert code == 1 and err == f"workflow.status: --configfile {str(tmp_path / 'nope.yaml')!r}: no such file\n"


def _decision(advanced: list[str]) -> dict:
    return {"stage": "A", "rule": "top_k", "params": {"k": 1}, "baseline": "baseline", "advanced": advanced,
            "ranking": [{"variant": v, "advanced": True, "mean": 3.0} for v in advanced]}


@pytest.mark.parametrize("name, content, problem", [
    ("gates/gate_A.json", "{broken", "corrupt, not JSON (invalid JSON at line 1, column 2: Expecting property name "
                                     "enclosed in double quotes); delete it and run snakemake again to make the gate A "
                                     "decision again from its runs"),
    ("gates/gate_A.json", json.dumps({"advanced": "lr-6e-3"}), "corrupt, advanced is \"lr-6e-3\", not a list of "
                                                                "variant names"),
    ("verdict.json", json.dumps({"winners": 5}), "corrupt, winners is 5, not a list of variant names; delete it and "
                                                 "run snakemake again to make the verdict again from its runs"),
    ("verdict.json", json.dumps({"winners": [], "results": [1, 2]}), "corrupt, results is [1, 2], not a list of rows"),
    ("verdict.json", "[]", "corrupt, a list, not the verdict's JSON object"),
], ids=["gate_not_json", "gate_wrong_type", "verdict_winners_int", "verdict_rows", "verdict_list"])
def test_a_corrupt_gate_or_verdict_is_reported_as_corrupt(name, content, problem, tmp_path, capsys):
    path = write_study(tmp_path, tiny_text())
    results = tmp_path / "results" / "tiny"
    (results / "gates").mkdir(parents=True)
    if name != "gates/gate_A.json":
        (results / "gates" / "gate_A.json").write_text(json.dumps(_decision(["lr-6e-3"])))
    (results / name).write_text(content)
    for args in ((), ("--json",)):
        code, out, err = status(capsys, "--configfile", str(path), "--directory", str(tmp_path), *args)
        assert code == 1 and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1, err
        assert err.startswith(f"workflow.status: {results / name}: {problem}"), err
    if name.startswith("gates"):  # stage B's variants are not known: said, not "pending"
        assert "after gate A (its decision file is corrupt)" in out or '"waiting_for": "gate A (its decision file ' \
               'is corrupt)"' in out


def test_a_good_gate_still_lists_the_next_stage(tmp_path, capsys):
    path = write_study(tmp_path, tiny_text())
    (tmp_path / "results" / "tiny" / "gates").mkdir(parents=True)
    (tmp_path / "results" / "tiny" / "gates" / "gate_A.json").write_text(json.dumps(_decision(["lr-6e-3"])))
    code, out, err = status(capsys, "--configfile", str(path), "--directory", str(tmp_path), "--json")
    assert (code, err) == (0, "")
    stages = {row["stage"]: row for row in json.loads(out)["stages"]}
    assert stages["B"]["variants"] == ["baseline", "lr-6e-3"]


def test_set_values_on_the_status_command_line_are_read_as_snakemake_reads_them(tmp_path, capsys):
    path = write_study(tmp_path, tiny_text())
    (tmp_path / "results" / "tiny").mkdir(parents=True)
    code, out, err = status(capsys, "--configfile", str(path), "--directory", str(tmp_path), "--json", "--config",
                            "set=[stages.A.seeds=3, train.curriculum_block_sizes=[16, 64], train.curriculum_steps=[4]]")
    assert (code, err) == (0, "")
    assert json.loads(out)["stages"][0]["seeds"] == 3


def _sequential_folder(tmp_path: Path, look: str | None, verdict: bool = False) -> tuple[Path, Path]:
    """The tiny study with a sequential last stage (looks after 2 and 3 seeds of stage C), gates A
    and B taken, the first look's 2 seeds of every stage-C variant run (result.json as the trainer
    writes it), and ``looks/look_1.json`` (``look``: its text; None: not written yet)."""
    text = tiny_text().replace("  target_val_loss: 4.0\n",
                               "  target_val_loss: 4.0\n  sequential: {looks: [2, 3], spending: obrien_fleming}\n")
    path = write_study(tmp_path, text)
    results = tmp_path / "results" / "tiny"
    (results / "gates").mkdir(parents=True)
    (results / "gates" / "gate_A.json").write_text(json.dumps(_decision(["lr-6e-3", "lr-1e-4"])))
    (results / "gates" / "gate_B.json").write_text(json.dumps({**_decision(["lr-6e-3", "lr-1e-4"]), "stage": "B"}))
    for variant, loss in (("baseline", 3.5), ("lr-6e-3", 3.1), ("lr-1e-4", 3.45)):
        for run_id, seed in enumerate((3337, 3338)):
            run = results / "stage_C" / variant / f"seed_{seed}"
            run.mkdir(parents=True)
            (run / "result.json").write_text(json.dumps({
                "study": "tiny", "stage": "C", "variant": variant, "seed": seed, "run_id": run_id, "success": True,
                "reason": None, "stopped_early": None, "final_step": 16, "num_iterations": 16,
                "final_val_loss": loss + run_id / 100, "final_train_loss": loss, "tokens_per_s": 5e4}))
    if look is not None:
        (results / "looks").mkdir()
        (results / "looks" / "look_1.json").write_text(look)
    if verdict:  # workflow.gates verdict's format (a look-1 decision per variant)
        rows = [{"variant": "baseline", "mean": 3.505, "winner": False, "verdict": "reference", "sequential": None}]
        rows += [{"variant": v, "mean": m, "winner": v == "lr-6e-3",
                  "verdict": f"{'WINNER' if v == 'lr-6e-3' else 'not a winner'} (decided at look 1 of 2)",
                  "sequential": {"decision": "winner" if v == "lr-6e-3" else "not_winner", "look": 1,
                                 "seeds": [3337, 3338], "reason": "crossed the efficacy boundary"}}
                 for v, m in (("lr-6e-3", 3.105), ("lr-1e-4", 3.455))]
        (results / "verdict.json").write_text(json.dumps({
            "baseline": "baseline", "winners": ["lr-6e-3"], "winners_rule": "both", "results": rows,
            "sequential": {"design": {"looks": [2, 3]}, "looks_seen": 1, "open": []}}))
    return path, results


def _look(open_: list[str]) -> str:
    """looks/look_<k>.json as workflow.gates look writes it."""
    variants = {v: {"decision": "open" if v in open_ else "not_winner", "look": None if v in open_ else 1,
                    "seeds": [3337, 3338]} for v in ("lr-6e-3", "lr-1e-4")}
    return json.dumps({"explanation": "...", "looks_seen": 1, "open": open_, "variants": {"baseline": None, **variants},
                       "winners": []})


@pytest.mark.parametrize("look, runs, pending, decided, note", [
    (None, 9, 3, {}, None),  # look 1 not written yet: every seed may still run
    (_look(["lr-1e-4"]), 8, 2, {"lr-6e-3": {"look": 1, "seeds": 2}},
     "stage C: lr-6e-3 decided at look 1 (2 of 3 seeds); 1 run not needed"),
    (_look([]), 6, 0, {"lr-6e-3": {"look": 1, "seeds": 2}, "lr-1e-4": {"look": 1, "seeds": 2}},
     "stage C: lr-6e-3, lr-1e-4 decided at look 1 (2 of 3 seeds); 3 runs not needed"),
], ids=["before_look_1", "one_open", "all_decided"])
def test_a_sequential_last_stage_counts_only_the_seeds_each_variant_runs(look, runs, pending, decided, note,
                                                                         tmp_path, capsys):
    path, results = _sequential_folder(tmp_path, look, verdict=look is not None and "[]" in look)
    args = ("--configfile", str(path), "--directory", str(tmp_path))
    code, out, err = status(capsys, *args, "--json")
    assert (code, err) == (0, "")
    c = json.loads(out)["stages"][2]
    assert (c["runs"], c["counts"]["done"], c["counts"]["pending"]) == (runs, 6, pending)
    assert (c["decided"], c["not_needed"]) == (decided, 9 - runs)
    code, out, _ = status(capsys, *args)
    assert code == 0
    assert (note in out) if note else ("not needed" not in out)
    if pending == 0:  # the finished study's end-of-call summary (rules/warm.smk) counts the same runs
        config = load_study([path], directory=tmp_path)
        summary = collect(results, ["C"], list(config["variants"]), {"C": stage_seeds(config, "C")})
        assert {k: summary["stages"][0][k] for k in ("runs", "done", "failed")} == {"runs": 6, "done": 6, "failed": 0}
        assert "lr-6e-3" in summary["verdict"]["winners"] and "verdict: winners: lr-6e-3" in out


def test_a_corrupt_look_is_reported_and_its_seeds_stay_pending(tmp_path, capsys):
    path, results = _sequential_folder(tmp_path, json.dumps({"open": "lr-1e-4"}))
    code, out, err = status(capsys, "--configfile", str(path), "--directory", str(tmp_path), "--json")
    assert code == 1
    assert err.startswith(f"workflow.status: {results}/looks/look_1.json: corrupt, open is \"lr-1e-4\", not a list of "
                          "variant names; delete it and run snakemake again to make the look 1 again from its runs"), err
    c = json.loads(out)["stages"][2]
    assert (c["runs"], c["counts"]["pending"], c["not_needed"]) == (9, 3, 0)
