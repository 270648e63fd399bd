"""The files a script run reads (workflow/study/script_files.py) and how a trainer's ``inputs``
merge over study < stage < variant (workflow/study/resolve.py), on small files written here."""

from __future__ import annotations

from pathlib import Path

import pytest

from workflow.study.resolve import merged_inputs
from workflow.study.script_files import input_files, local_imports, named_files, tracked_files
from workflow.study.trainer_env import redact_study, redact_trainer, restore_trainer, token
from workflow.study.trainer_section import TrainerConfigError


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """train.py imports model (a package), which imports .layers (relative) and numpy (not local)."""
    root = tmp_path / "work"
    (root / "model").mkdir(parents=True)
    (root / "cfg").mkdir()
    (root / "train.py").write_text("import os\nimport model\nfrom utils import helper\n")
    (root / "utils.py").write_text("def helper():\n    from deep.inner import x  # inside a function\n")
    (root / "deep").mkdir()
    (root / "deep" / "__init__.py").write_text("")
    (root / "deep" / "inner.py").write_text("x = 1\n")
    (root / "model" / "__init__.py").write_text("from .layers import Block\nimport numpy\n")
    (root / "model" / "layers.py").write_text("class Block: ...\n")
    (root / "unused.py").write_text("")
    for name in ("a", "b"):
        (root / "cfg" / f"{name}.py").write_text("x = 1\n")
    (tmp_path / "outside.py").write_text("")
    return root


def trainer(workdir: Path, **keys) -> dict:
    return {"script": str(workdir / "train.py"), "workdir": str(workdir), "args": [], "env": {}, "inputs": [], **keys}


def test_local_imports_are_found_transitively_inside_workdir(workdir):
    found = {str(Path(p).relative_to(workdir)) for p in local_imports(workdir / "train.py", workdir)}
    assert found == {"model/__init__.py", "model/layers.py", "utils.py", "deep/__init__.py", "deep/inner.py"}


def test_inputs_expand_placeholders_and_globs_per_run(workdir):
    t = trainer(workdir, inputs=["cfg/{variant}.py", "cfg/*.py"])
    files = input_files(t, {"variant": "b"}, "w")
    assert [Path(p).relative_to(workdir).as_posix() for p in files] == ["cfg/b.py", "cfg/a.py", "cfg/b.py"]
    with pytest.raises(TrainerConfigError, match=r"w\.trainer\.inputs\[0\]: .*cfg/c\.py does not exist"):
        input_files(trainer(workdir, inputs=["cfg/{variant}.py"]), {"variant": "c"}, "w")
    with pytest.raises(TrainerConfigError, match=r"'none/\*\.py' matches no file"):
        input_files(trainer(workdir, inputs=["none/*.py"]), {}, "w")


def test_files_named_in_args_command_and_env_are_tracked_only_inside_workdir(workdir):
    t = trainer(workdir, args=["cfg/{variant}.py", "--other=cfg/a.py", "--lr=0.1", str(workdir.parent / "outside.py")],
                env={"CONFIG": "cfg/b.py"})
    named = {Path(p).relative_to(workdir).as_posix() for p in named_files(t, {"variant": "a"}, "w")}
    assert named == {"cfg/a.py", "cfg/b.py"}
    tracked = tracked_files(t, {"variant": "a"}, "w")
    assert tracked[0] == str(workdir / "train.py") and str(workdir / "unused.py") not in tracked
    assert str(workdir / "model" / "layers.py") in tracked and len(tracked) == len(set(tracked))


def test_a_variants_inputs_add_to_the_studys_and_bang_drops_one():
    assert merged_inputs([{"inputs": ["model.py"]}, None, {"inputs": ["cfg/x.py"]}]) == ["model.py", "cfg/x.py"]
    assert merged_inputs([{"inputs": ["model.py", "data.py"]}, {}, {"inputs": ["!model.py"]}]) == ["data.py"]
    assert merged_inputs([{"script": "t.py"}, None, {}]) is None


def test_env_values_travel_as_tokens_and_come_back_from_the_environment():
    section = {"script": "t.py", "env": {"KEY": "sk-secret", "STEPS": "{num_iterations}"}}
    redacted = redact_trainer(section)
    assert "sk-secret" not in str(redacted) and redacted["env"]["KEY"] == token("sk-secret")
    study = redact_study({"trainer": section, "stages": {}, "variants": {"v": {"trainer": {"env": {"X": "sk-2"}}}}})
    assert "sk-secret" not in str(study) and "sk-2" not in str(study)
    environ = {"STAGERUN_TRAINER_ENV": f'{{"{token("sk-secret")}": "sk-secret", "{token("{num_iterations}")}": '
                                      '"{num_iterations}"}'}
    assert restore_trainer(redacted, environ)["env"] == section["env"]
    with pytest.raises(KeyError, match="trainer.env.KEY: its value is not in"):
        restore_trainer(redacted, {})
