"""The Prefect flows in-process under one session-scoped `prefect_test_harness` (a real, temporary
Prefect API), on a small real project with a real MLflow store."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from project_factory import make_project

pytestmark = pytest.mark.slow

STRICT_QUALITY = {"gates": {"quality": {"min_average_precision": 0.999}}, "train": {"epochs": 1}}


@pytest.fixture(scope="session")
def prefect_api():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def project(tmp_path, monkeypatch, prefect_api):
    root = make_project(tmp_path / "project", None, STRICT_QUALITY)
    monkeypatch.setenv("FRAUDGUARD_PROJECT_DIR", str(root))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return root


def _load(root: Path, module: str, name: str):
    spec = importlib.util.spec_from_file_location(f"flow_{module}", root / "flows" / f"{module}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return getattr(mod, name)


def _registry_state(tmp_path: Path) -> tuple[set, dict]:
    """(registered version numbers, alias -> version) of model fraudguard; empty when it does not exist."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        versions = {int(mv.version) for mv in client.search_model_versions("name='fraudguard'")}
        aliases = {a: int(v) for a, v in client.get_registered_model("fraudguard").aliases.items()}
    except MlflowException:  # the registered model was never created
        return set(), {}
    return versions, aliases


def test_unknown_params_override_fails_the_flow_naming_the_key(project, tmp_path):
    flow = _load(project, "train_and_promote", "train_and_promote")
    state = flow(params_overrides={"train": {"epochz": 2}}, return_state=True)
    assert state.is_failed()
    assert "train.epochz" in state.message
    assert _registry_state(tmp_path) == (set(), {})


def test_blocked_override_run_names_the_gate_keeps_champion_and_leaves_the_checkout_untouched(project, tmp_path):
    # One flow run (they cost minutes on 2 cores) checks two things: a blocked promotion, and an override run.
    import subprocess

    import yaml
    from mlflow import MlflowClient

    params_before = (project / "params.yaml").read_bytes()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True,
                          check=True).stdout.strip()
    flow = _load(project, "train_and_promote", "train_and_promote")
    state = flow(params_overrides={"train": {"seed": 9}}, return_state=True)
    assert state.is_failed() and state.name.startswith("Blocked v"), state.message
    assert "quality" in state.message
    # The failed gate is a failed task in the UI; the passing ones are completed.
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    gates = {run.name: run.state.type.value for run in runs if run.name.startswith("gate-")}
    assert gates["gate-quality"] == "FAILED" and gates["gate-static_analysis"] == "COMPLETED", gates
    versions, aliases = _registry_state(tmp_path)
    assert len(versions) == 1 and "champion" not in aliases

    # The override ran the stages in a scratch copy: params.yaml byte-identical, nothing git would see.
    assert (project / "params.yaml").read_bytes() == params_before
    assert subprocess.run(["git", "status", "--porcelain"], cwd=project, capture_output=True, text=True,
                          check=True).stdout == ""
    assert not (project / "dvc.lock").exists() and not (project / "models").exists()
    # The registered version: the override in its params, config artifact and dvc.lock; the checkout's
    # revision, clean.
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    (version,) = client.search_model_versions("name='fraudguard'")
    assert client.get_run(version.run_id).data.params["train.seed"] == "9"
    config = yaml.safe_load(Path(client.download_artifacts(version.run_id, "config/params.yaml",
                                                           str(tmp_path))).read_text())
    assert config["train"]["seed"] == 9
    locked = yaml.safe_load(Path(client.download_artifacts(version.run_id, "config/dvc.lock",
                                                           str(tmp_path))).read_text())
    assert locked["stages"]["train"]["params"]["params.yaml"]["train"]["seed"] == 9
    assert (version.tags["lineage.git_commit"], version.tags["lineage.git_dirty"]) == (head, "false")


def test_monitor_without_a_champion_fails_with_a_clear_reason(project):
    from fraudguard.pipeline import reproduce_stages

    reproduce_stages(project, ("featurize",))
    flow = _load(project, "monitor", "monitor")
    state = flow(return_state=True)
    assert state.is_failed()
    assert "no champion" in state.message


def test_monitor_reports_drift_of_the_newest_window_to_mlflow(tmp_path, monkeypatch, prefect_api):
    from mlflow import MlflowClient

    from project_factory import LENIENT_GATES
    from fraudguard.config import merge_overrides

    # Threshold 0: any drifted feature counts, so the detection path runs on the small world.
    params = merge_overrides(LENIENT_GATES, {"monitor": {"drift_share_threshold": 0.0, "window_days": 7}})
    root = make_project(tmp_path / "project", None, params)
    monkeypatch.setenv("FRAUDGUARD_PROJECT_DIR", str(root))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert _load(root, "train_and_promote", "train_and_promote")(return_state=True).is_completed()

    result = _load(root, "monitor", "monitor")(retrain_on_drift=False)
    assert result["drifted"] is True and result["retrain_flow_run"] is None
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("fraudguard-monitoring")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    assert runs[0].data.metrics["drift_share"] == pytest.approx(result["drift_share"])
    assert [a.path for a in client.list_artifacts(runs[0].info.run_id, "drift")][0].endswith(".html")

    # A window with fewer rows than monitor.min_rows is not judged: one row after a quiet spell read as 100 % drift
    # and retrained on every scheduled run.
    from fraudguard.config import load_settings
    from fraudguard.monitoring import check_champion_drift

    sparse = load_settings(root / "params.yaml", overrides={"monitor.min_rows": 10**6})
    check = check_champion_drift(MlflowClient(tracking_uri=uri, registry_uri=uri), root, sparse)
    assert check.too_few_rows and not check.drifted and 0 < check.n_current < 10**6
    logged = client.get_run(check.run_id).data
    assert "drift_share" not in logged.metrics and logged.metrics["drift_rows"] == check.n_current
    assert logged.tags["fraudguard.drift"] == "too few rows to judge"


def test_rerun_with_nothing_changed_reuses_the_champion_instead_of_registering_a_duplicate(
        tmp_path, monkeypatch, prefect_api):
    from project_factory import LENIENT_GATES

    root = make_project(tmp_path / "project", None, LENIENT_GATES)
    monkeypatch.setenv("FRAUDGUARD_PROJECT_DIR", str(root))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    flow = _load(root, "train_and_promote", "train_and_promote")
    assert flow(return_state=True).is_completed()
    before = _registry_state(tmp_path)

    state = flow(return_state=True)
    assert state.is_completed() and "nothing changed" in state.message
    assert _registry_state(tmp_path) == before == ({1}, {"champion": 1})


def test_the_scheduled_checkpoint_flow_re_signs_the_audit_logs_newest_entry(tmp_path, monkeypatch, prefect_api):
    from mlflow import MlflowClient

    from project_factory import LENIENT_GATES
    from fraudguard.audit import CHECKPOINT_TAG, parse_checkpoint
    from fraudguard.registry import read_audit_log
    from fraudguard.signing import load_signer, load_verifier

    root = make_project(tmp_path / "project", None, LENIENT_GATES)
    monkeypatch.setenv("FRAUDGUARD_PROJECT_DIR", str(root))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    load_signer()  # this is the host that holds the pipeline's key (created here on first use)
    flow = _load(root, "audit_checkpoint", "audit_checkpoint")
    assert flow() is None  # nothing registered yet: the scheduled run succeeds with nothing to checkpoint
    assert _load(root, "train_and_promote", "train_and_promote")(return_state=True).is_completed()
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    promoted = parse_checkpoint("fraudguard", client.get_registered_model("fraudguard").tags[CHECKPOINT_TAG],
                                load_verifier())
    result = flow()
    refreshed = parse_checkpoint("fraudguard", client.get_registered_model("fraudguard").tags[CHECKPOINT_TAG],
                                 load_verifier())
    head = read_audit_log(client, "fraudguard")[-1]
    assert result["seq"] == refreshed.seq == promoted.seq == head.seq and refreshed.hash == head.hash
    assert refreshed.expires_at >= promoted.expires_at
