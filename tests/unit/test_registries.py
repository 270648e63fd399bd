"""The registries of the extension points (optimizers, gate rules, datasets with their
tokenizers, strategies): the schema allows exactly the registered names, and a toy of each
(tests/toys/) is one module plus one registration line that works end to end."""

from pathlib import Path

import numpy as np
import pytest
import torch

from toys import best_one, digits, sign_sgd
from workflow.analysis.gates import decide_gate
from workflow.analysis.stats import summarize_runs
from workflow.analysis.status import most_variants
from workflow.data import registry
from workflow.data.prepare import prepare
from workflow.data.tokenizers import TOKENIZERS
from workflow.model.gpt import GPT
from workflow.optim.registry import OPTIMIZERS, build_optimizers
from workflow.strategies import STRATEGIES
from workflow.study.checks import check_study
from workflow.study.gate_rules import GATE_RULES, most_advancing
from workflow.model.spec import build_model_config
from workflow.optim.schedules import set_lr
from workflow.study.schema import ConfigError, load_schema, validate_section

pytestmark = pytest.mark.unit

SCHEMA = load_schema()


def test_the_schema_allows_exactly_the_registered_names():
    definitions = SCHEMA["definitions"]
    assert definitions["train"]["properties"]["optimizer"]["enum"] == sorted(OPTIMIZERS)
    assert sorted(definitions["gate"]["properties"]["rule"]["enum"]) == sorted(GATE_RULES)
    assert sorted(definitions["strategy"]["properties"]["name"]["enum"]) == sorted(STRATEGIES)
    # datasets: the registry is the only list (no enum to fall behind); the study check names it
    assert "enum" not in SCHEMA["properties"]["dataset"]
    assert "workflow.data.registry.DATASETS" in SCHEMA["properties"]["dataset"]["description"]
    config = {"study": "s", "dataset": "nope", "variants": {"baseline": {}}, "baseline": "baseline", "stages": {}}
    with pytest.raises(ConfigError, match=f"known: {', '.join(sorted(registry.DATASETS))};"):
        check_study(config)
    assert {ds.tokenizer for ds in registry.DATASETS.values()} <= set(TOKENIZERS)
    assert {ds.source for ds in registry.DATASETS.values()} - {None} <= set(registry.SOURCES)


def _tiny_gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(build_model_config({"preset": "nanogpt-small", "n_layer": 1, "n_embd": 32, "n_head": 2,
                                   "block_size": 16}, 11))


def test_a_toy_optimizer_is_one_module_and_one_line(monkeypatch):
    monkeypatch.setitem(OPTIMIZERS, "sign_sgd", sign_sgd.build_sign_sgd)  # the registration line
    model = _tiny_gpt()
    (opt,) = build_optimizers(model, {"optimizer": "sign_sgd", "lr": 0.01})
    assert isinstance(opt, sign_sgd.SignSGD)
    idx = torch.randint(0, 11, (2, 16), generator=torch.Generator().manual_seed(0))
    _, loss = model(idx, idx)
    loss.backward()
    before = [p.detach().clone() for p in model.parameters()]
    grads = [p.grad.clone() for p in model.parameters()]
    mult = set_lr([opt], 5, {"schedule": "linear", "num_iterations": 10, "warmup_iters": 0, "min_lr_ratio": 0.0})
    opt.step()  # the schedule recorded the peak lr itself (the toy never sets initial_lr)
    assert opt.param_groups[0]["initial_lr"] == 0.01 and mult == pytest.approx(0.5)
    for p, p0, g in zip(model.parameters(), before, grads):
        torch.testing.assert_close(p.detach(), p0 - 0.005 * g.sign())
    with pytest.raises(ValueError, match=r"unknown optimizer 'lamb'; valid: \['adamw', 'muon', 'sgd', 'sign_sgd'\]"):
        build_optimizers(model, {"optimizer": "lamb"})


def _summary(variant, losses):
    return summarize_runs([{"stage": "A", "variant": variant, "seed": 1000 + i, "success": True, "reason": None,
                            "final_val_loss": loss, "time_seconds": 1.0, "tokens_seen": 10, "world_size": 1}
                           for i, loss in enumerate(losses)])


def test_a_toy_gate_rule_is_one_module_and_one_line(monkeypatch):
    monkeypatch.setitem(GATE_RULES, "best_one", best_one.BestOne())  # the registration line
    gate = {**validate_section({"rule": "top_k"}, "gate", "stages.A.gate"), "rule": "best_one"}
    summaries = {"baseline": _summary("baseline", [2.0, 2.1]), "a": _summary("a", [1.5, 1.6]),
                 "b": _summary("b", [1.8, 1.9]), "c": _summary("c", [2.5, 2.4])}
    decision = decide_gate("A", gate, summaries, "baseline")
    assert decision["rule"] == "best_one" and decision["advanced"] == ["a"]
    assert decision["explanation"].startswith("best_one: the best eligible variant advances")
    rows = {r["variant"]: r for r in decision["ranking"]}
    assert rows["b"]["reason"] == "rank 2, mean 1.8500 vs the baseline's 2.0500" and not rows["b"]["advanced"]
    worse = {"baseline": _summary("baseline", [1.0, 1.1]), "a": _summary("a", [1.5, 1.6])}
    assert decide_gate("A", gate, worse, "baseline")["advanced"] == []
    # the plans and the status count with the rule's own most_advancing
    config = {"variants": {"baseline": {}, "a": {}, "b": {}, "c": {}}, "baseline": "baseline",
              "stages": {"A": {"seeds": 2, "gate": gate}, "B": {"seeds": 2}}}
    assert most_advancing(gate, 3) == 1
    assert most_variants(config, "B") == 2  # the baseline + the one best


def test_a_toy_dataset_is_one_module_and_one_line(monkeypatch, tmp_path: Path):
    for ds in digits.DATASETS:
        monkeypatch.setitem(registry.DATASETS, ds.name, ds)  # the registration line
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "digits.txt").write_text("31415926535897932384\n", encoding="ascii")
    options = {"folder": str(raw)}
    assert registry.dataset_raw_dir("toy_digits", "data", options) == str(raw)
    assert registry.dataset_raw_inputs("toy_digits", "data", options) == [str(raw / "digits.txt")]
    assert registry.tokens_dir_name("toy_digits", options) != "toy_digits"  # a non-default option names the folder
    out = Path(registry.tokens_dir("toy_digits", str(tmp_path / "data"), options))
    meta = prepare("toy_digits", registry.dataset_raw_dir("toy_digits", "data", options), out, options)
    assert meta["dataset"] == "toy_digits" and meta["vocab_size"] == 10
    assert meta["options"] == {"folder": str(raw), "train_fraction": 0.75, "raw_files": {}}
    train = np.fromfile(out / "train.bin", dtype=np.uint8)
    val = np.fromfile(out / "val.bin", dtype=np.uint8)
    assert train.tolist() == [int(c) for c in "314159265358979"] and val.tolist() == [int(c) for c in "32384"]
    assert registry.tokens_mismatch(meta, "toy_digits", options) is None
    assert TOKENIZERS[registry.get_dataset("toy_digits").tokenizer].planned_vocab({})[0] >= meta["vocab_size"]
    with pytest.raises(registry.UnknownNameError, match=r"datasets\.toy_digits\..*'fraction'.*train_fraction"):
        registry.dataset_options("toy_digits", {"fraction": 0.5})
