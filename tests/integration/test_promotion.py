"""Gated promotion and rollback against a real sqlite MLflow store (custom gates where ML gates don't matter)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from fraudguard.audit import read_audit_log, verify_audit_log
from fraudguard.errors import PromotionBlocked, RegistryError
from fraudguard.gates.base import GateResult
from fraudguard.promotion import discover_gates, previous_champion, promote_version, rollback
from fraudguard.registry import ChampionChange, champion_history, get_champion_version

from registry_helpers import (
    artifact_file,
    candidate_for,
    failing_gate,
    make_client,
    passing_gate,
    register_version,
    simple_context,
)

NAME = "fraudguard"


@pytest.fixture
def world(tmp_path, small_settings):
    client = make_client(tmp_path / "store")
    versions = [register_version(client, NAME, tmp_path / f"w{i}", f"weights-{i}".encode()) for i in range(3)]
    return client, versions, small_settings, tmp_path


def _promote(world, version, gates, promote=True):
    client, _, settings, tmp_path = world
    report_dir = tmp_path / "reports" / f"v{version}"
    report_dir.mkdir(parents=True, exist_ok=True)
    return promote_version(client, tmp_path, settings, version=version, promote=promote, actor="tester",
                           gates=gates, candidate=candidate_for(client, NAME, version),
                           context=simple_context(settings, tmp_path, report_dir))


def _ok_gates(report_dir=None):
    return {"quality": passing_gate("quality", report_dir), "privacy": passing_gate("privacy")}


def _snapshot(client, version):
    """Everything a failed promotion must leave alone: champion alias, its tags, history."""
    return (get_champion_version(client, NAME), dict(client.get_model_version(NAME, str(version)).tags),
            champion_history(client, NAME))


def test_all_gates_passing_moves_champion_and_challenger_and_audits(world):
    client, (v1, _, _), _, tmp_path = world
    outcome = _promote(world, v1, _ok_gates())
    assert outcome.promoted and outcome.champion_after == v1
    aliases = client.get_registered_model(NAME).aliases
    assert {k: int(v) for k, v in aliases.items()} == {"champion": v1, "challenger": v1}
    entry = read_audit_log(client, NAME)[-1]
    assert (entry.action, entry.to_version, entry.actor) == ("promote", v1, "tester")
    assert entry.gates == {"quality": "passed", "privacy": "passed"}


def test_verdicts_are_recorded_as_tags_table_and_run_artifacts(world):
    client, (v1, _, _), _, tmp_path = world
    report_dir = tmp_path / "reports" / f"v{v1}"
    report_dir.mkdir(parents=True)
    _promote(world, v1, _ok_gates(report_dir))
    mv = client.get_model_version(NAME, str(v1))
    assert mv.tags["gate.quality"] == "passed" and mv.tags["gate.privacy"] == "passed"
    assert "| quality | passed |" in mv.description
    logged = {a.path for a in client.list_artifacts(mv.run_id, "gates/quality")}
    assert "gates/quality/quality_report.json" in logged
    assert "gates/gate_summary.json" in {a.path for a in client.list_artifacts(mv.run_id, "gates")}


def test_failing_gate_leaves_champion_exactly_as_it_was(world):
    client, (v1, v2, _), _, _ = world
    _promote(world, v1, _ok_gates())
    before = _snapshot(client, v1)
    with pytest.raises(PromotionBlocked, match="robustness") as blocked:
        _promote(world, v2, {**_ok_gates(), "robustness": failing_gate("robustness")})
    assert _snapshot(client, v1) == before
    assert blocked.value.failed_gates == ["robustness"]
    tags = client.get_model_version(NAME, str(v2)).tags
    assert tags["fraudguard.status"] == "blocked" and "robustness" in tags["fraudguard.blocked_reasons"]
    assert tags["gate.robustness"] == "failed"
    last = read_audit_log(client, NAME)[-1]
    assert (last.action, last.from_version, last.to_version) == ("block", v1, v2)
    assert int(client.get_registered_model(NAME).aliases["challenger"]) == v1


def test_gate_that_raises_counts_as_failed_with_the_error_as_reason(world):
    client, (v1, _, _), _, _ = world

    def exploding(candidate, context, settings) -> GateResult:
        raise ValueError("feature matrix has NaN in column TX_AMOUNT")

    with pytest.raises(PromotionBlocked) as blocked:
        _promote(world, v1, {**_ok_gates(), "exploding": exploding})
    assert blocked.value.failed_gates == ["exploding"]
    assert "NaN in column TX_AMOUNT" in blocked.value.reasons[0]
    assert get_champion_version(client, NAME) is None


def test_gates_run_concurrently(world):
    client, (v1, _, _), _, _ = world
    barrier = threading.Barrier(2, timeout=20)

    def meeting(name):
        def run(candidate, context, settings) -> GateResult:
            barrier.wait()  # only returns if the other gate runs at the same time
            return GateResult(name, True, {}, {}, "met the other gate")
        return run

    outcome = _promote(world, v1, {"a": meeting("a"), "b": meeting("b")})
    assert outcome.promoted and [r.passed for r in outcome.results] == [True, True]


def test_dry_run_tags_the_version_but_moves_no_alias(world):
    client, (v1, _, _), _, _ = world
    outcome = _promote(world, v1, _ok_gates(), promote=False)
    assert outcome.dry_run and not outcome.promoted
    assert client.get_registered_model(NAME).aliases == {}
    assert client.get_model_version(NAME, str(v1)).tags["gate.quality"] == "passed"
    assert read_audit_log(client, NAME) == []


def test_promote_defaults_to_the_newest_version(world):
    client, (_, _, v3), settings, tmp_path = world
    report_dir = tmp_path / "reports" / "newest"
    report_dir.mkdir(parents=True)
    outcome = promote_version(client, tmp_path, settings, gates=_ok_gates(),
                              candidate=candidate_for(client, NAME, v3),
                              context=simple_context(settings, tmp_path, report_dir))
    assert outcome.version == v3 and get_champion_version(client, NAME) == v3


def test_rollback_restores_the_previous_champion_and_is_audited(world):
    client, (v1, v2, _), settings, _ = world
    _promote(world, v1, _ok_gates())
    _promote(world, v2, _ok_gates())
    outcome = rollback(client, settings, reason="v2 flags every night transaction", actor="oncall")
    assert (outcome.from_version, outcome.to_version) == (v2, v1)
    assert get_champion_version(client, NAME) == v1
    assert client.get_model_version(NAME, str(v2)).tags["fraudguard.status"] == "rolled_back_from"
    last = read_audit_log(client, NAME)[-1]
    assert (last.action, last.from_version, last.to_version, last.actor) == ("rollback", v2, v1, "oncall")
    assert last.reasons == ("v2 flags every night transaction",)
    assert champion_history(client, NAME)[-1].action == "rollback"
    assert verify_audit_log(client, NAME).ok


def test_rollback_to_altered_weights_is_refused_and_changes_nothing(world):
    client, (v1, v2, _), settings, _ = world
    _promote(world, v1, _ok_gates())
    _promote(world, v2, _ok_gates())
    artifact_file(client, NAME, v1).write_bytes(b"weights swapped by an attacker")
    before = (_snapshot(client, v2), read_audit_log(client, NAME))
    with pytest.raises(RegistryError, match=f"version {v1}.*sha256"):
        rollback(client, settings)
    assert (_snapshot(client, v2), read_audit_log(client, NAME)) == before


def test_rollback_to_a_version_that_failed_a_gate_is_refused(world):
    client, (v1, v2, v3), settings, _ = world
    _promote(world, v1, _ok_gates())
    with pytest.raises(PromotionBlocked):
        _promote(world, v2, {"quality": failing_gate("quality")})
    with pytest.raises(RegistryError, match="failed gate"):
        rollback(client, settings, to_version=v2)
    assert get_champion_version(client, NAME) == v1


def test_rollback_without_history_names_the_way_out(world):
    client, (v1, _, _), settings, _ = world
    _promote(world, v1, _ok_gates())
    with pytest.raises(RegistryError, match="--to"):
        rollback(client, settings)


def test_previous_champion_skips_versions_rolled_back_from():
    def change(seq, version, previous, action):
        return ChampionChange(seq, version, previous, action, "t", "a")

    history = [change(1, 1, None, "promote"), change(2, 2, 1, "promote"), change(3, 3, 2, "promote"),
               change(4, 2, 3, "rollback")]
    assert previous_champion(history, current=2) == 1
    assert previous_champion(history + [change(5, 3, 2, "promote")], current=3) == 2


def test_gates_are_discovered_from_params_sections(small_settings):
    gates = discover_gates(small_settings)
    assert list(gates) == list(small_settings.gates.model_dump())
    from fraudguard.gates.drift import run_drift_gate
    from fraudguard.gates.static_analysis import run_static_analysis_gate
    assert gates["drift"] is run_drift_gate and gates["static_analysis"] is run_static_analysis_gate


@pytest.fixture
def tracked_project(tmp_path, monkeypatch):
    """A project with two versions registered by the real tracking code (random-weight bundles)."""
    import torch

    from fraudguard.config import load_settings
    from fraudguard.tracking import configure_mlflow, log_training_run
    from registry_helpers import write_pipeline_outputs

    torch.set_num_threads(1)
    root = tmp_path / "project"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    (tmp_path / "store").mkdir()
    versions = []
    for seed in (0, 1):
        write_pipeline_outputs(root, seed)
        settings = load_settings(root / "params.yaml")
        client = configure_mlflow(root, settings)
        versions.append(log_training_run(root, settings).version)
    return client, root, settings, versions


def _cli():
    import typer

    from fraudguard.cli import registry as registry_commands

    app = typer.Typer()
    registry_commands.register(app)
    return app


@pytest.mark.slow
def test_promotion_builds_its_context_from_the_registry_and_feature_files(tracked_project):
    import pandas as pd

    from fraudguard.gates.drift import run_drift_gate

    client, root, settings, (v1, v2) = tracked_project
    seen = {}

    def probe(candidate, context, settings_) -> GateResult:
        seen[candidate.version] = (candidate, context)
        return GateResult("probe", True, {}, {}, "looked at the context")

    gates = {"drift": run_drift_gate, "probe": probe}
    promote_version(client, root, settings, version=v1, gates=gates)
    outcome = promote_version(client, root, settings, version=v2, gates=gates)
    assert outcome.promoted and outcome.champion_before == v1
    candidate, context = seen[v2]
    assert candidate.bundle.predict_proba(context.test_features).shape == (len(context.test_features),)
    assert context.champion.version == v1 and set(settings.model.features) <= set(context.champion.train_features)
    assert seen[v1][1].champion is None
    window_start = context.test_features["TX_DATETIME"].max() - pd.Timedelta(days=settings.gates.drift.window_days)
    assert 0 < len(context.newest_window) < len(context.test_features)
    assert context.newest_window["TX_DATETIME"].min() > window_start
    assert (root / "reports" / "gates" / f"v{v2}" / "drift_vs_champion.html").exists()


@pytest.mark.slow
def test_cli_rollback_status_and_audit_verify(tracked_project):
    from typer.testing import CliRunner

    client, root, settings, (v1, v2) = tracked_project
    for version in (v1, v2):
        _promote_tracked(client, root, settings, version)
    runner = CliRunner()
    result = runner.invoke(_cli(), ["rollback", "--reason", "bad night", "--root", str(root)])
    assert result.exit_code == 0, result.output
    assert f"champion: {v2} -> {v1}" in result.output and get_champion_version(client, NAME) == v1
    status = runner.invoke(_cli(), ["status", "--root", str(root)])
    assert status.exit_code == 0 and f"champion: {v1}" in status.output
    assert "rollback" in status.output and "lineage.git_commit" in status.output
    assert "chain intact" in status.output
    verify = runner.invoke(_cli(), ["audit", "verify", "--root", str(root)])
    assert verify.exit_code == 0 and "3 entries" in verify.output


@pytest.mark.slow
def test_cli_rollback_to_tampered_weights_exits_1_and_names_the_version(tracked_project):
    from typer.testing import CliRunner

    client, root, settings, (v1, v2) = tracked_project
    for version in (v1, v2):
        _promote_tracked(client, root, settings, version)
    run = client.get_run(client.get_model_version(NAME, str(v1)).run_id)
    weights = Path(run.info.artifact_uri.removeprefix("file://")) / "bundle" / "model.pt"
    weights.write_bytes(weights.read_bytes()[:-8] + b"tampered")
    result = CliRunner().invoke(_cli(), ["rollback", "--root", str(root)])
    assert result.exit_code == 1
    assert f"version {v1}" in result.output and "sha256" in result.output
    assert get_champion_version(client, NAME) == v2


@pytest.mark.slow
def test_cli_promote_with_every_configured_gate_blocks_a_random_model(tracked_project):
    from typer.testing import CliRunner

    client, root, settings, (v1, _) = tracked_project
    result = CliRunner().invoke(_cli(), ["promote", "--version", str(v1), "--root", str(root)])
    assert result.exit_code == 1
    # No src/ under the temporary project: static analysis fails closed; a random model fails quality.
    assert "static_analysis" in result.output and "quality" in result.output
    assert get_champion_version(client, NAME) is None
    tags = client.get_model_version(NAME, str(v1)).tags
    assert set(settings.gates.model_dump()) <= {k.removeprefix("gate.") for k in tags if k.startswith("gate.")}


def _promote_tracked(client, root, settings, version):
    return promote_version(client, root, settings, version=version,
                           gates={"quality": passing_gate("quality")})


def test_each_gate_receives_its_own_params_section(world):
    client, (v1, _, _), settings, _ = world
    received = {}

    def recorder(name):
        def run(candidate, context, section) -> GateResult:
            received[name] = section
            return GateResult(name, True, {}, {}, "recorded")
        return run

    _promote(world, v1, {"drift": recorder("drift"), "custom": recorder("custom")})
    assert received == {"drift": settings.gates.drift, "custom": None}


@pytest.mark.slow
def test_cli_audit_verify_exits_1_naming_the_edited_entry(tracked_project):
    import json

    from typer.testing import CliRunner

    client, root, settings, (v1, v2) = tracked_project
    for version in (v1, v2):
        _promote_tracked(client, root, settings, version)
    entry = json.loads(client.get_registered_model(NAME).tags["audit.000001"])
    entry["reasons"] = ["nothing to see here"]
    client.set_registered_model_tag(NAME, "audit.000001", json.dumps(entry))
    result = CliRunner().invoke(_cli(), ["audit", "verify", "--root", str(root)])
    assert result.exit_code == 1 and "seq 1" in result.output
