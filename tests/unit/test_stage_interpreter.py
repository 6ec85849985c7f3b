"""fraudguard.stage_interpreter: which stages a started interpreter takes, and what the flow loads meanwhile
(fraudguard.preload) depending on where the training runs."""

from __future__ import annotations

import json
import time

import pytest

from fraudguard import preload, stage_interpreter


@pytest.fixture
def interpreter_for_train_and_evaluate():
    assert stage_interpreter.start(warm_imports=())
    yield
    stage_interpreter.release()


def test_without_a_started_interpreter_no_stage_is_taken_and_running_one_there_is_refused(tmp_path):
    assert not stage_interpreter.takes("train")
    with pytest.raises(RuntimeError, match="no stage interpreter started"):
        stage_interpreter.run_stage("train", "fraudguard.stages.train", tmp_path)


def test_a_second_start_is_refused_while_one_runs(interpreter_for_train_and_evaluate):
    assert not stage_interpreter.start(warm_imports=())
    assert stage_interpreter.takes("train") and stage_interpreter.takes("evaluate")
    assert not stage_interpreter.takes("validate")


def test_a_stage_module_that_fails_there_reports_why(interpreter_for_train_and_evaluate, tmp_path):
    reason = stage_interpreter.run_stage("train", "fraudguard.no_such_stage_module", tmp_path)
    assert reason is not None and "ModuleNotFoundError" in reason and "no_such_stage_module" in reason


def test_a_stage_asked_for_during_the_warm_up_starts_after_the_module_being_loaded_not_after_the_rest(
        tmp_path, monkeypatch):
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "warm_up_slow_module.py").write_text("import time\ntime.sleep(1.0)\n")
    (modules / "warm_up_module_never_needed.py").write_text("import time\ntime.sleep(120)\n")
    (modules / "probe_stage.py").write_text(
        "import json, sys\nfrom pathlib import Path\n\n\ndef main(wdir):\n"
        "    loaded = sorted(name for name in sys.modules if name.startswith('warm_up_'))\n"
        "    Path(wdir, 'loaded.json').write_text(json.dumps(loaded))\n")
    monkeypatch.syspath_prepend(str(modules))  # a spawned interpreter gets this sys.path
    assert stage_interpreter.start(stages=("probe",),
                                   warm_imports=("warm_up_slow_module", "warm_up_module_never_needed"))
    try:
        asked = time.perf_counter()
        assert stage_interpreter.run_stage("probe", "probe_stage", tmp_path) is None
        waited = time.perf_counter() - asked
    finally:
        stage_interpreter.release()

    # The warm-up stopped when the stage came (the module it was loading, if any, finished first): the stage
    # did not queue behind the two-minute import.
    assert "warm_up_module_never_needed" not in json.loads((tmp_path / "loaded.json").read_text())
    assert waited < 60


def test_with_the_training_elsewhere_the_server_boot_loads_only_the_first_stages(interpreter_for_train_and_evaluate,
                                                                                 tmp_path, small_settings):
    boot = [name for name, _ in preload.while_server_boots(tmp_path, small_settings.registry, small_settings.gates)]
    training = [name for name, _ in preload.during_training(tmp_path, small_settings.registry,
                                                            small_settings.gates)]

    assert boot == list(preload.STAGE_IMPORTS)  # no torch, ART, MLflow: they would compete with the boot
    # This interpreter is idle while the other trains: registration's and the gates' libraries load here, and
    # Evidently's interpreter starts.
    assert "mlflow" in training and "MLflow store" in training and "gate modules" in training
    assert training[0] == "Evidently's interpreter"


def test_with_the_training_here_the_server_boot_loads_everything_and_the_training_time_only_other_interpreters(
        tmp_path, small_settings):
    boot = [name for name, _ in preload.while_server_boots(tmp_path, small_settings.registry, small_settings.gates)]
    training = [name for name, _ in preload.during_training(tmp_path, small_settings.registry,
                                                            small_settings.gates)]

    assert boot[:len(preload.STAGE_IMPORTS)] == list(preload.STAGE_IMPORTS)
    assert set(preload.HEAVY_STAGE_IMPORTS) <= set(boot) and "mlflow" in boot and "gate modules" in boot
    assert training == ["Evidently's interpreter", "MLflow store and font cache, in another interpreter"]
