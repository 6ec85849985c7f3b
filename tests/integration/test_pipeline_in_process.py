"""pipeline.reproduce_stages runs `dvc repro` through DVC's API with the fraudguard stages in this process:
the same outputs and dvc.lock as the `dvc repro` command, DVC's up-to-date check, and a failing stage named."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from pathlib import Path

import pytest
import yaml

from fraudguard.errors import DataVersionError
from fraudguard.pipeline import PIPELINE_STAGES, reproduce_stages

from project_factory import BIN, make_project, run_checked

pytestmark = pytest.mark.slow

WORLD = {"train": {"epochs": 2}}


def _env() -> dict[str, str]:
    # The `dvc repro` command runs `python -m ...`: this environment's python.
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1"}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# Files whose content holds wall-clock seconds (per-epoch timings): they differ between any two runs.
TIMED_OUTPUTS = ("models/metrics.json", "models/training_history.json")


def _lock_without_timings(root: Path) -> dict:
    """dvc.lock with the md5 and size of the timing-bearing outputs blanked."""
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    for stage in lock["stages"].values():
        for out in stage.get("outs", []):
            if out["path"] in TIMED_OUTPUTS:
                out["md5"] = out["size"] = None
    return lock


def _untimed_metrics(root: Path) -> dict:
    metrics = json.loads((root / "models" / "metrics.json").read_text())
    return {k: v for k, v in metrics.items() if "seconds" not in k and "ratio_estimate" not in k}


@pytest.fixture
def project(tmp_path) -> Path:
    return make_project(tmp_path / "in-process", _env(), WORLD)


def test_in_process_repro_writes_the_same_weights_and_lock_as_the_dvc_command(project, tmp_path):
    by_command = make_project(tmp_path / "by-command", _env(), WORLD)
    run_checked([str(BIN / "dvc"), "repro"], by_command, _env(), timeout=900)
    threads = __import__("torch").get_num_threads()
    cwd = os.getcwd()

    outcome = reproduce_stages(project)

    assert outcome.ran == PIPELINE_STAGES
    assert _sha256(project / "models" / "model.pt") == _sha256(by_command / "models" / "model.pt")
    assert _lock_without_timings(project) == _lock_without_timings(by_command)
    assert _untimed_metrics(project) == _untimed_metrics(by_command)
    # What the stages set in this process is put back.
    assert __import__("torch").get_num_threads() == threads
    assert os.getcwd() == cwd


def test_a_second_in_process_repro_finds_every_stage_up_to_date(project):
    reproduce_stages(project)
    lock = (project / "dvc.lock").read_text()
    weights = _sha256(project / "models" / "model.pt")

    outcome = reproduce_stages(project)

    assert outcome.ran == ()
    assert set(outcome.skipped) == set(PIPELINE_STAGES)
    assert (project / "dvc.lock").read_text() == lock
    assert _sha256(project / "models" / "model.pt") == weights


def test_a_failing_stage_raises_naming_it_and_nothing_after_it_is_run_or_recorded(project, caplog):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["validate"]["max_quarantine_share"] = 0.0  # the simulated data always has rows to quarantine
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    root_handlers = list(logging.getLogger().handlers)

    with pytest.raises(DataVersionError) as raised:
        reproduce_stages(project)

    message = str(raised.value)
    assert "stage 'validate' failed" in message and "quarantine" in message
    assert not (project / "dvc.lock").exists()
    assert not (project / "data" / "validated").exists() or not any((project / "data" / "validated").iterdir())
    assert not (project / "data" / "features").exists()
    assert not (project / "models" / "model.pt").exists()
    assert logging.getLogger().handlers == root_handlers
    assert sys.modules["dvc.stage.run"].cmd_run.__module__ == "dvc.stage.run"  # DVC's runner is back


def test_stages_run_in_the_stage_interpreter_write_the_same_weights_and_lock_as_in_process(project, tmp_path,
                                                                                           caplog):
    from fraudguard import stage_interpreter

    here = make_project(tmp_path / "here", _env(), WORLD)
    reproduce_stages(here)
    assert stage_interpreter.start()
    assert stage_interpreter.takes("train") and stage_interpreter.takes("evaluate")
    caplog.set_level(logging.INFO, logger="fraudguard.pipeline")

    outcome = reproduce_stages(project)

    assert outcome.ran == PIPELINE_STAGES
    elsewhere = {line.split("'")[1] for line in caplog.messages if "in the stage interpreter started ahead" in line}
    assert elsewhere == {"train", "evaluate"}
    assert _sha256(project / "models" / "model.pt") == _sha256(here / "models" / "model.pt")
    assert _lock_without_timings(project) == _lock_without_timings(here)
    assert _untimed_metrics(project) == _untimed_metrics(here)
    assert not stage_interpreter.takes("train")  # released with the repro: it held the training's data


def test_a_stage_failing_in_the_stage_interpreter_raises_naming_it_and_is_not_recorded(project):
    from fraudguard import stage_interpreter

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["validate"]["max_quarantine_share"] = 0.0  # the simulated data always has rows to quarantine
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert stage_interpreter.start(stages=("validate",), warm_imports=())

    with pytest.raises(DataVersionError) as raised:
        reproduce_stages(project)

    message = str(raised.value)
    assert "stage 'validate' failed" in message and "quarantine" in message
    assert not (project / "dvc.lock").exists()
    assert not (project / "data" / "features").exists()
    assert not stage_interpreter.takes("validate")
