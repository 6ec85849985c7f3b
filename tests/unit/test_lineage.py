"""Lineage tags: git state, data and pipeline hashes, params hash, flow run, versions, weights hash."""

from __future__ import annotations

import hashlib
import shutil
import subprocess  # nosec B404
from pathlib import Path

import pytest
import yaml

from conftest import small_params
from fraudguard.config import parse_settings
from fraudguard.errors import DataVersionError, ModelError
from fraudguard.lineage import LINEAGE_KEYS, collect_lineage, data_md5, params_sha256

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git binary not installed")


def _project(root: Path) -> Path:
    """A minimal checkout: params.yaml, data.dvc, dvc.lock and a weights file; returns the weights path."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(small_params()))
    (root / "data.dvc").write_text(
        "outs:\n- md5: 0123456789abcdef0123456789abcdef.dir\n  size: 10\n  nfiles: 1\n  path: data/raw\n"
    )
    (root / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    weights = root / "models" / "model.pt"
    weights.parent.mkdir(parents=True, exist_ok=True)
    weights.write_bytes(b"not really weights, but bytes to hash")
    return weights


def _git(root: Path, *args: str) -> str:
    return subprocess.run(  # nosec B603 B607
        ["git", "-C", str(root), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def _init_repo(root: Path) -> None:
    _git(root, "init", "-q")
    _git(root, "config", "user.email", "test@example.com")
    _git(root, "config", "user.name", "test")
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "init")


def test_lineage_outside_git_repo_has_every_key_and_unknown_commit(tmp_path, small_settings):
    weights = _project(tmp_path / "proj")
    lineage = collect_lineage(tmp_path / "proj", small_settings, weights)
    assert set(LINEAGE_KEYS) <= set(lineage)
    assert all(isinstance(value, str) and value for value in lineage.values())
    assert lineage["lineage.git_commit"] == "unknown"
    assert lineage["lineage.git_dirty"] == "unknown"


def test_artifact_sha256_is_the_weights_file_hash(tmp_path, small_settings):
    weights = _project(tmp_path)
    lineage = collect_lineage(tmp_path, small_settings, weights)
    assert lineage["artifact.sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()


@needs_git
def test_lineage_in_clean_git_repo_records_head_commit(tmp_path, small_settings):
    weights = _project(tmp_path)
    _init_repo(tmp_path)
    lineage = collect_lineage(tmp_path, small_settings, weights)
    assert lineage["lineage.git_commit"] == _git(tmp_path, "rev-parse", "HEAD")
    assert lineage["lineage.git_dirty"] == "false"


@needs_git
def test_lineage_marks_modified_checkout_dirty(tmp_path, small_settings):
    weights = _project(tmp_path)
    _init_repo(tmp_path)
    (tmp_path / "params.yaml").write_text("edited: true\n")
    assert collect_lineage(tmp_path, small_settings, weights)["lineage.git_dirty"] == "true"


@needs_git
def test_an_override_run_records_the_code_revision_of_the_checkout_it_copied(tmp_path, small_settings):
    weights = _project(tmp_path / "scratch")
    _project(tmp_path / "checkout")
    _init_repo(tmp_path / "checkout")
    lineage = collect_lineage(tmp_path / "scratch", small_settings, weights, git_root=tmp_path / "checkout")
    assert lineage["lineage.git_commit"] == _git(tmp_path / "checkout", "rev-parse", "HEAD")
    assert lineage["lineage.git_dirty"] == "false"


def test_data_md5_comes_from_data_dvc_outs(tmp_path, small_settings):
    weights = _project(tmp_path)
    lineage = collect_lineage(tmp_path, small_settings, weights)
    assert lineage["lineage.data_md5"] == "0123456789abcdef0123456789abcdef.dir"


def test_malformed_data_dvc_raises_naming_the_file(tmp_path):
    dvc_file = tmp_path / "data.dvc"
    dvc_file.write_text("outs: []\n")
    with pytest.raises(DataVersionError, match="data.dvc"):
        data_md5(dvc_file)


def test_dvc_lock_hash_is_absent_without_lock_and_its_sha256_with_one(tmp_path, small_settings):
    weights = _project(tmp_path)
    with_lock = collect_lineage(tmp_path, small_settings, weights)["lineage.dvc_lock_sha256"]
    assert with_lock == hashlib.sha256((tmp_path / "dvc.lock").read_bytes()).hexdigest()
    (tmp_path / "dvc.lock").unlink()
    assert collect_lineage(tmp_path, small_settings, weights)["lineage.dvc_lock_sha256"] == "absent"


def test_params_hash_ignores_key_order_but_not_values(small_settings):
    reordered = parse_settings(dict(reversed(list(small_params().items()))))
    changed = parse_settings(small_params({"train": {"epochs": 5}}))
    assert params_sha256(reordered) == params_sha256(small_settings)
    assert params_sha256(changed) != params_sha256(small_settings)


def test_flow_run_id_argument_is_recorded_and_defaults_to_none(tmp_path, small_settings, monkeypatch):
    monkeypatch.delenv("PREFECT__FLOW_RUN_ID", raising=False)
    weights = _project(tmp_path)
    assert collect_lineage(tmp_path, small_settings, weights)["lineage.prefect_flow_run_id"] == "none"
    given = collect_lineage(tmp_path, small_settings, weights, flow_run_id="run-123")
    assert given["lineage.prefect_flow_run_id"] == "run-123"


def test_flow_run_id_is_read_from_prefect_runtime(tmp_path, small_settings, monkeypatch):
    # Prefect's runtime reads the flow-run id from this variable in deployments' worker processes.
    run_id = "0b1c2d3e-0000-4000-8000-000000000001"
    monkeypatch.setenv("PREFECT__FLOW_RUN_ID", run_id)
    weights = _project(tmp_path)
    assert collect_lineage(tmp_path, small_settings, weights)["lineage.prefect_flow_run_id"] == run_id


def test_package_versions_are_recorded(tmp_path, small_settings):
    import importlib.metadata
    import platform

    weights = _project(tmp_path)
    lineage = collect_lineage(tmp_path, small_settings, weights)
    assert lineage["lineage.versions.torch"] == importlib.metadata.version("torch")
    assert lineage["lineage.versions.mlflow"] == importlib.metadata.version("mlflow")
    assert lineage["lineage.versions.python"] == platform.python_version()


def test_missing_weights_raise_model_error_naming_the_file(tmp_path, small_settings):
    _project(tmp_path)
    with pytest.raises(ModelError, match="absent.pt"):
        collect_lineage(tmp_path, small_settings, tmp_path / "models" / "absent.pt")


@needs_git
def test_files_dvc_repro_writes_do_not_make_the_checkout_dirty(tmp_path, small_settings):
    weights = _project(tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages:\n  train:\n    cmd: x\n    outs: [models/model.pt]\n"
                                       "    metrics:\n      - models/metrics.json:\n          cache: false\n")
    (tmp_path / "models").mkdir(exist_ok=True)
    (tmp_path / "models" / "metrics.json").write_text("{}")
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\n")
    _init_repo(tmp_path)
    (tmp_path / "models" / "metrics.json").write_text('{"ap": 0.5}')  # rewritten by the flow's dvc repro
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    assert collect_lineage(tmp_path, small_settings, weights)["lineage.git_dirty"] == "false"
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")  # a code/pipeline edit still counts
    assert collect_lineage(tmp_path, small_settings, weights)["lineage.git_dirty"] == "true"


def test_lineage_carries_the_validation_reports_label_changes_and_fraud_rate_change(tmp_path, small_settings):
    import json

    weights = _project(tmp_path)
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "validation.json").write_text(json.dumps({
        "rows_quarantined": 3, "fraud_rate": 0.006,
        "history": {"checked": True, "label_changes": 611, "changed_history": 0},
        "fraud_rate_change": {"checked": True, "factor": 1.43, "exceeded": True},
        "volume_bursts": {"customer_days": 1, "terminal_days": 4}}))
    lineage = collect_lineage(tmp_path, small_settings, weights)
    assert lineage["lineage.validation.label_changes"] == "611"
    assert lineage["lineage.validation.fraud_rate_change_exceeded"] == "true"
    assert lineage["lineage.validation.volume_burst_days"] == "5"


def test_lineage_says_history_unchecked_for_data_not_imported(tmp_path, small_settings):
    import json

    weights = _project(tmp_path)
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "validation.json").write_text(json.dumps({
        "rows_quarantined": 0, "fraud_rate": 0.008, "history": {"checked": False, "reason": "no intake record"},
        "fraud_rate_change": {"checked": False}}))
    lineage = collect_lineage(tmp_path, small_settings, weights)
    assert lineage["lineage.validation.label_changes"] == "unchecked"
    assert lineage["lineage.validation.history_checked"] == "false"
